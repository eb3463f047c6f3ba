"""Data plane for local paths and gs:// URIs: atomic writes, write-once files, hashes, manifests.

Every file a step reads or writes goes through this module, so a run works the same on a
laptop (plain folders) and on a cluster (Cloud Storage buckets), and a crash never leaves a
half-written file that looks whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import mimetypes
import os
import random
import secrets
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo.errors import UserError

if TYPE_CHECKING:
    from google.cloud import storage as gcs

# google-cloud-storage is imported where a gs:// URI is handled, so steps on local folders
# (the embedded default) do not load it (about 25 MiB and 0.3 s per process).

GCS_SCHEME = "gs://"
_TMP_MARK = ".tmp-"
_LOCK_SUFFIX = ".lock"
_UPDATE_ATTEMPTS = 20


class AlreadyExists(Exception):
    """A write-once file already exists; raised by exclusive writes so callers never overwrite a release."""

    def __init__(self, uri: str) -> None:
        super().__init__(f"{uri} already exists")
        self.uri = uri


# ---------------------------------------------------------------------------- paths


def is_gcs(uri: str) -> bool:
    """Whether uri names a Cloud Storage object or prefix (gs://bucket/...)."""
    return uri.startswith(GCS_SCHEME)


def join(root: str, *parts: str) -> str:
    """Join relative parts onto a local folder or gs:// prefix (parts never escape root)."""
    clean = [p.strip("/") for p in parts if p.strip("/")]
    if is_gcs(root):
        return "/".join([root.rstrip("/"), *clean])
    return os.path.join(root, *clean)


def relative_to(uri: str, root: str) -> str:
    """Name of uri relative to root, with '/' separators, for manifests and class folders."""
    base = root.rstrip("/") + "/"
    if not uri.startswith(base):
        raise ValueError(f"{uri} is not under {root}")
    rel = uri[len(base) :]
    return rel if is_gcs(uri) else rel.replace(os.sep, "/")


def _split(uri: str) -> tuple[str, str]:
    """Bucket and object name of a gs:// URI."""
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise UserError(f"invalid Cloud Storage URI {uri}: write it as gs://BUCKET/PATH")
    return bucket, name


def _is_internal(name: str) -> bool:
    """Whether a local file name is one of this module's temp or lock files."""
    return name.startswith(".") and (_TMP_MARK in name or name.endswith(_LOCK_SUFFIX))


# ---------------------------------------------------------------------------- GCS client and errors


@functools.cache
def _client_for(pid: int, emulator_host: str | None) -> gcs.Client:
    """One client per process and emulator setting (clients must not cross a fork)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    if emulator_host:
        return gcs.Client(project="local", credentials=AnonymousCredentials())
    return gcs.Client()


def _client() -> gcs.Client:
    """The cached Cloud Storage client for this process."""
    return _client_for(os.getpid(), os.environ.get("STORAGE_EMULATOR_HOST"))


def _bucket_exists(bucket: str) -> bool:
    """Whether a bucket exists; True when we may not ask (so we do not blame the bucket)."""
    from google.api_core import exceptions as gexc

    try:
        return _client().bucket(bucket).exists()
    except gexc.Forbidden:
        return True


@contextlib.contextmanager
def _gcs_errors(action: str, uri: str) -> Iterator[None]:
    """Turn Cloud Storage failures into one-line UserErrors that say how to fix them."""
    from google.api_core import exceptions as gexc
    from google.auth.exceptions import DefaultCredentialsError

    bucket, _ = _split(uri)
    try:
        yield
    except DefaultCredentialsError:
        raise UserError(
            f"no Google Cloud credentials to {action} {uri}: run `gcloud auth application-default login`, "
            "set GOOGLE_APPLICATION_CREDENTIALS, or use Workload Identity"
        ) from None
    except gexc.Forbidden:
        raise UserError(
            f"no permission to {action} {uri}: grant the service account roles/storage.objectViewer "
            f"(read) or roles/storage.objectAdmin (write) on gs://{bucket}"
        ) from None
    except gexc.NotFound:
        if not _bucket_exists(bucket):
            raise UserError(f"bucket gs://{bucket} does not exist: create it or fix run_root") from None
        raise UserError(f"file {uri} does not exist: check the path or run the step that writes it") from None
    except gexc.BadRequest as e:
        reason = (str(e.message).splitlines() or ["bad request"])[0]
        raise UserError(
            f"Cloud Storage rejected the request to {action} {uri} ({reason}): check the bucket and object names"
        ) from None


def _blob(uri: str) -> gcs.Blob:
    """A blob handle (no request made)."""
    bucket, name = _split(uri)
    if not name:
        raise UserError(f"{uri} names a bucket, not a file: add an object path after the bucket")
    return _client().bucket(bucket).blob(name)


# ---------------------------------------------------------------------------- local helpers


@contextlib.contextmanager
def _local_errors(action: str, path: str) -> Iterator[None]:
    """Turn missing files and permission problems into one-line UserErrors."""
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"file {path} does not exist: check the path or run the step that writes it") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a file: point at a file inside it") from None
    except PermissionError:
        raise UserError(
            f"no permission to {action} {path}: fix the file permissions or choose another folder"
        ) from None


def _fsync_dir(folder: str) -> None:
    """Make a rename in folder durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_local(path: str, data: bytes, exclusive: bool) -> None:
    """Write through a fsynced temp file in the same folder, then rename (or link when exclusive)."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}{_TMP_MARK}{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise AlreadyExists(path) from None
        else:
            os.replace(tmp, path)
        _fsync_dir(folder)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# ---------------------------------------------------------------------------- bytes


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of data."""
    return hashlib.sha256(data).hexdigest()


def read_bytes(uri: str) -> bytes:
    """Read a whole file."""
    if is_gcs(uri):
        with _gcs_errors("read", uri):
            return _blob(uri).download_as_bytes()
    with _local_errors("read", uri), open(uri, "rb") as f:
        return f.read()


def write_bytes(uri: str, data: bytes, *, exclusive: bool = False) -> str:
    """Write a file atomically and return its sha256; exclusive raises AlreadyExists instead of overwriting."""
    if is_gcs(uri):
        from google.api_core import exceptions as gexc
        from google.cloud.storage.retry import DEFAULT_RETRY

        content_type = mimetypes.guess_type(uri)[0] or "application/octet-stream"
        with _gcs_errors("write", uri):
            try:
                if exclusive:
                    _blob(uri).upload_from_string(data, content_type=content_type, if_generation_match=0)
                else:
                    _blob(uri).upload_from_string(data, content_type=content_type, retry=DEFAULT_RETRY)
            except gexc.PreconditionFailed:
                raise AlreadyExists(uri) from None
    else:
        with _local_errors("write", uri):
            _write_local(uri, data, exclusive)
    return sha256_bytes(data)


def exists(uri: str) -> bool:
    """Whether a file exists (a missing bucket counts as missing)."""
    if is_gcs(uri):
        with _gcs_errors("check", uri):
            return _blob(uri).exists()
    return os.path.isfile(uri)


def list_files(prefix_uri: str) -> list[str]:
    """All files under a folder or gs:// prefix, recursively, as full sorted URIs ([] when there are none)."""
    root = prefix_uri.rstrip("/") or "/"
    if is_gcs(root):
        bucket, name = _split(root)
        with _gcs_errors("list", root):
            blobs = _client().list_blobs(bucket, prefix=f"{name}/" if name else "")
            return sorted(f"{GCS_SCHEME}{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))
    found: list[str] = []
    for folder, _, names in os.walk(root):
        found.extend(os.path.join(folder, n) for n in names if not _is_internal(n))
    return sorted(found)


def delete(uri: str) -> None:
    """Delete a file; a file that is already gone is fine."""
    if is_gcs(uri):
        from google.api_core import exceptions as gexc

        with _gcs_errors("delete", uri), contextlib.suppress(gexc.NotFound):
            _blob(uri).delete()
        return
    with _local_errors("delete", uri), contextlib.suppress(FileNotFoundError):
        os.remove(uri)


def sha256_uri(uri: str) -> str:
    """Hex sha256 of a file's content."""
    if is_gcs(uri):
        return sha256_bytes(read_bytes(uri))
    with _local_errors("read", uri), open(uri, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def size(uri: str) -> int:
    """Size of a file in bytes."""
    if is_gcs(uri):
        from google.api_core import exceptions as gexc

        bucket, name = _split(uri)
        with _gcs_errors("read", uri):
            blob = _client().bucket(bucket).get_blob(name)
            if blob is None:
                raise gexc.NotFound(uri)
            return int(blob.size)
    with _local_errors("read", uri):
        return os.path.getsize(uri)


# ---------------------------------------------------------------------------- JSON and npz


def _encode_json(obj: Any) -> bytes:
    """Stable JSON bytes: sorted keys, indent 2, trailing newline."""
    return (json.dumps(obj, sort_keys=True, indent=2) + "\n").encode("utf-8")


def _decode_json(data: bytes, uri: str) -> Any:
    """Parse JSON bytes, blaming uri when they are not JSON."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{uri} is not valid JSON: fix it or delete it and rerun the step that writes it") from None


def read_json(uri: str) -> Any:
    """Read a JSON file."""
    return _decode_json(read_bytes(uri), uri)


def write_json(uri: str, obj: Any, *, exclusive: bool = False) -> str:
    """Write obj as stable JSON (sorted keys, indent 2), atomically; returns the sha256."""
    return write_bytes(uri, _encode_json(obj), exclusive=exclusive)


def read_npz(uri: str) -> dict[str, np.ndarray]:
    """Read every array of an .npz file (no pickled objects)."""
    data = read_bytes(uri)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise UserError(
            f"{uri} is not a readable .npz of plain arrays: save it with numpy.savez (no object arrays)"
        ) from None


def write_npz(uri: str, arrays: dict[str, np.ndarray], *, exclusive: bool = False) -> str:
    """Write arrays as a compressed .npz, atomically; returns the sha256."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return write_bytes(uri, buf.getvalue(), exclusive=exclusive)


def update_json(uri: str, fn: Callable[[Any], Any]) -> str:
    """Read-modify-write a JSON file safely against concurrent writers; returns the new sha256.

    fn gets the current content (None when the file does not exist yet) and returns the new
    content; it may be called more than once, so it must not have side effects.
    """
    if not is_gcs(uri):
        folder = os.path.dirname(uri) or "."
        lock_path = os.path.join(folder, f".{os.path.basename(uri)}{_LOCK_SUFFIX}")
        with _local_errors("update", uri):
            os.makedirs(folder, exist_ok=True)
            with open(lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = read_json(uri) if os.path.isfile(uri) else None
                return write_json(uri, fn(current))
    from google.api_core import exceptions as gexc

    bucket, name = _split(uri)
    for attempt in range(_UPDATE_ATTEMPTS):
        with _gcs_errors("update", uri):
            blob = _client().bucket(bucket).get_blob(name)
            try:
                if blob is None:
                    current, generation = None, 0
                else:
                    generation = blob.generation
                    current = _decode_json(blob.download_as_bytes(if_generation_match=generation), uri)
                data = _encode_json(fn(current))
                _blob(uri).upload_from_string(data, content_type="application/json", if_generation_match=generation)
                return sha256_bytes(data)
            except gexc.PreconditionFailed:
                time.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
    raise UserError(
        f"{uri} kept changing while updating it ({_UPDATE_ATTEMPTS} tries): another writer is busy; rerun the step"
    )


# ---------------------------------------------------------------------------- manifests


def _manifest_entries(folder: str, manifest_uri: str) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under folder except the manifest itself."""
    entries = {}
    for uri in list_files(folder):
        if uri != manifest_uri:
            data = read_bytes(uri)
            entries[relative_to(uri, folder)] = {"sha256": sha256_bytes(data), "size": len(data)}
    return entries


def write_manifest(folder: str, manifest_uri: str) -> str:
    """Record sha256 and size of every file under folder in manifest_uri; returns its sha256."""
    return write_json(manifest_uri, {"files": _manifest_entries(folder, manifest_uri)})


def verify_manifest(folder: str, manifest_uri: str) -> list[str]:
    """Names of files listed in the manifest that are missing or no longer match (sorted)."""
    if not exists(manifest_uri):
        raise UserError(f"{manifest_uri} does not exist: the generation was never finished; rerun its step")
    recorded = read_json(manifest_uri).get("files", {})
    actual = _manifest_entries(folder, manifest_uri)
    return sorted(name for name, entry in recorded.items() if actual.get(name) != entry)
