"""One study, one definition: what a sweep's trials are, stored in its study when it is created.

A study's runs are only comparable (and the seeds of a configuration only averageable) while every
trial was trained under the same definition: the search space (each param's choices or range, the
derived expressions), the objectives, and every setting that applies to all trials (model, data,
train, quant and lora fields that are not searched: the sweep's resolved trial config minus the
searched fields and the seed). ``build`` makes that record; a new study keeps it as a user attr
(``names.ATTR_DEFINITION``), and a later run under the same ``sweep.study_name`` is refused, before
anything is created, when its definition differs, naming each difference (``check_stored``).
Growing a study is safe and needs no new name: more ``sweep.n_trials``, more ``sweep.seeds``, a
baseline added (baselines are told apart by their own overrides).

The definition also gives each configuration its id: ``basis`` is a digest of everything in it but
the searched values, so ``lora_lab.config_id`` covers the whole trial config but the seed, and two
different trainings never share an id, even in one MLflow experiment shared by several studies.
A study created before definitions were kept gets one stored on its next run (its trials keep their
ids: they were made from the searched values alone).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import optuna

from lora_lab import names, search_space
from lora_lab.config import SweepConfig, TrialConfig
from lora_lab.errors import LoraLabError

VERSION = 1


class DefinitionChangedError(LoraLabError):
    """A sweep reuses a study name with another definition."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _plain(value: Any) -> Any:
    """A value as JSON keeps it (tuples as lists), so a stored definition compares equal to a new one."""
    return json.loads(json.dumps(value, default=str))


def build(sweep: SweepConfig, base: TrialConfig) -> dict[str, Any]:
    """The definition of a sweep whose trials are composed on ``base`` (the sweep's trial config)."""
    trial = dataclasses.asdict(base)
    trial.pop("sweep", None)
    trial.pop("tracking", None)  # where runs are logged, not what trains
    fixed = _flatten(trial)
    for name in [*sweep.params, *sweep.derived, names.SEED_KEY]:
        fixed.pop(name, None)
    space = {
        name: {k: v for k, v in dataclasses.asdict(spec).items() if v is not None}
        for name, spec in sweep.params.items()
    }
    definition = {
        "version": VERSION,
        "params": space,
        "derived": dict(sweep.derived),
        "objectives": [f"{o.metric} ({o.direction})" for o in sweep.objectives],
        "trial": fixed,
    }
    definition = _plain(definition)
    definition["basis"] = basis_of(definition)
    return definition


def basis_of(definition: dict[str, Any]) -> str:
    """The digest of a definition's fixed part (all but the searched values' own choices): what a
    configuration id adds to the searched values."""
    key = {"derived": definition.get("derived"), "trial": definition.get("trial")}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Each setting that differs, as 'name: X in the study, Y now'."""
    out = []
    for section, label in (("params", "sweep.params."), ("derived", "sweep.derived."), ("trial", "")):
        old, new = stored.get(section) or {}, now.get(section) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key, _ABSENT) == new.get(key, _ABSENT):
                continue
            out.append(
                f"{label}{key}: {_shown(old.get(key, _ABSENT))} in the study, {_shown(new.get(key, _ABSENT))} now"
            )
    if stored.get("objectives") != now.get("objectives"):
        out.append(f"sweep.objectives: {stored.get('objectives')} in the study, {now.get('objectives')} now")
    return out


_ABSENT = object()


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    if isinstance(value, dict) and set(value) <= {"type", "choices", "low", "high", "log", "step"}:
        if value.get("type") == "categorical":
            return f"choices {value.get('choices')}"
        text = f"{value.get('type')} [{value.get('low')}, {value.get('high')}]"
        return text + (f" step {value['step']}" if value.get("step") else "") + (" log" if value.get("log") else "")
    return repr(value)


def read_stored(study: optuna.Study) -> dict[str, Any] | None:
    value = study.user_attrs.get(names.ATTR_DEFINITION)
    return value if isinstance(value, dict) else None


def check_stored(sweep: SweepConfig, url: str, now: dict[str, Any]) -> tuple[bool, dict[str, Any] | None]:
    """Compare ``now`` with the definition stored in the sweep's study, reading the storage without
    creating anything. Returns (whether the study exists, its stored definition or None). Raises
    ``DefinitionChangedError`` naming every difference; a study without a stored definition (made
    before they were kept) is refused only for changed choices, which Optuna itself cannot hold."""
    from lora_lab.study import SlotBook, open_for_reading, redact_url

    storage = open_for_reading(url)
    if storage is None:
        return False, None
    try:
        try:
            held = optuna.get_all_study_names(storage)
        except Exception:  # a database without Optuna's tables yet: no study to compare with
            return False, None
        if sweep.study_name not in held:
            return False, None
        study = optuna.load_study(study_name=sweep.study_name, storage=storage)
        stored = read_stored(study)
        if stored is None:
            book = SlotBook(study)
            changed = book.changed_choices(search_space.distributions(sweep))
            found = [f"sweep.params.{p}: choices {before} in the study, {after} now" for p, before, after in changed]
        else:
            found = differences(stored, now)
        if found:
            raise DefinitionChangedError(
                f"sweep.study_name={sweep.study_name!r} names a study in {redact_url(url)} that was defined "
                f"otherwise; this run differs in: {'; '.join(found)}. A study keeps one definition, so that its "
                "runs compare and a configuration's seeds are averaged only with each other. Give the changed "
                "sweep a new sweep.study_name=<name>, or put these settings back; growing the study needs no "
                "new name (more sweep.n_trials, more sweep.seeds). Nothing was created."
            )
        return True, stored
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()
