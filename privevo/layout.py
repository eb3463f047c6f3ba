"""The run layout: every file name and path of a run, in one place.

Like diffusers' ``CONFIG_NAME``/``WEIGHTS_NAME``, each file a run writes has one
constant here, and every path is a method of :class:`RunLayout`. Steps, the audit,
the report and the command line ask the layout; nobody else formats a run path.

```
<run_root>/<run_id>/run.json, ledger.json, metrics.json
<run_root>/<run_id>/gen-NNN/population.npz, shards/shard-SSS.npz   (.npz: the modality's population suffix),
    synthetic_embeddings/shard-SSS.npz, noisy_histogram.npz (+ redraws), noisy_marginals.npz (gen-000: the
    DP warm start, privacy.warm_start_share),
    selection.npz, steps/<step>.json, manifest/<writer>.json,
    calls/<step>[-SSS].json, calls/cache/<step>[-SSS]/<key>.npz   (model.kind remote)
<run_root>/<run_id>/report/index.html, samples-gen-NNN.png, samples-reference.png, curves.png,
    class-counts.png
<private_root>/<run_id>/private_embeddings.npz, private_embeddings.sha256,
    private_errors.json, non_dp_metrics.json, data_quality.json, private_timings.json   (PRIVATE tier)
<private_root>/datasets/<dataset_id>/ledger.json       (PRIVATE tier: every run's charges on one private data set)
```
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from privevo import storage
from privevo.errors import UserError

if TYPE_CHECKING:
    from privevo.config import DataConfig

RUN_JSON = "run.json"
LEDGER_JSON = "ledger.json"
CALIBRATION_JSON = "calibration.json"
METRICS_JSON = "metrics.json"
REPORT_DIR = "report"
REPORT_INDEX = "index.html"
CURVES_PNG = "curves.png"
REFERENCE_GRID_PNG = "samples-reference.png"
CLASS_COUNTS_PNG = "class-counts.png"
MANIFEST_DIR = "manifest"
POPULATION_STEM = "population"
RELEASE_FILE = "noisy_histogram.npz"
REDRAW_PREFIX = "noisy_histogram-redraw-"
WARM_START_FILE = "noisy_marginals.npz"
SELECTION_FILE = "selection.npz"
SHARDS_DIR = "shards"
SYNTHETIC_EMBEDDINGS_DIR = "synthetic_embeddings"
LOOKAHEAD_DIR = "lookahead_variations"
STEPS_DIR = "steps"
CALLS_DIR = "calls"
CALL_CACHE_DIR = "cache"
PRIVATE_EMBEDDINGS_FILE = "private_embeddings.npz"
PRIVATE_DIGEST_FILE = "private_embeddings.sha256"
PRIVATE_LOG_FILE = "private_errors.json"
NON_DP_METRICS_FILE = "non_dp_metrics.json"
DATA_QUALITY_FILE = "data_quality.json"
PRIVATE_TIMINGS_FILE = "private_timings.json"
DATASETS_DIR = "datasets"

_GEN_DIR = re.compile(r"^gen-\d{3,}/")
_RELEASE_NAME = re.compile(
    rf"^(?:{re.escape(RELEASE_FILE)}|{re.escape(REDRAW_PREFIX)}[\w.-]+\.npz|{re.escape(WARM_START_FILE)})$")


def normalised(uri: str) -> str:
    """One spelling of a folder, file or gs:// prefix, to compare locations: a local path absolute with symbolic
    links, ``.`` and ``..`` resolved; a gs:// URI with ``.``, ``..``, doubled and trailing slashes removed."""
    if storage.is_gcs(uri):
        return storage.GCS_SCHEME + posixpath.normpath("/" + uri[len(storage.GCS_SCHEME):]).strip("/")
    return os.path.realpath(uri)


def same_or_inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies under it (local paths and gs:// URIs; never one inside the other)."""
    if storage.is_gcs(path) != storage.is_gcs(root):
        return False
    path, root = normalised(path).rstrip("/"), normalised(root).rstrip("/")
    return path == root or path.startswith(root + "/")


def overlaps(a: str, b: str) -> bool:
    """Whether two locations share anything: one is the other or lies inside it."""
    return same_or_inside(a, b) or same_or_inside(b, a)


def dataset_declaration(private: DataConfig) -> dict[str, Any]:
    """The private data set as the operator declares it in the config (source, normalised path, split, classes,
    rows, limit): public config, never private data. It names the data set whose lifetime budget a run spends."""
    return {"source": private.source, "path": normalised(private.path), "split": private.split,
            "classes": sorted(private.classes) if private.classes is not None else None,
            "rows": list(private.rows) if private.rows is not None else None, "limit": private.limit}


def dataset_id(declaration: dict[str, Any]) -> str:
    """A short hex digest of a data-set declaration's canonical JSON: the folder of its data-set ledger."""
    canonical = json.dumps(declaration, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def datasets_dir(private_root: str) -> str:
    """Folder of the data-set ledgers under a private root (PRIVATE tier)."""
    return storage.join(private_root, DATASETS_DIR)


def dataset_ledger(private_root: str, declaration: dict[str, Any]) -> str:
    """The data-set ledger of one declared private data set: every run's privacy charges on it (PRIVATE tier)."""
    return storage.join(datasets_dir(private_root), dataset_id(declaration), LEDGER_JSON)


def generation_name(generation: int) -> str:
    """A generation's folder name, gen-000 style."""
    if generation < 0:
        raise ValueError(f"generation must be >= 0, got {generation}")
    return f"gen-{generation:03d}"


def step_name(step: str, shard: int | None = None) -> str:
    """How a step's files are named: the step, or one shard of it (generate_variations-001)."""
    return step if shard is None else f"{step}-{shard:03d}"


def _shard_name(shard: int, suffix: str = ".npz") -> str:
    return f"shard-{shard:03d}{suffix}"


@dataclass(frozen=True)
class RunLayout:
    """Where each file of a run lives: released files under run_root, private ones under private_root.

    An empty ``private_root`` means "not known yet" (reading run.json, which names it). ``population_suffix`` is the
    file suffix of the run modality's populations (:attr:`privevo.modalities.Modality.population_suffix`).
    """

    run_root: str
    run_id: str
    private_root: str
    population_suffix: str = ".npz"

    def __post_init__(self) -> None:
        """Reject run ids that escape the run folder and private roots that overlap the released one; mark the private root
        so storage errors never name its objects. An empty private root (not known yet) has nothing to check or mark."""
        if not self.run_id or "/" in self.run_id or self.run_id in (".", ".."):
            raise UserError(f"run_id {self.run_id!r} is not a plain folder name: use letters, digits, '-', '_' or '.'")
        if self.private_root and overlaps(self.private_root, self.run_root):
            raise UserError(
                f"private_root {self.private_root} overlaps run_root {self.run_root}: "
                "keep private data in a separate folder or bucket"
            )
        storage.mark_private(self.private_root)

    # ------------------------------------------------------------------ run level

    @property
    def run_dir(self) -> str:
        """Released folder of this run."""
        return storage.join(self.run_root, self.run_id)

    @property
    def run_json(self) -> str:
        """Config, versions and status of the run."""
        return storage.join(self.run_dir, RUN_JSON)

    @property
    def ledger_json(self) -> str:
        """Privacy ledger: one event per DP release."""
        return storage.join(self.run_dir, LEDGER_JSON)

    @property
    def calibration_json(self) -> str:
        """The noise multiplier calibrated from the config's epsilon target, kept so the votes do not calibrate again."""
        return storage.join(self.run_dir, CALIBRATION_JSON)

    @property
    def metrics_json(self) -> str:
        """Metrics of the run."""
        return storage.join(self.run_dir, METRICS_JSON)

    @property
    def report_dir(self) -> str:
        """HTML report, sample grids and curves."""
        return storage.join(self.run_dir, REPORT_DIR)

    def report_file(self, name: str) -> str:
        """A file of the report folder."""
        return storage.join(self.report_dir, name)

    @property
    def report_index(self) -> str:
        """The report's HTML page."""
        return self.report_file(REPORT_INDEX)

    @staticmethod
    def sample_grid_name(generation: int) -> str:
        """File name (inside report/) of a generation's sample grid."""
        return f"samples-{generation_name(generation)}.png"

    # ----------------------------------------------------------------- private tier

    @property
    def private_dir(self) -> str:
        """Private-tier folder of this run (embeddings of private data)."""
        return storage.join(self.private_root, self.run_id)

    @property
    def private_embeddings(self) -> str:
        """The private set's embeddings (PRIVATE tier: never released)."""
        return storage.join(self.private_dir, PRIVATE_EMBEDDINGS_FILE)

    @property
    def private_embeddings_digest(self) -> str:
        """sha256 of the private embeddings, for the vote's integrity check (PRIVATE tier: a hash of private data)."""
        return storage.join(self.private_dir, PRIVATE_DIGEST_FILE)

    @property
    def private_log(self) -> str:
        """Errors that describe the private set (PRIVATE tier); released logs only point here."""
        return storage.join(self.private_dir, PRIVATE_LOG_FILE)

    @property
    def non_dp_metrics(self) -> str:
        """Metrics against the private set itself (``evaluation.against_private``; PRIVATE tier, never released)."""
        return storage.join(self.private_dir, NON_DP_METRICS_FILE)

    @property
    def data_quality(self) -> str:
        """What loading the private set found: records read, skipped and why, classes (PRIVATE tier, never released)."""
        return storage.join(self.private_dir, DATA_QUALITY_FILE)

    @property
    def private_timings(self) -> str:
        """How long each step over the private set took (PRIVATE tier: the time grows with the private set's size)."""
        return storage.join(self.private_dir, PRIVATE_TIMINGS_FILE)

    # ------------------------------------------------------------- per generation

    def gen_dir(self, generation: int) -> str:
        """Folder of one generation, gen-000 style."""
        return storage.join(self.run_dir, generation_name(generation))

    def manifest_dir(self, generation: int) -> str:
        """A generation's manifest: sha256 and size of each of its files, one part per writer (``storage.read_manifest``)."""
        return storage.join(self.gen_dir(generation), MANIFEST_DIR)

    def manifest_part(self, generation: int, writer: str) -> str:
        """The manifest part of one writer (a step, or a step's shard): the files it wrote, as it wrote them."""
        return storage.join(self.manifest_dir(generation), f"{writer}.json")

    def population(self, generation: int) -> str:
        """A generation's merged population."""
        return storage.join(self.gen_dir(generation), POPULATION_STEM + self.population_suffix)

    def shard(self, generation: int, shard: int) -> str:
        """One shard of a generation's population, written before the merge."""
        return storage.join(self.gen_dir(generation), SHARDS_DIR, _shard_name(shard, self.population_suffix))

    def synthetic_embeddings(self, generation: int, shard: int) -> str:
        """Embeddings of shard ``shard`` of population ``generation - 1``, for the vote of ``generation``."""
        return storage.join(self.gen_dir(generation), SYNTHETIC_EMBEDDINGS_DIR, _shard_name(shard))

    def lookahead_variations(self, generation: int, shard: int) -> str:
        """The lookahead variations the vote of ``generation`` made of shard ``shard`` (``population.reuse_lookahead``)."""
        return storage.join(self.gen_dir(generation), LOOKAHEAD_DIR, _shard_name(shard))

    def release(self, generation: int) -> str:
        """The generation's first DP release (the noisy histogram, write-once)."""
        return storage.join(self.gen_dir(generation), RELEASE_FILE)

    def redraw(self, generation: int, tag: str) -> str:
        """A forced redraw's DP release, beside the first one."""
        if not re.fullmatch(r"[\w.-]+", tag):
            raise ValueError(f"redraw tag {tag!r} must be letters, digits, '_', '-' or '.'")
        return storage.join(self.gen_dir(generation), f"{REDRAW_PREFIX}{tag}.npz")

    @property
    def warm_start_release(self) -> str:
        """The DP warm start's release (the noisy 1-way marginals, write-once), in generation 0's folder."""
        return storage.join(self.gen_dir(0), WARM_START_FILE)

    def selection(self, generation: int) -> str:
        """The parents the vote selected."""
        return storage.join(self.gen_dir(generation), SELECTION_FILE)

    def steps_dir(self, generation: int) -> str:
        """Folder of a generation's step records."""
        return storage.join(self.gen_dir(generation), STEPS_DIR)

    def step_record(self, generation: int, step: str, shard: int | None = None) -> str:
        """Parameters, seeds and timing of one step (of one shard) of a generation."""
        return storage.join(self.steps_dir(generation), f"{step_name(step, shard)}.json")

    def calls_dir(self, generation: int) -> str:
        """Folder of a generation's API call ledgers and stored call results (``model.kind: remote``)."""
        return storage.join(self.gen_dir(generation), CALLS_DIR)

    def calls(self, generation: int, step: str, shard: int | None = None) -> str:
        """The call ledger of one step (of one shard): requests, images, retries, failures, seconds, cost."""
        return storage.join(self.calls_dir(generation), f"{step_name(step, shard)}.json")

    def call_result(self, generation: int, step: str, shard: int | None, key: str) -> str:
        """The images one API request returned (public), stored so a retried step does not pay for them twice."""
        if not re.fullmatch(r"[\w.-]+", key):
            raise ValueError(f"call key {key!r} must be letters, digits, '_', '-' or '.'")
        return storage.join(self.calls_dir(generation), CALL_CACHE_DIR, step_name(step, shard), f"{key}.npz")

    # ------------------------------------------------------------------- names

    def relative(self, uri: str) -> str:
        """A run file's name relative to the run folder (as the ledger and the audit name it)."""
        return storage.relative_to(uri, self.run_dir)

    def absolute(self, relative: str) -> str:
        """The URI of a run file named relative to the run folder."""
        return storage.join(self.run_dir, relative)

    @staticmethod
    def is_release(relative: str) -> bool:
        """Whether a run-relative name is a DP release (a vote's first draw or a redraw, or the warm start)."""
        match = _GEN_DIR.match(relative)
        return match is not None and _RELEASE_NAME.match(relative[match.end() :]) is not None
