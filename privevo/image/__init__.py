"""Images: uint8 NHWC samples, diffusion models behind the two APIs, image embeddings for the vote.

Where each part lives: loaders in :mod:`privevo.image.data`, foundation-model backends in
:mod:`privevo.image.models` (``MODEL_BACKENDS``; the KServe v2 wire format in
:mod:`privevo.image.protocol`), vote embeddings in :mod:`privevo.image.embeddings`
(``EMBEDDINGS``), metrics in :mod:`privevo.image.evaluation` (with the public classifier of
:mod:`privevo.image.classifier`), the report's grids in :mod:`privevo.image.report` and the
export formats in :mod:`privevo.image.export`. Importing this package imports none of them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo.errors import UserError
from privevo.image.evaluation import FD_EXTRACTOR, FD_KEY
from privevo.modalities import Modality, SampleSet, Scores
from privevo.population import Population

if TYPE_CHECKING:
    from pathlib import Path

    from privevo.config import Config, DataConfig
    from privevo.data_quality import DataQuality
    from privevo.run_record import Run

#: The version of the population ``.npz`` this code writes and reads.
POPULATION_FORMAT_VERSION = 1


class ImageModality(Modality):
    """Square uint8 NHWC images of ``config.image_size`` pixels and ``config.channels`` channels."""

    name = "image"
    population_suffix = ".npz"
    export_formats = ("imagefolder", "npz")
    summary_keys = (FD_KEY, "precision", "recall", "class_tv")
    headline_keys = (FD_KEY, "class_tv")

    def encode_population(self, population: Population) -> bytes:
        """The versioned ``.npz`` (deterministic for the same arrays)."""
        _check_images(population.samples)
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            format_version=np.int64(POPULATION_FORMAT_VERSION),
            images=population.samples,
            labels=population.labels.astype(np.int64),
            parent_ids=population.parent_ids.astype(np.int64),
            generation=np.int64(population.generation),
        )
        return buffer.getvalue()

    def decode_population(self, data: bytes, source: str) -> Population:
        """Decode a population ``.npz`` and check its format version."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                version = int(npz["format_version"])
                if version != POPULATION_FORMAT_VERSION:
                    raise UserError(f"{source} has population format {version}, "
                                    f"this version reads {POPULATION_FORMAT_VERSION}")
                images = npz["images"]
                _check_images(images)
                return Population(samples=images, labels=npz["labels"], parent_ids=npz["parent_ids"],
                                  generation=int(npz["generation"]))
        except (OSError, KeyError, ValueError) as error:
            raise UserError(f"{source} is not a readable population file ({type(error).__name__})") from None

    def load_private(self, run: Run, quality: DataQuality) -> SampleSet:
        """The private images of ``config.private`` (a folder, an .npz or Fashion-MNIST)."""
        from privevo.image.data import load_image_set

        config, p = run.config, run.config.private
        images = load_image_set(p.source, p.path, *image_shape(config), split=p.split,
                                classes=p.classes, limit=p.limit, seed=run.seed("private-subset"),
                                class_names=config.class_names, rows=p.rows, quality=quality)
        return SampleSet(images.images, images.labels)

    def load_reference(self, run: Run) -> SampleSet | None:
        """The held-out real images of ``evaluation.reference``."""
        from privevo.image.data import load_image_set

        config, data = run.config, run.config.evaluation.reference
        if data is None:
            return None
        images = load_image_set(data.source, data.path, *image_shape(config), split=data.split,
                                classes=data.classes, limit=data.limit, seed=run.seed("reference-subset"),
                                class_names=config.class_names, rows=data.rows)
        return SampleSet(images.images, images.labels)

    def may_share_records(self, a: DataConfig, b: DataConfig) -> bool:
        """:func:`privevo.image.data.may_share_images`."""
        from privevo.image.data import may_share_images

        return may_share_images(a, b)

    def load_model(self, config: Config) -> Any:
        """A backend of :data:`privevo.image.models.MODEL_BACKENDS`."""
        from privevo.image.models import load_model

        return load_model(config)

    def model_fields(self, config: Config) -> tuple[str, ...]:
        """What the backend declares it reads."""
        from privevo.image.models import backend_class

        return backend_class(config.model.kind).config_fields

    def embedding_fields(self, config: Config) -> tuple[str, ...]:
        """The embedding section (the image embeddings read nothing else)."""
        return ("embedding",)

    def load_embedding(self, config: Config) -> Any:
        """An embedding of :data:`privevo.image.embeddings.EMBEDDINGS`."""
        from privevo.image.embeddings import load_embedding

        return load_embedding(config)

    def scorer(self, run: Run) -> Callable[[SampleSet | None, int, bool], Scores]:
        """FD and precision/recall on EfficientNet-Lite0 features, class-mix TV, downstream accuracy."""
        from privevo.image.evaluation import image_scorer

        return image_scorer(run)

    def metrics_fields(self, final: dict[str, Any]) -> dict[str, Any]:
        """The FD extractor, and the downstream protocol when downstream accuracy was measured."""
        from privevo.image.evaluation import DOWNSTREAM_PROTOCOL, FD_EXTRACTOR

        return {"fd_extractor": FD_EXTRACTOR,
                "downstream_protocol": DOWNSTREAM_PROTOCOL if final["downstream_accuracy"] is not None else None}

    def curve_panels(self, result: dict[str, Any]) -> list[tuple[str, list[str]]]:
        """FD, class-mix TV and precision/recall."""
        return [(f"Frechet distance ({FD_EXTRACTOR} features)", [FD_KEY]), ("class-mix total variation", ["class_tv"]),
                ("precision / recall", ["precision", "recall"])]

    def headline(self, result: dict[str, Any]) -> list[tuple[str, Any]]:
        """FD, precision, recall, class TV and downstream accuracy."""
        final = result["final"]
        return [(f"FD ({FD_EXTRACTOR})", final.get(FD_KEY)), ("precision", final.get("precision")),
                ("recall", final.get("recall")), ("class TV", final.get("class_tv")),
                ("downstream accuracy", final.get("downstream_accuracy"))]

    def write_report_views(self, run: Run, result: dict[str, Any]) -> None:
        """Sample grids (:func:`privevo.image.report.write_views`)."""
        from privevo.image.report import write_views

        write_views(run, result)

    def results_html(self, run: Run, result: dict[str, Any], figure: Callable[..., str]) -> dict[str, str]:
        """The grids (:func:`privevo.image.report.results_html`)."""
        from privevo.image.report import results_html

        return results_html(run, result, figure)

    def export(self, run: Run, population: Population, export_format: str, folder: Path) -> None:
        """imagefolder (PNG files and metadata.csv) or npz (one synthetic.npz)."""
        from privevo.image import export

        if export_format == "imagefolder":
            export.write_imagefolder(folder, population, export.label_names(population, run.config.class_names))
        else:
            export.write_npz(folder, population, run.config.class_names)

    def describe_release(self, run: Run, count: int) -> str:
        """e.g. "16 synthetic 28x28 images"."""
        return f"{count} synthetic {run.config.image_size}x{run.config.image_size} images"


def image_shape(config: Config) -> tuple[int, int]:
    """``(image_size, channels)`` of an image config (both required there: the config refuses one without them)."""
    if config.image_size is None or config.channels is None:
        raise UserError("image_size and channels are required for modality image")
    return config.image_size, config.channels


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"population images must be uint8 NHWC, got {images.dtype} {images.shape}")
