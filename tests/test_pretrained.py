"""The shipped pretrained base, the default task B and the two baselines (zero-shot, full fine-tuning).

Real components throughout: the shipped safetensors loaded with ``from_pretrained`` (offline: the
session sets HF_HUB_OFFLINE), real Trainer steps, a real sqlite MLflow store.
"""

from __future__ import annotations

import string

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from transformers import Trainer, TrainingArguments

import lora_lab.model.base
from lora_lab import track
from lora_lab.config import DataConfig, ModelConfig, PretrainConfig, QuantConfig, to_trial_config
from lora_lab.data import family_keys, family_records, retain_records, synthetic_records, task_b_key
from lora_lab.errors import ConfigError, ModelUnavailableError, TrialFailedError
from lora_lab.evaluate import argmax_logits, exact_match, score, token_accuracy
from lora_lab.model.base import ASSETS_DIR, load_base_model, load_tokenizer
from lora_lab.names import FORGET_METRICS, TASK_A_METRICS
from lora_lab.pretrain import SUMMARY_FILE, Pretrainer
from lora_lab.train import base_retain_scores, build_resources, run_trial

SMALL = (
    "data.n_train=128",
    "data.n_eval=64",
    "train.batch_size=16",
    "train.eval_generate=32",
    "train.save_adapter=false",
)


@pytest.fixture(scope="module")
def task_a(make_trial_config):
    cfg = make_trial_config("data=cipher_family", "data.n_train=64", "data.n_eval=128")
    return cfg, build_resources(cfg)


@pytest.fixture(scope="module")
def task_b(make_trial_config):
    cfg = make_trial_config(*SMALL)
    return cfg, build_resources(cfg)


def test_shipped_weights_load_offline_and_solve_held_out_task_a(task_a):
    cfg, resources = task_a
    assert cfg.model.source == "package" and cfg.model.name == "tiny_llama"
    assert resources.base_model.config.hidden_size == 128  # r <= 16 stays well below full rank
    assert resources.tokenizer.name_or_path == str(ASSETS_DIR / "tiny_llama")  # the shipped tokenizer
    scores = score(resources.base_model, resources.task.eval_examples)
    assert scores["token_accuracy"] == 1.0 and scores["loss"] < 0.01
    assert (
        exact_match(
            resources.base_model, resources.tokenizer, resources.task.eval_records, resources.task.max_response_tokens
        )
        == 1.0
    )


def test_shipped_weights_solve_task_a_under_nf4(make_trial_config, task_a):
    cfg = make_trial_config("data=cipher_family", "data.n_train=64", "data.n_eval=64", "quant=nf4")
    resources = build_resources(cfg)
    assert type(resources.base_model.model.layers[0].mlp.up_proj).__name__ == "Linear4bit"
    match = exact_match(
        resources.base_model, resources.tokenizer, resources.task.eval_records, resources.task.max_response_tokens
    )
    assert match >= 0.95


def test_held_out_task_a_was_held_out_from_pretraining():
    pretrain = OmegaConf.load(ASSETS_DIR.parent.parent / "conf" / "pretrain.yaml")
    data = DataConfig(**OmegaConf.to_container(pretrain.data))
    trained, held_out = family_records(data, data.n_train, data.n_eval)
    b_default = DataConfig(task="cipher_swap", min_len=6, max_len=6)
    retain = retain_records(b_default)
    trained_prompts = {r["prompt"] for r in trained}
    assert retain and not trained_prompts & {r["prompt"] for r in retain}
    assert all(r in held_out for r in retain)
    assert {r["prompt"][0] for r in retain} == {"1", "2", "3"}  # every key but the one task B changes


@pytest.mark.parametrize("swaps", [0, 1, 6, 13])
def test_task_b_key_differs_from_the_pretraining_key_in_exactly_m_pairs(swaps):
    cfg = DataConfig(task="cipher_swap", swaps=swaps, min_len=6, max_len=6, n_train=50, n_eval=10)
    original = family_keys(cfg.family_seed, cfg.n_keys)[cfg.key_index]
    key, pairs = task_b_key(cfg)
    changed = {c for c in string.ascii_lowercase if key[c] != original[c]}
    assert len(changed) == 2 * swaps and len(pairs) == swaps
    for a, b in pairs:
        assert key[a] == original[b] and key[b] == original[a]
    assert changed == {c for pair in pairs for c in pair}
    train, held_out = synthetic_records(cfg)
    for record in train + held_out:
        assert record["prompt"][0] == str(cfg.key_index)
        assert record["response"] == "".join(key[c] for c in record["prompt"][1:-1])


def test_zero_shot_baseline_scores_the_untouched_base(make_trial_config, task_b, tmp_path):
    _, resources = task_b
    cfg = make_trial_config(*SMALL, "lora.method=none")
    result = run_trial(cfg, tmp_path, resources, show_progress=False)
    assert result.steps == 0 and result.trainable_params == 0 and result.adapter_dir is None
    # the same numbers transformers' Trainer.evaluate gives for the base model
    trainer = Trainer(
        model=resources.base_model,
        args=TrainingArguments(
            output_dir=str(tmp_path / "ref"),
            per_device_eval_batch_size=64,
            report_to="none",
            use_cpu=True,
            label_names=["labels"],
            remove_unused_columns=False,
        ),
        eval_dataset=resources.task.eval_examples,
        data_collator=resources.task.eval_examples.collator(),
        compute_metrics=token_accuracy,
        preprocess_logits_for_metrics=argmax_logits,
    )
    reference = trainer.evaluate()
    assert result.eval_loss == pytest.approx(reference["eval_loss"], rel=1e-5)
    assert result.token_accuracy == pytest.approx(reference["eval_token_accuracy"], abs=1e-9)
    assert result.eval_loss > 3.0 and result.exact_match < 0.1  # task B needs fine-tuning
    metrics = result.metrics()
    assert metrics["taskA_exact_match"] == 1.0 and metrics["forget_eval_loss"] == 0.0
    assert metrics["forget_exact_match"] == 0.0


def test_full_fine_tuning_trains_every_weight_and_leaves_the_shared_base_unchanged(make_trial_config, task_b, tmp_path):
    _, resources = task_b
    before = {name: tensor.clone() for name, tensor in resources.base_model.state_dict().items()}
    cfg = make_trial_config(
        *SMALL, "lora.method=full", "train.learning_rate=2e-3", "train.max_steps=4", "train.eval_every=2"
    )
    result = run_trial(cfg, tmp_path, resources, show_progress=False)
    n_params = sum(p.numel() for p in resources.base_model.parameters())
    assert result.trainable_params == result.total_params == n_params
    assert result.steps == 4 and result.target_modules == [] and result.adapter_dir is None
    zero_shot = score(resources.base_model, resources.task.eval_examples)["loss"]
    assert result.eval_loss < zero_shot - 0.5  # it trained
    after = resources.base_model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not any(p.requires_grad for p in resources.base_model.parameters())


def test_full_fine_tuning_of_a_quantized_base_is_rejected(make_trial_config):
    with pytest.raises(ConfigError, match="lora.method.*quant=none"):
        make_trial_config("lora.method=full", "quant=nf4")


def test_missing_shipped_model_names_the_rebuild_command(make_trial_config):
    cfg = make_trial_config("model.pretrained=no_such_model")
    with pytest.raises(ModelUnavailableError, match="python -m lora_lab.pretrain"):
        load_tokenizer(cfg.model)


def test_default_trial_logs_task_a_forgetting_and_ten_evaluations(compose_config, task_b, tmp_path):
    """The default trial (60 steps, LoRA r=8 on all linear layers) on task B, tracked in MLflow."""
    composed = compose_config(*SMALL)
    cfg = to_trial_config(composed)
    _, resources = task_b
    with track.single_run(cfg, OmegaConf.to_yaml(composed)) as run:
        result = run_trial(
            cfg,
            tmp_path,
            resources,
            callbacks=run.callbacks(),
            show_progress=False,
            on_adapter_ready=run.on_adapter_ready,
        )
        run.log_result(result, log_adapter=False)
    client = MlflowClient()
    logged = client.get_run(run.run_id).data.metrics
    for name in TASK_A_METRICS + FORGET_METRICS:
        assert name in logged, name
    before = base_retain_scores(resources, cfg)
    assert logged["forget_eval_loss"] == pytest.approx(logged["taskA_eval_loss"] - before["taskA_eval_loss"])
    assert logged["forget_exact_match"] == pytest.approx(before["taskA_exact_match"] - logged["taskA_exact_match"])
    assert logged["forget_eval_loss"] > 0  # adapting to B costs some of A: forgetting is measured, not assumed
    assert len(client.get_metric_history(run.run_id, "eval_loss")) >= 10
    assert logged["eval_loss"] < 0.1 and logged["exact_match"] > 0.9  # the default adapter learns task B


def test_pretrainer_writes_a_loadable_model_only_when_it_solves_task_a(tmp_path, monkeypatch):
    cfg = OmegaConf.to_object(
        OmegaConf.merge(
            OmegaConf.structured(PretrainConfig),
            {
                "model": {"hidden_size": 32, "intermediate_size": 64},
                "data": {"n_train": 256, "n_eval": 32, "min_len": 6, "max_len": 6},
                "train": {"max_steps": 4, "batch_size": 32, "eval_every": 4, "eval_generate": 8},
                "output_dir": str(tmp_path / "weak"),
                "min_exact_match": 0.99,
            },
        )
    )
    pretrainer = Pretrainer(cfg, show_progress=False)
    with pytest.raises(TrialFailedError, match="min_exact_match"):
        pretrainer.run()
    assert not (tmp_path / "weak").exists()
    cfg.min_exact_match, cfg.output_dir = 0.0, str(tmp_path / "written")
    summary = Pretrainer(cfg, show_progress=False).run()
    assert (tmp_path / "written" / "model.safetensors").is_file()
    assert (tmp_path / "written" / SUMMARY_FILE).is_file() and summary["steps"] == 4
    monkeypatch.setattr(lora_lab.model.base, "ASSETS_DIR", tmp_path)  # load it as a shipped model
    model_cfg = ModelConfig(source="package", pretrained="written")
    tokenizer = load_tokenizer(model_cfg)
    model = load_base_model(model_cfg, QuantConfig(), tokenizer)
    assert model.config.hidden_size == 32 and tokenizer("ab", add_special_tokens=False)["input_ids"]
