"""`python pipeline.py budget`: the printed contract and its one-line errors."""

import pytest


def test_epsilon_from_noise_multiplier(run_cli):
    result = run_cli("budget", "--noise-multiplier", "7.0711", "--generations", "20", "--delta", "1e-5")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("epsilon=")
    assert float(last.split("=")[1]) == pytest.approx(2.594, abs=0.01)


def test_noise_multiplier_from_epsilon(run_cli):
    result = run_cli("budget", "--epsilon", "0.67", "--generations", "20", "--delta", "1e-5")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("noise_multiplier=")
    assert float(last.split("=")[1]) == pytest.approx(24.0, abs=0.15)


def test_sampling_rate_is_accounted(run_cli):
    full = run_cli("budget", "--noise-multiplier", "5", "--generations", "10")
    sub = run_cli("budget", "--noise-multiplier", "5", "--generations", "10", "--sampling-rate", "0.1")
    value = lambda r: float(r.stdout.strip().splitlines()[-1].split("=")[1])  # noqa: E731
    assert 0 < value(sub) < value(full)


@pytest.mark.parametrize(
    "args",
    [
        ["--noise-multiplier", "-1", "--generations", "20"],
        ["--noise-multiplier", "5", "--generations", "20", "--delta", "1"],
        ["--noise-multiplier", "5", "--generations", "0"],
        ["--noise-multiplier", "5", "--generations", "5", "--sampling-rate", "1.5"],
        ["--epsilon", "-3", "--generations", "5"],
        ["--generations", "5"],
        ["--noise-multiplier", "abc", "--generations", "5"],
    ],
)
def test_bad_arguments_are_one_line_exit_2(run_cli, args):
    result = run_cli("budget", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
