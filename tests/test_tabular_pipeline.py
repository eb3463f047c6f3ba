"""Tables end to end: configs/tiny-tabular.yaml through kfp.local, its audit, report and export, and the audit's
leak check for tables (a copied private row is found; a chance match of a small-domain row is not a leak)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from privevo.config import load_config
from privevo.modalities import get_modality

TINY_TABULAR = ROOT / "configs" / "tiny-tabular.yaml"


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory, run_cli) -> Path:
    """configs/tiny-tabular.yaml run through kfp.local once; its run folder."""
    base = tmp_path_factory.mktemp("tiny-tabular")
    result = run_cli("run", "--config", str(TINY_TABULAR), "--run-root", str(base / "runs"),
                     "--set", f"private_root={base / 'private'}", "--pipeline-root", str(base / "kfp"),
                     "--run-id", "tab")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base / "runs" / "tab"


def test_the_run_passes_its_audit(tabular_run: Path, run_cli) -> None:
    result = run_cli("audit", str(tabular_run))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "audit: OK"
    checks = json.loads(run_cli("audit", str(tabular_run), "--json").stdout)["checks"]
    leaks = [check["ok"] for check in checks if check["check"] == "no private data in released files"]
    assert leaks and all(leaks)  # the leak check ran on every population, not skipped


def test_metrics_and_report_show_the_table_views(tabular_run: Path) -> None:
    metrics = json.loads((tabular_run / "metrics.json").read_text())
    assert metrics["modality"] == "tabular" and "fd_extractor" not in metrics
    rows = metrics["generations"]
    assert [row["generation"] for row in rows] == [0, 1, 2, 3]
    assert all(0 <= row["tvd_1way"] <= row["tvd_3way"] <= 1 for row in rows)  # wider marginals are further apart
    final = metrics["final"]
    assert 0 <= final["downstream_accuracy"] <= 1 and 0 <= final["real_rows_accuracy"] <= 1
    assert final["utility"]["train_rows"] == final["utility"]["real_rows"] == 60
    page = (tabular_run / "report" / "index.html").read_text()
    for shown in ("table_histograms.png", "curves.png", "Downstream utility", "real rows of the reference",
                  "3-way TVD", "tvd_3way", "wasserstein", "vote embedding</th><td>tabular"):
        assert shown in page, shown
    assert "effnet_lite0" not in page and "class-mix" not in page and "Samples of every generation" not in page
    for name in ("table_histograms.png", "curves.png"):
        assert (tabular_run / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_writes_csv_and_parquet_with_the_privacy_statement(tabular_run: Path, tmp_path: Path,
                                                                   run_cli) -> None:
    import pyarrow.parquet as pq

    result = run_cli("export", str(tabular_run), "--to", str(tmp_path / "csv"))
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "csv" / "synthetic.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 60 and list(table[0]) == ["age", "job", "hours", "score", "income"]
    assert {row["job"] for row in table} <= {"clerk", "crafts", "sales", "manager"}
    assert all(17 <= int(row["age"]) <= 90 and 0 <= float(row["score"]) <= 1 for row in table)
    statement = json.loads((tmp_path / "csv" / "privacy.json").read_text())
    assert statement["format"] == "csv" and statement["private"] is True
    assert statement["released"].startswith("60 synthetic rows of 5 columns of generation 3 of 3")
    assert "table row" in statement["neighbouring_relation"]
    result = run_cli("export", str(tabular_run), "--to", str(tmp_path / "parquet"), "--format", "parquet")
    assert result.returncode == 0, result.stderr[-2000:]
    assert pq.read_table(tmp_path / "parquet" / "synthetic.parquet").num_rows == 60


def test_an_image_format_for_a_table_run_is_a_one_line_error(tabular_run: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli("export", str(tabular_run), "--to", str(tmp_path / "out"), "--format", "npz")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown export format 'npz' for this tabular run: use csv or parquet"]
    assert not (tmp_path / "out").exists()


def test_leak_fingerprints_only_rows_with_a_distinctive_value() -> None:
    """In tiny-tabular only ``score`` (a float) is distinctive: a row whose score is an exact copy is fingerprinted,
    and one whose other values alone match is not (categories and narrow integers repeat by chance)."""
    config = load_config(TINY_TABULAR)
    modality = get_modality(config)
    private = np.array([[30, 0, 40, 0.123456, 0], [45, 2, 50, 0.654321, 1]], dtype=np.float64)
    copied = private[[1]].copy()
    chance = private.copy()
    chance[:, 3] = [0.5, 0.25]  # the same category and integers, another score
    found = modality.leak_fingerprints(config, private)
    assert len(found) == 2
    assert modality.leak_fingerprints(config, copied) <= found and modality.leak_fingerprints(config, copied)
    assert not modality.leak_fingerprints(config, chance) & found
    only_small = load_config(TINY_TABULAR, ["tabular.columns=[{name: job, type: categorical, categories: [a, b]}, "
                                            "{name: income, type: categorical, categories: [x, y]}]"])
    assert modality.leak_fingerprints(only_small, np.array([[0.0, 1.0], [1.0, 1.0]])) == set()


def test_the_summary_prints_scalars_only(tabular_run: Path, capsys) -> None:
    """The run's closing summary shows the final metrics as name=value; tables (utility, per column) stay in the
    report."""
    from privevo.cli import _print_summary
    from privevo.run_record import Run

    _print_summary(Run.open(str(tabular_run.parent), tabular_run.name), 1.0)
    final = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("final (generation"))
    assert "tvd_3way=" in final and "downstream_accuracy=" in final
    assert "{" not in final and "[" not in final
