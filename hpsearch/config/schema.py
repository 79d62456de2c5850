"""The typed study-file schema. Every default of a study lives here (or in a method's config in
`objectives/`), and nowhere else; unknown keys are errors."""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from hpsearch.config import names
from hpsearch.data import DATASETS
from objectives import METHODS


class FieldError(Exception):
    """A study-file error found across fields; carries the field path it names.

    Not a ValueError on purpose: pydantic would wrap a ValueError raised in a model validator
    and lose the path; this one propagates as is.
    """

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.message = path, message


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def did_you_mean(value: str, known) -> str:
    """' (did you mean 'x'?)' when one known name is close to `value` (a typo, a dash), else ''."""
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _one_of(name: str, value: str, known) -> str:
    if value not in known:
        raise ValueError(f"unknown {name} {value!r}{did_you_mean(value, known)}; "
                         f"expected one of: {', '.join(sorted(known))}")
    return value


class DataConfig(Section):
    """Where the images come from and how they are split (see hpsearch/data/sources.py for the sources)."""

    dataset: str = Field("digits", description="source name, case-insensitive: digits, cifar10, cifar100, stl10, "
                                                "svhn, mnist, fashion_mnist or imagefolder")
    root: str | None = Field(None, description="folder holding the dataset's files, relative to the working "
                                               "directory; required by every source but digits")
    download: bool = Field(False, description="let torchvision download a missing dataset into root")
    cache_dir: str | None = Field(None, description="where decoded uint8 tensors are cached across trials and runs; "
                                                    "null = $HPSEARCH_CACHE, else ~/.cache/hpsearch")
    image_size: int = Field(16, gt=0, description="images are resized to image_size x image_size once, at load")
    eval_size: int | None = Field(None, gt=0, description="test images: a stratified subset of the test split, held out "
                                                          "of everything and read only to report the chosen "
                                                          "configurations (evaluation.test_top_k); null = all of it "
                                                          "(digits, which has no test split, then holds out 400 of "
                                                          "its 1,797)")
    probe_size: int = Field(500, gt=1, description="the label budget: labelled train images the kNN proxy, the linear "
                                                   "probe, fine-tuning and the online probe learn from")
    val_size: int | None = Field(None, gt=0, description="validation images: a stratified subset of the labelled train "
                                                         "images outside the probe split, on which the trial value and "
                                                         "every pruning decision are measured (their labels train "
                                                         "nothing; the images stay in the unlabelled pretraining pool); "
                                                         "null = as many as the test images, at most all train images "
                                                         "outside the probe split")
    pretrain_size: int | None = Field(None, gt=0, description="unlabelled pretraining images; null = all of train "
                                                              "(+ unlabeled), or for digits all but eval")
    split_seed: int = Field(0, description="seed of the stratified splits (fixed across trials)")
    stream: Literal["auto", "always", "never"] = Field(
        "auto", description="imagefolder only: decode the pretraining images from their files batch by batch "
                            "in DataLoader workers instead of holding them decoded in memory; auto = when they "
                            "would exceed memory_limit_gb. The probe and eval images are always decoded into "
                            "memory. Array-backed sources (digits, cifar10, cifar100, stl10, svhn, mnist, "
                            "fashion_mnist) are always held in memory (their files are arrays already), so "
                            "`always` is an error for them")
    memory_limit_gb: float = Field(4.0, gt=0, description="stream: auto streams when the decoded unlabelled "
                                                          "pretraining images, N x 3 x image_size^2 bytes, exceed "
                                                          "this many GB (10^9 bytes)")
    workers: int = Field(2, ge=0, description="when streaming: DataLoader worker processes that decode the "
                                              "pretraining images (augmentation stays on the training device); "
                                              "0 = decode in the training process")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _one_of("dataset", value.lower(), DATASETS)

    @model_validator(mode="after")
    def _fits_the_source(self) -> "DataConfig":
        source = DATASETS[self.dataset]
        if source.needs_root and self.root is None:
            raise FieldError("data.root", f"required for dataset {self.dataset!r}; expected a folder holding "
                                          f"{source.layout('<root>')}")
        if self.download and not source.can_download:
            raise FieldError("data.download", f"dataset {self.dataset!r} cannot be downloaded; expected false")
        if self.stream == "always" and not source.streams:
            raise FieldError("data.stream", f"dataset {self.dataset!r} is always held in memory (its files are "
                                            f"arrays already); expected auto or never")
        if self.eval_size is None and not source.has_test_split:
            self.eval_size = 400  # 22% of digits' 1,797 images (the value before test splits existed)
        return self


def check_patch_size(model: "ModelConfig", image_size: int) -> None:
    """Raise ValueError naming `model.patch_size` unless it divides the image size (ViT backbones)."""
    if image_size % model.patch_size:
        divisors = [d for d in range(1, image_size + 1) if image_size % d == 0]
        raise ValueError(f"model.patch_size: {model.patch_size} does not divide data.image_size ({image_size}); "
                         f"expected one of {divisors}")


class ProjectorConfig(Section):
    hidden_dim: int = Field(512, gt=0)
    output_dim: int = Field(128, gt=0)


class ModelConfig(Section):
    """The backbone and its settings; each backbone reads only its own fields and ignores the others
    (so a study can search over backbones with one fixed `model` section)."""

    backbone: str = Field("small_cnn", description="a registered backbone: small_cnn, resnet18/34/50, vit_tiny, vit_small")
    width: int = Field(16, gt=0, description="small_cnn only: channel width of the first block (ResNet and ViT ignore it)")
    cifar_stem: bool | None = Field(None, description="ResNet only: 3x3 stride-1 conv1 and no max-pool (solo-learn's "
                                                      "CIFAR stem); null = when data.image_size <= 64")
    patch_size: int = Field(4, gt=0, description="ViT only: side of the square patches; must divide data.image_size "
                                                 "(4 gives 64 tokens at 32 px)")
    projector: ProjectorConfig = ProjectorConfig()

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        return _one_of("backbone", value, names.BACKBONES)


# `objective` is one of the registered methods' configs, chosen by its `method` key.
ObjectiveConfig = Annotated[Union[tuple(m.Config for m in METHODS.values())], Field(discriminator="method")]


class OptimizerConfig(Section):
    name: Literal["sgd", "adamw", "lars"] = "sgd"
    lr: float = Field(0.3, gt=0, description="learning rate per 256 images; scaled by batch_size / 256")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD and LARS momentum (ignored by adamw)")
    weight_decay: float = Field(5e-4, ge=0, description="not applied to biases and norm parameters")
    eta: float = Field(0.02, gt=0, description="lars only: trust coefficient of the layer-wise lr (solo-learn's 0.02)")
    clip_lr: bool = Field(True, description="lars only: a layer's adapted lr never exceeds the global lr (LARC clipping)")


class TrainingConfig(Section):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(256, gt=1, description="contrastive losses need at least 2 images")
    warmup_epochs: int = Field(0, ge=0, description="linear lr warm-up, then cosine decay to 0")
    optimizer: OptimizerConfig = OptimizerConfig()
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto = cuda if present")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 autocast on CUDA only; auto = bf16 where the GPU computes it natively (Ampere "
                            "and newer), fp32 elsewhere; losses always in fp32; the CPU always trains in fp32")
    compile: bool = Field(False, description="torch.compile the backbone on CUDA (pays off on long GPU runs); "
                                             "ignored with a warning on the CPU, whose results stay bit-exact")
    devices: int = Field(1, ge=1, description="processes (DDP ranks) that train one trial together: GPUs with NCCL, "
                                              "CPU processes with gloo; the batch is split between them")


class AugmentConfig(Section):
    """Per-sample augmentation: each image of a batch draws its own parameters."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter_p: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0)
    contrast: float = Field(0.4, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.0, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = Field(0.0, ge=0, le=1)

    @field_validator("crop_scale", "crop_ratio", "blur_sigma")
    @classmethod
    def _ordered_positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"expected 0 < low <= high, got {list(value)}")
        return value


class KnnConfig(Section):
    k: int = Field(20, gt=0, description="neighbours that vote, in the kNN proxy and in the kNN final metric")
    temperature: float = Field(0.07, gt=0, description="each neighbour votes exp(cosine similarity / temperature)")


class LinearProbeConfig(Section):
    steps: int = Field(300, gt=0, description="full-batch optimisation steps on frozen features")
    lr: float = Field(0.05, gt=0, description="Adam learning rate of the linear head")
    weight_decay: float = Field(1e-4, ge=0, description="L2 penalty of the linear head")


class FinetuneConfig(Section):
    """Fine-tuning a copy of the backbone with a linear head on the probe split (final_metric: finetune)."""

    blocks: int | None = Field(None, ge=0, description="trainable last blocks of the backbone, with what follows them "
                                                       "(small_cnn: 4 conv blocks; resnet18: 8 residual blocks, "
                                                       "resnet34/50: 16; vit: 12 transformer blocks); 0 = the head "
                                                       "alone; null = the whole network, stem included")
    epochs: int = Field(20, gt=0, description="passes over the probe split (its last partial batch is dropped)")
    batch_size: int = Field(64, gt=1, description="images per step (capped at the probe split's size)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate, decayed to 0 along a cosine")
    weight_decay: float = Field(0.01, ge=0, description="AdamW decoupled weight decay; not applied to biases and "
                                                        "norm parameters")
    flip_p: float = Field(0.0, ge=0, le=1, description="horizontal-flip probability per image, the only augmentation "
                                                       "(0.5 suits natural images; digits are not mirror-symmetric)")


class EvaluationConfig(Section):
    proxy: str = Field("knn", pattern=r"^[A-Za-z_][\w./-]*$",
                       description="the cheap metric reported to the pruner during pretraining: knn (knn_accuracy) "
                                   "for hpsearch's methods; with hpsearch.optimize, any metric your loop passes to "
                                   "trial.report_epoch")
    eval_every: int = Field(1, gt=0, description="epochs between proxy evaluations (the last epoch is always evaluated)")
    final_metric: Literal["linear_probe", "knn", "finetune"] = Field(
        "linear_probe", description="the delayed metric, the trial's value: trained on the probe split, measured on "
                                    "the validation split; linear_probe (frozen features), knn (weighted kNN with "
                                    "knn.k and knn.temperature) or finetune (see finetune)")
    knn: KnnConfig = KnnConfig()
    linear_probe: LinearProbeConfig = LinearProbeConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    @property
    def primary_proxy(self) -> str:
        """The metric name of `proxy`, as MLflow and the proxy history record it."""
        return "knn_accuracy" if self.proxy in ("knn", "knn_accuracy") else self.proxy

    test_top_k: int = Field(1, ge=0, description="when the study ends, the best k trials (by validation value) are "
                                                 "measured on the test split, from their kept checkpoints "
                                                 "(at most recovery.keep_best); 0 = never")


class CollapseRule(Section):
    enabled: bool = True
    threshold: float = Field(0.1, gt=0, description="normalised_std (healthy ~1, collapsed -> 0) below this ...")
    patience: int = Field(2, gt=0, description="... at this many evaluations in a row; skipped for VICReg/Barlow-style methods")


class NoLearningRule(Section):
    enabled: bool = True
    after_epoch: int = Field(5, gt=0, description="from this epoch on, kNN at or below the random-init encoder's stops a trial")


class PlateauRule(Section):
    enabled: bool = False
    patience: int = Field(5, gt=0, description="evaluations without a kNN gain of min_delta")
    min_delta: float = Field(0.002, ge=0)


class HeuristicsConfig(Section):
    """SSL early-stopping rules, applied on top of the pruner (divergence always stops a trial)."""

    collapse: CollapseRule = CollapseRule()
    no_learning: NoLearningRule = NoLearningRule()
    plateau: PlateauRule = PlateauRule()


class PruningConfig(Section):
    name: str = Field("median", description="optuna pruner: median, percentile, hyperband, ... or none")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the pruner")
    warmup_epochs: int = Field(1, ge=0, description="never prune before this many epochs")
    heuristics: HeuristicsConfig = HeuristicsConfig()

    @field_validator("name")
    @classmethod
    def _known_pruner(cls, value: str) -> str:
        # Its args are checked by building it (hpsearch.study.studyfile), which this floor cannot import.
        return _one_of("pruner", value, names.PRUNERS)


class SamplerConfig(Section):
    name: Literal["tpe", "random"] = "tpe"
    n_startup_trials: int = Field(5, ge=0, description="random trials before TPE models the space")


class TrackingConfig(Section):
    uri: str | None = Field(None, description="MLflow tracking URI; null = sqlite:///<workdir>/mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment; null = the study name")
    retry_seconds: float = Field(300, ge=0, description="how long a trial waits for an unreachable MLflow server "
                                                         "(retrying with backoff) before it stops, resumable")


class RecoveryConfig(Section):
    """Checkpoints and crash recovery: a killed worker costs at most the work since its last checkpoint."""

    checkpoint_every: int = Field(1, gt=0, description="epochs between checkpoints of a running trial")
    checkpoint_dir: str | None = Field(None, description="null = <workdir>/checkpoints; a shared path for many machines")
    keep_best: int = Field(3, ge=0, description="finished trials keep their last checkpoint only if among the best k")
    paused_checkpoints_gb: float = Field(2.0, ge=0, description="disk budget of paused trials' checkpoints (a pausing "
                                         "pruner); over it, the least promising paused trials are pruned for good")
    heartbeat_interval: int = Field(30, gt=0, description="seconds between a running trial's heartbeats")
    grace_period: int = Field(120, gt=0, description="seconds without heartbeat before a trial counts as dead")
    max_retries: int = Field(2, ge=0, description="retries of a trial whose worker died or was interrupted")
    storage_retry_seconds: float = Field(120, ge=0, description="how long a call to an unreachable Optuna storage "
                                                                "is retried (with backoff) before the worker stops, resumable")


class ParamSpec(Section):
    """One searched hyperparameter. The key in `search_space` is the dotted path it overrides."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None
    when: dict[str, Any] | None = Field(None, description="sample only when these categorical params have these values")

    @model_validator(mode="after")
    def _consistent(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical parameter takes 'choices', not low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs both 'low' and 'high'")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("'step' cannot be combined with log=true")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int parameter needs integer bounds, got {self.low}..{self.high}")
        return self


class StudyConfig(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Optuna study and MLflow experiment name")
    seed: int = Field(0, description="seeds the sampler and every trial's training")
    n_trials: int = Field(12, gt=0, description="total finished trials the study should have, across restarts")
    workdir: str = Field("hpsearch-runs", description="where storage, MLflow data and artifacts go by default")
    storage: str | None = Field(None, description="Optuna storage URL; null = sqlite:///<workdir>/optuna.db")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = Field(default_factory=lambda: next(iter(METHODS.values())).Config())
    augment: AugmentConfig = AugmentConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    search_space: dict[str, ParamSpec] | None = Field(
        None, description="searched fields by dotted path; null = the method's default search space")
    sampler: SamplerConfig = SamplerConfig()
    pruning: PruningConfig = PruningConfig()
    tracking: TrackingConfig = TrackingConfig()
    recovery: RecoveryConfig = RecoveryConfig()

    @model_validator(mode="after")
    def _evaluates_within_budget(self, info: ValidationInfo) -> "StudyConfig":
        if (info.context or {}).get("own_loop"):
            # hpsearch.optimize: the objective may suggest every parameter itself.
            self.search_space = self.search_space or {}
        elif self.search_space is None:
            method = METHODS[self.objective.method]
            self.search_space = {path: ParamSpec(**spec) for path, spec in method.search_space.items()}
        if not self.search_space and not (info.context or {}).get("own_loop"):
            raise FieldError("search_space", "expected at least one parameter to search "
                             "(omit search_space to use the method's default space)")
        if self.evaluation.eval_every > self.training.epochs:
            raise FieldError(
                "evaluation.eval_every",
                f"expected at most training.epochs ({self.training.epochs}), got {self.evaluation.eval_every}",
            )
        if self.evaluation.test_top_k > self.recovery.keep_best:
            raise FieldError("evaluation.test_top_k", f"expected at most recovery.keep_best ({self.recovery.keep_best}): "
                             f"the test split is measured from kept checkpoints, got {self.evaluation.test_top_k}")
        if self.model.backbone.startswith("vit"):
            try:
                check_patch_size(self.model, self.data.image_size)
            except ValueError as err:
                raise FieldError("model.patch_size", str(err).removeprefix("model.patch_size: ")) from None
        return self
