"""Export formats of a synthetic image set: PNG files in the Hugging Face ``imagefolder`` layout, or one ``.npz``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from privevo.population import Population

FORMATS = ("imagefolder", "npz")
METADATA_FILE = "metadata.csv"
NPZ_FILE = "synthetic.npz"


def label_names(population: Population, class_names: list[str] | None) -> list[str] | None:
    """Each sample's class name (its label number when the config names no classes); None for an unlabelled set."""
    if not population.conditional:
        return None
    return [class_names[i] if class_names and 0 <= i < len(class_names) else str(i) for i in population.labels.tolist()]


def write_imagefolder(folder: Path, population: Population, names: list[str] | None) -> None:
    """One PNG per sample and metadata.csv (file_name, and label when labelled)."""
    from PIL import Image

    width = max(5, len(str(len(population) - 1)))
    files = [f"{i:0{width}d}.png" for i in range(len(population))]
    for name, image in zip(files, population.samples, strict=True):
        Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image).save(folder / name)
    with open(folder / METADATA_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label"] if names else ["file_name"])
        for i, name in enumerate(files):
            writer.writerow([name, names[i]] if names else [name])


def write_npz(folder: Path, population: Population, class_names: list[str] | None) -> None:
    """images (uint8 NHWC), labels (int64, -1 unlabelled), generation and class_names in one .npz."""
    np.savez_compressed(folder / NPZ_FILE, images=population.samples, labels=population.labels.astype(np.int64),
                        generation=np.int64(population.generation), class_names=np.array(class_names or [], dtype=str))
