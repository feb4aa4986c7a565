"""What `mlflow ui` shows of a sweep: run names, source and code version, the experiment's kind,
description and saved runs view, the parent run's note, summary metrics as bars, and adapters that
name their base model rather than a path. A real sqlite MLflow store and real (tiny) trainings."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from lora_lab import mlflow_ui as ui
from lora_lab import names
from lora_lab.config import ModelConfig, register_configs
from lora_lab.model.base import base_model_id
from lora_lab.sweep import Sweep

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "data.n_train=64",
    "data.n_eval=16",
    "train.max_steps=4",
    "train.eval_every=2",
    "train.batch_size=16",
    "train.eval_generate=2",
    "train.logging_steps=2",
    "tracking.log_adapter=false",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite MLflow store of the module's own."""
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


@pytest.fixture(scope="module")
def sweep_result(store, tmp_path_factory):
    """A two-trial rank_alpha grid, composed as the CLI does, run in a fresh directory."""
    import os

    work = tmp_path_factory.mktemp("sweep")
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = store.tracking_uri
    try:
        register_configs()
        overrides = ["+sweep=rank_alpha", "sweep.study_name=ui_names", "sweep.seeds=1", "sweep.baselines=[]"]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
            cfg = compose("config", overrides=overrides + TINY)
            cfg.sweep.params["lora.r"].choices = [2, 8]
            cfg.sweep.params["alpha_over_r"].choices = [4]
            sweep = Sweep(cfg, overrides + TINY, console_progress=False)
            summary = sweep.run()
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    trials = store.search_runs([sweep.experiment_id], f"tags.`{names.TAG_KIND}` = '{names.KIND_TRIAL}'")
    return sweep, summary, {t.info.run_name: t for t in trials}, work


# -- names -------------------------------------------------------------------------------------


def test_run_names_say_what_the_trial_is(make_trial_config):
    cfg = make_trial_config("lora.r=64", "lora.lora_alpha=256")
    assert ui.trial_run_name(13, cfg, ["lora.r", "alpha_over_r", "lora.lora_alpha"]) == "t13 r=64 α=256 all_linear"
    seeded = make_trial_config(
        "lora.r=4", "lora.lora_alpha=2", "train.seed=2", "lora.targets=qv", "quant=nf4", "lora.lora_dropout=0.05"
    )
    assert (
        ui.trial_run_name(7, seeded, ["lora.r", "lora.lora_dropout", "train.seed"], show_seed=True)
        == "t7 r=4 α=2 qv nf4 dropout=0.05 s2"
    )
    assert ui.trial_run_name(0, make_trial_config("train.seed=1"), baseline="full_ft") == "full_ft s1"
    assert ui.run_name(make_trial_config()) == "tiny_llama r=8 α=16 all_linear s0"


def test_adapter_names_its_base_model_never_a_path(tmp_path):
    assert base_model_id(ModelConfig(name="tiny_llama", source="builtin")) == "lora_lab/tiny_llama"
    assert base_model_id(ModelConfig(name="qwen", source="hub", pretrained="Qwen/Qwen2.5-0.5B")) == "Qwen/Qwen2.5-0.5B"
    local = tmp_path / "my-model"
    local.mkdir()
    assert base_model_id(ModelConfig(name="mine", source="hub", pretrained=str(local))) == "mine"


# -- code version ------------------------------------------------------------------------------


def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_state_commit_and_dirty_flag(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "mod.py").write_text("x = 1\n")
    _git("init", "-q", "-b", "work", cwd=repo)
    _git("add", ".", cwd=repo)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c", cwd=repo)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    clean = ui.git_state(repo / "pkg", "mod.py")
    assert clean == {"mlflow.source.git.commit": head, names.TAG_GIT_DIRTY: "false", "mlflow.source.git.branch": "work"}
    (repo / "pkg" / "outputs.log").write_text("run output\n")  # untracked: not a code change
    assert ui.git_state(repo / "pkg", "mod.py")[names.TAG_GIT_DIRTY] == "false"
    (repo / "pkg" / "mod.py").write_text("x = 2\n")
    assert ui.git_state(repo / "pkg", "mod.py")[names.TAG_GIT_DIRTY] == "true"
    assert ui.git_state(repo / "pkg", "outputs.log") == {}  # a file the checkout does not track


# -- the experiment ----------------------------------------------------------------------------


def test_experiment_kind_description_and_saved_view(store):
    view = ui.trial_view([("eval_loss", "minimize")], ["lora.r", "alpha_over_r", "lora.lora_alpha"])
    eid = ui.ensure_experiment(store, "ui_experiment", note="first note", view=view)
    tags = store.get_experiment(eid).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.note.content"] == "first note"
    envelope = json.loads(tags[ui.VIEW_TAG_PREFIX + ui.VIEW_ID])
    state = json.loads(envelope["state"])  # the envelope MLflow's UI parses: state is a JSON string
    assert envelope["name"] == "lora_lab: trials by eval_loss" and isinstance(envelope["createdAt"], int)
    assert state["selectedColumns"][:4] == [
        "params.`lora.r`",
        "params.`lora.lora_alpha`",
        "params.`lora.targets`",
        "metrics.`eval_loss`",
    ]
    assert state["orderByKey"] == "metrics.`eval_loss`" and state["orderByAsc"] is True
    charts = {c["uuid"]: c for c in state["compareRunCharts"]}
    parallel = charts["lora_lab-parallel"]
    assert parallel["selectedParams"] == ["lora.r", "lora.lora_alpha"] and parallel["selectedMetrics"] == ["eval_loss"]
    assert charts["lora_lab-eval_loss"]["type"] == "LINE" and charts["lora_lab-exact_match"]["type"] == "BAR"
    assert {c["metricSectionId"] for c in charts.values()} == {s["uuid"] for s in state["compareRunSections"]}
    # the filter is one MLflow's search accepts, and it leaves sweep parent runs out
    parent = store.create_run(eid, tags={names.TAG_KIND: names.KIND_SWEEP})
    child = store.create_run(eid, tags={names.TAG_KIND: names.KIND_TRIAL})
    assert [r.info.run_id for r in store.search_runs([eid], state["searchFilter"])] == [child.info.run_id]
    assert parent.info.run_id
    # a description edited in the UI stays; a changed sweep gets its view rewritten
    store.set_experiment_tag(eid, "mlflow.note.content", "edited by hand")
    maximize = ui.trial_view([("exact_match", "maximize")], ["lora.lora_dropout"])
    ui.ensure_experiment(store, "ui_experiment", note="first note", view=maximize)
    tags = store.get_experiment(eid).tags
    assert tags["mlflow.note.content"] == "edited by hand"
    state = json.loads(json.loads(tags[ui.VIEW_TAG_PREFIX + ui.VIEW_ID])["state"])
    assert state["orderByKey"] == "metrics.`exact_match`" and state["orderByAsc"] is False
    assert "params.`lora.lora_dropout`" in state["selectedColumns"]


def test_links_point_at_the_runs_view_and_the_run():
    assert (
        ui.runs_url("3", "http://h:5000")
        == "http://h:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=lora_lab-trials"
    )
    assert ui.run_url("3", "abc") == "#/experiments/3/runs/abc"
    assert ui.ui_base_url("http://mlflow.example:8080/") == "http://mlflow.example:8080"
    assert ui.ui_base_url("sqlite:///mlflow.db") == "http://127.0.0.1:5000"


# -- a sweep as the UI shows it ----------------------------------------------------------------


def test_sweep_runs_carry_names_source_and_truthful_params(sweep_result, store):
    sweep, summary, trials, _ = sweep_result
    # t<Optuna trial number> then the settings (the grid's order is the sampler's)
    assert sorted(n.split(" ", 1)[0] for n in trials) == ["t0", "t1"]
    assert sorted(n.split(" ", 1)[1] for n in trials) == ["r=2 α=8 all_linear", "r=8 α=32 all_linear"]
    parent = store.get_run(summary.parent_run_id)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    for run in [*trials.values(), parent]:
        tags = run.data.tags
        assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
        assert tags["mlflow.source.git.commit"] == head
        assert tags[names.TAG_GIT_DIRTY] in ("true", "false")
    for run in trials.values():
        assert run.data.params["tracking.experiment"] == "ui_names"  # not the single-run default 'lora_lab'
        config = store.download_artifacts(run.info.run_id, "config.yaml")
        assert "experiment: ui_names" in Path(config).read_text()


def test_summary_metrics_are_single_values_at_step_zero(sweep_result, store):
    _, _, trials, _ = sweep_result
    run_id = next(run.info.run_id for name, run in trials.items() if name.endswith("r=8 α=32 all_linear"))
    for metric in ("exact_match", "perplexity", "effective_rank_mean", "trainable_params", "train_time_s"):
        history = store.get_metric_history(run_id, metric)
        assert [m.step for m in history] == [0], metric
    assert [m.step for m in store.get_metric_history(run_id, "eval_loss")] == [2, 4]  # curves keep their steps


def test_parent_note_links_the_best_trial_and_the_report(sweep_result, store):
    sweep, summary, trials, _ = sweep_result
    parent = store.get_run(summary.parent_run_id)
    best_id = parent.data.tags["best_run_id"]
    best_name = store.get_run(best_id).info.run_name
    note = parent.data.tags["mlflow.note.content"]
    assert f"[{best_name}](#/experiments/{sweep.experiment_id}/runs/{best_id})" in note
    assert "python -m lora_lab.report study=ui_names" in note and "reports/ui_names/report.md" in note
    assert "optuna-dashboard sweeps/ui_names/optuna.journal" in note
    table = json.loads(Path(store.download_artifacts(summary.parent_run_id, "trials.json")).read_text())
    assert table["data"][0][table["columns"].index("run_id")] == best_id  # best first
    # a written report is attached to the parent run and linked from its note
    report = Path(sweep_result[3]) / "reports" / "ui_names"
    report.mkdir(parents=True)
    (report / "report.md").write_text("# report\n")
    assert ui.log_report(report, "ui_names", store) == summary.parent_run_id
    note = store.get_run(summary.parent_run_id).data.tags["mlflow.note.content"]
    assert f"(#/experiments/{sweep.experiment_id}/runs/{summary.parent_run_id}/artifacts)" in note
    assert "report/report.md" in [a.path for a in store.list_artifacts(summary.parent_run_id, "report")]


def test_saved_adapter_names_the_base_model(sweep_result):
    _, _, _, work = sweep_result
    configs = sorted(Path(work).glob("sweeps/ui_names/trials/*/adapter/adapter_config.json"))
    assert len(configs) == 2
    for path in configs:
        assert json.loads(path.read_text())["base_model_name_or_path"] == "lora_lab/tiny_llama"
        card = (path.parent / "README.md").read_text()
        assert "base_model: lora_lab/tiny_llama" in card and str(Path.home()) not in card


# -- the configurations view -------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded_sweep(store, tmp_path_factory):
    """One grid point with 2 seeds beside the zero-shot baseline with 2 seeds: 4 runs, 2 configurations."""
    import os

    work = tmp_path_factory.mktemp("seeded")
    old_cwd, old_uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(work)
    os.environ["MLFLOW_TRACKING_URI"] = store.tracking_uri
    try:
        register_configs()
        overrides = ["+sweep=rank_alpha", "sweep.study_name=ui_configs", "sweep.seeds=2"]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
            cfg = compose("config", overrides=overrides + TINY)
            cfg.sweep.params["lora.r"].choices = [2]
            cfg.sweep.params["alpha_over_r"].choices = [4]
            cfg.sweep.baselines = [b for b in cfg.sweep.baselines if b.name == "zero_shot"]
            sweep = Sweep(cfg, overrides + TINY, console_progress=False)
            summary = sweep.run()
    finally:
        os.chdir(old_cwd)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    return sweep, summary


def _view_state(store, experiment_id: str, view_id: str) -> tuple[dict, dict]:
    envelope = json.loads(store.get_experiment(experiment_id).tags[ui.VIEW_TAG_PREFIX + view_id])
    return envelope, json.loads(envelope["state"])


def test_the_configurations_view_groups_each_configurations_seeds_under_their_mean(seeded_sweep, store):
    sweep, summary = seeded_sweep
    envelope, state = _view_state(store, sweep.experiment_id, ui.CONFIG_VIEW_ID)
    assert envelope["name"] == "lora_lab: configurations by mean eval_loss"
    assert state["groupBy"] == {
        "aggregateFunction": "average",
        "groupByKeys": [
            {"mode": "tag", "groupByData": names.TAG_CONFIG_LABEL},
            {"mode": "tag", "groupByData": names.TAG_CONFIG_ID},
        ],
    }
    assert state["orderByKey"] == "metrics.`eval_loss`" and state["orderByAsc"] is True  # groups: best mean first
    assert "metrics.`eval_loss`" in state["selectedColumns"] and state["useGroupedValuesInCharts"] is True
    _, trials_state = _view_state(store, sweep.experiment_id, ui.VIEW_ID)
    assert "groupBy" not in trials_state  # the trials view stays one row per run

    # the runs the view lists, grouped by its keys as MLflow's UI groups them: one group per configuration
    runs = store.search_runs([sweep.experiment_id], state["searchFilter"])
    groups: dict[tuple, list] = {}
    for run in runs:
        key = tuple(run.data.tags.get(k["groupByData"]) for k in state["groupBy"]["groupByKeys"])
        groups.setdefault(key, []).append(run)
    labels = sorted(label for label, _ in groups)
    assert labels == ["r=2 α=8 all_linear", "zero_shot"]
    for (label, config_id), members in groups.items():
        assert config_id and len(members) == 2, label
        assert sorted(r.data.params["train.seed"] for r in members) == ["0", "1"]  # a group is one config's seeds
        losses = [r.data.metrics["eval_loss"] for r in members]
        assert all(loss == loss for loss in losses)  # every seed logged the metric the group row averages
    # the links: printed at the end of the sweep and in the parent run's note
    hints = ui.browse_hints(store, summary.parent_run_id, "sweeps/ui_configs/optuna.journal")
    assert any(h.endswith(f"viewStateShareKey={ui.CONFIG_VIEW_ID}") for h in hints)
    assert (
        ui.runs_url(sweep.experiment_id, view=ui.CONFIG_VIEW_ID)
        in store.get_run(summary.parent_run_id).data.tags["mlflow.note.content"]
    )


def test_baseline_runs_carry_no_lora_params_they_never_used(seeded_sweep, store):
    sweep, _ = seeded_sweep
    runs = store.search_runs([sweep.experiment_id], f"tags.`{names.TAG_KIND}` != '{names.KIND_SWEEP}'")
    baselines = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_BASELINE]
    trials = [r for r in runs if r.data.tags[names.TAG_KIND] == names.KIND_TRIAL]
    assert len(baselines) == 2 and len(trials) == 2
    for run in baselines:
        lora = {k: v for k, v in run.data.params.items() if k.startswith("lora.")}
        assert lora == {"lora.method": "none"}, run.info.run_name
        assert run.data.tags[names.TAG_CONFIG_LABEL] == "zero_shot"
        assert "train.seed" in run.data.params and "model.name" in run.data.params  # the rest is still there
    for run in trials:
        assert run.data.params["lora.r"] == "2" and run.data.params["lora.lora_alpha"] == "8.0"
        assert run.data.tags[names.TAG_CONFIG_LABEL] == "r=2 α=8 all_linear"


def test_a_single_baseline_run_is_named_and_logged_as_what_it_is(make_trial_config):
    from lora_lab.config import logged_fields

    zero_shot = make_trial_config("lora.method=none")
    assert ui.run_name(zero_shot) == "tiny_llama zero_shot s0"
    assert ui.run_name(make_trial_config("lora.method=full", "train.seed=3")) == "tiny_llama full_ft s3"
    assert [k for k in logged_fields(zero_shot) if k.startswith("lora.")] == ["lora.method"]
    assert {"lora.r", "lora.lora_alpha", "lora.targets"} <= set(logged_fields(make_trial_config()))


# -- optuna-dashboard --------------------------------------------------------------------------

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_optuna_dashboard_opens_each_storage_with_the_printed_command(kind, tmp_path):
    """The command the sweep prints (``ui.dashboard_command``) serves the study, whatever the storage."""
    import shlex
    import socket
    import sys
    import time
    import urllib.request
    import uuid

    import optuna

    from lora_lab.sweep import open_storage

    url = {
        "journal": str(tmp_path / "optuna.journal"),
        "sqlite": f"sqlite:///{tmp_path / 'optuna.db'}",
        "postgresql": PG_URL,
    }[kind]
    name = f"dashboard_{kind}_{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = shlex.split(ui.dashboard_command(url))
    assert argv[0] == "optuna-dashboard"
    exe = str(Path(sys.executable).parent / "optuna-dashboard")
    server = subprocess.Popen(
        [exe, *argv[1:], "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline, body = time.monotonic() + 90, None
        while time.monotonic() < deadline and body is None:
            try:
                body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5).read())
            except OSError:
                assert server.poll() is None, "optuna-dashboard exited"
                time.sleep(0.5)
        assert body is not None, "optuna-dashboard never answered"
        assert name in [s["study_name"] for s in body["study_summaries"]]
    finally:
        server.terminate()
        server.wait(timeout=30)
        if kind == "postgresql":
            optuna.delete_study(study_name=name, storage=url)


def test_a_storage_password_never_reaches_the_tracking_store(store, tmp_path, monkeypatch):
    """The parent run logs the sweep section as params and as sweep_config.yaml: a PostgreSQL storage URL
    (the study's, and a warm start's) appears there redacted. PostgreSQL here trusts any password."""
    import uuid

    import optuna

    secret = f"s3cret{uuid.uuid4().hex[:6]}"
    url = f"postgresql://postgres:{secret}@127.0.0.1:5432/test"
    name = f"redact_{uuid.uuid4().hex[:8]}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.tracking_uri)
    register_configs()
    overrides = [
        "+sweep=rank_alpha",
        f"sweep.study_name={name}",
        f"sweep.storage={url}",
        "sweep.seeds=1",
        "sweep.baselines=[]",
        "sweep.n_trials=1",
    ]
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
            cfg = compose("config", overrides=overrides + TINY)
            summary = Sweep(cfg, overrides + TINY, console_progress=False).run()
        parent = store.get_run(summary.parent_run_id)
        assert parent.data.params["sweep.storage"] == "postgresql://***@127.0.0.1:5432/test"
        logged = Path(store.download_artifacts(summary.parent_run_id, "sweep_config.yaml")).read_text()
        assert "postgresql://***@127.0.0.1:5432/test" in logged
        everything = json.dumps([parent.data.params, parent.data.tags]) + logged
        assert secret not in everything
    finally:
        optuna.delete_study(study_name=name, storage=url)
