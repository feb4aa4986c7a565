"""Several workers on one study, killed workers, Ctrl-C and NaN trials: real processes, a real
``mlflow server`` over HTTP, real journal / sqlite / PostgreSQL Optuna storages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
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
from tiny_trial import TINY
from transformers import TrainerCallback

from lora_lab import names
from lora_lab.config import register_configs
from lora_lab.grid_order import spread_order
from lora_lab.sweep import Sweep, open_storage

REPO = Path(__file__).resolve().parent.parent
CONF = str(REPO / "conf")
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _env(tracking_uri: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _trial_runs(client: MlflowClient, study: str):
    experiment = client.get_experiment_by_name(study)
    return [
        r
        for r in client.search_runs([experiment.experiment_id], max_results=1000)
        if r.data.tags.get("lora_lab.kind") == "trial"
    ]


def _no_running_runs(client: MlflowClient, study: str) -> None:
    experiment = client.get_experiment_by_name(study)
    running = [
        r.info.run_name
        for r in client.search_runs([experiment.experiment_id], max_results=1000)
        if r.info.status == "RUNNING"
    ]
    assert running == [], running


def _sweep_cmd(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "lora_lab.sweep", *overrides]


@pytest.mark.slow
def test_three_random_workers_run_only_distinct_configurations(mlflow_server, tmp_path):
    """Three workers of one multirun (Hydra's local launcher) with the random sampler over a
    12-point categorical space on PostgreSQL: every worker draws its own values, and a value drawn
    twice is caught before it trains."""
    study = f"random3_{uuid.uuid4().hex[:8]}"
    n_trials = 6
    cmd = _sweep_cmd(
        "+sweep=targets",
        f"sweep.study_name={study}",
        "sweep.sampler.name=random",
        f"sweep.storage={PG_URL}",
        f"sweep.n_trials={n_trials}",
        *TINY,
        "sweep.worker=range(3)",
        "--multirun",
        "hydra/launcher=local",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    )
    # no thread setting of the user's: each worker takes its share of the cores (lora_lab.threads)
    env = {k: v for k, v in _env(mlflow_server).items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        loaded = optuna.load_study(study_name=study, storage=PG_URL)
        trials = loaded.get_trials()
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(complete) == n_trials
        assert len({tuple(sorted(t.params.items())) for t in complete}) == n_trials  # no configuration twice
        assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        others = [t for t in trials if t.state != TrialState.COMPLETE]  # proposals caught as duplicates/surplus
        assert all(t.user_attrs["lora_lab.outcome"] in ("duplicate", "surplus") for t in others)
        assert len({t.user_attrs["worker_pid"] for t in complete}) >= 2  # the work really was shared
        client = MlflowClient(mlflow_server)
        runs = _trial_runs(client, study)
        assert len(runs) == n_trials and {r.info.status for r in runs} == {"FINISHED"}  # duplicates never trained
        assert len({r.data.tags["lora_lab.config_id"] for r in runs}) == n_trials
        cores = len(os.sched_getaffinity(0))
        assert {r.data.tags[names.TAG_THREADS] for r in runs} == {str(max(1, cores // 3))}
        assert {r.data.tags[names.TAG_THREADS_SET_BY] for r in runs} == {
            f"lora_lab policy: {cores} cores / 3 local workers"
        }
        assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1  # one parent run for all workers
        assert client.get_run(runs[0].data.tags["mlflow.parentRunId"]).info.status == "FINISHED"
        _no_running_runs(client, study)
    finally:
        optuna.delete_study(study_name=study, storage=PG_URL)


@pytest.mark.slow
def test_two_tpe_workers_run_each_configuration_with_every_seed(mlflow_server, tmp_path):
    """Two worker processes started by hand (as on two nodes) with TPE on a journal file:
    ``n_trials`` counts configurations, and each runs with every seed exactly once."""
    study = f"tpe2_{uuid.uuid4().hex[:8]}"
    journal = tmp_path / "study.journal"
    common = [
        "+sweep=targets",
        f"sweep.study_name={study}",
        "sweep.sampler.name=tpe",
        f"sweep.storage={journal}",
        "sweep.n_trials=3",
        "sweep.seeds=2",
        *TINY,
        "sweep.cpu_threads=1",
    ]
    procs = [
        subprocess.Popen(
            _sweep_cmd(*common, f"sweep.worker={w}"),
            cwd=tmp_path,
            env=_env(mlflow_server),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for w in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    trials = optuna.load_study(study_name=study, storage=open_storage(str(journal))).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    slots = sorted(t.user_attrs["lora_lab.slot"] for t in complete)
    assert len(slots) == 6 and len(set(slots)) == 6  # 3 configurations x 2 seeds, each once
    by_config: dict[str, set[int]] = {}
    for t in complete:
        by_config.setdefault(t.user_attrs["lora_lab.config_id"], set()).add(t.user_attrs["lora_lab.seed"])
    assert by_config and all(seeds == {0, 1} for seeds in by_config.values()) and len(by_config) == 3
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.user_attrs["worker_pid"] for t in complete}) == 2
    client = MlflowClient(mlflow_server)
    runs = _trial_runs(client, study)
    assert sorted((r.data.tags["lora_lab.config_id"], r.data.params["train.seed"]) for r in runs) == sorted(
        (t.user_attrs["lora_lab.config_id"], str(t.user_attrs["lora_lab.seed"])) for t in complete
    )
    _no_running_runs(client, study)


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
        time.sleep(0.2)
    raise AssertionError("no trial started in time")


@pytest.mark.slow
def test_sigterm_mid_trial_then_the_same_command_completes_the_grid(tmp_path):
    """SLURM preemption: SIGTERM in the middle of a trial of a grid, then the same command again.
    The interrupted trial is not counted, its MLflow run ends KILLED, and the second run completes
    the whole grid with every point once."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    longer = [o if not o.startswith("train.max_steps") else "train.max_steps=40" for o in TINY]
    cmd = _sweep_cmd(
        "+sweep=targets",
        "sweep.study_name=preempt",
        f"sweep.storage={storage}",
        "sweep.n_trials=3",
        *longer,
        "train.eval_every=20",
    )
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=_env(tracking),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    victim = _wait_for_running_trial(storage, "preempt", proc)
    os.kill(proc.pid, signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted" in output and "Traceback" not in output
    client = MlflowClient(tracking)
    killed = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED" and killed.data.tags["lora_lab.outcome"] == "interrupted"
    assert client.get_run(killed.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    first = optuna.load_study(study_name="preempt", storage=storage).trials[victim.number]
    assert first.state == TrialState.FAIL and first.user_attrs["lora_lab.outcome"] == "interrupted"

    again = subprocess.run(cmd, cwd=tmp_path, env=_env(tracking), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = optuna.load_study(study_name="preempt", storage=storage).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    targets = {"lora.targets": ["qv", "attn", "mlp", "all_linear"], "lora.r": [2, 8, 32]}
    first_3 = [(p["lora.targets"], p["lora.r"]) for p in spread_order(targets, 0)[:3]]  # the grid's first 3 points
    assert sorted((t.params["lora.targets"], t.params["lora.r"]) for t in complete) == sorted(first_3)
    assert victim.params in [t.params for t in complete]  # the interrupted point ran again, once
    assert [t.state for t in trials if t.state != TrialState.COMPLETE] == [TrialState.FAIL]
    runs = _trial_runs(client, "preempt")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3 + ["KILLED"]
    _no_running_runs(client, "preempt")
    assert client.get_run(killed.data.tags["mlflow.parentRunId"]).info.status == "FINISHED"


@pytest.mark.slow
def test_killed_worker_trial_is_found_and_restart_completes_without_duplicates(tmp_path, monkeypatch):
    """SIGKILL (no chance to clean up): the restarted sweep finds the dead worker's RUNNING trial,
    ends its MLflow run KILLED (worker_lost) and runs its configuration again."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    overrides = ["+sweep=targets", "sweep.study_name=killed", f"sweep.storage={storage}", "sweep.n_trials=3"]
    # the restart is the same command: a study keeps one definition (train.max_steps included), so
    # the trials are long enough (40 steps) to be killed mid-trial, and the restart runs them in full
    longer = [o if not o.startswith("train.max_steps") else "train.max_steps=40" for o in TINY]
    proc = subprocess.Popen(
        _sweep_cmd(*overrides, *longer),
        cwd=tmp_path,
        env=_env(tracking),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    victim = _wait_for_running_trial(storage, "killed", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    mlflow.set_tracking_uri(tracking)
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):  # the restarted sweep, no grace period
        summary = Sweep(
            compose("config", overrides=overrides + longer), overrides + longer, console_progress=False
        ).run()

    loaded = optuna.load_study(study_name="killed", storage=storage)
    killed = loaded.trials[victim.number]
    assert killed.state == TrialState.FAIL
    complete = [t for t in loaded.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and summary.counts == {"COMPLETE": 3, "WORKER_LOST": 1}
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # nothing ran twice
    assert killed.params in [t.params for t in complete]  # ... and nothing was lost
    client = MlflowClient(tracking)
    lost = client.get_run(victim.user_attrs["mlflow_run_id"])
    assert lost.info.status == "KILLED" and lost.data.tags["lora_lab.outcome"] == "worker_lost"
    assert sorted(r.info.status for r in _trial_runs(client, "killed")) == ["FINISHED"] * 3 + ["KILLED"]
    _no_running_runs(client, "killed")
    mlflow.set_tracking_uri(None)  # and monkeypatch puts $MLFLOW_TRACKING_URI back (None alone unsets it)


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
        sweep = Sweep(
            compose("config", overrides=overrides),
            overrides,
            console_progress=False,
            trial_callbacks=[PoisonTrial(holder, trial_number=1)],
        )
        holder.append(sweep)
        summary = sweep.run()
    assert summary.counts == {"COMPLETE": 2, "FAIL": 1}
    assert sweep.study.trials[1].user_attrs["lora_lab.outcome"] == "error"  # a result: not run again
    assert sweep.study.trials[1].state == TrialState.FAIL
    run = MlflowClient(tracking).get_run(sweep.study.trials[1].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and "nan" in run.data.tags["lora_lab.error"].lower()
    mlflow.set_tracking_uri(None)  # and monkeypatch puts $MLFLOW_TRACKING_URI back (None alone unsets it)


def test_a_signal_swallowed_in_a_weakref_callback_stays_pending_and_prints_no_traceback():
    """SIGTERM that lands while a weakref callback runs: Python swallows the KeyboardInterrupt raised
    there. The sweep keeps it pending (the next checkpoint raises it) and prints no "Exception ignored"
    traceback, which the SIGTERM test above once caught as a flaky failure. A real process and a real signal."""
    script = textwrap.dedent(
        """
        import os, signal, sys, weakref
        from lora_lab.interrupts import INTERRUPTS
        INTERRUPTS.install()

        class Thing:
            pass

        def callback(_):
            os.kill(os.getpid(), signal.SIGTERM)  # delivered inside the callback: its raise is swallowed
            for _ in range(1000):
                pass

        INTERRUPTS.interruptible = True
        thing = Thing()
        ref = weakref.ref(thing, callback)
        del thing  # runs the callback now
        INTERRUPTS.interruptible = False
        print("pending", INTERRUPTS.pending, flush=True)
        try:
            INTERRUPTS.checkpoint()
        except KeyboardInterrupt:
            print("raised at the checkpoint", flush=True)
            sys.exit(130)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert f"pending {int(signal.SIGTERM)}" in proc.stdout and "raised at the checkpoint" in proc.stdout
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
