"""Sweeps as jobs of a real SLURM cluster: ``--multirun hydra/launcher=slurm_gpu`` against the one-node
cluster tests/slurm/start.sh brings up on 127.0.0.1 (no accounting database, like the clusters the
launcher's squeue watching is for), with a journal-file study and a real ``mlflow server``.

The commands are docs/workers.md's SLURM commands with the GPU count set to 0, the ``debug`` partition, one
CPU and 2 GB per job and a few short trials of the built-in model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

TINY = [
    "data.n_train=96",
    "data.n_eval=16",
    "train.max_steps=6",
    "train.eval_every=3",
    "train.batch_size=16",
    "train.eval_generate=4",
]
"""docs/workers.md's "Trying it on one machine" trials."""
LONGER = [
    "data.n_train=96",
    "data.n_eval=16",
    "train.max_steps=800",
    "train.eval_every=400",
    "train.batch_size=16",
    "train.eval_generate=4",
    "train.logging_steps=10",
    "tracking.log_adapter=false",
]
"""Trials of several seconds on one idle core (much longer on a loaded one), so a signal lands in one."""
LONGEST = [o.replace("max_steps=800", "max_steps=5000").replace("eval_every=400", "eval_every=2500") for o in LONGER]
"""Trials far longer than a one-minute job, however fast the machine."""

JOBS = [
    "hydra.launcher.gpus_per_task=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.partition=debug",
]


def sweep_command(tmp_path: Path, study: str, n_trials: int, workers: int, trial: list[str], *launcher: str):
    return [
        sys.executable,
        "-m",
        "lora_lab.sweep",
        "+sweep=rank_alpha",
        f"sweep.study_name={study}",
        f"sweep.n_trials={n_trials}",
        "sweep.seeds=1",  # one trial per grid point, no baselines: the waves below count trials
        "sweep.baselines=[]",
        *trial,
        "sweep.cpu_threads=1",
        f"sweep.storage={tmp_path / 'study.journal'}",
        f"sweep.worker=range({workers})",
        "--multirun",
        "hydra/launcher=slurm_gpu",
        *JOBS,
        *launcher,
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]


class Launch:
    """The launching command in the background, its output collected line by line."""

    def __init__(self, cmd: list[str], cwd: Path, tracking_uri: str):
        env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def job_ids(self, count: int, timeout: float = 300) -> list[str]:
        """The ids the command reports for its jobs, e.g. ``["12"]`` (one job) or ``["12_0", "12_1"]`` (an array)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = re.findall(r"slurm job (\d+(?:_\d+)?): submitted", self.output)
            if len(ids) >= count:
                return ids
            assert self.proc.poll() is None, self.output[-3000:]
            time.sleep(0.5)
        raise AssertionError("no job submitted in time:\n" + self.output[-3000:])

    def wait(self, timeout: float = 480) -> str:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=30)
        return self.output


def squeue_state(job_id: str) -> str:
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=all", "--format=%T", "--jobs", job_id],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip()


def wait_for_running_trial(storage: str, study: str, launch: Launch, timeout: float = 300):
    """The first trial that is RUNNING with its MLflow run created: the job is in the middle of a trial."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert launch.proc.poll() is None, launch.output[-3000:]
        try:
            loaded = optuna.load_study(
                study_name=study,
                storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)),
            )
            running = [t for t in loaded.get_trials(states=(TrialState.RUNNING,)) if "mlflow_run_id" in t.user_attrs]
            if running:
                return running[0]
        except (KeyError, FileNotFoundError):
            pass  # the study is not created yet
        time.sleep(0.3)
    raise AssertionError("no trial started in time:\n" + launch.output[-3000:])


def check_study(tmp_path: Path, study: str, tracking_uri: str, n_trials: int):
    """Exactly ``n_trials`` distinct configurations complete under one MLflow parent run, and nothing
    left RUNNING in Optuna or MLflow. Returns the study's trials and its MLflow trial runs."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
    )
    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    assert len(complete) == n_trials
    assert len({tuple(sorted(t.params.items())) for t in complete}) == n_trials  # no configuration twice

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    trial_runs = [r for r in runs if r.data.tags.get("lora_lab.kind") == "trial"]
    assert len({r.data.tags["mlflow.parentRunId"] for r in trial_runs}) == 1  # one parent run for all jobs
    finished = [r for r in trial_runs if r.info.status == "FINISHED"]
    assert sorted(r.info.run_id for r in finished) == sorted(t.user_attrs["mlflow_run_id"] for t in complete)
    return trials, trial_runs


def test_slurm_gpu_selects_the_lora_lab_launcher_plugin():
    """Hydra finds the launcher in the hydra_plugins namespace package the project ships."""
    from hydra import compose, initialize_config_dir
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    from lora_lab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(Path(__file__).parent.parent / "conf"), version_base=None):
        cfg = compose("config", overrides=["hydra/launcher=slurm_gpu"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert target == "hydra_plugins.lora_lab_slurm_launcher.LoraLabSlurmLauncher"
    assert target in [f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Launcher)]


@pytest.mark.slurm
def test_multirun_jobs_share_one_study_and_an_array_runs_in_waves(slurm_cluster, mlflow_server, tmp_path):
    """docs/workers.md's command: three jobs, at most two at a time, so the third waits for the array
    limit and starts when one of the first two ends; four trials, one parent run, a report over all."""
    study = f"slurm_{uuid.uuid4().hex[:8]}"
    launch = Launch(
        sweep_command(tmp_path, study, 4, 3, TINY, "hydra.launcher.array_parallelism=2"), tmp_path, mlflow_server
    )
    output = launch.wait()
    assert launch.proc.returncode == 0, output[-4000:]
    assert "sacct" not in output  # no "Bypassing sacct error" warnings

    ids = re.findall(r"slurm job (\d+_\d+): submitted; log (\S+)", output)
    assert len(ids) == 3 and all(Path(log).is_file() for _, log in ids)
    third = ids[2][0]
    assert f"slurm job {third}: PENDING (JobArrayTaskLimit)" in output
    first_end = min(output.index(f"slurm job {job}: COMPLETED") for job, _ in ids[:2])
    assert output.index(f"slurm job {third}: RUNNING") > first_end  # the second wave
    assert all(f"slurm job {job}: COMPLETED" in output for job, _ in ids)

    _, trial_runs = check_study(tmp_path, study, mlflow_server, 4)
    assert len({r.data.tags.get("lora_lab.worker") for r in trial_runs}) >= 2  # the jobs shared the work

    report = subprocess.run(
        [sys.executable, "-m", "lora_lab.report", f"study={study}"],
        cwd=tmp_path,
        env=dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "reports" / study).glob("*.csv"))
    assert all(r.info.run_id in written for r in trial_runs)  # the report covers every trial


@pytest.mark.slurm
def test_requeue_mid_trial_resumes_with_every_configuration_once(slurm_cluster, mlflow_server, tmp_path):
    """``scontrol requeue`` (what SLURM does to a preempted job) while a trial trains: the trial is
    ended and recorded, the requeued job runs the rest of the study and the command exits 0."""
    study = f"requeue_{uuid.uuid4().hex[:8]}"
    launch = Launch(sweep_command(tmp_path, study, 2, 1, LONGER), tmp_path, mlflow_server)
    (job,) = launch.job_ids(1)
    victim = wait_for_running_trial(str(tmp_path / "study.journal"), study, launch)
    time.sleep(0.5)  # into training
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)
    deadline = time.monotonic() + 120
    while squeue_state(job) != "PENDING":  # back in the queue once the first run has exited
        assert time.monotonic() < deadline, launch.output[-3000:]
        time.sleep(0.5)
    # SLURM holds a requeued job for two minutes (its BeginTime); an administrator may start it at once
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=60)
    output = launch.wait()
    assert launch.proc.returncode == 0, output[-4000:]
    assert f"slurm job {job}: COMPLETED" in output
    log = (tmp_path / "multirun" / ".submitit" / job / f"{job}_0_log.out").read_text()
    assert log.count("Starting with JobEnvironment") == 2  # the same job ran again after its requeue

    trials, trial_runs = check_study(tmp_path, study, mlflow_server, 2)
    client = MlflowClient(mlflow_server)
    assert client.get_run(victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert victim.params in [t.params for t in trials if t.state == TrialState.COMPLETE]  # nothing lost


@pytest.mark.slurm
def test_time_limit_ends_the_trial_cleanly_and_the_same_command_resumes(slurm_cluster, mlflow_server, tmp_path):
    """A job with a one-minute limit gets SLURM's warning signal (``signal_delay_s`` before the limit)
    while training: the trial is ended and recorded, the job is not requeued (``max_num_timeout=0``) and
    the command names it with its log; the same command with more time finishes the study (with the same
    trials: a study keeps one definition, so a rerun with shorter trials would be refused; one
    configuration keeps the rerun short)."""
    study = f"timeout_{uuid.uuid4().hex[:8]}"
    n_trials = 1
    limited = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=1", "hydra.launcher.max_num_timeout=0"]
    launch = Launch(sweep_command(tmp_path, study, n_trials, 1, LONGEST, *limited), tmp_path, mlflow_server)
    (job,) = launch.job_ids(1)
    output = launch.wait()
    assert launch.proc.returncode == 1, output[-4000:]
    assert f"slurm job {job} ended FAILED with " in output and "timed-out" in output, output[-4000:]
    assert f".submitit/{job}/{job}_0_log.err" in output
    logs = "".join(p.read_text() for p in (tmp_path / "multirun" / ".submitit" / job).glob("*_log.*"))
    assert "SLURM warning signal USR2" in logs and "KeyboardInterrupt" in logs  # a trial was cut short by it

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
    )
    first = optuna.load_study(study_name=study, storage=storage).get_trials()
    assert not [t for t in first if t.state == TrialState.RUNNING]
    assert len([t for t in first if t.state == TrialState.COMPLETE]) < n_trials
    client = MlflowClient(mlflow_server)
    interrupted = [t for t in first if "mlflow_run_id" in t.user_attrs and t.state != TrialState.COMPLETE]
    assert interrupted and all(
        client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "KILLED" for t in interrupted
    )

    again = Launch(
        sweep_command(tmp_path, study, n_trials, 1, LONGEST, "hydra.launcher.timeout_min=10"), tmp_path, mlflow_server
    )
    output = again.wait()
    assert again.proc.returncode == 0, output[-4000:]
    trials, _ = check_study(tmp_path, study, mlflow_server, n_trials)
    complete = [t.params for t in trials if t.state == TrialState.COMPLETE]
    assert all(t.params in complete for t in interrupted)  # the interrupted configurations ran in the end
