"""The ``ddpm_unet`` backend: a diffusers UNet2DModel with a deterministic sampler and SDEdit variations.

Loads the layout ``DDPMPipeline.save_pretrained`` writes (model_index.json, unet/, scheduler/);
the UNet may be unconditional or class-conditional (``num_class_embeds``).

Samplers (``model.scheduler``): ``ddim`` (eta 0), ``dpm_solver`` (DPM-Solver++ 2M) and ``unipc``
(UniPC, order 2), all deterministic given the initial noise, which each sample draws from its own
generator. Steps per degree: ``model.num_inference_steps`` steps make a full denoise (the random
API, degree 1); a variation at degree d noises to the d-th fraction of that schedule and runs its
last ``int(d * num_inference_steps)`` steps back (SDEdit).
"""

from typing import TYPE_CHECKING, Any, Self

import numpy as np

from privevo import runtime

runtime.prefer_passive_waiting()  # before torch loads OpenMP: see privevo.runtime
import torch  # noqa: E402

from privevo.errors import UserError  # noqa: E402
from privevo.image.models.base import (  # noqa: E402
    LocalModel,
    check_model_index,
    check_sampling_options,
    first_line,
    images_to_tensor,
    resolve_autocast,
    resolve_dtype,
    resolve_model_dir,
    tensor_to_images,
)
from privevo.pretrained import Pretrained  # noqa: E402

if TYPE_CHECKING:
    from privevo.config import Config


def unet_memory_format(device: torch.device, compute_dtype: torch.dtype) -> torch.memory_format:
    """channels_last for float32 on the CPU, where oneDNN's convolutions run NHWC without reordering.

    Measured on a 2-core Xeon (bench/bench_models.py): the demo UNet about 10% faster in float32 at
    batch 25 on one thread; with bfloat16 autocast it was slower, so other precisions and devices
    keep the default layout.
    """
    if device.type == "cpu" and compute_dtype == torch.float32:
        return torch.channels_last
    return torch.contiguous_format


#: model.scheduler -> the diffusers scheduler class it names (each built from the model's scheduler config).
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm_solver": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


def make_scheduler(name: str, scheduler_config: dict[str, Any]) -> Any:
    """The sampler ``name`` (a key of :data:`SCHEDULERS`) with the model's noise schedule; others are UserErrors."""
    import diffusers

    if name not in SCHEDULERS:
        raise UserError(f"unknown model.scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(scheduler_config)


def variation_steps(num_inference_steps: int, degree: float) -> int:
    """Steps back of an SDEdit variation at ``degree`` (0..1): its share of a full denoise, rounded down."""
    return min(int(num_inference_steps * degree), num_inference_steps)


class DDPMUNetModel(Pretrained, LocalModel):
    """A diffusers UNet2DModel: sampling for random, SDEdit (noise, then the sampler back) for variation."""

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
        scheduler: str = "ddim",
    ) -> None:
        check_sampling_options(num_inference_steps, batch_size)
        self.device = runtime.resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.autocast_dtype = resolve_autocast(autocast, self.device, self.dtype)
        self.memory_format = unet_memory_format(self.device, self.autocast_dtype or self.dtype)
        self.unet = unet.to(self.device, memory_format=self.memory_format).eval()
        if self.unet.dtype != self.dtype:
            self.unet.to(self.dtype)
        self.scheduler = make_scheduler(scheduler, scheduler_config)
        self.scheduler_name = scheduler
        self.scheduler.set_timesteps(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self.batch_size = batch_size
        self.name = name
        self.image_size = int(unet.config.sample_size)
        self.channels = int(unet.config.in_channels)
        self.num_classes = unet.config.num_class_embeds

    config_fields = ("model", "image_size")

    @classmethod
    def pretrained_options(cls, config: "Config") -> dict[str, Any]:
        """The model section's sampling options, and the experiment's ``image_size`` to check the UNet against."""
        from privevo.config import DDPMUNetSection, model_section

        m = model_section(config, DDPMUNetSection)
        return {"num_inference_steps": m.num_inference_steps, "batch_size": m.batch_size, "device": m.device,
                "image_size": config.image_size, "autocast": m.autocast, "sha256": m.sha256, "scheduler": m.scheduler}

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
        sha256: str | None = None,
        scheduler: str = "ddim",
        channels: int | None = None,
    ) -> Self:
        """Load a ``DDPMPipeline.save_pretrained`` folder (unet/ and scheduler/), offline; ``image_size`` and
        ``channels``, where given, must be the UNet's."""
        from diffusers import DDPMScheduler, UNet2DModel

        model_dir = resolve_model_dir(name_or_path, sha256)
        hint = "expected a DDPMPipeline folder (model_index.json, unet/, scheduler/)"
        check_model_index(model_dir, name_or_path, ("DDPMPipeline", "DDIMPipeline"), hint)
        try:
            unet = UNet2DModel.from_pretrained(
                model_dir, subfolder="unet", dtype=resolve_dtype(dtype, runtime.resolve_device(device)),
                local_files_only=True, low_cpu_mem_usage=False,
            )
            scheduler_config = DDPMScheduler.load_config(model_dir, subfolder="scheduler", local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"could not load the UNet model from {name_or_path} ({first_line(err)}): {hint}") from err
        sample_size = unet.config.sample_size
        if image_size is not None and image_size != sample_size:
            raise UserError(
                f"image_size {image_size} does not match the model's resolution {sample_size} ({name_or_path}): "
                f"set image_size to {sample_size} or use a model trained at {image_size}"
            )
        if channels is not None and channels != unet.config.in_channels:
            raise UserError(f"channels {channels} does not match the model's {unet.config.in_channels} ({name_or_path})")
        return cls(
            unet, scheduler_config, str(name_or_path), num_inference_steps, batch_size, device, dtype, autocast, scheduler
        )

    def _noise(self, generators: list[torch.Generator]) -> torch.Tensor:
        """Per-sample standard normal noise, drawn on the CPU then moved to the model."""
        shape = (self.channels, self.image_size, self.image_size)
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
        return noise.to(self.device, self.dtype)

    def _timesteps(self, steps: int) -> torch.Tensor:
        """The last ``steps`` timesteps of the schedule, with a multistep solver's history cleared for a new batch.

        The solver keeps that history on the model, so one instance samples one batch at a time (privevo.serve
        holds a lock around every call)."""
        self.scheduler.set_timesteps(self.num_inference_steps)  # resets a multistep solver's previous outputs
        start = self.num_inference_steps - steps
        if hasattr(self.scheduler, "set_begin_index"):  # a solver that counts its steps starts at the tail
            self.scheduler.set_begin_index(start)
        return self.scheduler.timesteps[start:]

    @torch.inference_mode()
    def _denoise(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The deterministic sampler from ``x`` at ``timesteps[0]`` down to a clean sample."""
        x = x.contiguous(memory_format=self.memory_format)
        for t in timesteps:
            eps = self.unet(x, t.to(self.device), class_labels=labels).sample.to(x.dtype)
            x = self.scheduler.step(eps, t, x).prev_sample  # DDIM's eta defaults to 0
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
        timesteps = self._timesteps(self.num_inference_steps)
        x = self._noise(generators) * self.scheduler.init_noise_sigma
        return tensor_to_images(self._denoise(x, timesteps, class_labels))

    def _variation_batch(
        self, images: np.ndarray, degree: float, labels: np.ndarray | None, generators: list[torch.Generator]
    ) -> np.ndarray:
        if self.num_classes is not None and labels is None:
            raise UserError(f"model {self.name} is class-conditional: pass the labels of the images to vary")
        steps = variation_steps(self.num_inference_steps, degree)
        if steps == 0:
            return images.copy()
        timesteps = self._timesteps(steps)
        noise = self._noise(generators)
        x0 = images_to_tensor(images).to(self.device, self.dtype)
        x = self.scheduler.add_noise(x0, noise, timesteps[:1])
        return tensor_to_images(self._denoise(x, timesteps, self._class_labels(labels, generators)))
