"""Evaluating an encoder: features, the weighted kNN, the linear probe, fine-tuning, the
representation proxies (RankMe, alpha-ReQ, alignment, uniformity, collapse), and the `Evaluator`
that measures a trial's proxies and final metric as its study file says."""

from hpsearch.evaluation.accuracy import ClassAccuracy, class_accuracy
from hpsearch.evaluation.evaluator import FINAL_METRIC_KEYS, Evaluator, FinalMetric
from hpsearch.evaluation.features import extract_features
from hpsearch.evaluation.finetune import finetune, finetune_predict
from hpsearch.evaluation.knn import knn_accuracy, knn_predict
from hpsearch.evaluation.linear_probe import linear_probe_accuracy, linear_probe_predict

__all__ = ["ClassAccuracy", "Evaluator", "FINAL_METRIC_KEYS", "FinalMetric", "class_accuracy", "extract_features",
           "finetune", "finetune_predict", "knn_accuracy", "knn_predict", "linear_probe_accuracy",
           "linear_probe_predict"]
