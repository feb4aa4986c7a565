"""Checks of a sweep's inputs that run before anything is created or trained.

``check_sweep`` runs at the start of a sweep's set-up, before the Optuna study, the MLflow
experiment or the parent run exist, so a bad input ends the command with one paragraph (a
``LoraLabError``, printed by ``lora_lab.cli``) and leaves no trial or run behind, let alone a RUNNING
one. The checks are cheap: local ones first, then at most one connection to the study's database and
one request to the tracking server, each given ``CONNECT_TIMEOUT_S`` and never retried.

Range and choice checks of single fields live in the typed schema (``lora_lab.config``); here are
the checks that need more than one field, the environment, the device or the network.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import optuna
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lora_lab import names, search_space, study
from lora_lab.cli import redact_url
from lora_lab.config import SweepConfig, TrialConfig, to_trial_config
from lora_lab.errors import ConfigError, LoraLabError, UnreachableError
from lora_lab.storage import check_tracking_store
from lora_lab.study import WarmStart

CONNECT_TIMEOUT_S = 5
"""Seconds a database connection or a tracking-server request may take before the sweep is refused."""

HEARTBEAT_ENV = "LORA_LAB_HEARTBEAT_S"
HEARTBEAT_DEFAULT_S = 10

STORAGE_FORMS = (
    "sqlite:///<path to a file in an existing directory>, postgresql://<user>@<host>[:<port>]/<database>, "
    "mysql://<user>@<host>[:<port>]/<database> (a SQLAlchemy driver may follow the dialect, e.g. "
    "postgresql+psycopg://), a file path ending in .journal, or null for "
    "sweeps/<study_name>/optuna.journal"
)
"""The forms ``sweep.storage`` accepts, as the error message lists them."""
WARM_START_STORAGE_FORMS = STORAGE_FORMS.replace("<study_name>", "<sweep.warm_start.study>")
"""The same forms for ``sweep.warm_start.storage``, whose null means the earlier study's own folder."""


def check_sweep(cfg: DictConfig, sweep: SweepConfig, baselines: list[TrialConfig] = ()) -> WarmStart | None:
    """Refuse a sweep whose inputs cannot give a single usable trial, before anything is created:
    the search space, the base trial config with every searched choice, both ends of every range and
    the derived expressions on the space's corners, the objectives, the device's precision support,
    ``$LORA_LAB_HEARTBEAT_S``, the study storage, the study to warm-start from, the tracking server,
    and (for those trial configs and the ``baselines``' composed configs) the target modules against
    the model's module names and the data, loaded once. Returns what the warm start takes (None
    without one), so that the earlier study is read once."""
    check_search_space(sweep)
    configs = [*trial_configs(cfg, sweep), *range_configs(cfg, sweep), *derived_configs(cfg, sweep)]
    for trial in configs:
        check_precision(trial)
    check_objectives(sweep)
    heartbeat_interval_s()
    check_storage(sweep.storage)
    warm = check_warm_start(sweep)
    check_tracking_uri()
    check_models_and_data([*configs, *baselines])
    return warm


# -- what a trial is made of ---------------------------------------------------------------


def check_search_space(sweep: SweepConfig) -> None:
    """A sweep has to search something: with no params every trial trains the same configuration."""
    if not sweep.params:
        raise ConfigError(
            "sweep.params",
            {},
            "at least one searched value in the preset, e.g. "
            "`lora.r: {type: categorical, choices: [4, 8, 16]}` (with nothing to search, "
            "every trial would train the same configuration; one run is "
            "`python -m lora_lab.train`)",
        )


def trial_configs(cfg: DictConfig, sweep: SweepConfig) -> list[TrialConfig]:
    """The sweep's base trial config, and one per choice of each categorical param that sets a
    config field, each checked by the typed schema (so ``train.max_steps=0`` or a searched
    ``lora.init_lora_weights: [pissa]`` on a 4-bit base is refused before any trial trains)."""
    configs = [to_trial_config(cfg)]
    for name, spec in sweep.params.items():
        if spec.type != "categorical" or not search_space.is_config_field(name):
            continue
        for choice in spec.choices or []:
            node = copy.deepcopy(cfg)
            try:
                OmegaConf.update(node, name, choice, merge=False)
                configs.append(to_trial_config(node))
            except (LoraLabError, OmegaConfBaseException) as exc:
                detail = str(exc).splitlines()[0]
                raise LoraLabError(
                    f"sweep.params.{name}: the choice {choice!r} gives an invalid trial config. {detail}"
                ) from None
    return configs


def _with_values(cfg: DictConfig, values: dict) -> TrialConfig:
    """The trial config of ``cfg`` with these config-field values set (as a trial's overrides would)."""
    node = copy.deepcopy(cfg)
    for name, value in values.items():
        if not search_space.is_config_field(name):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # as search_space.to_overrides writes it: '16' suits int and float fields
        OmegaConf.update(node, name, value, merge=False)
    return to_trial_config(node)


def range_configs(cfg: DictConfig, sweep: SweepConfig) -> list[TrialConfig]:
    """The trial config at both ends of every int/float range that sets a config field, each checked
    by the typed schema (a dropout range [0.9, 1.5] or a learning rate range [-1, 0] is refused
    before any trial trains)."""
    configs = []
    for name, spec in sweep.params.items():
        if spec.type == "categorical" or not search_space.is_config_field(name):
            continue
        for end, value in (("low", spec.low), ("high", spec.high)):
            value = int(value) if spec.type == "int" else float(value)
            try:
                configs.append(_with_values(cfg, {name: value}))
            except (LoraLabError, OmegaConfBaseException) as exc:
                raise LoraLabError(
                    f"sweep.params.{name}: its {end} end {value!r} gives an invalid trial config. "
                    f"{str(exc).splitlines()[0]}"
                ) from None
    return configs


MAX_CORNERS = 512
"""Derived expressions are evaluated on every corner of the space while there are at most this many
(each categorical param's choices, each range's two ends); beyond, on each param's extremes."""


def _corners(sweep: SweepConfig) -> list[dict]:
    """The points of the space a derived expression is checked on: each categorical param's choices
    and each range's two ends, all combinations (each param's first and last value alone when there
    would be more than MAX_CORNERS)."""
    axes: dict[str, list] = {}
    for name, spec in sweep.params.items():
        if spec.type == "categorical":
            axes[name] = list(spec.choices or [])
        else:
            cast = int if spec.type == "int" else float
            axes[name] = [cast(spec.low), cast(spec.high)]
    if math.prod(len(v) for v in axes.values()) > MAX_CORNERS:
        axes = {name: [values[0], values[-1]] if len(values) > 1 else values for name, values in axes.items()}
    return [dict(zip(axes, point, strict=True)) for point in itertools.product(*axes.values())]


def derived_configs(cfg: DictConfig, sweep: SweepConfig) -> list[TrialConfig]:
    """Every derived expression evaluated on the corners of the space (unknown names, division by
    zero, a result outside its field's limits are refused, naming the expression), and the trial
    config of each corner, checked by the schema."""
    if not sweep.derived:
        return []
    configs = []
    for corner in _corners(sweep):
        values = dict(corner)
        for target, expression in sweep.derived.items():
            where = f"sweep.derived.{target}"
            try:
                values[target] = search_space.evaluate_expression(expression, values)
            except ConfigError as exc:
                raise ConfigError(where, expression, exc.allowed) from None
            except (ArithmeticError, ValueError, TypeError) as exc:
                raise ConfigError(
                    where,
                    expression,
                    f"an expression defined everywhere in the search space; at {corner} it fails "
                    f"({type(exc).__name__}: {exc})",
                ) from None
            if search_space.is_config_field(target):
                try:
                    configs.append(_with_values(cfg, {**corner, **{target: values[target]}}))
                except (LoraLabError, OmegaConfBaseException) as exc:
                    raise ConfigError(
                        where,
                        expression,
                        f"an expression whose value suits {target} everywhere in the search space; at {corner} "
                        f"it gives {values[target]!r}: {str(exc).splitlines()[0]}",
                    ) from None
    return configs


def check_models_and_data(configs: list[TrialConfig]) -> None:
    """Before any trial: each trial's target modules exist in its model (resolved on the model built
    from its config on the meta device, ``model.targets.model_skeleton``: no weights loaded; a Hub
    model whose config is neither cached nor reachable is refused here) and its data loads (each
    distinct data config once)."""
    from lora_lab.data import load_records
    from lora_lab.model import targets

    skeletons: dict[str, object] = {}
    checked: set[str] = set()
    data_seen: set[str] = set()
    for trial in configs:
        if trial.lora.method == "lora":
            key = repr((trial.model, trial.lora.targets, trial.lora.target_modules))
            if key not in checked:
                checked.add(key)
                model_key = repr(trial.model)
                if model_key not in skeletons:
                    skeletons[model_key] = targets.model_skeleton(trial.model)
                targets.for_trial(skeletons[model_key], trial.lora, trial.model)
        data_key = repr(trial.data)
        if data_key not in data_seen:
            data_seen.add(data_key)
            load_records(trial.data)


def trial_metric_names() -> list[str]:
    """Every metric a trial's result offers as a sweep objective: the names ``TrialResult.metrics()``
    returns, plus the adapter's mean effective rank that the sweep adds, plus the task A and
    forgetting metrics that trials on a family's task B (data.task=cipher_swap) log."""
    from lora_lab.train import TrialResult  # heavy (transformers): only when a sweep is checked

    required = {
        f.name: 0
        for f in dataclasses.fields(TrialResult)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    return sorted(
        {*TrialResult(**required).metrics(), names.EFFECTIVE_RANK_METRIC, *names.TASK_A_METRICS, *names.FORGET_METRICS}
    )


def check_objectives(sweep: SweepConfig) -> None:
    """Each objective names a metric that trials log (else the sweep would find out only after the
    first trial trained in full)."""
    available = trial_metric_names()
    for objective in sweep.objectives:
        if objective.metric not in available:
            raise ConfigError("sweep.objectives.metric", objective.metric, "one of " + ", ".join(available))


# -- the device ------------------------------------------------------------------------------


def bf16_support() -> tuple[bool, str]:
    """Whether training in bf16 works on the trial device, and the device's name. On CUDA this is
    transformers' own test (what ``TrainingArguments(bf16=True)`` requires: compute capability 8.0+);
    on a CPU torch computes bf16 everywhere (natively with AVX512-BF16/AMX, emulated otherwise)."""
    import torch

    from lora_lab.model.base import device

    if device().type == "cuda":
        from transformers.utils import is_torch_bf16_gpu_available

        return is_torch_bf16_gpu_available(), torch.cuda.get_device_name()
    return True, "CPU"


def check_precision(trial: TrialConfig, support: tuple[bool, str] | None = None) -> None:
    """Refuse bf16 (training precision, weights or 4-bit compute dtype) on a device without it;
    ``support`` is ``bf16_support()`` unless given."""
    asked = [
        (field, value)
        for field, value, bf16 in (
            ("train.precision", trial.train.precision, "bf16"),
            ("model.dtype", trial.model.dtype, "bfloat16"),
            ("quant.compute_dtype", trial.quant.compute_dtype, "bfloat16"),
        )
        if value == bf16
    ]
    if not asked:
        return
    supported, device_name = support or bf16_support()
    if supported:
        return
    field, value = asked[0]
    others = {
        "train.precision": "'auto', 'fp32' or 'fp16'",
        "model.dtype": "'auto', 'float32' or 'float16'",
        "quant.compute_dtype": "'auto', 'float32' or 'float16'",
    }[field]
    raise ConfigError(
        field,
        value,
        f"{others} on this device ({device_name} has no bf16 support; bf16 needs "
        f"an NVIDIA GPU of compute capability 8.0 or newer, such as A100, L4 or H100); 'auto' "
        f"picks bf16 wherever it is supported",
    )


# -- the environment and the services a sweep talks to ----------------------------------------


def heartbeat_interval_s() -> int:
    """How often a running trial tells a database storage it is alive: ``$LORA_LAB_HEARTBEAT_S``
    (default 10), a whole number of seconds >= 1."""
    raw = os.environ.get(HEARTBEAT_ENV, str(HEARTBEAT_DEFAULT_S))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(
            HEARTBEAT_ENV,
            raw,
            f"a whole number of seconds >= 1 (default {HEARTBEAT_DEFAULT_S}): "
            "how often a running trial tells a database storage it is alive; a trial silent "
            "for three intervals is failed and its configuration queued again",
        )
    return value


def check_storage(
    url: str | None,
    timeout_s: float = CONNECT_TIMEOUT_S,
    field: str = "sweep.storage",
    forms: str = STORAGE_FORMS,
) -> None:
    """``sweep.storage`` (or another storage ``field``) has one of the accepted ``forms``; a database
    server answers within ``timeout_s``."""
    if url is None or url.endswith(".journal"):
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(field, url, forms) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise ConfigError(field, url, forms)
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(
                field,
                url,
                forms + " (an in-memory sqlite study is lost when the process ends and no other worker can see it)",
            )
        folder = Path(parsed.database).expanduser().resolve().parent
        if not folder.is_dir():
            raise ConfigError(field, url, forms + f" (the directory {folder} does not exist)")
        return
    _connect(url, parsed, timeout_s, field)


def _connect(url: str, parsed, timeout_s: float, field: str = "sweep.storage") -> None:
    """One connection to the study's database server, with ``timeout_s`` and no retries."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    shown = parsed.render_as_string(hide_password=True)
    hint = (
        f"Start the database server or correct host, port, user and database in {field}; "
        "workers on one machine can share a journal file instead (sweep.storage=null). "
        "Nothing was created and no trial started."
    )
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": max(int(timeout_s), 1)})
    except Exception as exc:  # a driver that is not installed, an unknown option
        raise UnreachableError(field, shown, _first_line(exc), hint) from None
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise UnreachableError(
            field, shown, f"no connection (timeout {timeout_s:g} s): {_first_line(exc)}", hint
        ) from None
    finally:
        engine.dispose()


# -- the earlier study a sweep warm-starts from ---------------------------------------------------


def check_warm_start(sweep: SweepConfig) -> WarmStart | None:
    """Read what ``sweep.warm_start`` takes from the earlier study, refusing a storage of no accepted
    form or that does not answer, a study it does not hold (naming those it holds), one with no
    COMPLETE trial, the sweep's own study, and one none of whose configurations fits this search
    space (naming the params that differ). Nothing is created in the earlier study's storage.
    ``top_k < 1`` and a grid are refused by the schema (``lora_lab.config``)."""
    warm = sweep.warm_start
    if warm.study is None:
        return None
    url = study.warm_start_storage_url(sweep)
    check_storage(url, field="sweep.warm_start.storage", forms=WARM_START_STORAGE_FORMS)
    shown = redact_url(url)
    if warm.study == sweep.study_name and url == study.storage_url(sweep):
        raise ConfigError(
            "sweep.warm_start.study",
            warm.study,
            f"an earlier study, not this sweep's own (sweep.study_name={sweep.study_name!r} in {shown})",
        )
    storage = study.open_for_reading(url)
    where = f"sweep.warm_start.storage={shown}" + ("" if warm.storage else " (its default)")
    if storage is None:
        kept = ""
        if not warm.storage:  # each study has its own default file: the ones there are the names to offer
            found = sorted(
                {p.parent.name for name in ("optuna.journal", "optuna.db") for p in Path("sweeps").glob(f"*/{name}")}
            )
            kept = f" (the studies kept under sweeps/ by default: {', '.join(found) if found else 'none'})"
        raise ConfigError(
            "sweep.warm_start.study",
            warm.study,
            f"the name of a study in {where}, which holds none: there is no such file{kept}. Point "
            "sweep.warm_start.storage at the storage the earlier study was run with (its sweep.storage)",
        )
    try:
        try:
            held = sorted(optuna.get_all_study_names(storage))
        except Exception as exc:  # a database without Optuna's tables, a journal of another format
            raise ConfigError(
                "sweep.warm_start.storage", shown, f"a storage holding Optuna studies ({_first_line(exc)})"
            ) from None
        if warm.study not in held:
            holds = "holds the studies " + ", ".join(held) if held else "holds no study"
            raise ConfigError("sweep.warm_start.study", warm.study, f"the name of a study in {where}, which {holds}")
        source = optuna.load_study(study_name=warm.study, storage=storage)
        ranked = study.rank_configurations(source)
        if not ranked:
            states = sorted(t.state.name for t in source.get_trials(deepcopy=False))
            counts = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)) or "no trial at all"
            raise ConfigError(
                "sweep.warm_start.study",
                warm.study,
                f"a study with at least one COMPLETE trial to start from; '{warm.study}' in {shown} has "
                f"none ({counts}): run it first, or warm-start from another study",
            )
        distributions = search_space.distributions(sweep)
        configs, skipped = study.select_warm_start(ranked, distributions, warm.top_k)
        if not configs:
            raise ConfigError(
                "sweep.warm_start.study",
                warm.study,
                f"a study with a configuration inside this search space; none of the {len(ranked)} "
                f"configurations of '{warm.study}' fits: {_misfit(ranked, distributions)}",
            )
        return study.WarmStart(
            study=warm.study,
            storage=shown,
            top_k=warm.top_k,
            space={name: repr(dist) for name, dist in distributions.items()},
            metric=study.objective_name(source),
            direction=source.directions[0].name.lower(),
            configs=configs,
            skipped=skipped,
        )
    finally:
        engine = getattr(storage, "engine", None)
        if engine is not None:
            engine.dispose()  # a database source is read once: close its connections now


def _misfit(ranked: list[tuple[dict, float, list[int]]], distributions: dict) -> str:
    """Which params differ between an earlier study's configurations and this search space: the
    names, or for each param the values that lie outside it."""
    theirs = sorted({name for params, _, _ in ranked for name in params})
    ours = list(distributions)
    if any(set(params) != set(ours) for params, _, _ in ranked):
        only_there = [n for n in theirs if n not in ours]
        only_here = [n for n in ours if n not in theirs]
        parts = [f"searched only there: {', '.join(only_there)}" if only_there else ""]
        parts.append(f"searched only here: {', '.join(only_here)}" if only_here else "")
        detail = "; ".join(p for p in parts if p) or "some of its configurations lack some of them"
        return f"it searched {', '.join(theirs)}, this sweep searches {', '.join(ours)} ({detail})"
    outside: dict[str, list] = {}
    for params, _, _ in ranked:
        for name, dist in distributions.items():
            if study.fit_params({name: params[name]}, {name: dist})[0] is None:
                values = outside.setdefault(name, [])
                if params[name] not in values:
                    values.append(params[name])
    return "; ".join(
        f"{name} = {', '.join(repr(v) for v in values[:6])}{', ...' if len(values) > 6 else ''} "
        f"there, {study.describe(distributions[name])} here"
        for name, values in outside.items()
    )


def check_tracking_uri(uri: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """An HTTP tracking server (``MLFLOW_TRACKING_URI=http://...``) answers MLflow's ``/health``
    within ``timeout_s``; MLflow's own client would retry for minutes before failing."""
    if uri is None:
        import mlflow

        uri = mlflow.get_tracking_uri()
    check_tracking_store(uri)
    if urlparse(uri).scheme not in ("http", "https"):
        return
    hint = (
        "Start the server (`mlflow server --host 127.0.0.1 --port 5000`) or point MLFLOW_TRACKING_URI at "
        "one that runs, or unset it to log to a local store. Nothing was created and no trial started."
    )
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # it answers, behind authentication: the MLflow client logs in with its own credentials
        raise UnreachableError(
            "MLFLOW_TRACKING_URI", uri, f"GET /health answered HTTP {exc.code}: not an MLflow tracking server?", hint
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UnreachableError(
            "MLFLOW_TRACKING_URI", uri, f"no answer to GET /health (timeout {timeout_s:g} s): {reason}", hint
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
