"""Privacy is switched off only by the operator: a noise multiplier of 0 (or a delta over the cap) from `--set`, the
run form or `submit --param` is refused in one line unless the compiled config allows it, and a run it allows says
NOT PRIVATE in every output, and fails the audit unless the auditor accepts it."""

import contextlib
import io
import json
import socket
from pathlib import Path

import pytest
from conftest import ROOT, tiny_args

from privevo import cli, privacy, steps
from privevo.config import load_config
from privevo.errors import UserError
from privevo.parameters import RUN_PARAMETERS, apply_parameters

TINY = str(ROOT / "configs" / "tiny.yaml")
SIGMA_0 = ["--set", "privacy.epsilon=null", "--set", "privacy.noise_multiplier=0"]
ALLOWED = ["--set", "privacy.allow_non_private=true", "--set", "privacy.dataset_budget=null"]


def _one_line_error(stderr: str, *needles: str) -> None:
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr, stderr


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _closed_port_url() -> str:
    """A loopback URL nothing listens on: a command that connects fails with 'cannot reach', not the check asked for."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_run_with_noise_multiplier_0_is_refused_in_one_line(run_cli, tmp_path):
    result = run_cli(*tiny_args(tmp_path / "runs", tmp_path / "private", "--run-id", "off", *SIGMA_0))
    assert result.returncode == 2
    _one_line_error(result.stderr, "noise_multiplier 0", "privacy.allow_non_private")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "private").exists(), "nothing was started"


@pytest.mark.parametrize("command", ["submit", "schedule"])
@pytest.mark.parametrize("params, needles", [
    (["noise_multiplier=0", "epsilon=0"], ["noise_multiplier 0", "privacy.allow_non_private"]),
    (["delta=0.5"], ["delta 0.5 is above privacy.max_delta 1e-05"]),
])
def test_submit_param_that_switches_privacy_off_is_refused_before_connecting(command, params, needles):
    extra = ["--cron", "0 0 3 * * *"] if command == "schedule" else []
    code, _, err = _main([command, "--host", _closed_port_url(), "--config", TINY, *extra,
                          *[arg for param in params for arg in ("--param", param)]])
    assert code == 2
    _one_line_error(err, *needles)


def test_the_run_form_is_checked_by_resolve_config_against_the_compiled_config(tmp_path):
    """The pipeline's first step applies the run form's values to the compiled config: it cannot allow sigma 0."""
    config = load_config(TINY, [f"run_root={tmp_path}/runs", f"private_root={tmp_path}/private"])
    with pytest.raises(UserError, match=r"noise_multiplier 0 .* privacy\.allow_non_private"):
        steps.resolve_run(config, {"epsilon": 0.0, "noise_multiplier": 0.0}, "", False, "kfp-run-1")
    with pytest.raises(UserError, match=r"above privacy\.max_delta"):
        steps.resolve_run(config, {"delta": 0.5}, "", False, "kfp-run-2")
    assert not (tmp_path / "runs").exists(), "no run folder for a refused run"
    allowed = load_config(TINY, ["privacy.allow_non_private=true"])
    assert apply_parameters(allowed, {"epsilon": 0.0, "noise_multiplier": 0.0}).privacy.noise_multiplier == 0


def test_what_bounds_the_guarantee_is_not_a_run_parameter():
    keys = {parameter.key for parameter in RUN_PARAMETERS}
    assert not keys & {"privacy.allow_non_private", "privacy.max_delta", "privacy.dataset_budget"}
    config = load_config(TINY)
    with pytest.raises(ValueError, match="unknown run parameters"):
        apply_parameters(config, {"allow_non_private": True})


def test_delta_is_capped_by_the_operator(run_cli):
    with pytest.raises(UserError, match=r"delta 0\.0001 is above privacy\.max_delta 1e-05"):
        load_config(TINY, ["privacy.delta=1e-4"])
    assert load_config(TINY, ["privacy.delta=1e-4", "privacy.max_delta=1e-4"]).privacy.delta == 1e-4
    result = run_cli("run", "--config", "configs/tiny.yaml", "--set", "privacy.delta=0.5")
    assert result.returncode == 2
    _one_line_error(result.stderr, "above privacy.max_delta")


def test_non_private_reasons():
    private = load_config(TINY).privacy
    assert privacy.non_private_reasons(private) == []
    off = load_config(TINY, ["privacy.epsilon=null", "privacy.noise_multiplier=0",
                             "privacy.allow_non_private=true"]).privacy
    assert any("noise multiplier 0" in r for r in privacy.non_private_reasons(off))
    unbounded = load_config(TINY, ["privacy.dataset_budget=null", "privacy.allow_non_private=true"]).privacy
    assert any("dataset_budget" in r for r in privacy.non_private_reasons(unbounded))
    released_without_noise = [privacy.PrivacyEvent(generation=1, noise_multiplier=0.0)]
    report = privacy.privacy_report(released_without_noise, 1e-5, private)
    assert report["private"] is False and report["epsilon"] == float("inf")
    assert privacy.format_privacy_report(report)[0].startswith("NOT PRIVATE: noise multiplier 0")


@pytest.mark.slow
def test_a_non_private_run_says_so_everywhere_and_fails_the_audit(run_cli, tmp_path):
    runs = tmp_path / "runs"
    result = run_cli(*tiny_args(runs, tmp_path / "private", "--run-id", "off", *SIGMA_0, *ALLOWED,
                                "--set", "population.generations=1", "--set", "population.degrees=[0.5]"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("NOT PRIVATE: noise multiplier 0") == 1, result.stdout[-3000:]
    run_dir = runs / "off"
    assert json.loads((run_dir / "run.json").read_text())["private"] is False
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["privacy"]["private"] is False and metrics["privacy"]["non_private_reasons"]
    page = (run_dir / "report" / "index.html").read_text()
    assert page.index('class="not-private">NOT PRIVATE') < page.index("<h1>"), "the banner is at the top"

    audit = run_cli("audit", "off", "--run-root", str(runs))
    assert audit.returncode == 1
    assert audit.stdout.strip().splitlines()[-1].startswith("audit: FAILED: the run is NOT PRIVATE")
    checks = json.loads(run_cli("audit", "off", "--run-root", str(runs), "--json").stdout)["checks"]
    assert {"check": "no clean counts released", "ok": False} in [{k: c[k] for k in ("check", "ok")} for c in checks], \
        "a discrete vote without noise is not exempt from the clean-count check"
    accepted = run_cli("audit", "off", "--run-root", str(runs), "--allow-non-private")
    assert accepted.returncode == 0, accepted.stdout[-3000:]
    assert "note: run is private: skipped: NOT PRIVATE" in accepted.stdout and accepted.stdout.rstrip().endswith("audit: OK")

    exported = run_cli("export", "off", "--run-root", str(runs), "--to", str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr
    statement = json.loads((Path(tmp_path) / "export" / "privacy.json").read_text())
    assert statement["private"] is False and statement["guarantee"].startswith("NOT PRIVATE: ")
