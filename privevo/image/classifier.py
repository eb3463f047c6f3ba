"""A small CNN image classifier: checks that samples are recognisable, measures the class mix
of a synthetic population, and gives the downstream accuracy of synthetic data.

Protocol (fixed so figures are comparable between runs):
- Input: uint8 NHWC images of any size, grayscale or RGB. They are converted to the
  classifier's channel count (luminance or repetition), resized bilinearly to its
  ``image_size`` (28 by default) and scaled to [-1, 1].
- Architecture (``SmallCNN``): two blocks of [3x3 conv, ReLU, 3x3 conv, ReLU, 2x2 max-pool]
  with 32 and 64 channels, then a 128-unit ReLU layer with dropout 0.25 and a linear layer
  to the class logits.
- Training (``train_classifier``): cross-entropy, Adam (lr 1e-3 by default), batch 128,
  3 epochs by default, the data reshuffled every epoch. The seed fixes the initial weights,
  the shuffling and the dropout masks, so one seed gives one model on a given machine.
- Storage: ``model.safetensors`` plus ``config.json`` (architecture hyper-parameters).
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from privevo.errors import UserError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class SmallCNN(nn.Module):
    """Two conv blocks and a two-layer head; about 0.5M parameters at 28x28."""

    def __init__(self, num_classes: int, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.image_size = image_size
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 128),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a float NCHW batch already prepared by ``prepare_images``."""
        return self.head(self.features(x))

    def config(self) -> dict:
        """The hyper-parameters ``load_classifier`` needs to rebuild the model."""
        return {
            "architecture": "SmallCNN",
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
        }


def prepare_images(images: np.ndarray, in_channels: int, image_size: int) -> torch.Tensor:
    """uint8 NHWC (any size, 1 or 3 channels) to float NCHW in [-1, 1] at the classifier's size."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise UserError(f"classifier images must be uint8 NHWC with 1 or 3 channels, got {got}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if x.shape[1] == 3 and in_channels == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and in_channels == 3:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x.div(127.5).sub(1.0)


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    epochs: int = 3,
    batch_size: int = 128,
    seed: int = 0,
    lr: float = 1e-3,
    image_size: int = 28,
) -> SmallCNN:
    """Train a ``SmallCNN`` on uint8 NHWC images and integer labels (see the module protocol)."""
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"labels must be {len(images)} integers, one per image, got {labels.dtype} {labels.shape}")
    if len(labels) == 0 or labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"labels must lie in [0, {num_classes}) and there must be at least one image")
    if epochs < 1 or batch_size < 1:
        raise UserError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    torch.manual_seed(seed)
    in_channels = images.shape[-1] if isinstance(images, np.ndarray) and images.ndim == 4 else 1
    x = prepare_images(images, in_channels, image_size)
    y = torch.from_numpy(labels.astype(np.int64))
    model = SmallCNN(num_classes, in_channels, image_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=shuffle)
        batches = range(0, len(x), batch_size)
        for start in tqdm(batches, desc=f"classifier epoch {epoch + 1}/{epochs}", disable=None):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.inference_mode()
def predict_proba(model: SmallCNN, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Class probabilities, shape (n, num_classes), float32."""
    model.eval()
    device = next(model.parameters()).device
    out = np.empty((len(images), model.num_classes), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        x = prepare_images(images[start : start + batch_size], model.in_channels, model.image_size)
        out[start : start + len(x)] = model(x.to(device)).softmax(-1).float().cpu().numpy()
    return out


def save_classifier(model: SmallCNN, directory: str | Path) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / WEIGHTS_NAME)
    (directory / CONFIG_NAME).write_text(json.dumps(model.config(), indent=2) + "\n")


def load_classifier(directory: str | Path) -> SmallCNN:
    """Rebuild a classifier written by ``save_classifier``."""
    directory = Path(directory)
    config_file, weights_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        raise UserError(
            f"{directory} is not a saved classifier (needs {CONFIG_NAME} and {WEIGHTS_NAME}): "
            "train one with models/train_public_classifier.py"
        )
    config = json.loads(config_file.read_text())
    if config.get("architecture") != "SmallCNN":
        raise UserError(f"{config_file} names architecture {config.get('architecture')!r}, expected 'SmallCNN'")
    model = SmallCNN(config["num_classes"], config["in_channels"], config["image_size"])
    try:
        model.load_state_dict(load_file(weights_file))
    except RuntimeError as err:
        raise UserError(f"{weights_file} does not match {config_file}: re-save the classifier") from err
    return model.eval()
