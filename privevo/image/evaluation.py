"""Image metrics of a run's generations: Frechet distance and precision/recall on EfficientNet-Lite0 features,
the class mix a public classifier sees, and downstream accuracy (a classifier trained on the synthetic images)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from privevo import metrics
from privevo.errors import UserError
from privevo.modalities import SampleSet, Scores

if TYPE_CHECKING:
    from privevo.run_record import Run

logger = logging.getLogger(__name__)

#: The feature extractor of the Frechet distance; named in every key (never called FID).
FD_EXTRACTOR = "effnet_lite0"
FD_KEY = f"fd_{FD_EXTRACTOR}"
PRECISION_RECALL_K = 3

#: How downstream accuracy is measured; reports print it next to the number.
DOWNSTREAM_PROTOCOL: dict = {
    "train_set": "synthetic images with their labels",
    "test_set": "held-out real images with their labels",
    "model": "privevo.image.classifier.SmallCNN (2 conv blocks, 32/64 channels, 128-unit head), inputs resized to 28x28",
    "optimizer": "Adam, lr 1e-3, cross-entropy",
    "epochs": 10,
    "batch_size": 128,
    "seed": 0,
    "metric": "top-1 accuracy, overall and per class (null for classes absent from the test set)",
}


def downstream_accuracy(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    seed: int = 0,
    epochs: int = DOWNSTREAM_PROTOCOL["epochs"],
) -> dict:
    """Accuracy on real test images of a classifier trained on synthetic images (see DOWNSTREAM_PROTOCOL).

    Protocol: ``privevo.image.classifier.train_classifier`` (SmallCNN, Adam 1e-3) on the
    labelled synthetic set, ``epochs`` epochs (default 10), batch size 128, seed 0; then top-1
    accuracy on the held-out real set, overall and per class. ``per_class_accuracy``
    has one entry per class, ``None`` where the test set has no image of that class.
    """
    from privevo.image import classifier

    test_hist = metrics.class_histogram(test_labels, num_classes)
    metrics.class_histogram(train_labels, num_classes)
    if len(train_images) != len(train_labels) or len(test_images) != len(test_labels):
        raise UserError("each image set must have exactly one label per image")
    model = classifier.train_classifier(
        train_images,
        np.asarray(train_labels),
        num_classes,
        epochs=epochs,
        batch_size=DOWNSTREAM_PROTOCOL["batch_size"],
        seed=seed,
    )
    predicted = classifier.predict_proba(model, test_images, batch_size=512).argmax(axis=1)
    truth = np.asarray(test_labels)
    correct = predicted == truth
    per_class: list[float | None] = [
        float(correct[truth == c].mean()) if test_hist[c] > 0 else None for c in range(num_classes)
    ]
    return {"accuracy": float(correct.mean()), "per_class_accuracy": per_class}


def _classifier(run: Run) -> Any:
    path = run.config.evaluation.classifier_path
    if not path:
        return None
    from privevo.image.classifier import load_classifier

    return load_classifier(path)


def image_scorer(run: Run) -> Callable[[SampleSet | None, int, bool], Scores]:
    """Loads the FD extractor and the class-mix classifier once; the returned function scores generations 0..last
    against a real set (see :meth:`privevo.modalities.Modality.scorer`)."""
    from privevo.image.embeddings.effnet_lite0 import EfficientNetLite0Embedding

    extractor = EfficientNetLite0Embedding.from_config(run.config)
    classifier = _classifier(run)

    def score(reference: SampleSet | None, last: int, log_rows: bool) -> Scores:
        return _score(run, reference, extractor, classifier, last, log_rows)

    return score


def _score(run: Run, reference: SampleSet | None, extractor: Any, classifier: Any, last: int,
           log_rows: bool) -> Scores:
    """Per-generation rows and the final row of metrics against ``reference`` (None: every metric null)."""
    from privevo.evaluation import format_row
    from privevo.metrics import class_histogram, frechet_distance, precision_recall, total_variation
    from privevo.steps import load_population

    config = run.config
    ledger = run.ledger()
    batch = config.embedding.batch_size
    reference_features = extractor.embed(reference.samples, batch, progress=log_rows) if reference is not None else None
    num_classes = len(config.class_names or [])
    target_mix = None
    if reference is not None and reference.labels is not None and num_classes:
        target_mix = class_histogram(reference.labels, num_classes)
    rows = []
    for generation in range(last + 1):
        population = load_population(run, generation)
        row: dict[str, Any] = {"generation": generation, FD_KEY: None, "precision": None, "recall": None,
                               "class_tv": None, "epsilon": ledger.epsilon(upto_generation=generation), "non_dp": False}
        if reference_features is not None:
            features = extractor.embed(population.samples, batch)
            row[FD_KEY] = frechet_distance(reference_features, features)
            row["precision"], row["recall"] = precision_recall(reference_features, features, k=PRECISION_RECALL_K)
        if classifier is not None and target_mix is not None:
            from privevo.image.classifier import predict_proba

            predicted = predict_proba(classifier, population.samples).argmax(axis=1)
            row["class_tv"] = total_variation(class_histogram(predicted, num_classes), target_mix)
        rows.append(row)
        if log_rows:
            logger.info("evaluated generation %d: %s", generation, format_row(row))
    final = dict(rows[-1])
    final["downstream_accuracy"] = None
    final["per_class_accuracy"] = None
    if config.population.conditional and reference is not None and reference.labels is not None:
        population = load_population(run, last)
        downstream = downstream_accuracy(
            population.samples, population.labels, reference.samples, reference.labels, num_classes, seed=config.seed
        )
        final["downstream_accuracy"] = downstream["accuracy"]
        final["per_class_accuracy"] = downstream["per_class_accuracy"]
    return rows, final
