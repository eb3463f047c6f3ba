"""The evaluate step's outputs on the tiny run, and the HTML report in a real headless browser at 900 px."""

import json
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_tiny_run

from privevo import report, steps, storage
from privevo.config import load_config
from privevo.image.evaluation import FD_KEY
from privevo.image.report import sample_grid_png
from privevo.layout import CLASS_COUNTS_PNG, REFERENCE_GRID_PNG
from privevo.run_record import Run

REQUIRED_ROW_KEYS = {"generation", FD_KEY, "precision", "recall", "class_tv", "epsilon"}
WIDTH = 900


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
    folder = run.run_dir / "report"
    assert (folder / "index.html").is_file() and (folder / "curves.png").is_file()
    assert sorted(p.name for p in folder.glob("samples-gen-*.png")) == [f"samples-gen-{g:03d}.png" for g in range(3)]
    assert (folder / REFERENCE_GRID_PNG).is_file()
    assert not (folder / CLASS_COUNTS_PNG).exists()  # tiny is unlabelled: no class counts to draw
    assert (run.run_dir / "ledger.json").read_bytes() == ledger_before


def test_grids_show_a_seeded_choice_of_the_population_not_its_first_rows(tiny_run):
    chosen = report.shown_indices(24, 16, seed=7)
    assert len(set(chosen.tolist())) == 16 and chosen.tolist() != list(range(16))
    assert np.array_equal(chosen, report.shown_indices(24, 16, seed=7))
    assert sorted(report.shown_indices(5, 16, seed=7).tolist()) == [0, 1, 2, 3, 4]  # a small population: all of it
    run = Run.open(tiny_run.run_root, tiny_run.run_id)
    images = steps.load_population(run, 2).samples
    written = (tiny_run.run_dir / "report" / "samples-gen-002.png").read_bytes()
    assert written != sample_grid_png(images[:16], 16, seed=0)  # any order of the first 16 rows
    assert written == sample_grid_png(images, 16, run.seed("report-samples"))


def test_curves_draw_only_metrics_with_values():
    import matplotlib.pyplot as plt

    rows = [{"generation": g, FD_KEY: 3.0 - g, "precision": 0.5, "recall": 0.4, "class_tv": None,
             "epsilon": float(g)} for g in range(3)]
    result = {"fd_extractor": FD_KEY.removeprefix("fd_"), "delta": 1e-5, "generations": rows}
    titles = [title for title, _ in report.curve_panels(result)]
    assert len(titles) == 3 and not any("class-mix" in t for t in titles)
    rows[1]["class_tv"] = 0.2
    assert any("class-mix" in title for title, _ in report.curve_panels(result))
    figure = report.curves_figure(result)
    assert [axis.get_title() for axis in figure.axes] == [title for title, _ in report.curve_panels(result)]
    for axis in figure.axes:  # whole generations, also on the class-TV panel's one point
        ticks = [t for t in axis.get_xticks() if 0 <= t <= 2]
        assert ticks == [0, 1, 2], (axis.get_title(), ticks)
    single = {**result, "generations": rows[:1]}
    assert [t for t in report.curves_figure(single).axes[0].get_xticks() if -0.5 < t < 0.5] == [0]
    rows[1]["epsilon"] = rows[2]["epsilon"] = float("inf")  # sigma 0: still a panel (generation 0 spent 0)
    assert report.curves_png(result)[:8] == b"\x89PNG\r\n\x1a\n"
    plt.close("all")


def test_the_report_refuses_non_dp_metrics(tiny_run):
    run = Run.open(tiny_run.run_root, tiny_run.run_id)
    result = json.loads((tiny_run.run_dir / "metrics.json").read_text())
    result["generations"][1]["non_dp"] = True
    with pytest.raises(ValueError, match="non-DP"):
        report.render_html(run, result)


def test_real_samples_only_from_a_reference_set_apart_from_the_private_data():
    def config(*overrides: str):
        return load_config(ROOT / "configs" / "tiny.yaml", list(overrides))

    assert not report.reference_may_be_private(config())  # rows [48, 96) after rows [0, 48)
    assert report.reference_may_be_private(config("evaluation.reference.rows=[40, 60]"))
    assert report.reference_may_be_private(config("evaluation.reference.rows=null"))
    assert report.reference_may_be_private(config("evaluation.reference.classes=[Trouser]"))
    assert not report.reference_may_be_private(config("evaluation.reference.classes=[Dress]",
                                                      "evaluation.reference.rows=null"))
    assert not report.reference_may_be_private(config("evaluation.reference.split=train",
                                                      "evaluation.reference.rows=null"))


# ------------------------------------------------------------------ in headless Chromium at 900 px


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> Run:
    """A finished class-conditional tiny run of one generation, scored with the public classifier."""
    from privevo import evaluation

    run = make_tiny_run(tmp_path_factory.mktemp("labelled"), "labelled", "population.conditional=true",
                        "population.generations=1", "population.degrees=[0.5]",
                        f"evaluation.classifier_path={ROOT / 'models' / 'fashion-mnist-classifier'}")
    for shard in range(run.config.population.num_shards):
        steps.embed_synthetic(run, 1, shard)
    steps.dp_vote(run, 1, steps.private_reference(run))
    for shard in range(run.config.population.num_shards):
        steps.generate_variations(run, 1, shard)
    evaluation.evaluate_run(run)
    return run


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (no network, a fresh profile) with a 900 px wide window."""
    if not Path("/usr/bin/chromium").exists() or not Path("/usr/bin/chromedriver").exists():
        pytest.skip("Debian packages chromium and chromium-driver are not installed (make install adds them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    try:
        driver.set_window_size(WIDTH, 1000)
        yield driver
    finally:
        driver.quit()


def _open(driver, index: Path, screenshot: Path) -> dict:
    """Load the report, check it fits the window, save a full-page screenshot; what the page shows."""
    driver.get(index.as_uri())
    assert driver.execute_script("return window.innerWidth") == WIDTH
    assert driver.execute_script("return document.documentElement.scrollWidth") <= WIDTH
    page = driver.execute_script("""
        const top = e => e.getBoundingClientRect().top + window.scrollY;
        return {
          images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), alt: i.alt,
                  ok: i.complete && i.naturalWidth > 0, width: i.getBoundingClientRect().width})),
          sections: Array.from(document.querySelectorAll('section[id]')).sort((a, b) => top(a) - top(b))
                    .map(s => s.id),
          links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
          hashes: Array.from(document.querySelectorAll('code[title]')).map(c => [c.textContent, c.title]),
          text: document.body.innerText,
          height: document.documentElement.scrollHeight,
        };""")
    for image in page["images"]:
        assert image["ok"] and image["width"] <= WIDTH, image["src"]
    driver.set_window_size(WIDTH, page["height"] + 200)
    driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    return page


def test_report_reads_in_a_900px_window_results_first(tiny_run, browser, tmp_path):
    page = _open(browser, tiny_run.run_dir / "report" / "index.html", tmp_path / "report.png")
    assert page["sections"] == ["results", "configuration", "privacy"]
    sources = [image["src"] for image in page["images"]]
    # final synthetic beside real reference samples, then the curves; one grid per generation after them
    assert sources[:3] == ["samples-gen-002.png", REFERENCE_GRID_PNG, "curves.png"]
    assert sorted(sources[3:]) == [f"samples-gen-{g:03d}.png" for g in range(3)]
    curves = page["images"][2]["alt"]
    assert "Frechet distance" in curves and "class-mix" not in curves  # no classifier: no empty class-TV panel
    assert CLASS_COUNTS_PNG not in sources  # unlabelled
    # the configuration tells the data's source and classes, never the private set's rows or size
    assert "private data\tfashion_mnist, classes Trouser, Sneaker, Bag\n" in page["text"]
    assert "rows 0-48" not in page["text"]
    assert "noise multiplier\t" in page["text"] and "mechanism\tdiscrete_gaussian" in page["text"]
    # the privacy section links the run folder's records, relative to report/
    linked = sorted(Path(urllib.parse.urlparse(url).path).resolve() for url in page["links"])
    assert linked == sorted((tiny_run.run_dir / name).resolve() for name in ("ledger.json", "metrics.json"))
    ledger = storage.read_json(str(tiny_run.run_dir / "ledger.json"))
    released = {event["release_sha256"] for event in ledger["events"]}
    assert page["hashes"] and {title for _, title in page["hashes"]} == released
    assert all(len(text) < len(title) for text, title in page["hashes"])


def test_labelled_report_draws_class_counts(labelled_run, browser, tmp_path):
    page = _open(browser, Path(labelled_run.layout.report_index), tmp_path / "labelled.png")
    assert page["sections"] == ["results", "configuration", "privacy"]
    sources = [image["src"] for image in page["images"]]
    assert sources.index("curves.png") < sources.index(CLASS_COUNTS_PNG) < sources.index("samples-gen-000.png")
    assert "class-mix" in page["images"][sources.index("curves.png")]["alt"]  # the classifier gives class TV
