"""Measuring a trial's encoder: the proxies at each evaluation (on the probe split) and the delayed
final metric (trained on the probe split, measured on the validation split for the trial value, or
on the test split to report a chosen configuration)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from hpsearch import augment
from hpsearch.config.schema import StudyConfig
from hpsearch.data import Splits, stratified_pick
from hpsearch.evaluation.accuracy import ClassAccuracy, class_accuracy
from hpsearch.evaluation.features import extract_features
from hpsearch.evaluation.finetune import finetune_predict
from hpsearch.evaluation.knn import knn_accuracy, knn_predict
from hpsearch.evaluation.linear_probe import linear_probe_predict
from hpsearch.evaluation.proxies import alignment, alpha_req, normalised_std, rankme, uniformity
from hpsearch.training.pretrain import Diverged, Pretraining
from objectives import SSLMethod

# evaluation.final_metric -> the MLflow metric of its overall accuracy (the trial's value)
FINAL_METRIC_KEYS = {"linear_probe": "linear_probe_accuracy", "knn": "knn_final_accuracy",
                     "finetune": "finetune_accuracy"}


@dataclass(frozen=True)
class FinalMetric:
    """The delayed metric of a trained backbone: which one, and its overall and per-class accuracy."""

    name: str  # evaluation.final_metric
    scores: ClassAccuracy
    class_names: tuple[str, ...] | None = None  # label index -> name (an ImageFolder's folders)

    def class_name(self, label: int) -> str | int:
        """Class `label`'s name when the data names its classes, else the index itself."""
        return self.class_names[label] if self.class_names else label

    @property
    def accuracy(self) -> float:
        return self.scores.accuracy

    def metrics(self) -> dict[str, float]:
        """For MLflow: the overall accuracy under FINAL_METRIC_KEYS, `worst_class_accuracy` and
        `class_accuracy/<class>` for each class of the split measured (by name when the data names
        its classes, as an ImageFolder does; else by index)."""
        return {FINAL_METRIC_KEYS[self.name]: self.scores.accuracy,
                "worst_class_accuracy": self.scores.worst_accuracy,
                **{f"class_accuracy/{self.class_name(c)}": a for c, a in self.scores.per_class.items()}}


class Evaluator:
    """Evaluates a method's backbone as the study's `evaluation` section says. Never changes the
    model it measures, nor the training's random streams.

    `seed` seeds fine-tuning; `autocast` and `memory_format` are the training's (bf16 and
    channels_last on CUDA), so fine-tuning runs as pretraining did.
    """

    def __init__(self, cfg: StudyConfig, splits: Splits, seed: int, *, autocast: bool = False,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.cfg, self.splits, self.seed = cfg, splits, seed
        self.autocast, self.memory_format = autocast, memory_format
        self._view_subset: Tensor | None = None

    @classmethod
    def of(cls, session: Pretraining) -> "Evaluator":
        """The evaluator of a pretraining session: its config, data, seed and device settings."""
        return cls(session.cfg, session.splits, session.seed, autocast=session.autocast,
                   memory_format=session.memory_format)

    def _features(self, backbone: nn.Module, images: Tensor) -> Tensor:
        # bf16 exactly when training used it (training.precision): fp32 studies measure in fp32.
        return extract_features(backbone, images, self.splits.mean, self.splits.std, autocast=self.autocast)

    def view_subset(self, size: int = 256) -> Tensor:
        """Positions in the probe split of the images the embedding proxies (alignment, uniformity,
        normalised std) are measured on: a stratified subset, drawn once from a fixed seed, so that
        every class counts (a probe split listed class by class would give its first class only)."""
        if self._view_subset is None:
            labels = self.splits.probe_labels.cpu().numpy()
            if size >= len(labels):
                picked = np.arange(len(labels))
            else:
                picked = stratified_pick(labels, size, np.random.default_rng(0))[1]
            self._view_subset = torch.from_numpy(picked).to(self.splits.probe_images.device)
        return self._view_subset

    @torch.no_grad()
    def proxies(self, method: SSLMethod, epoch: int, subset: int = 256) -> dict[str, float]:
        """The kNN proxy plus representation diagnostics, from one pass over the probe split and
        two augmented views of a stratified `subset` of its images (views drawn from a fixed,
        separate generator, so evaluating never changes training). Raises Diverged on non-finite
        features."""
        knn = self.cfg.evaluation.knn
        features = self._features(method.backbone, self.splits.probe_images)
        if not torch.isfinite(features).all():  # a finite loss can hide exploded BatchNorm statistics
            raise Diverged(f"non-finite backbone features at epoch {epoch}")
        images = self.splits.probe_images[self.view_subset(subset)]
        views = augment.random_views(images, self.cfg.augment, self.cfg.data.image_size,
                                     torch.Generator().manual_seed(0), 2)
        was_training = method.training
        method.eval()
        z1, z2 = (method.embed(v) for v in augment.normalise(views, self.splits.mean, self.splits.std,
                                                               self.memory_format))
        method.train(was_training)
        values = {
            "knn_accuracy": knn_accuracy(features, self.splits.probe_labels, knn.k, knn.temperature, self.splits.num_classes),
            "rankme": rankme(features),
            "alpha_req": alpha_req(features),
            "alignment": alignment(z1, z2),
            "uniformity": uniformity(z1),
            "normalised_std": normalised_std(z1),
        }
        return dict(zip(values, torch.stack([v.float() for v in values.values()]).tolist()))  # one host sync

    def linear_probe(self, backbone: nn.Module, split: str = "val") -> float:
        """The linear probe on frozen features, trained on the probe split and measured on `split`
        (the default final metric, and the random-init baseline's)."""
        images, labels = self.splits.split(split)
        return (self._linear_probe_predictions(backbone, images) == labels).float().mean().item()

    def final_metric(self, backbone: nn.Module, split: str = "val") -> FinalMetric:
        """The delayed true metric `evaluation.final_metric`, trained on the probe split and measured
        on `split` (`val`: the trial value; `test`: only to report a chosen configuration), overall
        and per class."""
        name = self.cfg.evaluation.final_metric
        predict = {"linear_probe": self._linear_probe_predictions, "knn": self._knn_predictions,
                   "finetune": self._finetune_predictions}[name]
        images, labels = self.splits.split(split)
        return FinalMetric(name, class_accuracy(predict(backbone, images), labels, self.splits.num_classes),
                           self.splits.class_names)

    def _linear_probe_predictions(self, backbone: nn.Module, images: Tensor) -> Tensor:
        probe = self.cfg.evaluation.linear_probe
        return linear_probe_predict(
            self._features(backbone, self.splits.probe_images), self.splits.probe_labels,
            self._features(backbone, images),
            self.splits.num_classes, probe.steps, probe.lr, probe.weight_decay,
        )

    def _knn_predictions(self, backbone: nn.Module, images: Tensor) -> Tensor:
        """Weighted kNN of each image among the probe split's features (evaluation.knn)."""
        knn = self.cfg.evaluation.knn
        return knn_predict(self._features(backbone, self.splits.probe_images), self.splits.probe_labels,
                           self._features(backbone, images), knn.k, knn.temperature, self.splits.num_classes)

    def _finetune_predictions(self, backbone: nn.Module, images: Tensor) -> Tensor:
        """Fine-tunes a copy of the backbone (evaluation.finetune), seeded with the trial's seed."""
        tune = self.cfg.evaluation.finetune
        return finetune_predict(
            backbone, self.splits.probe_images, self.splits.probe_labels, images,
            self.splits.mean, self.splits.std, self.splits.num_classes, blocks=tune.blocks, epochs=tune.epochs,
            batch_size=tune.batch_size, lr=tune.lr, weight_decay=tune.weight_decay, flip_p=tune.flip_p,
            seed=self.seed, autocast=self.autocast, memory_format=self.memory_format, name=self.cfg.model.backbone,
        )
