"""The package as installed: the library imports without its extras, a missing extra is one line, and a wheel
ships the configs and demo models that privevo.run("tiny") finds from any folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRA_MODULES = ("kfp", "google.cloud.storage", "fastapi", "uvicorn")
LIBRARY = ("privevo", "privevo.api", "privevo.export", "privevo.shipped", "privevo.steps", "privevo.storage",
           "privevo.audit", "privevo.model_store", "privevo.config", "privevo.run_record", "privevo.privacy",
           "privevo.evaluation", "privevo.report", "privevo.image.models", "privevo.image.embeddings", "privevo.step_table",
           "privevo.cli", "privevo.dag", "privevo.kfp_client")


def python(code: str, cwd: Path = ROOT, path: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (``path`` first on sys.path)."""
    prefix = f"import sys; sys.path.insert(0, {str(path)!r}); " if path else ""
    return subprocess.run([sys.executable, "-c", prefix + code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_library_imports_without_kfp_gcs_or_fastapi():
    result = python(f"import importlib, json, sys\nfor name in {LIBRARY!r}: importlib.import_module(name)\n"
                    f"print(json.dumps([m for m in {EXTRA_MODULES!r} if m in sys.modules]))")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == []


def test_importing_privevo_alone_loads_no_api():
    result = python("import sys, privevo; print(sorted(m for m in sys.modules if m.startswith('privevo')))")
    assert result.stdout.strip() == "['privevo']", result.stdout + result.stderr


@pytest.mark.parametrize(("blocked", "argv", "extra"), [
    ("kfp", ["compile", "--config", "tiny", "--output", "x.yaml"], "kfp"),
    ("kfp", ["run", "--config", "tiny", "--run-id", "x"], "kfp"),
    ("fastapi", ["serve", "--model-kind", "ddpm_unet", "--model-path", "models/tiny-unet"], "serve"),
])
def test_a_command_without_its_extra_says_which_to_install(tmp_path, blocked, argv, extra):
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"  # as if the package were not installed
            f"from privevo.cli import main; sys.exit(main({argv!r}))")
    result = python(code, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == f"error: this command needs the {extra} extra: pip install 'privevo[{extra}]'\n"
    assert list(tmp_path.iterdir()) == []


def test_a_gs_path_without_the_gcs_extra_is_a_user_error():
    code = ("import sys; sys.modules['google'] = None\n"
            "from privevo import storage\nfrom privevo.errors import UserError\n"
            "try:\n    storage.read_bytes('gs://bucket/run/run.json')\nexcept UserError as e:\n    print(e)")
    result = python(code)
    assert result.stdout == "a gs:// path needs the gcs extra: pip install 'privevo[gcs]'\n", result.stderr[-2000:]


@pytest.mark.slow
def test_a_wheel_ships_the_configs_and_models_that_an_installed_privevo_finds(tmp_path):
    source = _mkdir(tmp_path / "source")  # a copy of the tree: building writes build/ beside the sources
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("privevo", "configs", "models"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("privevo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"privevo/_shipped/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")} <= names
    for model in ("tiny-unet", "fashion-mnist-ddpm", "fashion-mnist-classifier"):
        files = {f"privevo/_shipped/{p.relative_to(ROOT)}" for p in (ROOT / "models" / model).rglob("*") if p.is_file()}
        assert files <= names, sorted(files - names)
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = _mkdir(tmp_path / "elsewhere")
    result = python("import json, privevo.api as api, privevo.shipped as s\n"
                    "c = api.load('tiny')\n"
                    "print(json.dumps([str(s.config_file('configs/tiny.yaml')), c.model.path, s.__file__]))",
                    cwd=elsewhere, path=site)
    assert result.returncode == 0, result.stderr[-3000:]
    config_file, model_path, module = json.loads(result.stdout)
    shipped = site / "privevo" / "_shipped"
    assert module.startswith(str(site)) and config_file == str(shipped / "configs" / "tiny.yaml")
    assert model_path == str(shipped / "models" / "tiny-unet")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
