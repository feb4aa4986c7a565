"""A study is never lost and never silently wrong: torn journals, a full disk, failures that are not the
configuration's, and a study name reused with other settings. Real journal files, real sweeps of the
built-in model (1-2 steps a trial), a real sqlite MLflow store; faults are real (a torn file, a full
tmpfs) or raised where the real one would be (an OSError from inside a trial)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from tiny_trial import TINY
from transformers import TrainerCallback

from lora_lab import names, storage
from lora_lab.config import register_configs
from lora_lab.definition import DefinitionChangedError
from lora_lab.faults import EnvironmentFailure, environment_cause
from lora_lab.study import DONE, standing
from lora_lab.sweep import Sweep

REPO = Path(__file__).resolve().parent.parent
CONF = str(REPO / "conf")
FAST = [o for o in TINY if not o.startswith(("train.max_steps", "train.eval_every", "train.logging_steps"))] + [
    "train.max_steps=2",
    "train.eval_every=2",
    "train.logging_steps=1",
    "train.eval_generate=0",
]
GRID = ["+sweep=targets", "sweep.seeds=1"]
"""A grid of target-module sets at one rank: 2 configurations with the choices below."""
CHOICES = {"lora.targets": ["qv", "mlp"], "lora.r": [2]}


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)  # MLflow's own setting cleared (this unsets the variable; monkeypatch restores it)


def sweep_of(overrides: list[str], choices: dict | None = CHOICES, derived: dict | None = None, **kwargs) -> Sweep:
    """A sweep composed as the command line does; ``choices`` and ``derived`` set dotted keys of the
    preset, which Hydra's command line cannot address (users write their own preset file instead)."""
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("config", overrides=GRID + FAST + overrides)
        for name, values in (choices or {}).items():
            cfg.sweep.params[name].choices = values
        for name, expression in (derived or {}).items():
            cfg.sweep.derived[name] = expression
        return Sweep(cfg, GRID + FAST + overrides, console_progress=False, **kwargs)


def run(overrides: list[str], choices: dict | None = CHOICES, **kwargs):
    sweep = sweep_of(overrides, choices, **kwargs)
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        sweep.setup()
        return sweep, sweep.run()


def slots_done(study: optuna.Study) -> list[str]:
    return sorted(t.user_attrs[names.TAG_SLOT] for t in study.get_trials() if standing(t) == DONE)


def no_running(uri: str, study: optuna.Study) -> None:
    assert not [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    client = MlflowClient(uri)
    for exp in client.search_experiments():
        assert not client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'")


def journal_study(path: Path, name: str, n: int = 3) -> None:
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    study = optuna.create_study(study_name=name, storage=optuna.storages.JournalStorage(backend))
    for i in range(n):
        study.enqueue_trial({"x": i})
        trial = study.ask()
        trial.suggest_int("x", 0, 9)
        study.tell(trial, float(i))


# -- torn journals ---------------------------------------------------------------------------------


def test_a_torn_last_record_is_moved_aside_under_the_journal_lock(tmp_path):
    path = tmp_path / "optuna.journal"
    journal_study(path, "s")
    whole = path.read_bytes()
    last = whole[:-1].rfind(b"\n") + 1
    cut = last + (len(whole) - last) // 2
    path.write_bytes(whole[:cut])  # a write cut in the middle of the last record

    line = storage.repair_journal(path)
    assert line is not None and "torn write" in line
    sides = list(tmp_path.glob("optuna.journal.torn-*"))
    assert len(sides) == 1 and sides[0].read_bytes() == whole[last:cut]  # kept, never deleted
    assert path.read_bytes() == whole[:last]
    assert not (tmp_path / "optuna.journal.lock").exists()  # the lock was released
    study = optuna.load_study(study_name="s", storage=storage.open_storage(str(path)))
    assert len(study.get_trials()) == 3  # every complete record loads; the torn one was the last tell
    study.tell(study.ask(), 9.0)  # and the study can be written again
    assert storage.repair_journal(path) is None


def test_a_corrupt_line_inside_a_journal_is_refused_and_nothing_is_changed(tmp_path, tracking):
    path = tmp_path / "sweeps" / "targets" / "optuna.journal"
    path.parent.mkdir(parents=True)
    journal_study(path, "targets")
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2][:10] + b"#garbage#" + lines[2][10:]
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)
    with pytest.raises(storage.StorageError) as info:
        sweep_of([]).setup()
    message = str(info.value)
    assert "line 3 of" in message and "damaged" in message and "new sweep.study_name" in message
    assert "\n" not in message
    assert path.read_bytes() == damaged and not list(path.parent.glob("*.torn-*"))
    assert MlflowClient(tracking).search_experiments(filter_string="name = 'targets'") == []


@pytest.mark.slow
def test_a_journal_torn_mid_record_is_recovered_by_the_same_command(tmp_path, tracking):
    """The whole command, then its journal cut in the middle of its last record (as a full disk or a
    crash leaves it), then the same command: every configuration complete exactly once."""
    cmd = [sys.executable, "-m", "lora_lab.sweep", *GRID, *FAST, "sweep.n_trials=2"]
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert first.returncode == 0, first.stderr[-2000:]
    path = tmp_path / "sweeps" / "targets" / "optuna.journal"
    whole = path.read_bytes()
    last = whole[:-1].rfind(b"\n") + 1
    path.write_bytes(whole[: last + (len(whole) - last) // 2])

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("torn write") == 1 and "Traceback" not in again.stderr
    study = optuna.load_study(study_name="targets", storage=storage.open_storage(str(path)))
    done = slots_done(study)
    assert len(done) == 2 and len(set(done)) == 2  # the grid's first two points: each once
    assert all(t.state == TrialState.COMPLETE for t in study.get_trials() if standing(t) == DONE)
    no_running(tracking, study)


# -- failures of the environment -------------------------------------------------------------------


class FailOnce(TrainerCallback):
    """Raises ``error`` at the first step of the sweep's ``which``-th trial (counting from 1)."""

    def __init__(self, error: BaseException, which: int = 2):
        self.error, self.which, self.seen = error, which, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.seen += 1

    def on_step_end(self, args, state, control, **kwargs):
        if self.seen == self.which:
            raise self.error


def test_an_environment_failure_leaves_its_slot_open_and_the_same_command_runs_it(tmp_path, tracking):
    no_space = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(EnvironmentFailure) as info:
        run([], trial_callbacks=[FailOnce(no_space)])
    message = str(info.value)
    assert "no space left on the device" in message and "run the same command again" in message
    study = optuna.load_study(study_name="targets", storage=storage.open_storage("sweeps/targets/optuna.journal"))
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert [t.user_attrs[names.TAG_OUTCOME] for t in failed] == [names.OUTCOME_ENVIRONMENT]
    assert len(slots_done(study)) == 1  # not a result
    no_running(tracking, study)

    sweep, summary = run([])  # the cause is gone: the same command
    assert summary.counts == {"COMPLETE": 2, "ENVIRONMENT": 1} and summary.unfinished == []
    assert len(slots_done(sweep.study)) == 2


def test_a_configuration_failure_is_kept_and_retry_failed_runs_it_again(tmp_path, tracking):
    nan = FailOnce(ValueError("the model refuses this value"))
    _, summary = run([], trial_callbacks=[nan])
    assert summary.counts == {"COMPLETE": 1, "FAIL": 1} and summary.unfinished == ["search: 1 failed"]
    _, summary = run([])
    assert summary.counts == {"COMPLETE": 1, "FAIL": 1}  # a result: not run again
    sweep, summary = run(["sweep.retry_failed=true"])
    assert summary.counts == {"COMPLETE": 2, "RETRIED": 1} and summary.unfinished == []


def test_causes_are_told_apart():
    import torch

    from lora_lab.errors import ConfigError, DataError, TrialFailedError

    assert environment_cause(OSError(errno.ENOSPC, "full")) == "no space left on the device"
    assert environment_cause(PermissionError(errno.EACCES, "denied")) == "permission denied"
    assert environment_cause(FileNotFoundError(errno.ENOENT, "gone")) == "a file or folder is missing"
    assert environment_cause(DataError("data.path: no such file")) is not None
    assert environment_cause(ConnectionRefusedError()) == "a service cannot be reached"
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = OSError(errno.ENOSPC, "full")
    assert environment_cause(wrapped) == "no space left on the device"
    for own in (
        TrialFailedError("loss became nan"),
        ConfigError("lora.targets", "x", "y"),
        torch.OutOfMemoryError("CUDA out of memory"),
        MemoryError(),
        ValueError("bad value"),
    ):
        assert environment_cause(own) is None, own


# -- one study, one definition -------------------------------------------------------------------


def test_a_reused_study_name_with_other_settings_is_refused_before_anything_is_created(tmp_path, tracking):
    run([], choices={"lora.targets": ["qv"], "lora.r": [2]})
    path = tmp_path / "sweeps" / "targets" / "optuna.journal"
    before = path.read_bytes()
    client = MlflowClient(tracking)
    runs = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    one = {"lora.targets": ["qv"], "lora.r": [2]}
    for overrides, choices, derived, expected in (
        (["train.max_steps=3"], one, None, "train.max_steps: 2 in the study, 3 now"),
        (["data=reverse"], one, None, "data.task: 'cipher_swap' in the study"),
        (
            [],
            {"lora.targets": ["qv"], "lora.r": [4]},
            None,
            "sweep.params.lora.r: choices [2] in the study, choices [4] now",
        ),
        (
            [],
            one,
            {"lora.lora_alpha": "4 * lora.r"},
            "sweep.derived.lora.lora_alpha: '2 * lora.r' in the study, '4 * lora.r' now",
        ),
    ):
        with pytest.raises(DefinitionChangedError) as info:
            sweep_of(overrides, choices, derived).setup()
        assert expected in str(info.value) and "new sweep.study_name" in str(info.value), str(info.value)
        assert path.read_bytes() == before  # refused before anything was created or written
        assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == runs

    sweep, summary = run(["sweep.seeds=2"], choices={"lora.targets": ["qv"], "lora.r": [2]})  # a safe extension
    assert summary.counts == {"COMPLETE": 2}
    ids = {t.user_attrs[names.TAG_CONFIG_ID] for t in sweep.study.get_trials()}
    assert len(ids) == 1  # the new seed joins its configuration


def test_the_configuration_id_covers_the_whole_trial_config_but_the_seed(tmp_path, tracking):
    a = sweep_of(["sweep.study_name=a"])
    b = sweep_of(["sweep.study_name=b", "train.max_steps=3"])
    c = sweep_of(["sweep.study_name=c", "train.seed=7"])
    for sweep in (a, b, c):
        register_configs()
        with initialize_config_dir(config_dir=CONF, version_base=None):
            sweep.check_inputs()
    point = {"lora.targets": "qv", "lora.r": 2}
    assert a._config_id(point) != b._config_id(point)  # other trainings: never averaged as seeds
    assert a._config_id(point) == c._config_id(point)  # the seed alone does not make a configuration


def test_a_study_made_before_definitions_were_kept_goes_on_and_gets_one(tmp_path, tracking):
    """An older study (no stored definition, ids from the searched values alone) resumes with its
    ids: nothing runs twice, and its definition is stored from then on."""
    from lora_lab import search_space

    one = {"lora.targets": ["qv"], "lora.r": [2]}
    sweep, _ = run(["sweep.study_name=new"], choices=one)
    legacy_id = search_space.config_id({"lora.targets": "qv", "lora.r": 2})
    path = "sweeps/old/optuna.journal"
    Path(path).parent.mkdir(parents=True)
    old = optuna.create_study(study_name="old", storage=storage.open_storage(path))
    for t in sweep.study.get_trials():  # the trial as an older lora_lab recorded it
        attrs = {
            **t.user_attrs,
            names.TAG_CONFIG_ID: legacy_id,
            names.TAG_SLOT: f"{legacy_id}/{t.user_attrs[names.TAG_SEED]}",
        }
        old.add_trial(
            optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=t.value, user_attrs=attrs)
        )
    again, summary = run(["sweep.study_name=old"], choices=one)
    assert summary.counts == {"COMPLETE": 1}  # nothing ran again
    assert again.config_basis == "" and again._config_id({"lora.targets": "qv", "lora.r": 2}) == legacy_id
    stored = optuna.load_study(study_name="old", storage=storage.open_storage(path)).user_attrs
    assert stored[names.ATTR_DEFINITION]["trial"]["train.max_steps"] == 2
    with pytest.raises(DefinitionChangedError, match="train.max_steps: 2 in the study, 3 now"):
        sweep_of(["sweep.study_name=old", "train.max_steps=3"], choices=one).setup()


class FillTheDisk(TrainerCallback):
    """Fills the file system of ``folder`` to the last byte during the sweep's ``which``-th trial, as
    another process writing to the same disk would."""

    def __init__(self, folder: Path, which: int = 2):
        self.folder, self.which, self.seen = folder, which, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.seen += 1

    def on_step_end(self, args, state, control, **kwargs):
        if self.seen != self.which or (self.folder / "filler").exists():
            return
        with open(self.folder / "filler", "wb") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB file system of its own (a tmpfs; mounting one needs root), unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_a_disk_that_fills_up_during_a_sweep_leaves_nothing_running_and_the_rerun_completes(
    small_disk, tracking, monkeypatch
):
    """The sweep's folder (journal, adapters, MLflow artifacts) on a 3 MiB disk that fills up during
    its second trial: the trial is no result, nothing stays RUNNING in Optuna or MLflow, the sweep
    exits naming the cause; with the space freed, the same command completes every configuration
    exactly once."""
    monkeypatch.chdir(small_disk)
    with pytest.raises(EnvironmentFailure, match="no space left on the device"):
        run(["train.save_adapter=true"], trial_callbacks=[FillTheDisk(small_disk)])
    path = small_disk / "sweeps" / "targets" / "optuna.journal"
    study = optuna.load_study(study_name="targets", storage=storage.open_storage(str(path)))
    no_running(tracking, study)
    assert [t.user_attrs.get(names.TAG_OUTCOME) for t in study.get_trials() if t.state == TrialState.FAIL] == [
        names.OUTCOME_ENVIRONMENT
    ]
    (small_disk / "filler").unlink()  # the user frees some space

    sweep, summary = run(["train.save_adapter=true"])
    assert summary.unfinished == [] and summary.counts.get("COMPLETE") == 2
    done = slots_done(sweep.study)
    assert len(done) == 2 and len(set(done)) == 2
    no_running(tracking, sweep.study)


def test_a_failure_to_log_the_best_trial_leaves_nothing_running(tmp_path, tracking, monkeypatch):
    """MLflow refuses the sweep's summary at the very end: the parent run still ends (FAILED), no trial
    or run stays RUNNING, and the command says so in one paragraph."""
    from lora_lab import sweep as sweep_module

    def refused(*args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied: 'mlruns/1/.../trials.json'")

    monkeypatch.setattr(sweep_module.track, "log_sweep_summary", refused)
    with pytest.raises(sweep_module.SweepFailedError, match="MLflow could not record the sweep's end") as info:
        run([], choices={"lora.targets": ["qv"], "lora.r": [2]})
    assert "\n" not in str(info.value)
    study = optuna.load_study(study_name="targets", storage=storage.open_storage("sweeps/targets/optuna.journal"))
    no_running(tracking, study)
    parent = MlflowClient(tracking).get_run(study.user_attrs[names.ATTR_PARENT_RUN])
    assert parent.info.status == "FAILED"
