"""Shared set-up of the test suite: an isolated environment and a config builder over the real conf/.

The environment is set in ``pytest_configure``, before any test module is imported: huggingface_hub
reads ``HF_HUB_OFFLINE`` once at import time, so setting it from a fixture would come too late.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"

_SESSION_DIR: Path | None = None
SESSION_TRACKING_URI = ""
"""The session's own MLflow store (set in pytest_configure)."""
_INVOKED_IN: Path | None = None
"""The folder pytest was started in (the session itself runs in a scratch folder)."""


def pytest_configure(config):
    """Isolate the session from the user's caches, MLflow store and the network."""
    global _SESSION_DIR
    _SESSION_DIR = Path(tempfile.mkdtemp(prefix="lora_lab_tests_"))
    (_SESSION_DIR / "cache").mkdir()
    (_SESSION_DIR / "mlflow").mkdir()
    os.environ["LORA_LAB_CACHE"] = str(_SESSION_DIR / "cache")  # the built-in model is materialised here
    global SESSION_TRACKING_URI
    SESSION_TRACKING_URI = f"sqlite:///{_SESSION_DIR / 'mlflow' / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = SESSION_TRACKING_URI
    os.environ["HF_HOME"] = str(_SESSION_DIR / "hf_home")  # no Hub model is ever found in a cache
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.pop("HYDRA_FULL_ERROR", None)  # the CLI tests check that no stack trace is printed
    # The session runs in a scratch folder of its own: whatever is written relative to the current
    # folder lands there, never in the user's checkout. MLflow resolves a sqlite store's default
    # artifact root (./mlruns) against the folder the store is first opened in, and Hydra's run
    # folders (outputs/) and lora_lab's studies (sweeps/) are relative too.
    global _INVOKED_IN
    _INVOKED_IN = Path.cwd().resolve()
    (_SESSION_DIR / "cwd").mkdir()
    os.chdir(_SESSION_DIR / "cwd")


USER_STATE = ("mlflow.db", "mlruns", "sweeps", "outputs", "multirun", "reports")
"""What a user's checkout holds of its own runs: the test suite must leave all of it as it was."""


def _digest(root: Path) -> dict[str, str]:
    """Path -> sha256 of every file under the user's run state in ``root`` (absent paths omitted)."""
    out = {}
    for name in USER_STATE:
        top = root / name
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for path in files:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="session", autouse=True)
def users_files_stay_as_they_were():
    """The test run changes none of the user's files in the folder pytest starts in and in the checkout:
    ``mlflow.db``, ``mlruns/``, ``sweeps/``, ``outputs/``, ``multirun/``, ``reports/`` (checksums of
    every file before and after the session)."""
    roots = {_INVOKED_IN or REPO, REPO}
    before = {root: _digest(root) for root in roots}
    yield
    for root in roots:
        after = _digest(root)
        changed = sorted(path for path in set(before[root]) | set(after) if before[root].get(path) != after.get(path))
        assert not changed, f"the tests changed the user's files in {root}: {', '.join(changed[:20])}"


def pytest_unconfigure(config):
    if _INVOKED_IN is not None:
        os.chdir(_INVOKED_IN)
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
    """``make_trial_config(*overrides)``: a checked TrialConfig, as ``lora_lab.train.command`` builds it."""
    from lora_lab.config import to_trial_config

    def make(*overrides: str):
        return to_trial_config(compose_config(*overrides))

    return make


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback, as the multi-worker set-up documents; its URI."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "art"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            MlflowClient(uri).search_experiments()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(1)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # a loaded machine: its gunicorn workers did not stop in time
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _no_slurm(reason: str):
    """Skip, except in CI (CI=true), where the SLURM tests must run: there a missing cluster fails."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the slurm tests must run here, see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node SLURM cluster on 127.0.0.1, started by tests/slurm/start.sh (or found running);
    sets SLURM_CONF for the session and yields it. Stopped at the end if this session started it."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if shutil.which(b, path=path) is None]
    if missing:
        _no_slurm(f"SLURM is not installed ({', '.join(missing)} not found; apt-get install -y slurm-wlm munge)")
    start = subprocess.run(
        ["bash", str(REPO / "tests" / "slurm" / "start.sh")], capture_output=True, text=True, timeout=300
    )
    if start.returncode != 0:
        _no_slurm(start.stderr.strip() or "tests/slurm/start.sh failed")
    conf = start.stdout.strip().splitlines()[-1].split("=", 1)[1]
    os.environ["SLURM_CONF"] = conf
    yield conf
    if "already running" not in start.stderr:
        subprocess.run(["bash", str(REPO / "tests" / "slurm" / "stop.sh")], capture_output=True, timeout=120)
