"""The run report: results first (final samples beside real ones, curves, class counts), then the
configuration and the privacy accounting; one HTML page that reads in a 900 px window.

Everything drawn here comes from released files (populations, metrics.json, the ledger) and
from the public evaluation reference set, never from private data: the class counts are those
of the synthetic populations' public labels, and the non-DP metrics against the private set
(``non_dp_metrics.json``) never reach the page. The page needs no network: images sit beside
it (``report/``) or are inlined as data URIs (the KFP HTML visualization).
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo import privacy, storage
from privevo.calls import calls_html
from privevo.layout import CLASS_COUNTS_PNG, CURVES_PNG, LEDGER_JSON, METRICS_JSON
from privevo.modalities import Modality, get_modality
from privevo.run_record import Run
from privevo.steps import load_population

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from privevo.config import Config, DataConfig, PrivacyConfig

#: Width of the curves and class-count figures, in inches at 100 dpi: they fit a 900 px window.
FIGURE_WIDTH = 8.6
#: Shown digits of a hash (the full value is in the cell's title).
HASH_DIGITS = 12


def shown_indices(n: int, count: int, seed: int) -> np.ndarray:
    """Which ``count`` of ``n`` samples a grid shows: a seeded random choice, not the first rows.

    A population is stored sorted by parent, so its first rows are siblings of a few parents;
    a random choice shows the population as it is.
    """
    return np.random.default_rng(seed).choice(n, size=min(count, n), replace=False)


def _figure(panels: int, columns: int, height: float) -> tuple[Figure, list[Axes]]:
    """A figure of ``panels`` axes in rows of ``columns``, FIGURE_WIDTH wide (no empty axes left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(panels / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(FIGURE_WIDTH, height * rows), squeeze=False)
    flat = list(axes.flat)
    for axis in flat[panels:]:
        axis.remove()
    return figure, flat[:panels]


def _integer_generations(axis: Axes, generations: list[int]) -> None:
    """Whole-number generation ticks over every generation (also where a metric has one point)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_xlabel("generation")
    axis.set_xlim(min(generations) - 0.4, max(generations) + 0.4)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def _figure_png(figure: Figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _finite(value: Any) -> float:
    """A metric for plotting: NaN (no point) for a missing or infinite one."""
    return float(value) if value is not None and math.isfinite(value) else math.nan


def result_modality(result: dict[str, Any]) -> Modality:
    """The modality of a metrics.json (one written before modalities were pluggable is an image run's)."""
    return get_modality(result.get("modality", "image"))


def curve_panels(result: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The curves' panels as (title, metric keys), the modality's then epsilon's: only metrics with a value in some
    generation (no empty panel)."""
    panels = [*result_modality(result).curve_panels(result), (f"epsilon spent (delta={result['delta']:g})", ["epsilon"])]
    rows = result["generations"]
    return [(title, keys) for title, keys in panels
            if any(not math.isnan(_finite(r.get(k))) for r in rows for k in keys)]


def curves_png(result: dict[str, Any]) -> bytes:
    """The curves as a PNG."""
    return _figure_png(curves_figure(result))


def curves_figure(result: dict[str, Any]) -> Figure:
    """The modality's metrics (images: FD, class-mix TV, precision/recall) and epsilon over generations, two panels
    a row."""
    rows = result["generations"]
    generations = [r["generation"] for r in rows]
    panels = curve_panels(result)
    figure, axes = _figure(len(panels), columns=2, height=2.6)
    for axis, (title, keys) in zip(axes, panels, strict=True):
        axis.set_title(title, fontsize=9)
        for key in keys:
            axis.plot(generations, [_finite(r.get(key)) for r in rows], marker="o", label=key)
        if len(keys) > 1:
            axis.legend(fontsize=8)
        _integer_generations(axis, generations)
        axis.grid(alpha=0.3)
    return figure


def class_counts_png(counts: dict[int, np.ndarray], class_names: list[str]) -> bytes:
    """Per-class sample counts of each generation's (synthetic, public) labels as stacked bars."""
    generations = sorted(counts)
    figure, (axis,) = _figure(1, columns=1, height=2.8)
    bottom = np.zeros(len(generations))
    for label, name in enumerate(class_names):
        heights = np.array([counts[g][label] for g in generations], float)
        if heights.any():
            axis.bar(generations, heights, bottom=bottom, label=name)
            bottom += heights
    axis.set_title("synthetic samples per class (the population's labels)", fontsize=9)
    axis.set_ylabel("samples")
    _integer_generations(axis, generations)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _figure_png(figure)


def reference_may_be_private(config: Config) -> bool:
    """Whether the evaluation reference set can share records with the private set (then no real samples are shown);
    the modality's ``may_share_records`` decides."""
    reference = config.evaluation.reference
    return reference is not None and get_modality(config).may_share_records(reference, config.private)


def write_report(run: Run, result: dict[str, Any]) -> str:
    """Write report/ (PNG files and index.html) for a run's released metrics; returns the index URI."""
    _check_released(result)
    config = run.config
    counts: dict[int, np.ndarray] = {}
    num_classes = len(config.class_names or [])
    for row in result["generations"]:
        population = load_population(run, row["generation"])
        if population.conditional and num_classes:
            counts[row["generation"]] = np.bincount(population.labels, minlength=num_classes)
    run.modality.write_report_views(run, result)
    storage.write_bytes(run.layout.report_file(CURVES_PNG), curves_png(result))
    if counts and len(counts) == len(result["generations"]):
        storage.write_bytes(run.layout.report_file(CLASS_COUNTS_PNG), class_counts_png(counts, config.class_names or []))
    index = run.layout.report_index
    storage.write_bytes(index, render_html(run, result, inline_images=False).encode())
    return index


def _check_released(result: dict[str, Any]) -> None:
    """Refuse metrics marked non-DP (against the private set): they never go into a released report."""
    if result.get("non_dp") or any(row.get("non_dp") for row in result["generations"]):
        raise ValueError("the report renders released metrics only; these are non-DP metrics against the private set")


CSS = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 1em 1.2em; max-width: 1100px; color: #222;
       line-height: 1.4; overflow-wrap: break-word; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
img { max-width: 100%; height: auto; image-rendering: pixelated; }
.pair, .gallery { display: grid; gap: 1em; }
.pair { grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); }
.gallery { grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); }
figure { margin: 0 0 1em 0; min-width: 0; } figcaption { font-size: 0.9em; color: #555; }
figure.wide img { image-rendering: auto; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; max-width: 100%; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
td.path { text-align: left; }
table.config th { text-align: left; background: #f5f5f5; } table.config td { text-align: left; }
.lead { font-size: 1.05em; } .note { color: #555; font-size: 0.9em; }
.not-private { background: #b00020; color: #fff; padding: 0.6em 0.8em; font-weight: bold; }
"""


def render_html(run: Run, result: dict[str, Any], inline_images: bool = False) -> str:
    """The report page; ``inline_images`` embeds PNGs as data URIs (one self-contained file)."""
    _check_released(result)

    def image(name: str, alt: str) -> str:
        if inline_images:
            data = base64.b64encode(storage.read_bytes(run.layout.report_file(name))).decode()
            src = f"data:image/png;base64,{data}"
        else:
            src = name
        return f'<img src="{src}" alt="{html.escape(alt)}">'

    def figure(name: str, caption: str, wide: bool = False, alt: str | None = None) -> str:
        return (f'<figure{" class=wide" if wide else ""}>{image(name, alt or caption)}'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def present(name: str) -> bool:
        return storage.exists(run.layout.report_file(name))

    final = result["final"]
    views = run.modality.results_html(run, result, figure)
    counts = (figure(CLASS_COUNTS_PNG, "synthetic samples per class and generation", wide=True)
              if present(CLASS_COUNTS_PNG) else "")
    title = f"Private Evolution run {html.escape(result['run_id'])}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>{CSS}</style></head><body>
{_not_private_banner(run, result)}<h1>{title}</h1>
<p class="lead">{_headline(result)}</p>
<section id="results">
<h2>Results</h2>
<div class="pair">
{views["final"]}
</div>
<p class="note">{" ".join([*([html.escape(views["note"])] if views.get("note") else []),
                            f"Metrics compare each generation with the {html.escape(result['reference'])}."])}</p>
{figure(CURVES_PNG, "metrics over generations", wide=True,
        alt="; ".join(title for title, _ in curve_panels(result)))}
{counts}{views.get("extra", "")}
<h3>Metrics per generation</h3>
{_metrics_table(result)}
{_gallery(views["gallery"])}</section>
<section id="configuration">
<h2>Configuration</h2>
{_config_table(run.config, result)}
</section>
<section id="privacy">
<h2>Privacy</h2>
<p>Epsilon per run = {_cell(final['epsilon'], 'epsilon')} at delta = {result['delta']:g} over {result['votes']} vote(s)
of this run, noise multiplier {_cell(result['noise_multiplier'], 'noise_multiplier')} (the accountant's upper bound,
recomputed from the ledger; epsilons are rounded up, noise multipliers down). {_dataset_note(run.config)}
{_files_note(inline_images)}</p>
{privacy_html(result.get('privacy'))}
</section>
{calls_html(run)}
</body></html>
"""


def _not_private_banner(run: Run, result: dict[str, Any]) -> str:
    """The banner atop the page of a run without a DP guarantee (the operator allowed it), with the reasons."""
    reasons = dict.fromkeys([*privacy.non_private_reasons(run.config.privacy),
                             *(result.get("privacy") or {}).get("non_private_reasons", [])])
    if not reasons:
        return ""
    return (f'<p class="not-private">{privacy.NOT_PRIVATE}: {html.escape("; ".join(reasons))}. These results have '
            "no differential-privacy guarantee (privacy.allow_non_private).</p>\n")


def _headline(result: dict[str, Any]) -> str:
    """One line of the final numbers above everything else: epsilon, then the modality's."""
    shown = [("epsilon", result["final"]["epsilon"]), *result_modality(result).headline(result)]
    parts = [f"{html.escape(name)} <b>{_cell(value, name)}</b>" for name, value in shown if value is not None]
    return f"After {result['generations'][-1]['generation']} generation(s): " + ", ".join(parts) + "."


def _gallery(samples: str) -> str:
    """Every generation's samples under their heading (nothing when the modality shows none)."""
    return f'<h3>Samples of every generation</h3>\n<div class="gallery">{samples}</div>\n' if samples else ""


def _metrics_table(result: dict[str, Any]) -> str:
    """The per-generation metrics: generation, the modality's summary keys with a value, epsilon."""
    keys = ["generation", *result_modality(result).summary_keys, "epsilon"]
    keys = [k for k in keys if any(row.get(k) is not None for row in result["generations"])]
    header = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_cell(row.get(k), k)}</td>" for k in keys) + "</tr>"
                   for row in result["generations"])
    return f"<table><tr>{header}</tr>{body}</table>"


def _config_table(config: Config, result: dict[str, Any]) -> str:
    """The settings a reader needs to judge the result (nothing that tells the private set's size)."""
    private, population, privacy = config.private, config.population, config.privacy
    remote = config.model.api_server
    model = (remote.model_name or remote.url) if remote else config.model.weights_path
    target = f"{privacy.epsilon:g}" if privacy.epsilon is not None else "none (explicit noise multiplier)"
    rows = [
        ("config", config.name),
        ("private data", f"{private.source}" + (f", classes {', '.join(private.classes)}" if private.classes else "")),
        ("evaluation reference", _describe_data(config.evaluation.reference)),
        ("public model", f"{config.model.kind} {model or ''}".strip()),
        ("vote embedding", config.embedding.name),
        *([("class-mix classifier", config.evaluation.classifier_path or "none (no class-mix metric)")]
          if "class_tv" in get_modality(config).summary_keys else []),
        ("population", f"{population.size} samples" + (", class-conditional" if population.conditional else "")),
        ("generations", f"{population.generations} (lookahead {population.lookahead})"),
        ("variation degrees", ", ".join(f"{d:g}" for d in population.degree_schedule())),
        ("target epsilon / delta (per run)", f"{target} / {privacy.delta:g}"),
        ("data-set budget (per data set, all runs)", _dataset_budget(privacy)),
        ("mechanism", privacy.mechanism),
        ("noise multiplier", format_value(result["noise_multiplier"], "noise_multiplier")),
        ("threshold / k / sampling rate", f"{privacy.threshold:g} / {privacy.k} / {privacy.sampling_rate:g}"),
    ]
    body = "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>" for name, value in rows)
    return f'<table class="config">{body}</table>'


def _dataset_budget(settings: PrivacyConfig) -> str:
    """The compiled data-set budget as the report shows it."""
    if settings.dataset_budget is None:
        return "none (privacy.allow_non_private)"
    return f"epsilon {settings.dataset_budget:g} at delta {privacy.dataset_delta(settings):g}"


def _dataset_note(config: Config) -> str:
    """What the per-run epsilon does not say: the private data set's spend over all its runs."""
    return html.escape(
        "Every run on the same private data spends from one data-set budget (per data set, all runs: "
        f"{_dataset_budget(config.privacy)}), kept in the data set's ledger in the private tier; "
        f"`pipeline.py budget --dataset {config.private.path}` shows its spend per run and in total.")


def _describe_data(data: DataConfig | None) -> str:
    if data is None:
        return "none"
    parts = [data.source] + ([f"{data.split} split"] if data.split else [])
    parts += [f"classes {', '.join(data.classes)}"] if data.classes else []
    parts += [f"rows {data.rows[0]}-{data.rows[1]}"] if data.rows else []
    parts += [f"{data.limit} records"] if data.limit else []
    return ", ".join(parts)


def _files_note(inline_images: bool) -> str:
    """Where the machine-readable records are: links from report/ to the run folder, or names when self-contained."""
    names = [(METRICS_JSON, "metrics and this privacy report"), (LEDGER_JSON, "every DP release and its charge")]
    if inline_images:
        shown = [f"<code>{name}</code> ({what})" for name, what in names]
    else:
        shown = [f'<a href="../{name}"><code>{name}</code></a> ({what})' for name, what in names]
    return "The run folder holds " + " and ".join(shown) + "."


def privacy_html(report: dict[str, Any] | None) -> str:
    """The privacy report (``privacy.privacy_report``) as HTML: what a reviewer checks."""
    if not report:
        return ""
    events = "".join(
        "<tr>" + "".join(f"<td>{_cell(e[k], k)}</td>" for k in
                         ("generation", "mechanism", "noise_multiplier", "sampling_rate", "k", "reason", "status"))
        + f'<td class="path">{_cell(e["release_uri"]).replace("/", "/<wbr>")}</td><td>{_hash_cell(e["release_sha256"])}</td></tr>'
        for e in report["events"]
    )
    by_generation = "".join(f"<tr><td>{r['generation']}</td><td>{_cell(r['epsilon'], 'epsilon')}</td></tr>"
                            for r in report["epsilon_by_generation"])
    by_delta = "".join(f"<tr><td>{r['delta']:g}</td><td>{_cell(r['epsilon'], 'epsilon')}</td></tr>"
                       for r in report["epsilon_at_delta"])
    if report.get("rho_zcdp") is not None:  # the discrete Gaussian: zCDP holds, mu-GDP does not
        mu = (f"<p>rho-zCDP: rho = {_cell(report['rho_zcdp'], 'rho_zcdp')} "
              "(sum over votes of 1/(2 sigma<sup>2</sup>)).</p>")
    else:
        mu = "" if report["mu_gdp"] is None else f"<p>mu-GDP cross-check: mu = {_cell(report['mu_gdp'], 'mu_gdp')}.</p>"
    return f"""<p>Accountant: {html.escape(report['accountant'])}.
Neighbouring datasets: {html.escape(report['neighbouring_relation'])}.
Sensitivity: {html.escape(report['sensitivity'])}.</p>
<h3>Privacy events</h3>
<table><tr><th>generation</th><th>mechanism</th><th>sigma</th><th>sampling rate</th><th>k</th><th>reason</th>
<th>status</th><th>release</th><th>release sha256</th></tr>{events}</table>
<div class="pair">
<div><h3>Epsilon after each generation</h3><table><tr><th>generation</th><th>epsilon</th></tr>{by_generation}</table></div>
<div><h3>Epsilon at other deltas</h3><table><tr><th>delta</th><th>epsilon</th></tr>{by_delta}</table></div>
</div>
{mu}"""


def _hash_cell(value: str | None) -> str:
    """A hash shortened to HASH_DIGITS characters, the full value in its title (a tooltip)."""
    if not value:
        return _cell(value)
    full = html.escape(value)
    return f'<code title="{full}">{html.escape(value[:HASH_DIGITS])}&hellip;</code>'


#: Keys whose values are privacy losses (rounded up when shown) and noise multipliers (rounded down).
PRIVACY_LOSS_KEYS = frozenset({"epsilon", "rho_zcdp", "mu_gdp"})
NOISE_KEYS = frozenset({"noise_multiplier"})


def format_value(value: Any, key: str = "") -> str:
    """A metric as people read it: 4 significant digits, "n/a" for a missing one; under ``key`` a privacy loss is
    rounded up and a noise multiplier down at 4 decimals, so what is shown never flatters the guarantee."""
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key in PRIVACY_LOSS_KEYS | NOISE_KEYS:
        return privacy.format_epsilon(value) if key in PRIVACY_LOSS_KEYS else privacy.format_sigma(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cell(value: Any, key: str = "") -> str:
    return html.escape(format_value(value, key))
