"""What a cluster asks of a compiled pipeline: paths every pod can reach, images it can pull, and steps whose retries
do not repeat a user error.

- :func:`check_cluster_paths`: ``compile``, ``upload``, ``submit`` and ``schedule`` refuse a local root or data or
  model path, which would resolve inside each pod's own file system (under the image's working folder, owned by
  root), unless ``--allow-local`` says the cluster's pods share a volume at those paths.
- :func:`image_reference`: the image a step runs, under ``kubernetes.image_registry`` and pinned by the digest that
  ``make images`` recorded in ``images/digests.json`` when it pushed it.
- :func:`user_error_ends_task`: Kubeflow retries a failed task whatever its exit code. A step that fails with a
  :class:`~privevo.errors.UserError` (the same input fails the same way again) leaves a marker in the run root, and a
  retry of the same task in the same KFP run that finds it exits with code 2 at once, doing no work.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from privevo import storage
from privevo.config import Config, KubernetesConfig
from privevo.errors import UserError

#: The digests ``images/build.sh`` records for the images it pushed: pushed reference -> ``sha256:...``.
DIGESTS_FILE = Path(__file__).resolve().parent.parent / "images" / "digests.json"
#: Set on every task of a pipeline compiled with retries: turns :func:`user_error_ends_task` on.
RETRY_GUARD_ENV = "PRIVEVO_RETRY_GUARD"
#: The folder under the run root that holds the markers of tasks ended by a user error, per KFP run.
USER_ERRORS_DIR = ".user-errors"
_ROOTS = ("run_root", "private_root")  # written by the steps: never in an image
ALLOW_LOCAL_HELP = ("accept local roots and data or model paths: only for a cluster whose pods all mount one shared "
                    "volume at those paths (each pod has its own file system otherwise)")


def _config_paths(config: Config) -> dict[str, str | None]:
    """The config's roots and the data and model paths its steps read, by config key."""
    return {
        "run_root": config.run_root,
        "private_root": config.private_root,
        "private.path": config.private.path,
        "model.path": config.model.weights_path,
        "evaluation.reference.path": config.evaluation.reference.path if config.evaluation.reference else None,
        "evaluation.classifier_path": config.evaluation.classifier_path,
    }


def _in_image_or_volume(key: str, path: str, kubernetes: KubernetesConfig | None) -> bool:
    """Whether a local ``path`` is one every pod has: baked into the images (``kubernetes.image_paths``, never a root,
    which is written) or, for the model, on the PVC the model steps mount."""
    if kubernetes is None or key in _ROOTS:
        return False
    inside = [p.rstrip("/") for p in kubernetes.image_paths]
    if key == "model.path" and kubernetes.model_pvc is not None:
        inside.append(kubernetes.model_pvc.mount_path)
    return any(path == folder or path.startswith(folder + "/") for folder in inside)


def check_cluster_paths(config: Config | None, parameters: Mapping[str, Any], allow_local: bool) -> None:
    """Refuse, in one line naming the config key, a root or path that is neither on Cloud Storage nor in the images
    or a mounted volume: a pod would read or write its own file system. ``parameters`` are run parameters that
    replace config values (``run_root``, ``private_data_uri``); ``config`` is None for an uploaded pipeline, whose
    compiled paths were checked when it was uploaded."""
    from privevo.parameters import RUN_PARAMETERS

    if allow_local:
        return
    paths = _config_paths(config) if config is not None else {}
    for parameter in RUN_PARAMETERS:
        value = parameters.get(parameter.name)
        if isinstance(value, str) and parameter.key in ("run_root", "private.path"):
            paths[parameter.key] = value
    kubernetes = config.kubernetes if config is not None else None
    for key, path in paths.items():
        if path and not storage.is_gcs(path) and not _in_image_or_volume(key, path, kubernetes):
            where = ("a gs:// prefix" if key in _ROOTS else
                     "a gs:// path, kubernetes.image_paths if the images hold it")
            raise UserError(f"{key} {path} is local, and each pod of a cluster has its own file system: use {where}, "
                            "or --allow-local for a cluster whose pods share a volume there")


def recorded_digests(path: Path | None = None) -> dict[str, str]:
    """The digests in ``images/digests.json`` (none when the images were never pushed from this checkout)."""
    path = path or DIGESTS_FILE
    if not path.is_file():
        return {}
    try:
        digests = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON: run `REGISTRY=... make images` again to rewrite it") from None
    if not isinstance(digests, dict):
        raise UserError(f"{path} must map pushed image references to their sha256 digests")
    return {str(k): str(v) for k, v in digests.items()}


def image_reference(kubernetes: KubernetesConfig, image: str) -> str:
    """The image a step's pod pulls: ``image`` under ``kubernetes.image_registry``, pinned by its recorded digest
    (``REF@sha256:...``, so a tag pushed again later cannot change what a compiled pipeline runs)."""
    if kubernetes.image_registry:
        image = f"{kubernetes.image_registry.rstrip('/')}/{image}"
    digest = recorded_digests().get(image)
    return f"{image}@{digest}" if digest and "@" not in image else image


def task_key(step: str, generation: int | None = None, shard: int | None = None) -> str:
    """A task's name within one KFP run: the step, and its generation and shard where it has them."""
    parts = [step] + ([f"gen-{int(generation):03d}"] if generation is not None else []) + (
        [f"shard-{int(shard):03d}"] if shard is not None else [])
    return "-".join(parts)


def resolved_run(resolved: Any) -> tuple[str, str]:
    """The run root and KFP run id in resolve_config's output artifact (what every later step opens the run from)."""
    with open(resolved.path) as handle:
        record = json.load(handle)
    return record["config"]["run_root"], record["kfp_run_id"]


def user_error_marker(run_root: str, kfp_run_id: str, task: str) -> str:
    """Where a task of a KFP run records that it ended with a user error."""
    return storage.join(run_root, USER_ERRORS_DIR, kfp_run_id, task)


@contextlib.contextmanager
def user_error_ends_task(task: str, run_root: str, kfp_run_id: str) -> Iterator[None]:
    """Run a task's body so that a user error ends the task rather than being retried: the body's UserError prints
    ``error: ...`` (as the command line does) and leaves a marker holding only ``user error`` (never the message: a
    private step's error stays in its pod log), then exits 2; an attempt that finds the marker exits 2 at once.
    Only on in pipelines compiled with retries (:data:`RETRY_GUARD_ENV`); elsewhere a UserError passes through."""
    if os.environ.get(RETRY_GUARD_ENV) != "1":
        yield
        return
    marker = user_error_marker(run_root, kfp_run_id, task)
    found = False
    with contextlib.suppress(UserError, OSError):  # unreadable: the body fails the same way, or works
        found = storage.exists(marker)
    if found:
        print(f"error: an earlier attempt of {task} in this run ended with a user error (its log says which): "
              "not retrying it", file=sys.stderr)
        raise SystemExit(UserError.exit_code)
    try:
        yield
    except UserError as error:
        with contextlib.suppress(UserError, OSError):  # a root that cannot be written: the retry fails again
            storage.write_bytes(marker, b"user error\n")
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
