"""Embeddings: one registry, built from the config, one-line errors."""

import numpy as np
import pytest
import torch
from conftest import ROOT

from privevo.config import load_config
from privevo.errors import UserError
from privevo.image.embeddings import EMBEDDINGS, embedding_class, load_embedding
from privevo.image.embeddings.effnet_lite0 import EfficientNetLite0Embedding
from privevo.image.embeddings.null import NullEmbedding
from privevo.image.embeddings.pixels import PixelEmbedding

TINY = ROOT / "configs" / "tiny.yaml"


def test_registry_names_every_embedding() -> None:
    assert {name: embedding_class(name) for name in EMBEDDINGS} == {
        "pixels": PixelEmbedding, "effnet_lite0": EfficientNetLite0Embedding, "null": NullEmbedding,
    }


def test_unknown_embedding_is_a_one_line_error() -> None:
    with pytest.raises(UserError) as from_config:
        load_config(TINY, ["embedding.name=clip"])
    with pytest.raises(UserError) as from_registry:
        embedding_class("clip")
    assert "embedding.name" in str(from_config.value)
    for excinfo in (from_config, from_registry):
        message = str(excinfo.value)
        assert "\n" not in message and "'clip'" in message and "effnet_lite0, null, pixels" in message, message


def test_pixels_from_config() -> None:
    embedding = load_embedding(load_config(TINY))
    assert isinstance(embedding, PixelEmbedding) and embedding.dim == 28 * 28
    images = np.full((2, 28, 28, 1), 255, dtype=np.uint8)
    np.testing.assert_array_equal(embedding.embed(images), np.ones((2, 28 * 28), dtype=np.float32))
    ramp = np.arange(2 * 28 * 28, dtype=np.uint16).reshape(2, 28, 28, 1) % 256
    features = embedding.embed(ramp.astype(np.uint8))
    assert features[1, 28 * 3 + 5] == ramp[1, 3, 5, 0] / np.float32(255)  # row-major pixels, scaled to [0, 1]
    with pytest.raises(UserError, match="uint8 NHWC"):
        embedding.embed(images.astype(np.float32))


@pytest.fixture(scope="module")
def effnet() -> EfficientNetLite0Embedding:
    return EfficientNetLite0Embedding(input_size=32, device="cpu")


def fashion(classes: list[str], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``rows`` Fashion-MNIST test images of ``classes`` (the shipped dataset), with their labels."""
    from privevo.image.data import load_image_set

    config = load_config(TINY)
    images = load_image_set("fashion_mnist", config.private.path, 28, 1, split="test", classes=classes,
                            class_names=config.class_names, rows=(0, rows))
    assert images.labels is not None
    return images.images, images.labels


@pytest.mark.model_outputs
def test_effnet_preprocessing_grayscale_resize_and_normalisation(effnet: EfficientNetLite0Embedding) -> None:
    """Grayscale counts as RGB with equal channels; images are resized to input_size; ImageNet normalisation."""
    images, _ = fashion(["Trouser", "Bag"], 4)
    gray = effnet.embed(images)
    np.testing.assert_allclose(effnet.embed(np.repeat(images, 3, axis=3)), gray, rtol=1e-4, atol=1e-4)
    # A flat image stays flat when resized: the same features at 28 and 64 pixels (not so without the resize,
    # since the network's padding weighs the border differently at other sizes).
    flat = effnet.embed(np.full((1, 28, 28, 3), 90, np.uint8))
    np.testing.assert_allclose(effnet.embed(np.full((1, 64, 64, 3), 90, np.uint8)), flat, rtol=1e-4, atol=1e-4)
    # The ImageNet mean colour is the network's zero input.
    mean_colour = np.round(255 * np.array([0.485, 0.456, 0.406])).astype(np.uint8)
    with torch.inference_mode():
        zero = effnet.model.extract_features(torch.zeros(1, 3, 32, 32)).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(effnet.embed(np.broadcast_to(mean_colour, (1, 28, 28, 3)).copy()), zero, atol=0.05)
    assert np.abs(flat - zero).max() > 0.5  # another colour is far from it: the check above can fail


@pytest.mark.model_outputs
def test_effnet_features_tell_images_apart(effnet: EfficientNetLite0Embedding) -> None:
    """Other images give other features; a class's images lie closer together than to another class's."""
    images, labels = fashion(["Trouser", "Sneaker", "Bag"], 30)
    features = effnet.embed(images, batch_size=7)
    np.testing.assert_allclose(effnet.embed(images[:7]), features[:7], rtol=1e-4, atol=1e-4)  # batching aside
    # Measured (AVX-512 and AVX2 kernels alike): pairs at least 3.7 apart, 7.7 within a class and 10.2
    # between classes on average; one grey level brighter moves an image's features at most 0.59.
    distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
    same, other = labels[:, None] == labels[None], ~np.eye(len(images), dtype=bool)
    assert distances[other].min() > 1.0
    assert distances[same & other].mean() < 0.9 * distances[~same].mean()
    brighter = np.minimum(images.astype(np.int16) + 1, 255).astype(np.uint8)
    assert np.linalg.norm(effnet.embed(brighter) - features, axis=1).max() < 0.3 * distances[other].min()


def test_effnet_from_config_and_its_device(monkeypatch: pytest.MonkeyPatch) -> None:
    embedding = load_embedding(load_config(TINY, ["embedding.name=effnet_lite0", "embedding.device=cpu"]))
    assert isinstance(embedding, EfficientNetLite0Embedding) and embedding.device == torch.device("cpu")
    features = embedding.embed(np.zeros((3, 28, 28, 1), dtype=np.uint8), batch_size=2)
    assert features.shape == (3, 1280) and features.dtype == np.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        load_embedding(load_config(TINY, ["embedding.name=effnet_lite0", "embedding.device=cuda"]))
