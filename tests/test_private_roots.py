"""Where the private tier and the data may live: private_root is compiled in, never a run parameter, and a run
refuses (in one line, before anything is written) a private root that reaches a released place or the reference
data, and an evaluation reference that may share images with the private data."""

from __future__ import annotations

import pytest
from conftest import ROOT

from privevo.components.resolve_config import resolve_config
from privevo.config import load_config
from privevo.errors import UserError
from privevo.image.data import may_share_images
from privevo.layout import normalised, overlaps
from privevo.parameters import PARAMETER_NAMES, apply_parameters, parameter_defaults
from privevo.run_record import check_separation

TINY = ROOT / "configs" / "tiny.yaml"


def _tiny(tmp_path, *overrides: str):
    return load_config(TINY, [f"run_root={tmp_path}/runs", f"private_root={tmp_path}/private", *overrides])


def _resolve(config) -> None:
    """The pipeline's first step, as a KFP task calls it, with the config's run parameters."""
    import json

    from privevo.config import config_to_dict

    resolve_config(json.dumps(config_to_dict(config)), run_id="r", resume=False, force_new_noise=False,
                   kfp_run_id="kfp-1", resolved=None, **parameter_defaults(config))


def test_private_root_is_not_a_run_parameter(tmp_path):
    config = _tiny(tmp_path)
    assert "private_root" not in PARAMETER_NAMES
    with pytest.raises(ValueError, match="unknown run parameters"):
        apply_parameters(config, {"private_root": str(tmp_path / "runs" / "leak")})


# --------------------------------------------------------------------------- the location rule


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("gs://bucket/kfp", "gs://bucket/kfp/private", True),
    ("gs://bucket/kfp/", "gs://bucket//kfp/private/", True),
    ("gs://bucket/kfp", "gs://bucket/other/../kfp/x", True),
    ("gs://bucket/kfp", "gs://bucket/kfp-private", False),
    ("gs://bucket/kfp", "gs://other/kfp", False),
    ("/data/runs", "/data/runs/../runs/private", True),
    ("/data/runs/", "/data/runs", True),
    ("/data/runs", "/data/runs-private", False),
    ("/data/runs", "gs://data/runs", False),
])
def test_locations_overlap_in_any_spelling(a, b, expected):
    assert overlaps(a, b) is expected and overlaps(b, a) is expected


def test_relative_paths_and_links_are_compared_where_they_lead(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    assert normalised("runs/./x/..") == str(tmp_path / "runs")
    assert overlaps("runs/private", str(tmp_path / "runs"))
    assert overlaps("link/private", "runs")


def test_reference_and_private_data_are_apart_only_by_path_split_classes_or_rows(tmp_path):
    config = load_config(TINY)
    private, reference = config.private, config.evaluation.reference
    assert reference is not None and not may_share_images(reference, private)  # rows [48, 96) beside [0, 48)

    def with_(data, **changes):
        return data.model_copy(update=changes)

    assert may_share_images(with_(reference, rows=(40, 60)), private)
    assert may_share_images(with_(reference, rows=None), private)
    assert may_share_images(with_(reference, limit=10, rows=None), private)
    assert may_share_images(with_(reference, classes=["Trouser"]), private)  # rows of another class filter
    assert not may_share_images(with_(reference, classes=["Dress"], rows=None), private)
    assert not may_share_images(with_(reference, split="train", rows=None), private)
    assert may_share_images(with_(reference, path=private.path + "/", rows=(10, 20)), private)  # one folder
    assert may_share_images(with_(reference, source="folder", split=None), private)  # another reading of it
    assert may_share_images(with_(reference, path=private.path + "/sub", rows=None, classes=None), private)
    assert may_share_images(with_(reference, path=str(tmp_path), rows=None),
                            with_(private, path=str(tmp_path / "private")))  # the private data inside it
    assert not may_share_images(with_(reference, path=str(tmp_path / "held-out")), with_(private, path=str(tmp_path / "p")))


# -------------------------------------------------------------------------------- refusals


def _refusals(tmp_path) -> list[tuple[list[str], str]]:
    """(--set overrides of tiny with its tiers under tmp_path, the start of the one-line refusal) per case."""
    private = f"{tmp_path}/private"
    return [
        ([f"private_root={tmp_path}/runs"], f"private_root {tmp_path}/runs overlaps run_root"),
        ([f"private_root={tmp_path}/runs/private"], f"private_root {tmp_path}/runs/private overlaps run_root"),
        ([f"private_root={tmp_path}/tiers", f"run_root={tmp_path}/tiers/runs"],
         f"private_root {tmp_path}/tiers overlaps run_root"),
        ([f"kubernetes.pipeline_root={tmp_path}/kfp", f"private_root={tmp_path}/kfp/private/"],
         f"private_root {tmp_path}/kfp/private/ overlaps kubernetes.pipeline_root"),
        ([f"evaluation.reference.path={private}/../private/held-out", "evaluation.reference.source=folder",
          "evaluation.reference.split=null", "evaluation.reference.classes=null", "evaluation.reference.rows=null"],
         f"private_root {private} overlaps evaluation.reference.path"),
        (["evaluation.reference.rows=[40, 60]"], "evaluation.reference (fashion_mnist /usr/share/datasets/fashion-mnist) "
                                                 "may share images with private.path"),
        ([f"privacy.private_root_prefixes=[{tmp_path}/secure, gs://private-bucket]"],
         f"private_root {private} is not inside privacy.private_root_prefixes"),
    ]


def test_each_refusal_through_resolve_config(tmp_path):
    for overrides, message in _refusals(tmp_path):
        config = _tiny(tmp_path, *overrides)
        with pytest.raises(UserError) as refused:
            _resolve(config)
        assert str(refused.value).startswith(message), (overrides, str(refused.value))
        assert "\n" not in str(refused.value)
        assert not (tmp_path / "runs" / "r").exists() and not (tmp_path / "private" / "r").exists()


def test_gs_roots_are_refused_in_any_spelling(tmp_path):
    config = _tiny(tmp_path, "private_root=gs://released/kfp/../kfp/private", "kubernetes.pipeline_root=gs://released/kfp/")
    with pytest.raises(UserError, match=r"overlaps kubernetes\.pipeline_root gs://released/kfp/"):
        check_separation(config)
    with pytest.raises(UserError, match="overlaps the pipeline root gs://released"):
        check_separation(_tiny(tmp_path, "private_root=gs://released/p"), pipeline_root="gs://released")
    check_separation(_tiny(tmp_path, "private_root=gs://private-bucket/runs/../tiers",
                           "privacy.private_root_prefixes=[gs://private-bucket/tiers/]",
                           "kubernetes.pipeline_root=gs://released/kfp"))
    with pytest.raises(UserError, match=r"not inside privacy\.private_root_prefixes"):
        check_separation(_tiny(tmp_path, "private_root=gs://private-bucket/tiers-2",
                               "privacy.private_root_prefixes=[gs://private-bucket/tiers]"))


def test_a_root_inside_an_allowed_prefix_is_accepted(tmp_path):
    config = _tiny(tmp_path, f"privacy.private_root_prefixes=[gs://elsewhere, {tmp_path}]")
    check_separation(config, pipeline_root=str(tmp_path / "kfp"))


@pytest.mark.parametrize("name", sorted(path.stem for path in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_is_accepted(name):
    """tiny and the demos read their reference from the private data's folder, with disjoint rows."""
    config = load_config(ROOT / "configs" / f"{name}.yaml")
    check_separation(config, pipeline_root="local_outputs")


@pytest.mark.parametrize("case", range(7))
def test_each_refusal_through_run(case, tmp_path, run_cli):
    overrides, message = _refusals(tmp_path)[case]
    args = ["run", "--config", "configs/tiny.yaml", "--run-id", "refused", "--pipeline-root", str(tmp_path / "local"),
            "--set", f"run_root={tmp_path}/runs", "--set", f"private_root={tmp_path}/private"]
    for override in overrides:
        args += ["--set", override]
    result = run_cli(*args, timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr[-2000:]
    assert not (tmp_path / "runs" / "refused").exists() and not (tmp_path / "local").exists()


def test_kfp_locals_pipeline_root_is_refused_as_a_private_root(tmp_path, run_cli):
    result = run_cli("run", "--config", "configs/tiny.yaml", "--run-id", "refused",
                     "--pipeline-root", str(tmp_path / "local"), "--set", f"run_root={tmp_path}/runs",
                     "--set", f"private_root={tmp_path}/local/private", timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip() == (f"error: private_root {tmp_path}/local/private overlaps the pipeline root "
                                     f"{tmp_path / 'local'}: keep the private tier in a separate folder or bucket")
    assert not (tmp_path / "runs").exists()
