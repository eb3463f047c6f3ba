"""Image embeddings: the feature space in which private samples vote.

One interface, :class:`~privevo.image.embeddings.base.Embedding`: ``name``, ``dim``,
``from_config(config)`` and ``embed(images, batch_size) -> float32 (N, dim)`` on uint8 NHWC
images. Adding an extractor (Inception-v3 pool3, CLIP) is one module
``privevo/embeddings/<name>.py`` with a subclass that loads its weights from a local path,
and its line in :data:`EMBEDDINGS`; configs can then name it as ``embedding.name``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from privevo import registry

if TYPE_CHECKING:
    from privevo.config import Config
    from privevo.image.embeddings.base import Embedding

#: embedding.name -> "module:class", imported only when an embedding is loaded (configs stay torch-free).
EMBEDDINGS: dict[str, str] = {
    "pixels": "privevo.image.embeddings.pixels:PixelEmbedding",
    "effnet_lite0": "privevo.image.embeddings.effnet_lite0:EfficientNetLite0Embedding",
    "null": "privevo.image.embeddings.null:NullEmbedding",  # random vectors: benchmarks and tests only
}


def embedding_class(name: str) -> type[Embedding]:
    """The embedding class registered as ``name`` (imports it); unknown names are UserErrors."""
    return registry.registered_class(EMBEDDINGS, name, "embedding")


def load_embedding(config: Config) -> Embedding:
    """The embedding the config names, set up from ``config.embedding`` and the image shape."""
    return embedding_class(config.embedding.name).from_config(config)
