"""The ``remote`` backend: a foundation model behind an API (KServe v2 / Open Inference Protocol).

The data owner never holds the weights: ``random`` and ``variation`` become HTTP requests
to a server (``pipeline.py serve``, KServe, Triton, or any server speaking the two calls of
:mod:`privevo.image.protocol`). Only public data crosses the wire: counts, seeds, labels of the
synthetic population and the population's images; never a private image or embedding.

What a call does:

- splits the samples into requests of ``model.batch_size`` (sample ``i`` keeps its seed
  ``(seed, first_index + i)``, so a server honouring seeds returns what the in-process backend
  would) and sends up to ``max_concurrency`` at once, at most ``requests_per_minute``;
- retries a request on 429, 5xx, timeouts, refused connections and malformed or wrong-shape
  bodies, with exponential backoff and full jitter, waiting at least ``Retry-After``; after
  ``max_retries`` retries the step fails with one line; other 4xx answers fail at once;
- when a step bound it (:meth:`record_calls`), stores each request's images under the run
  layout before using them and reuses stored ones first (a crashed or retried step does not
  pay twice), and keeps the step's call ledger (requests, images, retries, failures, seconds,
  estimated cost at ``price_per_image``).

The bearer token (``token_env`` / ``token_file``) is sent in the ``Authorization`` header only;
it is never logged, stored or put in an error.
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import hashlib
import io
import json
import logging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from privevo import storage
from privevo.errors import UserError
from privevo.image import protocol
from privevo.image.models.base import FoundationModel, Labels
from privevo.layout import step_name

if TYPE_CHECKING:
    import requests
    import torch

    from privevo.config import Config, RemoteConfig
    from privevo.layout import RunLayout

logger = logging.getLogger(__name__)

#: Answers worth another try: rate limited, or the server (or a proxy before it) failed.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def public_url(url: str) -> str:
    """The URL without any user:password part (for logs, errors and the ledger)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def read_token(settings: RemoteConfig) -> str | None:
    """The bearer token from ``token_env`` or ``token_file``; errors name the variable or file, never the token."""
    if settings.token_env:
        token = os.environ.get(settings.token_env, "").strip()
        if not token:
            raise UserError(f"model.remote.token_env names {settings.token_env}, which is not set or empty: "
                            "export the token in that variable")
        return token
    if settings.token_file:
        path = Path(settings.token_file)
        try:
            token = path.read_text().strip()
        except OSError as err:
            raise UserError(f"model.remote.token_file {path} cannot be read ({err.strerror}): "
                            "mount the secret there or fix the path") from None
        if not token:
            raise UserError(f"model.remote.token_file {path} is empty: put the token in it")
        return token
    return None


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) in seconds from now; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RateLimiter:
    """At most ``per_minute`` request starts a minute, evenly spaced, shared by every thread."""

    def __init__(self, per_minute: float | None) -> None:
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


@dataclass
class CallStats:
    """Counts of one ``random``/``variation`` call, or of a whole step."""

    requests: int = 0
    images: int = 0
    reused_images: int = 0
    retries: int = 0
    failures: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    COUNTERS = ("requests", "images", "reused_images", "retries", "failures", "seconds")

    def add(self, **deltas: float) -> None:
        with self.lock:
            for key, value in deltas.items():
                setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, Any]:
        return {key: round(getattr(self, key), 3) if key == "seconds" else getattr(self, key) for key in self.COUNTERS}


class RemoteModel(FoundationModel):
    """RANDOM_API and VARIATION_API over HTTP; the same public interface and seeding as in-process backends."""

    def __init__(self, settings: RemoteConfig, batch_size: int = 64, image_size: int | None = None,
                 channels: int | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        import requests  # noqa: F401 (fail early if missing)
        import torch

        self.settings = settings
        self.url = settings.url.rstrip("/")
        self.batch_size = batch_size
        self.device = torch.device("cpu")
        self._token = read_token(settings)
        self._local = threading.local()
        self._limiter = RateLimiter(settings.requests_per_minute)
        self._sleep = sleep
        self._ledger: tuple[RunLayout, int, str, int | None] | None = None
        self._step_stats = CallStats()
        self.model_name = settings.model_name or self._only_model()
        self.name = f"remote:{self.model_name}"
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

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The server ``config.model.remote`` names, checked against the experiment's image shape."""
        settings = config.model.remote
        if settings is None:
            raise UserError("model.kind remote needs model.remote with at least url")
        return cls(settings, config.model.batch_size, config.image_size, config.channels)

    # ------------------------------------------------------------------ call ledger

    def record_calls(self, layout: RunLayout, generation: int, step: str, shard: int | None = None) -> None:
        """Store received images and keep the call ledger of this step under the run layout."""
        self._ledger = (layout, generation, step, shard)
        self._step_stats = CallStats()

    def call_summary(self) -> dict[str, Any]:
        """This step's calls so far, for its step record (the audit lists them)."""
        stats = self._step_stats.as_dict()
        summary = {f"api_{key}": value for key, value in stats.items()}
        summary["api_estimated_cost"] = round(stats["images"] * self.settings.price_per_image, 6)
        return summary

    def _write_ledger(self, entry: dict[str, Any]) -> None:
        """Add one call's counts to the step's ledger (cumulative over reruns of the step)."""
        if self._ledger is None:
            return
        layout, generation, step, shard = self._ledger
        price = self.settings.price_per_image

        def add(current: dict[str, Any] | None) -> dict[str, Any]:
            ledger = current or {"step": step_name(step, shard), "generation": generation,
                                 "url": public_url(self.url), "model_name": self.model_name,
                                 "price_per_image": price, "calls": [], **dict.fromkeys(CallStats.COUNTERS, 0)}
            for key in CallStats.COUNTERS:
                ledger[key] = round(ledger[key] + entry[key], 3)
            ledger["estimated_cost"] = round(ledger["images"] * price, 6)
            ledger["calls"].append(entry)
            return ledger

        storage.update_json(layout.calls(generation, step, shard), add)

    def _result_uri(self, key: str) -> str | None:
        if self._ledger is None:
            return None
        layout, generation, step, shard = self._ledger
        return layout.call_result(generation, step, shard, key)

    # ------------------------------------------------------------------ the two calls

    def random(self, n: int, labels: Labels = None, seed: int = 0, first_index: int = 0) -> np.ndarray:
        """``n`` new samples from the server (RANDOM_API)."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise UserError(f"number of samples must be a non-negative integer, got {n!r}")
        self._check_seed(seed, first_index)
        checked = self._check_labels(labels, int(n))

        def inputs(start: int, stop: int) -> dict[str, np.ndarray]:
            tensors = {"count": np.array([stop - start], np.int64)}
            if checked is not None:
                tensors["labels"] = checked[start:stop]
            return tensors

        return self._call("random", int(n), inputs, int(seed), int(first_index), {})

    def variation(self, images: np.ndarray, degree: float, labels: Labels = None, seed: int = 0,
                  first_index: int = 0) -> np.ndarray:
        """One variation of each image from the server (VARIATION_API)."""
        self._check_images(images)
        degree = self._check_degree(degree)
        self._check_seed(seed, first_index)
        checked = self._check_labels(labels, len(images))

        def inputs(start: int, stop: int) -> dict[str, np.ndarray]:
            tensors = {"images": images[start:stop], "degree": np.array([degree], np.float64)}
            if checked is not None:
                tensors["labels"] = checked[start:stop]
            return tensors

        return self._call("variation", len(images), inputs, int(seed), int(first_index), {"degree": degree})

    def _random_batch(self, labels: np.ndarray | None, generators: list[torch.Generator]) -> np.ndarray:
        raise NotImplementedError("the remote backend draws on the server: call random()")

    def _variation_batch(self, images: np.ndarray, degree: float, labels: np.ndarray | None,
                         generators: list[torch.Generator]) -> np.ndarray:
        raise NotImplementedError("the remote backend varies on the server: call variation()")

    def _call(self, call: str, n: int, inputs: Callable[[int, int], dict[str, np.ndarray]], seed: int,
              first_index: int, extra_key: dict[str, Any]) -> np.ndarray:
        """Send ``n`` samples in requests of ``batch_size``, up to ``max_concurrency`` at once; stored ones first."""
        started = time.monotonic()
        out = np.empty((n, self.image_size, self.image_size, self.channels), np.uint8)
        stats = CallStats()
        chunks = [(start, min(start + self.batch_size, n)) for start in range(0, n, self.batch_size)]
        error: BaseException | None = None
        failed = threading.Event()

        def chunk(start: int, stop: int) -> np.ndarray | None:
            if failed.is_set():  # a request failed for good: queued ones are not sent
                return None
            try:
                return self._chunk(call, inputs(start, stop), seed, first_index + start, extra_key, stats)
            except BaseException:
                failed.set()
                raise

        with concurrent.futures.ThreadPoolExecutor(self.settings.max_concurrency, "privevo-remote") as pool:
            futures = {pool.submit(chunk, start, stop): (start, stop) for start, stop in chunks}
            # requests in flight finish (and are stored) before the first failure is raised
            for future in concurrent.futures.as_completed(futures):
                start, stop = futures[future]
                if future.exception() is not None:
                    error = error or future.exception()
                elif (images := future.result()) is not None:
                    out[start:stop] = images
        stats.add(seconds=time.monotonic() - started)
        entry = {"call": call, "first_index": first_index, "count": n, "seed": seed, **extra_key, **stats.as_dict(),
                 "ok": error is None}
        self._step_stats.add(**{key: entry[key] for key in CallStats.COUNTERS})
        self._write_ledger(entry)
        if error is not None:
            raise error
        return out

    def _chunk(self, call: str, tensors: dict[str, np.ndarray], seed: int, first_index: int,
               extra_key: dict[str, Any], stats: CallStats) -> np.ndarray:
        """One request's images: the stored result of the same request, or the server's answer (then stored)."""
        count = len(tensors["images"]) if call == "variation" else int(tensors["count"][0])
        tensors = {**tensors, "seed": np.array([seed], np.int64), "first_index": np.array([first_index], np.int64)}
        uri = self._result_uri(self._key(call, tensors, extra_key))
        if uri is not None and storage.exists(uri):
            stored = self._stored(uri, count)
            if stored is not None:
                stats.add(reused_images=count)
                return stored
        images = self._infer(call, tensors, count, stats)
        if uri is not None:
            buffer = io.BytesIO()
            np.savez(buffer, images=images)
            storage.write_bytes(uri, buffer.getvalue())
        stats.add(images=count)
        return images

    def _key(self, call: str, tensors: dict[str, np.ndarray], extra_key: dict[str, Any]) -> str:
        """A name for one request: its call, model and every input (hashed), so a changed input is a new request."""
        digest = hashlib.sha256(json.dumps({"call": call, "model": self.model_name, **extra_key}, sort_keys=True).encode())
        for name in sorted(tensors):
            array = np.ascontiguousarray(tensors[name])
            digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
            digest.update(array.tobytes())
        first_index = int(tensors["first_index"][0])
        return f"{call}-{first_index:07d}-{digest.hexdigest()[:20]}"

    def _stored(self, uri: str, count: int) -> np.ndarray | None:
        """A stored result when it is whole and of the right shape; None (call again) otherwise."""
        try:
            with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as npz:
                images = npz["images"]
        except (OSError, ValueError, KeyError):
            return None
        if images.dtype != np.uint8 or images.shape != (count, self.image_size, self.image_size, self.channels):
            return None
        return images

    # ------------------------------------------------------------------ HTTP

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
            if self._token:
                session.headers["Authorization"] = f"Bearer {self._token}"
        return session

    def _infer(self, call: str, tensors: dict[str, np.ndarray], count: int, stats: CallStats) -> np.ndarray:
        body, headers = protocol.encode_request(call, tensors, binary=self.settings.binary)
        expected = (count, self.image_size, self.image_size, self.channels)

        def decode(response: requests.Response) -> np.ndarray:
            images = protocol.decode_response(response.content, response.headers.get(protocol.HEADER_LENGTH))
            if images.dtype != np.uint8 or images.shape != expected:
                raise protocol.ProtocolError(f"answered {images.dtype} images of shape {list(images.shape)}, "
                                             f"expected uint8 {list(expected)}")
            return images

        return self._request("POST", f"/v2/models/{self.model_name}/infer", decode, stats, body, headers)

    def _metadata(self) -> dict[str, Any]:
        def decode(response: requests.Response) -> dict[str, Any]:
            try:
                metadata = response.json()
            except ValueError:
                raise protocol.ProtocolError("the model metadata is not JSON") from None
            if not isinstance(metadata, dict):
                raise protocol.ProtocolError("the model metadata is not a JSON object")
            return metadata

        return self._request("GET", f"/v2/models/{self.model_name}", decode, CallStats())

    def _only_model(self) -> str:
        """The name of the one model the server serves (``model_name`` left out of the config)."""
        def decode(response: requests.Response) -> list[str]:
            try:
                index = response.json()
                return [str(entry["name"]) for entry in index]
            except (ValueError, TypeError, KeyError):
                raise protocol.ProtocolError("the model repository index is not a list of models") from None

        names = self._request("POST", "/v2/repository/index", decode, CallStats(), b"{}",
                              {"Content-Type": protocol.JSON_CONTENT_TYPE})
        if len(names) != 1:
            raise UserError(f"the server at {public_url(self.url)} serves {len(names)} models ({', '.join(names[:5])}): "
                            "set model.remote.model_name")
        return names[0]

    def _request(self, method: str, path: str, decode: Callable[[requests.Response], Any], stats: CallStats,
                 body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        """One request, retried on 429/5xx/timeouts/refused connections/bad bodies; a one-line UserError at the end."""
        import requests

        settings = self.settings
        where = f"{public_url(self.url)}{path}"
        problem = "no attempt"
        for attempt in range(settings.max_retries + 1):
            if attempt:
                stats.add(retries=1)
            self._limiter.wait()
            stats.add(requests=1)
            retry_after = None
            try:
                response = self._session().request(method, self.url + path, data=body, headers=headers,
                                                   timeout=(min(10.0, settings.timeout_s), settings.timeout_s))
            except requests.Timeout:
                problem = f"no answer within model.remote.timeout_s={settings.timeout_s:g}"
            except requests.ConnectionError:
                problem = "the server is unreachable (connection refused or dropped)"
            else:
                if response.status_code == 200:
                    try:
                        return decode(response)
                    except protocol.ProtocolError as err:
                        problem = f"a malformed answer: {err}"
                elif response.status_code in RETRYABLE_STATUS:
                    problem = f"HTTP {response.status_code}"
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                else:
                    stats.add(failures=1)
                    raise UserError(f"{where} refused the request: HTTP {response.status_code} "
                                    f"{_error_text(response)}: {_hint(response.status_code)}")
            if attempt == settings.max_retries:
                break
            delay = random.uniform(0, min(settings.max_backoff_s, settings.backoff_s * 2**attempt))
            if retry_after is not None:
                delay = max(delay, retry_after)
            logger.warning("%s %s: %s; retry %d of %d in %.1f s", method, where, problem, attempt + 1,
                           settings.max_retries, delay)
            self._sleep(delay)
        stats.add(failures=1)
        raise UserError(f"{where} failed after {settings.max_retries + 1} attempts, the last with {problem}: check "
                        "that the model server is running and healthy, or raise model.remote.max_retries/timeout_s")


def _error_text(response: requests.Response) -> str:
    """The first line of a v2 error answer (``{"error": ...}``), short."""
    try:
        text = str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        text = response.text
    text = (text.strip().splitlines() or [""])[0]
    return f"({text[:200]})" if text else ""


def _hint(status: int) -> str:
    if status in (401, 403):
        return "check the token in model.remote.token_env or model.remote.token_file"
    if status == 404:
        return "check model.remote.model_name and model.remote.url"
    return "check that the server speaks the KServe v2 protocol of pipeline.py serve"
