"""The command line: ``python -m lora_lab.report study=<name> [metric=..] [tie_rule=..] [output_dir=..]``.

Settings are the ReportConfig fields, composed by Hydra from conf/report.yaml."""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig, OmegaConf

from lora_lab import cli
from lora_lab.config import ReportConfig, register_configs
from lora_lab.mlflow_ui import log_report
from lora_lab.report.sections import build_report
from lora_lab.storage import check_tracking_store


def _quiet() -> None:
    """Keep MLflow's and Optuna's chatter out of the output (without importing model libraries)."""
    import matplotlib

    cli.quiet_libraries(model_libraries=False)
    matplotlib.use("Agg")  # Optuna's matplotlib views go through pyplot: never open a window


register_configs()


@hydra.main(version_base=None, config_path=cli.CONFIG_DIR, config_name="report")
@cli.reports_errors
def main(cfg: DictConfig) -> None:
    """Entry point of ``python -m lora_lab.report``."""
    settings = OmegaConf.to_object(cfg)
    assert isinstance(settings, ReportConfig)
    _quiet()
    check_tracking_store()  # a damaged mlflow.db: one paragraph, never a report built on it
    target = build_report(settings)
    print(f"report: {target / 'report.md'} (and report.html, CSVs, plots in {target}{os.sep})")
    parent = log_report(target, settings.study)  # the sweep's run note links it in the MLflow UI
    if parent:
        print(f"attached to the sweep's MLflow run {parent} (artifacts: report/)")


if __name__ == "__main__":
    main()
