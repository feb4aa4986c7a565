"""``python -m lora_lab.report study=<name>``: one sweep's results, read back from MLflow, as a report.

The report is built from the MLflow tracking store alone (``MLFLOW_TRACKING_URI`` or MLflow's default),
never from the Optuna storage or local trial folders, so the runs of every worker and machine that logged
into the same store end up in one report.

It writes ``<output_dir>/<study>/``: ``report.md``, a self-contained ``report.html`` (plots embedded),
one CSV per table, the PNG plots, ``recommended_command.txt`` and ``best_command.txt``. Everything is
written into a temporary folder beside the target and renamed over it at the end, so an interrupted run
never leaves a report that looks complete.

The package, by job:

* :mod:`~lora_lab.report.read`: MLflow runs to DataFrames (MlflowClient only);
* :mod:`~lora_lab.report.decide`: equivalent / worse / undecided against the best (statsmodels TOST, Holm);
* :mod:`~lora_lab.report.stats`: t intervals, bootstrap (scipy.stats), the two-way analysis of variance;
* :mod:`~lora_lab.report.tables`: per-configuration tables, grids, Pareto fronts, curves, importance;
* :mod:`~lora_lab.report.findings`: recommendation, warnings, baselines, published findings;
* :mod:`~lora_lab.report.plots`: matplotlib figures and Optuna's own views;
* :mod:`~lora_lab.report.document`: the document model, markdown / HTML rendering, atomic writing;
* :mod:`~lora_lab.report.sections`: the sections in order and :func:`build_report`;
* ``__main__``: the Hydra command line (conf/report.yaml).

Only pandas, scipy, statsmodels, matplotlib, MLflow and Optuna are needed: no model code, so a report is quick to
make on a machine without a GPU.
"""

from lora_lab.errors import LoraLabError
from lora_lab.report.decide import Rule
from lora_lab.report.document import Doc, write_atomically
from lora_lab.report.findings import best_command, recommend
from lora_lab.report.read import (
    NoFinishedTrialsError,
    ReportError,
    SweepInfo,
    UnknownSweepError,
    assign_configs,
    completed,
    find_experiment,
    load_runs,
    load_sweep_info,
    read_sweep,
    resolve_objective,
    trial_state,
)
from lora_lab.report.sections import build_report, decision_lines
from lora_lab.report.stats import summarize
from lora_lab.report.tables import config_table, grid_table, pareto_front

__all__ = [
    "Doc",
    "LoraLabError",
    "NoFinishedTrialsError",
    "ReportError",
    "Rule",
    "SweepInfo",
    "UnknownSweepError",
    "assign_configs",
    "best_command",
    "build_report",
    "completed",
    "decision_lines",
    "config_table",
    "find_experiment",
    "grid_table",
    "load_runs",
    "load_sweep_info",
    "pareto_front",
    "read_sweep",
    "recommend",
    "resolve_objective",
    "summarize",
    "trial_state",
    "write_atomically",
]
