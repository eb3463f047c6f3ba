"""The ``remote`` backend: a foundation model behind an API (KServe v2 / Open Inference Protocol).

The data owner never holds the weights: ``random`` and ``variation`` become HTTP requests
to a server (``pipeline.py serve``, KServe, Triton, or any server speaking the two calls of
:mod:`privevo.image.protocol`). Only public data crosses the wire: counts, seeds, labels of the
synthetic population and the population's images; never a private image or embedding.

What a call does (the client, the retries, the ledger and the stored results are
:mod:`privevo.remote_calls`, shared with the text backend):

- splits the samples into requests of ``model.batch_size`` (sample ``i`` keeps its seed
  ``(seed, first_index + i)``, so a server honouring seeds returns what the in-process backend
  would) and sends up to ``max_concurrency`` at once, at most ``requests_per_minute``;
- retries a request on 429, 5xx, timeouts, refused connections and malformed or wrong-shape
  bodies, with exponential backoff and full jitter, waiting at least ``Retry-After``; after
  ``max_retries`` retries the step fails with one line; other 4xx answers fail at once;
- when a step records its calls (:class:`privevo.remote_calls.RecordedModel`), stores each request's images under the run
  layout before using them and reuses stored ones first (a crashed or retried step does not
  pay twice), and keeps the step's call ledger (requests, images, retries, failures, seconds,
  estimated cost at ``price_per_image``).

The bearer token (``token_env`` / ``token_file``) is sent in the ``Authorization`` header only;
it is never logged, stored or put in an error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from privevo.errors import UserError
from privevo.image import protocol
from privevo.image.models.base import FoundationModel
from privevo.remote_calls import CallLedger, CallStats, HttpClient, public_url, request_key

if TYPE_CHECKING:
    import requests

    from privevo.config import Config, RemoteConfig

#: The call ledger's counters of an image backend.
COUNTERS = ("requests", "images", "reused_images", "retries", "failures", "seconds")


class RemoteModel(FoundationModel):
    """RANDOM_API and VARIATION_API over HTTP; the same public interface and seeding as in-process backends."""

    def __init__(self, settings: RemoteConfig, batch_size: int = 64, image_size: int | None = None,
                 channels: int | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        import torch

        self.settings = settings
        self.client = HttpClient(settings, _hint, sleep)
        self.url = self.client.url
        self.batch_size = batch_size
        self.device = torch.device("cpu")
        self.model_name = settings.model_name or self._only_model()
        self.name = f"remote:{self.model_name}"
        self.ledger: CallLedger = CallLedger("images", COUNTERS, self._ledger_header, self._cost)
        metadata = self._metadata()
        try:
            _, height, width, depth = metadata["outputs"][0]["shape"]
            parameters = metadata.get("parameters") or {}
            num_classes = parameters.get("num_classes")
            self.image_size, self.channels = int(height), int(depth)
            self.num_classes = int(num_classes) if num_classes else None
            if height != width:
                raise ValueError("non-square images")
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise UserError(f"model {self.model_name} at {public_url(self.url)} describes its output in a way this "
                            f"client cannot read ({err}): serve it with `pipeline.py serve`") from None
        if (image_size, channels) != (None, None) and (image_size, channels) != (self.image_size, self.channels):
            raise UserError(
                f"model {self.model_name} at {public_url(self.url)} makes {self.image_size}x{self.image_size}x"
                f"{self.channels} images but the config asks for {image_size}x{image_size}x{channels}: "
                "fix image_size/channels or serve a model of that shape"
            )

    config_fields = ("model", "image_size", "channels")

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The server ``config.model.remote`` names, checked against the experiment's image shape."""
        from privevo.config import RemoteSection, model_section

        section = model_section(config, RemoteSection)
        assert section.remote is not None  # the config requires it
        return cls(section.remote, section.batch_size, config.image_size, config.channels)

    # ------------------------------------------------------------------ call ledger

    def _ledger_header(self) -> dict[str, Any]:
        return {"url": public_url(self.url), "model_name": self.model_name,
                "price_per_image": self.settings.price_per_image}

    def _cost(self, counters: Mapping[str, float]) -> float:
        """Images paid for (reused ones are free) at ``price_per_image``."""
        return counters["images"] * self.settings.price_per_image

    # ------------------------------------------------------------------ the two calls

    def _random(self, n: int, labels: np.ndarray | None, seed: int, first_index: int) -> np.ndarray:
        """``n`` new samples from the server (RANDOM_API)."""

        def inputs(start: int, stop: int) -> dict[str, np.ndarray]:
            tensors = {"count": np.array([stop - start], np.int64)}
            if labels is not None:
                tensors["labels"] = labels[start:stop]
            return tensors

        return self._call("random", n, inputs, seed, first_index, {})

    def _variation(self, images: np.ndarray, degree: float, labels: np.ndarray | None, seed: int,
                   first_index: int) -> np.ndarray:
        """One variation of each image from the server (VARIATION_API)."""

        def inputs(start: int, stop: int) -> dict[str, np.ndarray]:
            tensors = {"images": images[start:stop], "degree": np.array([degree], np.float64)}
            if labels is not None:
                tensors["labels"] = labels[start:stop]
            return tensors

        return self._call("variation", len(images), inputs, seed, first_index, {"degree": degree})

    def _call(self, call: str, n: int, inputs: Callable[[int, int], dict[str, np.ndarray]], seed: int,
              first_index: int, extra_key: dict[str, Any]) -> np.ndarray:
        """Send ``n`` samples in requests of ``batch_size``, up to ``max_concurrency`` at once; stored ones first."""
        out = np.empty((n, self.image_size, self.image_size, self.channels), np.uint8)
        chunks = [(start, min(start + self.batch_size, n)) for start in range(0, n, self.batch_size)]

        def work(start: int, stop: int, stats: CallStats) -> np.ndarray:
            return self._chunk(call, inputs(start, stop), seed, first_index + start, extra_key, stats)

        entry = {"first_index": first_index, "count": n, "seed": seed, **extra_key}
        for start, images in self.ledger.run(call, chunks, work, self.settings.max_concurrency, entry).items():
            out[start:start + len(images)] = images
        return out

    def _chunk(self, call: str, tensors: dict[str, np.ndarray], seed: int, first_index: int,
               extra_key: dict[str, Any], stats: CallStats) -> np.ndarray:
        """One request's images: the stored result of the same request, or the server's answer (then stored)."""
        count = len(tensors["images"]) if call == "variation" else int(tensors["count"][0])
        tensors = {**tensors, "seed": np.array([seed], np.int64), "first_index": np.array([first_index], np.int64)}
        expected = (count, self.image_size, self.image_size, self.channels)
        key = request_key(call, first_index, {"model": self.model_name, **extra_key}, tensors)

        def valid(stored: dict[str, np.ndarray]) -> bool:
            images = stored.get("images")
            return images is not None and images.dtype == np.uint8 and images.shape == expected

        def fetch() -> dict[str, np.ndarray]:
            return {"images": self._infer(call, tensors, expected, stats)}

        return self.ledger.fetch_or_reuse(key, count, fetch, valid, stats)["images"]

    # ------------------------------------------------------------------ HTTP

    def _infer(self, call: str, tensors: dict[str, np.ndarray], expected: tuple[int, ...], stats: CallStats) -> np.ndarray:
        body, headers = protocol.encode_request(call, tensors, binary=self.settings.binary)

        def decode(response: requests.Response) -> np.ndarray:
            images = protocol.decode_response(response.content, response.headers.get(protocol.HEADER_LENGTH))
            if images.dtype != np.uint8 or images.shape != expected:
                raise protocol.ProtocolError(f"answered {images.dtype} images of shape {list(images.shape)}, "
                                             f"expected uint8 {list(expected)}")
            return images

        return self.client.request("POST", f"/v2/models/{self.model_name}/infer", decode, stats, body, headers)

    def _metadata(self) -> dict[str, Any]:
        def decode(response: requests.Response) -> dict[str, Any]:
            try:
                metadata = response.json()
            except ValueError:
                raise protocol.ProtocolError("the model metadata is not JSON") from None
            if not isinstance(metadata, dict):
                raise protocol.ProtocolError("the model metadata is not a JSON object")
            return metadata

        return self.client.request("GET", f"/v2/models/{self.model_name}", decode, CallStats(COUNTERS))

    def _only_model(self) -> str:
        """The name of the one model the server serves (``model_name`` left out of the config)."""
        def decode(response: requests.Response) -> list[str]:
            try:
                index = response.json()
                return [str(entry["name"]) for entry in index]
            except (ValueError, TypeError, KeyError):
                raise protocol.ProtocolError("the model repository index is not a list of models") from None

        names = self.client.request("POST", "/v2/repository/index", decode, CallStats(COUNTERS), b"{}",
                                    {"Content-Type": protocol.JSON_CONTENT_TYPE})
        if len(names) != 1:
            raise UserError(f"the server at {public_url(self.url)} serves {len(names)} models ({', '.join(names[:5])}): "
                            "set model.remote.model_name")
        return names[0]


def _hint(status: int) -> str:
    """What to check when the server refuses a request with ``status`` (401 and 403: the shared client names the
    token's settings)."""
    if status == 404:
        return "check model.remote.model_name and model.remote.url"
    return "check that the server speaks the KServe v2 protocol of pipeline.py serve"
