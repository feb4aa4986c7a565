"""What ``mlflow ui`` shows of lora_lab's runs, and the links to it (no model libraries imported,
so the report can use it cheaply; ``lora_lab.track`` logs the runs).

* Run names that say what a trial is (``t13 r=64 α=256 all_linear``, baselines ``zero_shot s0``).
* Every run's source and code version: ``mlflow.source.name``/``.type``, ``mlflow.user``,
  ``mlflow.source.git.commit``/``.branch``, ``lora_lab.git_dirty``, ``lora_lab.version``.
* The experiment: ``mlflow.experimentKind``, a description (``mlflow.note.content``) and saved
  runs views (MLflow's "Views" menu): the trials with r, alpha, the objectives as columns, best
  first; in a sweep also the configurations, their seeds grouped, each metric's mean over them.
* The sweep's parent run: a note (markdown) naming the best trial with links, ``trials.json``.
* The links the sweep prints, and the optuna-dashboard command.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mlflow.tracking import MlflowClient

from lora_lab import names
from lora_lab.config import TrialConfig, flatten


def ensure_experiment(
    client: MlflowClient,
    name: str,
    note: str | None = None,
    view: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
) -> str:
    """Id of the named experiment, created if missing (safe when several workers race), set up for
    ``mlflow ui`` (see ``experiment_tags``): its kind, its description (``note``, written only where
    the experiment has none, so a description edited in the UI stays) and the saved runs ``view`` (one
    or several)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name)
        except Exception:  # another worker created it first
            pass
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise LookupError(f"MLflow experiment {name!r} could neither be found nor created")
    for key, value in experiment_tags(experiment.tags, note, view).items():
        client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


# -- run names ---------------------------------------------------------------------------------
SHORT_NAMES = {
    "lora_dropout": "dropout",
    "learning_rate": "lr",
    "use_rslora": "rslora",
    "use_dora": "dora",
    "gradient_accumulation_steps": "accum",
    "max_steps": "steps",
    "init_lora_weights": "init",
}
"""How a searched config field other than r, alpha and the targets is written in a run name."""

_NAMED = ("lora.r", "lora.lora_alpha", "lora.targets", "lora.target_modules", names.SEED_KEY)


def _label(cfg: TrialConfig, searched: Iterable[str] = ()) -> list[str]:
    """What tells a LoRA configuration apart: r, alpha, the targets, the quantization and every other
    searched config field (``dropout=0.05``, ``lr=0.0002``)."""
    lora = cfg.lora
    targets = "+".join(lora.target_modules) if lora.target_modules else lora.targets
    parts = [f"r={lora.r}", f"α={lora.lora_alpha:g}", targets]
    if cfg.quant.method != "none":
        parts.append(cfg.quant.method)
    flat = None
    for name in searched:
        if name in _NAMED or name.split(".", 1)[0] not in names.TRIAL_GROUPS or "." not in name:
            continue  # already shown, or a free variable (alpha_over_r) that the shown fields imply
        flat = flatten(cfg) if flat is None else flat
        value = flat.get(name)
        short = SHORT_NAMES.get(name.rsplit(".", 1)[-1], name.rsplit(".", 1)[-1])
        parts.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
    return parts


METHOD_LABELS = {"none": "zero_shot", "full": "full_ft"}
"""How a trial without an adapter (lora.method) is named: the names the shipped presets give the
two baselines."""


def config_label(cfg: TrialConfig, searched: Iterable[str] = (), baseline: str | None = None) -> str:
    """A configuration as it reads, the same for all its seeds (MLflow tag ``lora_lab.config``):
    ``r=64 α=256 all_linear`` and any other searched value; a baseline by its name."""
    if baseline:
        return baseline
    if cfg.lora.method in METHOD_LABELS:
        return METHOD_LABELS[cfg.lora.method]
    return " ".join(_label(cfg, searched))


def trial_run_name(
    number: int,
    cfg: TrialConfig,
    searched: Iterable[str] = (),
    baseline: str | None = None,
    show_seed: bool = False,
    prefix: str = "t",
) -> str:
    """A sweep trial's run name, what the runs table, chart legends and compare view show:
    ``t13 r=64 α=256 all_linear`` (``prefix`` + the Optuna trial number, then ``config_label``;
    ``s<seed>`` added when the sweep runs several seeds), and for a baseline its name and seed,
    ``zero_shot s0``."""
    if baseline:
        return f"{baseline} s{cfg.train.seed}"
    parts = [f"{prefix}{number}", config_label(cfg, searched)]
    if show_seed:
        parts.append(f"s{cfg.train.seed}")
    return " ".join(parts)


def run_name(cfg: TrialConfig) -> str:
    """A single ``lora_lab.train`` run's default name: model, the configuration, seed
    (``tiny_llama r=8 α=16 all_linear s0``; ``tiny_llama zero_shot s0`` with lora.method=none)."""
    return " ".join([cfg.model.name, config_label(cfg), f"s{cfg.train.seed}"])


# -- source and code version ------------------------------------------------------------------
def _entry_point() -> str:
    """What ran: the module of ``python -m <module>`` (``lora_lab.sweep``), else the script's name."""
    import sys

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(directory: Path, tracked_file: str) -> dict[str, str]:
    """The git commit, branch and dirty flag of the checkout ``directory`` lies in, as MLflow source
    tags; empty when ``tracked_file`` (in ``directory``) is not tracked by a checkout (a wheel in a
    virtualenv that happens to sit inside some other repository is not that repository's code).
    Dirty means tracked files differ from the commit; untracked files (run outputs) do not count."""
    if _git("ls-files", "--error-unmatch", tracked_file, cwd=directory) is None:
        return {}
    commit = _git("rev-parse", "HEAD", cwd=directory)
    if not commit:
        return {}
    tags = {"mlflow.source.git.commit": commit}
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=directory)
    if status is not None:
        tags[names.TAG_GIT_DIRTY] = "true" if status else "false"
    branch = _git("rev-parse", "--abbrev-ref", "HEAD", cwd=directory)
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    return tags


@functools.cache
def code_version() -> dict[str, str]:
    """Tags naming the code that runs, found once per process (it runs ``git``): the git state of
    the checkout lora_lab is imported from (``git_state``) and the package version; an installed
    wheel has no checkout, its version alone names it."""
    from importlib.metadata import PackageNotFoundError, version

    tags: dict[str, str] = {}
    try:
        tags[names.TAG_VERSION] = version("lora_lab")
    except PackageNotFoundError:
        pass
    tags.update(git_state(Path(__file__).resolve().parent, Path(__file__).name))
    return tags


def source_tags() -> dict[str, str]:
    """Every run's source: what ran (``mlflow.source.name``, ``mlflow.source.type`` LOCAL), who ran it
    (``mlflow.user``) and the code version (``code_version``)."""
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = "unknown"
    return {"mlflow.source.name": _entry_point(), "mlflow.source.type": "LOCAL", "mlflow.user": user, **code_version()}


# -- what `mlflow ui` opens on -----------------------------------------------------------------
EXPERIMENT_KIND = "custom_model_development"
"""``mlflow.experimentKind``: MLflow's "Machine learning" kind (its UI offers it next to "GenAI apps &
agents"). MLflow 3.17's UI picks its pages from the workflow selector at the top ("GenAI" by default,
remembered per browser) rather than from this tag, so the links lora_lab prints carry
``workflowType=machine_learning`` as well; other versions read the tag."""

VIEW_TAG_PREFIX = "mlflow.sharedViewState."
"""Experiment tags under which MLflow's UI keeps saved runs views (its "Views" menu, and the links
``#/experiments/<id>/runs?viewStateShareKey=<view id>``): a JSON envelope {name, createdAt,
updatedAt, state}, ``state`` being the JSON of the runs page's search and column settings."""

VIEW_ID = "lora_lab-trials"
"""The runs view of the trials, one row per run (rewritten when the sweep's columns change); the
links lora_lab prints open it."""

CONFIG_VIEW_ID = "lora_lab-configs"
"""The runs view of a sweep's configurations: its runs grouped by configuration, each group's row
showing every metric's mean over its seeds."""

DEFAULT_VIEW_METRICS = (
    "eval_loss",
    "exact_match",
    "perplexity",
    "trainable_params",
    "effective_rank_mean",
    "train_time_s",
)


RUN_NAME_COLUMN = "attributes.`Run Name`"
"""The runs table's run-name column as the UI names it in a view's column order and widths."""


def column(kind: str, key: str) -> str:
    """A runs-table column as MLflow's UI names it: ``params.`lora.r```, ``metrics.`eval_loss```."""
    return f"{kind}.`{key}`"


def runs_view(
    name: str,
    params: Sequence[str],
    metrics: Sequence[str],
    order_by: str,
    ascending: bool = True,
    search_filter: str = "",
    view_id: str = VIEW_ID,
) -> dict[str, Any]:
    """A saved runs view (kept under ``view_id``): these param and metric columns, sorted by the
    metric ``order_by``, the runs that ``search_filter`` leaves (MLflow nests children under a
    parent shown in the same table, collapsed, so the views filter the sweep's parent run out)."""
    params, metrics = list(dict.fromkeys(params)), list(dict.fromkeys(metrics))
    columns = [column("params", p) for p in params] + [column("metrics", m) for m in metrics]
    state = {
        "searchFilter": search_filter,
        "orderByKey": column("metrics", order_by),
        "orderByAsc": ascending,
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": {c: 110 for c in columns},
    }
    return {"id": view_id, "name": name, "state": state}


CURVES = ("eval_loss", "eval_token_accuracy", "train_loss")
"""Metrics logged at every evaluation or log step (drawn as curves); every other metric is an
end-of-run summary logged at step 0 (drawn as bars)."""

CHART_SECTION = "lora_lab-charts"


def trial_charts(params: Sequence[str], objectives: Sequence[str], summaries: Sequence[str]) -> list[dict[str, Any]]:
    """The chart view's cards (MLflow's chart-card fields): parallel coordinates of the searched
    params against the first objective over all runs, the first objective against trainable
    parameters, then a curve per step metric and a bar chart per summary (the first 10 runs of the
    table, which the view sorts best first)."""
    first = objectives[0]
    base = {"runsCountToCompare": 10, "metricSectionId": CHART_SECTION, "deleted": False, "isGenerated": False}
    line = {
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "range": {},
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
    }
    cards = [
        {
            **base,
            "uuid": "lora_lab-parallel",
            "type": "PARALLEL",
            "runsCountToCompare": 1000,
            "selectedParams": list(params),
            "selectedMetrics": [first],
            "showAllRuns": True,
        },
        {
            **base,
            "uuid": "lora_lab-scatter",
            "type": "SCATTER",
            "runsCountToCompare": 1000,
            "xaxis": {"key": "trainable_params", "type": "METRIC"},
            "yaxis": {"key": first, "type": "METRIC"},
        },
    ]
    for metric in dict.fromkeys([*objectives, *CURVES, *summaries]):
        if metric in CURVES:
            cards.append({**base, **line, "uuid": f"lora_lab-{metric}", "type": "LINE", "metricKey": metric})
        else:
            cards.append({**base, "uuid": f"lora_lab-{metric}", "type": "BAR", "metricKey": metric})
    return cards


def trial_view(
    objectives: Sequence[tuple[str, str]] = (("eval_loss", "minimize"),), searched: Iterable[str] = ()
) -> dict[str, Any]:
    """The runs view of a sweep's experiment: r, alpha, targets and every other searched config
    field, the objectives then the main summaries, best first by the first objective; sweep parent
    runs left out. Its chart view (``trial_charts``) plots the searched params against the objective."""
    fields = [n for n in searched if "." in n and n.split(".", 1)[0] in names.TRIAL_GROUPS and n != names.SEED_KEY]
    metric, direction = objectives[0]
    view = runs_view(
        f"lora_lab: trials by {metric}",
        ["lora.r", "lora.lora_alpha", "lora.targets", *fields],
        [m for m, _ in objectives] + list(DEFAULT_VIEW_METRICS),
        metric,
        direction == "minimize",
        f"tags.`{names.TAG_KIND}` != '{names.KIND_SWEEP}'",
    )
    summaries = [*DEFAULT_VIEW_METRICS, "peak_memory_mb", "tokens_per_s"]
    view["state"]["compareRunCharts"] = trial_charts(
        list(dict.fromkeys(["lora.r", "lora.lora_alpha", *fields])), [m for m, _ in objectives], summaries
    )
    view["state"]["compareRunSections"] = [
        {
            "uuid": CHART_SECTION,
            "name": f"lora_lab: r, alpha and {metric}",
            "display": True,
            "isReordered": False,
            "deleted": False,
            "isGenerated": False,
        }
    ]
    return view


AGGREGATE = "average"
"""How the configurations view sums up a group's runs: MLflow's run-grouping aggregate functions are
'min', 'average' and 'max'."""


def config_view(
    objectives: Sequence[tuple[str, str]] = (("eval_loss", "minimize"),), searched: Iterable[str] = ()
) -> dict[str, Any]:
    """The configurations view of a sweep's experiment: its runs grouped by configuration (the tags
    ``lora_lab.config``, readable, and ``lora_lab.config_id``, exact), each group's row showing every
    metric column's mean over the group's seeds, the groups sorted by the first objective's mean,
    best first. Baselines are groups of their own; the chart view plots the groups' means."""
    view = trial_view(objectives, searched)
    metric = objectives[0][0]
    view["id"] = CONFIG_VIEW_ID
    view["name"] = f"lora_lab: configurations by mean {metric}"
    view["state"]["groupBy"] = {
        "aggregateFunction": AGGREGATE,
        "groupByKeys": [
            {"mode": "tag", "groupByData": names.TAG_CONFIG_LABEL},
            {"mode": "tag", "groupByData": names.TAG_CONFIG_ID},
        ],
    }
    view["state"]["useGroupedValuesInCharts"] = True
    # the group rows are named by their keys' values: a wider run-name column shows them whole
    view["state"]["columnOrder"] = [RUN_NAME_COLUMN, *view["state"]["columnOrder"]]
    view["state"]["columnWidths"][RUN_NAME_COLUMN] = 420
    return view


def sweep_views(
    objectives: Sequence[tuple[str, str]] = (("eval_loss", "minimize"),), searched: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The saved runs views of a sweep's experiment: its trials (``trial_view``) and its
    configurations (``config_view``)."""
    return [trial_view(objectives, searched), config_view(objectives, searched)]


def experiment_tags(
    existing: dict[str, str],
    note: str | None = None,
    view: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
) -> dict[str, str]:
    """The experiment tags still to write so ``mlflow ui`` opens the experiment as lora_lab means it:
    the experiment kind and description (only where missing: a user's choice in the UI stays) and
    the saved views (``view``: one or several, each rewritten whenever its columns changed)."""
    out = {}
    if "mlflow.experimentKind" not in existing:
        out["mlflow.experimentKind"] = EXPERIMENT_KIND
    if note and not existing.get("mlflow.note.content"):
        out["mlflow.note.content"] = note
    views = [] if view is None else [view] if isinstance(view, dict) else list(view)
    for each in views:
        view_id = each.get("id", VIEW_ID)
        key = VIEW_TAG_PREFIX + view_id
        state = json.dumps(each["state"], sort_keys=True)
        try:
            old = json.loads(existing[key])
        except (KeyError, ValueError):
            old = {}
        if old.get("state") != state or old.get("name") != each["name"]:
            now = int(time.time() * 1000)
            out[key] = json.dumps(
                {"name": each["name"], "createdAt": old.get("createdAt", now), "updatedAt": now, "state": state}
            )
            if view_id == VIEW_ID:
                out[names.TAG_RUN_VIEW] = VIEW_ID
    return out


def ui_base_url(tracking_uri: str | None = None) -> str:
    """Where the tracking store's web UI is: the server itself for an http(s) tracking URI, else
    the address ``mlflow ui`` serves on by default."""
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return "http://127.0.0.1:5000"


def runs_url(experiment_id: str, base: str = "", view: str | None = VIEW_ID) -> str:
    """Link to the experiment's runs table in the saved ``view`` (the trials; CONFIG_VIEW_ID: the
    configurations; None: as the UI last left it); ``base`` empty gives the in-app link a run note uses."""
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={quote(view)}" if view else "")
    return (
        f"{base}/#/experiments/{experiment_id}/runs?{query}" if base else f"#/experiments/{experiment_id}/runs?{query}"
    )


def run_url(experiment_id: str, run_id: str, base: str = "", tab: str = "") -> str:
    """Link to one run's page (``tab``: 'model-metrics' for its charts, 'artifacts')."""
    path = f"#/experiments/{experiment_id}/runs/{run_id}" + (f"/{tab}" if tab else "")
    return f"{base}/{path}" if base else path


def experiment_note(study: str, objectives: Sequence[tuple[str, str]]) -> str:
    """The description of a sweep's experiment (markdown, shown above its runs)."""
    goal = ", ".join(f"{m} ({d})" for m, d in objectives)
    return (
        f"LoRA sweep **{study}** (lora_lab): one parent run per sweep, named `{study}`, whose description "
        f"names the best trial; one nested run per trial, named after its settings (`t13 r=64 α=256 all_linear`), "
        f"baselines by name and seed (`zero_shot s0`). Objective: {goal}.\n\n"
        f"Open **Views → lora_lab: trials by {objectives[0][0]}** for the trials sorted best first with r, "
        f"alpha and the metrics as columns, **Views → lora_lab: configurations by mean {objectives[0][0]}** for "
        f"each configuration's seeds grouped under one row with the metrics' means; in **Chart view** "
        f"end-of-run metrics are bars, eval_loss and train_loss lines over optimizer steps."
    )


def dashboard_command(storage: str) -> str:
    """The one command that opens a study's Optuna storage in optuna-dashboard."""
    return f"optuna-dashboard {storage}"


def sweep_note(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    study: str,
    objectives: Sequence[tuple[str, str]],
    best: Sequence[dict[str, Any]],
    counts: dict[str, int],
    storage: str,
    report_dir: str | None = None,
    report_logged: bool = False,
) -> str:
    """The parent run's description (``mlflow.note.content``, markdown): the best trial with a link to
    its run and its reproducing command, the report, the runs view and the Optuna dashboard."""
    total = sum(counts.values())
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
    lines = [
        f"### Sweep `{study}`",
        "",
        f"{total} trials ({states}); objective " + ", ".join(f"**{m}** ({d})" for m, d in objectives) + ".",
        "",
    ]
    for rank, trial in enumerate(best):
        run_id = trial.get("run_id")
        try:
            name = client.get_run(run_id).info.run_name if run_id else None
        except Exception:
            name = None
        values = ", ".join(f"{m} = {v:.4g}" for (m, _), v in zip(objectives, trial["values"], strict=True))
        label = (
            f"[{name or 'trial ' + str(trial['number'])}]({run_url(experiment_id, run_id)})"
            if run_id
            else f"trial {trial['number']}"
        )
        head = "**Best trial**" if len(best) == 1 else ("**Pareto set**" if rank == 0 else "")
        if head:
            lines.append(f"{head}:")
            lines.append("")
        lines.append(f"- {label} (Optuna trial {trial['number']}): {values}")
        if trial.get("overrides") is not None:
            lines.append(f"  reproduce: `python -m lora_lab.train {trial['overrides']}`")
    if not best:
        lines.append("No trial has completed yet.")
    report_dir = report_dir or f"reports/{study}"
    lines += [
        "",
        f"**Report**: `{report_dir}/report.md`, written by `python -m lora_lab.report study={study}`"
        + (
            f"; [open it from this run's artifacts]({run_url(experiment_id, parent_run_id, tab='artifacts')})"
            if report_logged
            else ""
        )
        + ".",
        f"**All trials**: [runs table, best first]({runs_url(experiment_id)}); "
        f"[configurations, mean over seeds]({runs_url(experiment_id, view=CONFIG_VIEW_ID)}); the table "
        f"`trials.json` under this run's artifacts.",
        f"**Optuna**: `{dashboard_command(storage)}`.",
    ]
    return "\n".join(lines)


def log_sweep_summary(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    study: str,
    objectives: Sequence[tuple[str, str]],
    best: Sequence[dict[str, Any]],
    counts: dict[str, int],
    storage: str,
) -> None:
    """Write the parent run's note (``sweep_note``) and the ``trials.json`` table of its child runs
    (name, state, r, alpha, objectives; MLflow renders it in the artifact view)."""
    import pandas as pd

    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=1000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            break
    metrics = list(dict.fromkeys([m for m, _ in objectives] + ["eval_loss", "exact_match", "trainable_params"]))
    rows = [
        {
            "run": r.info.run_name,
            "state": r.data.tags.get(names.TAG_OPTUNA_STATE, r.info.status),
            "trial": r.data.tags.get(names.TAG_OPTUNA_TRIAL),
            "r": r.data.params.get("lora.r"),
            "lora_alpha": r.data.params.get("lora.lora_alpha"),
            "targets": r.data.params.get("lora.targets"),
            **{m: r.data.metrics.get(m) for m in metrics},
            "run_id": r.info.run_id,
        }
        for r in runs
    ]
    note = sweep_note(client, experiment_id, parent_run_id, study, objectives, best, counts, storage)
    client.set_tag(parent_run_id, "mlflow.note.content", note)
    if not rows:
        return
    try:
        table = pd.DataFrame(rows).sort_values(
            objectives[0][0], ascending=objectives[0][1] == "minimize", na_position="last"
        )
        client.log_table(parent_run_id, data=table, artifact_file="trials.json")
    except Exception as exc:  # a convenience copy of what the runs hold: never worth failing the sweep's end
        logging.getLogger(__name__).warning("trials.json not written to run %s: %s", parent_run_id, exc)


def log_report(report_dir: str | Path, study: str, client: MlflowClient | None = None) -> str | None:
    """Attach a written report to its sweep's parent run (artifacts under ``report/``) and link it
    from the run's note. Returns the parent run id, None when no sweep run of ``study`` exists."""
    client = client or MlflowClient()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`{names.TAG_KIND}` = '{names.KIND_SWEEP}' and tags.`{names.TAG_STUDY}` = '{study}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        return None
    run = runs[0]
    client.log_artifacts(run.info.run_id, str(report_dir), "report")
    note = run.data.tags.get("mlflow.note.content", "")
    link = f"; [open it from this run's artifacts]({run_url(run.info.experiment_id, run.info.run_id, tab='artifacts')})"
    marker = f"written by `python -m lora_lab.report study={study}`"
    if marker in note and link not in note:
        client.set_tag(run.info.run_id, "mlflow.note.content", note.replace(marker, marker + link, 1))
    return run.info.run_id


def browse_hints(client: MlflowClient, parent_run_id: str, storage: str) -> list[str]:
    """Lines the sweep prints at its end: where to look at the results (``storage`` as fit to print,
    without its password)."""
    import mlflow

    run = client.get_run(parent_run_id)
    uri = mlflow.get_tracking_uri()
    base = ui_base_url(uri)
    lines = []
    if not uri.startswith(("http://", "https://")):
        shown = "$MLFLOW_TRACKING_URI" if "@" in uri else uri  # never print a database password
        lines.append(f"mlflow ui: mlflow ui --backend-store-uri {shown}   (then open the links below)")
    lines.append(f"runs table (best first, r/alpha/metrics as columns): {runs_url(run.info.experiment_id, base)}")
    lines.append(f"configurations (mean over seeds): {runs_url(run.info.experiment_id, base, view=CONFIG_VIEW_ID)}")
    lines.append(f"sweep run (best trial, links): {run_url(run.info.experiment_id, parent_run_id, base)}")
    lines.append(f"optuna dashboard: {dashboard_command(storage)}")
    return lines
