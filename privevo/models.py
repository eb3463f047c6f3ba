"""Foundation-model APIs: the two calls Private Evolution makes to a public generative model.

``FoundationModel.random(n, labels, seed)`` is RANDOM_API: ``n`` new samples.
``FoundationModel.variation(images, degree, labels, seed)`` is VARIATION_API: one sample
similar to each input; a larger ``degree`` in [0, 1] moves further away (SDEdit strength).

Images in and out are uint8 NHWC arrays of shape ``(n, image_size, image_size, channels)``.
Every sample ``i`` draws its randomness from its own generator seeded by ``(seed, first_index
+ i)``, so the output does not depend on the batch size, and a job split into shards (shard
``k`` passing ``first_index`` = its offset) gives the same samples as one unsharded call.

Backends:
- ``DDPMUNetModel``: a diffusers ``UNet2DModel`` (unconditional or class-conditional) with DDIM
  sampling and SDEdit variations; the layout ``DDPMPipeline.save_pretrained`` writes.
- ``StableDiffusionModel``: text-to-image with one prompt per class, img2img variations.

Adding a backend (for example a DiT or a consistency model): subclass ``FoundationModel``, set
``image_size``, ``channels``, ``num_classes``, ``name``, ``batch_size`` and ``device`` (and, for mixed
precision, ``autocast_dtype`` from :func:`resolve_autocast`) in ``__init__``, and
implement ``_random_batch(labels, generators)`` and ``_variation_batch(images, degree, labels,
generators)``. Each receives one ``torch.Generator`` per sample (draw that sample's noise from
it, on the CPU, so CPU and CUDA runs agree) and returns uint8 NHWC. The base class validates
inputs, batches, and shows progress. Then add a ``from_pretrained`` classmethod that turns bad
paths into one-line ``UserError``s, and register it in ``BACKENDS`` so configs can name it.
"""

import abc
import inspect
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from privevo import runtime

runtime.prefer_passive_waiting()  # before torch loads OpenMP: see privevo.runtime
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from privevo.errors import UserError  # noqa: E402

Labels = np.ndarray | int | None


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn "auto" into cuda when available, else cpu; reject an unavailable cuda."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"device {device!r} is not valid: use 'auto', 'cpu' or 'cuda'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available: use device 'auto' or 'cpu'")
    return resolved


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


def resolve_autocast(setting: str, device: torch.device, weight_dtype: torch.dtype) -> torch.dtype | None:
    """The mixed-precision compute dtype of the network's forward pass, or None for plain weights' dtype.

    "auto" picks bfloat16 when the weights are float32 and the hardware runs bfloat16 natively
    (CUDA with bf16, CPUs with AMX or AVX512-BF16): the demo UNet then runs about 2.3x faster on
    2 CPU cores (bench/RESULTS.md). The sampler's state and arithmetic stay float32.
    """
    if setting == "off":
        return None
    if setting == "auto":
        if weight_dtype != torch.float32:
            return None
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = device.type == "cpu" and runtime.cpu_has_native_bf16()
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
    """A public generative model behind PE's RANDOM_API and VARIATION_API."""

    image_size: int
    channels: int
    num_classes: int | None
    name: str
    batch_size: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None

    def random(self, n: int, labels: Labels = None, seed: int = 0, first_index: int = 0) -> np.ndarray:
        """Draw ``n`` new samples (RANDOM_API); ``labels`` pick classes where the model has them."""
        if not isinstance(n, (int, np.integer)) or n < 0:
            raise UserError(f"number of samples must be a non-negative integer, got {n!r}")
        n = int(n)
        self._check_seed(seed, first_index)
        labels = self._check_labels(labels, n)

        def run_batch(indices: np.ndarray, batch_labels: np.ndarray | None, generators: list[torch.Generator]) -> np.ndarray:
            return self._random_batch(batch_labels, generators)

        return self._batched(n, seed, first_index, labels, "random", run_batch)

    def variation(
        self, images: np.ndarray, degree: float, labels: Labels = None, seed: int = 0, first_index: int = 0
    ) -> np.ndarray:
        """One variation of each image (VARIATION_API); ``degree`` 0 keeps it, 1 draws anew."""
        self._check_images(images)
        if isinstance(degree, bool) or not isinstance(degree, (int, float, np.floating, np.integer)):
            raise UserError(f"variation degree must be a number in [0, 1], got {degree!r}")
        degree = float(degree)
        if not 0.0 <= degree <= 1.0:
            raise UserError(f"variation degree must be in [0, 1], got {degree}")
        n = len(images)
        self._check_seed(seed, first_index)
        labels = self._check_labels(labels, n)

        def run_batch(indices: np.ndarray, batch_labels: np.ndarray | None, generators: list[torch.Generator]) -> np.ndarray:
            return self._variation_batch(images[indices], degree, batch_labels, generators)

        return self._batched(n, seed, first_index, labels, f"variation {degree:g}", run_batch)

    def _batched(
        self, n: int, seed: int, first_index: int, labels: np.ndarray | None, what: str, run_batch: Callable[..., np.ndarray]
    ) -> np.ndarray:
        """Call ``run_batch(indices, labels, generators)`` for each batch of up to ``batch_size`` samples."""
        out = np.empty((n, self.image_size, self.image_size, self.channels), dtype=np.uint8)
        precision = torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        with precision, tqdm(total=n, desc=f"{self.name}: {what}", unit="img", disable=None) as progress:
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                indices = np.arange(start, stop)
                generators = [sample_generator(int(seed), int(first_index) + i) for i in indices]
                if len(indices) == 1:
                    # CPU kernels for a batch of one differ in the last bits from batched ones;
                    # run it as two identical samples so results never depend on the batch size.
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
            raise UserError(f"labels must be one integer or {n} integers, got dtype {labels.dtype} shape {labels.shape}")
        if self.num_classes is None:
            return None
        if n and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise UserError(f"labels must lie in [0, {self.num_classes}) for model {self.name}")
        return labels.astype(np.int64)

    def _check_images(self, images: np.ndarray) -> None:
        """Reject anything but uint8 NHWC at the model's size and channel count."""
        expected = (self.image_size, self.image_size, self.channels)
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise UserError(f"images for model {self.name} must be uint8 of shape (n, {', '.join(map(str, expected))}), got {got}")


def resolve_model_dir(name_or_path: str) -> Path:
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
        raise UserError(f"model path {name_or_path} is a file, not a model folder: point to the folder that holds model_index.json")
    raise UserError(
        f"model path {name_or_path} does not exist (nor is it a Hugging Face model in the local cache): fix the path or train/download the model first"
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


class DDPMUNetModel(FoundationModel):
    """A diffusers UNet2DModel: DDIM sampling for random, SDEdit (noise then DDIM back) for variation."""

    def __init__(
        self,
        unet: Any,
        scheduler_config: dict[str, Any],
        name: str = "ddpm_unet",
        num_inference_steps: int = 25,
        batch_size: int = 64,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        autocast: str = "auto",
    ) -> None:
        from diffusers import DDIMScheduler

        if num_inference_steps < 1 or batch_size < 1:
            raise UserError(f"num_inference_steps and batch_size must be >= 1, got {num_inference_steps} and {batch_size}")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.unet = unet.to(self.device).eval()
        if self.unet.dtype != self.dtype:
            self.unet.to(self.dtype)
        self.autocast_dtype = resolve_autocast(autocast, self.device, self.dtype)
        self.scheduler = DDIMScheduler.from_config(scheduler_config)
        self.scheduler.set_timesteps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self.batch_size = batch_size
        self.name = name
        self.image_size = int(unet.config.sample_size)
        self.channels = int(unet.config.in_channels)
        self.num_classes = unet.config.num_class_embeds

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        num_inference_steps: int = 25,
        batch_size: int = 64,
        device: str = "auto",
        dtype: str = "auto",
        image_size: int | None = None,
        autocast: str = "auto",
    ) -> "DDPMUNetModel":
        """Load a ``DDPMPipeline.save_pretrained`` folder (unet/ and scheduler/), offline."""
        from diffusers import DDPMScheduler, UNet2DModel

        model_dir = resolve_model_dir(name_or_path)
        hint = "expected a DDPMPipeline folder (model_index.json, unet/, scheduler/)"
        check_model_index(model_dir, name_or_path, ("DDPMPipeline", "DDIMPipeline"), hint)
        try:
            unet = UNet2DModel.from_pretrained(
                model_dir, subfolder="unet", dtype=resolve_dtype(dtype, resolve_device(device)),
                local_files_only=True, low_cpu_mem_usage=False,
            )
            scheduler_config = DDPMScheduler.load_config(model_dir, subfolder="scheduler", local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"could not load the UNet model from {name_or_path} ({first_line}): {hint}") from err
        sample_size = unet.config.sample_size
        if image_size is not None and image_size != sample_size:
            raise UserError(
                f"image_size {image_size} does not match the model's resolution {sample_size} ({name_or_path}): set image_size to {sample_size} or use a model trained at {image_size}"
            )
        return cls(unet, scheduler_config, str(name_or_path), num_inference_steps, batch_size, device, dtype, autocast)

    def _noise(self, generators: list[torch.Generator]) -> torch.Tensor:
        """Per-sample standard normal noise, drawn on the CPU then moved to the model."""
        shape = (self.channels, self.image_size, self.image_size)
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
        return noise.to(self.device, self.dtype)

    @torch.inference_mode()
    def _denoise(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Deterministic DDIM (eta 0) from ``x`` at ``timesteps[0]`` down to a clean sample."""
        for t in timesteps:
            eps = self.unet(x, t.to(self.device), class_labels=labels).sample.to(x.dtype)
            x = self.scheduler.step(eps, t, x, eta=0.0).prev_sample
        return x

    def _class_labels(self, labels: np.ndarray | None, generators: list[torch.Generator]) -> torch.Tensor | None:
        """Labels as a tensor; a conditional model with no labels draws them uniformly per sample."""
        if self.num_classes is None:
            return None
        if labels is None:
            labels = np.array([int(torch.randint(self.num_classes, (1,), generator=g)) for g in generators])
        return torch.from_numpy(labels).to(self.device)

    def _random_batch(self, labels: np.ndarray | None, generators: list[torch.Generator]) -> np.ndarray:
        class_labels = self._class_labels(labels, generators)
        x = self._noise(generators) * self.scheduler.init_noise_sigma
        return tensor_to_images(self._denoise(x, self.scheduler.timesteps, class_labels))

    def _variation_batch(
        self, images: np.ndarray, degree: float, labels: np.ndarray | None, generators: list[torch.Generator]
    ) -> np.ndarray:
        if self.num_classes is not None and labels is None:
            raise UserError(f"model {self.name} is class-conditional: pass the labels of the images to vary")
        steps = min(int(self.num_inference_steps * degree), self.num_inference_steps)
        if steps == 0:
            return images.copy()
        timesteps = self.scheduler.timesteps[self.num_inference_steps - steps :]
        noise = self._noise(generators)
        x0 = images_to_tensor(images).to(self.device, self.dtype)
        x = self.scheduler.add_noise(x0, noise, timesteps[:1])
        return tensor_to_images(self._denoise(x, timesteps, self._class_labels(labels, generators)))


class StableDiffusionModel(FoundationModel):
    """Stable Diffusion: text-to-image with one prompt per class for random, img2img for variation."""

    def __init__(
        self,
        pipe: Any,
        prompts: list[str],
        name: str = "stable_diffusion",
        image_size: int | None = None,
        channels: int = 3,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        batch_size: int = 8,
        disable_safety_checker: bool = True,
        autocast: str = "auto",
    ) -> None:
        from diffusers import StableDiffusionImg2ImgPipeline

        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise UserError("prompts must be a non-empty list of strings, one per class")
        if channels not in (1, 3):
            raise UserError(f"channels must be 1 (grayscale) or 3 (RGB) for Stable Diffusion, got {channels}")
        if num_inference_steps < 1 or batch_size < 1:
            raise UserError(f"num_inference_steps and batch_size must be >= 1, got {num_inference_steps} and {batch_size}")
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        extra = {"requires_safety_checker": False} if disable_safety_checker else {}
        self.img2img = StableDiffusionImg2ImgPipeline(**pipe.components, **extra)
        self.img2img.set_progress_bar_config(disable=True)
        self.prompts = list(prompts)
        self.resolution = int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
        self.image_size = image_size or self.resolution
        self.channels = channels
        self.num_classes = len(self.prompts) if len(self.prompts) > 1 else None
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size
        self.name = name
        self.device = torch.device(pipe.device)
        self.autocast_dtype = resolve_autocast(autocast, self.device, pipe.unet.dtype)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        prompts: list[str],
        image_size: int | None = None,
        channels: int = 3,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        disable_safety_checker: bool = True,
        autocast: str = "auto",
    ) -> "StableDiffusionModel":
        """Load a ``StableDiffusionPipeline.save_pretrained`` folder, offline."""
        from diffusers import StableDiffusionPipeline

        model_dir = resolve_model_dir(name_or_path)
        hint = "expected a StableDiffusionPipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/)"
        check_model_index(model_dir, name_or_path, ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"), hint)
        resolved = resolve_device(device)
        options: dict[str, Any] = {
            "dtype": resolve_dtype(dtype, resolved), "local_files_only": True, "low_cpu_mem_usage": False,
        }
        if disable_safety_checker:
            options.update(safety_checker=None, requires_safety_checker=False)
        try:
            pipe = StableDiffusionPipeline.from_pretrained(model_dir, **options)
        except (OSError, ValueError, KeyError, TypeError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"could not load Stable Diffusion from {name_or_path} ({first_line}): {hint}") from err
        return cls(
            pipe.to(resolved), prompts, str(name_or_path), image_size, channels,
            num_inference_steps, guidance_scale, batch_size, disable_safety_checker, autocast,
        )

    def _prompts(self, labels: np.ndarray | None, n: int) -> list[str]:
        """One prompt per sample: by label, or the first prompt when there are no labels."""
        if labels is None:
            return [self.prompts[0]] * n
        return [self.prompts[int(label)] for label in labels]

    def _to_pipeline_input(self, images: np.ndarray) -> list[Any]:
        """uint8 NHWC to RGB PIL images at the pipeline's resolution."""
        from PIL import Image

        pils = [Image.fromarray(img[..., 0] if self.channels == 1 else img).convert("RGB") for img in images]
        return [p.resize((self.resolution, self.resolution), Image.BICUBIC) if p.size[0] != self.resolution else p for p in pils]

    def _from_pipeline_output(self, images: np.ndarray) -> np.ndarray:
        """Float [0, 1] NHWC RGB at the pipeline's resolution to uint8 at ``image_size``/``channels``."""
        from PIL import Image

        rgb = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if self.image_size == self.resolution and self.channels == 3:
            return rgb
        out = []
        for img in rgb:
            pil = Image.fromarray(img)
            if self.image_size != self.resolution:
                pil = pil.resize((self.image_size, self.image_size), Image.BICUBIC)
            if self.channels == 1:
                pil = pil.convert("L")
            out.append(np.asarray(pil).reshape(self.image_size, self.image_size, self.channels))
        return np.stack(out)

    def _random_batch(self, labels: np.ndarray | None, generators: list[torch.Generator]) -> np.ndarray:
        result = self.pipe(
            prompt=self._prompts(labels, len(generators)),
            height=self.resolution,
            width=self.resolution,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=generators,
            output_type="np",
        )
        return self._from_pipeline_output(result.images)

    def _variation_batch(
        self, images: np.ndarray, degree: float, labels: np.ndarray | None, generators: list[torch.Generator]
    ) -> np.ndarray:
        if int(self.num_inference_steps * degree) == 0:
            return images.copy()
        result = self.img2img(
            prompt=self._prompts(labels, len(images)),
            image=self._to_pipeline_input(images),
            strength=degree,
            num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale,
            generator=generators,
            output_type="np",
        )
        return self._from_pipeline_output(result.images)


BACKENDS: dict[str, type[FoundationModel]] = {
    "ddpm_unet": DDPMUNetModel,
    "stable_diffusion": StableDiffusionModel,
}


def load_foundation_model(kind: str, path: str, **options: Any) -> FoundationModel:
    """Load the foundation model a config names: ``kind`` picks the backend, ``options`` go to it."""
    if kind not in BACKENDS:
        raise UserError(f"unknown foundation model kind {kind!r}: use one of {', '.join(sorted(BACKENDS))}")
    runtime.configure_torch_threads()
    # Tiny (denormal) intermediate values flush to zero on the CPU: the demo UNet runs about 10%
    # faster and its samples are bit-identical (bench/RESULTS.md). A no-op where unsupported.
    torch.set_flush_denormal(True)
    backend = BACKENDS[kind]
    try:
        inspect.signature(backend.from_pretrained).bind(path, **options)
    except TypeError as err:
        raise UserError(f"bad options for foundation model kind {kind!r}: {err}") from err
    return backend.from_pretrained(path, **options)


def build_tiny_unet(out_dir: str, image_size: int = 28, channels: int = 1, num_classes: int | None = None, seed: int = 0) -> str:
    """Save a tiny random-weight DDPM UNet (a test model that builds offline in a second)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        add_attention=False,
        norm_num_groups=4,
        num_class_embeds=num_classes,
    )
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(out_dir, safe_serialization=True)
    return str(out_dir)


def build_tiny_stable_diffusion(out_dir: str, image_size: int = 32, seed: int = 0) -> str:
    """Save a tiny random-weight Stable Diffusion with a character-level CLIP tokenizer (offline, seconds)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if image_size % 2:
        raise UserError(f"image_size for the tiny Stable Diffusion must be even, got {image_size}")
    torch.manual_seed(seed)
    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        (Path(tokenizer_dir) / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
        (Path(tokenizer_dir) / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, model_max_length=77)

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokens),
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return str(out_dir)
