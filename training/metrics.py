"""The Trainer's metric hooks, built on the `classification_accuracy.py` evaluate module beside this file."""

import os

import evaluate

# Found by path, so it loads offline and from an installed package alike: it is a module of the `training` package.
ACCURACY_METRIC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "classification_accuracy.py")
TOP_K = 5


def load_accuracy_metric():
    """The `ClassificationAccuracy` metric, kept in memory: no cache files for concurrent processes to share."""
    return evaluate.load(ACCURACY_METRIC_PATH, keep_in_memory=True)


def preprocess_logits_for_metrics(logits, labels):
    """The Trainer's `preprocess_logits_for_metrics`: keep the top-5 label indices (B, 5), not all logits (B, C)."""
    if isinstance(logits, tuple):  # models that also return hidden states or attentions
        logits = logits[0]
    return logits.topk(min(TOP_K, logits.shape[-1]), dim=-1).indices


def build_compute_metrics(fine_to_coarse=None):
    """The Trainer's `compute_metrics`: `EvalPrediction` of top-k indices -> accuracy, top-5, superclass accuracy, and
    the number of images scored.

    Pair it with `preprocess_logits_for_metrics`, which makes `predictions` the top-k indices, best first.
    """
    metric = load_accuracy_metric()

    def compute_metrics(eval_prediction):
        results = metric.compute(
            predictions=eval_prediction.predictions,
            references=eval_prediction.label_ids,
            fine_to_coarse=fine_to_coarse,
        )
        # How many images were scored; under DDP, each image of the split exactly once.
        return {**results, "num_images": len(eval_prediction.label_ids)}

    return compute_metrics
