"""Public model weights a cluster can reach: a gs:// model folder copied once per machine into a local cache.

A model folder is named by its digest (``model.sha256``): the sha256 of its listing, one
``<sha256 of the file>  <relative path>`` line per file in sorted order, which is what
``sha256sum`` prints for the folder's files. Compute it with ``python -m privevo.model_store
hash PATH`` (a local folder or a gs:// prefix), or in a shell inside the folder with
``find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum``.

A gs:// model is downloaded into ``$PRIVEVO_MODEL_CACHE/<digest>`` (default
``~/.cache/privevo/models``) the first time a process on the machine loads it, checked
against the digest, and loaded from there offline; later processes find the folder and make
no request. Processes that start together (the shards of a step) take turns on a lock file,
so one downloads and the others wait for it; a copy is renamed into place only once it has
been checked, so an interrupted or tampered copy is never used. A local folder with a
digest is checked on every load.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from privevo import storage
from privevo.errors import UserError

CACHE_ENV = "PRIVEVO_MODEL_CACHE"
_DIGEST_LENGTH = 64
PLACEHOLDER_DIGEST = "0" * _DIGEST_LENGTH  # what the shipped cluster configs hold until a real digest replaces it

logger = logging.getLogger(__name__)


def is_remote(path: str) -> bool:
    """Whether a model path names a Cloud Storage prefix, to be copied into the local cache before loading."""
    return storage.is_gcs(path)


def check_digest(sha256: str) -> str:
    """A folder digest is 64 lowercase hex digits; anything else is a one-line error."""
    if len(sha256) != _DIGEST_LENGTH or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("must be the model folder's sha256, 64 lowercase hex digits "
                         "(python -m privevo.model_store hash PATH prints it)")
    return sha256


def cache_root() -> Path:
    """Where copied models live: $PRIVEVO_MODEL_CACHE, else $XDG_CACHE_HOME/privevo/models, else ~/.cache/privevo/models."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "privevo" / "models"


def _listing_digest(entries: Iterable[tuple[str, str]]) -> str:
    """The folder digest of (relative path, file sha256) pairs: sha256 of their sorted sha256sum lines."""
    lines = "".join(f"{sha}  {name}\n" for name, sha in sorted(entries))
    return hashlib.sha256(lines.encode()).hexdigest()


def _files(path: str) -> tuple[str, list[str]]:
    """The folder's root as listed and its files (local or gs://); an empty or missing folder is a one-line error."""
    root = path.rstrip("/") or "/"
    if not is_remote(root) and not os.path.isdir(root):
        raise UserError(f"model path {path} is not a folder: point model.path at the model's folder")
    files = storage.list_files(root)
    if not files:
        raise UserError(f"model folder {path} holds no files: upload the model folder there or fix model.path")
    return root, files


def folder_digest(path: str) -> str:
    """The digest of a local or gs:// model folder (on gs://, each file's sha256 as recorded at write time where it was)."""
    root, files = _files(path)
    return _listing_digest((storage.relative_to(f, root), storage.sha256_uri(f)) for f in files)


def _mismatch(path: str, actual: str) -> UserError:
    """The one-line error of a model folder whose content is not the one model.sha256 names."""
    return UserError(f"model at {path} does not match model.sha256 (its digest is {actual}): restore the model's "
                     f"files, or set model.sha256 to the new digest if the change is intended")


def verify(model_dir: Path, sha256: str, name: str) -> None:
    """Refuse a local model folder whose digest is not sha256 (``name`` is how errors name it)."""
    actual = folder_digest(str(model_dir))
    if actual != sha256:
        raise _mismatch(name, actual)


def _safe_relative(name: str, uri: str) -> PurePosixPath:
    """An object's path below the model prefix, refused when it could leave the cache folder."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise UserError(f"model folder {uri} holds an object whose name is not a plain relative path: rename or remove it")
    return rel


def _download(uri: str, dest: Path) -> tuple[str, int]:
    """Copy every object under a gs:// prefix into dest, one file at a time and streamed to disk (never a whole
    weights file in memory); the digest of what arrived and its bytes."""
    root, files = _files(uri)
    entries, total = [], 0
    for file_uri in files:
        rel = _safe_relative(storage.relative_to(file_uri, root), uri)
        target = dest.joinpath(*rel.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        entries.append((str(rel), storage.download_file(file_uri, str(target))))
        total += target.stat().st_size
    return _listing_digest(entries), total


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on lock_path (released by the kernel if the process dies)."""
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fetch(uri: str, sha256: str | None) -> Path:
    """The local copy of a gs:// model folder whose digest is sha256, downloaded and checked on first use on this machine."""
    if sha256 is None or sha256 == PLACEHOLDER_DIGEST:
        raise UserError(f"model.path {uri} is on Cloud Storage, so it needs model.sha256: set it to the folder's "
                        f"digest (python -m privevo.model_store hash {uri})")
    try:
        check_digest(sha256)  # it names the cache folder
    except ValueError as err:
        raise UserError(f"model.sha256 {sha256!r} {err}") from None
    root = cache_root()
    final = root / sha256
    if final.is_dir():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{sha256}.lock"):
            if final.is_dir():  # another process copied it while this one waited
                return final
            for stale in root.glob(f".{sha256}.tmp-*"):  # left by a process that died mid-copy
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{sha256}.tmp-", dir=root))
            try:
                logger.info("copying model %s into %s", uri, root)
                start = time.monotonic()
                actual, total = _download(uri, tmp)
                if actual != sha256:
                    raise _mismatch(uri, actual)
                os.rename(tmp, final)
                folder = os.open(root, os.O_RDONLY)
                try:
                    os.fsync(folder)  # the rename survives a crash
                finally:
                    os.close(folder)
                logger.info("copied model %s: %.1f MiB in %.1f s", uri, total / 2**20, time.monotonic() - start)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        raise UserError(f"cannot write the model cache {root} ({err.strerror}): set {CACHE_ENV} to a writable "
                        "local folder with room for the model") from None
    return final


def main(argv: list[str] | None = None) -> int:
    """``python -m privevo.model_store hash PATH``: print a model folder's digest, the value of model.sha256."""
    parser = argparse.ArgumentParser(prog="python -m privevo.model_store", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    hash_parser = commands.add_parser("hash", help="print the digest of a local or gs:// model folder (model.sha256)")
    hash_parser.add_argument("path", help="the model folder, or its gs:// prefix")
    args = parser.parse_args(argv)
    try:
        print(folder_digest(args.path))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
