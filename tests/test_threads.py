"""lora_lab's thread policy (lora_lab.threads): OMP_WAIT_POLICY=PASSIVE before torch loads and as
many torch threads as the cores a process owns, unless the user set them; checked in real
``python -m lora_lab.train`` processes (the MLflow tags they log) and in the cores counted for local
workers and SLURM jobs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lora_lab import names, threads

REPO = Path(__file__).resolve().parent.parent
THREAD_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", threads.POLICY_ENV, threads.LOCAL_WORKERS_ENV)


def _clean_env(**extra: str) -> dict[str, str]:
    """The test session's environment without any thread setting (the suite itself runs with them set)."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS and not k.startswith(("SLURM_", "SUBMITIT_"))}
    env.pop("LORA_LAB_SET_OMP_WAIT_POLICY", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


PROBE = (
    "import os, sys; import lora_lab; had_torch = 'torch' in sys.modules; "
    "from lora_lab import threads; a = threads.apply(); "
    "print(had_torch, os.environ.get('OMP_WAIT_POLICY'), a.threads, a.set_by, sep='|')"
)
"""A bare process: was torch loaded before lora_lab set the wait policy, and what apply() decided."""


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """Started together: two one-step trials, one with no thread setting (lora_lab's policy), one with
    the user's own OMP_NUM_THREADS=1 and OMP_WAIT_POLICY=ACTIVE (the tags each logged to MLflow), and
    two bare probes (PROBE), with the policy on and off: {name: tags or the probe's fields}."""
    work = tmp_path_factory.mktemp("threads")
    store = f"sqlite:///{work / 'mlflow.db'}"
    # migrate the store once, so the two processes do not race to create its schema
    MlflowClient(store).search_experiments()
    train = [
        "-m",
        "lora_lab.train",
        "train.max_steps=1",
        "train.eval_every=1",
        "train.eval_generate=0",
        "train.save_adapter=false",
    ]
    cases = {
        "policy": ([*train, "tracking.experiment=threads_policy", f"hydra.run.dir={work / 'p'}"], _clean_env()),
        "user": (
            [*train, "tracking.experiment=threads_user", f"hydra.run.dir={work / 'u'}"],
            _clean_env(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="ACTIVE"),
        ),
        "probe_on": (["-c", PROBE], _clean_env()),
        "probe_off": (["-c", PROBE], _clean_env(**{threads.POLICY_ENV: "off"})),
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, *args],
            cwd=work,
            env={**env, "MLFLOW_TRACKING_URI": store},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, env) in cases.items()
    }
    out = {}
    client = MlflowClient(store)
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        if name.startswith("probe"):
            out[name] = stdout.strip().split("|")
        else:
            experiment = client.get_experiment_by_name(f"threads_{name}")
            (run,) = client.search_runs([experiment.experiment_id])
            out[name] = run.data.tags
    return out


def test_a_train_run_uses_passive_waiting_and_every_core_it_owns(processes):
    tags = processes["policy"]
    cores = len(os.sched_getaffinity(0))
    assert tags[names.TAG_THREADS] == str(cores)
    assert tags[names.TAG_THREADS_SET_BY] == f"lora_lab policy: all {cores} cores"
    assert tags[names.TAG_OMP_WAIT_POLICY] == "PASSIVE (lora_lab policy)"


def test_the_users_own_thread_settings_win(processes):
    tags = processes["user"]
    assert tags[names.TAG_THREADS] == "1"
    assert tags[names.TAG_THREADS_SET_BY] == "OMP_NUM_THREADS=1"
    assert tags[names.TAG_OMP_WAIT_POLICY] == "ACTIVE (set by the user)"


def test_policy_is_set_before_torch_loads_and_can_be_turned_off(processes):
    """Importing lora_lab sets the wait policy before torch is imported (the OpenMP runtime reads it
    once, at load); LORA_LAB_THREAD_POLICY=off leaves OpenMP's and torch's defaults."""
    had_torch, wait, _, set_by = processes["probe_on"]
    assert (had_torch, wait) == ("False", "PASSIVE") and set_by.startswith("lora_lab policy")
    _, wait, _, set_by = processes["probe_off"]
    assert wait == "None" and set_by == f"torch default ({threads.POLICY_ENV}=off)"


def test_an_explicit_config_field_wins_over_the_environment(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_applied", None)  # what this process had applied comes back afterwards
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        applied = threads.apply(configured=2)
        assert (applied.threads, applied.set_by) == (2, "sweep.cpu_threads=2")
        assert threads.tags()[names.TAG_THREADS] == "2"
    finally:
        torch.set_num_threads(before)


def test_cores_owned_by_a_local_worker_and_a_slurm_job(monkeypatch):
    for var in ("SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SUBMITIT_EXECUTOR", threads.LOCAL_WORKERS_ENV):
        monkeypatch.setenv(var, "")  # so that monkeypatch restores each as it was, written below or not
        monkeypatch.delenv(var)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert threads.owned_cores() == (8, "all 8 cores")
    # the launching process of a local multirun counts its jobs for the workers it starts
    threads.note_local_workers(
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        ["+sweep=targets", "sweep.worker=range(3)", "train.seed=1,2"],
    )
    assert os.environ[threads.LOCAL_WORKERS_ENV] == "6"
    monkeypatch.setenv(threads.LOCAL_WORKERS_ENV, "3")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    assert threads.owned_cores() == (2, "8 cores / 3 local workers")
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert threads.owned_cores() == (4, "SLURM allocation (SLURM_CPUS_PER_TASK=4)")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert threads.owned_cores() == (8, "SLURM allocation (CPU affinity)")


def test_a_slurm_launcher_sets_no_local_worker_count(monkeypatch):
    monkeypatch.setenv(threads.LOCAL_WORKERS_ENV, "")
    monkeypatch.delenv(threads.LOCAL_WORKERS_ENV)
    threads.note_local_workers("hydra_plugins.lora_lab_slurm_launcher.LoraLabSlurmLauncher", ["sweep.worker=range(4)"])
    assert threads.LOCAL_WORKERS_ENV not in os.environ
