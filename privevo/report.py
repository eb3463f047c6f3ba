"""The run report: sample grids per generation, FD and epsilon curves, class mix; one HTML page.

Everything drawn here comes from released files (populations, metrics.json, the
ledger), never from private data. The page needs no network: images sit beside it
(``report/``) or are inlined as data URIs (the KFP HTML visualization).
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from privevo import storage
from privevo.calls import calls_html
from privevo.layout import CURVES_PNG
from privevo.run import Run
from privevo.steps import load_population


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tile uint8 NHWC images into one HWC grid with a 1-pixel gap."""
    n, h, w, c = images.shape
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = image
    return grid


def _png(array: np.ndarray, scale: int = 3) -> bytes:
    from PIL import Image

    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def curves_png(result: dict[str, Any]) -> bytes:
    """FD, precision/recall, class-mix TV and epsilon over generations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["generations"]
    generations = [r["generation"] for r in rows]
    fd_key = f"fd_{result['fd_extractor']}"
    panels = [
        (fd_key, f"Frechet distance ({result['fd_extractor']} features)"),
        ("class_tv", "class-mix total variation"),
        ("precision", "precision / recall"),
        ("epsilon", f"epsilon spent (delta={result['delta']:g})"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
    for axis, (key, title) in zip(axes, panels, strict=True):
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("generation")
        for series in ([key, "recall"] if key == "precision" else [key]):
            values = [r[series] for r in rows]
            if any(v is not None for v in values):
                axis.plot(generations, [np.nan if v is None else v for v in values], marker="o", label=series)
        if key == "precision":
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    return _figure_png(figure)


def sample_grid_png(run: Run, generation: int, count: int) -> bytes:
    """The first ``count`` samples of a generation as a PNG grid."""
    population = load_population(run, generation)
    return _png(image_grid(population.images[:count]))


def write_report(run: Run, result: dict[str, Any]) -> str:
    """Write report/ (PNG files and index.html) for a run; returns the index URI."""
    count = run.config.evaluation.samples_per_grid
    for row in result["generations"]:
        g = row["generation"]
        storage.write_bytes(run.layout.report_file(run.layout.sample_grid_name(g)), sample_grid_png(run, g, count))
    storage.write_bytes(run.layout.report_file(CURVES_PNG), curves_png(result))
    index = run.layout.report_index
    storage.write_bytes(index, render_html(run, result, inline_images=False).encode())
    return index


def render_html(run: Run, result: dict[str, Any], inline_images: bool = False) -> str:
    """The report page; ``inline_images`` embeds PNGs as data URIs (one self-contained file)."""

    def image(name: str, alt: str) -> str:
        if inline_images:
            data = base64.b64encode(storage.read_bytes(run.layout.report_file(name))).decode()
            src = f"data:image/png;base64,{data}"
        else:
            src = name
        return f'<img src="{src}" alt="{html.escape(alt)}">'

    fd_key = f"fd_{result['fd_extractor']}"
    keys = ["generation", fd_key, "precision", "recall", "class_tv", "epsilon"]
    header = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row[k])}</td>" for k in keys) + "</tr>" for row in result["generations"]
    )
    final = result["final"]
    reference = f"<p>Metrics compare each generation with the {html.escape(result['reference'])}.</p>"
    grids = "".join(
        f"<figure>{image(run.layout.sample_grid_name(row['generation']), 'generation ' + str(row['generation']) + ' samples')}"
        f"<figcaption>generation {row['generation']}</figcaption></figure>"
        for row in result["generations"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Private Evolution run {html.escape(result['run_id'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }} .warn {{ color: #a00; }}
</style></head><body>
<h1>Private Evolution run {html.escape(result['run_id'])}</h1>
<p>Privacy: epsilon = {_cell(final['epsilon'])} at delta = {result['delta']:g} over {result['votes']} vote(s),
noise multiplier {_cell(result['noise_multiplier'])} (the accountant's upper bound, recomputed from the ledger).</p>
{reference}
{privacy_html(result.get('privacy'))}
{calls_html(run)}
<h2>Metrics per generation</h2>
<table><tr>{header}</tr>{body}</table>
<p>Final downstream accuracy: {_cell(final['downstream_accuracy'])}</p>
<h2>Curves</h2>
{image('curves.png', 'metric curves over generations')}
<h2>Samples</h2>
{grids}
</body></html>
"""


def privacy_html(report: dict[str, Any] | None) -> str:
    """The privacy report (``privacy.privacy_report``) as an HTML section: what a reviewer checks."""
    if not report:
        return ""
    events = "".join(
        "<tr>" + "".join(f"<td>{_cell(e[k])}</td>" for k in
                         ("generation", "mechanism", "noise_multiplier", "sampling_rate", "k", "reason", "status",
                          "release_uri", "release_sha256")) + "</tr>"
        for e in report["events"]
    )
    by_generation = "".join(f"<tr><td>{r['generation']}</td><td>{_cell(r['epsilon'])}</td></tr>"
                            for r in report["epsilon_by_generation"])
    by_delta = "".join(f"<tr><td>{r['delta']:g}</td><td>{_cell(r['epsilon'])}</td></tr>" for r in report["epsilon_at_delta"])
    mu = "" if report["mu_gdp"] is None else f"<p>mu-GDP cross-check: mu = {_cell(report['mu_gdp'])}.</p>"
    return f"""<h2>Privacy report</h2>
<p>Epsilon {_cell(report['epsilon'])} at delta {report['delta']:g}: {html.escape(report['accountant'])}.</p>
<p>Neighbouring datasets: {html.escape(report['neighbouring_relation'])}.
Sensitivity: {html.escape(report['sensitivity'])}.</p>
<table><tr><th>generation</th><th>mechanism</th><th>sigma</th><th>sampling rate</th><th>k</th><th>reason</th>
<th>status</th><th>release</th><th>release sha256</th></tr>{events}</table>
<h3>Epsilon after each generation</h3><table><tr><th>generation</th><th>epsilon</th></tr>{by_generation}</table>
<h3>Epsilon at other deltas</h3><table><tr><th>delta</th><th>epsilon</th></tr>{by_delta}</table>
{mu}"""


def format_value(value: Any) -> str:
    """A metric as people read it: 4 significant digits, "n/a" for a missing one."""
    if value is None:
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(value: Any) -> str:
    return html.escape(format_value(value))
