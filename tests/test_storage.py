"""Storage: local and Cloud Storage (emulator) round trips, atomic and write-once writes, ledger updates, manifests."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, tiny_args
from google.api_core import exceptions as gexc
from google.cloud.storage import Blob

from privevo import storage
from privevo.errors import UserError
from privevo.layout import RunLayout


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh run root: a temp folder, or a prefix in a fresh emulator bucket."""
    if request.param == "local":
        return str(tmp_path / "runs")
    server = request.getfixturevalue("gcs_server")
    return storage.join(server.make_bucket(f"b-{uuid.uuid4().hex[:12]}"), "runs")


def _one_line_error(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    """The message of a UserError, asserting it is one line."""
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_join_and_is_gcs() -> None:
    assert storage.join("gs://b/", "/a/", "b.json") == "gs://b/a/b.json"
    assert storage.join("gs://b", "gen-000", "") == "gs://b/gen-000"
    assert storage.join("/tmp/x", "a", "/b") == "/tmp/x/a/b"
    assert storage.is_gcs("gs://b/x") and not storage.is_gcs("/gs:/b")
    assert storage.relative_to("gs://b/r/gen-000/a/x.npz", "gs://b/r/gen-000/") == "a/x.npz"


def test_bytes_json_npz_round_trip(root: str) -> None:
    data = b"\x00\x01hello"
    uri = storage.join(root, "a", "b.bin")
    assert storage.write_bytes(uri, data) == storage.sha256_bytes(data)
    assert storage.read_bytes(uri) == data
    assert storage.exists(uri) and storage.size(uri) == len(data)
    assert storage.sha256_uri(uri) == storage.sha256_bytes(data)

    obj = {"b": [1, 2.5, None], "a": "x"}
    json_uri = storage.join(root, "c.json")
    sha = storage.write_json(json_uri, obj)
    assert storage.read_json(json_uri) == obj
    assert storage.read_bytes(json_uri).decode().startswith('{\n  "a": "x"')
    assert storage.sha256_uri(json_uri) == sha

    arrays = {"images": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), "labels": np.array([3, 1])}
    npz_uri = storage.join(root, "gen-000", "population.npz")
    storage.write_npz(npz_uri, arrays)
    back = storage.read_npz(npz_uri)
    assert set(back) == {"images", "labels"}
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)
        assert back[key].dtype == value.dtype

    assert storage.list_files(root) == sorted([uri, json_uri, npz_uri])
    assert storage.list_files(storage.join(root, "a")) == [uri]
    assert storage.list_files(storage.join(root, "nothing-here")) == []

    storage.delete(uri)
    storage.delete(uri)
    assert not storage.exists(uri)


def test_an_uncompressed_npz_is_mapped_and_hashed_in_chunks(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_CHUNK_BYTES", 1000)  # several chunks, the last one short
    rng = np.random.default_rng(0)
    arrays = {"embeddings": rng.standard_normal((300, 7)).astype(np.float32), "real": rng.random(300) < 0.5,
              "fortran": np.asfortranarray(rng.standard_normal((4, 5))), "empty": np.zeros((0, 3)),
              "note": np.array("x")}
    uri, old_uri = storage.join(root, "mapped.npz"), storage.join(root, "compressed.npz")
    sha = storage.write_npz(uri, arrays, compress=False)
    old_sha = storage.write_npz(old_uri, arrays)  # as written before: still read, whole
    for path, expected_sha, mapped in ((uri, sha, {"embeddings", "real", "fortran"}), (old_uri, old_sha, set())):
        with storage.mapped_npz(path, ("sha256", "md5")) as (back, hashes):
            assert {key for key, value in back.items() if isinstance(value, np.memmap)} == mapped
            for key, value in arrays.items():
                np.testing.assert_array_equal(back[key], value)
                assert back[key].dtype == value.dtype
        assert hashes["sha256"] == expected_sha
        assert hashes == storage.file_digests(path, ("sha256", "md5")) and len(hashes["md5"]) == 32
    with storage.mapped_npz(uri, hashes=()) as (_, hashes):
        assert hashes == {}
    storage.write_bytes(uri, storage.read_bytes(uri)[:-40])  # truncated: its zip directory is gone
    with pytest.raises(UserError, match=r"not a readable \.npz"), storage.mapped_npz(uri):
        pass


def test_exclusive_write_twice_raises(root: str) -> None:
    uri = storage.join(root, "gen-001", "histogram.npz")
    storage.write_bytes(uri, b"first", exclusive=True)
    with pytest.raises(storage.AlreadyExists):
        storage.write_bytes(uri, b"second", exclusive=True)
    with pytest.raises(storage.AlreadyExists):
        storage.write_json(uri, {"x": 1}, exclusive=True)
    assert storage.read_bytes(uri) == b"first"
    storage.write_bytes(uri, b"overwrite")
    assert storage.read_bytes(uri) == b"overwrite"


def test_update_json_concurrent_appends(root: str) -> None:
    ledger = storage.join(root, "ledger.json")

    def append(worker: int) -> None:
        for i in range(20):
            storage.update_json(ledger, lambda events, i=i: [*(events or []), {"worker": worker, "i": i}])

    threads = [threading.Thread(target=append, args=(w,)) for w in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = storage.read_json(ledger)
    assert len(events) == 40
    for worker in range(2):
        assert [e["i"] for e in events if e["worker"] == worker] == list(range(20))
    assert storage.list_files(root) == [ledger]


def test_missing_files_are_user_errors(root: str) -> None:
    missing = storage.join(root, "nope.json")
    for call in (storage.read_bytes, storage.read_json, storage.size, storage.sha256_uri):
        with pytest.raises(UserError) as excinfo:
            call(missing)
        assert missing in _one_line_error(excinfo)
    assert not storage.exists(missing)


def test_bad_json_and_npz_are_user_errors(root: str) -> None:
    uri = storage.join(root, "broken.json")
    storage.write_bytes(uri, b"{not json")
    with pytest.raises(UserError) as excinfo:
        storage.read_json(uri)
    assert uri in _one_line_error(excinfo)
    with pytest.raises(UserError) as excinfo:
        storage.read_npz(uri)
    assert uri in _one_line_error(excinfo)


def test_manifest_parts_record_writes_and_detect_tampering(root: str) -> None:
    layout = RunLayout(root, "run-1", root + "-private")
    gen, manifest_dir = layout.gen_dir(2), layout.manifest_dir(2)
    population, shard = storage.join(gen, "population.npz"), storage.join(gen, "shards", "0.npz")
    storage.write_bytes(population, b"pop")
    storage.write_bytes(shard, b"shard")
    storage.write_manifest_part(gen, layout.manifest_part(2, "first"))
    storage.write_bytes(storage.join(gen, "histogram.npz"), b"hist")
    storage.write_bytes(storage.join(root, "ledger.json"), b"[]")  # outside the generation: in no part
    storage.write_manifest_part(gen, layout.manifest_part(2, "second"))
    storage.write_manifest_part(gen, layout.manifest_part(2, "idle"))  # wrote nothing: no part
    assert [storage.relative_to(u, manifest_dir) for u in storage.list_files(manifest_dir)] == ["first.json", "second.json"]
    files = storage.read_manifest(manifest_dir)
    assert sorted(files) == ["histogram.npz", "population.npz", "shards/0.npz"]
    assert files["population.npz"] == {"sha256": storage.sha256_bytes(b"pop"), "size": 3}
    assert storage.verify_manifest(gen, manifest_dir) == []

    storage.write_bytes(shard, b"shard, second try")  # a retry rewrites one file and reuses the other
    storage.write_manifest_part(gen, layout.manifest_part(2, "first"))
    files = storage.read_manifest(manifest_dir)
    assert files["shards/0.npz"]["size"] == 17 and "population.npz" in files
    assert storage.verify_manifest(gen, manifest_dir) == []

    storage.write_bytes(population, b"poq")  # changed behind the manifest's back
    storage.take_written(gen)
    storage.delete(shard)
    assert storage.verify_manifest(gen, manifest_dir) == ["population.npz", "shards/0.npz"]


def test_verify_without_manifest_is_user_error(root: str) -> None:
    layout = RunLayout(root, "run", root + "-private")
    with pytest.raises(UserError) as excinfo:
        storage.verify_manifest(layout.gen_dir(0), layout.manifest_dir(0))
    assert "gen-000/manifest holds no manifest" in _one_line_error(excinfo)


def test_read_many_keeps_order_and_names_a_missing_file(root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_TRANSFER_WORKERS", 1)  # batches of 8: two here
    uris = [storage.join(root, "shards", f"{i}.npz") for i in range(12)]
    for i, uri in enumerate(uris):
        storage.write_bytes(uri, bytes([i]) * (i + 1))
    assert list(storage.read_many(uris)) == [bytes([i]) * (i + 1) for i in range(12)]
    missing = storage.join(root, "shards", "missing.npz")
    with pytest.raises(UserError) as excinfo:
        list(storage.read_many([uris[0], missing]))
    assert missing in _one_line_error(excinfo)


def test_gcs_hash_is_recorded_at_write_and_read_without_download(gcs_server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = gcs_server.make_bucket(f"b-{uuid.uuid4().hex[:12]}")
    uri = storage.join(bucket, "runs", "gen-001", "selection.npz")
    sha = storage.write_bytes(uri, b"selected parents")
    with monkeypatch.context() as mp:
        mp.setattr(Blob, "_prep_and_do_download", lambda *a, **k: pytest.fail("sha256_uri downloaded the file"))
        assert storage.sha256_uri(uri) == sha
    assert storage.sha256_uri(uri, from_content=True) == sha

    blob = gcs_server.client.bucket(bucket[len("gs://"):]).blob("runs/gen-001/selection.npz")
    blob.upload_from_string(b"rewritten by another tool")  # no recorded hash: hashed from its content
    assert storage.sha256_uri(uri) == storage.sha256_bytes(b"rewritten by another tool")
    blob.metadata = {"sha256": sha, "sha256-of-crc32c": storage._crc32c(b"selected parents")}
    blob.patch()  # a recorded hash copied onto other content does not count
    assert storage.sha256_uri(uri) == storage.sha256_bytes(b"rewritten by another tool")


def test_gcs_exclusive_retry_of_our_own_upload_is_not_already_exists(gcs_server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = gcs_server.make_bucket(f"b-{uuid.uuid4().hex[:12]}")
    upload = Blob.upload_from_string

    def answer_lost(self: Blob, *args: object, **kwargs: object) -> None:
        """The first try lands, its answer is lost, and the retry finds the object there."""
        upload(self, *args, **kwargs)
        raise gexc.PreconditionFailed("the object already exists")

    monkeypatch.setattr(Blob, "upload_from_string", answer_lost)
    uri = storage.join(bucket, "gen-001", "noisy_histogram.npz")
    assert storage.write_bytes(uri, b"release", exclusive=True) == storage.sha256_bytes(b"release")
    with pytest.raises(storage.AlreadyExists):  # another writer's object is still refused
        storage.write_bytes(uri, b"release", exclusive=True)


@pytest.fixture
def silent_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A loopback endpoint that accepts connections and never answers, as STORAGE_EMULATOR_HOST, with short limits."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    monkeypatch.setattr(storage, "_REQUEST_TIMEOUT_S", 0.2)
    monkeypatch.setattr(storage, "_CALL_DEADLINE_S", 1.0)
    monkeypatch.setattr(storage, "_PRIVATE_PREFIXES", set())
    yield endpoint
    listener.close()
    for connection in accepted:
        connection.close()


def test_stuck_call_fails_in_one_line_naming_the_object(silent_server: str) -> None:
    uri = "gs://released/runs/r1/gen-001/shards/shard-000.npz"
    for call in (storage.exists, storage.read_bytes, lambda u: storage.write_bytes(u, b"x"), storage.sha256_uri):
        started = time.monotonic()
        with pytest.raises(UserError) as excinfo:
            call(uri)
        assert time.monotonic() - started < 10
        message = _one_line_error(excinfo)
        assert message.startswith("Cloud Storage gave no answer to ") and uri in message
        assert f"the emulator at {silent_server} stopped answering" in message


def test_stuck_call_in_the_private_tier_names_only_the_tier(silent_server: str) -> None:
    RunLayout("gs://released/runs", "r1", "gs://private-bucket/runs")
    storage.mark_private("gs://private-bucket/data")
    for uri in ("gs://private-bucket/runs/r1/private_embeddings.npz", "gs://private-bucket/data/patient-0042.png"):
        with pytest.raises(UserError) as excinfo:
            storage.read_bytes(uri)
        message = _one_line_error(excinfo)
        assert "an object in the private tier" in message and "private-bucket" not in message


def test_run_layout() -> None:
    layout = RunLayout("gs://released/runs", "r1", "gs://private-bucket")
    assert layout.run_dir == "gs://released/runs/r1"
    assert layout.run_json == "gs://released/runs/r1/run.json"
    assert layout.ledger_json == "gs://released/runs/r1/ledger.json"
    assert layout.metrics_json == "gs://released/runs/r1/metrics.json"
    assert layout.report_dir == "gs://released/runs/r1/report"
    assert layout.gen_dir(7) == "gs://released/runs/r1/gen-007"
    assert layout.private_dir == "gs://private-bucket/r1"
    assert layout.private_embeddings == "gs://private-bucket/r1/private_embeddings.npz"
    assert layout.shard(2, 1) == "gs://released/runs/r1/gen-002/shards/shard-001.npz"
    assert layout.synthetic_embeddings(3, 0) == "gs://released/runs/r1/gen-003/synthetic_embeddings/shard-000.npz"
    assert layout.release(1) == "gs://released/runs/r1/gen-001/noisy_histogram.npz"
    assert layout.redraw(1, "x") == "gs://released/runs/r1/gen-001/noisy_histogram-redraw-x.npz"
    assert layout.step_record(1, "generate_variations", 2) == "gs://released/runs/r1/gen-001/steps/generate_variations-002.json"
    assert layout.report_file(layout.sample_grid_name(4)) == "gs://released/runs/r1/report/samples-gen-004.png"
    assert RunLayout.is_release("gen-001/noisy_histogram.npz") and RunLayout.is_release("gen-001/noisy_histogram-redraw-x.npz")
    assert not RunLayout.is_release("gen-001/selection.npz") and not RunLayout.is_release("noisy_histogram.npz")
    for run_root, run_id, private_root in [("runs", "a/b", "priv"), ("runs", "r", "runs"), ("runs", "r", "runs/private")]:
        with pytest.raises(UserError) as excinfo:
            RunLayout(run_root, run_id, private_root)
        _one_line_error(excinfo)


def test_local_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    uri = str(tmp_path / "gen-000" / "population.npz")
    for i in range(3):
        storage.write_bytes(uri, bytes([i]) * 1000)
    storage.write_bytes(str(tmp_path / "once.json"), b"{}", exclusive=True)
    with pytest.raises(storage.AlreadyExists):
        storage.write_bytes(str(tmp_path / "once.json"), b"[]", exclusive=True)
    storage.update_json(str(tmp_path / "ledger.json"), lambda events: [*(events or []), 1])
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == [".ledger.json.lock", "ledger.json", "once.json", "population.npz"]
    assert storage.list_files(str(tmp_path)) == sorted(
        str(tmp_path / n) for n in ("gen-000/population.npz", "ledger.json", "once.json")
    )


def test_local_failed_write_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = tmp_path / "run.json"
    storage.write_json(str(uri), {"status": "running"})

    def crash(src: str, dst: str) -> None:
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(OSError):
        storage.write_json(str(uri), {"status": "done"})
    assert storage.read_json(str(uri)) == {"status": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_ctrl_c_during_a_write_lets_it_end_whole_then_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local run's Ctrl-C reaches a step twice; both land inside the write here (each fsync): the file is written
    whole, no temp file stays, and the interrupt comes once the write has ended."""
    import signal

    fsync = os.fsync

    def interrupted_fsync(fd: int) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", interrupted_fsync)
    uri = tmp_path / "gen-000" / "population.npz"
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own: Ctrl-C raises KeyboardInterrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            storage.write_bytes(str(uri), b"whole" * 1000)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the write put it back
    finally:
        signal.signal(signal.SIGINT, before)
    assert uri.read_bytes() == b"whole" * 1000
    assert [p.name for p in uri.parent.iterdir()] == ["population.npz"]


def test_local_permission_error_is_user_error() -> None:
    """A folder whose mode forbids writing: one line naming the file. As root (which ignores modes), the write
    runs in a forked child that has dropped to the unprivileged uid/gid 65534."""
    import shutil
    import tempfile

    parent = Path(tempfile.mkdtemp(prefix="privevo-perm-"))
    try:
        parent.chmod(0o755)
        folder = parent / "ro"
        folder.mkdir(mode=0o555)
        target = str(folder / "x.json")
        outcome = _unprivileged(lambda: storage.write_bytes(target, b"{}"))
        assert outcome == f"UserError: no permission to write {target}: fix the file permissions or choose another folder"
        assert not (folder / "x.json").exists()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _unprivileged(action) -> str:
    """What ``action()`` raised, as ``Type: message`` ("returned" if nothing), run without root's privileges."""

    def outcome() -> str:
        try:
            action()
        except Exception as error:  # noqa: BLE001 - the test compares whatever was raised
            return f"{type(error).__name__}: {error}"
        return "returned"

    if os.geteuid() != 0:
        return outcome()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root for good, report, and leave without running the parent's cleanup
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, outcome().encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        result = pipe.read().decode()
    os.waitpid(pid, 0)
    return result


def test_missing_bucket_is_one_line_user_error(gcs_server) -> None:
    uri = "gs://no-such-bucket-for-privevo/runs/r1/run.json"
    for call in (lambda: storage.write_json(uri, {}), lambda: storage.read_bytes(uri), lambda: storage.list_files("gs://no-such-bucket-for-privevo/runs")):
        with pytest.raises(UserError) as excinfo:
            call()
        assert _one_line_error(excinfo) == "bucket gs://no-such-bucket-for-privevo does not exist: create it or fix run_root"


def test_forbidden_is_one_line_user_error(gcs_server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = gcs_server.make_bucket(f"b-{uuid.uuid4().hex[:12]}")

    def forbidden(*args: object, **kwargs: object) -> None:
        raise gexc.Forbidden("caller does not have storage.objects.create access\nmore detail")

    monkeypatch.setattr(Blob, "upload_from_string", forbidden)
    uri = storage.join(bucket, "runs", "x.json")
    with pytest.raises(UserError) as excinfo:
        storage.write_json(uri, {})
    message = _one_line_error(excinfo)
    assert message.startswith(f"no permission to write {uri}: grant the service account")


def test_gcs_writes_nothing_to_local_gs_folder(gcs_server) -> None:
    bucket = gcs_server.make_bucket(f"b-{uuid.uuid4().hex[:12]}")
    storage.write_json(storage.join(bucket, "r", "run.json"), {"ok": True})
    storage.update_json(storage.join(bucket, "r", "ledger.json"), lambda events: [*(events or []), 1])
    storage.write_manifest_part(storage.join(bucket, "r"), storage.join(bucket, "r", "manifest", "step.json"))
    assert not Path("gs:").exists()


def test_tiny_pipeline_on_the_emulator_twice_in_a_row(gcs_server, tmp_path: Path, run_cli) -> None:
    """The README's way (gs:// run root, two shards, evaluate included), then a second whole run against the same
    emulator (in this process: as many calls again, without kfp.local's start-up per task): no call hangs."""
    import privevo

    released = gcs_server.make_bucket(f"released-{uuid.uuid4().hex[:8]}")
    private = gcs_server.make_bucket(f"private-{uuid.uuid4().hex[:8]}")
    result = run_cli(*tiny_args(f"{released}/runs", f"{private}/runs", "--run-id", "again-0",
                                pipeline_root=tmp_path / "kfp-0"), timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "evaluate" in result.stdout
    second = privevo.run(ROOT / "configs" / "tiny.yaml", run_root=f"{released}/runs", private_root=f"{private}/runs",
                         run_id="again-1")
    assert second.metrics["generations_complete"] == 2
    audit = run_cli("audit", "again-1", "--run-root", f"{released}/runs", timeout=200)
    assert audit.returncode == 0, audit.stdout[-2000:] + audit.stderr[-2000:]
    for run_id in ("again-0", "again-1"):
        manifest = storage.read_manifest(f"{released}/runs/{run_id}/gen-002/manifest")
        assert {"shards/shard-000.npz", "shards/shard-001.npz", "noisy_histogram.npz", "selection.npz"} <= set(manifest)
