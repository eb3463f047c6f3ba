"""The pipeline's steps in containers on this machine: kfp.local's DockerRunner, least privilege per step.

kfp.local's ``DockerRunner`` gives every task the same ``docker run`` arguments and mounts
only the pipeline root. :class:`DockerSession` keeps its runner (and so kfp.local's task
dispatch and output handling) but hands each task to :class:`StepContainer`, which names
the step from the task's command (``--function_to_execute``) and mounts per step
(:func:`plan_mounts`):

=====================================  ==========  =======================================
host path (mounted at the same path)   mode        containers
=====================================  ==========  =======================================
the run's folder (``run_root/RUN_ID``)  read-write  every step
kfp.local's pipeline root               read-write  every step (task inputs and outputs)
``model.path`` (a local one)            read-only   the steps that call the model
``evaluation.classifier_path``,         read-only   ``evaluate`` only
``evaluation.reference.path`` (local)
the run's private folder                read-write  only steps with ``reads_private(config)``
(``private_root/RUN_ID``)                           in :mod:`privevo.step_table`
``private.path`` (the private data)     read-only   the same private steps
the data set's ledger folder            read-write  ``dp_vote`` and ``warm_start`` only
(``private_root/datasets/ID``)                      (:data:`DATASET_LEDGER_WRITERS`: the DP releases)
=====================================  ==========  =======================================

Everything else a container sees is its image (the library, the components, the configs):
no network (``network_mode="none"``), no repository checkout, no kfp.local workspace, a
non-root user. One exception: with a model behind an API (``model.kind: remote``) on a
loopback address, the public steps that call it (:data:`MODEL_STEPS`) share the host's
network and get its token (``token_env`` passed through, ``token_file`` mounted read-only);
a private step never does, and a server elsewhere is refused. ``resolve_config`` (like any task the session cannot
name) gets the run's folder and the pipeline root only: no data. Every
container is inspected once it runs and its mounts are logged (one JSON line per
container) beside kfp.local's log, so a run shows what each step could read.

This module belongs to the command line (``pipeline.py run --runner docker``), not to the
library: it imports kfp and the ``docker`` SDK.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
from dataclasses import dataclass
from typing import Any

from privevo.config import Config
from privevo.errors import UserError
from privevo.privacy import dataset_ledger_uri
from privevo.run_record import Run
from privevo.step_table import MODEL_STEPS, STEP_NAMES, step

#: The image's user (images/Dockerfile.cpu); containers run as it when the host user is root.
IMAGE_USER = (10001, 10001)
FIX_DOCKER = "install and start Docker: `make images` (or images/build.sh docker) does both"


@dataclass(frozen=True)
class Mount:
    """One bind mount of a host path at the same path inside the container."""

    path: str
    writable: bool
    private: bool = False  # part of the private tier: only private steps get it

    def volume(self) -> dict[str, str]:
        return {"bind": self.path, "mode": "rw" if self.writable else "ro"}


def _local(path: str | None) -> str | None:
    """An absolute local path for a config path, or None (unset, gs://, a hub name that is not a folder)."""
    if not path or "://" in path:
        return None
    absolute = os.path.abspath(path)
    return absolute if os.path.exists(absolute) else None


def public_inputs(config: Config, step_name: str | None) -> list[str]:
    """The local public inputs a step reads: the model folder for the model steps, the classifier and the
    held-out reference set for evaluate only (in tiny and demo the reference shares its folder with the
    private rows, so no other step may see it); none for ``resolve_config`` or a step the session cannot name
    (``step_name=None``), which reads no data."""
    paths = []
    if step_name in MODEL_STEPS:
        paths.append(config.model.weights_path)
    if step_name == "evaluate":
        paths.append(config.evaluation.classifier_path)
        if config.evaluation.reference is not None:
            paths.append(config.evaluation.reference.path)
    return sorted({p for p in map(_local, paths) if p})


def plan_mounts(config: Config, run: Run, pipeline_root: str, step_name: str | None) -> list[Mount]:
    """What the container of ``step_name`` mounts: the public mounts, plus the private tier for private steps."""
    mounts = [Mount(os.path.abspath(run.layout.run_dir), writable=True),
              Mount(os.path.abspath(pipeline_root), writable=True)]
    mounts += [Mount(path, writable=False) for path in public_inputs(config, step_name)]
    remote = _remote(config)
    token_file = _local(getattr(remote, "token_file", None)) if remote is not None else None
    if token_file and step_name in MODEL_STEPS:  # the model server's token: only where the model is called
        mounts.append(Mount(token_file, writable=False))
    if step_name in STEP_NAMES and step(step_name).reads_private(config):
        mounts.append(Mount(os.path.abspath(run.layout.private_dir), writable=True, private=True))
        private_data = _local(config.private.path)
        if private_data and all(m.path != private_data for m in mounts):  # tiny and demo: also the reference
            mounts.append(Mount(private_data, writable=False, private=True))
    if step_name in DATASET_LEDGER_WRITERS:  # every run's charges on the private data: only the releases write them
        mounts.append(Mount(_dataset_folder(config), writable=True, private=True))
    return mounts


#: The steps that charge the private data set's ledger: the DP releases (the optional warm start, every vote).
DATASET_LEDGER_WRITERS = ("warm_start", "dp_vote")


def _dataset_folder(config: Config) -> str:
    """The folder of the private data set's ledger (``privacy.dataset_ledger_uri``)."""
    return os.path.dirname(os.path.abspath(dataset_ledger_uri(config)))


LOOPBACK_HOSTS = ("localhost", "::1")


def _remote(config: Config) -> Any:
    """The model server's settings when the model is behind an API (``model.kind: remote``), else None."""
    return getattr(config.model, "remote", None) if config.model.kind == "remote" else None


def uses_host_network(config: Config, step_name: str | None) -> bool:
    """Whether the step's container shares the host's network: only public model steps of a remote model on loopback."""
    return (_remote(config) is not None and step_name in MODEL_STEPS
            and not step(step_name).reads_private(config))


def _is_loopback(url: str) -> bool:
    import ipaddress
    import urllib.parse

    host = urllib.parse.urlsplit(url).hostname or ""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def step_of(command: list[str]) -> str | None:
    """The step a kfp.local task runs, from its command line (``--function_to_execute NAME``)."""
    for flag, value in itertools.pairwise(command):
        if flag == "--function_to_execute" and value in STEP_NAMES:
            return value
    return None


def container_user() -> str:
    """The host user when it is not root (files stay theirs); the image's non-root user otherwise."""
    uid, gid = os.getuid(), os.getgid()
    return f"{uid}:{gid}" if uid else "{}:{}".format(*IMAGE_USER)


def _client():
    try:
        import docker
    except ImportError:
        raise UserError("--runner docker needs the Python package docker: pip install -c constraints.txt docker") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception:  # noqa: BLE001 - any failure to reach the daemon is the same user error
        raise UserError(f"no Docker daemon answers: {FIX_DOCKER}") from None
    return client


def check_ready(config: Config, pipeline_root: str) -> None:
    """Refuse, in one line, what a docker run cannot do here (before anything is written)."""
    for name, root in (("run_root", config.run_root), ("private_root", config.private_root)):
        if "://" in root:
            raise UserError(f"--runner docker needs a local {name} (containers have no network), got {root}")
    remote = _remote(config)
    if remote is not None and not _is_loopback(remote.url):
        raise UserError(f"--runner docker reaches a model server only on loopback (containers have no other network), "
                        f"got model.remote.url {remote.url}")
    if config.kubernetes.model_step.gpu_limit:
        raise UserError("--runner docker runs the CPU image: set kubernetes.model_step.gpu_limit=0")
    private_data = _local(config.private.path)
    if private_data and any(_inside(private_data, os.path.abspath(root)) for root in (config.run_root, pipeline_root)):
        raise UserError(f"private.path {config.private.path} lies inside a folder every step mounts: move it")
    client = _client()
    try:
        client.images.get(config.kubernetes.image)
    except Exception:  # noqa: BLE001 - docker.errors.ImageNotFound, or an API error
        raise UserError(f"image {config.kubernetes.image} is not built here: run `make images`") from None
    finally:
        client.close()


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


# ------------------------------------------------------------------------- the session


class DockerSession:
    """kfp.local's DockerRunner with per-step mounts, for one run (a context manager).

    On entry it patches kfp.local's Docker task handler with :class:`StepContainer` and, when
    the containers run as the image's user, hands the run's folders to that user; on exit
    it restores both (files return to the host user).
    """

    def __init__(self, config: Config, run: Run, pipeline_root: str, concurrent_shards: int) -> None:
        from kfp import local

        from privevo import runtime

        self.config, self.run = config, run
        self.pipeline_root = os.path.abspath(pipeline_root)
        self.user = container_user()
        self.runner = local.DockerRunner(
            network_mode="none", user=self.user, working_dir=os.getcwd(),
            environment={runtime.CONCURRENT_SHARDS_ENV: str(concurrent_shards)},
        )
        self.containers_log = os.path.join(self.pipeline_root, f"{run.run_id}.containers.jsonl")
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()

    def mounts_for(self, step_name: str | None) -> list[Mount]:
        return plan_mounts(self.config, self.run, self.pipeline_root, step_name)

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock, open(self.containers_log, "a") as log:
            log.write(json.dumps(entry, sort_keys=True) + "\n")

    def _writable_folders(self) -> list[str]:
        return [os.path.abspath(self.run.layout.run_dir), os.path.abspath(self.run.layout.private_dir),
                _dataset_folder(self.config)]

    def __enter__(self) -> DockerSession:
        from kfp.local import docker_task_handler

        for folder in [*self._writable_folders(), self.pipeline_root]:
            os.makedirs(folder, exist_ok=True)
        if self.user != f"{os.getuid()}:{os.getgid()}":
            uid, gid = IMAGE_USER
            for folder in self._writable_folders():
                _chown_tree(folder, uid, gid)
            os.chown(self.pipeline_root, uid, gid)
            self._stack.callback(self._hand_back)
        original = docker_task_handler.DockerTaskHandler
        docker_task_handler.DockerTaskHandler = step_container_class(self)  # what kfp.local's dispatcher looks up
        self._stack.callback(setattr, docker_task_handler, "DockerTaskHandler", original)
        return self

    def _hand_back(self) -> None:
        uid, gid = os.getuid(), os.getgid()
        for folder in self._writable_folders():
            _chown_tree(folder, uid, gid)
        os.chown(self.pipeline_root, uid, gid)
        for name in os.listdir(self.pipeline_root):  # only what the containers made
            path = os.path.join(self.pipeline_root, name)
            if os.lstat(path).st_uid == IMAGE_USER[0]:
                _chown_tree(path, uid, gid)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _chown_tree(folder: str, uid: int, gid: int) -> None:
    if not os.path.lexists(folder):  # a failed new run's folder is removed before its folders are handed back
        return
    os.lchown(folder, uid, gid)
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            os.lchown(os.path.join(parent, name), uid, gid)


def step_container_class(active: DockerSession) -> type:
    """kfp.local's Docker task handler for ``active``: the mounts of the task's step, and its container inspected."""
    import docker
    from kfp.local import docker_task_handler, status

    class StepContainer(docker_task_handler.DockerTaskHandler):
        def get_volumes_to_mount(self, client: Any = None) -> dict[str, Any]:
            return {m.path: m.volume() for m in active.mounts_for(step_of(self.full_command))}

        def run(self) -> status.Status:
            client = docker.from_env()
            step_name = step_of(self.full_command)
            try:
                args = dict(self.runner.container_run_args)
                environment = dict(self.env_vars or {})
                if uses_host_network(active.config, step_name):  # a model server on loopback
                    args["network_mode"] = "host"
                    token_env = getattr(_remote(active.config), "token_env", None)
                    if token_env and token_env in os.environ:
                        environment[token_env] = os.environ[token_env]
                if environment:
                    args["environment"] = environment
                container = client.containers.run(
                    image=self.image, command=self.full_command, volumes=self.get_volumes_to_mount(client), detach=True,
                    labels={"privevo.run": active.run.run_id, "privevo.step": step_name or ""}, **args,
                )
                try:
                    container.reload()  # docker inspect of the running container
                    active.record(_inspection(step_name, container.attrs))
                    for line in container.logs(stream=True, follow=True):
                        print(line.decode(errors="replace"), end="")
                    code = container.wait()["StatusCode"]
                finally:
                    with contextlib.suppress(docker.errors.APIError):
                        container.remove(force=True)
            finally:
                client.close()
            return status.Status.SUCCESS if code == 0 else status.Status.FAILURE

    return StepContainer


def _inspection(step_name: str | None, attrs: dict[str, Any]) -> dict[str, Any]:
    """What `docker inspect` says a step's container can reach: user, network and mounts."""
    mounts = [{"path": m["Destination"], "source": m["Source"], "rw": m["RW"]} for m in attrs["Mounts"]]
    return {"step": step_name, "container": attrs["Id"][:12], "image": attrs["Config"]["Image"],
            "user": attrs["Config"]["User"], "network_mode": attrs["HostConfig"]["NetworkMode"],
            "mounts": sorted(mounts, key=lambda m: m["path"])}
