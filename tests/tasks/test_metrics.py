"""Task metrics on hand-made batches, against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ssm_train.config import load_config, to_dict
from ssm_train.tasks import ClassificationTask, LanguageModelTask, RegressionTask
from ssm_train.tasks.base import warmup_cosine
from ssm_train.tasks.metrics import RelativeError

CFG = to_dict(load_config([], ["model.d_model=4", "model.n_layers=1", "model.d_state=2"]))


def test_relative_error_accumulates_over_batches():
    m = RelativeError()
    m.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))  # err 1, ref 2
    m.update(torch.tensor([[0.0]]), torch.tensor([[2.0]]))  # err 4, ref 4
    assert m.compute().item() == pytest.approx(math.sqrt(5 / 6))


def test_language_model_loss_bits_perplexity_and_accuracy():
    spec = {"task": "lm", "vocab_size": 3, "d_input": None, "d_output": None, "class_names": None,
            "ignore_index": -100, "tokenizer": None}
    task = LanguageModelTask(CFG, spec)
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    targets = torch.tensor([[0, 1, -100]])  # the third position is ignored
    loss = torch.nn.functional.cross_entropy(logits[0], targets[0], ignore_index=-100)
    task.update_metrics("val", logits, {"inputs": torch.zeros(1, 3, dtype=torch.long), "targets": targets}, loss)
    expected = -(math.log(0.5) + math.log(0.8)) / 2
    assert task.loss_mean["val"].compute().item() == pytest.approx(expected, rel=1e-6)
    assert task.acc["val"].compute().item() == 1.0  # both counted positions are argmax-correct


def test_classification_accuracy_and_macro_f1():
    spec = {"task": "classify", "vocab_size": 5, "d_input": None, "d_output": 3, "class_names": ["a", "b", "c"],
            "ignore_index": -100, "tokenizer": None}
    task = ClassificationTask(CFG, spec)
    preds = torch.tensor([0, 0, 1, 2, 2, 2])
    target = torch.tensor([0, 1, 1, 2, 2, 0])
    logits = torch.nn.functional.one_hot(preds, 3).float()
    task.update_metrics("val", logits, {"inputs": torch.zeros(6, 2, dtype=torch.long), "targets": target},
                        torch.tensor(0.0))
    out = {k: v.item() for k, v in task.metrics["val"].compute().items()}
    assert out["val/acc"] == pytest.approx(4 / 6)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * 1 * 0.5 / 1.5, 2 * (2 / 3) * 1 / (5 / 3)]  # per class, by hand
    assert out["val/f1"] == pytest.approx(sum(f1) / 3, rel=1e-5)


def test_regression_mse_and_relative_error():
    spec = {"task": "regress", "vocab_size": None, "d_input": 1, "d_output": 1, "class_names": None,
            "ignore_index": -100, "tokenizer": None}
    task = RegressionTask(CFG, spec)
    target = torch.tensor([[[1.0], [2.0]]])
    preds = torch.tensor([[[1.5], [2.0]]])
    task.update_metrics("test", preds, {"inputs": target, "targets": target}, torch.tensor(0.0))
    out = {k: v.item() for k, v in task.metrics["test"].compute().items()}
    assert out["test/mse"] == pytest.approx(0.125)
    assert out["test/rel_err"] == pytest.approx(math.sqrt(0.25 / 5))


def test_warmup_then_cosine_schedule():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 100, 0.1) == pytest.approx(0.1)
