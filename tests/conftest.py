"""Shared set-up of the test suite: an isolated environment and a config builder over the real conf/.

The environment is set in ``pytest_configure``, before any test module is imported: huggingface_hub
reads ``HF_HUB_OFFLINE`` once at import time, so setting it from a fixture would come too late.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"

_SESSION_DIR: Path | None = None


def pytest_configure(config):
    """Isolate the session from the user's caches, MLflow store and the network."""
    global _SESSION_DIR
    _SESSION_DIR = Path(tempfile.mkdtemp(prefix="lora_lab_tests_"))
    (_SESSION_DIR / "cache").mkdir()
    (_SESSION_DIR / "mlflow").mkdir()
    os.environ["LORA_LAB_CACHE"] = str(_SESSION_DIR / "cache")  # the built-in model is materialised here
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_DIR / 'mlflow' / 'mlflow.db'}"
    os.environ["HF_HOME"] = str(_SESSION_DIR / "hf_home")  # no Hub model is ever found in a cache
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.pop("HYDRA_FULL_ERROR", None)  # the CLI tests check that no stack trace is printed


def pytest_unconfigure(config):
    if _SESSION_DIR is not None:
        shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    """The session's private directory (holds the model cache and the MLflow store)."""
    assert _SESSION_DIR is not None
    return _SESSION_DIR


@pytest.fixture(scope="session")
def compose_config():
    """``compose_config(*overrides)``: the DictConfig ``python -m lora_lab.train <overrides>`` would get,
    composed from the real conf/ directory with Hydra's compose API."""
    from hydra import compose, initialize_config_dir

    from lora_lab.config import register_configs

    register_configs()

    def compose_(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return compose("config", overrides=list(overrides))

    return compose_


@pytest.fixture(scope="session")
def make_trial_config(compose_config):
    """``make_trial_config(*overrides)``: a checked TrialConfig, as ``lora_lab.train.main`` builds it."""
    from lora_lab.config import to_trial_config

    def make(*overrides: str):
        return to_trial_config(compose_config(*overrides))

    return make
