"""One trial on the built-in tiny Llama: the adapter, its parameter count, saving/reloading/merging,
reproducibility, QLoRA, and the MLflow run of a single ``python -m lora_lab.train``."""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from peft import PeftModel
from transformers import DataCollatorForSeq2Seq, LlamaForCausalLM, Trainer

from lora_lab import track
from lora_lab.data import IGNORE_INDEX
from lora_lab.errors import ConfigError, ModelUnavailableError
from lora_lab.evaluate import exact_match
from lora_lab.model.adapter import attach_adapter, detach_adapter, resolve_target_modules, save_adapter
from lora_lab.model.base import load_base_model, load_tokenizer
from lora_lab.train import LoraTrainer, build_resources, run_trial, training_arguments

LLAMA_TARGET_SETS = {
    "qv": ["q_proj", "v_proj"],
    "attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["gate_proj", "up_proj", "down_proj"],
    "all_linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
"""What each named set must resolve to on the built-in Llama (lora_lab.model.targets reads it from the layers)."""

# n_eval <= 64 keeps the held-out set in one evaluation batch of the Trainer (eval batch = max(bs, 64)), so a
# single forward pass over it computes the same loss the Trainer reports.
TINY = (
    "data.n_train=128",
    "data.n_eval=32",
    "train.batch_size=16",
    "train.max_steps=6",
    "train.eval_every=3",
    "train.logging_steps=1",
    "train.eval_generate=8",
    "train.warmup_ratio=0",
    "train.learning_rate=1e-2",
)
EXPERIMENT = "test_trial_single"


# -- helpers -------------------------------------------------------------------------------------


def eval_batch_of(resources) -> dict[str, torch.Tensor]:
    collate = DataCollatorForSeq2Seq(resources.tokenizer, padding=True)
    return collate([resources.task.eval[i] for i in range(len(resources.task.eval))])


@torch.no_grad()
def forward(model, batch):
    """(logits, loss, token accuracy) of a model on a batch, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    finally:
        model.train(was_training)
    predicted = out.logits.argmax(-1)[:, :-1]
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE_INDEX
    accuracy = ((predicted == labels) & mask).sum().item() / mask.sum().item()
    return out.logits.float(), out.loss.item(), accuracy


@contextmanager
def adapter_on(base, cfg):
    """A fresh adapter on the shared base model, removed again afterwards."""
    torch.manual_seed(0)
    model = attach_adapter(base, cfg.lora, cfg.model)
    try:
        yield model
    finally:
        detach_adapter(model)


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """Full name -> (d_in, d_out) of every linear layer (plain or bitsandbytes) of a base model."""
    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def expected_trainable(base, modules: list[str], r: int) -> int:
    return sum(
        r * (d_in + d_out) for name, (d_in, d_out) in linear_shapes(base).items() if name.rsplit(".", 1)[-1] in modules
    )


def wrapped_modules(peft_model) -> set[str]:
    """Names (relative to the base model) of the modules that carry a LoRA adapter."""
    prefix = "base_model.model."
    return {name[len(prefix) :] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}


# -- shared fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cfg(make_trial_config):
    return make_trial_config(*TINY, f"tracking.experiment={EXPERIMENT}")


@pytest.fixture(scope="module")
def resources(cfg):
    return build_resources(cfg)


@pytest.fixture(scope="module")
def batch(resources):
    return eval_batch_of(resources)


@pytest.fixture(scope="module")
def base_out(resources, batch):
    return forward(resources.base_model, batch)


@pytest.fixture(scope="module")
def fresh_base(cfg, resources):
    """``fresh_base()``: a newly loaded copy of the frozen base model (the shared one stays untouched)."""
    return lambda: load_base_model(cfg.model, cfg.quant, resources.tokenizer)


@pytest.fixture(scope="module")
def tracked(compose_config, cfg, resources, batch, tmp_path_factory):
    """One trial run exactly as ``lora_lab.train.command`` runs it with tracking on, recording the trained
    adapter's outputs just before it is removed from the base model."""
    composed = compose_config(*TINY, f"tracking.experiment={EXPERIMENT}")
    seen = {}
    with track.single_run(cfg, OmegaConf.to_yaml(composed)) as run:
        run.log_dataset(resources.task, cfg.data)

        def on_adapter_ready(model):
            run.on_adapter_ready(model)
            seen["logits"], seen["loss"], seen["accuracy"] = forward(model, batch)

        result = run_trial(
            cfg,
            tmp_path_factory.mktemp("tracked"),
            resources,
            callbacks=run.callbacks(),
            show_progress=False,
            on_adapter_ready=on_adapter_ready,
        )
        run.log_result(result, log_adapter=cfg.tracking.log_adapter)
    return SimpleNamespace(result=result, run_id=run.run_id, **seen)


# -- 1. the adapter is a no-op at step 0 ---------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("lora=qv", "lora.r=2"),
        ("lora=dora",),
        ("lora.use_rslora=true",),
        ("lora.init_lora_weights=gaussian",),
        ("lora.lora_dropout=0.3",),
    ],
    ids=["default", "qv", "dora", "rslora", "gaussian", "dropout"],
)
def test_adapter_leaves_outputs_unchanged_at_step_0(make_trial_config, resources, batch, base_out, overrides):
    trial_cfg = make_trial_config(*TINY, *overrides)
    with adapter_on(resources.base_model, trial_cfg) as model:
        assert wrapped_modules(model)  # there is an adapter...
        logits, loss, _ = forward(model, batch)
    assert torch.equal(logits, base_out[0])  # ...and with B = 0 it changes nothing, exactly
    assert loss == base_out[1]


def test_random_b_init_changes_outputs_and_detach_restores_base(make_trial_config, resources, batch, base_out):
    trial_cfg = make_trial_config(*TINY, "lora.init_lora_weights='false'")
    with adapter_on(resources.base_model, trial_cfg) as model:
        logits, _, _ = forward(model, batch)
    assert (logits - base_out[0]).abs().max() > 1e-2
    assert not any(hasattr(m, "lora_A") for m in resources.base_model.modules())
    assert torch.equal(forward(resources.base_model, batch)[0], base_out[0])


# -- 2/3. target modules and the trainable-parameter count ---------------------------------------


@pytest.mark.parametrize("targets, r", [("qv", 1), ("qv", 8), ("attn", 4), ("mlp", 2), ("all_linear", 16)])
def test_named_target_set_wraps_exactly_its_modules(make_trial_config, resources, targets, r):
    trial_cfg = make_trial_config(*TINY, f"lora.targets={targets}", f"lora.r={r}")
    base = resources.base_model
    modules = resolve_target_modules(base, trial_cfg.lora, trial_cfg.model)
    assert modules == LLAMA_TARGET_SETS[targets]
    expected_names = {name for name in linear_shapes(base) if name.rsplit(".", 1)[-1] in modules}
    assert len(expected_names) == 2 * len(modules)  # two decoder layers
    base_total = sum(p.numel() for p in base.parameters())
    expected = expected_trainable(base, modules, r)  # from the shapes before PEFT replaces the layers
    with adapter_on(base, trial_cfg) as model:
        assert wrapped_modules(model) == expected_names
        trainable, total = model.get_nb_trainable_parameters()
        assert trainable == expected
        assert total == base_total + trainable
        assert all(("lora_" in name) == p.requires_grad for name, p in model.named_parameters())


def test_explicit_target_modules_replace_the_named_set(make_trial_config, resources):
    trial_cfg = make_trial_config(*TINY, "lora.targets=qv", "lora.target_modules=[k_proj,down_proj]", "lora.r=3")
    base = resources.base_model
    assert resolve_target_modules(base, trial_cfg.lora, trial_cfg.model) == ["k_proj", "down_proj"]
    with adapter_on(base, trial_cfg) as model:
        assert {n.rsplit(".", 1)[-1] for n in wrapped_modules(model)} == {"k_proj", "down_proj"}
        assert model.get_nb_trainable_parameters()[0] == 2 * 3 * ((128 + 64) + (256 + 128))


def test_target_sets_come_from_the_model_config(make_trial_config, resources):
    trial_cfg = make_trial_config(*TINY, "+model.target_sets.ko=[k_proj,o_proj]", "lora.targets=ko")
    assert resolve_target_modules(resources.base_model, trial_cfg.lora, trial_cfg.model) == ["k_proj", "o_proj"]


@pytest.mark.parametrize(
    "overrides, field, expected",
    [
        (
            ("lora.target_modules=[q_proj,wq]",),
            "lora.target_modules",
            "names of linear modules of tiny_llama: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj "
            "(not found: wq)",
        ),
        (
            ("lora.targets=bogus",),
            "lora.targets",
            "one of qv, attn, mlp, all_linear",
        ),
        (
            ("+model.target_sets.bad=[q_proj,wq]", "lora.targets=bad"),
            "lora.targets",
            "it lacks wq (its linear modules: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj)",
        ),
    ],
)
def test_targets_the_model_lacks_are_rejected(make_trial_config, resources, overrides, field, expected):
    trial_cfg = make_trial_config(*TINY, *overrides)
    with pytest.raises(ConfigError) as info:
        attach_adapter(resources.base_model, trial_cfg.lora, trial_cfg.model)
    assert info.value.field == field and expected in str(info.value)
    assert not any(hasattr(m, "lora_A") for m in resources.base_model.modules())


def test_run_trial_reports_the_trainable_count(make_trial_config, resources, tmp_path, tracked):
    trial_cfg = make_trial_config(
        *TINY, "lora=qv", "lora.r=4", "train.max_steps=1", "train.eval_generate=0", "train.save_adapter=false"
    )
    result = run_trial(trial_cfg, tmp_path, resources, show_progress=False)
    base = resources.base_model
    assert result.trainable_params == expected_trainable(base, ["q_proj", "v_proj"], 4) == 2 * 4 * (256 + 192)
    assert result.target_modules == ["q_proj", "v_proj"] and result.steps == 1
    assert result.adapter_dir is None and math.isnan(result.exact_match)
    assert tracked.result.trainable_params == expected_trainable(base, LLAMA_TARGET_SETS["all_linear"], 8)
    assert (
        result.total_params - result.trainable_params == tracked.result.total_params - tracked.result.trainable_params
    )


# -- 4/5. the saved adapter reloads, and merges --------------------------------------------------


def test_trained_adapter_learned_something(tracked, base_out):
    assert tracked.result.steps == 6
    assert tracked.result.eval_loss < base_out[1] - 0.05
    assert tracked.result.perplexity == pytest.approx(math.exp(tracked.result.eval_loss))


def test_reloaded_adapter_reproduces_eval_metrics(tracked, cfg, resources, batch, fresh_base):
    result = tracked.result
    adapter_config = json.loads((Path(result.adapter_dir) / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and sorted(adapter_config["target_modules"]) == result.target_modules
    model = PeftModel.from_pretrained(fresh_base(), result.adapter_dir)
    logits, loss, accuracy = forward(model, batch)
    assert loss == pytest.approx(tracked.loss, abs=1e-5)  # same as the trained model before unloading
    assert loss == pytest.approx(result.eval_loss, abs=1e-5)  # same as the Trainer's final evaluation
    assert accuracy == pytest.approx(result.token_accuracy, abs=1e-9)
    assert accuracy == pytest.approx(tracked.accuracy, abs=1e-9)
    assert torch.allclose(logits, tracked.logits, atol=1e-5)
    match = exact_match(
        model,
        resources.tokenizer,
        resources.task.eval_records[: cfg.train.eval_generate],
        resources.task.max_response_tokens,
    )
    assert match == result.exact_match


def test_merge_and_unload_gives_the_same_outputs(tracked, batch, base_out, fresh_base):
    model = PeftModel.from_pretrained(fresh_base(), tracked.result.adapter_dir)
    adapted, _, _ = forward(model, batch)
    assert (adapted - base_out[0]).abs().max() > 1e-2  # the merge below has something to merge
    merged = model.merge_and_unload()
    assert type(merged) is LlamaForCausalLM
    assert not any(hasattr(m, "lora_A") for m in merged.modules())
    merged_logits, _, _ = forward(merged, batch)
    assert torch.allclose(merged_logits, adapted, atol=1e-4)


# -- 6. reproducibility --------------------------------------------------------------------------


def test_same_seed_same_metrics_other_seed_other_metrics(cfg, resources, tracked, tmp_path):
    import dataclasses

    again = run_trial(cfg, tmp_path / "again", resources, show_progress=False)
    first = tracked.result
    assert again.eval_loss == first.eval_loss
    assert again.token_accuracy == first.token_accuracy
    assert again.exact_match == first.exact_match
    assert [h.get("loss") for h in again.history] == [h.get("loss") for h in first.history]

    other_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=1))
    other = run_trial(other_cfg, tmp_path / "other", resources, show_progress=False)
    assert abs(other.eval_loss - first.eval_loss) > 1e-6


# -- 7. QLoRA ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nf4_setup(make_trial_config):
    nf4_cfg = make_trial_config(
        *TINY,
        "quant=nf4",
        "train.max_steps=8",
        "train.eval_every=8",
        "train.eval_generate=0",
        "train.save_adapter=false",
    )
    return nf4_cfg, build_resources(nf4_cfg)


def test_nf4_loads_4bit_linear_layers(nf4_setup):
    import bitsandbytes as bnb

    _, nf4_resources = nf4_setup
    layers = {
        name: module
        for name, module in nf4_resources.base_model.named_modules()
        if name.rsplit(".", 1)[-1] in LLAMA_TARGET_SETS["all_linear"]
    }
    assert len(layers) == 14
    for name, module in layers.items():
        assert f"{type(module).__module__}.{type(module).__name__}" == "bitsandbytes.nn.modules.Linear4bit", name
        assert isinstance(module, bnb.nn.Linear4bit)
        assert module.weight.quant_type == "nf4" and module.weight.dtype == torch.uint8
    assert type(nf4_resources.base_model.lm_head) is torch.nn.Linear  # the output head stays full precision


def test_qlora_training_lowers_the_loss(nf4_setup, tmp_path):
    nf4_cfg, nf4_resources = nf4_setup
    _, loss_at_step_0, _ = forward(nf4_resources.base_model, eval_batch_of(nf4_resources))
    result = run_trial(nf4_cfg, tmp_path, nf4_resources, show_progress=False)
    assert result.eval_loss < loss_at_step_0 - 0.2
    train_losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(train_losses) == 8 and train_losses[0] > train_losses[-1]
    assert result.trainable_params == expected_trainable(nf4_resources.base_model, LLAMA_TARGET_SETS["all_linear"], 8)


# -- hub model while offline (in-process; the CLI case is in test_config.py) ----------------------


def test_hub_model_offline_is_a_clear_error(make_trial_config):
    with pytest.raises(ModelUnavailableError) as info:
        load_tokenizer(make_trial_config("model=qwen2_5_0_5b").model)
    message = str(info.value)
    assert "model.pretrained='Qwen/Qwen2.5-0.5B'" in message and "offline" in message
    assert "model=tiny_llama" in message


# -- 10. MLflow ----------------------------------------------------------------------------------


def test_single_run_is_logged_to_mlflow(tracked, tmp_path):
    result = tracked.result
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT])
    assert "RUNNING" not in set(runs["status"])  # no run of this experiment is left open
    runs = runs[runs["run_id"] == tracked.run_id]
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["run_id"] == tracked.run_id and run["status"] == "FINISHED"
    assert run["tags.lora_lab.kind"] == "train"
    assert run["tags.target_modules"] == ",".join(result.target_modules)
    assert (
        run["params.lora.r"],
        run["params.lora.targets"],
        run["params.train.seed"],
        run["params.data.task"],
        run["params.quant.method"],
    ) == ("8", "all_linear", "0", "cipher_swap", "none")
    assert run["metrics.eval_loss"] == pytest.approx(result.eval_loss, abs=1e-6)
    assert run["metrics.eval_token_accuracy"] == pytest.approx(result.token_accuracy, abs=1e-9)
    assert run["metrics.exact_match"] == result.exact_match
    assert run["metrics.trainable_params"] == result.trainable_params
    assert 1.0 <= run["metrics.effective_rank_mean"] <= 8.0
    assert run["metrics.effective_rank_min"] <= run["metrics.effective_rank_mean"] <= run["metrics.effective_rank_max"]

    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(tracked.run_id, "train_loss")] == [1, 2, 3, 4, 5, 6]
    assert [m.step for m in client.get_metric_history(tracked.run_id, "eval_loss")] == [3, 6]  # not duplicated
    root = {a.path for a in client.list_artifacts(tracked.run_id)}
    assert {"adapter", "config.yaml", "effective_rank.json"} <= root
    adapter_files = {Path(a.path).name for a in client.list_artifacts(tracked.run_id, "adapter")}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= adapter_files
    local = Path(client.download_artifacts(tracked.run_id, "adapter/adapter_model.safetensors", str(tmp_path)))
    assert local.read_bytes() == (Path(result.adapter_dir) / "adapter_model.safetensors").read_bytes()
    config_yaml = Path(client.download_artifacts(tracked.run_id, "config.yaml", str(tmp_path))).read_text()
    assert OmegaConf.create(config_yaml).train.max_steps == 6
    dataset_inputs = client.get_run(tracked.run_id).inputs.dataset_inputs
    assert [d.dataset.name for d in dataset_inputs] == ["cipher_swap"]


def test_trial_that_raises_leaves_its_run_failed(make_trial_config, compose_config, resources, tmp_path):
    overrides = (*TINY, "lora.targets=bogus", "tracking.experiment=test_trial_failed")
    bad_cfg = make_trial_config(*overrides)
    with pytest.raises(ConfigError, match="lora.targets"):
        with track.single_run(bad_cfg, OmegaConf.to_yaml(compose_config(*overrides))) as run:
            run_trial(bad_cfg, tmp_path, resources, callbacks=run.callbacks(), show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        with track.single_run(bad_cfg, "") as interrupted:
            raise KeyboardInterrupt
    runs = mlflow.search_runs(experiment_names=["test_trial_failed"]).set_index("run_id")
    assert runs.loc[run.run_id, "status"] == "FAILED"
    assert runs.loc[interrupted.run_id, "status"] == "KILLED"
    assert runs["end_time"].notna().all()


def test_a_failed_background_write_fails_the_finished_run(make_trial_config, compose_config):
    # the config params are written in the background; one MLflow refuses (a param may not change
    # value) must still end the run FAILED, with MLflow's error, rather than FINISHED and incomplete
    cfg = make_trial_config(*TINY, "tracking.experiment=test_background_write")
    client = MlflowClient()
    run = client.create_run(track.ensure_experiment(client, "test_background_write"))
    client.log_param(run.info.run_id, "lora.r", "999")
    trial_run = track.TrialRun(client, run.info.run_id)
    trial_run.log_config(cfg, compose_config(*TINY))
    with pytest.raises(MlflowException, match="lora.r"):
        trial_run.finish("FINISHED")
    assert client.get_run(run.info.run_id).info.status == "FAILED"


def test_background_writer_works_in_a_forked_child():
    client = MlflowClient()
    run_id = client.create_run(track.ensure_experiment(client, "test_fork")).info.run_id
    track.in_background(client.set_tag, run_id, "parent", "1").result(timeout=60)
    pid = os.fork()
    if pid == 0:  # the child: a writer thread of its own must run the write
        try:
            track.in_background(client.set_tag, run_id, "child", "1").result(timeout=60)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert {"parent", "child"} <= set(client.get_run(run_id).data.tags)


def test_flop_count_matches_the_stock_trainer(cfg, resources, batch, tmp_path):
    # LoraTrainer counts the parameters once per trial; the number must be the stock Trainer's
    model = attach_adapter(resources.base_model, cfg.lora, cfg.model)
    try:
        args = training_arguments(cfg, tmp_path, show_progress=False)
        data = dict(train_dataset=resources.task.train_examples, eval_dataset=resources.task.eval_examples)
        ours, stock = LoraTrainer(model=model, args=args, **data), Trainer(model=model, args=args, **data)
        assert ours.floating_point_ops(batch) == stock.floating_point_ops(batch) > 0
        assert ours.floating_point_ops(batch) == stock.floating_point_ops(batch)  # from the cached count
    finally:
        detach_adapter(model)


def test_save_adapter_writes_what_save_pretrained_writes(cfg, resources, tmp_path):
    model = attach_adapter(resources.base_model, cfg.lora, cfg.model)
    try:
        model.save_pretrained(str(tmp_path / "peft"))
        save_adapter(model, tmp_path / "ours")
    finally:
        detach_adapter(model)
    names = sorted(p.name for p in (tmp_path / "peft").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ours").iterdir()) and "README.md" in names
    for name in names:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "peft" / name).read_bytes(), name
