"""The pipeline's steps as plain functions over the run layout.

Each Kubeflow component in ``components/`` parses its inputs and calls one function
here; ``pipeline.py rerun`` and the components' own command lines call the same
functions. Steps exchange *references* (URI + sha256), never private data.

Randomness: everything except DP noise is seeded from the config's ``seed`` and
(generation, step, shard), so reruns of non-DP steps reproduce their outputs; DP
noise comes from OS entropy (``privevo.privacy``) and a written release is final.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import platform
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from privevo import runtime, storage
from privevo.config import Config, config_to_dict, noise_multiplier_for, parse_config
from privevo.errors import UserError
from privevo.population import Population
from privevo.privacy import EPS_ERROR, Ledger, PrivacyEvent, add_noise, compute_epsilon, select_parents, threshold
from privevo.storage import RunLayout

logger = logging.getLogger(__name__)
runtime.prefer_passive_waiting()  # every step process imports this module before torch or faiss

POPULATION_FILE = "population.npz"
RELEASE_FILE = "noisy_histogram.npz"
SELECTION_FILE = "selection.npz"
PRIVATE_EMBEDDINGS_FILE = "private_embeddings.npz"


# ------------------------------------------------------------------ run context


@dataclass(frozen=True)
class Run:
    """A config bound to a run id and its storage layout."""

    config: Config
    layout: RunLayout

    @classmethod
    def create(cls, config: Config, run_id: str) -> "Run":
        """Bind ``config`` to ``run_id``; writes run.json once, and refuses a different config."""
        run = cls(config, RunLayout(config.run_root, run_id, config.private_root))
        record = {
            "run_id": run_id,
            "config": config_to_dict(config),
            "versions": _versions(),
            "created_at": _now(),
        }
        try:
            storage.write_json(run.layout.run_json, record, exclusive=True)
        except storage.AlreadyExists:
            stored = storage.read_json(run.layout.run_json)["config"]
            if stored != config_to_dict(config):
                raise UserError(
                    f"run {run_id} already exists under {config.run_root} with a different config: "
                    "choose a new --run-id or rerun with the stored config"
                ) from None
        return run

    @classmethod
    def open(cls, run_root: str, run_id: str) -> "Run":
        """An existing run under ``run_root`` (wherever it lives now), with its stored config."""
        run_json = storage.join(run_root, run_id, "run.json")
        if not storage.exists(run_json):
            raise UserError(f"no run {run_id} under {run_root} (missing {run_json})")
        config = parse_config(storage.read_json(run_json)["config"], source=run_json)
        config = config.model_copy(update={"run_root": run_root})
        return cls(config, RunLayout(run_root, run_id, config.private_root))

    @property
    def run_id(self) -> str:
        return self.layout.run_id

    def path(self, generation: int, name: str) -> str:
        return storage.join(self.layout.gen_dir(generation), name)

    def seed(self, *keys: int | str) -> int:
        """Seed for non-DP randomness from the config seed and (generation, step, shard, ...)."""
        words = [self.config.seed] + [k if isinstance(k, int) else _stable_hash(k) for k in keys]
        return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])

    def ledger(self) -> Ledger:
        if not storage.exists(self.layout.ledger_json):
            return Ledger(delta=self.config.privacy.delta)
        return Ledger.from_dict(storage.read_json(self.layout.ledger_json))

    def class_ids(self) -> list[int]:
        """Indices (into class_names) of the classes this run synthesises."""
        names = self.config.class_names or []
        wanted = self.config.private.classes or names
        unknown = [c for c in wanted if c not in names]
        if unknown:
            raise UserError(f"private.classes {unknown} are not in class_names {names}")
        return [names.index(c) for c in wanted]


def _stable_hash(text: str) -> int:
    return int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little") ^ len(text)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import privevo

    found = {"privevo": privevo.__version__, "python": platform.python_version()}
    for package in ("torch", "diffusers", "faiss-cpu", "numpy", "prv-accountant"):
        try:
            found[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing optional package is just not recorded
            pass
    return found


def _reference(uri: str, sha256: str, **extra: Any) -> dict[str, Any]:
    return {"uri": uri, "sha256": sha256, **extra}


def verify_references(references: list[dict[str, Any]]) -> None:
    """Check that files handed over by earlier steps are still the ones they wrote."""
    for reference in references:
        uri = reference["uri"]
        if not storage.exists(uri) or storage.sha256_uri(uri) != reference["sha256"]:
            raise UserError(f"{uri} changed after the step that wrote it finished: rerun that step")


def _record_step(run: Run, generation: int, step: str, params: dict[str, Any], started: float) -> None:
    """Write the step's parameters and timing beside its outputs (for the audit) and refresh the manifest."""
    record = {"step": step, "generation": generation, "params": params, "seconds": round(time.time() - started, 3),
              "finished_at": _now()}
    storage.write_json(run.path(generation, f"steps/{step}.json"), record)
    storage.write_manifest(run.layout.gen_dir(generation))


# ----------------------------------------------------------------- model access


def load_model(config: Config):
    """The foundation model the config names (imported lazily: steps without a model skip torch)."""
    from privevo.models import load_foundation_model

    m = config.model
    options = {"num_inference_steps": m.num_inference_steps, "batch_size": m.batch_size, "device": m.device,
               "image_size": config.image_size, "autocast": m.autocast}
    if m.kind == "stable_diffusion":
        options.update(prompts=m.prompts or [config.name], guidance_scale=m.guidance_scale, channels=config.channels,
                       disable_safety_checker=m.disable_safety_checker)
    return load_foundation_model(m.kind, m.path, **options)


def load_embedding(config: Config):
    from privevo.embeddings import load_embedding as _load

    e = config.embedding
    return _load(e.name, config.image_size, config.channels, input_size=e.input_size, device=e.device)


def _model_labels(model, labels: np.ndarray) -> np.ndarray | None:
    """Class labels for a class-conditional model; None for an unconditional one."""
    return labels if model.num_classes is not None and np.all(labels >= 0) else None


# ---------------------------------------------------------------- embed_private


def embed_private(run: Run) -> dict[str, Any]:
    """Load and embed the private set once per run into the private tier; returns a reference.

    Reuses the embeddings when they already exist (a rerun or resume pays nothing).
    Nothing about the private data (not even its size) is logged or returned.
    """
    from privevo.data import load_image_set

    uri = storage.join(run.layout.private_dir, PRIVATE_EMBEDDINGS_FILE)
    if storage.exists(uri):
        logger.info("private embeddings already exist for run %s: reusing them", run.run_id)
        return _reference(uri, storage.sha256_uri(uri))
    config = run.config
    p = config.private
    images = load_image_set(
        p.source, p.path, config.image_size, config.channels, split=p.split, classes=p.classes,
        limit=p.limit, seed=run.seed("private-subset"), class_names=config.class_names, rows=p.rows,
    )
    if config.population.conditional and images.labels is None:
        raise UserError(f"population.conditional needs labelled private data, but {p.path} has no labels")
    if len(images.images) / math.sqrt(config.privacy.k) <= config.privacy.threshold:
        raise UserError(
            f"the private set is too small for privacy.threshold={config.privacy.threshold}: no bin can pass it; "
            "lower the threshold or use more private data"
        )
    embeddings = load_embedding(config).embed(images.images, config.embedding.batch_size)
    if not np.all(np.isfinite(embeddings)):
        raise UserError("private embeddings contain NaN or infinite values: check the embedding and the private images")
    labels = images.labels if images.labels is not None else np.full(len(embeddings), -1, np.int64)
    try:
        sha = storage.write_npz(uri, {"embeddings": embeddings, "labels": labels}, exclusive=True)
    except storage.AlreadyExists:
        sha = storage.sha256_uri(uri)
    logger.info("embedded the private set with %s into the private tier", config.embedding.name)
    return _reference(uri, sha)


def private_reference(run: Run) -> dict[str, Any]:
    """Reference to this run's private embeddings (for steps run outside KFP)."""
    uri = storage.join(run.layout.private_dir, PRIVATE_EMBEDDINGS_FILE)
    if not storage.exists(uri):
        raise UserError(f"run {run.run_id} has no private embeddings yet: run embed_private first")
    return _reference(uri, storage.sha256_uri(uri))


def _read_private(reference: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    data = storage.read_bytes(reference["uri"])
    if storage.sha256_bytes(data) != reference["sha256"]:
        raise UserError(f"{reference['uri']} changed since it was embedded: rerun embed_private in a new run")
    import io

    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return npz["embeddings"], npz["labels"]


# ------------------------------------------------------------- generate_initial


def initial_labels(run: Run) -> np.ndarray:
    """Labels of generation 0: -1 (unconditional) or the public, uniform split over the run's classes."""
    size = run.config.population.size
    if not run.config.population.conditional:
        return np.full(size, -1, np.int64)
    classes = run.class_ids()
    counts = np.full(len(classes), size // len(classes))
    counts[: size - counts.sum()] += 1
    return np.repeat(np.array(classes, np.int64), counts)


def shard_path(run: Run, generation: int, shard: int) -> str:
    """Where one shard of a generation's population is written before the merge."""
    return run.path(generation, f"shards/shard-{shard:03d}.npz")


def generate_initial(run: Run, shard: int) -> dict[str, Any]:
    """RANDOM_API for one shard of generation 0: the public model alone (no private data, no vote)."""
    started = time.time()
    uri = shard_path(run, 0, shard)
    if storage.exists(uri):
        logger.info("generation 0 shard %d already exists: reusing it", shard)
        return _reference(uri, storage.sha256_uri(uri), generation=0, shard=shard)
    part = shard_slice(run.config.population.size, shard, run.config.population.num_shards)
    labels = initial_labels(run)[part]
    runtime.configure_torch_threads(runtime.shard_cpu_budget())
    model = load_model(run.config)
    seed = run.seed(0, "random")  # with the global sample index: the same samples however many shards
    images = model.random(len(labels), labels=_model_labels(model, labels), seed=seed, first_index=part.start)
    population = Population(images, labels, np.full(len(labels), -1, np.int64), generation=0)
    sha = storage.write_bytes(uri, population.to_bytes())
    _record_step(run, 0, f"generate_initial-{shard:03d}", {"size": len(labels), "shard": shard, "seed": seed}, started)
    logger.info("generation 0 shard %d: %d samples from the public model", shard, len(labels))
    return _reference(uri, sha, generation=0, shard=shard)


# ------------------------------------------------------------------ populations


def load_population(run: Run, generation: int) -> Population:
    """Generation ``generation``'s population, merging its variation shards on first use."""
    uri = run.path(generation, POPULATION_FILE)
    if not storage.exists(uri):
        merge_shards(run, generation)
    return Population.from_bytes(storage.read_bytes(uri), source=uri)


def merge_shards(run: Run, generation: int) -> str:
    """Merge a generation's variation shards (in shard order) into its population file."""
    shards = run.config.population.num_shards
    uris = [shard_path(run, generation, s) for s in range(shards)]
    missing = [u for u in uris if not storage.exists(u)]
    if missing:
        raise UserError(
            f"generation {generation} is incomplete: {missing[0]} is missing; "
            f"rerun {'generate_initial' if generation == 0 else 'generate_variations'} for generation {generation}"
        )
    parts = [Population.from_bytes(storage.read_bytes(u), source=u) for u in uris]
    merged = Population.concatenate(parts)
    try:
        sha = storage.write_bytes(run.path(generation, POPULATION_FILE), merged.to_bytes(), exclusive=True)
    except storage.AlreadyExists:
        sha = storage.sha256_uri(run.path(generation, POPULATION_FILE))
    storage.write_manifest(run.layout.gen_dir(generation))
    return sha


# -------------------------------------------------------------- embed_synthetic


def synthetic_embeddings_path(run: Run, generation: int, shard: int) -> str:
    """Where the vote of ``generation`` finds the embeddings of shard ``shard`` of population ``generation - 1``."""
    return run.path(generation, f"synthetic_embeddings/shard-{shard:03d}.npz")


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
    population_uri = shard_path(run, generation - 1, shard)
    if not storage.exists(population_uri):
        producer = "generate_initial" if generation == 1 else "generate_variations"
        raise UserError(f"{population_uri} is missing: run {producer} for generation {generation - 1} shard {shard} first")
    population_bytes = storage.read_bytes(population_uri)
    population_sha = storage.sha256_bytes(population_bytes)
    uri = synthetic_embeddings_path(run, generation, shard)
    if _stored_synthetic_embeddings(run, generation, shard, population_sha) is not None:
        logger.info("generation %d shard %d: synthetic embeddings already exist: reusing them", generation, shard)
        return _reference(uri, storage.sha256_uri(uri), generation=generation, shard=shard)
    if storage.exists(uri):
        logger.warning("generation %d shard %d: the population changed since it was embedded: embedding it again",
                       generation, shard)
    population = Population.from_bytes(population_bytes, source=population_uri)
    offset = shard_slice(config.population.size, shard, config.population.num_shards).start
    lookahead, degree = config.population.lookahead, config.population.degree_schedule()[generation - 1]
    runtime.configure_torch_threads(runtime.shard_cpu_budget())
    embedding = load_embedding(config)
    model = load_model(config) if lookahead else None

    def vary(batch: np.ndarray, repeat: int, start: int) -> np.ndarray:
        labels = _model_labels(model, population.labels[start : start + len(batch)])
        # seeded by the global sample index: the same variations however many shards
        return model.variation(batch, degree, labels=labels, seed=run.seed(generation, "lookahead", repeat),
                               first_index=offset + start)

    embeddings = lookahead_embeddings(
        population.images, lookahead, vary, lambda x: embedding.embed(x, config.embedding.batch_size),
        batch_size=max(config.model.batch_size, 1),
    )
    sha = storage.write_npz(uri, {"embeddings": embeddings, "population_sha256": np.array(population_sha)})
    _record_step(run, generation, f"embed_synthetic-{shard:03d}",
                 {"lookahead": lookahead, "degree": degree, "shard": shard, "population_sha256": population_sha},
                 started)
    logger.info("generation %d shard %d: embedded %d samples (lookahead %d)", generation, shard, len(embeddings),
                lookahead)
    return _reference(uri, sha, generation=generation, shard=shard)


def _stored_synthetic_embeddings(run: Run, generation: int, shard: int, population_sha: str) -> np.ndarray | None:
    """The shard's stored embeddings for vote ``generation`` if they were made from this population; else None."""
    uri = synthetic_embeddings_path(run, generation, shard)
    if not storage.exists(uri):
        return None
    stored = storage.read_npz(uri)
    return stored["embeddings"] if str(stored["population_sha256"]) == population_sha else None


def _read_synthetic_embeddings(run: Run, generation: int, population_size: int) -> np.ndarray:
    """The vote's synthetic embeddings, in shard order, checked against the population they describe."""
    parts = []
    for shard in range(run.config.population.num_shards):
        population_sha = storage.sha256_uri(shard_path(run, generation - 1, shard))
        embeddings = _stored_synthetic_embeddings(run, generation, shard, population_sha)
        if embeddings is None:
            raise UserError(
                f"generation {generation} shard {shard} has no synthetic embeddings of the current population: "
                f"run embed_synthetic for generation {generation} shard {shard} first"
            )
        parts.append(embeddings)
    embeddings = np.concatenate(parts)
    if len(embeddings) != population_size:
        raise UserError(f"generation {generation}'s synthetic embeddings do not cover its population: "
                        "rerun embed_synthetic for every shard")
    return embeddings


# ---------------------------------------------------------------------- dp_vote


def _private_subsample(n: int, rate: float) -> np.ndarray:
    """Poisson subsample of the private set for amplification; secret randomness (OS entropy)."""
    import secrets

    if rate >= 1:
        return np.ones(n, dtype=bool)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(secrets.randbits(128))))
    return rng.random(n) < rate


def dp_vote(run: Run, generation: int, private_ref: dict[str, Any], force_new_noise: bool = False) -> dict[str, Any]:
    """One DP vote: noisy nearest-neighbour histogram (write-once release + ledger event) and parents.

    The synthetic side comes from embed_synthetic, so the only step that reads private data
    per generation runs no network (and imports no torch). A release that already exists is
    reused (no new noise, no new charge) unless ``force_new_noise``, which draws again and
    charges the ledger again.
    """
    from privevo.voting import nearest_neighbour_histogram

    started = time.time()
    config = run.config
    _check_vote_generation(config, generation)
    sigma = noise_multiplier_for(config)
    release_uri = current_release(run, generation)
    previous = load_population(run, generation - 1)

    if release_uri and not force_new_noise:
        logger.info("generation %d: the DP release already exists: reusing it (no new noise, no new charge)", generation)
        noisy = storage.read_npz(release_uri)["noisy_histogram"]
        _ensure_charged(run, generation, sigma, release_uri, storage.sha256_uri(release_uri))
    else:
        _check_budget(run, generation, sigma)
        synthetic = _read_synthetic_embeddings(run, generation, len(previous))
        private_embeddings, private_labels = _read_private(private_ref)
        keep = _private_subsample(len(private_embeddings), config.privacy.sampling_rate)
        if not keep.all():  # boolean indexing copies the whole private set even when it keeps every row
            private_embeddings, private_labels = private_embeddings[keep], private_labels[keep]
        conditional = config.population.conditional
        clean = nearest_neighbour_histogram(
            private_embeddings, synthetic, config.privacy.k,
            private_labels if conditional else None, previous.labels if conditional else None,
        )
        noisy = add_noise(clean, sigma)
        del clean, private_embeddings, private_labels  # the clean histogram never leaves this function
        reason = "force-new-noise" if release_uri else "vote"
        release_uri = run.path(generation, RELEASE_FILE if reason == "vote" else f"noisy_histogram-redraw-{_now_tag()}.npz")
        try:
            sha = storage.write_npz(release_uri, {"noisy_histogram": noisy}, exclusive=True)
        except storage.AlreadyExists:  # a concurrent retry released first: use its draw, discard ours
            noisy = storage.read_npz(release_uri)["noisy_histogram"]
            sha = storage.sha256_uri(release_uri)
        _ensure_charged(run, generation, sigma, release_uri, sha, reason=reason)
        logger.info("generation %d: released the noisy histogram (sigma=%.4g)", generation, sigma)

    parents = _select(run, generation, noisy, previous)
    selection = {"parent_ids": parents, "labels": previous.labels[parents]}
    sha = storage.write_npz(run.path(generation, SELECTION_FILE), selection)
    epsilon = run.ledger().epsilon(upto_generation=generation)
    params = {"noise_multiplier": sigma, "threshold": config.privacy.threshold, "k": config.privacy.k,
              "lookahead": config.population.lookahead, "degree": config.population.degree_schedule()[generation - 1],
              "selection": config.privacy.selection, "sampling_rate": config.privacy.sampling_rate,
              "release": storage.relative_to(release_uri, run.layout.run_dir), "epsilon_after": epsilon}
    _record_step(run, generation, "dp_vote", params, started)
    return _reference(run.path(generation, SELECTION_FILE), sha, generation=generation, epsilon=epsilon)


def current_release(run: Run, generation: int) -> str | None:
    """URI of the generation's DP release in force: the latest one the ledger paid for.

    A release written just before a crash, before its ledger event, is still the
    release (it happened): it is returned, and charged when reused.
    """
    paid = [e for e in run.ledger().events if e.generation == generation and e.release_uri]
    if paid:
        return storage.join(run.layout.run_dir, paid[-1].release_uri)
    first = run.path(generation, RELEASE_FILE)
    return first if storage.exists(first) else None


def _now_tag() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f")


def _select(run: Run, generation: int, noisy: np.ndarray, previous: Population) -> np.ndarray:
    """Parents from the thresholded noisy histogram (post-processing), per class when conditional."""
    config = run.config
    weights = threshold(noisy, config.privacy.threshold)
    rng = np.random.default_rng(run.seed(generation, "select"))
    if not config.population.conditional:
        return select_parents(weights, len(previous), rng, config.privacy.selection)
    parents = np.empty(len(previous), np.int64)
    for label in np.unique(previous.labels):
        members = np.flatnonzero(previous.labels == label)
        parents[members] = members[select_parents(weights[members], len(members), rng, config.privacy.selection)]
    return parents


def _check_budget(run: Run, generation: int, sigma: float) -> None:
    """Refuse a vote whose release would push spent epsilon over the budget (nothing is written)."""
    privacy = run.config.privacy
    budget = privacy.epsilon_budget if privacy.epsilon_budget is not None else privacy.epsilon
    if budget is None:
        return
    ledger = run.ledger()
    event = PrivacyEvent(generation=generation, noise_multiplier=sigma, sampling_rate=privacy.sampling_rate)
    after = compute_epsilon(ledger.events + [event], privacy.delta)
    if after > budget + EPS_ERROR:
        raise UserError(
            f"vote {generation} would spend epsilon={after:.4g} in total, over the budget {budget:g}: "
            "nothing was released; raise the budget or stop here"
        )


def _ensure_charged(run: Run, generation: int, sigma: float, release_uri: str, sha256: str, reason: str = "vote") -> None:
    """Append the release's ledger event unless one already pays for this exact release."""
    event = PrivacyEvent(
        generation=generation, noise_multiplier=sigma, sensitivity=1.0,
        sampling_rate=run.config.privacy.sampling_rate, release_sha256=sha256,
        release_uri=storage.relative_to(release_uri, run.layout.run_dir), reason=reason, created_at=_now(),
    )

    def append(current: dict | None) -> dict:
        ledger = Ledger.from_dict(current) if current else Ledger(delta=run.config.privacy.delta)
        if not any(e.release_sha256 == sha256 for e in ledger.events):
            ledger.append(event)
        return ledger.to_dict()

    storage.update_json(run.layout.ledger_json, append)


# --------------------------------------------------------- generate_variations


def shard_slice(n: int, shard: int, num_shards: int) -> slice:
    """Contiguous slice of ``n`` items owned by ``shard`` (sizes differ by at most one)."""
    if not 0 <= shard < num_shards:
        raise UserError(f"shard must be in 0..{num_shards - 1}, got {shard}")
    bounds = np.linspace(0, n, num_shards + 1).round().astype(int)
    return slice(int(bounds[shard]), int(bounds[shard + 1]))


def generate_variations(run: Run, generation: int, shard: int) -> dict[str, Any]:
    """VARIATION_API on one shard of the selected parents at the generation's degree."""
    started = time.time()
    config = run.config
    uri = shard_path(run, generation, shard)
    selection_uri = run.path(generation, SELECTION_FILE)
    if not storage.exists(selection_uri):
        raise UserError(f"generation {generation} has no selection yet: run dp_vote for generation {generation} first")
    selection_sha = storage.sha256_uri(selection_uri)
    record_uri = run.path(generation, f"steps/generate_variations-{shard:03d}.json")
    if storage.exists(uri) and storage.exists(record_uri):
        if storage.read_json(record_uri)["params"].get("selection_sha256") == selection_sha:
            logger.info("generation %d shard %d already exists: reusing it", generation, shard)
            return _reference(uri, storage.sha256_uri(uri), generation=generation, shard=shard)
        # The selection changed (a forced redraw): this shard and the merged population are stale.
        logger.warning("generation %d shard %d was made from an earlier selection: making it again", generation, shard)
        storage.delete(run.path(generation, POPULATION_FILE))
    selection = storage.read_npz(selection_uri)
    previous = load_population(run, generation - 1)
    part = shard_slice(len(selection["parent_ids"]), shard, config.population.num_shards)
    parent_ids = selection["parent_ids"][part]
    labels = selection["labels"][part]
    degree = config.population.degree_schedule()[generation - 1]
    runtime.configure_torch_threads(runtime.shard_cpu_budget())
    model = load_model(config)
    seed = run.seed(generation, "variation")  # with the global sample index: independent of sharding
    images = model.variation(previous.images[parent_ids], degree, labels=_model_labels(model, labels), seed=seed,
                             first_index=part.start)
    population = Population(images, labels, parent_ids, generation=generation)
    sha = storage.write_bytes(uri, population.to_bytes())
    _record_step(run, generation, f"generate_variations-{shard:03d}",
                 {"degree": degree, "shard": shard, "num_shards": config.population.num_shards, "seed": seed,
                  "selection_sha256": selection_sha}, started)
    logger.info("generation %d shard %d: %d variations at degree %.3g", generation, shard, len(images), degree)
    return _reference(uri, sha, generation=generation, shard=shard)


# ---------------------------------------------------------------------- resume


def last_complete_generation(run: Run) -> int:
    """Highest generation whose population (or every shard of it) exists, in order; -1 for none."""
    last = -1
    for generation in range(run.config.population.generations + 1):
        shards = [shard_path(run, generation, s) for s in range(run.config.population.num_shards)]
        if not (storage.exists(run.path(generation, POPULATION_FILE)) or all(storage.exists(u) for u in shards)):
            break
        last = generation
    return last
