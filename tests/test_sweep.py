"""The sweep against real Optuna storages and a real sqlite MLflow store, with real (tiny) trainings."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState
from tiny_trial import TINY
from transformers import TrainerCallback

from lora_lab import search_space
from lora_lab.compose import apply_value_overrides
from lora_lab.config import ParamSpec, SamplerConfig, SweepConfig, register_configs
from lora_lab.definition import DefinitionChangedError
from lora_lab.errors import ConfigError, TrialFailedError
from lora_lab.evaluate import adapter_singular_values, effective_ranks, entropy_effective_rank
from lora_lab.sweep import Sweep, storage_url, to_sweep_config

CONF = str(Path(__file__).resolve().parent.parent / "conf")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One sqlite MLflow store for the module (its schema takes seconds to create)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    MlflowClient(uri).search_experiments()
    yield uri
    mlflow.set_tracking_uri(None)  # MLflow's own setting cleared; this also unsets $MLFLOW_TRACKING_URI ...
    if previous is not None:  # ... which must come back, or later tests log to ./mlflow.db
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture
def run_sweep(tracking_uri, tmp_path, monkeypatch):
    """Compose a sweep exactly as the CLI does and run it in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    register_configs()

    def run(overrides: list[str], choices: dict[str, list] | None = None, before_run=None, **kwargs):
        """``choices`` narrows a preset's categorical params (dotted names cannot be overridden on
        Hydra's command line; users write their own preset file instead); ``before_run(sweep)`` runs
        between setup() and run()."""
        with initialize_config_dir(config_dir=CONF, version_base=None):
            cfg = compose("config", overrides=TINY + overrides)
            for name, values in (choices or {}).items():
                cfg.sweep.params[name].choices = values
            sweep = Sweep(cfg, TINY + overrides, console_progress=False, **kwargs)
            sweep.setup()
            if before_run is not None:
                before_run(sweep)
            summary = sweep.run()
        return sweep, summary

    return run


def trial_runs(study: str):
    runs = mlflow.search_runs(experiment_names=[study], filter_string="tags.`lora_lab.kind` = 'trial'")
    return runs.sort_values("tags.optuna.trial_number", key=lambda s: s.astype(int)).reset_index(drop=True)


# -- search space ------------------------------------------------------------------------------


def test_search_space_parses_preset_and_derives_alpha():
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        sweep = to_sweep_config(compose("config", overrides=["+sweep=rank_alpha"]))
    dists = search_space.distributions(sweep)
    assert list(dists["lora.r"].choices) == [1, 2, 4, 8, 16]
    assert list(dists["alpha_over_r"].choices) == [1, 4]
    assert search_space.grid_size(sweep) == 5 * 2 and sweep.seeds == 3
    assert [(b.name, b.overrides) for b in sweep.baselines] == [
        ("zero_shot", ["lora.method=none"]),
        ("full_ft", ["lora.method=full", "train.learning_rate=2.0e-3"]),
    ]
    values = search_space.resolve(sweep, {"lora.r": 16, "alpha_over_r": 0.5})
    assert values["lora.lora_alpha"] == 8.0
    assert search_space.to_overrides(values) == ["lora.r=16", "lora.lora_alpha=8"]


def test_trial_config_from_value_overrides_equals_a_full_compose(tracking_uri, tmp_path, monkeypatch):
    """Trials set their sampled values on the already composed sweep config instead of composing
    from scratch; the result must be exactly what Hydra composes from the same overrides."""
    monkeypatch.chdir(tmp_path)
    register_configs()
    base = ["+sweep=full", "sweep.study_name=compose_check", "train.max_steps=7", "data=reverse"]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        sweep = Sweep(compose("config", overrides=base), base, console_progress=False)
        values = search_space.resolve(
            sweep.sweep,
            {
                "lora.r": 16,
                "alpha_over_r": 0.5,
                "lora.lora_dropout": 0.1,
                "lora.targets": "attn",
                "train.learning_rate": 3e-4,
                "lora.use_rslora": True,
            },
        )
        trial_overrides = search_space.to_overrides(values)
        fast = apply_value_overrides(sweep.composer.base(), trial_overrides)
        full = compose("config", overrides=sweep.base_overrides + trial_overrides)
        assert fast is not None
        assert OmegaConf.to_container(fast) == OmegaConf.to_container(full)
        assert fast.lora.r == 16 and fast.lora.lora_alpha == 8 and fast.lora.targets == "attn"
        assert fast.data.task == "reverse" and fast.train.max_steps == 7
        # a config group choice, or a value the schema rejects, goes through Hydra's own composition
        assert apply_value_overrides(sweep.composer.base(), ["quant=nf4"]) is None
        assert apply_value_overrides(sweep.composer.base(), ["lora.r=many"]) is None
        trial_overrides = search_space.to_overrides({**values, "lora.r": 4}) + ["train.seed=3"]
        cfg, _, overrides = sweep.composer.compose(trial_overrides)
        assert cfg.lora.r == 4 and cfg.train.seed == 3 and overrides == sweep.base_overrides + trial_overrides
        # a key the schema does not have is left to Hydra's own composition (and its error)
        assert apply_value_overrides(sweep.composer.base(), ["lora.no_such_field=1"]) is None


def test_search_space_types_and_bad_declarations():
    float_dist = search_space.distribution("x", ParamSpec(type="float", low=1e-4, high=1e-1, log=True))
    assert isinstance(float_dist, optuna.distributions.FloatDistribution) and float_dist.log
    int_dist = search_space.distribution("y", ParamSpec(type="int", low=2, high=10, step=2))
    assert (int_dist.low, int_dist.high, int_dist.step) == (2, 10, 2)
    assert search_space.evaluate_expression("max(1, lora.r // 4) + 2 ** 2", {"lora.r": 16}) == 8
    with pytest.raises(ConfigError, match="not one of them"):
        search_space.evaluate_expression("alpha * 2", {"lora.r": 4})
    with pytest.raises(ConfigError, match="arithmetic"):
        search_space.evaluate_expression("__import__('os')", {})
    with pytest.raises(ConfigError, match="scalars only"):
        search_space.distribution("lora.target_modules", ParamSpec(choices=[["q_proj"], ["v_proj"]]))
    with pytest.raises(ConfigError, match="sweep.sampler.name"):
        SweepConfig(study_name="s", sampler=SamplerConfig(name="annealing"))
    with pytest.raises(ConfigError, match="grid only with categorical"):
        SweepConfig(
            study_name="s", params={"x": ParamSpec(type="float", low=0, high=1)}, sampler=SamplerConfig(name="grid")
        )


def test_seeds_are_not_a_searched_dimension_and_share_a_config_id():
    sweep = SweepConfig(
        study_name="s",
        params={"lora.r": ParamSpec(choices=[2, 4]), "x": ParamSpec(choices=[1, 2, 3])},
        seeds=3,
        sampler=SamplerConfig(name="grid"),
    )
    assert search_space.grid(sweep) == {"lora.r": [2, 4], "x": [1, 2, 3]}
    assert search_space.grid_size(sweep) == 6 and len(search_space.grid_points(sweep)) == 6
    assert search_space.grid_points(sweep)[:2] == [{"lora.r": 2, "x": 1}, {"lora.r": 2, "x": 2}]
    assert search_space.space_size(sweep) == 6
    assert (
        search_space.space_size(SweepConfig(study_name="s", params={"y": ParamSpec(type="float", low=0, high=1)}))
        is None
    )
    assert search_space.config_id({"lora.r": 2, "train.seed": 0}) == search_space.config_id(
        {"lora.r": 2, "train.seed": 2}
    )
    assert search_space.config_id({"lora.r": 2}) != search_space.config_id({"lora.r": 4})


# -- effective rank ----------------------------------------------------------------------------


def test_effective_rank_of_an_adapter_with_known_rank():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential()
    base.add_module("proj", torch.nn.Linear(32, 24, bias=False))
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["proj"]))
    layer = model.base_model.model.proj
    k = 3  # the update uses 3 of its 8 directions, with equal strength
    q_out, _ = torch.linalg.qr(torch.randn(24, 8))
    q_in, _ = torch.linalg.qr(torch.randn(32, 8))
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(q_out * (torch.arange(8) < k))
        layer.lora_A["default"].weight.copy_(q_in.T)
    singular = next(iter(adapter_singular_values(model).values()))
    reference = torch.linalg.svdvals(layer.get_delta_weight("default").double())
    assert torch.allclose(singular, reference[:8], atol=1e-6)  # reference is built in float32
    assert singular[:k].tolist() == pytest.approx([2.0] * k)  # scale = alpha / r = 2
    assert next(iter(effective_ranks(model).values())) == pytest.approx(k, abs=1e-6)
    assert entropy_effective_rank(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert 1.0 < entropy_effective_rank(torch.tensor([3.0, 1.0])) < 2.0


# -- whole sweeps --------------------------------------------------------------------------------


def test_grid_covers_every_point_once_and_logs_the_run_tree(run_sweep):
    overrides = ["+sweep=rank_alpha", "sweep.study_name=grid_tree", "sweep.seeds=1", "sweep.baselines=[]"]
    sweep, summary = run_sweep(overrides, {"lora.r": [1, 4], "alpha_over_r": [1, 2]})
    assert summary.counts == {"COMPLETE": 4}
    runs = trial_runs("grid_tree")
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    pairs = sorted(zip(runs["params.lora.r"].astype(int), runs["params.lora.lora_alpha"].astype(float), strict=True))
    assert pairs == [(1, 1.0), (1, 2.0), (4, 4.0), (4, 8.0)]
    assert set(runs["tags.mlflow.parentRunId"]) == {summary.parent_run_id}
    assert set(runs["tags.optuna.state"]) == {"COMPLETE"}
    for column in (
        "metrics.eval_loss",
        "metrics.exact_match",
        "metrics.trainable_params",
        "metrics.effective_rank_mean",
        "metrics.tokens_per_s",
        "metrics.peak_memory_mb",
    ):
        assert runs[column].notna().all(), column
    # trainable params grow linearly with r: r * sum(d_in + d_out) over the adapted modules
    by_r = runs.groupby(runs["params.lora.r"].astype(int))["metrics.trainable_params"].first()
    assert by_r[4] == 4 * by_r[1]
    client = MlflowClient()
    history = client.get_metric_history(runs.loc[0, "run_id"], "eval_loss")
    assert [m.step for m in history] == [3, 6]
    parent = client.get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["lora_lab.kind"] == "sweep"
    best_loss = runs["metrics.eval_loss"].min()
    assert parent.data.metrics["best_eval_loss"] == pytest.approx(best_loss)
    assert parent.data.tags["best_run_id"] == runs.loc[runs["metrics.eval_loss"].idxmin(), "run_id"]
    assert "search_space.json" in [a.path for a in client.list_artifacts(summary.parent_run_id)]
    # the recorded overrides reproduce the trial's config
    best = runs.loc[runs["metrics.eval_loss"].idxmin()]
    assert f"lora.r={best['params.lora.r']}" in best["tags.lora_lab.overrides"]


def test_resume_completes_missing_trials_without_duplicates(run_sweep):
    overrides = ["+sweep=targets", "sweep.study_name=resume"]
    _, first = run_sweep(overrides + ["sweep.n_trials=2"], {"lora.r": [2]})
    assert first.counts == {"COMPLETE": 2}
    _, second = run_sweep(overrides, {"lora.r": [2]})  # grid of 4 target sets: completes the other two
    assert second.counts == {"COMPLETE": 4}
    assert second.parent_run_id == first.parent_run_id
    runs = trial_runs("resume")
    assert sorted(runs["tags.optuna.trial_number"].astype(int)) == [0, 1, 2, 3]
    assert sorted(runs["params.lora.targets"]) == ["all_linear", "attn", "mlp", "qv"]
    _, third = run_sweep(overrides, {"lora.r": [2]})  # nothing left: no new trial
    assert third.counts == {"COMPLETE": 4} and len(trial_runs("resume")) == 4
    assert Path("sweeps/resume/optuna.journal").is_file()  # the default storage


def test_default_storage_is_a_journal_file_unless_a_sqlite_study_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_url(SweepConfig(study_name="fresh")) == str(Path("sweeps/fresh/optuna.journal"))
    assert storage_url(SweepConfig(study_name="x", storage="sqlite:///s.db")) == "sqlite:///s.db"
    Path("sweeps/old").mkdir(parents=True)
    optuna.create_study(study_name="old", storage="sqlite:///sweeps/old/optuna.db")  # begun before the journal default
    assert storage_url(SweepConfig(study_name="old")) == "sqlite:///sweeps/old/optuna.db"  # resumed where it began


def test_median_pruner_prunes_a_bad_trial_at_its_steps(run_sweep):
    """Two configurations enqueued with Optuna's own API (they go through the sampler's path): a
    good one, then one so bad that the median pruner stops it. Evaluations are reported at their
    optimizer step (the Trainer also evaluates at the last step, 13)."""
    overrides = [
        "+sweep=full",
        "sweep.study_name=prune",
        "sweep.n_trials=2",
        "sweep.sampler.name=random",
        "sweep.pruner.n_startup_trials=1",
        "sweep.baselines=[]",
        "train.max_steps=13",
        "train.eval_every=3",
    ]
    good = {
        "lora.r": 8,
        "alpha_over_r": 2.0,
        "lora.lora_dropout": 0.0,
        "lora.targets": "all_linear",
        "train.learning_rate": 0.02,
        "lora.use_rslora": False,
    }
    bad = {
        "lora.r": 1,
        "alpha_over_r": 0.25,
        "lora.lora_dropout": 0.0,
        "lora.targets": "qv",
        "train.learning_rate": 0.0001,
        "lora.use_rslora": False,
    }

    def enqueue(sweep):
        sweep.study.enqueue_trial(good)
        sweep.study.enqueue_trial(bad)

    sweep, summary = run_sweep(overrides, before_run=enqueue)
    first, second = sweep.study.get_trials()
    assert (first.state, second.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    assert sorted(first.intermediate_values) == [3, 6, 9, 12, 13]  # optimizer steps, not evaluation counts
    assert max(second.intermediate_values) < 12
    runs = trial_runs("prune")
    pruned = runs.iloc[1]
    assert pruned["status"] == "KILLED" and pruned["tags.optuna.state"] == "PRUNED"
    history = MlflowClient().get_metric_history(pruned["run_id"], "eval_loss")
    assert max(m.step for m in history) < 12  # stopped before the end


def test_pruning_reporter_never_prunes_a_fully_trained_trial():
    """A real pruner over a real trial: an evaluation at the last step is reported but cannot prune,
    one at an earlier step can, and one after training (``trainer.evaluate()``) is not reported."""
    from transformers import TrainerControl, TrainerState

    from lora_lab.pruning import PruningReporter

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    done = study.ask()
    for step in (3, 6):
        done.report(0.1, step)
    study.tell(done, 0.1)
    trial = study.ask()
    reporter = PruningReporter(trial, "eval_loss")
    state, control = TrainerState(), TrainerControl()
    state.max_steps = 6
    reporter.on_train_begin(None, state, control)
    state.global_step = 6
    reporter.on_evaluate(None, state, control, metrics={"eval_loss": 9.0})
    assert reporter.pruned_at is None and not control.should_training_stop and trial.should_prune()
    state.global_step = 3
    reporter.on_evaluate(None, state, control, metrics={"eval_loss": 9.0})
    assert reporter.pruned_at == 3 and control.should_training_stop
    reporter.on_train_end(None, state, control)
    state.global_step = 7
    reporter.on_evaluate(None, state, control, metrics={"eval_loss": 9.0})
    assert sorted(study.trials[1].intermediate_values) == [3, 6]


def test_multi_objective_sweep_records_the_pareto_set(run_sweep):
    overrides = ["+sweep=pareto", "sweep.study_name=pareto_t", "sweep.n_trials=3"]
    sweep, summary = run_sweep(overrides)
    assert [d.name for d in sweep.study.directions] == ["MINIMIZE", "MINIMIZE"]
    complete = [t for t in sweep.study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 3 and all(len(t.values) == 2 for t in complete)
    pareto = {t.number for t in sweep.study.best_trials}
    for t in complete:  # a trial is on the front iff no other trial is at least as good in both
        dominated = any(
            o.values[0] <= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in complete
        )
        assert (t.number in pareto) == (not dominated)
    tags = MlflowClient().get_run(summary.parent_run_id).data.tags
    assert set(map(int, tags["pareto_trial_numbers"].split(","))) == pareto
    # best_* is the Pareto member best on the first objective
    lead = min((t for t in complete if t.number in pareto), key=lambda t: (t.values, t.number))
    assert tags["best_trial_number"] == str(lead.number)


def test_journal_storage_and_seed_repeats(run_sweep, tmp_path):
    journal = tmp_path / "study.journal"
    overrides = [
        "+sweep=full",
        "sweep.study_name=journal_t",
        "sweep.n_trials=1",
        "sweep.seeds=2",
        "sweep.sampler.name=random",
        "sweep.pruner.name=none",
        "sweep.baselines=[]",
        f"sweep.storage={journal}",
    ]
    sweep, summary = run_sweep(overrides)
    assert summary.counts == {"COMPLETE": 2} and journal.stat().st_size > 0
    study = optuna.load_study(
        study_name="journal_t",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )
    first, second = study.get_trials()
    assert first.params == second.params  # the second trial repeats the first configuration ...
    runs = trial_runs("journal_t")
    assert sorted(runs["params.train.seed"].astype(int)) == [0, 1]  # ... with the next seed
    assert runs["tags.lora_lab.config_id"].nunique() == 1
    assert not math.isclose(runs["metrics.eval_loss"].iloc[0], runs["metrics.eval_loss"].iloc[1])


class DivergesAtFirstStep(TrainerCallback):
    """Fault injection: every trial fails as a NaN loss fails it (the configuration's own failure)."""

    def on_step_end(self, args, state, control, **kwargs):
        raise TrialFailedError("training loss became nan at step 1: the run diverged")


def test_failing_trials_are_recorded_and_an_all_failed_sweep_errors(run_sweep):
    overrides = ["+sweep=targets", "sweep.study_name=all_fail"]
    from lora_lab.sweep import SweepFailedError

    choices = {"lora.r": [2], "lora.targets": ["qv", "attn", "mlp", "all_linear"]}
    with pytest.raises(SweepFailedError, match="every trial.*diverged"):
        run_sweep(overrides, choices, trial_callbacks=[DivergesAtFirstStep()])
    runs = trial_runs("all_fail")
    assert len(runs) == 3  # stopped after three failures with no success
    assert set(runs["status"]) == {"FAILED"} and set(runs["tags.optuna.state"]) == {"FAIL"}
    assert runs["tags.lora_lab.error"].str.contains("diverged").all()
    assert set(runs["tags.lora_lab.outcome"]) == {"error"}
    parent = mlflow.search_runs(experiment_names=["all_fail"], filter_string="tags.`lora_lab.kind` = 'sweep'")
    assert parent["status"].tolist() == ["FAILED"]
    # the cause gone, the same study resumes: earlier failures are results (not run again), not a
    # reason to stop now
    sweep, summary = run_sweep(overrides, choices)
    assert summary.counts == {"COMPLETE": 1, "FAIL": 3} and summary.unfinished == ["search: 3 failed"]
    parent = mlflow.search_runs(experiment_names=["all_fail"], filter_string="tags.`lora_lab.kind` = 'sweep'")
    assert parent["status"].tolist() == ["FINISHED"]
    # a study keeps one definition: another set of choices is refused with a clear message
    with pytest.raises(DefinitionChangedError, match=r"sweep.params.lora.targets: choices.*new sweep.study_name"):
        run_sweep(overrides, {"lora.r": [2], "lora.targets": ["qv"]})


# -- exactly once: seeds, samplers, failures, baselines --------------------------------------------


def _slots(study: optuna.Study, state=TrialState.COMPLETE) -> list[str]:
    return sorted(t.user_attrs["lora_lab.slot"] for t in study.get_trials() if t.state == state)


@pytest.mark.slow
def test_raising_seeds_on_an_existing_grid_runs_only_the_new_seeds(run_sweep):
    overrides = ["+sweep=targets", "sweep.study_name=more_seeds"]
    choices = {"lora.r": [2], "lora.targets": ["qv", "mlp"]}
    sweep, first = run_sweep(overrides, choices)
    assert first.counts == {"COMPLETE": 2}
    before = {t.number: t.user_attrs["lora_lab.slot"] for t in sweep.study.get_trials()}
    sweep, second = run_sweep(overrides + ["sweep.seeds=2"], choices)
    assert second.counts == {"COMPLETE": 4}
    trials = sweep.study.get_trials()
    assert {t.number: t.user_attrs["lora_lab.slot"] for t in trials if t.number in before} == before  # kept
    slots = _slots(sweep.study)
    assert len(set(slots)) == 4 and sorted(s.split("/")[1] for s in slots) == ["0", "0", "1", "1"]
    runs = trial_runs("more_seeds")
    assert len(runs) == 4 and sorted(runs["params.train.seed"].astype(int)) == [0, 0, 1, 1]
    assert sweep.study.user_attrs["lora_lab.plan"]["seeds"] == [0, 1]
    _, third = run_sweep(overrides + ["sweep.seeds=2"], choices)  # nothing missing: nothing runs
    assert third.counts == {"COMPLETE": 4} and len(trial_runs("more_seeds")) == 4


@pytest.mark.slow
def test_raising_n_trials_outside_a_grid_samples_only_new_configurations(run_sweep):
    overrides = [
        "+sweep=full",
        "sweep.study_name=more_trials",
        "sweep.sampler.name=random",
        "sweep.pruner.name=none",
        "sweep.baselines=[]",
    ]
    sweep, first = run_sweep(overrides + ["sweep.n_trials=1"])
    assert first.counts == {"COMPLETE": 1}
    sweep, second = run_sweep(overrides + ["sweep.n_trials=2"])
    assert second.counts == {"COMPLETE": 2}
    assert len({t.user_attrs["lora_lab.config_id"] for t in sweep.study.get_trials()}) == 2


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["cmaes", "qmc", "nsgaii"])
def test_every_sampler_runs_past_its_start(run_sweep, sampler):
    """CMA-ES and NSGA-II fail only once past their random start (CMA-ES needs the ``cmaes``
    package): each runs past its start-up phase (one random trial for CMA-ES, a generation of two
    for NSGA-II)."""
    preset = "pareto" if sampler == "nsgaii" else "full"
    n_trials = 3 if sampler == "nsgaii" else 2
    overrides = [
        f"+sweep={preset}",
        f"sweep.study_name=sampler_{sampler}",
        f"sweep.sampler.name={sampler}",
        "sweep.sampler.n_startup_trials=1",
        "sweep.sampler.population_size=2",
        f"sweep.n_trials={n_trials}",
        "sweep.pruner.name=none",
        "sweep.baselines=[]",
    ]
    sweep, summary = run_sweep(overrides)
    assert summary.counts.get("COMPLETE") == n_trials and not summary.counts.get("FAIL")
    if sampler == "nsgaii":
        complete = [t for t in sweep.study.get_trials() if t.state == TrialState.COMPLETE]
        assert max(sweep.study.sampler.get_trial_generation(sweep.study, t) for t in complete) >= 1


def test_pareto_preset_population_fits_its_trials():
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        sweep = to_sweep_config(compose("config", overrides=["+sweep=pareto"]))
    assert sweep.sampler.population_size * 2 <= sweep.n_trials  # at least one generation past random


@pytest.mark.slow
def test_an_error_while_resolving_derived_values_is_shown_and_recorded(run_sweep, capsys):
    """A derived expression that fails between the ends of a range (preflight evaluates it on the
    ends only: r in [1, 4] gives 8 and 2 there, r=2 divides by zero) fails that trial before it has a
    config: its cause still reaches the console and an MLflow run; the other points run."""
    overrides = [
        "+sweep=targets",
        "sweep.study_name=derived_err",
        "sweep.sampler.name=random",
        "sweep.pruner.name=none",
        "sweep.n_trials=3",
        "sweep.params={lora.r: {type: int, low: 1, high: 4}}",  # merged: lora.targets stays
        "sweep.derived={lora.lora_alpha: '8 / (lora.r - 2) ** 2'}",
    ]

    def enqueue(sweep):
        for r in (1, 2, 4):
            sweep.study.enqueue_trial({"lora.r": r})

    sweep, summary = run_sweep(overrides, before_run=enqueue)
    assert summary.counts == {"COMPLETE": 2, "FAIL": 1}
    assert "ZeroDivisionError" in capsys.readouterr().err
    runs = mlflow.search_runs(experiment_names=["derived_err"], filter_string="tags.`lora_lab.kind` = 'trial'")
    failed = runs[runs["status"] == "FAILED"]
    assert len(failed) == 1 and failed["tags.lora_lab.error"].str.contains("ZeroDivisionError").all()
    assert failed["tags.lora_lab.outcome"].tolist() == ["error"]


@pytest.mark.slow
def test_baselines_run_once_per_seed_outside_the_search_and_confirm_reruns_the_best(run_sweep):
    overrides = [
        "+sweep=full",
        "sweep.study_name=base_conf",
        "sweep.sampler.name=random",
        "sweep.pruner.name=none",
        "sweep.n_trials=2",
        "sweep.seeds=2",
        "sweep.confirm_top_k=1",
        "sweep.confirm_seeds=1",
        "sweep.baselines=[{name: small, overrides: ['lora.r=1']}]",
    ]
    sweep, summary = run_sweep(overrides)
    assert summary.counts == {"COMPLETE": 4} and summary.baselines == {"COMPLETE": 2}
    assert summary.confirmations == {"COMPLETE": 1}
    runs = mlflow.search_runs(experiment_names=["base_conf"])
    baselines = runs[runs["tags.lora_lab.kind"] == "baseline"]
    assert sorted(baselines["params.train.seed"].astype(int)) == [0, 1]
    assert set(baselines["tags.lora_lab.baseline"]) == {"small"} and set(baselines["params.lora.r"]) == {"1"}
    confirm = runs[runs["tags.lora_lab.confirm"] == "true"]
    search = runs[(runs["tags.lora_lab.kind"] == "trial") & (runs["tags.lora_lab.confirm"] != "true")]
    means = search.groupby("tags.lora_lab.config_id")["metrics.eval_loss"].mean()
    assert confirm["tags.lora_lab.config_id"].tolist() == [means.idxmin()]  # the best configuration ...
    assert confirm["params.train.seed"].tolist() == ["2"]  # ... with a seed the search did not use
    assert len(sweep.study.get_trials()) == 4  # neither baselines nor confirmations feed the sampler


@pytest.mark.slow
def test_target_modules_the_model_lacks_are_refused_before_anything_is_created(tracking_uri, tmp_path):
    """The command line: a target module the model lacks fails every trial, so preflight refuses it
    (checked on the model's config, no weights loaded) with one paragraph and exit 2; no study, no
    MLflow experiment, no outputs/ folder is left behind."""
    import subprocess

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_lab.sweep",
            "+sweep=targets",
            "sweep.study_name=cli_fail",
            "lora.target_modules=[no_such_module]",
            *TINY,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(Path(CONF).parent)},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Invalid value for 'lora.target_modules'" in done.stderr and "not found: no_such_module" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "outputs").exists()
    assert MlflowClient(tracking_uri).get_experiment_by_name("cli_fail") is None


# -- warm start: the best configurations of an earlier study first ---------------------------------


def test_warm_start_ranks_configurations_by_their_mean_over_seeds_and_fits_them_to_the_space(tmp_path):
    """A real journal study with seeds of one configuration: a configuration ranks by its mean, in
    the study's direction; values come back in the space's own terms (2.0 as the choice 2, so its
    config_id is the one the sampler would give it), and a value outside the space is skipped."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from lora_lab.study import rank_configurations, select_warm_start

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "e.journal")))
    source = optuna.create_study(study_name="acc", storage=storage, direction="maximize")
    there = {"lora.r": CategoricalDistribution([1.0, 2.0, 4.0, 64.0]), "lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for r, lr, value in [
        (2.0, 0.01, 0.9),  # r=2 has the single best trial, but its mean over two seeds is 0.6
        (2.0, 0.01, 0.3),
        (4.0, 0.01, 0.7),
        (64.0, 0.01, 0.8),  # outside the space below
        (1.0, 0.05, 0.65),
        (1.0, 0.01, 0.1),
    ]:
        source.add_trial(optuna.trial.create_trial(params={"lora.r": r, "lr": lr}, distributions=there, value=value))
    source.add_trial(optuna.trial.create_trial(state=TrialState.FAIL))
    ranked = rank_configurations(source)
    assert [(p["lora.r"], round(v, 3), n) for p, v, n in ranked] == [
        (64.0, 0.8, [3]),
        (4.0, 0.7, [2]),
        (1.0, 0.65, [4]),
        (2.0, 0.6, [0, 1]),
        (1.0, 0.1, [5]),
    ]
    here = {"lora.r": CategoricalDistribution([1, 2, 4, 8]), "lr": FloatDistribution(1e-3, 1e-1, log=True)}
    taken, skipped = select_warm_start(ranked, here, top_k=3)
    assert [c.params for c in taken] == [
        {"lora.r": 4, "lr": 0.01},
        {"lora.r": 1, "lr": 0.05},
        {"lora.r": 2, "lr": 0.01},
    ]
    assert all(type(c.params["lora.r"]) is int for c in taken)
    assert [c.config_id for c in taken] == [search_space.config_id(c.params) for c in taken]
    assert [c.value for c in taken] == [0.7, 0.65, pytest.approx(0.6)] and taken[2].trials == [0, 1]
    assert skipped == ["lora.r=64.0 not in the choices [1, 2, 4, 8]"]
    assert select_warm_start(ranked, here, top_k=1)[0] == taken[:1]
    narrow = {"lora.r": CategoricalDistribution([1, 2, 4, 8]), "lr": FloatDistribution(1e-3, 2e-2, log=True)}
    assert [c.params["lora.r"] for c in select_warm_start(ranked, narrow, top_k=9)[0]] == [4, 2, 1]  # lr 0.05 is out


@pytest.mark.slow
def test_warm_start_runs_the_earlier_studys_best_configurations_first_each_once(run_sweep, tmp_path, capsys):
    """A real earlier study of four configurations, then a search warm-started from it: its best
    configurations that fit the (narrower) space are this study's first trials, in rank order, and
    count toward n_trials; TPE then proposes the rest. Running the command again adds no trial, and
    raising the seeds runs each configuration's new seed once."""
    journal = tmp_path / "earlier.journal"
    common = ["+sweep=targets", "sweep.sampler.name=random", "sweep.pruner.name=none", f"sweep.storage={journal}"]
    earlier = [
        {"lora.targets": "qv", "lora.r": 2},
        {"lora.targets": "attn", "lora.r": 8},
        {"lora.targets": "mlp", "lora.r": 2},
        {"lora.targets": "all_linear", "lora.r": 8},
    ]

    def enqueue(sweep):
        for params in earlier:
            sweep.study.enqueue_trial(params)

    source, summary = run_sweep([*common, "sweep.study_name=ws_earlier", "sweep.n_trials=4"], before_run=enqueue)
    assert summary.counts == {"COMPLETE": 4}
    ranked = sorted(source.study.get_trials(), key=lambda t: t.value)
    assert sorted(t.params["lora.targets"] for t in ranked) == ["all_linear", "attn", "mlp", "qv"]
    best_targets = ranked[0].params["lora.targets"]
    here = [t for t in ("qv", "attn", "mlp", "all_linear") if t != best_targets]  # the best one does not fit
    expected = [t.params for t in ranked[1:3]]

    command = [
        "+sweep=targets",
        "sweep.study_name=ws_later",
        "sweep.sampler.name=tpe",
        "sweep.pruner.name=none",
        "sweep.n_trials=3",
        "sweep.warm_start.study=ws_earlier",
        f"sweep.warm_start.storage={journal}",
        "sweep.warm_start.top_k=2",
    ]
    choices = {"lora.targets": here}
    capsys.readouterr()
    sweep, summary = run_sweep(command, choices)
    # the two warm configurations count toward n_trials=3 (a TPE proposal of one of them is a duplicate)
    assert summary.counts["COMPLETE"] == 3 and set(summary.counts) <= {"COMPLETE", "DUPLICATE"}
    held = len(sweep.study.get_trials())
    trials = [t for t in sweep.study.get_trials() if t.state == TrialState.COMPLETE]
    assert [t.number for t in trials[:2]] == [0, 1] and [t.params for t in trials[:2]] == expected  # first, in order
    assert trials[2].params not in expected and trials[2].params["lora.targets"] in here  # then TPE's own
    # a configuration's id covers its values and the study's definition (everything else it trains with)
    ids = [search_space.config_id(p, sweep.config_basis) for p in expected]
    assert sweep.config_basis and [t.user_attrs["lora_lab.config_id"] for t in trials[:2]] == ids
    distributions = search_space.distributions(sweep.sweep)
    assert all(t.distributions == distributions for t in trials)  # ordinary trials for the sampler to learn from
    line = (
        f"warm start: 2 configurations from study 'ws_earlier' (eval_loss {ranked[1].value:.4g}, "
        f"{ranked[2].value:.4g}, best first); 1 skipped: outside this space "
        f"(lora.targets='{best_targets}' not in the choices {here})"
    )
    assert f"lora_lab: {line}\n" in capsys.readouterr().err
    assert MlflowClient().get_run(summary.parent_run_id).data.tags["lora_lab.warm_start"] == line
    kept = sweep.study.user_attrs["lora_lab.warm_start"]
    assert [c["params"] for c in kept["configs"]] == expected and kept["metric"] == "eval_loss"
    assert [c["trials"] for c in kept["configs"]] == [[ranked[1].number], [ranked[2].number]]
    runs = trial_runs("ws_later")
    assert runs["params.lora.targets"].tolist()[:2] == [p["lora.targets"] for p in expected]

    sweep, again = run_sweep(command, choices)  # the same command: nothing is missing, nothing runs
    assert again.counts == summary.counts and len(sweep.study.get_trials()) == held

    sweep, more = run_sweep([*command, "sweep.seeds=2"], choices)  # each configuration's seed 1, once
    assert more.counts["COMPLETE"] == 6 and more.counts.get("DUPLICATE", 0) == summary.counts.get("DUPLICATE", 0)
    slots = _slots(sweep.study)
    assert len(set(slots)) == 6
    by_config: dict[str, list[int]] = {}
    for t in sweep.study.get_trials(states=(TrialState.COMPLETE,)):
        by_config.setdefault(t.user_attrs["lora_lab.config_id"], []).append(t.user_attrs["lora_lab.seed"])
    assert sorted(map(sorted, by_config.values())) == [[0, 1]] * 3
    assert set(ids) <= set(by_config)
