"""Model folders on Cloud Storage (emulator): copied once per machine into the cache, checked by digest, loaded offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from privevo import model_store, storage
from privevo.config import load_config
from privevo.errors import UserError
from privevo.testing import build_tiny_unet

# Loads the model in a fresh process, counting Cloud Storage listings and reads (each read slowed
# by argv[3] seconds, so that processes started together overlap); waits for the file argv[4]
# first when given. Prints the folder it got and the counts.
_FETCH_SCRIPT = """
import json, os, sys, time
from privevo import model_store, storage

calls = {"list_files": 0, "download_file": 0}

def counted(name, fn, delay):
    def wrapper(*args, **kwargs):
        calls[name] += 1
        time.sleep(delay)
        return fn(*args, **kwargs)
    return wrapper

storage.list_files = counted("list_files", storage.list_files, 0.0)
storage.download_file = counted("download_file", storage.download_file, float(sys.argv[3]))
if len(sys.argv) > 4:
    while not os.path.exists(sys.argv[4]):
        time.sleep(0.01)
print(json.dumps({"path": str(model_store.fetch(sys.argv[1], sys.argv[2])), **calls}))
"""


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight DDPM folder (the shape of configs/tiny.yaml's model)."""
    return Path(build_tiny_unet(str(tmp_path_factory.mktemp("model") / "tiny-unet")))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model cache for this test."""
    root = tmp_path / "model-cache"
    monkeypatch.setenv(model_store.CACHE_ENV, str(root))
    return root


def _upload(gcs_server, folder: Path) -> str:
    """Copy a local folder to a prefix in a fresh emulator bucket; its gs:// URI."""
    uri = storage.join(gcs_server.make_bucket(f"m-{uuid.uuid4().hex[:12]}"), "models", folder.name)
    for path in storage.list_files(str(folder)):
        storage.write_bytes(storage.join(uri, storage.relative_to(path, str(folder))), Path(path).read_bytes())
    return uri


def _count_calls(monkeypatch: pytest.MonkeyPatch, *names: str) -> dict[str, int]:
    """Count calls of storage functions from now on."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        original = getattr(storage, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(storage, name, counted)
    return calls


def _fetch_in_process(uri: str, sha256: str, delay: float = 0.0, go: Path | None = None) -> subprocess.Popen:
    """Start a fresh process that fetches the model (see _FETCH_SCRIPT)."""
    args = [sys.executable, "-c", _FETCH_SCRIPT, uri, sha256, str(delay), *([str(go)] if go else [])]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    """What a fetch process printed, once it succeeded."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)


def _one_line(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    """The message of a UserError, asserting it is one line."""
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_digest_is_sha256sum_of_the_listing_and_the_same_on_gcs(gcs_server, local_model: Path) -> None:
    import hashlib

    files = sorted(storage.list_files(str(local_model)))
    listing = "".join(f"{storage.sha256_uri(f)}  {storage.relative_to(f, str(local_model))}\n" for f in files)
    digest = model_store.folder_digest(str(local_model))
    assert digest == hashlib.sha256(listing.encode()).hexdigest()
    assert model_store.folder_digest(_upload(gcs_server, local_model)) == digest
    proc = subprocess.run([sys.executable, "-m", "privevo.model_store", "hash", str(local_model) + "/"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, digest + "\n")


def test_gcs_model_is_copied_once_and_samples_like_the_local_folder(
    gcs_server, local_model: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from privevo.image.models import load_model

    uri = _upload(gcs_server, local_model)
    digest = model_store.folder_digest(str(local_model))
    overrides = ["model.num_inference_steps=2", "model.batch_size=4", "model.device=cpu"]
    local_config = load_config(ROOT / "configs" / "tiny.yaml", [f"model.path={local_model}", *overrides])
    remote_config = load_config(ROOT / "configs" / "tiny.yaml",
                                [f"model.path={uri}", f"model.sha256={digest}", *overrides])
    n_files = len(storage.list_files(str(local_model)))
    calls = _count_calls(monkeypatch, "list_files", "download_file")

    remote = load_model(remote_config)
    assert calls == {"list_files": 1, "download_file": n_files}
    assert sorted(p.name for p in cache.iterdir()) == [f".{digest}.lock", digest]
    assert model_store.folder_digest(str(cache / digest)) == digest
    assert remote.name == uri  # messages name the configured model, not the cache

    local = load_model(local_config)
    np.testing.assert_array_equal(remote.random(3, seed=7), local.random(3, seed=7))
    images = local.random(2, seed=1)
    np.testing.assert_array_equal(remote.variation(images, 0.5, seed=2), local.variation(images, 0.5, seed=2))

    before = dict(calls)
    load_model(remote_config)  # a second load in this process: from the cache, no request
    assert calls == before
    # ... and in another process on the same machine
    assert _result(_fetch_in_process(uri, digest)) == {"path": str(cache / digest), "list_files": 0, "download_file": 0}


def test_tampered_object_is_refused_in_one_line_and_nothing_is_cached(
    gcs_server, local_model: Path, cache: Path
) -> None:
    uri = _upload(gcs_server, local_model)
    digest = model_store.folder_digest(str(local_model))
    gcs_server.client.bucket(uri.split("/")[2]).blob("models/tiny-unet/unet/config.json").upload_from_string(b"{}")

    with pytest.raises(UserError) as excinfo:
        model_store.fetch(uri, digest)
    message = _one_line(excinfo)
    assert message.startswith(f"model at {uri} does not match model.sha256 (its digest is ")
    assert model_store.folder_digest(uri) in message
    assert [p.name for p in cache.iterdir()] == [f".{digest}.lock"]  # no copy, no temp folder left


def test_local_folder_with_sha256_is_verified(local_model: Path, tmp_path: Path) -> None:
    from privevo.image.models.base import resolve_model_dir

    digest = model_store.folder_digest(str(local_model))
    assert resolve_model_dir(str(local_model), digest) == local_model
    changed = tmp_path / "changed"
    changed.mkdir()
    for path in storage.list_files(str(local_model)):
        target = changed / storage.relative_to(path, str(local_model))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(path).read_bytes())
    (changed / "extra.txt").write_text("an added file changes the digest too\n")
    with pytest.raises(UserError) as excinfo:
        resolve_model_dir(str(changed), digest)
    assert _one_line(excinfo).startswith(f"model at {changed} does not match model.sha256")


def test_concurrent_first_use_downloads_once(gcs_server, local_model: Path, cache: Path, tmp_path: Path) -> None:
    uri = _upload(gcs_server, local_model)
    digest = model_store.folder_digest(str(local_model))
    go = tmp_path / "go"
    procs = [_fetch_in_process(uri, digest, delay=0.05, go=go) for _ in range(3)]
    time.sleep(1.0)  # let them import and wait for the signal
    go.touch()
    results = [_result(p) for p in procs]

    assert {r["path"] for r in results} == {str(cache / digest)}
    n_files = len(storage.list_files(str(local_model)))
    assert sum(r["download_file"] for r in results) == n_files  # one process copied, the others waited for it
    assert sorted(p.name for p in cache.iterdir()) == [f".{digest}.lock", digest]
    assert model_store.folder_digest(str(cache / digest)) == digest


def test_cluster_model_settings_are_checked(gcs_server, local_model: Path, cache: Path) -> None:
    tiny = ROOT / "configs" / "tiny.yaml"
    with pytest.raises(UserError, match=r"model\.path gs://b/m is on Cloud Storage, so it needs model\.sha256"):
        load_config(tiny, ["model.path=gs://b/m"])
    with pytest.raises(UserError, match=r"model\.sha256: .*64 lowercase hex digits"):
        load_config(tiny, ["model.sha256=abc"])
    with pytest.raises(UserError, match=r"kubernetes\.model_pvc is mounted at /models: set model\.path"):
        load_config(tiny, ["kubernetes.model_pvc={claim_name: weights, mount_path: /models}"])
    with pytest.raises(UserError, match=r"mount_path: .*absolute folder"):
        load_config(tiny, ["kubernetes.model_pvc={claim_name: weights, mount_path: models}"])
    config = load_config(tiny, ["kubernetes.model_pvc={claim_name: weights, mount_path: /models/}",
                                "model.path=/models/tiny-unet"])
    assert config.kubernetes.model_pvc is not None and config.kubernetes.model_pvc.mount_path == "/models"
    assert model_store.is_remote("gs://b/m") and not model_store.is_remote(config.model.path or "")

    # the shipped configs' placeholder digest is refused before any download
    uri = _upload(gcs_server, local_model)
    with pytest.raises(UserError, match=r"needs model\.sha256: set it to the folder's digest"):
        model_store.fetch(uri, model_store.PLACEHOLDER_DIGEST)
    assert not cache.exists()


def test_empty_prefix_and_unsafe_object_names_are_refused(gcs_server, cache: Path) -> None:
    bucket = gcs_server.make_bucket(f"m-{uuid.uuid4().hex[:12]}")
    with pytest.raises(UserError, match="holds no files"):
        model_store.fetch(f"{bucket}/models/none", "a" * 64)
    gcs_server.client.bucket(bucket.removeprefix("gs://")).blob("models/evil/../escape.txt").upload_from_string(b"x")
    with pytest.raises(UserError) as excinfo:
        model_store.fetch(f"{bucket}/models/evil", "a" * 64)
    assert "not a plain relative path" in _one_line(excinfo)
    assert os.listdir(cache) == [f".{'a' * 64}.lock"]  # nothing written, inside the cache or beside it


def test_serve_takes_a_gcs_model_with_its_digest(gcs_server, local_model: Path, cache: Path) -> None:
    from privevo import serve

    uri = _upload(gcs_server, local_model)
    with pytest.raises(UserError, match=r"--model-path gs://.* needs --sha256"):
        serve.pretrained_model("ddpm_unet", uri, {})
    assert not cache.exists()  # refused before any download

    digest = model_store.folder_digest(str(local_model))
    model = serve.pretrained_model("ddpm_unet", uri, {"sha256": digest}).load()
    unet = json.loads((local_model / "unet" / "config.json").read_text())
    assert (model.image_size, model.channels) == (unet["sample_size"], unet["in_channels"])  # read off the copy
    assert model_store.folder_digest(str(cache / digest)) == digest
