"""Data plane for local paths and gs:// URIs: atomic writes, write-once files, hashes, manifests.

Every file a step reads or writes goes through this module, so a run works the same on a
laptop (plain folders) and on a cluster (Cloud Storage buckets), and a crash never leaves a
half-written file that looks whole.

Hashes are recorded when a file is written, never by reading it back: on gs:// the sha256
goes into the object's metadata (bound to the crc32c Cloud Storage computes), and every
process keeps a journal of what it wrote, from which a step writes its own part of a
generation's manifest. Only the audit (``verify_manifest``) downloads files to hash them, and
``sha256_uri`` an object that another tool wrote (it has no recorded hash).
Every Cloud Storage call retries with exponential backoff and has a deadline; a call that
gets no answer fails with one line that names the object (or only its tier, when private).
"""

from __future__ import annotations

import base64
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
import shutil
import signal
import struct
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo.errors import UserError, needs_extra

if TYPE_CHECKING:
    from google.cloud import storage as gcs

# google-cloud-storage is imported where a gs:// URI is handled, so steps on local folders
# (the embedded default) do not load it (about 25 MiB and 0.3 s per process).

GCS_SCHEME = "gs://"
GCS_FEATURE = "a gs:// path"  # how the error of a missing gcs extra names what needs it
_TMP_MARK = ".tmp-"
_LOCK_SUFFIX = ".lock"
_UPDATE_ATTEMPTS = 20
_REQUEST_TIMEOUT_S = 60.0  # one HTTP request: connect, or wait for the next bytes of the answer
_CALL_DEADLINE_S = 120.0  # one storage call, its retries with exponential backoff included
_TRANSFER_WORKERS = 8  # threads of a parallel read (read_many)
_CHUNK_BYTES = 8 << 20  # one read of a file streamed in chunks (read_chunks)
_SHA256_KEY = "sha256"  # object metadata: the content's sha256, recorded at write time
_CRC32C_KEY = "sha256-of-crc32c"  # object metadata: the crc32c of the content that sha256 was recorded for
_WRITE_KEY = "write-id"  # object metadata: a token of the write, so a retried upload knows its own first try
_PRIVATE_PREFIXES: set[str] = set()  # roots of the private tier (mark_private): errors never name objects there
_WRITTEN: dict[str, dict[str, Any]] = {}  # this process's journal: URI -> sha256 and size of what it wrote


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
    return _backend(root).join(root, [p.strip("/") for p in parts if p.strip("/")])


def relative_to(uri: str, root: str) -> str:
    """Name of uri relative to root, with '/' separators, for manifests and class folders."""
    base = root.rstrip("/") + "/"
    if not uri.startswith(base):
        raise ValueError(f"{uri} is not under {root}")
    return _backend(uri).slashed(uri[len(base) :])


def _split(uri: str) -> tuple[str, str]:
    """Bucket and object name of a gs:// URI."""
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise UserError(f"invalid Cloud Storage URI {uri}: write it as gs://BUCKET/PATH")
    return bucket, name


def _is_internal(name: str) -> bool:
    """Whether a local file name is one of this module's temp or lock files."""
    return name.startswith(".") and (_TMP_MARK in name or name.endswith(_LOCK_SUFFIX))


def mark_private(root: str) -> None:
    """Declare root (a folder or gs:// prefix) part of the private tier: storage errors never name objects under it."""
    if root:
        _PRIVATE_PREFIXES.add(root.rstrip("/") + "/")


def _describe(uri: str) -> str:
    """How an error may name uri: itself when public, only its tier when private (its name may describe private data)."""
    return "an object in the private tier" if any(uri.startswith(p) for p in _PRIVATE_PREFIXES) else uri


# ---------------------------------------------------------------------------- GCS client and errors


@functools.cache
def _client_for(pid: int, emulator_host: str | None) -> gcs.Client:
    """One client per process and emulator setting (clients must not cross a fork)."""
    with needs_extra("gcs", GCS_FEATURE):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage as gcs

    if emulator_host:
        return gcs.Client(project="local", credentials=AnonymousCredentials())
    return gcs.Client()


def _client() -> gcs.Client:
    """The cached Cloud Storage client for this process."""
    return _client_for(os.getpid(), os.environ.get("STORAGE_EMULATOR_HOST"))


def _retry() -> Any:
    """The retry policy of every Cloud Storage call: transient errors retried with exponential backoff, until the deadline."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_delay(initial=0.5, maximum=16.0, multiplier=2.0).with_timeout(_CALL_DEADLINE_S)


def _limits() -> dict[str, Any]:
    """Keyword arguments that bound one Cloud Storage call: the retry policy and the per-request timeout."""
    return {"retry": _retry(), "timeout": _REQUEST_TIMEOUT_S}


def _bucket_exists(bucket: str) -> bool:
    """Whether a bucket exists; True when we may not ask (so we do not blame the bucket)."""
    from google.api_core import exceptions as gexc

    try:
        return _client().bucket(bucket).exists(**_limits())
    except gexc.Forbidden:
        return True


def _account() -> str:
    """Whom Cloud Storage refused, for its error: the service account of the client's credentials (a key's, or the
    pod's Workload Identity account once the metadata server has named it), else a description."""
    email = getattr(_client()._credentials, "service_account_email", None)
    return email if email and email != "default" else "that runs this step"


def _no_answer(action: str, uri: str) -> str:
    """The one-line error of a call that got no answer before its deadline."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    fix = (f"the emulator at {emulator} stopped answering; fake-gcs-server stops once its log fills a pipe nobody reads, "
           "so start it with -log-level error or with its output discarded" if emulator
           else "check the network and the bucket, then rerun the step")
    return f"Cloud Storage gave no answer to {action} {_describe(uri)} within {_CALL_DEADLINE_S:.0f} s of retries: {fix}"


@contextlib.contextmanager
def _gcs_errors(action: str, uri: str) -> Iterator[None]:
    """Turn Cloud Storage failures into one-line UserErrors that say how to fix them."""
    import requests

    with needs_extra("gcs", GCS_FEATURE):
        from google.api_core import exceptions as gexc
        from google.auth.exceptions import DefaultCredentialsError, TransportError

    bucket, _ = _split(uri)
    try:
        yield
    except (gexc.RetryError, requests.exceptions.RequestException, TransportError, ConnectionError, TimeoutError):
        raise UserError(_no_answer(action, uri)) from None
    except DefaultCredentialsError:
        raise UserError(
            f"no Google Cloud credentials to {action} {uri}: run `gcloud auth application-default login`, "
            "set GOOGLE_APPLICATION_CREDENTIALS, or use Workload Identity"
        ) from None
    except gexc.Forbidden:
        raise UserError(
            f"no permission to {action} {_describe(uri)}: grant the service account {_account()} "
            f"roles/storage.objectViewer (read) or roles/storage.objectAdmin (write) on gs://{bucket}; a run started "
            "from the KFP UI runs as the service account picked in its run form (kubernetes.public_service_account)"
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


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block has ended, then act on it as before.

    A file write is then whole or absent, its temp file gone, however many interrupts come and when: a local run's
    Ctrl-C reaches a step twice (the terminal's, then the run's own stop). Only the main thread sets signal
    handlers; a write in another thread runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held and callable(previous):
        previous(signal.SIGINT, None)
    elif held and previous == signal.SIG_DFL:
        os.kill(os.getpid(), signal.SIGINT)


def _write_local(path: str, data: bytes, exclusive: bool) -> None:
    """Write through a fsynced temp file in the same folder, then rename (or link when exclusive); a Ctrl-C waits for
    the write to end (:func:`_interrupt_after`)."""
    with _interrupt_after():
        _write_local_now(path, data, exclusive)


def _write_local_now(path: str, data: bytes, exclusive: bool) -> None:
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


def _crc32c(data: bytes) -> str:
    """crc32c of data as Cloud Storage reports it (base64 of the big-endian 4 bytes)."""
    import google_crc32c

    return base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode()


def _journal(uri: str, data: bytes) -> str:
    """Record what this process wrote to uri (for the manifest part of its step); returns the sha256."""
    sha = sha256_bytes(data)
    _WRITTEN[uri] = {"sha256": sha, "size": len(data)}
    return sha


def note_reused(uri: str, sha256: str) -> None:
    """Journal a file an earlier try of this step wrote and this try reuses: the step's manifest part then lists it
    even when that try stopped between writing the file and writing its part."""
    _WRITTEN[uri] = {"sha256": sha256, "size": size(uri)}


def take_written(folder: str) -> dict[str, dict[str, Any]]:
    """sha256 and size of the files this process wrote under folder since the last call, by relative name (then forgotten)."""
    base = folder.rstrip("/") + "/"
    mine = sorted(uri for uri in _WRITTEN if uri.startswith(base))
    return {relative_to(uri, folder): _WRITTEN.pop(uri) for uri in mine}


def _recorded_sha256(blob: gcs.Blob) -> str | None:
    """The sha256 recorded in an object's metadata at write time, if the object's content is still the one it was recorded for."""
    metadata = blob.metadata or {}
    return metadata.get(_SHA256_KEY) if metadata.get(_CRC32C_KEY) == blob.crc32c else None


def _upload(uri: str, data: bytes, generation: int | None, content_type: str) -> None:
    """Upload data with its sha256 recorded in the object's metadata; generation is the precondition (0: must not exist).

    A retried upload whose first try landed but whose answer was lost fails its precondition:
    the write's token in the metadata tells that apart from another writer's object.
    """
    from google.api_core import exceptions as gexc

    token = secrets.token_hex(8)
    blob = _blob(uri)
    blob.metadata = {_SHA256_KEY: sha256_bytes(data), _CRC32C_KEY: _crc32c(data), _WRITE_KEY: token}
    try:
        blob.upload_from_string(data, content_type=content_type, if_generation_match=generation, **_limits())
    except gexc.PreconditionFailed:
        current = blob.bucket.get_blob(blob.name, **_limits())
        if current is None or (current.metadata or {}).get(_WRITE_KEY) != token:
            raise


def _stat(uri: str) -> gcs.Blob:
    """An object's metadata (one request, no content); NotFound when it does not exist."""
    from google.api_core import exceptions as gexc

    bucket, name = _split(uri)
    blob = _client().bucket(bucket).get_blob(name, **_limits())
    if blob is None:
        raise gexc.NotFound(uri)
    return blob


def _stored_sha256(uri: str) -> str | None:
    """The sha256 recorded for a gs:// object when it was written (None for an object written without one)."""
    with _gcs_errors("read", uri):
        return _recorded_sha256(_stat(uri))


def read_bytes(uri: str) -> bytes:
    """Read a whole file."""
    return _backend(uri).read_bytes(uri)


def read_chunks(uri: str) -> Iterator[bytes]:
    """A file's content in chunks of a few MiB, so that a file of gigabytes is never whole in memory."""
    return _backend(uri).read_chunks(uri)


def file_digests(uri: str, hashes: tuple[str, ...]) -> dict[str, str]:
    """A file's ``hashes`` (hashlib names) as hex digests, from its content read once in chunks."""
    hashers = [hashlib.new(name) for name in hashes]
    for chunk in read_chunks(uri) if hashes else ():
        for hasher in hashers:
            hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in zip(hashes, hashers, strict=True)}


def download_file(uri: str, path: str) -> str:
    """Copy a file to a new local path without holding it in memory (model weights run to gigabytes), written through
    to disk; the sha256 of what arrived."""
    _backend(uri).download(uri, path)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    return sha256_uri(path)


def read_many(uris: list[str]) -> Iterator[bytes]:
    """The contents of several files, in order; on gs:// downloaded in parallel (transfer_manager threads, each
    download retried and bounded), a batch at a time so a large image folder is never all in memory twice."""
    batch = _TRANSFER_WORKERS * 8
    for start in range(0, len(uris), batch):
        yield from _read_batch(uris[start : start + batch])


def _read_batch(uris: list[str]) -> list[bytes]:
    """The contents of a few files, in order (in parallel where their store allows, when they share one)."""
    backend = _backend(uris[0])
    if any(_backend(u) is not backend for u in uris[1:]):
        return [read_bytes(u) for u in uris]
    return backend.read_batch(uris)


def write_bytes(uri: str, data: bytes, *, exclusive: bool = False) -> str:
    """Write a file atomically and return its sha256; exclusive raises AlreadyExists instead of overwriting."""
    _backend(uri).write_bytes(uri, data, exclusive)
    return _journal(uri, data)


def exists(uri: str) -> bool:
    """Whether a file exists (a missing bucket counts as missing)."""
    return _backend(uri).exists(uri)


def list_files(prefix_uri: str) -> list[str]:
    """All files under a folder or gs:// prefix, recursively, as full sorted URIs ([] when there are none)."""
    root = prefix_uri.rstrip("/") or "/"
    return _backend(root).list(root)


def delete(uri: str) -> None:
    """Delete a file; a file that is already gone is fine."""
    _backend(uri).delete(uri)
    _WRITTEN.pop(uri, None)


def sha256_uri(uri: str, *, from_content: bool = False) -> str:
    """Hex sha256 of a file: on gs:// the one recorded at write time (no download) unless from_content (the audit's way).

    A recorded hash counts only while the object's crc32c is the one it was recorded with;
    an object written by another tool is downloaded and hashed.
    """
    return _backend(uri).sha256(uri, from_content)


def size(uri: str) -> int:
    """Size of a file in bytes."""
    return _backend(uri).size(uri)


# ---------------------------------------------------------------------------- backends, one per scheme


class _Backend:
    """The file operations of one kind of store (fsspec-style): the public functions below pick the backend of a
    URI's scheme once (:func:`_backend`) and add what every store shares (the journal, JSON, npz, manifests)."""

    transfer_workers = 1  # threads worth using for many reads (verify_manifest)

    def join(self, root: str, parts: list[str]) -> str:
        """root joined with parts (already stripped of slashes)."""
        raise NotImplementedError

    def slashed(self, relative: str) -> str:
        """A relative name with '/' separators."""
        raise NotImplementedError

    def read_bytes(self, uri: str) -> bytes:
        """A whole file's content."""
        raise NotImplementedError

    def read_batch(self, uris: list[str]) -> list[bytes]:
        """A few files' contents, in order."""
        return [self.read_bytes(uri) for uri in uris]

    def read_chunks(self, uri: str) -> Iterator[bytes]:
        """A file's content in chunks of at most _CHUNK_BYTES."""
        raise NotImplementedError

    def download(self, uri: str, path: str) -> None:
        """Copy a file to a new local path without holding it in memory."""
        raise NotImplementedError

    def write_bytes(self, uri: str, data: bytes, exclusive: bool) -> None:
        """Write a file atomically; exclusive raises AlreadyExists instead of overwriting."""
        raise NotImplementedError

    def exists(self, uri: str) -> bool:
        """Whether a file exists."""
        raise NotImplementedError

    def list(self, root: str) -> list[str]:
        """All files under root (no trailing slash), recursively, as full sorted URIs."""
        raise NotImplementedError

    def delete(self, uri: str) -> None:
        """Delete a file; one already gone is fine."""
        raise NotImplementedError

    def sha256(self, uri: str, from_content: bool) -> str:
        """Hex sha256 of a file (a store may answer from what it recorded at write time, unless from_content)."""
        raise NotImplementedError

    def size(self, uri: str) -> int:
        """A file's size in bytes."""
        raise NotImplementedError

    def update_json(self, uri: str, fn: Callable[[Any], Any]) -> str:
        """Read-modify-write a JSON file against concurrent writers (see :func:`update_json`); the new sha256."""
        raise NotImplementedError

    def set_modified(self, uri: str, seconds: float) -> None:
        """Set a file's modification time where the store lets us."""
        raise NotImplementedError


class _LocalBackend(_Backend):
    """Local folders: fsynced temp files renamed (or linked, when exclusive) into place, flock for updates."""

    def join(self, root: str, parts: list[str]) -> str:
        return os.path.join(root, *parts)

    def slashed(self, relative: str) -> str:
        return relative.replace(os.sep, "/")

    def read_bytes(self, uri: str) -> bytes:
        with _local_errors("read", uri), open(uri, "rb") as f:
            return f.read()

    def read_chunks(self, uri: str) -> Iterator[bytes]:
        with _local_errors("read", uri), open(uri, "rb") as f:
            yield from iter(functools.partial(f.read, _CHUNK_BYTES), b"")

    def download(self, uri: str, path: str) -> None:
        with _local_errors("read", uri):
            shutil.copyfile(uri, path)

    def write_bytes(self, uri: str, data: bytes, exclusive: bool) -> None:
        with _local_errors("write", uri):
            _write_local(uri, data, exclusive)

    def exists(self, uri: str) -> bool:
        return os.path.isfile(uri)

    def list(self, root: str) -> list[str]:
        found: list[str] = []
        for folder, _, names in os.walk(root):
            found.extend(os.path.join(folder, n) for n in names if not _is_internal(n))
        return sorted(found)

    def delete(self, uri: str) -> None:
        with _local_errors("delete", uri), contextlib.suppress(FileNotFoundError):
            os.remove(uri)

    def sha256(self, uri: str, from_content: bool) -> str:
        with _local_errors("read", uri), open(uri, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    def size(self, uri: str) -> int:
        with _local_errors("read", uri):
            return os.path.getsize(uri)

    def update_json(self, uri: str, fn: Callable[[Any], Any]) -> str:
        folder = os.path.dirname(uri) or "."
        with _local_errors("update", uri):
            os.makedirs(folder, exist_ok=True)
            with open(_lock_path(uri), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = read_json(uri) if os.path.isfile(uri) else None
                return write_json(uri, fn(current))

    def set_modified(self, uri: str, seconds: float) -> None:
        for path in (uri, _lock_path(uri)):  # the update lock's time too
            if os.path.exists(path):
                os.utime(path, (seconds, seconds))


class _GcsBackend(_Backend):
    """Cloud Storage: every call retried with backoff and bounded, each object's sha256 recorded in its metadata,
    generation preconditions for exclusive writes and updates, errors in one line (private objects unnamed)."""

    transfer_workers = _TRANSFER_WORKERS

    def join(self, root: str, parts: list[str]) -> str:
        return "/".join([root.rstrip("/"), *parts])

    def slashed(self, relative: str) -> str:
        return relative

    def read_bytes(self, uri: str) -> bytes:
        with _gcs_errors("read", uri):
            return _blob(uri).download_as_bytes(**_limits())

    def read_batch(self, uris: list[str]) -> list[bytes]:
        """In parallel: transfer_manager threads, each download retried and bounded."""
        from google.cloud.storage import transfer_manager

        buffers = [io.BytesIO() for _ in uris]
        with _gcs_errors("read", uris[0]):
            pairs = [(_blob(u), b) for u, b in zip(uris, buffers, strict=True)]
            results = transfer_manager.download_many(pairs, download_kwargs=_limits(), max_workers=_TRANSFER_WORKERS,
                                                     worker_type=transfer_manager.THREAD)
        for uri, result in zip(uris, results, strict=True):
            if isinstance(result, Exception):
                with _gcs_errors("read", uri):
                    raise result
        return [b.getvalue() for b in buffers]

    def read_chunks(self, uri: str) -> Iterator[bytes]:
        with _gcs_errors("read", uri), _blob(uri).open("rb", chunk_size=_CHUNK_BYTES, **_limits()) as f:
            yield from iter(functools.partial(f.read, _CHUNK_BYTES), b"")

    def download(self, uri: str, path: str) -> None:
        with _gcs_errors("read", uri):
            _blob(uri).download_to_filename(path, **_limits())

    def write_bytes(self, uri: str, data: bytes, exclusive: bool) -> None:
        from google.api_core import exceptions as gexc

        content_type = mimetypes.guess_type(uri)[0] or "application/octet-stream"
        with _gcs_errors("write", uri):
            try:
                _upload(uri, data, 0 if exclusive else None, content_type)
            except gexc.PreconditionFailed:
                raise AlreadyExists(uri) from None

    def exists(self, uri: str) -> bool:
        with _gcs_errors("check", uri):
            return _blob(uri).exists(**_limits())

    def list(self, root: str) -> list[str]:
        bucket, name = _split(root)
        with _gcs_errors("list", root):
            blobs = _client().list_blobs(bucket, prefix=f"{name}/" if name else "", **_limits())
            return sorted(f"{GCS_SCHEME}{bucket}/{b.name}" for b in blobs if not b.name.endswith("/"))

    def delete(self, uri: str) -> None:
        from google.api_core import exceptions as gexc

        with _gcs_errors("delete", uri), contextlib.suppress(gexc.NotFound):
            _blob(uri).delete(**_limits())

    def sha256(self, uri: str, from_content: bool) -> str:
        """The one recorded at write time, else (or from_content) the downloaded content's."""
        recorded = None if from_content else _stored_sha256(uri)
        return recorded or sha256_bytes(self.read_bytes(uri))

    def size(self, uri: str) -> int:
        with _gcs_errors("read", uri):
            return int(_stat(uri).size)

    def update_json(self, uri: str, fn: Callable[[Any], Any]) -> str:
        """Generation preconditions: a read whose object changed before the write is retried after a short backoff."""
        from google.api_core import exceptions as gexc

        bucket, name = _split(uri)
        for attempt in range(_UPDATE_ATTEMPTS):
            with _gcs_errors("update", uri):
                blob = _client().bucket(bucket).get_blob(name, **_limits())
                try:
                    if blob is None:
                        current, generation = None, 0
                    else:
                        generation = blob.generation
                        current = _decode_json(blob.download_as_bytes(if_generation_match=generation, **_limits()), uri)
                    data = _encode_json(fn(current))
                    _upload(uri, data, generation, "application/json")
                    return _journal(uri, data)
                except gexc.PreconditionFailed:
                    time.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
        raise UserError(
            f"{uri} kept changing while updating it ({_UPDATE_ATTEMPTS} tries): another writer is busy; rerun the step"
        )

    def set_modified(self, uri: str, seconds: float) -> None:
        """Nothing: an object's times are the store's."""


_LOCAL = _LocalBackend()
#: The backend of each URI scheme; a URI with none of them is a local path.
_BACKENDS: dict[str, _Backend] = {GCS_SCHEME: _GcsBackend()}


def _backend(uri: str) -> _Backend:
    """The backend of uri's scheme."""
    return next((backend for scheme, backend in _BACKENDS.items() if uri.startswith(scheme)), _LOCAL)


def _lock_path(uri: str) -> str:
    """The lock file of a local file's updates (update_json)."""
    return os.path.join(os.path.dirname(uri) or ".", f".{os.path.basename(uri)}{_LOCK_SUFFIX}")


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


def write_npz(uri: str, arrays: dict[str, np.ndarray], *, exclusive: bool = False, compress: bool = True) -> str:
    """Write arrays as an .npz, atomically; returns the sha256. Uncompressed (``compress=False``), its arrays can be
    memory-mapped where they lie (:func:`mapped_npz`)."""
    buf = io.BytesIO()
    save = np.savez_compressed if compress else np.savez
    save(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return write_bytes(uri, buf.getvalue(), exclusive=exclusive)


@contextlib.contextmanager
def mapped_npz(uri: str, hashes: tuple[str, ...] = ("sha256",)) -> Iterator[tuple[dict[str, np.ndarray], dict[str, str]]]:
    """An .npz file's arrays, each one stored uncompressed memory-mapped read-only where it lies (the others read),
    and the file's ``hashes`` (hashlib names to hex digests) of the bytes mapped, computed in chunks: a file of
    gigabytes is never whole in memory. A gs:// file is first streamed to a local temporary copy (in ``TMPDIR``),
    deleted on exit; the arrays are valid inside the ``with`` only."""
    with contextlib.ExitStack() as stack:
        path = uri
        if is_gcs(uri):
            path = os.path.join(stack.enter_context(tempfile.TemporaryDirectory(prefix="privevo-")), "copy.npz")
            _backend(uri).download(uri, path)
        digests = file_digests(path, hashes)
        try:
            with zipfile.ZipFile(path) as z, np.load(path, allow_pickle=False) as npz:
                mapped = {info.filename.removesuffix(".npy"): _mapped_member(path, info)
                          for info in z.infolist() if info.filename.endswith(".npy")}
                arrays = {key: npz[key] if array is None else array for key, array in mapped.items()}
        except (ValueError, OSError, EOFError, struct.error, zipfile.BadZipFile):
            raise UserError(f"{_describe(uri)} is not a readable .npz of plain arrays: "
                            "rerun the step that writes it") from None
        yield arrays, digests


def _mapped_member(path: str, info: zipfile.ZipInfo) -> np.ndarray | None:
    """An uncompressed .npy member of the zip file at ``path`` memory-mapped where it lies; None for any other (a
    compressed, scalar or empty one: read instead)."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)  # the local file header: its name and extra field lengths are its own
        if header[:4] != b"PK\x03\x04":
            raise ValueError("not a zip member")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        if dtype.hasobject or not shape or 0 in shape:  # np.memmap maps no scalar and no empty array
            return None
        return np.memmap(path, dtype, "r", offset=f.tell(), shape=shape, order="F" if fortran_order else "C")


def update_json(uri: str, fn: Callable[[Any], Any]) -> str:
    """Read-modify-write a JSON file safely against concurrent writers; returns the new sha256.

    fn gets the current content (None when the file does not exist yet) and returns the new
    content; it may be called more than once, so it must not have side effects.
    """
    return _backend(uri).update_json(uri, fn)


def set_modified(uri: str, seconds: float) -> None:
    """Set a local file's modification time (and its update lock's, if any) to ``seconds`` since the epoch;
    nothing on gs://, where an object's times are the store's."""
    _backend(uri).set_modified(uri, seconds)


# ---------------------------------------------------------------------------- manifests


def write_manifest_part(folder: str, part_uri: str) -> None:
    """Add the files this process wrote under folder (sha256 and size, as written) to its manifest part part_uri.

    Each step keeps its own part, so no step reads or rewrites another's files or records;
    the manifest of the folder is the union of its parts (``read_manifest``). A part keeps
    the records of files an earlier try wrote and a retry reused. Nothing written: no part.
    """
    written = take_written(folder)
    if written:
        update_json(part_uri, lambda current: {"files": {**(current or {}).get("files", {}), **written}})
        _WRITTEN.pop(part_uri, None)  # a part is not a file of the folder's manifest


def read_manifest(parts_folder: str) -> dict[str, dict[str, Any]]:
    """A folder's manifest: sha256 and size of its files by relative name, the union of its parts ({} when none)."""
    files: dict[str, dict[str, Any]] = {}
    parts = list_files(parts_folder)
    for uri, data in zip(parts, read_many(parts), strict=True):
        files.update(_decode_json(data, uri).get("files", {}))
    return files


def _content_record(uri: str, present: set[str]) -> dict[str, Any] | None:
    """sha256 and size of a file's content, downloaded and hashed (None when it is missing)."""
    if uri not in present:
        return None
    data = read_bytes(uri)
    return {"sha256": sha256_bytes(data), "size": len(data)}


def verify_manifest(folder: str, parts_folder: str) -> list[str]:
    """Names of files in the folder's manifest that are missing or no longer match (sorted); downloads every one."""
    from concurrent.futures import ThreadPoolExecutor

    recorded = read_manifest(parts_folder)
    if not recorded:
        raise UserError(f"{parts_folder} holds no manifest: the generation was never finished; rerun its steps")
    names, present = sorted(recorded), set(list_files(folder))
    with ThreadPoolExecutor(_backend(folder).transfer_workers) as pool:
        actual = pool.map(lambda name: _content_record(join(folder, name), present), names)
        return [name for name, entry in zip(names, actual, strict=True) if entry != recorded[name]]
