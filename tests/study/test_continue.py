"""Continuing studies: `hpsearch resume` without the YAML, refusing a changed search, storage errors."""

import optuna
import pytest
import yaml

from tests.helpers import run_cli, tiny_study


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    home = tmp_path_factory.mktemp("continue")
    cfg = tiny_study(home / "runs", n_trials=1)
    del cfg["workdir"]
    (home / "study.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = run_cli("run", "study.yaml", "--workdir", "runs", cwd=home)
    assert result.returncode == 0, result.stderr
    return home


def trials(home):
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{home / 'runs' / 'optuna.db'}").trials


def test_changed_search_is_refused_with_a_diff_unless_forced(existing):
    changed = yaml.safe_load((existing / "study.yaml").read_text())
    changed["search_space"]["training.optimizer.lr"]["high"] = 0.9
    (existing / "changed.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    refused = run_cli("run", "changed.yaml", "--workdir", "runs", "--n-trials", "2", cwd=existing)
    assert refused.returncode == 2
    assert "exists with a different search" in refused.stderr and "--force" in refused.stderr
    # A readable diff: each changed line names its field.
    assert "-search_space.training.optimizer.lr.high: 0.5" in refused.stderr
    assert "+search_space.training.optimizer.lr.high: 0.9" in refused.stderr
    assert len(trials(existing)) == 1  # nothing ran

    budget_only = run_cli("run", "study.yaml", "--workdir", "runs", "--n-trials", "2", cwd=existing)
    assert budget_only.returncode == 0, budget_only.stderr  # n_trials is not part of the search
    forced = run_cli("run", "changed.yaml", "--workdir", "runs", "--n-trials", "3", "--force", cwd=existing)
    assert forced.returncode == 0, forced.stderr
    assert len(trials(existing)) == 3


def test_resume_needs_only_the_study_name(existing):
    (existing / "study.yaml").rename(existing / "elsewhere.yaml")  # the YAML is gone
    result = run_cli("resume", "tiny", "--workdir", "runs", "--n-trials", "4", cwd=existing)
    assert result.returncode == 0, result.stderr
    assert len(trials(existing)) == 4


def test_resume_of_an_unknown_study_lists_the_known_ones(existing):
    result = run_cli("resume", "nope", "--workdir", "runs", cwd=existing)
    assert result.returncode == 2
    assert "no study named 'nope'" in result.stderr and "tiny" in result.stderr


def test_unreachable_storage_is_named_without_its_password(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(tiny_study(tmp_path / "runs")))
    result = run_cli("run", "s.yaml", "--storage", "postgresql://alice:s3cret@127.0.0.1:1/db", cwd=tmp_path)
    assert result.returncode == 2
    assert "postgresql://alice:***@127.0.0.1:1/db" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_field_added_by_a_newer_hpsearch_does_not_block_an_older_study(tmp_path):
    # A study stored before `evaluation.final_metric` and `evaluation.finetune` existed.
    from hpsearch.config.schema import StudyConfig
    from hpsearch.config.study_attrs import keep_study_config, study_config
    from hpsearch.study.stored_config import ConfigChanged, check_unchanged, store_config

    cfg = StudyConfig.model_validate(tiny_study(tmp_path))
    study = optuna.create_study()
    store_config(study, cfg)
    older = study_config(study)
    older["evaluation"].pop("final_metric")
    older["evaluation"].pop("finetune")
    keep_study_config(study, older)
    check_unchanged(study, cfg, force=False)  # the new fields at their defaults: no change
    with pytest.raises(ConfigChanged, match=r"\+evaluation.final_metric: 'knn'"):
        check_unchanged(study, cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"final_metric": "knn"})}),
                        force=False)


def test_how_data_is_read_is_not_part_of_the_search(tmp_path):
    from hpsearch.config.schema import StudyConfig
    from hpsearch.study.stored_config import check_unchanged, store_config

    cfg = StudyConfig.model_validate(tiny_study(tmp_path))
    study = optuna.create_study()
    store_config(study, cfg)
    data = cfg.data.model_copy(update={"stream": "never", "workers": 0, "memory_limit_gb": 1.0, "cache_dir": "elsewhere"})
    check_unchanged(study, cfg.model_copy(update={"data": data}), force=False)
