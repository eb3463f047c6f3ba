"""Foundation-model APIs: the two calls Private Evolution makes to a public generative model.

``FoundationModel.random(n, labels, seed)`` is RANDOM_API: ``n`` new samples.
``FoundationModel.variation(images, degree, labels, seed)`` is VARIATION_API: one sample
similar to each input; a larger ``degree`` in [0, 1] moves further away (SDEdit strength).

Images in and out are uint8 NHWC arrays of shape ``(n, image_size, image_size, channels)``.
Every sample ``i`` draws its randomness from its own generator seeded by ``(seed, first_index
+ i)``, so its noise does not depend on the batch size, and a job split into shards (shard
``k`` passing ``first_index`` = its offset) draws the same noise as one unsharded call. The
same call with the same batch size and thread count on the same machine returns identical
images; at another batch size (or sharding) CPU kernels may round differently, so samples
agree only up to :data:`privevo.testing.BATCH_TOLERANCE`.

Backends (:data:`MODEL_BACKENDS`, the config's ``model.kind``):
- ``ddpm_unet`` (:mod:`privevo.image.models.ddpm_unet`): a diffusers ``UNet2DModel`` (unconditional or
  class-conditional) with DDIM sampling and SDEdit variations; the layout
  ``DDPMPipeline.save_pretrained`` writes.
- ``stable_diffusion`` (:mod:`privevo.image.models.stable_diffusion`): text-to-image with one prompt
  per class, img2img variations.
- ``remote`` (:mod:`privevo.image.models.remote`): any of these behind a KServe v2 / Open Inference
  Protocol server (``pipeline.py serve``), called over HTTP with retries, a rate limit, a call
  ledger and a store of received images (:mod:`privevo.image.protocol`); it implements
  :class:`~privevo.image.models.base.FoundationModel`'s ``_random`` and ``_variation`` itself and
  keeps its calls in ``ledger``, which a step binds (:class:`privevo.remote_calls.RecordedModel`).

Adding a backend (for example a DiT or a consistency model) is one new module and one line:

1. ``privevo/image/models/<kind>.py`` with a subclass of :class:`~privevo.image.models.base.LocalModel`
   that sets ``image_size``, ``channels``, ``num_classes``, ``name``, ``batch_size`` and ``device``
   (:func:`privevo.runtime.resolve_device`; and, for mixed precision, ``autocast_dtype`` from
   :func:`~privevo.image.models.base.resolve_autocast`) in ``__init__``, and implements
   ``_random_batch(labels, generators)`` and ``_variation_batch(images, degree, labels,
   generators)``. Each receives one ``torch.Generator`` per sample (draw that sample's noise
   from it, on the CPU, so CPU and CUDA runs agree) and returns uint8 NHWC. The base class
   validates inputs, batches, and shows progress. Its classmethod ``from_config(config)``
   loads the model from ``config.model`` (and ``config.image_size`` / ``channels``), offline,
   turning bad paths into one-line ``UserError``s (:func:`~privevo.image.models.base.resolve_model_dir`,
   :func:`~privevo.image.models.base.check_model_index`); its ``config_fields`` name the config
   fields ``from_config`` reads. A backend loaded from a model folder also derives from
   :class:`~privevo.pretrained.Pretrained`: ``from_pretrained(path, **options)`` loads it (what
   ``pipeline.py serve`` calls) and ``pretrained_options(config)`` gives the options of its
   section (:func:`privevo.config.model_section`).
2. Its line in :data:`MODEL_BACKENDS`: ``"<kind>": "privevo.image.models.<kind>:<Class>"``, and its
   ``model`` section in :mod:`privevo.config`: a subclass of ``ModelSection`` (or of
   ``LocalModelSection`` / ``DiffusionSection`` for a model folder) with ``kind: Literal["<kind>"]``
   and its own options, added to the ``ModelConfig`` union. Configs can then name it as
   ``model.kind``; the registry is plain strings so that validating a config does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from privevo import registry, runtime

if TYPE_CHECKING:
    from privevo.config import Config
    from privevo.image.models.base import FoundationModel

#: model.kind -> "module:class" of its backend, imported only when a model is loaded.
MODEL_BACKENDS: dict[str, str] = {
    "ddpm_unet": "privevo.image.models.ddpm_unet:DDPMUNetModel",
    "stable_diffusion": "privevo.image.models.stable_diffusion:StableDiffusionModel",
    "remote": "privevo.image.models.remote:RemoteModel",
    "null": "privevo.image.models.null:NullModel",  # random images: benchmarks and tests only (model.allow_null)
}


def backend_class(kind: str) -> type[FoundationModel]:
    """The backend class registered as ``kind`` (imports it, and torch); unknown kinds are UserErrors."""
    return registry.registered_class(MODEL_BACKENDS, kind, "foundation model kind")


def prepared_backend(kind: str) -> type[FoundationModel]:
    """The backend class registered as ``kind``, with torch set up for sampling on this machine's CPUs (a run's steps
    and ``pipeline.py serve`` load models through it)."""
    backend = backend_class(kind)  # first: its module sets the OpenMP policy before torch loads
    import torch

    runtime.configure_torch_threads()
    # Tiny (denormal) intermediate values flush to zero on the CPU: the demo UNet runs about 10%
    # faster and its samples are bit-identical (bench/RESULTS.md). A no-op where unsupported.
    torch.set_flush_denormal(True)
    return backend


def load_model(config: Config) -> FoundationModel:
    """The foundation model the config names, with torch set up for sampling on this machine's CPUs."""
    return prepared_backend(config.model.kind).from_config(config)
