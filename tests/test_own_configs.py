"""Config groups of your own, from a directory outside the package: a model and a sweep preset added
with Hydra's ``--config-dir`` (or ``hydra.searchpath``), checked against the same schema as the
shipped ones, and used by a real sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient

from lora_lab import cli
from lora_lab.config import register_configs, to_trial_config
from lora_lab.names import TAG_KIND

REPO = Path(__file__).resolve().parent.parent

MY_MODEL = """\
# my_tiny: the shipped tiny_llama under a name of my own
defaults:
  - tiny_llama   # start from the shipped model/tiny_llama.yaml
  - _self_       # then the values below
name: my_tiny    # label in run names and reports
"""

MY_SWEEP = """\
# my_grid: rank 2 against rank 4
study_name: my_grid       # Optuna study and MLflow experiment
params:                   # searched values
  lora.r:                 # rank
    type: categorical     # a grid needs categorical params
    choices: [2, 4]       # the two ranks
derived:                  # computed from the sampled values
  lora.lora_alpha: 2 * lora.r  # scale alpha / r = 2
sampler:                  # Optuna sampler
  name: grid              # every choice once
"""


@pytest.fixture
def my_conf(tmp_path) -> Path:
    """A config directory of one's own, outside the repository and the installed package."""
    root = tmp_path / "my_conf"
    (root / "model").mkdir(parents=True)
    (root / "sweep").mkdir()
    (root / "model" / "my_tiny.yaml").write_text(MY_MODEL)
    (root / "sweep" / "my_grid.yaml").write_text(MY_SWEEP)
    return root


def _compose(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=cli.CONFIG_DIR, version_base=None):
        return compose("config", overrides=list(overrides))


def test_searchpath_adds_a_model_and_a_sweep_preset(my_conf):
    cfg = _compose(f"hydra.searchpath=[file://{my_conf}]", "model=my_tiny", "+sweep=my_grid")
    trial = to_trial_config(cfg)
    shipped = to_trial_config(_compose("model=tiny_llama"))
    assert trial.model.name == "my_tiny" and shipped.model.name == "tiny_llama"
    assert {k: v for k, v in vars(trial.model).items() if k != "name"} == {
        k: v for k, v in vars(shipped.model).items() if k != "name"
    }
    assert cfg.sweep.study_name == "my_grid" and list(cfg.sweep.params["lora.r"].choices) == [2, 4]


def test_own_configs_are_checked_against_the_schema(my_conf):
    (my_conf / "model" / "bad.yaml").write_text("name: bad\nhiden_size: 128  # misspelt\n")
    with pytest.raises(ConfigCompositionException) as info:
        _compose(f"hydra.searchpath=[file://{my_conf}]", "model=bad")
    assert "hiden_size" in str(info.value.__cause__ or info.value)


def test_shipped_options_stay_available_next_to_ones_own(my_conf):
    cfg = _compose(f"hydra.searchpath=[file://{my_conf}]", "model=qwen2_5_0_5b", "+sweep=rank_alpha")
    assert cfg.model.pretrained == "Qwen/Qwen2.5-0.5B" and cfg.sweep.study_name == "rank_alpha"


@pytest.mark.slow
def test_a_sweep_runs_with_a_model_and_a_preset_of_ones_own(my_conf, tmp_path):
    """The documented command, from a directory outside the repository: `--config-dir DIR` and
    `sweep=` without `+`."""
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable,
        "-m",
        "lora_lab.sweep",
        "--config-dir",
        str(my_conf),
        "model=my_tiny",
        "sweep=my_grid",
        "train.max_steps=4",
        "train.eval_every=2",
        "train.eval_generate=0",
        "train.logging_steps=2",
    ]
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "study my_grid: 2 complete" in done.stdout, done.stdout[-2000:]
    client = MlflowClient()
    experiment = client.get_experiment_by_name("my_grid")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'trial'")
    assert sorted((r.data.params["model.name"], r.data.params["lora.r"]) for r in runs) == [
        ("my_tiny", "2"),
        ("my_tiny", "4"),
    ]
    assert (work / "sweeps" / "my_grid").is_dir()  # run state lands where the command ran
