"""What every command shares (lora_lab.cli, lora_lab.quiet): where the configs are found, the command
line as Hydra gets it, URL redaction, and an output free of library noise, checked in real processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_lab import cli, quiet

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def test_config_dir_is_the_checkouts_conf_when_run_from_the_repo():
    assert Path(cli.CONFIG_DIR) == REPO / "conf"
    assert Path(cli.CONFIG_DIR).is_absolute()  # so a command composes the same from any directory


def test_every_command_reads_its_configs_from_config_dir():
    """An installed wheel has no ../conf: a @hydra.main with a relative config_path fails outside a checkout."""
    mains = {}
    for path in sorted((REPO / "lora_lab").rglob("*.py")):
        for line in path.read_text().splitlines():
            if line.lstrip().startswith(("@hydra.main(", "hydra.main(")):
                mains[str(path.relative_to(REPO))] = line.strip()
    # lora_lab.train's command is composed by cli.run_command (before the trainer's imports)
    assert {"lora_lab/cli.py", "lora_lab/sweep.py"} <= set(mains)
    wrong = {
        name: line
        for name, line in mains.items()
        if "config_path=cli.CONFIG_DIR" not in line
        and not (name == "lora_lab/cli.py" and "config_path=CONFIG_DIR" in line)
    }
    assert wrong == {}


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["sweep=rank_alpha"], ["+sweep=rank_alpha"]),
        (["+sweep=rank_alpha"], ["+sweep=rank_alpha"]),  # the documented form keeps working
        (["sweep=targets,dropout", "-m"], ["-m", "+sweep=targets,dropout"]),
        (
            ["sweep=full", "sweep.n_trials=3", "sweep.sampler.name=random", "lora.r=4"],
            ["+sweep=full", "sweep.n_trials=3", "sweep.sampler.name=random", "lora.r=4"],
        ),
        (
            ["--config-dir", "/my/conf", "model=mine", "sweep=mine"],
            ["--config-dir", "/my/conf", "model=mine", "+sweep=mine"],
        ),
        (["~sweep", "hydra.searchpath=[file:///x]"], ["~sweep", "hydra.searchpath=[file:///x]"]),
    ],
)
def test_hydra_argv_reads_sweep_without_plus(argv, expected):
    assert cli.hydra_argv(argv) == expected


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://postgres:s3cret@db.example:5432/optuna", "postgresql://***@db.example:5432/optuna"),
        ("http://user:pw@mlflow.internal:5000", "http://***@mlflow.internal:5000"),
        ("sqlite:////tmp/a@b/optuna.db", "sqlite://***@b/optuna.db"),  # an '@' in a path is redacted too: safe side
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("sweeps/rank_alpha/optuna.journal", "sweeps/rank_alpha/optuna.journal"),
    ],
)
def test_redact_url_hides_credentials(url, expected):
    assert cli.redact_url(url) == expected
    assert "s3cret" not in cli.redact_url(url) and "pw@" not in cli.redact_url(url)


def test_import_noise_filter_drops_only_the_kernels_message(caplog):
    quiet.drop_import_noise()
    logger = logging.getLogger(quiet.BNB_CPU_OPS_LOGGER)
    with caplog.at_level(logging.WARNING):
        logger.warning(
            quiet.BNB_KERNELS_MISSING + ": %s. Please make sure you already `pip install kernels`",
            "No module named 'kernels'",
        )
        logger.warning("some other bitsandbytes warning")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["some other bitsandbytes warning"]


@pytest.fixture(scope="module")
def cli_processes(tmp_path_factory):
    """Started together (each pays ~10-40 s of imports), from a directory outside the repository: a
    real 2-step trial, `sweep=` without `+` and with it (--cfg job prints the composed config and
    stops), and a bare bitsandbytes import as the control for the noise check."""
    work = tmp_path_factory.mktemp("entry")
    commands = {
        "trial": [
            "-m",
            "lora_lab.train",
            "train.max_steps=2",
            "train.eval_every=2",
            "train.eval_generate=0",
            "tracking.enabled=false",
            "quant=nf4",
            f"hydra.run.dir={work / 'run'}",
        ],
        "sweep_no_plus": ["-m", "lora_lab.sweep", "sweep=targets", "sweep.seeds=3", "--cfg", "job"],
        "sweep_plus": ["-m", "lora_lab.sweep", "+sweep=targets", "--cfg", "job"],
        "bnb_alone": ["-c", "import bitsandbytes.functional as F; print('avx512bf16', F.has_avx512bf16())"],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, *args], cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, args in commands.items()
    }
    return {name: (proc.wait(timeout=600), *proc.communicate()) for name, proc in procs.items()}


@pytest.mark.slow
def test_a_trial_prints_no_import_noise(cli_processes):
    code, out, err = cli_processes["trial"]
    assert code == 0, err[-3000:]
    assert "eval loss" in out
    assert "kernels" not in err and "Failed to load" not in err, err[-3000:]
    # the control: where this CPU makes bitsandbytes log the message, a bare import does print it
    code, out, bare_err = cli_processes["bnb_alone"]
    assert code == 0, bare_err
    if "avx512bf16 True" in out:
        assert quiet.BNB_KERNELS_MISSING in bare_err


@pytest.mark.slow
def test_sweep_preset_is_chosen_with_or_without_plus(cli_processes):
    code, out, err = cli_processes["sweep_no_plus"]
    assert code == 0, err[-3000:]
    assert "study_name: targets" in out and "seeds: 3" in out
    code, out_plus, err = cli_processes["sweep_plus"]
    assert code == 0, err[-3000:]
    assert "study_name: targets" in out_plus and "seeds: 1" in out_plus
