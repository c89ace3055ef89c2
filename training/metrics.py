"""The Trainer's metric hooks, built on the `classification_accuracy.py` evaluate module beside this file."""

import math
import os
from statistics import NormalDist

import evaluate

# Found by path, so it loads offline and from an installed package alike: it is a module of the `training` package.
ACCURACY_METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "classification_accuracy.py")
# Top-k accuracy is reported for k = 5 only where there are more than 5 classes: the k best of k classes always hold
# the label, so a top-5 of 3 classes would read 100% and say nothing.
TOP_K = 5


def load_accuracy_metric():
    """The `ClassificationAccuracy` metric, kept in memory: no cache files for concurrent processes to share."""
    return evaluate.load(ACCURACY_METRIC_PATH, keep_in_memory=True)


def preprocess_logits_for_metrics(logits, labels):
    """The Trainer's `preprocess_logits_for_metrics`: keep the best label indices (B, k), not all logits (B, C):
    k = `TOP_K` where there are more classes, else C - 1 (at least 1), which tells `compute_metrics` that top-5
    means nothing here."""
    if isinstance(logits, tuple):  # models that also return hidden states or attentions
        logits = logits[0]
    return logits.topk(max(1, min(TOP_K, logits.shape[-1] - 1)), dim=-1).indices


def build_compute_metrics(fine_to_coarse=None):
    """The Trainer's `compute_metrics`: `EvalPrediction` of top-k indices -> accuracy with its 95% Wilson interval
    (`accuracy_ci_low`, `accuracy_ci_high`), top-5 (with more than 5 classes only), superclass accuracy, and the
    number of images scored.

    Pair it with `preprocess_logits_for_metrics`, which makes `predictions` the top-k indices, best first, and keeps
    fewer than `TOP_K` where there are no more classes than that.
    """
    metric = load_accuracy_metric()

    def compute_metrics(eval_prediction):
        results = metric.compute(
            predictions=eval_prediction.predictions,
            references=eval_prediction.label_ids,
            fine_to_coarse=fine_to_coarse,
        )
        if eval_prediction.predictions.shape[1] < TOP_K:  # no more than TOP_K classes: top-5 would be 100%
            del results[f"top{TOP_K}_accuracy"]
        # How many images were scored; under DDP, each image of the split exactly once.
        num_images = len(eval_prediction.label_ids)
        low, high = wilson_interval(round(results["accuracy"] * num_images), num_images)
        return {**results, "accuracy_ci_low": low, "accuracy_ci_high": high, "num_images": num_images}

    return compute_metrics


def accuracy_sentence(metrics: dict, prefix: str) -> str:
    """`top-1 P% (95% interval L%-H%) on N images`, from the `compute_metrics` results of the split `prefix`."""
    low, high = metrics[f"{prefix}_accuracy_ci_low"], metrics[f"{prefix}_accuracy_ci_high"]
    accuracy, num_images = metrics[f"{prefix}_accuracy"], metrics[f"{prefix}_num_images"]
    return f"top-1 {accuracy:.2%} (95% interval {low:.2%}-{high:.2%}) on {num_images:,} images"


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion: `correct` successes out of `total` trials.

    Unlike the normal approximation (p +- z * sqrt(p(1 - p) / n)), it stays inside [0, 1] and keeps close to its
    nominal coverage near 0 and 1 and for small `total`. Written out here because scipy and statsmodels are not
    dependencies; the normal quantile comes from the standard library.
    """
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got correct={correct}, total={total}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    proportion = correct / total
    shrink = 1 + z**2 / total
    centre = (proportion + z**2 / (2 * total)) / shrink
    half_width = z / shrink * math.sqrt(proportion * (1 - proportion) / total + z**2 / (4 * total**2))
    # At 0 or `total` correct one end is exactly 0 or 1; clamp the rounding error there (~1e-17).
    return max(0.0, centre - half_width), min(1.0, centre + half_width)
