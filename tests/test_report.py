"""The evaluate step's outputs on the tiny run, and the HTML report in a real headless browser."""

import json
import shutil

import pytest

from privevo.evaluation import FD_KEY

REQUIRED_ROW_KEYS = {"generation", FD_KEY, "precision", "recall", "class_tv", "epsilon"}


def test_metrics_json_has_every_key_per_generation_and_final(tiny_run):
    metrics = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    assert [row["generation"] for row in metrics["generations"]] == [0, 1, 2]
    for row in metrics["generations"]:
        assert set(row) >= REQUIRED_ROW_KEYS
        assert row["non_dp"] is False
    assert REQUIRED_ROW_KEYS | {"downstream_accuracy"} <= set(metrics["final"])
    # tiny has no public classifier and is unconditional: those metrics are null, not missing.
    assert metrics["final"]["class_tv"] is None and metrics["final"]["downstream_accuracy"] is None
    assert metrics["generations"][0]["epsilon"] == 0.0
    assert metrics["generations"][2]["epsilon"] > metrics["generations"][1]["epsilon"] > 0
    assert metrics["final"][FD_KEY] > 0 and 0 <= metrics["final"]["precision"] <= 1


def test_report_command_regenerates_without_rerunning(tiny_run, tmp_path, run_cli):
    run = tiny_run.copy(tmp_path)
    shutil.rmtree(run.run_dir / "report")
    ledger_before = (run.run_dir / "ledger.json").read_bytes()
    result = run_cli("report", run.run_id, "--run-root", run.run_root)
    assert result.returncode == 0, result.stderr
    report = run.run_dir / "report"
    assert (report / "index.html").is_file() and (report / "curves.png").is_file()
    assert sorted(p.name for p in report.glob("samples-gen-*.png")) == [f"samples-gen-{g:03d}.png" for g in range(3)]
    assert (run.run_dir / "ledger.json").read_bytes() == ledger_before


def _chrome():
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.skip("Debian packages chromium and chromium-driver are not installed (make install adds them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=shutil.which("chromedriver")))


def test_report_opens_in_headless_chromium_with_every_image_loaded(tiny_run, tmp_path):
    driver = _chrome()
    try:
        driver.set_window_size(1400, 1000)
        driver.get((tiny_run.run_dir / "report" / "index.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]);"
        )
        assert len(images) == 1 + 3  # curves and one grid per generation
        for src, complete, width in images:
            assert complete and width > 0, src
        assert "epsilon" in driver.find_element("tag name", "body").text
        screenshot = tmp_path / "report.png"
        driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000
    finally:
        driver.quit()
