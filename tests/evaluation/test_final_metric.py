"""The configurable final metric (linear probe, kNN, fine-tuning) on real digits, its per-class
accuracies, and how a study file chooses it."""

import pytest
import torch

import hpsearch
from hpsearch.config.schema import LinearProbeConfig, ModelConfig
from hpsearch.data import load_splits
from hpsearch.evaluation import Evaluator, class_accuracy, extract_features, finetune
from hpsearch.evaluation.finetune import backbone_blocks, trainable_parts
from hpsearch.evaluation.linear_probe import linear_probe_predict
from hpsearch.study.studyfile import StudyFileError, load_study
from hpsearch.training.backbones import build_backbone
from hpsearch.training.pretrain import Pretraining
from tests.helpers import tiny_study

CHANCE = 0.1  # ten digit classes


def with_evaluation(cfg, **changes):
    """A copy of `cfg` with `evaluation` fields changed, validated by the schema."""
    evaluation = {**cfg.evaluation.model_dump(), **changes}
    return cfg.model_validate({**cfg.model_dump(), "evaluation": evaluation})


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A small CNN pretrained for 2 epochs of SimCLR on 12 px digits (a few seconds on one core)."""
    cfg, _ = load_study(tiny_study(tmp_path_factory.mktemp("final") / "runs"))
    trained = Pretraining(cfg, load_splits(cfg.data), torch.device("cpu"), seed=7)
    for _ in range(cfg.training.epochs):
        trained.train_epoch()
    return trained


def evaluate(session, **changes):
    """The final metric of the trained session's backbone under changed `evaluation` settings."""
    evaluator = Evaluator.of(session)
    evaluator.cfg = with_evaluation(session.cfg, **changes)
    return evaluator.final_metric(session.method.backbone)


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("metric, key", [("linear_probe", "linear_probe_accuracy"), ("knn", "knn_final_accuracy"),
                                         ("finetune", "finetune_accuracy")])
def test_each_final_metric_is_an_accuracy_above_chance(session, metric, key):
    final = evaluate(session, final_metric=metric)
    assert CHANCE + 0.2 < final.accuracy <= 1.0
    metrics = final.metrics()
    assert metrics[key] == final.accuracy
    assert {f"class_accuracy/{c}" for c in range(10)} | {key, "worst_class_accuracy"} == set(metrics)


def test_linear_probe_agrees_with_scikit_learns_logistic_regression(session):
    # The reference: scikit-learn's multinomial logistic regression (lbfgs, run to convergence) on
    # the same frozen features, standardised with the probe split's statistics as ours are. Adam's
    # weight decay wd on the mean loss is sklearn's C = 1 / (wd * n). Measured here: 97% of the
    # validation predictions agree with the default 300 Adam steps (92% after only 50); a probe that
    # skipped the standardisation, trained on shuffled labels or ran a few steps falls far below.
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    probe = LinearProbeConfig()  # the defaults a study runs with (tiny_study shortens them)
    splits, backbone = session.splits, session.method.backbone
    images, labels = splits.split("val")
    train_x = extract_features(backbone, splits.probe_images, splits.mean, splits.std)
    held_out_x = extract_features(backbone, images, splits.mean, splits.std)
    ours = linear_probe_predict(train_x, splits.probe_labels, held_out_x, splits.num_classes,
                                probe.steps, probe.lr, probe.weight_decay)
    scaler = StandardScaler().fit(train_x.numpy())
    reference = LogisticRegression(C=1 / (probe.weight_decay * len(train_x)), max_iter=10_000).fit(
        scaler.transform(train_x.numpy()), splits.probe_labels.numpy()).predict(scaler.transform(held_out_x.numpy()))
    assert (ours.numpy() == reference).mean() >= 0.9  # the same classifier, up to optimisation
    reference_accuracy = (reference == labels.numpy()).mean()
    # The final metric a trial reports is that probe's accuracy, and the random-init baseline's
    # linear_probe() is the same measurement.
    final = evaluate(session, final_metric="linear_probe", linear_probe=probe.model_dump())
    assert final.accuracy == pytest.approx((ours == labels).float().mean().item(), abs=1e-6)
    assert abs(final.accuracy - reference_accuracy) <= 0.03
    evaluator = Evaluator.of(session)
    evaluator.cfg = with_evaluation(session.cfg, linear_probe=probe.model_dump())
    assert evaluator.linear_probe(backbone) == pytest.approx(final.accuracy, abs=1e-6)


def test_linear_probe_on_a_separable_case_whatever_the_feature_scale():
    # Three well-separated clusters: any logistic regression classifies held-out points perfectly,
    # and standardisation makes a feature's unit (x1000, +1e4) irrelevant.
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    labels = torch.arange(3).repeat_interleave(40)
    points = centres[labels] + 0.5 * torch.randn(len(labels), 4, generator=generator)
    points[:, 1] = points[:, 1] * 1000 + 1e4
    train, test = torch.arange(len(labels)) % 4 != 0, torch.arange(len(labels)) % 4 == 0
    probe = LinearProbeConfig()
    predicted = linear_probe_predict(points[train], labels[train], points[test], 3, probe.steps, probe.lr,
                                     probe.weight_decay)
    assert torch.equal(predicted, labels[test])


def test_per_class_accuracies_average_to_the_overall_accuracy_and_the_worst_is_the_min(session):
    final = evaluate(session, final_metric="knn")
    scores = final.scores
    assert set(scores.per_class) == set(range(10))
    assert sum(scores.support.values()) == len(session.splits.val_labels)
    weighted = sum(scores.per_class[c] * scores.support[c] for c in scores.per_class) / sum(scores.support.values())
    assert weighted == pytest.approx(scores.accuracy, abs=1e-12)
    assert scores.worst_accuracy == min(scores.per_class.values())
    assert scores.per_class[scores.worst_class] == scores.worst_accuracy
    assert final.metrics()["worst_class_accuracy"] == scores.worst_accuracy


def test_class_accuracy_on_known_predictions():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 3, 3])  # class 2 absent
    predicted = torch.tensor([0, 0, 0, 1, 1, 1, 0, 0])
    scores = class_accuracy(predicted, labels, num_classes=4)
    assert scores.accuracy == 5 / 8
    assert scores.per_class == {0: 0.75, 1: 1.0, 3: 0.0}
    assert scores.support == {0: 4, 1: 2, 3: 2}
    assert (scores.worst_class, scores.worst_accuracy) == (3, 0.0)


def test_finetuning_never_changes_the_sessions_model(session):
    before = weights(session.method)
    was_training = session.method.training
    evaluate(session, final_metric="finetune", finetune={"blocks": None, "epochs": 3})
    assert same(before, weights(session.method))  # weights and BatchNorm statistics
    assert session.method.training == was_training


def finetune_session(session, blocks, seed=7, epochs=3):
    splits, tune = session.splits, session.cfg.evaluation.finetune
    return finetune(session.method.backbone, splits.probe_images, splits.probe_labels, splits.mean, splits.std,
                    splits.num_classes, blocks=blocks, epochs=epochs, batch_size=tune.batch_size, lr=tune.lr,
                    weight_decay=tune.weight_decay, flip_p=0.5, seed=seed)


def test_finetuning_the_last_blocks_leaves_the_first_ones_unchanged(session):
    original_blocks, _ = backbone_blocks(session.method.backbone)
    tuned = finetune_session(session, blocks=1)
    tuned_blocks, _ = backbone_blocks(tuned.backbone)
    assert len(tuned_blocks) == 4
    for original, copy in zip(original_blocks[:3], tuned_blocks[:3]):
        assert same(weights(original), weights(copy))  # weights and BatchNorm statistics
    assert not same(weights(original_blocks[3]), weights(tuned_blocks[3]))
    whole = finetune_session(session, blocks=None)
    assert not same(weights(original_blocks[0]), weights(backbone_blocks(whole.backbone)[0][0]))


def test_finetuning_is_deterministic_for_the_seed(session):
    runs = [finetune_session(session, blocks=2, seed=seed) for seed in (3, 3, 4)]
    assert same(weights(runs[0]), weights(runs[1]))
    assert not same(weights(runs[0]), weights(runs[2]))


def parameter_ids(parts):
    return [id(p) for part in parts for p in part.parameters()]


@pytest.mark.parametrize("backbone, n_blocks, tail, stem", [("small_cnn", 4, 0, False), ("resnet18", 8, 0, True),
                                                           ("resnet50", 16, 0, True), ("vit_tiny", 12, 1, True)])
def test_blocks_per_backbone_and_out_of_range_blocks(backbone, n_blocks, tail, stem):
    model, _ = build_backbone(ModelConfig(backbone=backbone, width=4), 1, 16)
    blocks, after = backbone_blocks(model)
    assert (len(blocks), len(after)) == (n_blocks, tail)
    assert trainable_parts(model, None) == [model]
    assert trainable_parts(model, 0) == []
    assert parameter_ids(trainable_parts(model, 2)) == parameter_ids([*blocks[-2:], *after])
    all_blocks = set(parameter_ids(trainable_parts(model, n_blocks)))
    assert (all_blocks != set(parameter_ids([model]))) == stem  # with all blocks, a stem still stays frozen
    with pytest.raises(ValueError, match=rf"^evaluation\.finetune\.blocks: expected 0 to {n_blocks} .*{backbone}"):
        trainable_parts(model, n_blocks + 1, name=backbone)


def test_out_of_range_blocks_fails_the_final_metric_naming_the_field(session):
    with pytest.raises(ValueError, match=r"evaluation\.finetune\.blocks: expected 0 to 4 .*got 5"):
        evaluate(session, final_metric="finetune", finetune={"blocks": 5})


@pytest.mark.parametrize("body, expected", [
    ("name: x\nevaluation:\n  final_metric: svm\n",
     ["bad.yaml:3", "evaluation.final_metric", "'linear_probe', 'knn' or 'finetune'", "'svm'"]),
    ("name: x\nevaluation:\n  finetune: {blocks: -1}\n",
     ["bad.yaml:3", "evaluation.finetune.blocks", "greater than or equal to 0"]),
    ("name: x\nevaluation:\n  finetune: {block: 2}\n", ["evaluation.finetune.block", "unknown key", "blocks"]),
])
def test_study_file_rejects_bad_final_metric_settings_with_one_line(tmp_path, body, expected):
    (tmp_path / "bad.yaml").write_text(body)
    with pytest.raises(StudyFileError) as error:
        load_study(tmp_path / "bad.yaml")
    message = str(error.value)
    assert len(message.splitlines()) == 1
    for fragment in expected:
        assert fragment in message


def test_defaults_keep_the_linear_probe():
    cfg, _ = load_study({"name": "x"})
    assert cfg.evaluation.final_metric == "linear_probe"
    assert cfg.evaluation.finetune.blocks is None


def test_a_trial_logs_the_chosen_final_metric_per_class_and_its_worst_class(tmp_path, mlflow_client):
    cfg = tiny_study(tmp_path / "runs", n_trials=1, **{"training.epochs": 1, "evaluation.final_metric": "knn"})
    trial = hpsearch.run_study(cfg).trials[0]
    metrics = mlflow_client(tmp_path / "runs").get_run(trial.user_attrs["mlflow_run_id"]).data.metrics
    assert metrics["knn_final_accuracy"] == pytest.approx(trial.value)
    assert "linear_probe_accuracy" not in metrics
    per_class = {int(k.split("/")[1]): v for k, v in metrics.items() if k.startswith("class_accuracy/")}
    assert set(per_class) == set(range(10))
    worst = trial.user_attrs["worst_class"]
    assert worst["accuracy"] == pytest.approx(min(per_class.values()))
    assert per_class[worst["class"]] == pytest.approx(worst["accuracy"])
    assert metrics["worst_class_accuracy"] == pytest.approx(worst["accuracy"])
