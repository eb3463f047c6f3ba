"""Bad input through the whole command: one line, exit code 2, nothing half-written. Bad private records are not
bad input: they are skipped, the run goes on, and what was skipped is told in the private tier only (file names,
labels and counts describe the private set)."""

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


def bad_records(folder):
    """Good images beside one of each kind of bad record; returns the names that must stay in the private tier."""
    for i in range(6):
        write_png(folder / "Trouser" / f"{i}.png", good_gray(i))
    (folder / "Trouser" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    write_png(folder / "Trouser" / "colour.png", np.zeros((28, 28, 3), np.uint8))
    (folder / "Trouser" / "notes.jpg").write_text("not an image")
    write_png(folder / "Unicorn" / "0.png", good_gray(9))
    return ["broken.png", "colour.png", "notes.jpg", "Unicorn"]


def test_bad_private_records_are_skipped_and_told_in_the_private_tier_only(tmp_path, run_cli):
    folder = tmp_path / "private-data"
    needles = bad_records(folder)
    result = run_cli(*tiny_args(tmp_path / "runs", tmp_path / "private", "--run-id", "bad",
                                "--set", "private.source=folder", "--set", f"private.path={folder}",
                                "--set", "private.split=null", "--set", "private.classes=null",
                                "--set", "private.rows=null", "--set", "kubernetes.retries=0",
                                "--set", "population.generations=1", "--set", "population.degrees=[0.5]"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    quality_path = tmp_path / "private" / "bad" / "data_quality.json"
    assert f"data quality (private): {quality_path}" in result.stdout
    quality = json.loads(quality_path.read_text())
    assert quality["records_read"] == 10 and quality["records_kept"] == 6 and quality["records_skipped"] == 4
    skipped = json.dumps(quality["skipped"])
    for needle in needles:
        assert needle in skipped
        assert needle not in result.stderr + result.stdout
        assert not [p for p in (tmp_path / "runs").rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]
        assert not [p for p in (tmp_path / "runs-kfp").rglob("*") if p.is_file() and needle in p.read_text(errors="ignore")]


def test_private_data_of_another_form_than_the_config_fails_in_one_line(tmp_path, run_cli):
    """An .npz of RGB images for a grayscale config is configuration, not a record: it fails before any release."""
    data = tmp_path / "rgb.npz"
    np.savez(data, images=np.zeros((6, 28, 28, 3), np.uint8), labels=np.array([1, 7, 8, 1, 7, 8]))
    result = run_cli(*tiny_args(tmp_path / "runs", tmp_path / "private", "--run-id", "bad",
                                "--set", "private.source=npz", "--set", f"private.path={data}",
                                "--set", "private.split=null", "--set", "private.rows=null",
                                "--set", "kubernetes.retries=0"))
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    private_log = tmp_path / "private" / "bad" / "private_errors.json"
    assert lines[-1].startswith("error: ") and str(private_log) in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr
    assert "3 channel(s)" in json.loads(private_log.read_text())[-1]["error"]
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
    (["submit", "--host", "http://127.0.0.1:9", "--config", "configs/tiny.yaml", "--allow-local"],
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
    result = run_cli("compile", "--config", "configs/tiny.yaml", "--allow-local", "--output", f"{folder.name}/deep/x.yaml")
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
    for i in range(6):  # loose images: no classes, but the config filters by class (a config error, not a record's)
        write_png(bad / f"{i}.png", good_gray(i))
    for c, name in enumerate(("Trouser", "Sneaker", "Bag")):
        for i in range(12):
            write_png(good / name / f"{i}.png", good_gray(10 * c + i))
    result = run_cli("run", "--config", "configs/tiny.yaml", "--run-id", default_run_id,
                     "--set", "private.source=folder", "--set", f"private.path={bad}", "--set", "private.split=null",
                     "--set", "private.rows=null", "--set", "kubernetes.retries=0",
                     "--set", "population.generations=1", "--set", "population.degrees=[0.5]")
    assert result.returncode == 2
    last = only_line(result)
    assert f"`python pipeline.py run --resume {default_run_id}`" in last and str(bad) not in last
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
