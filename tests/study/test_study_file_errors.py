"""Every malformed study file stops `hpsearch run` with exit code 2 and one line naming the file,
the field and what was expected, before anything is created."""

import textwrap

import pytest

from hpsearch.study.studyfile import StudyFileError, load_study
from tests.helpers import run_cli

CASES = [
    # (study file body, text the one-line error must contain)
    ("name: x\ntraining:\n  epochs: [1\n", ["bad.yaml:4", "YAML syntax error"]),
    ("name: x\ntraining:\n  epoch: 3\n", ["bad.yaml:3", "training.epoch", "unknown key", "epochs"]),
    ("name: x\ntraining:\n  optimzer: {lr: 0.1}\n",
     ["bad.yaml:3", "training.optimzer", "unknown key (did you mean 'optimizer'?)", "batch_size"]),
    ("name: x\ntraining:\n  epochs: three\n", ["bad.yaml:3", "training.epochs", "integer"]),
    ("name: x\ntraining:\n  batch_size: 0\n", ["training.batch_size", "greater than 1"]),
    ("name: x\nsearch_space:\n  training.optimizer.lr: {type: float, low: 2, high: 1}\n",
     ["bad.yaml:3", "search_space.training.optimizer.lr", "low (2.0) must be <= high (1.0)"]),
    ("name: x\nsearch_space:\n  training.optimizer.lr: {type: float, low: 0, high: 1, log: true}\n",
     ["search_space.training.optimizer.lr", "log range needs low > 0"]),
    ("name: x\nsearch_space:\n  training.lrr: {type: float, low: 0.1, high: 1}\n",
     ["search_space.training.lrr", "not a field"]),
    ("name: x\nobjective:\n  method: foo\n", ["objective.method", "unknown method 'foo'", "simclr"]),
    ("name: x\npruning:\n  name: bar\n", ["pruning.name", "unknown pruner 'bar'", "median"]),
    ("name: x\npruning: {name: median, args: {foo: 1}}\n", ["pruning.args", "'foo'", "n_startup_trials"]),
    ("name: x\ndata:\n  dataset: imagenet\n", ["bad.yaml:3", "data.dataset", "unknown dataset 'imagenet'", "digits"]),
    ("name: x\nmodel:\n  backbone: vgg\n", ["model.backbone", "unknown backbone 'vgg'", "small_cnn"]),
    ("name: x\nevaluation: {eval_every: 20}\ntraining: {epochs: 3}\n", ["evaluation.eval_every", "at most training.epochs"]),
    ("data: {}\n", ["name", "required"]),
    ("name: x\nsearch_space: {}\n", ["bad.yaml:2", "search_space", "at least one parameter"]),
    ("name: x\ntraining:\n  optimizer: {name: adam}\n", ["training.optimizer.name", "'adam'"]),
    ("name: x\ntraining: {epochs: 0}\n", ["training.epochs", "greater than 0"]),
]


@pytest.mark.parametrize("body, expected", CASES, ids=[c[1][-2] if len(c[1]) > 1 else c[1][0] for c in CASES])
def test_malformed_study_file_exits_2_with_one_line_and_creates_nothing(tmp_path, body, expected):
    (tmp_path / "bad.yaml").write_text(body)
    result = run_cli("run", "bad.yaml", "--workdir", "runs", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    for fragment in expected:
        assert fragment in lines[0]
    assert not (tmp_path / "runs").exists()  # no storage, no MLflow database


def test_bad_override_names_the_command_line(tmp_path):
    (tmp_path / "ok.yaml").write_text("name: x\n")
    result = run_cli("run", "ok.yaml", "--workdir", "runs", "--set", "training.epochs=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert "command-line override training.epochs" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_study_file(tmp_path):
    result = run_cli("run", "nowhere.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "nowhere.yaml: cannot read the study file" in result.stderr


def test_split_larger_than_the_dataset_is_bad_input(tmp_path):
    (tmp_path / "big.yaml").write_text(textwrap.dedent("""
        name: x
        data: {eval_size: 1000, probe_size: 900}
    """))
    result = run_cli("run", "big.yaml", "--workdir", "runs", cwd=tmp_path)
    assert result.returncode == 2
    assert "eval_size + probe_size" in result.stderr
    assert not (tmp_path / "runs").exists()


# (study file body, the closest known name, or None when none is close enough to suggest)
DID_YOU_MEAN = [
    ("training:\n  optimzer: {lr: 0.1}\n", "optimizer"),
    ("objective: {method: simclr, temprature: 0.2}\n", "temperature"),
    ("objective:\n  method: simclrr\n", "simclr"),
    ("data:\n  dataset: cifar-10\n", "cifar10"),
    ("model:\n  backbone: resnet19\n", "resnet18"),
    ("pruning:\n  name: medain\n", "median"),
    ("training:\n  optimizer: {name: adam}\n", "adamw"),
    ("model:\n  backbone: vgg\n", None),
    ("training:\n  zzz: 1\n", None),
]


@pytest.mark.parametrize("body, closest", DID_YOU_MEAN, ids=[c[0].split(":")[0] + f"-{c[1]}" for c in DID_YOU_MEAN])
def test_an_unknown_key_or_name_suggests_the_closest_known_one(tmp_path, body, closest):
    (tmp_path / "bad.yaml").write_text("name: x\n" + body)
    with pytest.raises(StudyFileError) as err:
        load_study(tmp_path / "bad.yaml")
    message = str(err.value)
    # The expected names are always listed; a suggestion is added only when one is close (difflib).
    assert "expected" in message
    if closest is None:
        assert "did you mean" not in message
    else:
        assert f"(did you mean {closest!r}?)" in message


def test_an_unknown_search_space_path_suggests_the_closest_field(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nsearch_space:\n  training.optimizer.lrr: {type: float, low: 0.1, high: 1.0}\n")
    with pytest.raises(StudyFileError, match=r"search_space\.training\.optimizer\.lrr: not a field of the study file "
                                             r"\(did you mean 'training\.optimizer\.lr'\?\)"):
        load_study(tmp_path / "bad.yaml")
    (tmp_path / "far.yaml").write_text("name: x\nsearch_space:\n  zzz.qqq: {type: float, low: 0.1, high: 1.0}\n")
    with pytest.raises(StudyFileError) as err:
        load_study(tmp_path / "far.yaml")
    assert "not a field" in str(err.value) and "did you mean" not in str(err.value)  # nothing close: no guess
