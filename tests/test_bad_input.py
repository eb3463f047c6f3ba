"""Bad private data through the whole command: one line, exit code 2, nothing half-written, and nothing
about the private set (file names, labels) in the released log: the reason goes to the private tier."""

import json

import numpy as np
import pytest
from conftest import tiny_args
from PIL import Image


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def good_gray(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def corrupt_image(folder):
    for i in range(6):
        write_png(folder / "Trouser" / f"{i}.png", good_gray(i))
    (folder / "Trouser" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return "broken.png"


def wrong_channels(folder):
    for i in range(6):
        write_png(folder / "Trouser" / f"{i}.png", good_gray(i))
    write_png(folder / "Trouser" / "colour.png", np.zeros((28, 28, 3), np.uint8))
    return "colour.png"


def empty_folder(folder):
    folder.mkdir(parents=True)
    return "no images"


def unknown_label(folder):
    for i in range(6):
        write_png(folder / "Unicorn" / f"{i}.png", good_gray(i))
    return "Unicorn"


def non_image_file(folder):
    for i in range(6):
        write_png(folder / "Trouser" / f"{i}.png", good_gray(i))
    (folder / "Trouser" / "notes.jpg").write_text("not an image")
    return "notes.jpg"


@pytest.mark.parametrize(
    "make", [corrupt_image, wrong_channels, empty_folder, unknown_label, non_image_file]
)
def test_bad_private_data(tmp_path, run_cli, make):
    folder = tmp_path / "private-data"
    needle = make(folder)
    result = run_cli(*tiny_args(tmp_path / "runs", tmp_path / "private", "--run-id", "bad",
                                "--set", "private.source=folder", "--set", f"private.path={folder}",
                                "--set", "private.split=null", "--set", "private.classes=null",
                                "--set", "private.rows=null", "--set", "kubernetes.retries=0"))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    private_log = tmp_path / "private" / "bad" / "private_errors.json"
    assert lines[-1].startswith("error: ") and str(private_log) in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr
    # the reason (a private file name or label) is in the private tier only, never in a released log
    assert needle in json.loads(private_log.read_text())[-1]["error"]
    if needle != "no images":
        assert needle not in result.stderr + result.stdout
        assert not [p for p in (tmp_path / "runs-kfp").rglob("*") if p.is_file() and needle in p.read_text(errors="ignore")]
    assert not list(tmp_path.rglob("private_embeddings.npz"))
    assert not list(tmp_path.rglob("noisy_histogram*.npz")) and not list(tmp_path.rglob("ledger.json"))
