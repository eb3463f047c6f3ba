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


def test_displayed_epsilon_is_rounded_up(run_cli):
    """The true epsilon is 1.76003...: nearest rounding would show 1.7600, below the bound."""
    result = run_cli("budget", "--noise-multiplier", "10", "--generations", "20")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "epsilon=1.7601"


def test_display_rounding_never_flatters_the_guarantee():
    from privevo.privacy import format_epsilon, format_required_sigma, format_sigma

    assert format_epsilon(1.7600338) == "1.7601" and format_epsilon(2.706285, digits=3) == "2.707"
    assert format_epsilon(1.76) == "1.7600", "a value on a display step stays on it (float error is not rounded up)"
    assert format_sigma(7.0710678) == "7.0710" and format_required_sigma(7.0710678) == "7.0711"
    assert format_epsilon(float("inf")) == "inf"


def test_discrete_gaussian_reports_rho_zcdp_and_the_continuous_one_mu(run_cli):
    discrete = run_cli("budget", "--noise-multiplier", "10", "--generations", "20", "--report")
    assert discrete.returncode == 0, discrete.stderr
    assert "rho-zCDP: rho = 0.1000" in discrete.stdout  # 20 votes of 1/(2 * 10^2)
    assert "mu = " not in discrete.stdout and "mu=" not in discrete.stdout
    continuous = run_cli("budget", "--noise-multiplier", "10", "--generations", "20", "--report", "--mechanism", "gaussian")
    assert continuous.returncode == 0, continuous.stderr
    assert "mu-GDP: mu = 0.4473" in continuous.stdout and "rho" not in continuous.stdout  # sqrt(20)/10 = 0.44721 up
    assert continuous.stdout.strip().splitlines()[-1].startswith("epsilon=")


def test_rho_zcdp_of_a_discrete_vote_does_not_depend_on_k():
    """A vote with k neighbours is k mechanisms of scale sigma*sqrt(k) on sensitivity-1 counts: 1/(2 sigma^2) in all."""
    from privevo import privacy

    for k in (1, 3):
        events = [privacy.PrivacyEvent(generation=g, noise_multiplier=4.0, k=k, mechanism="discrete_gaussian")
                  for g in (1, 2)]
        report = privacy.privacy_report(events, 1e-5)
        assert report["rho_zcdp"] == pytest.approx(2 / (2 * 4.0**2)) and report["mu_gdp"] is None
        assert privacy.zcdp_epsilon(report["rho_zcdp"], 1e-5) >= report["epsilon"], "the accountant is the tighter"
    subsampled = [privacy.PrivacyEvent(generation=1, noise_multiplier=4.0, sampling_rate=0.5,
                                       mechanism="discrete_gaussian")]
    assert privacy.privacy_report(subsampled, 1e-5)["rho_zcdp"] is None, "no closed form under subsampling"
