"""The untrained base's scores (task A before adaptation, the zero-shot baseline), computed once per
base, data and evaluation settings and kept on disk for a sweep's other trials, workers and restarts
(lora_lab.base_scores), with real trials of the shipped tiny Llama on task B."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lora_lab import base_scores
from lora_lab.evaluate import prompt_batch
from lora_lab.names import FORGET_PREFIX, RETAIN_PREFIX, TASK_A_METRICS
from lora_lab.train import ResourceCache, base_retain_scores, run_trial

SMALL = (
    "data.n_train=64",
    "data.n_eval=32",
    "train.batch_size=16",
    "train.max_steps=2",
    "train.eval_every=2",
    "train.eval_generate=8",
    "train.save_adapter=false",
)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def cold_process():
    """Every test starts as a fresh process would: no scores in memory."""
    base_scores.forget_memory()
    yield
    base_scores.forget_memory()


def _files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


def _before(result) -> dict[str, float]:
    """The base's task A scores a trial used: its scores after adaptation minus its forgetting."""
    metrics = result.metrics()
    return {
        "loss": metrics[f"{RETAIN_PREFIX}eval_loss"] - metrics[f"{FORGET_PREFIX}eval_loss"],
        "match": metrics[f"{RETAIN_PREFIX}exact_match"] + metrics[f"{FORGET_PREFIX}exact_match"],
    }


def test_trials_and_a_second_process_reuse_the_scores_and_changed_settings_miss(make_trial_config, tmp_path):
    scores_dir = tmp_path / "base_scores"
    cache = ResourceCache(scores_dir)
    cfg = make_trial_config(*SMALL)
    resources = cache.get(cfg)
    first = run_trial(cfg, tmp_path / "t0", resources, show_progress=False)
    assert resources.scores.computed == 1 and len(_files(scores_dir)) == 1
    written = json.loads(_files(scores_dir)[0].read_text())
    assert set(written["scores"]) == set(TASK_A_METRICS)

    seed_1 = make_trial_config(*SMALL, "train.seed=1", "lora.r=2")  # another trial of the sweep
    second = run_trial(seed_1, tmp_path / "t1", cache.get(seed_1), show_progress=False)
    assert resources.scores.computed == 1 and cache.builds == 1  # reused, not scored again
    assert _before(second) == pytest.approx(_before(first), abs=1e-9)
    assert _before(first)["loss"] == pytest.approx(written["scores"][f"{RETAIN_PREFIX}eval_loss"], abs=1e-9)

    # a second process (another worker, or the sweep restarted) reads the file and scores nothing
    script = textwrap.dedent(
        f"""
        import json, sys
        from hydra import compose, initialize_config_dir
        from lora_lab.config import register_configs, to_trial_config
        from lora_lab.train import ResourceCache, base_retain_scores
        register_configs()
        with initialize_config_dir(config_dir={str(REPO / "conf")!r}, version_base=None):
            cfg = to_trial_config(compose("config", overrides={list(SMALL)!r}))
        resources = ResourceCache({str(scores_dir)!r}).get(cfg)
        before = base_retain_scores(resources, cfg)
        print(json.dumps({{"computed": resources.scores.computed, "read": resources.scores.read, "before": before}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    other = json.loads(done.stdout.strip().splitlines()[-1])
    assert (other["computed"], other["read"]) == (0, 1)
    assert other["before"] == pytest.approx(written["scores"], abs=0)

    # what the scores depend on changes the key: each of these is scored afresh, in a file of its own
    changed = [
        ("data.n_eval=24",),  # data: other held-out task A records
        ("data.family_seed=1",),  # data: another cipher family
        ("train.eval_generate=4",),  # evaluation: fewer prompts generated
        ("model=tiny_llama_scratch",),  # model: the random-weight base
    ]
    for extra in changed:
        other_cfg = make_trial_config(*SMALL, *extra)
        other_resources = ResourceCache(scores_dir).get(other_cfg)
        base_retain_scores(other_resources, other_cfg)
        assert other_resources.scores.computed == 1, extra
    assert len(_files(scores_dir)) == 1 + len(changed)


def test_a_torn_or_foreign_cache_file_is_ignored_and_rewritten(make_trial_config, tmp_path):
    scores_dir = tmp_path / "base_scores"
    cfg = make_trial_config(*SMALL)
    resources = ResourceCache(scores_dir).get(cfg)
    good = base_retain_scores(resources, cfg)
    (path,) = _files(scores_dir)
    whole = path.read_text()
    key = json.loads(whole)["key"]
    broken = [
        whole[: len(whole) // 2],  # torn: a crash mid-write (never written in place, but a copy could be)
        "",
        json.dumps({"key": "another", "format": base_scores.FORMAT, "scores": json.loads(whole)["scores"]}),
        json.dumps({"key": key, "scores": {TASK_A_METRICS[0]: 1.0}}),  # a score missing
        json.dumps({"key": key, "scores": {name: "high" for name in TASK_A_METRICS}}),  # not numbers
    ]
    for text in broken:
        path.write_text(text)
        base_scores.forget_memory()
        resources.scores.computed = 0
        assert base_retain_scores(resources, cfg) == pytest.approx(good, abs=1e-9)
        assert resources.scores.computed == 1, text[:80]
        assert json.loads(path.read_text())["key"] == key  # rewritten whole
    assert not list(scores_dir.glob(".*.tmp"))  # no temporary file left behind


def test_zero_shot_baselines_score_the_base_once(make_trial_config, tmp_path):
    scores_dir = tmp_path / "base_scores"
    cache = ResourceCache(scores_dir)
    results = []
    for seed in (0, 1):
        cfg = make_trial_config(*SMALL, "lora.method=none", f"train.seed={seed}")
        results.append(run_trial(cfg, tmp_path / f"z{seed}", cache.get(cfg), show_progress=False))
    resources = cache.get(cfg)
    assert resources.scores.computed == 2  # the zero-shot scores and task A, once each, for both seeds
    first, second = (r.metrics() for r in results)
    for name in ("eval_loss", "eval_token_accuracy", "exact_match", *TASK_A_METRICS):
        assert first[name] == second[name], name
    assert first[f"{FORGET_PREFIX}eval_loss"] == 0.0


def test_generation_prompts_are_encoded_once_per_tokenizer_and_prompts(make_trial_config):
    cfg = make_trial_config(*SMALL)
    resources = ResourceCache().get(cfg)
    tokenizer, records = resources.tokenizer, resources.task.eval_records[:8]
    tokenizer.padding_side = "left"
    try:
        first = prompt_batch(tokenizer, records)
        assert prompt_batch(tokenizer, [dict(r) for r in records]) is first  # the same prompts: encoded once
        assert prompt_batch(tokenizer, records[:4]) is not first
        assert first["input_ids"][:, -1].ne(tokenizer.pad_token_id).all()  # left-padded: prompts end together
    finally:
        tokenizer.padding_side = "right"
    assert prompt_batch(tokenizer, records) is not first  # another padding side, another batch
