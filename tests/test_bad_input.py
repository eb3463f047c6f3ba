"""Bad private data through the whole command: one line, exit code 2, nothing half-written, and nothing
about the private set (file names, labels) in the released log: the reason goes to the private tier."""

import json
import shutil
import uuid
from pathlib import Path

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


# ------------------------------------------------ the command line, from the project root with the default folders

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_run_id(request):
    """A unique run id under the default runs/ and runs-private/; both folders are removed after the test."""
    run_id = f"bad-input-{uuid.uuid4().hex[:8]}"

    def remove():
        for folder in (ROOT / "runs" / run_id, ROOT / "runs-private" / run_id):
            shutil.rmtree(folder, ignore_errors=True)
        (ROOT / "local_outputs" / f"{run_id}.log").unlink(missing_ok=True)

    request.addfinalizer(remove)
    return run_id


def only_line(result) -> str:
    """stderr's single line (a user error: nothing else, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--config", "configs/tiny.yaml", "--set", "population.degrees=[0.6"],
     "error: --set population.degrees: '[0.6' is not valid YAML"),
    (["run", "--config", "{typo}"], "error: {typo}: unknown key 'populaton' (did you mean 'population'?)"),
    (["submit", "--host", "http://127.0.0.1:9", "--config", "configs/tiny.yaml"],
     "error: cannot reach the KFP API at http://127.0.0.1:9 (MaxRetryError): check --host"),
    (["submit", "--host", "http://127.0.0.1:9", "--config", "configs/tiny.yaml", "--param", "epsilom=2"],
     "error: unknown run parameter 'epsilom'"),
])
def test_bad_command_lines_are_one_line(tmp_path, run_cli, default_run_id, argv, message):
    typo = tmp_path / "typo.yaml"
    typo.write_text((ROOT / "configs" / "tiny.yaml").read_text().replace("\npopulation:", "\npopulaton:"))
    argv = [arg.replace("{typo}", str(typo)) for arg in argv]
    if argv[0] == "run":
        argv += ["--run-id", default_run_id]
    result = run_cli(*argv, timeout=120)
    assert result.returncode == 2
    assert only_line(result).startswith(message.replace("{typo}", str(typo))), result.stderr
    assert not (ROOT / "runs" / default_run_id).exists()


def test_compile_creates_the_output_folder(run_cli, request):
    folder = ROOT / f"compiled-{uuid.uuid4().hex[:8]}"
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    result = run_cli("compile", "--config", "configs/tiny.yaml", "--output", f"{folder.name}/deep/x.yaml")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (folder / "deep" / "x.yaml").is_file()


def test_a_new_run_that_fails_before_any_release_leaves_no_folder(run_cli, default_run_id):
    result = run_cli("run", "--config", "configs/tiny.yaml", "--run-id", default_run_id,
                     "--set", "private.path=/nonexistent/private-data")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    last = only_line(result)
    assert "private.path /nonexistent/private-data does not exist" in last
    assert f"nothing was released, so run {default_run_id} was removed" in last
    assert not (ROOT / "runs" / default_run_id).exists() and not (ROOT / "runs-private" / default_run_id).exists()


def test_bad_private_data_is_fixed_by_resume_with_a_new_private_path(tmp_path, run_cli, default_run_id):
    """The failed run is kept (its private-tier log tells why); resume --set private.path= finishes it, recorded."""
    bad, good = tmp_path / "bad", tmp_path / "good"
    corrupt_image(bad)
    for c, name in enumerate(("Trouser", "Sneaker", "Bag")):
        for i in range(12):
            write_png(good / name / f"{i}.png", good_gray(10 * c + i))
    result = run_cli("run", "--config", "configs/tiny.yaml", "--run-id", default_run_id,
                     "--set", "private.source=folder", "--set", f"private.path={bad}", "--set", "private.split=null",
                     "--set", "private.classes=null", "--set", "private.rows=null", "--set", "kubernetes.retries=0")
    assert result.returncode == 2
    last = only_line(result)
    assert f"`python pipeline.py run --resume {default_run_id}`" in last and "broken.png" not in last
    run_json = ROOT / "runs" / default_run_id / "run.json"
    assert run_json.is_file()

    result = run_cli("run", "--resume", default_run_id, "--set", "private.path=" + str(good),
                     "--set", "private.limit=30")
    assert result.returncode == 2 and only_line(result).startswith("error: --set private.limit cannot change on resume")
    result = run_cli("run", "--resume", default_run_id, "--set", f"private.path={good}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads(run_json.read_text())
    assert record["config"]["private"]["path"] == str(good)
    assert record["amendments"][-1]["changed"] == {"private.path": [str(bad), str(good)]}
    audit = run_cli("audit", default_run_id)
    assert audit.stdout.strip().splitlines()[-1] == "audit: OK", audit.stdout[-2000:]
