"""LightningModules, one per kind of target (training layer)."""

from ssm_train.errors import NonFiniteLossError
from ssm_train.tasks.base import SequenceTask
from ssm_train.tasks.classification import ClassificationTask
from ssm_train.tasks.lm import LanguageModelTask
from ssm_train.tasks.regression import RegressionTask

TASKS: dict[str, type[SequenceTask]] = {
    "lm": LanguageModelTask,
    "classify": ClassificationTask,
    "regress": RegressionTask,
}

__all__ = ["TASKS", "SequenceTask", "NonFiniteLossError", "LanguageModelTask", "ClassificationTask",
           "RegressionTask"]
