"""Claims: a study user attr set by exactly one of many workers, on any number of machines.

Optuna's `set_user_attr` is last-writer-wins, so two workers that both see an attr missing would
both set it (two parent runs, two test-split measurements). A claim is an atomic compare-and-set on
Optuna's own table instead: the INSERT of a missing attr meets the table's unique (study, key)
constraint when another worker got there first, and the UPDATE of a stale one matches only while
the old value is still there. Both are single SQL statements, atomic on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from sqlalchemy.exc import IntegrityError



def claim(study: optuna.Study, key: str, value: Any, *, replacing: Any = None, system: bool = False) -> Any:
    """Set the study's user attr `key` (a system attr with `system`: bookkeeping that dashboards
    need not show) to `value` if it is missing, or, with `replacing`, if it still holds that value;
    return what the attr holds afterwards: `value` when this call won, the winner's value otherwise."""
    _Attr = models.StudySystemAttributeModel if system else models.StudyUserAttributeModel
    backend = rdb_backend(study)
    session = backend.scoped_session()
    try:
        if replacing is None:
            session.add(_Attr(study_id=study._study_id, key=key, value_json=json.dumps(value)))
        else:
            (session.query(_Attr)
             .filter(_Attr.study_id == study._study_id, _Attr.key == key, _Attr.value_json == json.dumps(replacing))
             .update({_Attr.value_json: json.dumps(value)}, synchronize_session=False))
        session.commit()
    except IntegrityError:  # another worker inserted it first
        session.rollback()
    finally:
        session.close()
    read = backend.get_study_system_attrs if system else backend.get_study_user_attrs
    return read(study._study_id)[key]


def rdb_backend(study: optuna.Study) -> RDBStorage:
    """The RDB storage under Optuna's cache (hpsearch always opens studies on an RDB storage)."""
    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, RDBStorage):
        raise TypeError(f"claims need an RDB storage, not {type(storage).__name__}")
    return storage
