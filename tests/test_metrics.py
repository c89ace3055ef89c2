"""The accuracy metric: values against numpy, the Trainer hooks, offline loading, and packaging."""

import math
import os

import evaluate
import numpy as np
import pytest
import torch
from setuptools.config.pyprojecttoml import read_configuration
from transformers import EvalPrediction

from vtlm.training.metrics import (
    ACCURACY_METRIC_PATH,
    build_compute_metrics,
    load_accuracy_metric,
    preprocess_logits_for_metrics,
    wilson_interval,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_eval(num_images=300, num_labels=100, num_superclasses=20, seed=0):
    """Logits that are right often enough for every metric to be far from 0 and 1, and a random superclass map."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, num_images)
    logits = rng.normal(size=(num_images, num_labels)).astype(np.float32)
    logits[np.arange(num_images), labels] += rng.choice([0.0, 1.5, 3.0], num_images)
    fine_to_coarse = rng.integers(0, num_superclasses, num_labels)
    return logits, labels, fine_to_coarse


def numpy_metrics(logits, labels, fine_to_coarse):
    best_first = np.argsort(-logits, axis=1)
    return {
        "accuracy": np.mean(best_first[:, 0] == labels),
        "top5_accuracy": np.mean([label in row[:5] for row, label in zip(best_first, labels, strict=True)]),
        "superclass_accuracy": np.mean(fine_to_coarse[best_first[:, 0]] == fine_to_coarse[labels]),
    }


@pytest.fixture(scope="module")
def metric():
    return load_accuracy_metric()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metric_matches_numpy(metric, seed):
    logits, labels, fine_to_coarse = random_eval(seed=seed)
    top5 = preprocess_logits_for_metrics(torch.from_numpy(logits), torch.from_numpy(labels)).numpy()
    results = metric.compute(predictions=top5, references=labels, fine_to_coarse=fine_to_coarse.tolist())
    expected = numpy_metrics(logits, labels, fine_to_coarse)
    assert results == pytest.approx(expected, abs=1e-12)
    assert 0 < results["accuracy"] < results["top5_accuracy"] < 1
    assert results["accuracy"] < results["superclass_accuracy"] < 1


def test_superclass_accuracy_only_with_a_mapping(metric):
    results = metric.compute(predictions=[[2, 0, 1], [1, 2, 0], [0, 1, 2]], references=[2, 0, 2])
    assert results == pytest.approx({"accuracy": 1 / 3, "top5_accuracy": 1.0})


def test_superclass_counts_a_wrong_label_in_the_right_superclass(metric):
    results = metric.compute(predictions=[[1], [2], [0]], references=[0, 0, 0], fine_to_coarse=[0, 0, 1])
    assert results == pytest.approx({"accuracy": 1 / 3, "top5_accuracy": 1 / 3, "superclass_accuracy": 2 / 3})


def test_top5_looks_at_the_first_five_predictions_only(metric):
    results = metric.compute(predictions=[[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]], references=[5, 5])
    assert results == pytest.approx({"accuracy": 0.5, "top5_accuracy": 0.5})


def test_metric_rejects_bad_inputs(metric):
    with pytest.raises(ValueError, match=r"fine_to_coarse has 2 labels, but label 2 occurs"):
        metric.compute(predictions=[[2], [0]], references=[0, 1], fine_to_coarse=[0, 1])
    with pytest.raises(ValueError, match=r"shape \(N, k\)"):
        metric.compute(predictions=[[], []], references=[0, 1])


def test_preprocess_logits_keeps_the_top_indices_best_first():
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.7, 0.2, 0.0], [1.0, 0.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    expected = [[1, 4, 2, 3, 5], [6, 5, 4, 3, 2]]
    assert preprocess_logits_for_metrics(logits, None).tolist() == expected
    assert preprocess_logits_for_metrics((logits, torch.zeros(2, 3)), None).tolist() == expected  # with hidden states
    # With no more than 5 labels, the C best always hold the label: one fewer is kept, and top-5 is not reported.
    assert preprocess_logits_for_metrics(logits[:, :3], None).tolist() == [[1, 2], [2, 0]]
    assert preprocess_logits_for_metrics(logits[:, :6], None).tolist() == [[1, 4, 2, 3, 5], [5, 4, 3, 2, 0]]


def test_compute_metrics_reads_an_eval_prediction():
    logits, labels, fine_to_coarse = random_eval(num_images=64, seed=3)
    top5 = preprocess_logits_for_metrics(torch.from_numpy(logits), None).numpy()
    prediction = EvalPrediction(predictions=top5, label_ids=labels)
    expected = {**numpy_metrics(logits, labels, fine_to_coarse), "num_images": 64}
    low, high = wilson_interval(int(np.sum(top5[:, 0] == labels)), 64)
    expected.update(accuracy_ci_low=low, accuracy_ci_high=high)
    assert build_compute_metrics(fine_to_coarse.tolist())(prediction) == pytest.approx(expected, abs=1e-12)
    del expected["superclass_accuracy"]
    assert build_compute_metrics()(prediction) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("num_labels", [100, 6, 5, 3])
def test_trainer_evaluate_reports_the_metrics(tmp_path, tiny_config, num_labels):
    """... and top-5 only with more than 5 classes: a top-5 of 3 classes is 100% whatever the model, so neither the
    results nor the log (the Trainer logs every key of them) carry one."""
    from transformers import Trainer, TrainingArguments

    from vtlm.modeling import VTLMForImageClassification

    torch.manual_seed(0)
    tiny_config.num_labels = num_labels
    model = VTLMForImageClassification(tiny_config).eval()
    pixel_values = torch.randn(40, 3, 32, 32)
    labels = torch.randint(0, tiny_config.num_labels, (40,))
    rows = [{"pixel_values": pixels, "labels": label} for pixels, label in zip(pixel_values, labels, strict=True)]
    fine_to_coarse = [label // 5 for label in range(tiny_config.num_labels)]
    args = TrainingArguments(tmp_path, per_device_eval_batch_size=16, use_cpu=True, report_to="none")
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset=rows,
        compute_metrics=build_compute_metrics(fine_to_coarse),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    results = trainer.evaluate()
    with torch.no_grad():
        logits = model(pixel_values).logits.numpy()
    expected = numpy_metrics(logits, labels.numpy(), np.asarray(fine_to_coarse))
    if num_labels <= 5:
        assert "eval_top5_accuracy" not in results
        del expected["top5_accuracy"]
    assert {key: results[f"eval_{key}"] for key in expected} == pytest.approx(expected, abs=1e-12)
    assert results["eval_num_images"] == 40


def test_metric_loads_offline_by_path():
    """`evaluate.load("accuracy")` needs the Hub; ours loads by path with the Hub switched off (conftest)."""
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    metric = evaluate.load(ACCURACY_METRIC_PATH, keep_in_memory=True)
    assert type(metric).__name__ == "ClassificationAccuracy"
    assert metric.compute(predictions=[[1, 0], [0, 1]], references=[1, 1]) == {"accuracy": 0.5, "top5_accuracy": 1.0}


def test_metric_file_is_a_module_of_a_package_that_pyproject_ships():
    configuration = read_configuration(os.path.join(REPO_ROOT, "pyproject.toml"))
    folders = configuration["tool"]["setuptools"]["package-dir"]  # each shipped package's folder in the checkout
    folder = os.path.relpath(os.path.dirname(ACCURACY_METRIC_PATH), REPO_ROOT)
    assert folder in folders.values()


# Wilson score intervals at 95% published by Newcombe (1998), "Two-sided confidence intervals for the single
# proportion", Statistics in Medicine 17:857-872, Table I, method 3, to four decimals.
NEWCOMBE_1998_WILSON = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (29, 29, 0.8830, 1.0),
]
Z_975 = 1.959963984540054  # the standard normal's 97.5% quantile, from tables


@pytest.mark.parametrize("correct, total, lower, upper", NEWCOMBE_1998_WILSON)
def test_wilson_interval_matches_published_values(correct, total, lower, upper):
    assert wilson_interval(correct, total) == pytest.approx((lower, upper), abs=5e-5)


def test_wilson_interval_closed_forms():
    # p = 1/2: the centre (p + z^2/2n) / (1 + z^2/n) is exactly 1/2, and the half-width is
    # z / (1 + z^2/n) * sqrt(1/4n + z^2/4n^2) = z / (2 sqrt(n + z^2)).
    for total in (10, 10_000):
        half_width = Z_975 / (2 * math.sqrt(total + Z_975**2))
        assert wilson_interval(total // 2, total) == pytest.approx((0.5 - half_width, 0.5 + half_width), abs=1e-12)
    # 10,000 test images at 50%: about +-0.98 accuracy points.
    lower, upper = wilson_interval(5_000, 10_000)
    assert 100 * (upper - lower) / 2 == pytest.approx(0.98, abs=0.005)
    # p = 0: the lower end is 0 and the upper end is 2 z^2/2n / (1 + z^2/n) = z^2 / (n + z^2).
    assert wilson_interval(0, 10) == pytest.approx((0.0, Z_975**2 / (10 + Z_975**2)), abs=1e-12)
    # A 99% interval uses the 99.5% quantile, 2.5758293035489: at p = 1/2 the same closed form.
    z_995 = 2.5758293035489
    half_width = z_995 / (2 * math.sqrt(100 + z_995**2))
    assert wilson_interval(50, 100, confidence=0.99) == pytest.approx((0.5 - half_width, 0.5 + half_width), abs=1e-9)


@pytest.mark.parametrize("correct, total", [(0, 1), (1, 1), (3, 7), (70, 100), (9_123, 10_000), (10_000, 10_000)])
def test_wilson_interval_properties(correct, total):
    lower, upper = wilson_interval(correct, total)
    assert 0.0 <= lower <= correct / total <= upper <= 1.0
    assert lower < upper
    # Swapping successes and failures mirrors the interval about 1/2.
    mirrored_lower, mirrored_upper = wilson_interval(total - correct, total)
    assert (mirrored_lower, mirrored_upper) == pytest.approx((1 - upper, 1 - lower), abs=1e-12)
    # Ten times the trials at the same proportion: a narrower interval; a higher confidence: a wider one.
    more_lower, more_upper = wilson_interval(10 * correct, 10 * total)
    assert more_upper - more_lower < upper - lower
    wide_lower, wide_upper = wilson_interval(correct, total, confidence=0.99)
    assert wide_lower <= lower and upper <= wide_upper and wide_upper - wide_lower > upper - lower


@pytest.mark.parametrize(
    "correct, total, confidence", [(0, 0, 0.95), (-1, 10, 0.95), (11, 10, 0.95), (5, 10, 0.0), (5, 10, 1.0)]
)
def test_wilson_interval_rejects_bad_inputs(correct, total, confidence):
    with pytest.raises(ValueError):
        wilson_interval(correct, total, confidence)
