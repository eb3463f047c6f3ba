"""The ``stable_diffusion`` backend: text-to-image with one prompt per class, img2img variations.

Loads the layout ``StableDiffusionPipeline.save_pretrained`` writes; images are resized and
converted to the experiment's ``image_size`` and ``channels``.
"""

from typing import TYPE_CHECKING, Any, Self

import numpy as np

from privevo import runtime

runtime.prefer_passive_waiting()  # before torch loads OpenMP: see privevo.runtime
import torch  # noqa: E402

from privevo.errors import UserError  # noqa: E402
from privevo.image import image_shape  # noqa: E402
from privevo.image.models.base import (  # noqa: E402
    LocalModel,
    check_model_index,
    check_sampling_options,
    first_line,
    resolve_autocast,
    resolve_dtype,
    resolve_model_dir,
)
from privevo.pretrained import Pretrained  # noqa: E402

if TYPE_CHECKING:
    from privevo.config import Config


class StableDiffusionModel(Pretrained, LocalModel):
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
        check_sampling_options(num_inference_steps, batch_size)
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        extra = {"requires_safety_checker": False} if disable_safety_checker else {}
        img2img: Any = StableDiffusionImg2ImgPipeline(**pipe.components, **extra)
        img2img.set_progress_bar_config(disable=True)
        self.img2img = img2img
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

    config_fields = ("model", "image_size", "channels", "name")  # the default prompt is the experiment's name

    @classmethod
    def pretrained_options(cls, config: "Config") -> dict[str, Any]:
        """The model section's options, one prompt per class (default: the experiment's name), the image shape."""
        from privevo.config import StableDiffusionSection, model_section

        m = model_section(config, StableDiffusionSection)
        image_size, channels = image_shape(config)
        return {"prompts": m.prompts or [config.name], "image_size": image_size, "channels": channels,
                "num_inference_steps": m.num_inference_steps, "guidance_scale": m.guidance_scale,
                "batch_size": m.batch_size, "device": m.device, "disable_safety_checker": m.disable_safety_checker,
                "autocast": m.autocast, "sha256": m.sha256}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        prompts: list[str] | None = None,
        image_size: int | None = None,
        channels: int = 3,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        batch_size: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        disable_safety_checker: bool = True,
        autocast: str = "auto",
        sha256: str | None = None,
    ) -> Self:
        """Load a ``StableDiffusionPipeline.save_pretrained`` folder, offline; no ``prompts``: one empty prompt
        (unconditional)."""
        from diffusers import StableDiffusionPipeline

        model_dir = resolve_model_dir(name_or_path, sha256)
        hint = "expected a StableDiffusionPipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/)"
        check_model_index(model_dir, name_or_path, ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"), hint)
        resolved = runtime.resolve_device(device)
        options: dict[str, Any] = {
            "dtype": resolve_dtype(dtype, resolved), "local_files_only": True, "low_cpu_mem_usage": False,
        }
        if disable_safety_checker:
            options.update(safety_checker=None, requires_safety_checker=False)
        try:
            pipe = StableDiffusionPipeline.from_pretrained(model_dir, **options)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UserError(f"could not load Stable Diffusion from {name_or_path} ({first_line(err)}): {hint}") from err
        return cls(
            pipe.to(resolved), [""] if prompts is None else prompts, str(name_or_path), image_size, channels,
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
        size = (self.resolution, self.resolution)
        return [p.resize(size, Image.Resampling.BICUBIC) if p.size != size else p for p in pils]

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
                pil = pil.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
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
