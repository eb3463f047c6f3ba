"""The pipeline in containers: `pipeline.py run --runner docker` (kfp.local's DockerRunner, local_docker.py).

Needs a Docker daemon and the CPU image (`make images`, which `make test` runs first). Where
either is missing these tests skip, unless PRIVEVO_DOCKER_TESTS=required (set by `make
test`), where they fail.

The docker run of configs/tiny.yaml reads its private data from a copy of the Fashion-MNIST
test split in its own folder, so that the private data and the private tier are two folders
no public step may see; the held-out reference stays the system's Fashion-MNIST folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, tiny_args

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
PRIVATE_STEPS = {"embed_private", "dp_vote"}  # configs/tiny.yaml: evaluation.against_private is false
PUBLIC_STEPS = {"generate_initial", "embed_synthetic", "generate_variations", "initial_shard", "variation_shard",
                "evaluate"}


def _docker_or_skip():
    """A docker client and the image name, or skip (fail when PRIVEVO_DOCKER_TESTS=required)."""
    from privevo.config import KubernetesConfig

    image = KubernetesConfig().image
    reason = None
    try:
        import docker

        client = docker.from_env()
        client.ping()
        client.images.get(image)
    except ImportError:
        reason = "the docker SDK is not installed"
    except Exception as error:  # noqa: BLE001 - no daemon, or no image: both mean "not set up here"
        reason = f"no Docker daemon or no image {image} ({type(error).__name__}): run `make images`"
    if reason:
        if os.environ.get("PRIVEVO_DOCKER_TESTS") == "required":
            pytest.fail(reason)
        pytest.skip(reason)
    return client, image


# ------------------------------------------------------- the mount plan (no Docker needed)


def _tiny(tmp_path, *overrides: str):
    from privevo.config import load_config
    from privevo.layout import RunLayout
    from privevo.run_record import Run

    config = load_config(ROOT / "configs" / "tiny.yaml", [f"run_root={tmp_path}/runs", f"private_root={tmp_path}/private",
                                                           f"private.path={tmp_path}/private-data", *overrides])
    (tmp_path / "private-data").mkdir(exist_ok=True)
    return config, Run(config, RunLayout(config.run_root, "plan", config.private_root))


def test_only_private_steps_plan_the_private_tier(tmp_path):
    import local_docker
    from privevo.step_table import STEP_NAMES

    config, run = _tiny(tmp_path)
    private = {str(tmp_path / "private" / "plan"), str(tmp_path / "private-data")}
    for step_name in (*STEP_NAMES, None):
        mounts = {m.path: m for m in local_docker.plan_mounts(config, run, str(tmp_path / "kfp"), step_name)}
        assert mounts[str(tmp_path / "runs" / "plan")].writable and mounts[str(tmp_path / "kfp")].writable
        model = str(ROOT / "models" / "tiny-unet")
        if step_name in local_docker.MODEL_STEPS:
            assert not mounts[model].writable
        else:
            assert model not in mounts, step_name  # only the steps that call the model see its folder
        # the held-out reference (in tiny, the folder the private rows come from): evaluate only
        reference = config.evaluation.reference.path
        assert (reference in mounts) == (step_name == "evaluate"), step_name
        if step_name == "evaluate":
            assert not mounts[reference].writable
        if step_name in PRIVATE_STEPS:
            assert private <= mounts.keys() and not mounts[str(tmp_path / "private-data")].writable
        else:
            assert not private & mounts.keys(), step_name
    # resolve_config (a task that names no step of the table) gets the run's folder and the pipeline root: no data
    resolve = local_docker.plan_mounts(config, run, str(tmp_path / "kfp"), local_docker.step_of(
        ["sh", "-c", "...", "--function_to_execute", "resolve_config"]))
    assert {m.path for m in resolve} == {str(tmp_path / "runs" / "plan"), str(tmp_path / "kfp")}
    against_private, run = _tiny(tmp_path, "evaluation.against_private=true")
    evaluate = {m.path for m in local_docker.plan_mounts(against_private, run, str(tmp_path / "kfp"), "evaluate")}
    assert private <= evaluate


def test_the_step_comes_from_the_task_command():
    import local_docker

    assert local_docker.step_of(["sh", "-c", "...", "--executor_input", "{}", "--function_to_execute", "dp_vote"]) == "dp_vote"
    assert local_docker.step_of(["sh", "-c", "...", "--function_to_execute", "unknown"]) is None
    assert local_docker.step_of([]) is None


def test_only_public_model_steps_reach_a_loopback_model_server(tmp_path):
    import local_docker
    from privevo.errors import UserError
    from privevo.step_table import STEP_NAMES

    config, _ = _tiny(tmp_path, "model.kind=remote", 'model.remote={url: "http://127.0.0.1:9000"}')
    assert {s for s in STEP_NAMES if local_docker.uses_host_network(config, s)} == \
        {"generate_initial", "embed_synthetic", "generate_variations", "initial_shard", "variation_shard"}
    local_config, _ = _tiny(tmp_path)
    assert not any(local_docker.uses_host_network(local_config, s) for s in STEP_NAMES)
    elsewhere, _ = _tiny(tmp_path, "model.kind=remote", 'model.remote={url: "https://models.example.com"}')
    with pytest.raises(UserError, match="only on loopback"):
        local_docker.check_ready(elsewhere, str(tmp_path / "kfp"))


# ----------------------------------------------------------------- a real docker run


@pytest.fixture(scope="module")
def docker_run(tmp_path_factory, run_cli):
    """configs/tiny.yaml through `run --runner docker`, its private data in a folder of its own."""
    _docker_or_skip()
    base = tmp_path_factory.mktemp("docker")
    private_data = base / "private-data"
    private_data.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FASHION_MNIST / name, private_data / name)
    kfp_root = base / "kfp"
    result = run_cli(*tiny_args(base / "runs", base / "private", "--run-id", "tiny-docker", "--runner", "docker",
                                "--set", f"private.path={private_data}", pipeline_root=kfp_root))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    containers = [json.loads(line) for line in (kfp_root / "tiny-docker.containers.jsonl").read_text().splitlines()]
    return {"base": base, "runs": base / "runs", "private": base / "private", "private_data": private_data,
            "kfp": kfp_root, "containers": containers, "stdout": result.stdout}


@pytest.mark.slow
def test_docker_run_passes_the_audit(docker_run, run_cli):
    result = run_cli("audit", "tiny-docker", "--run-root", str(docker_run["runs"]))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "epsilon spent" in docker_run["stdout"]


@pytest.mark.slow
def test_docker_generation_0_equals_the_subprocess_run(docker_run, tiny_run):
    from privevo.testing import assert_close_images

    def images(run_dir: Path) -> np.ndarray:
        with np.load(run_dir / "gen-000" / "population.npz") as population:
            return population["images"]

    assert_close_images(images(docker_run["runs"] / "tiny-docker"), images(tiny_run.run_dir))


@pytest.mark.slow
def test_every_step_ran_in_its_own_container(docker_run):
    from privevo.config import KubernetesConfig

    containers = docker_run["containers"]
    steps = {c["step"] for c in containers}
    # the DAG's tasks: resolve_config first (not a step of the table: it gets the public mounts, step None), then
    # each shard's variations and their embedding in one task
    assert steps == PRIVATE_STEPS | {None, "initial_shard", "variation_shard", "generate_variations", "evaluate"}
    for container in containers:
        assert container["image"] == KubernetesConfig().image
        assert container["network_mode"] == "none"
        assert container["user"] and not container["user"].startswith("0"), "containers run as a non-root user"


@pytest.mark.slow
def test_public_steps_cannot_read_the_private_tier(docker_run):
    """From `docker inspect` of each step's container: only the private steps mount the private folders."""
    private_dir = str(docker_run["private"] / "tiny-docker")
    private_data = str(docker_run["private_data"])
    run_dir = str(docker_run["runs"] / "tiny-docker")
    for container in docker_run["containers"]:
        mounts = {m["path"]: m for m in container["mounts"]}
        assert mounts[run_dir]["rw"] and mounts[str(docker_run["kfp"])]["rw"]
        assert all(m["source"] == m["path"] for m in mounts.values()), "every mount sits at its host path"
        assert str(ROOT) not in mounts, "the code comes from the image, not from the checkout"
        if container["step"] in PRIVATE_STEPS:
            assert mounts[private_dir]["rw"] and not mounts[private_data]["rw"]
        else:
            private = [p for p in mounts if p.startswith((str(docker_run["private"]), private_data))]
            assert not private, f"{container['step']} mounts the private tier: {private}"


@pytest.mark.slow
def test_a_public_container_finds_no_private_file(docker_run):
    """Start containers with the mounts of a public and of a private step and try to read the private files."""
    import local_docker
    from privevo.run_record import Run

    client, image = _docker_or_skip()
    run = Run.open(str(docker_run["runs"]), "tiny-docker")
    private_files = [str(docker_run["private"] / "tiny-docker" / "private_embeddings.npz"),
                     str(docker_run["private_data"] / "t10k-images-idx3-ubyte.gz")]
    probe = ("import os, sys; print(' '.join(str(os.path.isfile(p) and os.access(p, os.R_OK)) for p in sys.argv[1:]))")
    seen = {}
    for step_name in ("generate_variations", "evaluate", "dp_vote"):
        mounts = local_docker.plan_mounts(run.config, run, str(docker_run["kfp"]), step_name)
        output = client.containers.run(
            image, ["python", "-c", probe, *private_files], volumes={m.path: m.volume() for m in mounts},
            network_mode="none", user=local_docker.container_user(), remove=True,
        )
        seen[step_name] = output.decode().split()
    assert seen["generate_variations"] == seen["evaluate"] == ["False", "False"]
    assert seen["dp_vote"] == ["True", "True"]


@pytest.mark.slow
def test_docker_runner_errors_are_one_line(tmp_path, run_cli):
    _docker_or_skip()
    result = run_cli(*tiny_args(tmp_path / "runs", tmp_path / "private", "--runner", "docker",
                                "--set", "kubernetes.image=privevo-not-built:0"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: image privevo-not-built:0 is not built here: run `make images`"
    assert not (tmp_path / "runs").exists(), "nothing is written before the check"
    result = run_cli(*tiny_args(tmp_path / "runs", tmp_path / "private", "--runner", "docker"),
                     env={"DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no Docker daemon answers: ")


@pytest.mark.slow
def test_docker_tabular_run_passes_the_audit_and_exports_csv(tmp_path, run_cli):
    """configs/tiny-tabular.yaml through `run --runner docker` (pyarrow and scikit-learn in the image), its private
    table in a folder of its own: the audit passes and the export writes the CSV."""
    _docker_or_skip()
    private_data = tmp_path / "private-data"
    private_data.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "tiny-tabular" / "private.csv", private_data / "private.csv")
    result = run_cli("run", "--config", "configs/tiny-tabular.yaml", "--run-root", str(tmp_path / "runs"),
                     "--set", f"private_root={tmp_path / 'private'}", "--pipeline-root", str(tmp_path / "kfp"),
                     "--set", f"private.path={private_data / 'private.csv'}", "--run-id", "tab-docker",
                     "--runner", "docker")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    containers = (tmp_path / "kfp" / "tab-docker.containers.jsonl").read_text().splitlines()
    assert {json.loads(line)["step"] for line in containers} >= PRIVATE_STEPS | {"evaluate"}
    result = run_cli("audit", "tab-docker", "--run-root", str(tmp_path / "runs"))
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "audit: OK", result.stdout[-3000:]
    result = run_cli("export", "tab-docker", "--run-root", str(tmp_path / "runs"), "--to", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "synthetic.csv").read_text().splitlines()[0] == "age,job,hours,score,income"


def test_only_the_dp_releases_may_write_the_data_sets_ledger(tmp_path):
    """The data set's ledger folder (every run's charges on the private data) is writable by the steps that release
    something DP, the warm start and the vote, and seen by no other step."""
    import local_docker
    from privevo.config import load_config
    from privevo.layout import RunLayout
    from privevo.run_record import Run
    from privevo.step_table import STEP_NAMES

    config = load_config(ROOT / "configs" / "tiny-tabular.yaml", [
        f"run_root={tmp_path}/runs", f"private_root={tmp_path}/private", "privacy.warm_start_share=0.3"])
    run = Run(config, RunLayout(config.run_root, "plan", config.private_root))
    ledger_folder = local_docker._dataset_folder(config)
    for step_name in (*STEP_NAMES, None):
        mounts = {m.path: m for m in local_docker.plan_mounts(config, run, str(tmp_path / "kfp"), step_name)}
        if step_name in ("warm_start", "dp_vote"):
            assert mounts[ledger_folder].writable and mounts[ledger_folder].private, step_name
        else:
            assert ledger_folder not in mounts, step_name
