"""Several workers on one study, killed workers, Ctrl-C and NaN trials: real processes, a real
``mlflow server`` over HTTP, real journal / sqlite / PostgreSQL Optuna storages."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from transformers import TrainerCallback

from lora_lab.config import register_configs
from lora_lab.sweep import Sweep, open_storage

REPO = Path(__file__).resolve().parent.parent
CONF = str(REPO / "conf")
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TINY = ["data.n_train=96", "data.n_eval=16", "train.max_steps=6", "train.eval_every=3", "train.batch_size=16",
        "train.eval_generate=4", "train.logging_steps=3", "tracking.log_adapter=false"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback, as the multi-worker set-up documents."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art"),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
    proc.wait(timeout=30)


def _env(tracking_uri: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _trial_runs(client: MlflowClient, study: str):
    experiment = client.get_experiment_by_name(study)
    return [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.data.tags.get("lora_lab.kind") == "trial"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_three_workers_share_one_study(backend, mlflow_server, tmp_path):
    study = f"workers_{backend}_{uuid.uuid4().hex[:8]}"
    storage = str(tmp_path / "study.journal") if backend == "journal" else PG_URL
    n_trials = 6
    cmd = [sys.executable, "-m", "lora_lab.sweep", "+sweep=targets", f"sweep.study_name={study}",
           f"sweep.storage={storage}", f"sweep.n_trials={n_trials}", *TINY, "sweep.cpu_threads=1", "sweep.worker=range(3)",
           "--multirun", "hydra/launcher=local", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=_env(mlflow_server), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    loaded = optuna.load_study(study_name=study, storage=open_storage(storage))
    trials = loaded.get_trials()
    assert len(trials) == n_trials and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n_trials  # no configuration twice
    assert len({t.user_attrs["worker_pid"] for t in trials}) >= 2  # the work really was shared

    client = MlflowClient(mlflow_server)
    runs = _trial_runs(client, study)
    assert len(runs) == n_trials
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == list(range(n_trials))
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1  # one parent run for all workers
    if backend == "postgresql":
        optuna.delete_study(study_name=study, storage=PG_URL)


def _wait_for_running_trial(storage: str, study: str, proc: subprocess.Popen, timeout: float = 240):
    """The first trial that is RUNNING with its MLflow run created, i.e. mid-trial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the worker exited before a trial started"
        try:
            running = optuna.load_study(study_name=study, storage=storage).get_trials(states=(TrialState.RUNNING,))
            if running and "mlflow_run_id" in running[0].user_attrs:
                return running[0]
        except KeyError:
            pass  # study not created yet
        time.sleep(0.3)
    raise AssertionError("no trial started in time")


@pytest.mark.slow
def test_killed_worker_trial_fails_and_restart_completes_without_duplicates(tmp_path, monkeypatch):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    overrides = ["+sweep=targets", "sweep.study_name=killed", f"sweep.storage={storage}", "sweep.n_trials=3"]
    slow = [o if not o.startswith("train.max_steps") else "train.max_steps=5000" for o in TINY]
    proc = subprocess.Popen([sys.executable, "-m", "lora_lab.sweep", *overrides, *slow], cwd=tmp_path,
                            env=_env(tracking, LORA_LAB_HEARTBEAT_S="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    victim = _wait_for_running_trial(storage, "killed", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(4)  # past the 3 s grace period of a 1 s heartbeat

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("LORA_LAB_HEARTBEAT_S", "1")
    mlflow.set_tracking_uri(tracking)
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):  # the restarted sweep
        summary = Sweep(compose("config", overrides=overrides + TINY), overrides + TINY,
                        console_progress=False).run()

    loaded = optuna.load_study(study_name="killed", storage=storage)
    killed = loaded.trials[victim.number]
    assert killed.state == TrialState.FAIL
    complete = [t for t in loaded.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and summary.counts == {"COMPLETE": 3, "FAIL": 1}
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # nothing ran twice
    assert killed.params in [t.params for t in complete]  # ... and nothing was lost
    client = MlflowClient(tracking)
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert sorted(r.info.status for r in _trial_runs(client, "killed")) == ["FINISHED"] * 3 + ["KILLED"]
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_ctrl_c_ends_the_trial_as_killed_and_exits_cleanly(tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    slow = [o if not o.startswith("train.max_steps") else "train.max_steps=5000" for o in TINY]
    proc = subprocess.Popen([sys.executable, "-m", "lora_lab.sweep", "+sweep=targets", "sweep.study_name=ctrl_c",
                             f"sweep.storage={storage}", *slow], cwd=tmp_path, env=_env(tracking),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    victim = _wait_for_running_trial(storage, "ctrl_c", proc)
    time.sleep(2)  # into training
    os.kill(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted" in output and "Traceback" not in output
    trial = optuna.load_study(study_name="ctrl_c", storage=storage).trials[victim.number]
    assert trial.state == TrialState.FAIL
    client = MlflowClient(tracking)
    run = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"
    assert client.get_run(run.data.tags["mlflow.parentRunId"]).info.status == "KILLED"


class PoisonTrial(TrainerCallback):
    """Fault injection: turns one LoRA weight of the given trial into NaN at step 2."""

    def __init__(self, sweep_ref: list, trial_number: int):
        self.sweep_ref = sweep_ref
        self.trial_number = trial_number

    def on_step_end(self, args, state, control, model=None, **kwargs):
        current = self.sweep_ref[0].progress.current.get("number")
        if current == self.trial_number and state.global_step == 2:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_B" in n).fill_(float("nan"))


def test_nan_loss_fails_one_trial_and_the_sweep_goes_on(tmp_path, monkeypatch):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    mlflow.set_tracking_uri(tracking)
    register_configs()
    overrides = ["+sweep=targets", "sweep.study_name=nan", "sweep.n_trials=3", "train.logging_steps=1", *TINY]
    holder: list = []
    with initialize_config_dir(config_dir=CONF, version_base=None):
        sweep = Sweep(compose("config", overrides=overrides), overrides, console_progress=False,
                      trial_callbacks=[PoisonTrial(holder, trial_number=1)])
        holder.append(sweep)
        summary = sweep.run()
    assert summary.counts == {"COMPLETE": 2, "FAIL": 1}
    assert sweep.study.trials[1].state == TrialState.FAIL
    run = MlflowClient(tracking).get_run(sweep.study.trials[1].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "nan" in run.data.tags["lora_lab.error"].lower()
    mlflow.set_tracking_uri(None)
