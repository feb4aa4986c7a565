"""The report's statistics against reference computations, and the recommendation rule on constructed sweeps
logged to a real sqlite MLflow store (the decision rules on synthetic run tables: test_report_decide.py).

Reference values: Student t quantiles from published tables (t(0.975; 3) = 3.182446305284263,
t(0.975; 2) = 4.302652729749464, t(0.95; 2) = 2.919985580353726).
"""

from __future__ import annotations

import json
import math
import statistics
import time

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from lora_lab import report
from lora_lab.config import ReportConfig
from lora_lab.report import findings, stats, tables
from lora_lab.report.read import read_sweep

# -- intervals and tests against references ---------------------------------------------------------


def test_t_interval_matches_reference():
    values = [0.5, 0.6, 0.7, 0.9]
    mean, sd = statistics.mean(values), statistics.stdev(values)
    half = 3.182446305284263 * sd / math.sqrt(4)
    s = stats.summarize(values)
    assert s["n"] == 4 and s["mean"] == pytest.approx(mean) and s["std"] == pytest.approx(sd)
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert s["ci_half"] == pytest.approx(half)
    ninety = stats.summarize([1.0, 2.0, 4.0], confidence=0.90)
    assert ninety["ci_half"] == pytest.approx(2.919985580353726 * statistics.stdev([1, 2, 4]) / math.sqrt(3))
    one = stats.summarize([0.3])
    assert one["mean"] == 0.3 and one["n"] == 1 and math.isnan(one["std"]) and math.isnan(one["ci_half"])
    flat = stats.summarize([1.0, 1.0, 1.0])
    assert flat["ci_low"] == flat["ci_high"] == 1.0 and flat["ci_half"] == 0.0
    assert stats.summarize([1.0, float("nan"), "x", 3.0])["n"] == 2  # non-numbers are not seeds


def test_bootstrap_interval():
    a, b = [0.6, 0.5, 0.7], [0.4, 0.6]
    ratio = lambda x, y: (2.0 - np.mean(x)) / (2.0 - np.mean(y))  # noqa: E731
    low, high = stats.bootstrap_ci([a, b], ratio)
    assert low < ratio(a, b) < high
    assert stats.bootstrap_ci([a, b], ratio) == (low, high)  # seeded: the same interval again
    # the resampled means lie within the samples' ranges, so the interval does too
    assert (2.0 - 0.7) / (2.0 - 0.4) <= low and high <= (2.0 - 0.5) / (2.0 - 0.6)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([[0.6], b], ratio))


# -- constructed sweeps in a real MLflow store ----------------------------------------------------------


def _sweep(client: MlflowClient, study: str, configs: dict[str, dict], storage: str | None = None) -> None:
    """A sweep as lora_lab.sweep logs it: configs maps a name to {"values": searched values, "params":
    trainable params, "loss": [per seed], "em": [per seed] (optional), "confirm": [confirm-stage losses]}."""
    experiment_id = client.create_experiment(study)
    tags = {"lora_lab.kind": "sweep", "lora_lab.study": study, **({"optuna.storage": storage} if storage else {})}
    parent = client.create_run(experiment_id, run_name=study, tags=tags)
    space = {k: {"type": "categorical"} for k in next(iter(configs.values()))["values"]}
    client.log_batch(
        parent.info.run_id,
        params=[
            Param("sweep.objectives", json.dumps([{"metric": "eval_loss", "direction": "minimize"}])),
            Param("sweep.params", json.dumps(space)),
        ],
    )
    number = 0
    now = int(time.time() * 1000)
    for name, spec in configs.items():
        losses = [(seed, loss, False) for seed, loss in enumerate(spec["loss"])]
        losses += [(100 + seed, loss, True) for seed, loss in enumerate(spec.get("confirm", []))]
        for seed, loss, confirm in losses:
            values = dict(spec["values"])
            run = client.create_run(
                experiment_id,
                run_name=f"trial-{number}",
                tags={
                    "mlflow.parentRunId": parent.info.run_id,
                    "lora_lab.kind": "trial",
                    "lora_lab.study": study,
                    "optuna.trial_number": str(number),
                    "optuna.state": "COMPLETE",
                    "lora_lab.config_id": name,
                    "lora_lab.overrides": " ".join(f"{k}={v}" for k, v in values.items()) + f" train.seed={seed}",
                    **({"lora_lab.confirm": "true"} if confirm else {}),
                },
            )
            params = [Param(f"sweep.param.{k}", str(v)) for k, v in values.items()]
            params += [Param(k, str(v)) for k, v in values.items()]
            params += [Param("sweep.param.train.seed", str(seed)), Param("train.seed", str(seed))]
            params += [Param(k, str(v)) for k, v in spec.get("fixed", {}).items()]
            metrics = [Metric("eval_loss", loss, now, 10), Metric("trainable_params", spec["params"], now, 10)]
            if "em" in spec:
                metrics.append(Metric("exact_match", spec["em"][seed % 100], now, 10))
            client.log_batch(run.info.run_id, metrics=metrics, params=params)
            client.set_terminated(run.info.run_id, "FINISHED")
            number += 1


CHEAP, BIG = {"lora.r": 4}, {"lora.r": 16}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    # the cheap configuration is 0.01 worse than the big one, well inside the seeds' spread
    _sweep(
        client,
        "within_noise",
        {
            "cheap": {"values": CHEAP, "params": 1000, "loss": [0.50, 0.53, 0.47], "em": [1.0, 1.0, 1.0]},
            "big": {"values": BIG, "params": 4000, "loss": [0.49, 0.51, 0.47], "em": [1.0, 1.0, 1.0]},
        },
    )
    # the cheap configuration is 0.2 worse with a spread of 0.02: clearly apart
    _sweep(
        client,
        "clear_gap",
        {
            "cheap": {"values": CHEAP, "params": 1000, "loss": [0.70, 0.72, 0.68], "em": [0.8, 0.9, 0.85]},
            "mid": {"values": {"lora.r": 8}, "params": 2000, "loss": [0.60, 0.61, 0.59], "em": [0.8, 0.82, 0.84]},
            "big": {"values": BIG, "params": 4000, "loss": [0.49, 0.50, 0.51], "em": [1.0, 1.0, 1.0]},
        },
    )
    # a non-grid search: A looked best on one lucky seed, the confirm stage's fresh seeds put B first
    _sweep(
        client,
        "confirmed",
        {
            "A": {"values": {"lora.r": 8}, "params": 2000, "loss": [0.40], "confirm": [0.60, 0.62, 0.58]},
            "B": {"values": {"lora.r": 4}, "params": 1000, "loss": [0.50], "confirm": [0.50, 0.51, 0.49]},
        },
    )
    return client


def _configs(
    client: MlflowClient, study: str, metric: str = "eval_loss", direction: str = "minimize", **settings
) -> tuple[pd.DataFrame, object]:
    config = ReportConfig(study=study, metric=metric, direction=direction, **settings)
    data = read_sweep(config, client)
    rule = report.Rule(config.alpha, config.ratio_margin, config.proportion_margin, config.difference_margin)
    return tables.config_table(data.ranked, metric, direction, data.info, rule), data


def test_recommends_the_cheaper_configuration_shown_equivalent(client):
    configs, data = _configs(client, "within_noise", ratio_margin=1.5)
    assert configs["group"].tolist() == ["big", "cheap"]  # big has the better interval
    assert configs["decision"].tolist() == ["best", "equivalent"]  # 2% apart, seeds 6% apart: inside 1.5x
    rec = findings.recommend(configs, "eval_loss", "minimize")
    assert rec.best["group"] == "big" and rec.chosen["group"] == "cheap"
    assert findings.recommended_command(data.ranked, rec) == "python -m lora_lab.train lora.r=4"
    # within 1.05x the seeds' spread leaves it undecided: the best is kept, the cheap one named
    default, _ = _configs(client, "within_noise", ratio_margin=1.05)
    rec = findings.recommend(default, "eval_loss", "minimize")
    assert default["decision"].tolist() == ["best", "undecided"]
    assert rec.chosen["group"] == "big" and rec.open_cheaper["group"].tolist() == ["cheap"]


def test_recommends_the_better_configuration_when_apart(client):
    configs, data = _configs(client, "clear_gap")
    assert configs["group"].tolist() == ["big", "mid", "cheap"]
    assert configs["decision"].tolist() == ["best", "undecided", "worse"]  # cheap: 1.4x, beyond 1.25x
    rec = findings.recommend(configs, "eval_loss", "minimize")
    assert rec.chosen["group"] == "big"
    assert findings.recommended_command(data.ranked, rec) == "python -m lora_lab.train lora.r=16"
    # a margin of 1.3x covers mid (1.2x) but not cheap (1.4x, shown worse); 1.5x covers both
    loose, _ = _configs(client, "clear_gap", ratio_margin=1.3)
    assert loose["decision"].tolist() == ["best", "equivalent", "worse"]
    assert findings.recommend(loose, "eval_loss", "minimize").chosen["group"] == "mid"
    wide, _ = _configs(client, "clear_gap", ratio_margin=1.5)
    assert findings.recommend(wide, "eval_loss", "minimize").chosen["group"] == "cheap"


def test_written_report_leads_with_the_recommendation(client, tmp_path):
    path = report.build_report(ReportConfig(study="within_noise", output_dir=str(tmp_path), ratio_margin=1.5), client)
    md = (path / "report.md").read_text()
    first = md.split("## ")[1]
    assert first.startswith("Recommendation") and "use `lora.r=4`" in first and "(n=3)" in first
    assert "It is shown equivalent to the best, `lora.r=16`" in first and "within 1.5× of the best" in first
    assert "extend the grid below it" not in first
    assert (
        (path / "recommended_command.txt")
        .read_text()
        .startswith("# eval_loss: lora.r=4\npython -m lora_lab.train lora.r=4\n")
    )
    assert "| lora.r=4 ≈ |" in md and "within 1.5× of the best (margin)" in md
    assert "Holm-corrected for the 1 comparisons" in md


def test_decision_lines_for_the_end_of_a_sweep(client):
    lines = report.decision_lines("clear_gap", client)
    assert lines[0].startswith("best configuration: lora.r=16, eval_loss 0.4999 [")
    assert "(geometric mean over 3 seed(s), 95% interval)" in lines[0]
    assert lines[1] == (
        "recommended: the best itself, no cheaper configuration is shown equivalent: python -m lora_lab.train lora.r=16"
    )
    assert "undecided: 1 cheaper configuration(s) (lora.r=8)" in lines[2]
    with pytest.raises(report.ReportError):
        report.decision_lines("no_such_study", client)


def test_confirm_stage_decides_the_ranking(client):
    configs, data = _configs(client, "confirmed")
    assert data.confirmed and len(data.done) == 8 and len(data.ranked) == 6
    assert configs["group"].tolist() == ["B", "A"] and configs["n"].tolist() == [3, 3]
    assert configs["mean"].tolist() == [
        pytest.approx((0.5 * 0.51 * 0.49) ** (1 / 3)),
        pytest.approx((0.6 * 0.62 * 0.58) ** (1 / 3)),
    ]
    assert findings.recommend(configs, "eval_loss", "minimize").chosen["group"] == "B"


def test_optuna_views_from_the_sweeps_own_storage(client, tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    journal = tmp_path / "optuna.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="stored", storage=storage)
    space = {"lora.r": FloatDistribution(1, 64), "lora.lora_dropout": FloatDistribution(0, 0.3)}
    for r, dropout, loss in ((4, 0.0, 0.52), (8, 0.1, 0.41), (16, 0.2, 0.45), (32, 0.3, 0.47)):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lora.r": r, "lora.lora_dropout": dropout}, distributions=space, value=loss
            )
        )
    _sweep(
        client,
        "stored",
        {
            "a": {"values": {"lora.r": 4}, "params": 1000, "loss": [0.50, 0.54]},
            "b": {"values": {"lora.r": 8}, "params": 2000, "loss": [0.40, 0.42]},
        },
        storage=str(journal),
    )
    opened = tables.stored_study(str(journal), "stored")
    assert [t.value for t in opened.trials] == [0.52, 0.41, 0.45, 0.47]
    assert tables.stored_study(str(tmp_path / "elsewhere.journal"), "stored") is None  # another machine's file
    assert not (tmp_path / "elsewhere.journal").exists()  # and none created
    assert tables.stored_study("postgresql://***@db.example/optuna", "stored") is None  # credentials redacted
    path = report.build_report(ReportConfig(study="stored", output_dir=str(tmp_path / "out")), client)
    md = (path / "report.md").read_text()
    assert "of the sweep's own Optuna study, opened from its storage" in md
    assert (path / "optuna_slice.png").read_bytes().startswith(b"\x89PNG")
    assert not (path / "optuna_contour.png").exists()  # no surface over values that never ran
