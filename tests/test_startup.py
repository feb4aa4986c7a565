"""Start-up of the commands: what a single trial imports, and what it leaves out (bitsandbytes without
quantization, the sweep machinery outside a sweep), checked in a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from lora_lab import cli

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ((), False),
        (("quant=nf4",), True),
        (("quant=int8",), True),
        (("+sweep=rank_alpha",), False),
        (("+sweep=full",), False),
    ],
)
def test_quantizes_reads_the_composed_config(compose_config, overrides, expected):
    assert cli.quantizes(compose_config(*overrides)) is expected


@pytest.mark.parametrize(
    "sweep, expected",
    [
        ({"params": {"lora.r": {"type": "categorical", "choices": [4, 8]}}}, False),
        ({"params": {"quant.method": {"type": "categorical", "choices": ["none", "nf4"]}}}, True),
        ({"derived": {"quant.double_quant": "True"}}, True),
        ({"baselines": [{"lora.r": 8}, {"lora.r": 8, "quant.method": "nf4"}]}, True),
    ],
)
def test_quantizes_sees_a_sweep_that_searches_quantization(sweep, expected):
    assert cli.quantizes(OmegaConf.create({"quant": {"method": "none"}, "sweep": sweep})) is expected


def _imported(importtime_stderr: str) -> set[str]:
    """Modules a process imported, from its ``python -X importtime`` report."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_unquantized_trial_command_keeps_bitsandbytes_and_the_sweep_out(tmp_path):
    store = tmp_path / "mlflow.db"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        MLFLOW_TRACKING_URI=f"sqlite:///{store}",
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "lora_lab.train",
            "train.max_steps=2",
            "train.eval_every=2",
            "train.eval_generate=0",
            "tracking.experiment=startup",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval loss" in proc.stdout
    imported = _imported(proc.stderr)
    assert "peft" in imported and "mlflow" in imported  # the report is read right: these must be there
    # the failed attempt PEFT makes is listed as `bitsandbytes` alone; none of its modules ran
    assert not [name for name in imported if name.startswith("bitsandbytes.")]
    assert not {"optuna", "lora_lab.sweep", "matplotlib"} & imported
    assert (tmp_path / "run" / "train.log").exists()  # Hydra still names the job after the command
    # the store opened on a background thread: the run is complete and finished all the same
    client = MlflowClient(f"sqlite:///{store}")
    [run] = client.search_runs([client.get_experiment_by_name("startup").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval_loss"] > 0 and run.data.params["train.max_steps"] == "2"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "adapter")]
