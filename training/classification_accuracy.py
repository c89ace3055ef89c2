"""Top-1, top-5 and superclass accuracy, as an `evaluate` metric that loads offline by path.

`evaluate.load("accuracy")` needs the Hub; this file does not: `evaluate.load(path_to_this_file)`. It imports only
numpy, datasets and evaluate, because `evaluate` copies it alone into its module cache.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy of an image classifier from its top-k predictions.

- `accuracy`: the best prediction is the reference.
- `top5_accuracy`: the reference is among the first five predictions.
- `superclass_accuracy` (only with `fine_to_coarse`): the superclass of the best prediction is the reference's.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int]]` of shape (N, k)): the k best labels of each image, best first, e.g.
        `logits.topk(5).indices`. Top-5 accuracy looks at the first five; with fewer than five classes, pass them all.
    references (`list[int]` of shape (N,)): the true labels.
    fine_to_coarse (`list[int]`, optional): the superclass of each label; adds `superclass_accuracy`.

Returns:
    `{"accuracy": float, "top5_accuracy": float}`, plus `"superclass_accuracy": float` with `fine_to_coarse`.

Example:
    >>> metric = evaluate.load("training/classification_accuracy.py")
    >>> metric.compute(predictions=[[2, 0, 1], [1, 2, 0]], references=[2, 0], fine_to_coarse=[0, 1, 1])
    {'accuracy': 0.5, 'top5_accuracy': 1.0, 'superclass_accuracy': 0.5}
"""


class ClassificationAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, fine_to_coarse=None):
        predictions = np.asarray(predictions, dtype=np.int64)  # (N, k)
        references = np.asarray(references, dtype=np.int64)  # (N,)
        if predictions.ndim != 2 or predictions.shape[1] == 0:
            raise ValueError(
                f"predictions must be the k best labels of each image, shape (N, k), got shape {predictions.shape}"
            )
        top1 = predictions[:, 0]
        results = {
            "accuracy": float(np.mean(top1 == references)),
            "top5_accuracy": float(np.mean((predictions[:, :5] == references[:, None]).any(axis=1))),
        }
        if fine_to_coarse is not None:
            fine_to_coarse = np.asarray(fine_to_coarse, dtype=np.int64)
            largest = max(top1.max(), references.max())
            if largest >= len(fine_to_coarse):
                raise ValueError(f"fine_to_coarse has {len(fine_to_coarse)} labels, but label {largest} occurs")
            results["superclass_accuracy"] = float(np.mean(fine_to_coarse[top1] == fine_to_coarse[references]))
        return results
