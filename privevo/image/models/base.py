"""The foundation-model interface and the helpers its backends share.

:class:`FoundationModel` is the interface: it validates inputs and leaves the two calls to a
backend. :class:`LocalModel` runs them in process: it batches, seeds one generator per sample
and shows progress; a backend implements ``from_config``, ``_random_batch`` and
``_variation_batch`` (see :mod:`privevo.image.models` for the steps of adding one).
"""

import abc
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

import numpy as np

from privevo import model_store, runtime

runtime.prefer_passive_waiting()  # before torch loads OpenMP: see privevo.runtime
import torch  # noqa: E402

from privevo.errors import UserError  # noqa: E402

if TYPE_CHECKING:
    from privevo.config import Config
    from privevo.remote_calls import CallLedger

Labels = np.ndarray | int | None


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Turn "auto" into float16 on CUDA and float32 elsewhere; accept dtype names."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise UserError(f"dtype {dtype!r} is not supported: use 'auto' or one of {', '.join(names)}")
    return names[dtype]


def resolve_autocast(setting: str, device: torch.device, weight_dtype: torch.dtype,
                     bandwidth_bound: bool = False) -> torch.dtype | None:
    """The mixed-precision compute dtype of the network's forward pass, or None for plain weights' dtype.

    "auto" picks bfloat16 when the weights are float32 and the hardware runs bfloat16 natively
    (CUDA with bf16, CPUs with AMX; for ``bandwidth_bound`` work such as a language model's decoding,
    CPUs with AVX512-BF16 too: :func:`privevo.runtime.cpu_has_native_bf16`): the demo UNet then runs
    about 2.3x faster on 2 CPU cores (bench/RESULTS.md). The sampler's state and arithmetic stay float32.
    """
    if setting == "off":
        return None
    if setting == "auto":
        if weight_dtype != torch.float32:
            return None
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = device.type == "cpu" and runtime.cpu_has_native_bf16(bandwidth_bound)
        return torch.bfloat16 if native else None
    names = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    if setting not in names:
        raise UserError(f"autocast {setting!r} is not supported: use 'auto', 'off', 'bfloat16' or 'float16'")
    return names[setting]


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for sample ``index`` of a call with ``seed``, independent of batching."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC in [0, 255] to float32 NCHW in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """Float NCHW in [-1, 1] to uint8 NHWC, rounded and clipped."""
    x = x.detach().float().cpu().add(1.0).mul(127.5).round().clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


class FoundationModel(abc.ABC):
    """A public generative model behind PE's RANDOM_API and VARIATION_API: checks the inputs, then runs the call."""

    image_size: int
    channels: int
    num_classes: int | None
    name: str
    batch_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    #: The experiment config's fields (dotted keys) that ``from_config`` reads, its ``model`` section included: a
    #: process keeps its loaded model while their values stay the same.
    config_fields: ClassVar[tuple[str, ...]]
    #: The calls' ledger and stored answers of a backend behind an API (None in process): a step records into it
    #: through :class:`privevo.remote_calls.RecordedModel`.
    ledger: "CallLedger | None" = None

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: "Config") -> Self:
        """Load the model an experiment config names (``config.model`` and the image shape), offline."""

    def random(self, n: int, labels: Labels = None, seed: int = 0, first_index: int = 0) -> np.ndarray:
        """Draw ``n`` new samples (RANDOM_API); ``labels`` pick classes where the model has them."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise UserError(f"number of samples must be a non-negative integer, got {n!r}")
        n = int(n)
        self._check_seed(seed, first_index)
        return self._random(n, self._check_labels(labels, n), int(seed), int(first_index))

    def variation(
        self, images: np.ndarray, degree: float, labels: Labels = None, seed: int = 0, first_index: int = 0
    ) -> np.ndarray:
        """One variation of each image (VARIATION_API); ``degree`` 0 keeps it, 1 draws anew."""
        self._check_images(images)
        degree = self._check_degree(degree)
        self._check_seed(seed, first_index)
        labels = self._check_labels(labels, len(images))
        return self._variation(images, degree, labels, int(seed), int(first_index))

    @abc.abstractmethod
    def _random(self, n: int, labels: np.ndarray | None, seed: int, first_index: int) -> np.ndarray:
        """RANDOM_API on checked inputs (labels None for an unconditional model)."""

    @abc.abstractmethod
    def _variation(
        self, images: np.ndarray, degree: float, labels: np.ndarray | None, seed: int, first_index: int
    ) -> np.ndarray:
        """VARIATION_API on checked inputs."""

    @staticmethod
    def _check_degree(degree: float) -> float:
        """A variation degree is a number in [0, 1]."""
        if isinstance(degree, bool) or not isinstance(degree, (int, float, np.floating, np.integer)):
            raise UserError(f"variation degree must be a number in [0, 1], got {degree!r}")
        if not 0.0 <= float(degree) <= 1.0:
            raise UserError(f"variation degree must be in [0, 1], got {float(degree)}")
        return float(degree)

    @staticmethod
    def _check_seed(seed: int, first_index: int) -> None:
        """Seeds and sample offsets are non-negative integers."""
        for key, value in (("seed", seed), ("first_index", first_index)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise UserError(f"{key} must be a non-negative integer, got {value!r}")

    def _check_labels(self, labels: Labels, n: int) -> np.ndarray | None:
        """Broadcast and validate labels; unconditional models ignore them (PE can still run per class)."""
        if labels is None:
            return None
        if isinstance(labels, (int, np.integer)) and not isinstance(labels, bool):
            labels = np.full(n, int(labels), dtype=np.int64)
        labels = np.asarray(labels)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise UserError(
                f"labels must be one integer or {n} integers, got dtype {labels.dtype} shape {labels.shape}"
            )
        if self.num_classes is None:
            return None
        if n and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise UserError(f"labels must lie in [0, {self.num_classes}) for model {self.name}")
        return labels.astype(np.int64)

    def _check_images(self, images: np.ndarray) -> None:
        """Reject anything but uint8 NHWC at the model's size and channel count."""
        expected = (self.image_size, self.image_size, self.channels)
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != expected:
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            shape = f"(n, {', '.join(map(str, expected))})"
            raise UserError(f"images for model {self.name} must be uint8 of shape {shape}, got {got}")



class LocalModel(FoundationModel):
    """A backend run in process: batches of up to ``batch_size`` samples, one generator per sample, progress shown."""

    def _random(self, n: int, labels: np.ndarray | None, seed: int, first_index: int) -> np.ndarray:
        def run_batch(
            indices: np.ndarray, batch_labels: np.ndarray | None, generators: list[torch.Generator]
        ) -> np.ndarray:
            return self._random_batch(batch_labels, generators)

        return self._batched(n, seed, first_index, labels, "random", run_batch)

    def _variation(
        self, images: np.ndarray, degree: float, labels: np.ndarray | None, seed: int, first_index: int
    ) -> np.ndarray:
        def run_batch(
            indices: np.ndarray, batch_labels: np.ndarray | None, generators: list[torch.Generator]
        ) -> np.ndarray:
            return self._variation_batch(images[indices], degree, batch_labels, generators)

        return self._batched(len(images), seed, first_index, labels, f"variation {degree:g}", run_batch)

    def _batched(
        self,
        n: int,
        seed: int,
        first_index: int,
        labels: np.ndarray | None,
        what: str,
        run_batch: Callable[..., np.ndarray],
    ) -> np.ndarray:
        """Call ``run_batch(indices, labels, generators)`` for each batch of up to ``batch_size`` samples."""
        out = np.empty((n, self.image_size, self.image_size, self.channels), dtype=np.uint8)
        precision = torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        with precision, runtime.Progress(n, f"{self.name}: {what}", "img") as progress:
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                indices = np.arange(start, stop)
                generators = [sample_generator(int(seed), int(first_index + i)) for i in indices]
                if len(indices) == 1:
                    # CPU kernels take other paths for a batch of one, which round far more
                    # differently from batched runs (up to 9% of a tiny Stable Diffusion sample's
                    # pixels, measured); run two identical samples to stay on the batched path.
                    indices = indices.repeat(2)
                    generators.append(torch.Generator(device="cpu").set_state(generators[0].get_state()))
                batch_labels = None if labels is None else labels[indices]
                out[start:stop] = run_batch(indices, batch_labels, generators)[: stop - start]
                progress.update(stop - start)
        return out

    @abc.abstractmethod
    def _random_batch(self, labels: np.ndarray | None, generators: list[torch.Generator]) -> np.ndarray:
        """Draw one sample per generator."""

    @abc.abstractmethod
    def _variation_batch(
        self, images: np.ndarray, degree: float, labels: np.ndarray | None, generators: list[torch.Generator]
    ) -> np.ndarray:
        """Vary each image with its own generator."""


def check_sampling_options(num_inference_steps: int, batch_size: int) -> None:
    """Reject fewer than one sampling step or sample per batch, as a one-line UserError."""
    if num_inference_steps < 1 or batch_size < 1:
        raise UserError(
            f"num_inference_steps and batch_size must be >= 1, got {num_inference_steps} and {batch_size}"
        )


def first_line(err: Exception) -> str:
    """The first line of a loader's error (diffusers' span many), or its type: for one-line UserErrors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def resolve_model_dir(name_or_path: str, sha256: str | None = None) -> Path:
    """The local folder to load a model from, checked against ``sha256`` (model.sha256) when given.

    A gs:// prefix is copied once per machine into the model cache (:func:`privevo.model_store.fetch`);
    a local folder or the cached snapshot of a Hugging Face model name is used in place. Never
    downloads from the hub.
    """
    if model_store.is_remote(name_or_path):
        return model_store.fetch(name_or_path, sha256)
    model_dir = _local_model_dir(name_or_path)
    if sha256 is not None:
        model_store.verify(model_dir, sha256, name_or_path)
    return model_dir


def _local_model_dir(name_or_path: str) -> Path:
    """A local model folder, or the cached snapshot of a Hugging Face model name; never downloads."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(name_or_path)) and not path.exists():
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(str(name_or_path), local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            pass
    if path.exists():
        raise UserError(
            f"model path {name_or_path} is a file, not a model folder: point to the folder that holds model_index.json"
        )
    raise UserError(
        f"model path {name_or_path} does not exist (nor is it a Hugging Face model in the local cache): "
        "fix the path or train/download the model first"
    )


def check_model_index(model_dir: Path, name_or_path: str, kinds: tuple[str, ...], hint: str) -> None:
    """Read model_index.json and check that the folder holds one of the pipeline ``kinds``."""
    index_file = model_dir / "model_index.json"
    if not index_file.is_file():
        raise UserError(f"{name_or_path} is not a diffusers model folder (no model_index.json): {hint}")
    try:
        index = json.loads(index_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{index_file} is not valid JSON: re-save the model with save_pretrained") from err
    kind = index.get("_class_name") if isinstance(index, dict) else None
    if kind not in kinds:
        raise UserError(f"{name_or_path} holds a {kind or 'unknown'} model, not {' or '.join(kinds)}: {hint}")
