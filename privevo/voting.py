"""The vote: every private sample votes for its nearest synthetic samples.

This is the only place private data touches the algorithm. The clean histogram it
returns is sensitive: callers add noise (``privevo.privacy.add_noise``) before
anything leaves the process, and never store it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator

from privevo import runtime

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise
runtime.prefer_passive_waiting()  # before faiss loads OpenMP: see privevo.runtime
import faiss  # noqa: E402
import numpy as np  # noqa: E402

from privevo.errors import UserError  # noqa: E402

runtime.configure_faiss_threads()

logger = logging.getLogger(__name__)


#: Private rows searched at a time by the vote: a multiple of faiss's 4,096-row query block, so an unlabelled vote
#: makes the very BLAS calls of one search over the whole set; 16,384 x 2,048 float32 rows are 128 MiB.
PRIVATE_BLOCK_ROWS = 16384

#: Rows checked per block by ``_check_finite`` (bounds its temporary mask to a few MiB).
_FINITE_CHECK_ROWS = 4096


def _check_finite(name: str, embeddings: np.ndarray) -> None:
    # In blocks of rows: np.isfinite over the whole array would allocate a mask a quarter
    # the size of float32 embeddings (122 MiB at 100k x 1280) just to be reduced to one bool.
    for start in range(0, len(embeddings), _FINITE_CHECK_ROWS):
        if not np.isfinite(embeddings[start : start + _FINITE_CHECK_ROWS]).all():
            # Names the set, never the values: private embeddings must not reach a message.
            raise UserError(f"{name} embeddings contain NaN or infinite values: check the embedding model and its inputs")


def knn_indices(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """Exact L2 k-nearest neighbours of each query row in ``database`` (faiss brute force).

    ``faiss.knn`` runs the same exhaustive search as ``IndexFlatL2.search`` (``knn_L2sqr``,
    same results) without building an index, so the database is not copied into one.
    """
    database = np.ascontiguousarray(database, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, indices = faiss.knn(queries, database, k)
    return indices


def nearest_neighbour_histogram(
    private_embeddings: np.ndarray,
    synthetic_embeddings: np.ndarray,
    k: int = 1,
    private_labels: np.ndarray | None = None,
    synthetic_labels: np.ndarray | None = None,
    votes: np.ndarray | None = None,
) -> np.ndarray:
    """Clean vote histogram (length N_syn) with L2 sensitivity 1.

    Each private sample gives weight ``1/sqrt(k)`` to each of its ``k`` nearest
    synthetic samples, so adding or removing one private sample changes the
    histogram by exactly 1 in L2. With labels, a private sample votes only among
    synthetic samples of its own class (disjoint histograms: parallel composition).

    Rows whose ``votes`` entry is False (padding rows, rows left out of a subsample) and
    rows of a class the population lacks do the same search and vote nothing: the work
    depends on the number of rows and the public population only, and no private class
    or row makes the vote fail. The one refusal, a class with fewer than k synthetic
    samples, is decided by the public population alone.
    """
    if k < 1:
        raise UserError(f"vote k must be >= 1, got {k}")
    if private_embeddings.ndim != 2 or synthetic_embeddings.ndim != 2:
        raise UserError("embeddings must be 2-D arrays (samples x features)")
    if private_embeddings.shape[1] != synthetic_embeddings.shape[1]:
        raise UserError(
            f"private embeddings have dimension {private_embeddings.shape[1]} but synthetic ones "
            f"{synthetic_embeddings.shape[1]}: embed both with the same embedding"
        )
    _check_finite("private", private_embeddings)
    _check_finite("synthetic", synthetic_embeddings)
    if (private_labels is None) != (synthetic_labels is None):
        raise UserError("per-class voting needs labels on both the private set and the population")
    weights = np.full(len(private_embeddings), 1.0 / math.sqrt(k))
    if votes is not None:
        weights[~votes] = 0.0
    synthetic_embeddings = np.ascontiguousarray(synthetic_embeddings, dtype=np.float32)

    histogram = np.zeros(len(synthetic_embeddings), dtype=np.float64)
    search: np.ndarray | None = None  # the class each private row searches (None: one search over everything)
    if private_labels is None or synthetic_labels is None:
        # One database holding everything: no index arrays, so no fancy-indexed copy of the population.
        databases: list[tuple[int, np.ndarray | None, np.ndarray]] = [(0, None, synthetic_embeddings)]
    else:
        classes = np.unique(synthetic_labels)  # public: the population's classes
        known = np.isin(private_labels, classes)
        weights[~known] = 0.0
        # A row of a class the population lacks searches one of its classes, in turn, and votes nothing.
        search = np.where(known, private_labels, classes[np.arange(len(private_labels)) % len(classes)])
        members = [(int(c), np.flatnonzero(synthetic_labels == c)) for c in classes]
        databases = [(c, idx, synthetic_embeddings[idx]) for c, idx in members]
    for _, _, database in databases:
        if len(database) < k:
            raise UserError(
                f"a class has {len(database)} synthetic samples but the vote needs k={k}: "
                "raise population.size or lower privacy.k"
            )
    # Private rows a block at a time: the working memory (a block, its class subsets, faiss's results) stays bounded
    # whatever the private set's size, and a memory-mapped set is read once, in order.
    for start in range(0, len(private_embeddings), PRIVATE_BLOCK_ROWS):
        block = slice(start, start + PRIVATE_BLOCK_ROWS)
        queries, row_weights = private_embeddings[block], weights[block]
        for label, synthetic_idx, database in databases:
            if search is not None:
                chosen = np.flatnonzero(search[block] == label)
                if not len(chosen):
                    continue
                queries, row_weights = private_embeddings[block][chosen], weights[block][chosen]
            neighbours = knn_indices(queries, database, k)
            voted = neighbours if synthetic_idx is None else synthetic_idx[neighbours]
            np.add.at(histogram, voted.ravel(), np.repeat(row_weights, k))
    return histogram


def lookahead_embeddings(
    images: np.ndarray,
    lookahead: int,
    vary: Callable[[np.ndarray, int, int], np.ndarray],
    embed: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 256,
) -> np.ndarray:
    """Mean embedding over ``lookahead`` fresh variations of each image (PE's lookahead).

    Streams: each batch of images is varied ``lookahead`` times, embedded, and only the
    running mean is kept, so memory never holds all lookahead images at once.
    ``vary(batch, repeat, start)`` returns variations of ``batch`` (``start`` is the
    batch's offset, for per-sample seeding); ``embed(images)`` returns float32 rows.
    With ``lookahead == 0`` the images themselves are embedded.
    """
    if lookahead == 0:
        return embed(images)
    chunks = []
    for start, batch in _batches(images, batch_size):
        repeats = [embed(vary(batch, repeat, start)).astype(np.float64) for repeat in range(lookahead)]
        chunks.append((np.sum(repeats, axis=0) / lookahead).astype(np.float32))
    return np.concatenate(chunks)


def _batches(images: np.ndarray, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(images), batch_size):
        yield start, images[start : start + batch_size]
