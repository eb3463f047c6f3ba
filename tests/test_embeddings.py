"""Embeddings: one registry, built from the config, one-line errors."""

import numpy as np
import pytest
import torch
from conftest import ROOT

from privevo.config import load_config
from privevo.embeddings import EMBEDDINGS, embedding_class, load_embedding
from privevo.embeddings.effnet_lite0 import EfficientNetLite0Embedding
from privevo.embeddings.pixels import PixelEmbedding
from privevo.errors import UserError

TINY = ROOT / "configs" / "tiny.yaml"


def test_registry_names_every_embedding() -> None:
    assert {name: embedding_class(name) for name in EMBEDDINGS} == {
        "pixels": PixelEmbedding, "effnet_lite0": EfficientNetLite0Embedding,
    }


def test_unknown_embedding_is_a_one_line_error() -> None:
    with pytest.raises(UserError) as from_config:
        load_config(TINY, ["embedding.name=clip"])
    with pytest.raises(UserError) as from_registry:
        embedding_class("clip")
    assert "embedding.name" in str(from_config.value)
    for excinfo in (from_config, from_registry):
        message = str(excinfo.value)
        assert "\n" not in message and "'clip'" in message and "effnet_lite0, pixels" in message, message


def test_pixels_from_config() -> None:
    embedding = load_embedding(load_config(TINY))
    assert isinstance(embedding, PixelEmbedding) and embedding.dim == 28 * 28
    images = np.full((2, 28, 28, 1), 255, dtype=np.uint8)
    np.testing.assert_array_equal(embedding.embed(images), np.ones((2, 28 * 28), dtype=np.float32))
    with pytest.raises(UserError, match="uint8 NHWC"):
        embedding.embed(images.astype(np.float32))


def test_effnet_from_config_and_its_device(monkeypatch: pytest.MonkeyPatch) -> None:
    embedding = load_embedding(load_config(TINY, ["embedding.name=effnet_lite0", "embedding.device=cpu"]))
    assert isinstance(embedding, EfficientNetLite0Embedding) and embedding.device == torch.device("cpu")
    features = embedding.embed(np.zeros((3, 28, 28, 1), dtype=np.uint8), batch_size=2)
    assert features.shape == (3, 1280) and features.dtype == np.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="CUDA is not available"):
        load_embedding(load_config(TINY, ["embedding.name=effnet_lite0", "embedding.device=cuda"]))
