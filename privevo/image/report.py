"""The report's image views: a grid of each generation's samples and one of the held-out real images."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo import storage
from privevo.layout import REFERENCE_GRID_PNG

if TYPE_CHECKING:
    from privevo.run_record import Run


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC grid with a 1-pixel gap."""
    n, h, w, c = images.shape
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = image
    return grid


def _png(array: np.ndarray, scale: int = 3) -> bytes:
    from PIL import Image

    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_grid_png(images: np.ndarray, count: int, seed: int) -> bytes:
    """A seeded random choice of ``count`` images as a PNG grid."""
    from privevo.report import shown_indices

    return _png(image_grid(images[shown_indices(len(images), count, seed)]))


def write_views(run: Run, result: dict[str, Any]) -> None:
    """A sample grid per generation and, when the reference set is apart from the private data, one of real images."""
    from privevo.report import reference_may_be_private
    from privevo.steps import load_population

    count = run.config.evaluation.samples_per_grid
    seed = run.seed("report-samples")  # public: which released samples a grid shows
    for row in result["generations"]:
        population = load_population(run, row["generation"])
        storage.write_bytes(run.layout.report_file(run.layout.sample_grid_name(row["generation"])),
                            sample_grid_png(population.samples, count, seed))
    if not reference_may_be_private(run.config):
        reference = run.modality.load_reference(run)
        if reference is not None:
            storage.write_bytes(run.layout.report_file(REFERENCE_GRID_PNG),
                                sample_grid_png(reference.samples, count, run.seed("report-reference")))


def results_html(run: Run, result: dict[str, Any], figure: Callable[..., str]) -> dict[str, str]:
    """The final grid beside the real images, and every generation's grid (see ``Modality.results_html``)."""
    last = result["generations"][-1]["generation"]
    real = (figure(REFERENCE_GRID_PNG, "real images: the held-out evaluation reference set")
            if storage.exists(run.layout.report_file(REFERENCE_GRID_PNG))
            else '<p class="note">No real samples: the config names no evaluation reference set apart from the '
                 "private data.</p>")
    grids = "".join(figure(run.layout.sample_grid_name(row["generation"]), f"generation {row['generation']}")
                    for row in result["generations"])
    return {"final": f'{figure(run.layout.sample_grid_name(last), f"synthetic images: generation {last} (final)")}\n'
                     f"{real}",
            "gallery": grids,
            "note": "Each grid shows a seeded random choice of samples (the same for every generation), not the first "
                    "rows."}
