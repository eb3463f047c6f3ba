"""Data-independent behaviour: whether a run fails, and what it says, depends on the config and the public data only.

A corrupt record, a class without images or an empty selection in the private set is skipped or voted as nothing and
counted in the private tier's data-quality report; only the set's form (a missing path, the wrong array schema) fails.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from privevo.data_quality import DataQuality
from privevo.errors import UserError
from privevo.image import data
from privevo.voting import nearest_neighbour_histogram
from tests.test_timing_channel import RUN_ID, vote_on

CLASSES = ("Trouser", "Sneaker", "Bag")


def _image_folder(per_class: dict[str, int], corrupt: int = 0) -> Callable[[Path], list[str]]:
    """A writer of a private image folder (class subfolders) with ``per_class`` images and ``corrupt`` broken files."""

    def write(root: Path) -> list[str]:
        folder = root / "private-images"
        rng = np.random.default_rng(0)
        for name, count in per_class.items():
            (folder / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / name / f"{i:03d}.png")
        for i in range(corrupt):
            (folder / CLASSES[0]).mkdir(parents=True, exist_ok=True)
            (folder / CLASSES[0] / f"broken-{i}.png").write_bytes(b"not a png")
        return ["private.source=folder", f"private.path={folder}"]

    return write


def _outcome(root: Path, write: Callable[[Path], list[str]], caplog: pytest.LogCaptureFixture) -> tuple[str, list]:
    """How the public steps, embed_private and the first vote ended, and what they logged."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="privevo"):
        try:
            vote_on(root, write, "privacy.threshold=0")
            ended = "ok"
        except UserError as error:
            ended = f"error: {error}"
    return ended, [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("privevo")]


def test_private_sets_that_differ_in_one_record_have_the_same_public_control_flow(tmp_path, caplog):
    base = dict.fromkeys(CLASSES, 2)
    outcomes = {
        "base": _outcome(tmp_path / "work", _image_folder(base), caplog),
        "one more": _outcome(tmp_path / "work", _image_folder({**base, "Bag": 3}), caplog),
        "one corrupt": _outcome(tmp_path / "work", _image_folder(base, corrupt=1), caplog),
        "class absent": _outcome(tmp_path / "work", _image_folder({"Trouser": 2, "Sneaker": 2}), caplog),
        "empty": _outcome(tmp_path / "work", _image_folder({}, corrupt=1), caplog),
    }
    assert outcomes["base"][0] == "ok"
    for name, outcome in outcomes.items():
        assert outcome == outcomes["base"], name
    # The last run (one corrupt file, nothing else) voted with zero counts; the operator reads why in the private tier.
    quality = json.loads((tmp_path / "work" / "private" / RUN_ID / "data_quality.json").read_text())
    assert quality["records_read"] == 1 and quality["records_kept"] == 0 and quality["records_voting"] == 0
    assert "cannot decode image" in quality["skipped"][0]["reason"]
    assert quality["missing_classes"] == list(CLASSES)


def test_a_missing_private_path_is_a_config_error(tmp_path):
    with pytest.raises(UserError, match=r"private\.path .* does not exist"):
        vote_on(tmp_path / "work", lambda root: ["private.source=folder", f"private.path={root}/absent"])


def test_a_private_schema_that_does_not_match_the_config_fails_in_one_line(tmp_path):
    def rgb_npz(root: Path) -> list[str]:
        np.savez(root / "rgb.npz", images=np.zeros((4, 28, 28, 3), np.uint8), labels=np.array([1, 7, 8, 1]))
        return ["private.source=npz", f"private.path={root}/rgb.npz"]

    with pytest.raises(UserError) as error:
        vote_on(tmp_path / "work", rgb_npz)
    assert "\n" not in str(error.value) and "could not be loaded" in str(error.value)


def test_the_loader_counts_what_it_skips_instead_of_refusing(tmp_path):
    _image_folder({"Trouser": 2, "Sneaker": 1}, corrupt=1)(tmp_path)
    folder = str(tmp_path / "private-images")
    with pytest.raises(UserError, match="cannot decode image"):  # public data: refused, naming the file
        data.load_image_set("folder", folder, 28, 1, classes=list(CLASSES), class_names=list(CLASSES))
    quality = DataQuality()
    loaded = data.load_image_set("folder", folder, 28, 1, classes=list(CLASSES), class_names=list(CLASSES),
                                 quality=quality)
    assert len(loaded.images) == 3
    report = quality.to_dict()
    assert report["records_read"] == 4 and report["records_skipped"] == 1
    assert report["classes"] == {"Trouser": 2, "Sneaker": 1} and report["missing_classes"] == ["Bag"]


def test_rows_that_do_not_vote_and_classes_the_population_lacks_change_nothing():
    rng = np.random.default_rng(0)
    private, synthetic = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)
    private_labels, synthetic_labels = rng.integers(0, 3, 30), np.repeat([0, 1, 2], 4)
    clean = nearest_neighbour_histogram(private, synthetic, 2, private_labels, synthetic_labels)
    padded = nearest_neighbour_histogram(
        np.concatenate([private, rng.normal(size=(10, 4)).astype(np.float32)]), synthetic, 2,
        np.concatenate([private_labels, np.full(5, -1), np.full(5, 7)]), synthetic_labels,
        np.concatenate([np.ones(30, bool), np.zeros(5, bool), np.ones(5, bool)]),
    )
    np.testing.assert_array_equal(padded, clean)  # the same additions in the same order: exactly equal
    assert clean.sum() == pytest.approx(30 * 2 / np.sqrt(2))
