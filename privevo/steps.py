"""The pipeline's steps as plain functions over the run layout.

Each Kubeflow component in ``components/`` parses its inputs and calls one function
here; ``pipeline.py rerun`` and the components' own command lines call the same
functions. Steps exchange *references* (URI + sha256), never private data.

Randomness: everything except DP noise is seeded from the config's ``seed`` and
(generation, step, shard), so reruns of non-DP steps reproduce their outputs; DP
noise comes from OS entropy (``privevo.privacy``) and a written release is final.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo import privacy, runtime, storage
from privevo.config import Config, Phase, config_to_dict, get_key
from privevo.errors import UserError
from privevo.layout import step_name
from privevo.modalities import get_modality
from privevo.population import Population
from privevo.remote_calls import RecordedModel
from privevo.run_record import Run, utc_now

if TYPE_CHECKING:
    from privevo.data_quality import DataQuality
    from privevo.modalities import SampleSet

logger = logging.getLogger(__name__)
runtime.prefer_passive_waiting()  # every step process imports this module before torch or faiss


# ------------------------------------------------------------------ references and records


def _reference(uri: str, sha256: str, **extra: Any) -> dict[str, Any]:
    return {"uri": uri, "sha256": sha256, **extra}


# The oldest Kubeflow Pipelines backend the compiled pipeline runs on: each generation fans its shards' outputs in
# with dsl.Collected, which the backend's driver resolves from 2.14 (before 2.5 it does not even substitute the run id)
MIN_KFP_BACKEND = (2, 14)
MIN_KFP_BACKEND_TEXT = ".".join(map(str, MIN_KFP_BACKEND))


def resolve_run(config: Config, parameters: dict[str, Any], run_id: str, resume: bool, kfp_run_id: str) -> Run:
    """A pipeline run's first step: apply its run parameters, validate, calibrate the noise, check the budget, start the run.

    An empty ``run_id`` means the KFP run's own id; an existing run folder is refused unless ``resume``. A KFP run id
    that still reads ``{{...}}`` is refused: every run of such a backend would share that one folder.
    """
    from privevo.parameters import apply_parameters

    if "{{" in kfp_run_id:
        raise UserError(f"the KFP backend passed the run id placeholder {kfp_run_id} unsubstituted: it is too old for "
                        f"this pipeline, which needs KFP backend {MIN_KFP_BACKEND_TEXT} or newer; upgrade KFP")
    config = apply_parameters(config, parameters)
    privacy.check_planned_budget(config)  # calibrates sigma: an impossible epsilon target fails here, in one line
    run = Run.start(config, run_id or kfp_run_id, resume, started_by=kfp_run_id)
    privacy.noise_multiplier_for(config, run.layout)  # kept in the run: the votes do not calibrate again
    return run


def verify_references(references: list[dict[str, Any]]) -> None:
    """Check that files handed over by earlier steps are still the ones they wrote."""
    for reference in references:
        uri = reference["uri"]
        if not storage.exists(uri) or storage.sha256_uri(uri) != reference["sha256"]:
            raise UserError(f"{uri} changed after the step that wrote it finished: rerun that step")


def _record_step(run: Run, generation: int, step: str, params: dict[str, Any], started: float,
                 shard: int | None = None, private: bool = False) -> None:
    """Write the step's parameters and timing beside its outputs (for the audit) and its part of the manifest.

    A ``private`` step (one that reads the private set) has no timing in its released record: its time grows with
    the private set, so it goes to the private tier (:func:`_record_private_timing`)."""
    name = step_name(step, shard)
    record: dict[str, Any] = {"step": name, "generation": generation, "params": params}
    if private:
        _record_private_timing(run, name, generation, started)
    else:
        record.update(seconds=round(time.time() - started, 3), finished_at=utc_now())
    storage.write_json(run.layout.step_record(generation, step, shard), record)
    record_manifest(run, generation, name)


def _record_private_timing(run: Run, step: str, generation: int | None, started: float) -> None:
    """Append how long a step over the private set took to the private tier's timings (never released)."""
    entry = {"step": step, "generation": generation, "seconds": round(time.time() - started, 3),
             "finished_at": utc_now()}
    storage.update_json(run.layout.private_timings, lambda current: [*(current or []), entry])


def _public_inputs_time(run: Run, generation: int) -> float:
    """When the vote's public inputs (the previous population's shards, their embeddings) were last written: the time
    its released files and ledger event carry, which says nothing of the private work (on gs://, where an object's
    time is not read here, the time the vote began)."""
    uris = [uri for shard in range(run.config.population.num_shards)
            for uri in (run.layout.shard(generation - 1, shard), run.layout.synthetic_embeddings(generation, shard))]
    if any(storage.is_gcs(uri) for uri in uris):
        return time.time()
    return max((os.path.getmtime(uri) for uri in uris if os.path.exists(uri)), default=time.time())


def _stamp_released(uris: list[str], when: float) -> None:
    """Give the released files a step over the private set wrote the modification time ``when``, taken before the
    private work began, so that no released timestamp falls during or after it (local files: an object store's
    times cannot be set, there the padding of ``privacy.max_private_rows`` is what bounds them)."""
    for uri in uris:
        storage.set_modified(uri, when)


def record_manifest(run: Run, generation: int, writer: str) -> None:
    """Add the files this process wrote in a generation (hashed as they were written, never read back) to writer's part."""
    storage.write_manifest_part(run.layout.gen_dir(generation), run.layout.manifest_part(generation, writer))


def _reused(run: Run, generation: int, step: str, shard: int, *uris: str) -> str:
    """Reuse outputs an earlier try of a step's shard wrote: they go in its manifest part (that try may have stopped
    before writing it, and the audit checks what the parts list); returns the first one's sha256."""
    shas = [storage.sha256_uri(uri) for uri in uris]
    for uri, sha in zip(uris, shas, strict=True):
        storage.note_reused(uri, sha)
    record_manifest(run, generation, step_name(step, shard))
    return shas[0]


_LOADED: dict[str, tuple[str, Any]] = {}  # network kind -> (the values it was loaded from, instance)


def _load_once(kind: str, config: Config, fields: tuple[str, ...], load: Any) -> Any:
    """One instance of each network per process and values of the config ``fields`` it reads: the steps of one task
    (a shard's variations, then its embedding for the next vote) share the model and the embedding instead of loading
    them again, and so do runs whose configs differ elsewhere (privacy, population size, the private data)."""
    data = config_to_dict(config)
    key = json.dumps({field: get_key(data, field) for field in ("modality", *fields)}, sort_keys=True)
    if kind not in _LOADED or _LOADED[kind][0] != key:
        _LOADED[kind] = (key, load(config))
    return _LOADED[kind][1]


def load_model(config: Config) -> Any:
    """The foundation model the config names, from its modality (imported then: steps without a model never load
    torch)."""
    modality = get_modality(config)
    return _load_once("model", config, modality.model_fields(config), modality.load_model)


def load_embedding(config: Config) -> Any:
    """The vote's embedding the config names, from its modality (imported then: steps without one never load torch)."""
    modality = get_modality(config)
    return _load_once("embedding", config, modality.embedding_fields(config), modality.load_embedding)


def run_model(run: Run) -> Any:
    """The run's foundation model; with a DP warm start, drawing from its released noisy marginals (post-processing
    of the release, checked against its ledger event)."""
    model = load_model(run.config)
    if not run.config.privacy.warm_start_share:
        return model
    noisy = privacy.read_warm_start(run.layout, run.config.privacy.delta)
    return privacy.warm_start_hook(run.config).apply(model, noisy)


def _model_labels(model, labels: np.ndarray) -> np.ndarray | None:
    """Class labels for a class-conditional model; None for an unconditional one."""
    return labels if model.num_classes is not None and np.all(labels >= 0) else None


# ---------------------------------------------------------------- embed_private


def embed_private(run: Run) -> dict[str, Any]:
    """Load and embed the private set once per run into the private tier; returns a reference (its URI only).

    Reuses the embeddings when they already exist (a rerun or resume pays nothing).
    Nothing about the private data (not even its size, nor a hash of it) is logged,
    returned or put in an error: problems are told in the private tier's log. Records that
    cannot be used are skipped and counted in the private tier's data-quality report, and
    the set is padded to ``privacy.max_private_rows`` (:func:`_padded`); its time goes to
    the private tier too.
    """
    runtime.untimed_logging()
    uri = run.layout.private_embeddings
    if storage.exists(uri):
        logger.info("private embeddings already exist for run %s: reusing them", run.run_id)
        if not storage.exists(run.layout.private_embeddings_digest):  # a crash between the two writes
            storage.write_bytes(run.layout.private_embeddings_digest, storage.sha256_uri(uri).encode())
        return {"uri": uri}
    from privevo.data_quality import DataQuality

    started = time.time()
    config = run.config
    quality = DataQuality()
    private = load_private_set(run, "embed_private", quality)
    with private_failures(run, "embed_private", "the private records failed a check before embedding"):
        if config.population.conditional and private.labels is None:
            raise UserError("population.conditional needs labelled private data, but the private set has no labels")
    samples, real = _padded(run, private.samples, config.privacy.max_private_rows)
    embedding = load_embedding(config)
    with private_failures(run, "embed_private", "embedding the private records failed"):
        embeddings = embedding.embed(samples, config.embedding.batch_size, progress=False)
    finite = np.isfinite(embeddings).all(axis=1)
    for row in np.flatnonzero(real & ~finite):  # a record the embedding cannot read: left out, like a corrupt file
        quality.skip(f"row {row} of the selected set", "its embedding has NaN or infinite values")
    real &= finite
    embeddings[~finite] = 0.0
    labels = np.full(len(embeddings), -1, np.int64)
    if private.labels is not None:
        labels[: len(private.labels)] = private.labels
    try:
        sha = storage.write_npz(uri, {"embeddings": embeddings, "labels": labels, "real": real}, exclusive=True,
                                compress=False)  # uncompressed: the vote and the audit map it, never hold it whole
    except storage.AlreadyExists:
        sha = storage.sha256_uri(uri)
    storage.write_bytes(run.layout.private_embeddings_digest, sha.encode())  # integrity, kept in the private tier
    storage.write_json(run.layout.data_quality, {**quality.to_dict(), "records_voting": int(real.sum()),
                                                 "max_private_rows": config.privacy.max_private_rows,
                                                 "within_max_private_rows": _within_bound(len(real), config)})
    _record_private_timing(run, "embed_private", None, started)
    logger.info("embedded the private set with %s into the private tier", config.embedding.name)
    return {"uri": uri}


def _padded(run: Run, samples: np.ndarray, rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The private samples padded with the modality's blank rows to ``rows`` (``privacy.max_private_rows``), and which
    rows are real.

    The blank rows are embedded and searched like real ones and vote nothing: the private steps' work is that of
    ``rows`` rows whatever the private set's size up to it. A larger set is not cut (that would change the
    selected set): it is used whole, and its data-quality report says the bound did not hold. An empty set gets one
    blank row, so that it runs like any other, with zero counts."""
    real = np.ones(max(len(samples), rows or 0, 1), bool)
    if len(real) == len(samples):
        return samples, real
    real[len(samples):] = False
    return np.concatenate([samples, run.modality.blank_rows(samples, len(real) - len(samples))]), real


def _within_bound(rows: int, config: Config) -> bool | None:
    """Whether the private steps worked on exactly ``privacy.max_private_rows`` rows (None: no bound configured)."""
    bound = config.privacy.max_private_rows
    return None if bound is None else rows == bound


def load_private_set(run: Run, step: str, quality: DataQuality | None = None) -> SampleSet:
    """The private set in its modality's form (PRIVATE: never log, return or release it); problems go to the private
    tier's log.

    Problems of single records are skipped, never refused (counted in ``quality`` when given): whether a step fails
    depends on the config and the set's form, not on one private record."""
    from privevo.data_quality import DataQuality

    p = run.config.private
    storage.mark_private(p.path)  # its file names may describe the private set: storage errors name only the tier
    if not storage.is_gcs(p.path) and not os.path.exists(p.path):  # where the data should be is config, not data
        raise UserError(f"private.path {p.path} does not exist: fix private.path or mount the private data there")
    with private_failures(run, step, "the private records could not be loaded"):
        return run.modality.load_private(run, quality if quality is not None else DataQuality())


@contextlib.contextmanager
def private_failures(run: Run, step: str, kind: str, fail: bool = True) -> Iterator[None]:
    """Keep facts about the private set out of released logs: an error inside becomes one line that names
    the kind of problem and the private-tier log, where the full message is written. With ``fail=False`` the error
    is only written there, and the step goes on as it would have (work whose outcome must not show publicly)."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - any message or traceback may describe the private set
        import traceback

        log_uri = run.layout.private_log
        entry = {"at": utc_now(), "step": step, "error": str(error) if isinstance(error, UserError) else repr(error),
                 "traceback": "".join(traceback.format_exception(error))}

        def append(current: list[dict[str, str]] | None) -> list[dict[str, str]]:
            return [*(current or []), entry]

        storage.update_json(log_uri, append)
        if not fail:
            return
        raise UserError(f"{step}: {kind}; the reason is kept out of this log (it may describe the private set): "
                        f"read the last entry of {log_uri} in the private tier") from None


def private_reference(run: Run) -> dict[str, Any]:
    """Reference to this run's private embeddings (for steps run outside KFP): the URI only."""
    uri = run.layout.private_embeddings
    if not storage.exists(uri):
        raise UserError(f"run {run.run_id} has no private embeddings yet: run embed_private first")
    return {"uri": uri}


@contextlib.contextmanager
def _read_private(run: Run, reference: dict[str, Any]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The private embeddings (memory-mapped, valid inside the ``with``), labels and which rows are real (not
    padding), checked against the digest embed_private kept in the private tier.

    The file is hashed in chunks and mapped, never held whole: a Camelyon17 set is 2.5 GB (on gs:// it is first
    streamed to a local temporary copy, :func:`storage.mapped_npz`). A file embedded before it was written
    uncompressed is read whole."""
    digest = run.layout.private_embeddings_digest
    with storage.mapped_npz(reference["uri"]) as (arrays, hashes):
        if not storage.exists(digest) or hashes["sha256"] != storage.read_bytes(digest).decode().strip():
            raise UserError(f"{reference['uri']} changed since it was embedded: rerun embed_private in a new run")
        real = arrays["real"] if "real" in arrays else np.ones(len(arrays["labels"]), bool)  # embedded before padding
        yield arrays["embeddings"], arrays["labels"], real


# ------------------------------------------------------------------ warm_start


def warm_start(run: Run) -> dict[str, Any]:
    """The optional DP warm start (``privacy.warm_start_share``): the private set's noisy 1-way marginals, released
    once per run (write-once release + its own ledger event, :func:`privacy.release_warm_start`) before generation 0,
    whose model draws from them. A rerun reuses the release (no new noise, no new charge). Like the vote, it tells
    nothing of the private set: the counts stay inside the privacy module, the time goes to the private tier, and the
    released files and the event carry the run's start time."""
    config = run.config
    if not config.privacy.warm_start_share:
        raise UserError("this run's config asks for no warm start (privacy.warm_start_share is 0)")
    hook = privacy.warm_start_hook(config)  # a modality without one: refused before the private set is read

    def clean_counts() -> np.ndarray:
        """The marginals' clean counts (run only when a release is drawn; never leave privacy.release_warm_start)."""
        private = load_private_set(run, "warm_start")
        with private_failures(run, "warm_start", "counting the private records failed"):
            return np.asarray(hook.counts(private.samples))

    runtime.untimed_logging()
    started, stamp = time.time(), _run_start_time(run)
    release = privacy.release_warm_start(run.layout, config, clean_counts, created_at=stamp)
    epsilon = run.ledger().epsilon(upto_generation=0)
    event = next(e for e in run.ledger().events if e.reason == privacy.WARM_START)
    params = {"noise_multiplier": event.noise_multiplier, "share": config.privacy.warm_start_share,
              "marginals": len(hook.bins), "bins": sum(hook.bins), "mechanism": event.mechanism,
              "release": run.layout.relative(release.uri), "epsilon_after": epsilon}
    _record_step(run, 0, "warm_start", params, started, private=True)
    _stamp_released([release.uri, run.layout.ledger_json, run.layout.step_record(0, "warm_start"),
                     run.layout.manifest_part(0, "warm_start")], stamp)
    return _reference(release.uri, release.sha256, generation=0, epsilon=epsilon)


def _run_start_time(run: Run) -> float:
    """When the run began (its run.json was written): the time the warm start's released files and event carry, which
    says nothing of the private work (on gs://, where an object's time is not read here, the time the step began)."""
    uri = run.layout.run_json
    return time.time() if storage.is_gcs(uri) or not os.path.exists(uri) else os.path.getmtime(uri)


# ------------------------------------------------------------- generate_initial


def initial_labels(run: Run) -> np.ndarray:
    """Labels of generation 0's candidates: -1 (unconditional) or the public, uniform split of the slots over the run's
    classes, each slot's candidates in a row sharing its label."""
    population = run.config.population
    if not population.conditional:
        return np.full(population.candidates(0), -1, np.int64)
    classes = run.class_ids()
    counts = np.full(len(classes), population.size // len(classes))
    counts[: population.size - counts.sum()] += 1
    return np.repeat(np.repeat(np.array(classes, np.int64), counts), population.slot_size(0))


def generate_initial(run: Run, shard: int) -> dict[str, Any]:
    """RANDOM_API for one shard of generation 0: the public model alone (no private data, no vote)."""
    started = time.time()
    uri = run.layout.shard(0, shard)
    if storage.exists(uri):
        logger.info("generation 0 shard %d already exists: reusing it", shard)
        return _reference(uri, _reused(run, 0, "generate_initial", shard, uri), generation=0, shard=shard)
    part = shard_candidates(run.config, 0, shard)
    labels = initial_labels(run)[part]
    runtime.configure_torch_threads(runtime.shard_cpu_budget())
    model = RecordedModel(run_model(run), run.layout, 0, "generate_initial", shard)
    seed = run.seed(0, "random")  # with the global sample index: the same samples however many shards
    samples = model.random(len(labels), labels=_model_labels(model, labels), seed=seed, first_index=part.start)
    population = Population(samples, labels, np.full(len(labels), -1, np.int64), generation=0)
    sha = storage.write_bytes(uri, run.modality.encode_population(population))
    _record_step(run, 0, "generate_initial", {"size": len(labels), "shard": shard, "seed": seed, **model.call_summary()},
                 started, shard)
    logger.info("generation 0 shard %d: %d samples from the public model", shard, len(labels))
    return _reference(uri, sha, generation=0, shard=shard, **model.call_summary())


# ------------------------------------------------------------------ populations


def load_population(run: Run, generation: int) -> Population:
    """Generation ``generation``'s output, the population that evaluation, the report and export use: the parents its
    vote selected (one per slot) when its phase keeps them (``keep_selected``: its children were never voted on),
    else all its candidates (:func:`load_candidates`)."""
    candidates = load_candidates(run, generation)
    population = run.config.population
    if generation == 0 or not population.phase(generation, run.config.privacy).keep_selected:
        return candidates
    kept = slice(0, None, population.slot_size(generation))  # each slot's first candidate is its kept parent
    return Population(candidates.samples[kept], candidates.labels[kept], candidates.parent_ids[kept], generation)


def load_candidates(run: Run, generation: int) -> Population:
    """Generation ``generation``'s candidates, which the next vote scores (``population.candidates``), merging its
    shards on first use."""
    uri = run.layout.population(generation)
    if not storage.exists(uri):
        return merge_shards(run, generation)
    return run.modality.decode_population(storage.read_bytes(uri), uri)


MERGE_WRITER = "merge_shards"  # the manifest part of a merged population


def merge_shards(run: Run, generation: int) -> Population:
    """Merge a generation's variation shards (in shard order) into its population file; returns the population."""
    shards = run.config.population.num_shards
    uris = [run.layout.shard(generation, s) for s in range(shards)]
    missing = [u for u in uris if not storage.exists(u)]
    if missing:
        raise UserError(
            f"generation {generation} is incomplete: {missing[0]} is missing; "
            f"rerun {'generate_initial' if generation == 0 else 'generate_variations'} for generation {generation}"
        )
    modality = run.modality
    parts = [modality.decode_population(data, u) for u, data in zip(uris, storage.read_many(uris), strict=True)]
    merged = Population.concatenate(parts)
    uri = run.layout.population(generation)
    try:
        storage.write_bytes(uri, modality.encode_population(merged), exclusive=True)
    except storage.AlreadyExists:  # another step merged first: its file is the population
        return modality.decode_population(storage.read_bytes(uri), uri)
    record_manifest(run, generation, MERGE_WRITER)
    return merged


# -------------------------------------------------------------- embed_synthetic


def _check_vote_generation(config: Config, generation: int) -> None:
    if not 1 <= generation <= config.population.generations:
        raise UserError(f"generation must be in 1..{config.population.generations}, got {generation}")


def embed_synthetic(run: Run, generation: int, shard: int) -> dict[str, Any]:
    """Embed one shard of population ``generation - 1`` for the vote of ``generation``.

    With lookahead L > 0 each sample's embedding is the mean over L variations at the
    vote's degree (PE's lookahead); with L = 0 it is the sample's own embedding. Public
    data only: this step never reads the private tier. The result names the population
    shard it was made from, so the vote refuses embeddings of a population that changed.
    """
    from privevo.voting import lookahead_embeddings

    started = time.time()
    config = run.config
    _check_vote_generation(config, generation)
    population_uri = run.layout.shard(generation - 1, shard)
    if not storage.exists(population_uri):
        producer = "generate_initial" if generation == 1 else "generate_variations"
        raise UserError(f"{population_uri} is missing: run {producer} for generation {generation - 1} shard {shard} first")
    population_bytes = storage.read_bytes(population_uri)
    population_sha = storage.sha256_bytes(population_bytes)
    uri = run.layout.synthetic_embeddings(generation, shard)
    kept_ok = not (config.population.reuse_lookahead and config.population.lookahead) or storage.exists(
        run.layout.lookahead_variations(generation, shard))
    if kept_ok and _stored_synthetic_embeddings(run, generation, shard, population_sha) is not None:
        logger.info("generation %d shard %d: synthetic embeddings already exist: reusing them", generation, shard)
        kept_uri = run.layout.lookahead_variations(generation, shard)
        sha = _reused(run, generation, "embed_synthetic", shard, uri,
                      *([kept_uri] if storage.exists(kept_uri) else []))
        return _reference(uri, sha, generation=generation, shard=shard)
    if storage.exists(uri):
        logger.warning("generation %d shard %d: the population changed since it was embedded: embedding it again",
                       generation, shard)
    population = run.modality.decode_population(population_bytes, population_uri)
    offset = shard_candidates(config, generation - 1, shard).start
    lookahead, degree = config.population.lookahead, config.population.degree_schedule()[generation - 1]
    runtime.configure_torch_threads(runtime.shard_cpu_budget())
    embedding = load_embedding(config)
    model = RecordedModel(run_model(run), run.layout, generation, "embed_synthetic", shard) if lookahead else None

    keep = config.population.reuse_lookahead and lookahead > 0
    kept = np.empty((lookahead if keep else 0, *population.samples.shape), population.samples.dtype)

    def vary(batch: np.ndarray, repeat: int, start: int) -> np.ndarray:
        assert model is not None  # lookahead_embeddings varies only when lookahead > 0
        labels = _model_labels(model, population.labels[start : start + len(batch)])
        # seeded by the global sample index: the same variations however many shards
        varied = model.variation(batch, degree, labels=labels, seed=run.seed(generation, "lookahead", repeat),
                                 first_index=offset + start)
        if keep:
            kept[repeat, start : start + len(batch)] = varied
        return varied

    embeddings = lookahead_embeddings(
        population.samples, lookahead, vary, lambda x: embedding.embed(x, config.embedding.batch_size),
        batch_size=max(config.model.batch_size, 1),
    )
    if keep:  # the next generation's children may reuse them (population.reuse_lookahead); written first
        storage.write_npz(run.layout.lookahead_variations(generation, shard),  # uncompressed: read by rows, mapped
                          {"variations": kept, "population_sha256": np.array(population_sha)}, compress=False)
    sha = storage.write_npz(uri, {"embeddings": embeddings, "population_sha256": np.array(population_sha)})
    _record_step(run, generation, "embed_synthetic",
                 {"lookahead": lookahead, "degree": degree, "shard": shard, "population_sha256": population_sha,
                  **(model.call_summary() if model is not None else {})}, started, shard)
    logger.info("generation %d shard %d: embedded %d samples (lookahead %d)", generation, shard, len(embeddings),
                lookahead)
    return _reference(uri, sha, generation=generation, shard=shard, **(model.call_summary() if model is not None else {}))


def _stored_synthetic_embeddings(run: Run, generation: int, shard: int, population_sha: str) -> np.ndarray | None:
    """The shard's stored embeddings for vote ``generation`` if they were made from this population; else None."""
    uri = run.layout.synthetic_embeddings(generation, shard)
    if not storage.exists(uri):
        return None
    stored = storage.read_npz(uri)
    return stored["embeddings"] if str(stored["population_sha256"]) == population_sha else None


def _read_synthetic_embeddings(run: Run, generation: int, population_size: int) -> np.ndarray:
    """The vote's synthetic embeddings, in shard order, checked against the population they describe.

    Filled shard by shard into one array sized from the first shard's rows: the set is held once (plus one
    shard), not once in parts and again concatenated."""
    uncovered = UserError(f"generation {generation}'s synthetic embeddings do not cover its population: "
                          "rerun embed_synthetic for every shard")
    embeddings: np.ndarray | None = None
    filled = 0
    for shard in range(run.config.population.num_shards):
        population_sha = storage.sha256_uri(run.layout.shard(generation - 1, shard))
        part = _stored_synthetic_embeddings(run, generation, shard, population_sha)
        if part is None:
            raise UserError(
                f"generation {generation} shard {shard} has no synthetic embeddings of the current population: "
                f"run embed_synthetic for generation {generation} shard {shard} first"
            )
        if embeddings is None:
            embeddings = np.empty((population_size, *part.shape[1:]), part.dtype)
        if filled + len(part) > population_size or part.shape[1:] != embeddings.shape[1:]:
            raise uncovered
        embeddings[filled : filled + len(part)] = part
        filled += len(part)
        del part  # one shard at a time beside the whole
    if embeddings is None or filled != population_size:
        raise uncovered
    return embeddings


# ---------------------------------------------------------------------- dp_vote


def dp_vote(run: Run, generation: int, private_ref: dict[str, Any], force_new_noise: bool = False,
            redraw_key: str | None = None) -> dict[str, Any]:
    """One DP vote: noisy nearest-neighbour histogram (write-once release + ledger event) and parents.

    The synthetic side comes from embed_synthetic, so the only step that reads private data
    per generation runs no network (and imports no torch). A release that already exists is
    reused (no new noise, no new charge) unless ``force_new_noise``, which draws again and
    charges the ledger again, once per ``redraw_key`` (``privacy.release_vote``).
    """
    from privevo.voting import nearest_neighbour_histogram

    config = run.config
    _check_vote_generation(config, generation)
    previous = load_candidates(run, generation - 1)
    phase = config.population.phase(generation, config.privacy)
    conditional = config.population.conditional

    if conditional:  # public labels only: checked before the private set is read
        sizes = np.unique(previous.labels, return_counts=True)[1]
        if sizes.min() < config.privacy.k:
            raise UserError(f"a class of generation {generation - 1} has {sizes.min()} samples but the vote needs "
                            f"k={config.privacy.k}: raise population.size or lower privacy.k")

    def clean_histogram() -> np.ndarray:
        """The clean vote (runs only when a new release is drawn; never leaves privacy.release_vote)."""
        synthetic = _read_synthetic_embeddings(run, generation, len(previous))
        with _read_private(run, private_ref) as (private_embeddings, private_labels, real), \
                private_failures(run, "dp_vote", "the vote over the private set failed"):
            # Rows out of the subsample search like the others and vote nothing: the work does not show its size.
            votes = real & privacy.private_subsample(len(private_embeddings), config.privacy.sampling_rate)
            return nearest_neighbour_histogram(
                private_embeddings, synthetic, config.privacy.k,
                private_labels if conditional else None, previous.labels if conditional else None, votes,
            )

    runtime.untimed_logging()
    started, stamp = time.time(), _public_inputs_time(run, generation)
    release = privacy.release_vote(run.layout, config, generation, clean_histogram, force_new_noise, redraw_key,
                                   created_at=stamp)
    parents = _select(run, generation, release.noisy_histogram, previous, phase)
    selection_uri = run.layout.selection(generation)
    sha = storage.write_npz(selection_uri, {"parent_ids": parents, "labels": previous.labels[parents]})
    epsilon = run.ledger().epsilon(upto_generation=generation)
    params = {"noise_multiplier": privacy.noise_multiplier_for(config, run.layout), "threshold": phase.threshold,
              "k": config.privacy.k, "lookahead": config.population.lookahead,
              "degree": config.population.degree_schedule()[generation - 1], "selection": phase.selection,
              "sampling_rate": config.privacy.sampling_rate, "mechanism": config.privacy.mechanism,
              "release": run.layout.relative(release.uri),
              "epsilon_after": epsilon}
    _record_step(run, generation, "dp_vote", params, started, private=True)
    _stamp_released([release.uri, selection_uri, run.layout.ledger_json, run.layout.step_record(generation, "dp_vote"),
                     run.layout.manifest_part(generation, "dp_vote"), run.layout.population(generation - 1),
                     run.layout.manifest_part(generation - 1, MERGE_WRITER)], stamp)
    return _reference(selection_uri, sha, generation=generation, epsilon=epsilon)


def _select(run: Run, generation: int, noisy: np.ndarray, previous: Population, phase: Phase) -> np.ndarray:
    """One parent per slot (``population.size``) from the previous generation's candidates, by the phase's rule on
    the thresholded noisy histogram (post-processing), per class when conditional: a class keeps its slots (``family``
    keeps every slot, and a slot's candidates share its class)."""
    config = run.config
    weights = privacy.threshold(noisy, phase.threshold)
    rng = np.random.default_rng(run.seed(generation, "select"))
    if not config.population.conditional or phase.selection == "family":
        return privacy.select_parents(weights, config.population.size, rng, phase.selection)
    slot_labels = previous.labels[:: config.population.slot_size(generation - 1)]  # a slot's candidates share it
    parents = np.empty(len(slot_labels), np.int64)
    for label in np.unique(slot_labels):
        members, slots = np.flatnonzero(previous.labels == label), np.flatnonzero(slot_labels == label)
        parents[slots] = members[privacy.select_parents(weights[members], len(slots), rng, phase.selection)]
    return parents


# --------------------------------------------------------- generate_variations


def shard_slice(n: int, shard: int, num_shards: int) -> slice:
    """Contiguous slice of ``n`` items owned by ``shard`` (sizes differ by at most one)."""
    if not 0 <= shard < num_shards:
        raise UserError(f"shard must be in 0..{num_shards - 1}, got {shard}")
    bounds = np.linspace(0, n, num_shards + 1).round().astype(int)
    return slice(int(bounds[shard]), int(bounds[shard + 1]))


def shard_candidates(config: Config, generation: int, shard: int) -> slice:
    """The candidates of population ``generation`` that ``shard`` holds: its slots' candidates, each slot's in a row."""
    population = config.population
    slots, per_slot = shard_slice(population.size, shard, population.num_shards), population.slot_size(generation)
    return slice(slots.start * per_slot, slots.stop * per_slot)


def generate_variations(run: Run, generation: int, shard: int) -> dict[str, Any]:
    """VARIATION_API on one shard of the selected parents at the generation's degree: the shard's slots of the
    generation's candidates (``population.candidates``).

    A slot holds its parent first when the phase keeps it (with its own id as parent id), then the parent's
    ``variations_per_parent`` children; child j of slot s is the (s * variations_per_parent + j)-th child, which
    seeds it, so the candidates do not depend on the shard count."""
    started = time.time()
    config = run.config
    uri = run.layout.shard(generation, shard)
    selection_uri = run.layout.selection(generation)
    if not storage.exists(selection_uri):
        raise UserError(f"generation {generation} has no selection yet: run dp_vote for generation {generation} first")
    selection_sha = storage.sha256_uri(selection_uri)
    record_uri = run.layout.step_record(generation, "generate_variations", shard)
    if storage.exists(uri) and storage.exists(record_uri):
        if storage.read_json(record_uri)["params"].get("selection_sha256") == selection_sha:
            logger.info("generation %d shard %d already exists: reusing it", generation, shard)
            sha = _reused(run, generation, "generate_variations", shard, uri)
            return _reference(uri, sha, generation=generation, shard=shard)
        # The selection changed (a forced redraw): this shard and the merged population are stale.
        logger.warning("generation %d shard %d was made from an earlier selection: making it again", generation, shard)
        storage.delete(run.layout.population(generation))
    selection = storage.read_npz(selection_uri)
    previous = load_candidates(run, generation - 1)
    phase = config.population.phase(generation, config.privacy)
    per_parent = phase.variations_per_parent
    part = shard_slice(len(selection["parent_ids"]), shard, config.population.num_shards)
    parent_ids = np.repeat(selection["parent_ids"][part], per_parent)  # the shard's children, in slot order
    labels = np.repeat(selection["labels"][part], per_parent)
    degree = config.population.degree_schedule()[generation - 1]
    reused, fresh_offset = _reused_lookahead(run, generation, np.repeat(selection["parent_ids"], per_parent),
                                             slice(part.start * per_parent, part.stop * per_parent))
    samples = np.empty((len(parent_ids), *previous.samples.shape[1:]), previous.samples.dtype)
    for i, sample in reused.items():
        samples[i] = sample
    fresh = np.array([i for i in range(len(parent_ids)) if i not in reused], np.int64)
    seed = run.seed(generation, "variation")  # with the global index among fresh children: independent of sharding
    calls: dict[str, Any] = {}
    if len(fresh):
        runtime.configure_torch_threads(runtime.shard_cpu_budget())
        model = RecordedModel(run_model(run), run.layout, generation, "generate_variations", shard)
        samples[fresh] = model.variation(previous.samples[parent_ids[fresh]], degree,
                                        labels=_model_labels(model, labels[fresh]), seed=seed, first_index=fresh_offset)
        calls = model.call_summary()
    population = Population(samples, labels, parent_ids, generation=generation)
    if phase.keep_selected:
        population = _with_parents(population, previous, selection["parent_ids"][part], per_parent)
    sha = storage.write_bytes(uri, run.modality.encode_population(population))
    _record_step(run, generation, "generate_variations",
                 {"degree": degree, "shard": shard, "num_shards": config.population.num_shards, "seed": seed,
                  "selection_sha256": selection_sha, "reused_lookahead": len(reused), "fresh_variations": len(fresh),
                  "variations_per_parent": per_parent, "keep_selected": phase.keep_selected, **calls}, started, shard)
    logger.info("generation %d shard %d: %d variations at degree %.3g", generation, shard, len(samples), degree)
    return _reference(uri, sha, generation=generation, shard=shard, **calls)


def _with_parents(children: Population, previous: Population, parent_ids: np.ndarray, per_parent: int) -> Population:
    """The shard's slots with their kept parents: each parent (its own id as parent id) before its children."""

    def slots(kept: np.ndarray, made: np.ndarray) -> np.ndarray:
        made = made.reshape(len(parent_ids), per_parent, *made.shape[1:])
        return np.concatenate([kept[:, None], made], axis=1).reshape(-1, *made.shape[2:])

    return Population(slots(previous.samples[parent_ids], children.samples),
                      slots(previous.labels[parent_ids], children.labels),
                      slots(parent_ids, children.parent_ids), children.generation)


def _reused_lookahead(run: Run, generation: int, all_parents: np.ndarray, part: slice) -> tuple[dict[int, np.ndarray], int]:
    """Children of this shard (``part`` of all children's parents ``all_parents``) that reuse a lookahead variation,
    and the global index of its first fresh child.

    With ``population.reuse_lookahead`` and lookahead L, the vote of ``generation`` already
    made L variations of every candidate at this generation's degree (embed_synthetic). The
    first L children of a parent, in global child order, are those variations (public data
    chosen by post-processing of the DP release: no privacy cost), however many children
    each slot makes; only the rest are new model calls. Without it every child is fresh and
    the offset is the shard's first child.
    """
    lookahead = run.config.population.lookahead
    if not (run.config.population.reuse_lookahead and lookahead):
        return {}, part.start
    occurrence = np.empty(len(all_parents), np.int64)
    seen: dict[int, int] = {}
    for i, parent in enumerate(all_parents.tolist()):
        occurrence[i] = seen.get(parent, 0)
        seen[parent] = occurrence[i] + 1
    reuse = occurrence < lookahead
    wanted = np.flatnonzero(reuse[part])  # the shard's children that reuse one, relative to its first child
    rows = _lookahead_variations(run, generation, occurrence[part][wanted], all_parents[part][wanted])
    return dict(zip(wanted.tolist(), rows, strict=True)), int(np.count_nonzero(~reuse[: part.start]))


def _lookahead_variations(run: Run, generation: int, repeats: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Lookahead variation ``repeats[j]`` of candidate ``candidates[j]`` (a global index into population
    generation-1), as the vote of ``generation`` made them, each shard's file checked against that population.

    Reads only the shards that hold those candidates and, through a memory map, only those rows: a shard's memory
    follows its own children, not N_syn x L (a file written compressed, by an earlier version, is read whole)."""
    firsts = np.array([shard_candidates(run.config, generation - 1, shard).start
                       for shard in range(run.config.population.num_shards)])
    holders = np.searchsorted(firsts, candidates, side="right") - 1  # the shard of each candidate
    found: np.ndarray | None = None
    for shard in np.unique(holders).tolist():
        uri = run.layout.lookahead_variations(generation, shard)
        missing = UserError(f"generation {generation} shard {shard} has no lookahead variations of the current "
                            f"population: run embed_synthetic for generation {generation} shard {shard} first")
        if not storage.exists(uri):
            raise missing
        with storage.mapped_npz(uri, hashes=()) as (stored, _):
            if str(stored["population_sha256"]) != storage.sha256_uri(run.layout.shard(generation - 1, shard)):
                raise missing
            mine = np.flatnonzero(holders == shard)
            rows = stored["variations"][repeats[mine], candidates[mine] - firsts[shard]]
        if found is None:
            found = np.empty((len(candidates), *rows.shape[1:]), rows.dtype)
        found[mine] = rows
    return np.empty(0) if found is None else found


# ----------------------------------------------------------------------- rerun


def rerun_outputs(run: Run, step: str, generation: int, shard: int) -> tuple[list[str], int | None]:
    """What a rerun of a non-DP step replaces: the files it writes that later steps read, and the first vote that
    reads them (None when no vote does). Its step records and manifest parts are rewritten as it runs again."""
    config, layout = run.config, run.layout
    last = config.population.generations
    if step in ("embed_synthetic", "generate_variations", "variation_shard"):
        top = last - 1 if step == "variation_shard" else last  # the last generation's children are embedded by no vote
        if not 1 <= generation <= top:
            raise UserError(f"--generation must be in 1..{top} for {step}, got {generation}")
    shard_slice(config.population.size, shard, config.population.num_shards)  # the shard exists

    def population(g: int) -> list[str]:
        return [layout.shard(g, shard)]

    def embeddings(g: int) -> list[str]:
        return [layout.synthetic_embeddings(g, shard), layout.lookahead_variations(g, shard)]

    outputs: dict[str, tuple[list[str], int | None]] = {
        "embed_private": ([layout.private_embeddings, layout.private_embeddings_digest], 1),
        "warm_start": ([], None),  # a DP release: a rerun reuses it (privacy.release_warm_start)
        "generate_initial": (population(0), 1),
        "initial_shard": (population(0) + embeddings(1), 1),
        "embed_synthetic": (embeddings(generation), generation),
        "generate_variations": (population(generation), generation + 1 if generation < last else None),
        "variation_shard": (population(generation) + embeddings(generation + 1), generation + 1),
        "evaluate": ([], None),  # metrics.json and the report: no step reads them
    }
    if step not in outputs:
        raise UserError(f"{step} is not rerun by replacing its outputs")
    return outputs[step]


def replace_outputs(run: Run, outputs: list[str], first_vote: int | None, what: str) -> None:
    """Remove a step's outputs so that it runs again, unless a DP release was already made from them (a vote at or
    after ``first_vote``): released data never changes under its release. A generation whose shard goes is merged
    again when it is next read."""
    if first_vote is not None and (any(event.generation >= first_vote for event in run.ledger().events)
                                   or storage.exists(run.layout.release(first_vote))):
        raise UserError(f"{what} cannot be replaced: the vote of generation {first_vote} already released a DP "
                        "histogram made from it; start a new run to change it")
    for uri in outputs:
        storage.delete(uri)
    for generation in range(run.config.population.generations + 1):
        if {run.layout.shard(generation, s) for s in range(run.config.population.num_shards)} & set(outputs):
            _forget_merged_population(run, generation)


def _forget_merged_population(run: Run, generation: int) -> None:
    """Delete a generation's merged population and merge_shards' manifest part, which lists only it (the population is
    merged again, and recorded again, when it is next read)."""
    storage.delete(run.layout.population(generation))
    storage.delete(run.layout.manifest_part(generation, MERGE_WRITER))


# ---------------------------------------------------------------------- resume


def last_complete_generation(run: Run) -> int:
    """Highest generation whose population (or every shard of it) exists, in order; -1 for none."""
    last = -1
    for generation in range(run.config.population.generations + 1):
        shards = [run.layout.shard(generation, s) for s in range(run.config.population.num_shards)]
        if not (storage.exists(run.layout.population(generation)) or all(storage.exists(u) for u in shards)):
            break
        last = generation
    return last
