"""The report's statistics against reference computations, and the recommendation rule on constructed sweeps
logged to a real sqlite MLflow store.

Reference values: Student t quantiles from published tables (t(0.975; 3) = 3.182446305284263,
t(0.975; 2) = 4.302652729749464, t(0.95; 2) = 2.919985580353726) and Welch's statistic and degrees of
freedom written out from their definitions.
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
from scipy import stats as scipy_stats

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


def test_welch_matches_reference():
    a, b = [1.0, 1.2, 1.1], [0.8, 0.85, 0.9, 0.7]
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert stats.welch_p(a, b) == pytest.approx(2 * scipy_stats.t.sf(abs(t), df))
    assert math.isnan(stats.welch_p([1.0], b))  # one seed: no test
    assert stats.welch_p([1.0, 1.0], [1.0, 1.0, 1.0]) == 1.0  # no spread, same value: a tie
    assert stats.welch_p([1.0, 1.0], [0.5, 0.5]) == 0.0  # no spread, different values: apart


def test_tie_rules():
    best, near, far = [0.50, 0.51, 0.49], [0.505, 0.525, 0.485], [0.70, 0.71, 0.69]
    welch = stats.TieRule("welch", alpha=0.05)
    assert welch.tie(near, best)[0] is True and welch.tie(far, best)[0] is False
    assert welch.tie([0.5], best)[0] is None
    relative = stats.TieRule("relative", tolerance=0.05)  # within 5% of 0.5: 0.025
    assert relative.tie([0.52], best)[0] is True and relative.tie([0.53], best)[0] is False
    absolute = stats.TieRule("absolute", tolerance=0.2)
    assert absolute.tie(far, best) == (True, pytest.approx(0.2))
    assert "Welch" in welch.describe() and "5%" in relative.describe()
    with pytest.raises(ValueError, match="welch, relative, absolute"):
        stats.TieRule("bayes")


def test_bootstrap_interval_and_variance_explained():
    a, b = [0.6, 0.5, 0.7], [0.4, 0.6]
    ratio = lambda x, y: (2.0 - np.mean(x)) / (2.0 - np.mean(y))  # noqa: E731
    low, high = stats.bootstrap_ci([a, b], ratio)
    assert low < ratio(a, b) < high
    assert stats.bootstrap_ci([a, b], ratio) == (low, high)  # seeded: the same interval again
    # the resampled means lie within the samples' ranges, so the interval does too
    assert (2.0 - 0.7) / (2.0 - 0.4) <= low and high <= (2.0 - 0.5) / (2.0 - 0.6)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([[0.6], b], ratio))
    frame = pd.DataFrame({"f": ["x", "x", "y", "y"], "g": ["x", "y", "x", "y"], "v": [1.0, 1.0, 3.0, 3.0]})
    assert stats.variance_explained(frame, "f", "v") == pytest.approx(1.0)
    assert stats.variance_explained(frame, "g", "v") == pytest.approx(0.0)
    mixed = frame.assign(v=[1.0, 2.0, 3.0, 6.0])  # total SS 14, between SS (f) 9
    assert stats.variance_explained(mixed, "f", "v") == pytest.approx(9 / 14)


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
    # quality falls from r=1 to r=4 and is flat after; the task's designed change touches 4 letter pairs
    swaps = {"data.swaps": 4}
    _sweep(
        client,
        "saturating",
        {
            f"r{r}": {"values": {"lora.r": r}, "params": 250 * r, "loss": loss, "fixed": swaps}
            for r, loss in (
                (1, [1.0, 1.02, 0.98]),
                (2, [0.7, 0.72, 0.68]),
                (4, [0.50, 0.52, 0.48]),
                (8, [0.48, 0.50, 0.49]),
            )
        },
    )
    # all linear layers clearly better than q,v at r=4 and r=8; rsLoRA steadier than alpha/r at r=64
    _sweep(
        client,
        "targets_rslora",
        {
            f"{t}{r}{rs}": {
                "values": {"lora.r": r, "lora.targets": t, "lora.use_rslora": rs},
                "params": r * (700 if t == "all_linear" else 200),
                "loss": loss,
            }
            for t, r, rs, loss in (
                ("qv", 4, False, [0.80, 0.82, 0.78]),
                ("all_linear", 4, False, [0.60, 0.61, 0.59]),
                ("qv", 8, False, [0.75, 0.76, 0.74]),
                ("qv", 16, False, [0.62, 0.63, 0.61]),  # 3,200 params: within 25% of all_linear r=4's 2,800
                ("all_linear", 8, False, [0.50, 0.52, 0.48]),
                ("all_linear", 64, True, [0.45, 0.46, 0.44]),
                ("all_linear", 64, False, [0.40, 0.70, 0.55]),
            )
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
    rule = stats.TieRule(config.tie_rule, config.tie_alpha, config.tolerance)
    return tables.config_table(data.ranked, metric, direction, data.info, config.confidence, rule), data


def test_recommends_the_cheaper_configuration_within_noise(client):
    configs, data = _configs(client, "within_noise")
    assert configs["group"].tolist() == ["big", "cheap"]  # big has the better mean
    assert configs["tie"].tolist() == [True, True]
    rec = findings.recommend(configs, "eval_loss", "minimize")
    assert rec.best["group"] == "big" and rec.chosen["group"] == "cheap"
    assert findings.recommended_command(data.ranked, rec) == "python -m lora_lab.train lora.r=4"
    em, _ = _configs(client, "within_noise", "exact_match", "maximize")
    assert findings.recommend(em, "exact_match", "maximize").chosen["group"] == "cheap"  # 1.0 everywhere: a tie


def test_recommends_the_better_configuration_when_apart(client):
    configs, data = _configs(client, "clear_gap")
    assert configs["group"].tolist() == ["big", "mid", "cheap"] and configs["tie"].tolist() == [True, False, False]
    assert configs["tie_stat"].iloc[2] < 0.001  # Welch's p between cheap and big
    rec = findings.recommend(configs, "eval_loss", "minimize")
    assert rec.chosen["group"] == "big"
    assert findings.recommended_command(data.ranked, rec) == "python -m lora_lab.train lora.r=16"
    em, _ = _configs(client, "clear_gap", "exact_match", "maximize")
    assert findings.recommend(em, "exact_match", "maximize").chosen["group"] == "big"
    # a user tolerance of 50% of the best mean makes every configuration acceptable: the cheapest wins
    loose, _ = _configs(client, "clear_gap", tie_rule="relative", tolerance=0.5)
    assert findings.recommend(loose, "eval_loss", "minimize").chosen["group"] == "cheap"
    # 0.15 absolute covers mid (0.1 away) but not cheap (0.2 away)
    absolute, _ = _configs(client, "clear_gap", tie_rule="absolute", tolerance=0.15)
    assert findings.recommend(absolute, "eval_loss", "minimize").chosen["group"] == "mid"


def test_written_report_leads_with_the_recommendation(client, tmp_path):
    path = report.build_report(ReportConfig(study="within_noise", output_dir=str(tmp_path)), client)
    md = (path / "report.md").read_text()
    first = md.split("## ")[1]
    assert first.startswith("Recommendation") and "use `lora.r=4`" in first and "0.5 ± 0.075 (n=3)" in first
    assert "The best mean is `lora.r=16`" in first and "extend the grid below it" not in first
    assert (path / "recommended_command.txt").read_text() == (
        "# eval_loss: lora.r=4\npython -m lora_lab.train lora.r=4\n"
        "# exact_match: lora.r=4\npython -m lora_lab.train lora.r=4\n"
    )
    assert "| lora.r=4 ≈ | 0.5 ± 0.075 | 3 |" in md


def test_grid_edge_and_saturation_findings(client):
    configs, data = _configs(client, "saturating")
    edges = findings.grid_edges(data.info, configs, ["lora.r"])
    assert configs["group"].iloc[0] == "r8" and edges and "largest lora.r searched (8)" in edges[0]
    found = findings.saturation(configs, ["lora.r"], 4.0)
    assert found.verdict == "holds"
    assert found.evidence.startswith("from r = 4 on every rank is within noise of the best")
    assert "data.swaps = 4" in found.evidence and "r/swaps = 1" in found.evidence
    rising = configs.assign(tie=[True, False, True, False])  # the r=4 cell tied, r=2 not, r=1 not, r=8 best
    assert findings.saturation(rising, ["lora.r"], None).verdict == "holds"
    assert findings.saturation(configs.assign(tie=[True, None, None, None]), ["lora.r"], None).verdict == "inconclusive"


def test_targets_and_rslora_findings(client):
    configs, data = _configs(client, "targets_rslora")
    keys = ["lora.r", "lora.targets", "lora.use_rslora"]
    targets = findings.targets_comparison(configs, data.ranked, "eval_loss", "minimize", keys)
    assert targets.verdict == "holds" and "in 2 of 2" in targets.evidence
    assert "r=4: all_linear 0.6 vs qv 0.8" in targets.evidence
    assert "2,800 params: all_linear r=4 0.6 vs qv r=16 0.62 (Welch p = " in targets.evidence
    assert "5,600 params" not in targets.evidence  # no q,v configuration within 25% of it
    rslora = findings.rslora_comparison(configs, data.ranked, data.runs, "eval_loss", keys)
    assert rslora.verdict == "holds" and "r=64" in rslora.evidence
    assert (
        "rsLoRA: mean 0.45, seed std 0.01" in rslora.evidence and "alpha/r: mean 0.55, seed std 0.15" in rslora.evidence
    )
    none = findings.rslora_comparison(configs, data.ranked, data.runs, "eval_loss", ["lora.r"])
    assert none.verdict == findings.NOT_MEASURED


def test_confirm_stage_decides_the_ranking(client):
    configs, data = _configs(client, "confirmed")
    assert data.confirmed and len(data.done) == 8 and len(data.ranked) == 6
    assert configs["group"].tolist() == ["B", "A"] and configs["n"].tolist() == [3, 3]
    assert configs["mean"].tolist() == [pytest.approx(0.5), pytest.approx(0.6)]
    assert findings.recommend(configs, "eval_loss", "minimize").chosen["group"] == "B"


def test_tie_cells_read_as_yes_or_no():
    assert [stats.is_tie(v) for v in (True, np.bool_(True), False, np.bool_(False), None, float("nan"))] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    # a table where every cell is decided has a numpy bool column: still read right
    table = pd.DataFrame(
        {"group": ["a", "b"], "trainable_params": [10, 5], "r": [2, 1], "mean": [0.1, 0.2], "tie": [True, True]}
    )
    assert table["tie"].dtype == bool
    assert findings.recommend(table, "eval_loss", "minimize").chosen["group"] == "b"


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
    assert (path / "optuna_contour.png").read_bytes().startswith(b"\x89PNG")  # two values in the stored study
