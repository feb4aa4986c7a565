"""Bad input ends a sweep before any trial trains: one paragraph naming the field and what is allowed,
exit code 2, and no Optuna trial or MLflow run left behind (RUNNING or otherwise).

The real command runs once per bad input (all at once, so the suite pays for about one start-up per
core); the checks' finer cases run in-process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from lora_lab import preflight
from lora_lab.config import ParamSpec, SamplerConfig, SweepConfig, WarmStartConfig
from lora_lab.errors import ConfigError, LoraLabError, UnreachableError
from lora_lab.sweep import to_sweep_config

REPO = Path(__file__).resolve().parent.parent
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
EMPTY_PRESET = """# A preset whose search space is empty.
study_name: empty_space
objectives:
  - metric: eval_loss
    direction: minimize
params: {}
sampler:
  name: random
n_trials: 3
"""


def closed_port() -> int:
    """A local TCP port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def silent_server() -> socket.socket:
    """A local TCP port that completes connections (the kernel's backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def bad_inputs() -> dict[str, tuple[list[str], dict[str, str], list[str]]]:
    """name -> (overrides, environment, texts the error paragraph must hold)."""
    return {
        "storage_form": (
            ["sweep.storage=study.db"],
            {},
            ["Invalid value for 'sweep.storage': 'study.db'", "sqlite:///", "postgresql://", ".journal"],
        ),
        "postgres_down": (
            [f"sweep.storage=postgresql://postgres@127.0.0.1:{closed_port()}/test"],
            {},
            ["Cannot reach 'sweep.storage'", "Connection refused", "timeout 5 s"],
        ),
        "mlflow_down": (
            [],
            {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port()}"},
            ["Cannot reach 'MLFLOW_TRACKING_URI'", "GET /health", "timeout 5 s"],
        ),
        "heartbeat": (
            [],
            {"LORA_LAB_HEARTBEAT_S": "abc"},
            ["Invalid value for 'LORA_LAB_HEARTBEAT_S': 'abc'", "a whole number of seconds >= 1"],
        ),
        "objective": (
            ["sweep.objectives.0.metric=eval_los"],
            {},
            ["Invalid value for 'sweep.objectives.metric': 'eval_los'", "eval_loss, eval_token_accuracy"],
        ),
        "empty_space": (
            ["+sweep=empty_space"],
            {},
            ["Invalid value for 'sweep.params': {}", "at least one searched value"],
        ),
        "max_steps_0": (
            ["train.max_steps=0"],
            {},
            ["Invalid value for 'train.max_steps': 0", ">= 1, or null to train for train.epochs"],
        ),
        "study_name_escape": (
            ["sweep.study_name=../escape"],
            {},
            ["Invalid value for 'sweep.study_name': '../escape'", "one path segment", "no '..'"],
        ),
        "baseline_cannot_run": (
            ["quant=nf4"],  # rank_alpha's full fine-tuning baseline cannot train a 4-bit base
            {},
            ["sweep.baselines: the baseline 'full_ft'", "lora.method", "sweep.baselines=[]"],
        ),
        "journal_unwritable": (
            ["sweep.storage=a_file/optuna.journal"],
            {},
            ["cannot write the study's storage a_file/optuna.journal", "is a file, not a folder"],
        ),
        "mlflow_db_not_a_database": (
            [],
            {"MLFLOW_TRACKING_URI": "sqlite:///broken.db"},
            ["MLFLOW_TRACKING_URI: broken.db is not a usable sqlite database", "file is not a database"],
        ),
        "jsonl_not_utf8": (
            ["data=jsonl", "data.path=latin1.jsonl"],
            {},
            ["latin1.jsonl:2: not UTF-8 text (byte 0xe9"],
        ),
        "train_targets_missing": (
            ["lora.targets=nonexistent"],  # python -m lora_lab.train
            {},
            ["Invalid value for 'lora.targets': 'nonexistent'", "one of qv, attn, mlp, all_linear"],
        ),
        "warm_start_missing": (
            [
                "sweep.sampler.name=random",
                "sweep.n_trials=2",
                "sweep.warm_start.study=rank_alpa",
                "sweep.warm_start.storage=earlier.journal",
            ],
            {},
            [
                "Invalid value for 'sweep.warm_start.study': 'rank_alpa'",
                "sweep.warm_start.storage=earlier.journal, which holds the studies rank_alpha, targets",
            ],
        ),
    }


def earlier_studies(path: Path) -> None:
    """A journal file holding two finished studies (the storage a warm start reads from)."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    space = {"lora.r": optuna.distributions.CategoricalDistribution([1, 2, 4, 8, 16])}
    for name in ("targets", "rank_alpha"):
        study = optuna.create_study(study_name=name, storage=storage)
        study.add_trial(optuna.trial.create_trial(params={"lora.r": 4}, distributions=space, value=0.5))


PREPARE = {
    "warm_start_missing": lambda cwd: earlier_studies(cwd / "earlier.journal"),
    "journal_unwritable": lambda cwd: (cwd / "a_file").write_text("a file where the storage's folder should be"),
    "mlflow_db_not_a_database": lambda cwd: (cwd / "broken.db").write_bytes(b"not a database " * 100),
    "jsonl_not_utf8": lambda cwd: (cwd / "latin1.jsonl").write_bytes(
        b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "x"}\n'
    ),
}
"""What a bad input's directory holds before its command runs."""


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """Every bad input through ``python -m lora_lab.sweep``, each in its own directory with its own
    MLflow store; run concurrently. name -> (completed process, its directory, its tracking URI)."""
    started = {}
    for name, (overrides, env_extra, _) in bad_inputs().items():
        cwd = tmp_path_factory.mktemp(name)
        (cwd / "conf" / "sweep").mkdir(parents=True)
        (cwd / "conf" / "sweep" / "empty_space.yaml").write_text(EMPTY_PRESET)
        PREPARE.get(name, lambda cwd: None)(cwd)
        tracking = f"sqlite:///{cwd / 'mlflow.db'}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": tracking, **env_extra}
        preset = [] if any(o.startswith("+sweep=") for o in overrides) else ["+sweep=rank_alpha"]
        command = "lora_lab.train" if name.startswith("train_") else "lora_lab.sweep"
        argv = [
            sys.executable,
            "-m",
            command,
            *(preset if command == "lora_lab.sweep" else []),
            *overrides,
            f"hydra.searchpath=[file://{cwd / 'conf'}]",
            "train.max_steps=2" if "train.max_steps=0" not in overrides else "data.n_train=64",
        ]
        started[name] = (
            subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            cwd,
            tracking,
        )
    done = {}
    for name, (process, cwd, tracking) in started.items():
        out, err = process.communicate(timeout=900)  # generous: a loaded machine starts them slowly
        done[name] = (process.returncode, out, err, cwd, tracking)
    return done


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_bad_input_exits_with_one_paragraph_and_leaves_nothing_running(commands, name):
    code, out, err, cwd, tracking = commands[name]
    expected = bad_inputs()[name][2]
    assert code == 2, f"exit code {code}; stderr:\n{err}"
    paragraphs = [line for line in err.splitlines() if line.startswith("lora_lab: error: ")]
    assert len(paragraphs) == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in paragraphs[0], paragraphs[0]
    # Nothing was created: no MLflow run (RUNNING or not) and no Optuna trial.
    if (cwd / "mlflow.db").exists():
        client = MlflowClient(tracking)
        experiments = [e.experiment_id for e in client.search_experiments()]
        if experiments:
            assert client.search_runs(experiments) == []
    assert not (cwd / "outputs").exists()  # Hydra's run folder of a refused command is gone
    assert not (cwd.parent / "escape").exists()
    for journal in cwd.glob("sweeps/*/optuna.journal"):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        for summary in optuna.get_all_study_summaries(storage):
            assert summary.n_trials == 0


# -- in-process: the finer cases ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "study.db",
        "optuna.sqlite",
        "redis://localhost/0",
        "sqlite://",
        "sqlite:////no/such/directory/study.db",
        "postgres:/x",
    ],
)
def test_malformed_storage_is_refused(url):
    with pytest.raises(ConfigError, match="sweep.storage") as info:
        preflight.check_storage(url)
    assert "sqlite:///" in str(info.value) and ".journal" in str(info.value)


def test_accepted_storage_forms(tmp_path):
    for url in (None, "study.journal", str(tmp_path / "x.journal"), f"sqlite:///{tmp_path / 'study.db'}", PG_URL):
        preflight.check_storage(url)  # the PostgreSQL of the test machine answers


def test_a_silent_database_server_is_given_up_on_after_the_timeout():
    server = silent_server()
    try:
        port = server.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(UnreachableError, match="Cannot reach 'sweep.storage'") as info:
            preflight.check_storage(f"postgresql://postgres:secret@127.0.0.1:{port}/test", timeout_s=2)
        assert time.monotonic() - started < 4  # one attempt, no retry loop
        assert "secret" not in str(info.value)
    finally:
        server.close()


def test_a_silent_or_foreign_tracking_server_is_refused(tmp_path):
    server = silent_server()
    try:
        started = time.monotonic()
        with pytest.raises(UnreachableError, match="MLFLOW_TRACKING_URI"):
            preflight.check_tracking_uri(f"http://127.0.0.1:{server.getsockname()[1]}", timeout_s=1)
        assert time.monotonic() - started < 3
    finally:
        server.close()
    web = HTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:  # a web server that is not MLflow: /health is not found
        with pytest.raises(UnreachableError, match="HTTP 404: not an MLflow tracking server"):
            preflight.check_tracking_uri(f"http://127.0.0.1:{web.server_address[1]}")
    finally:
        web.shutdown()
    preflight.check_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")  # local stores need no server


@pytest.mark.parametrize(("value", "ok"), [("abc", False), ("0", False), ("-5", False), ("2.5", False), ("7", True)])
def test_heartbeat_interval(monkeypatch, value, ok):
    monkeypatch.setenv("LORA_LAB_HEARTBEAT_S", value)
    if ok:
        assert preflight.heartbeat_interval_s() == int(value)
    else:
        with pytest.raises(ConfigError, match="LORA_LAB_HEARTBEAT_S"):
            preflight.heartbeat_interval_s()


def test_bf16_is_refused_on_a_device_without_it(make_trial_config):
    no_bf16 = (False, "Tesla V100-SXM2-16GB")
    for overrides, field in (
        (["train.precision=bf16"], "train.precision"),
        (["model.dtype=bfloat16"], "model.dtype"),
        (["quant=nf4", "quant.compute_dtype=bfloat16"], "quant.compute_dtype"),
    ):
        with pytest.raises(ConfigError, match=field) as info:
            preflight.check_precision(make_trial_config(*overrides), support=no_bf16)
        assert "Tesla V100" in str(info.value) and "compute capability 8.0" in str(info.value)
        preflight.check_precision(make_trial_config(*overrides), support=(True, "NVIDIA H100"))
    preflight.check_precision(make_trial_config("train.precision=fp16"), support=no_bf16)


def test_the_objective_metrics_offered_are_the_ones_a_trial_logs_and_bf16_runs_where_allowed(
    make_trial_config, tmp_path
):
    """A real one-step trial in bf16 where this device's check allows it: its result holds exactly the
    metrics the objective check offers (plus the effective rank the sweep adds)."""
    import math

    from lora_lab.train import run_trial

    cfg = make_trial_config(
        "data.n_train=32",
        "data.n_eval=8",
        "train.batch_size=8",
        "train.max_steps=1",
        "train.eval_every=1",
        "train.eval_generate=0",
        "train.save_adapter=false",
        "train.precision=bf16" if preflight.bf16_support()[0] else "train.precision=auto",
    )
    preflight.check_precision(cfg)
    result = run_trial(cfg, tmp_path, show_progress=False)
    assert math.isfinite(result.eval_loss)
    assert sorted({*result.metrics(), "effective_rank_mean"}) == preflight.trial_metric_names()


def test_searched_choices_are_checked_before_any_trial(compose_config):
    cfg = compose_config("+sweep=rank_alpha", "quant=nf4")
    with open_dict(cfg):
        cfg.sweep.params["lora.init_lora_weights"] = ParamSpec(choices=["true", "pissa"])
    sweep = to_sweep_config(cfg)
    with pytest.raises(LoraLabError, match=r"sweep.params.lora.init_lora_weights: the choice 'pissa'") as info:
        preflight.check_sweep(cfg, sweep)
    assert "quant=none for pissa" in str(info.value)


def test_every_preset_passes(compose_config):
    for preset in sorted(p.stem for p in (REPO / "conf" / "sweep").glob("*.yaml")):
        cfg = compose_config(f"+sweep={preset}")
        preflight.check_sweep(cfg, to_sweep_config(cfg))


def test_empty_search_space_and_max_steps(make_trial_config):
    from lora_lab.config import SweepConfig

    with pytest.raises(ConfigError, match="sweep.params"):
        preflight.check_search_space(SweepConfig(study_name="s"))
    preflight.check_search_space(SweepConfig(study_name="s", params={"lora.r": ParamSpec(choices=[4])}))
    epochs = make_trial_config("train.max_steps=null", "train.epochs=2")
    assert epochs.train.max_steps is None
    from lora_lab.train import training_arguments

    assert training_arguments(epochs, Path("unused"), False).max_steps == -1
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="train.max_steps"):
            make_trial_config(f"train.max_steps={bad}")


# -- the earlier study a sweep warm-starts from --------------------------------------------------


def _sweep(study_name: str = "new", sampler: str = "random", own_storage: str | None = None, **warm) -> SweepConfig:
    params = {"lora.r": ParamSpec(choices=[2, 8]), "lora.targets": ParamSpec(choices=["qv", "all_linear"])}
    return SweepConfig(
        study_name=study_name,
        params=params,
        sampler=SamplerConfig(name=sampler),
        n_trials=3,
        storage=own_storage,
        warm_start=WarmStartConfig(**warm),
    )


def test_a_warm_start_the_earlier_study_cannot_give_is_refused_naming_the_field(tmp_path, monkeypatch):
    """Each refusal names sweep.warm_start.* and what is allowed; reading the earlier storage creates
    nothing, there or in the sweep's own folder."""
    monkeypatch.chdir(tmp_path)
    journal = tmp_path / "earlier.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    space = {
        "lora.r": optuna.distributions.CategoricalDistribution([2, 8, 64]),
        "lora.targets": optuna.distributions.CategoricalDistribution(["qv", "all_linear"]),
    }
    done = optuna.create_study(study_name="done", storage=storage)
    for r, value in ((64, 0.1), (64, 0.2)):
        done.add_trial(
            optuna.trial.create_trial(params={"lora.r": r, "lora.targets": "qv"}, distributions=space, value=value)
        )
    unfinished = optuna.create_study(study_name="unfinished", storage=storage)
    unfinished.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    unfinished.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    other = optuna.create_study(study_name="other_space", storage=storage)
    dropout = {"lora.lora_dropout": optuna.distributions.FloatDistribution(0.0, 0.3)}
    other.add_trial(optuna.trial.create_trial(params={"lora.lora_dropout": 0.1}, distributions=dropout, value=0.3))
    before = journal.read_bytes()
    at = str(journal)

    def refused(sweep: SweepConfig, field: str = "sweep.warm_start.study") -> str:
        with pytest.raises(ConfigError) as info:
            preflight.check_warm_start(sweep)
        assert info.value.field == field
        return str(info.value)

    assert "which holds the studies done, other_space, unfinished" in refused(_sweep(study="gone", storage=at))
    message = refused(_sweep(study="gone"))  # null storage: where lora_lab keeps a study named 'gone'
    assert "sweeps/gone/optuna.journal (its default), which holds none: there is no such file" in message
    assert "(the studies kept under sweeps/ by default: none)" in message
    assert "has none (2 FAIL): run it first" in refused(_sweep(study="unfinished", storage=at))
    message = refused(_sweep(study="other_space", storage=at))
    assert "none of the 1 configurations of 'other_space' fits" in message
    assert "searched only there: lora.lora_dropout; searched only here: lora.r, lora.targets" in message
    message = refused(_sweep(study="done", storage=at))  # same names, but r=64 is not searched here
    assert "none of the 1 configurations of 'done' fits: lora.r = 64 there, the choices [2, 8] here" in message
    assert "an earlier study, not this sweep's own" in refused(
        _sweep(study_name="done", own_storage=at, study="done", storage=at)
    )
    assert "sqlite:///" in refused(_sweep(study="done", storage="earlier.db"), "sweep.warm_start.storage")
    with pytest.raises(ConfigError, match="'sweep.warm_start.top_k': 0.*whole number >= 1"):
        WarmStartConfig(study="done", top_k=0)
    with pytest.raises(ConfigError, match="'sweep.warm_start.study': 'done'.*null with sweep.sampler.name=grid"):
        _sweep(sampler="grid", study="done", storage=at)
    assert journal.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["earlier.journal"]
    # where lora_lab keeps a study by default, and an sqlite file, are read alike
    (tmp_path / "sweeps" / "done").mkdir(parents=True)
    (tmp_path / "sweeps" / "done" / "optuna.journal").write_bytes(before)  # where a sweep 'done' keeps its study
    assert "(the studies kept under sweeps/ by default: done)" in refused(_sweep(study="gone"))
    assert "configurations of 'done' fits" in refused(_sweep(study="done"))  # read from sweeps/done/
    moved = optuna.create_study(study_name="done", storage=f"sqlite:///{tmp_path / 'earlier.db'}")
    moved.add_trial(
        optuna.trial.create_trial(params={"lora.r": 8, "lora.targets": "qv"}, distributions=space, value=0.4)
    )
    warm = preflight.check_warm_start(_sweep(study="done", storage=f"sqlite:///{tmp_path / 'earlier.db'}"))
    assert [c.params for c in warm.configs] == [{"lora.r": 8, "lora.targets": "qv"}] and warm.configs[0].value == 0.4


# -- what preflight checks on every trial it can know without training ----------------------------


def _preflight(compose_config, *overrides, params=None, derived=None, baselines=None):
    cfg = compose_config("+sweep=rank_alpha", "sweep.baselines=[]", *overrides)
    with open_dict(cfg):
        for name, spec in (params or {}).items():
            cfg.sweep.params[name] = spec
        for name, expression in (derived or {}).items():
            cfg.sweep.derived[name] = expression
    return preflight.check_sweep(cfg, to_sweep_config(cfg))


@pytest.mark.parametrize(
    ("name", "low", "high", "end", "field"),
    [
        ("lora.lora_dropout", 0.9, 1.5, "high end 1.5", "lora.lora_dropout"),
        ("train.learning_rate", -1.0, 0.0, "low end -1.0", "train.learning_rate"),
    ],
)
def test_both_ends_of_every_range_are_checked(compose_config, name, low, high, end, field):
    spec = ParamSpec(type="float", low=low, high=high)
    with pytest.raises(LoraLabError, match=rf"sweep.params.{name}: its {end} gives an invalid trial config") as info:
        _preflight(compose_config, "sweep.sampler.name=random", "sweep.n_trials=2", params={name: spec})
    assert f"'{field}'" in str(info.value)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("16 / (lora.r - 1)", "ZeroDivisionError"),  # lora.r = 1 is a corner of rank_alpha's space
        ("alpah_over_r * lora.r", "'alpah_over_r' is not one of them"),
        ("alpha_over_r * lora.r - 4", "at {'lora.r': 1, 'alpha_over_r': 1} it gives -3"),  # alpha must be > 0
    ],
)
def test_derived_expressions_are_evaluated_on_the_corners_of_the_space(compose_config, expression, expected):
    with pytest.raises(ConfigError) as info:
        _preflight(compose_config, derived={"lora.lora_alpha": expression})
    assert info.value.field == "sweep.derived.lora.lora_alpha" and info.value.value == expression
    assert expected in str(info.value), str(info.value)


def test_target_modules_are_checked_against_the_model_without_loading_it(compose_config, tmp_path):
    for overrides, expected in (
        (["lora.target_modules=[q_proj,nope]"], "not found: nope"),
        (["model=tiny_llama_scratch", "lora.target_modules=[wq]"], "not found: wq"),
    ):
        with pytest.raises(ConfigError, match="lora.target_modules") as info:
            _preflight(compose_config, *overrides)
        assert expected in str(info.value) and "q_proj" in str(info.value)
    from lora_lab.config import ModelConfig
    from lora_lab.model import targets

    skeleton = targets.model_skeleton(ModelConfig())  # what preflight resolves the targets on
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}  # no weights loaded


def test_a_model_or_data_that_cannot_be_loaded_is_refused_before_any_trial(compose_config, tmp_path, monkeypatch):
    from lora_lab.errors import DataError, ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="model.pretrained='Qwen/Qwen2.5-0.5B'"):
        _preflight(compose_config, "model=qwen2_5_0_5b")  # offline, not cached (HF_HUB_OFFLINE=1 in tests)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="data.path: no such file 'missing.jsonl'"):
        _preflight(compose_config, "data=jsonl", "data.path=missing.jsonl")


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "", "name with space", "x..y"])
def test_study_names_are_one_path_segment(name):
    from lora_lab.config import ReportConfig

    with pytest.raises(ConfigError, match="one path segment"):
        SweepConfig(study_name=name, params={"lora.r": ParamSpec(choices=[4])})
    with pytest.raises(ConfigError, match="'study'.*one path segment"):
        ReportConfig(study=name)
    SweepConfig(study_name="rank_alpha-2.v1", params={"lora.r": ParamSpec(choices=[4])})


# -- storages and tracking stores that cannot be used ------------------------------------------------


def test_a_read_only_storage_folder_is_refused_in_one_paragraph(tmp_path):
    from lora_lab.storage import StorageError, check_writable

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:  # root writes everywhere but on a read-only file system: mount one
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr.decode().strip()}")
    else:
        folder.chmod(0o555)
    try:
        for url in (str(folder / "optuna.journal"), f"sqlite:///{folder / 'optuna.db'}"):
            with pytest.raises(StorageError, match="cannot write the study's storage") as info:
                check_writable(url)
            assert "\n" not in str(info.value) and "Nothing was created" in str(info.value)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_a_damaged_sqlite_file_is_refused_not_written_to(tmp_path):
    """A real MLflow store whose pages were overwritten in the middle fails PRAGMA quick_check: the
    sweep, the single trial and the report refuse it instead of writing into it."""
    from mlflow.tracking import MlflowClient

    from lora_lab.storage import StorageError, check_tracking_store

    db = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # a real store, its schema created
    check_tracking_store(f"sqlite:///{db}")
    data = bytearray(db.read_bytes())
    page = 4096
    data[3 * page : 3 * page + 600] = b"\x00\xff" * 300  # a b-tree page overwritten: the header still says sqlite
    db.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="MLFLOW_TRACKING_URI: .* is not a usable sqlite database"):
        check_tracking_store(f"sqlite:///{db}")
    with pytest.raises(StorageError, match="PRAGMA quick_check|not a database|malformed"):
        preflight.check_tracking_uri(f"sqlite:///{db}")
