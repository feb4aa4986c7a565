"""Trials never change the base model they share: real pissa, olora and bias trials leave its weights
bit for bit as loaded (checked by the fingerprint and by comparing every tensor), a write that slips
through is caught, and settings that cannot be kept off a shared base are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lora_lab.config import LoraSettings
from lora_lab.errors import BaseModelChangedError, ConfigError
from lora_lab.model.adapter import attach_adapter, detach_adapter
from lora_lab.model.base import base_for_trial, base_writes, fingerprint, trial_base
from lora_lab.train import TrialResources, build_resources, resources_key, run_trial

TINY = (
    "data.n_train=64",
    "data.n_eval=16",
    "train.batch_size=16",
    "train.max_steps=3",
    "train.eval_every=3",
    "train.logging_steps=1",
    "train.eval_generate=0",
    "train.warmup_ratio=0",
    "train.learning_rate=5e-2",
    "train.save_adapter=false",
    "lora.r=4",
)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_weights(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [name for name, tensor in before.items() if not torch.equal(after[name], tensor)]
    assert not changed, f"base weights changed: {changed}"


@pytest.fixture(scope="module")
def shared(make_trial_config):
    """One base model and dataset shared by several trials, as in a sweep process."""
    return build_resources(make_trial_config(*TINY))


def test_base_writes_names_the_settings_that_write_to_the_base():
    assert base_writes(LoraSettings()) == []
    assert base_writes(LoraSettings(init_lora_weights="gaussian", use_dora=True, use_rslora=True)) == []
    for init in ("pissa", "olora"):
        assert [w.split(":")[0] for w in base_writes(LoraSettings(init_lora_weights=init))] == [
            f"lora.init_lora_weights={init}"
        ]
    assert [w.split(":")[0] for w in base_writes(LoraSettings(bias="lora_only", init_lora_weights="pissa"))] == [
        "lora.init_lora_weights=pissa",
        "lora.bias=lora_only",
    ]


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_trials_leave_the_shared_base_unchanged(make_trial_config, shared, init, tmp_path):
    base = shared.base_model
    before, mark = snapshot(base), fingerprint(base)
    # Control: the same initialisation applied to the base itself does rewrite its weights, and the
    # fingerprint sees it (so the checks below could fail).
    exposed = copy.deepcopy(base)
    detach_adapter(attach_adapter(exposed, LoraSettings(r=4, init_lora_weights=init), make_trial_config().model))
    assert fingerprint(exposed) != mark
    assert any(not torch.equal(exposed.state_dict()[k], v) for k, v in before.items())

    cfg = make_trial_config(*TINY, f"lora.init_lora_weights={init}")
    for seed in (0, 1):  # two trials in one process: the second adapts the same base as the first
        cfg.train.seed = seed
        result = run_trial(cfg, tmp_path / str(seed), shared, show_progress=False)
        assert result.steps == 3
        assert fingerprint(base) == mark
        assert_same_weights(base, before)


def test_bias_trials_train_biases_of_a_copy_not_of_the_shared_base(make_trial_config, tmp_path):
    """A base with biases (attention and MLP), as many Hub models have: lora.bias=all|lora_only trains
    them, in the trial's own copy."""
    cfg = make_trial_config(*TINY)
    tokenizer = build_resources(cfg).tokenizer
    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            attention_bias=True,
            mlp_bias=True,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).requires_grad_(False)
    resources = TrialResources(resources_key(cfg), tokenizer, base, build_resources(cfg).task)
    biases = {n: p.detach().clone() for n, p in base.named_parameters() if n.endswith("bias")}
    assert len(biases) == 7  # q, k, v, o, gate, up, down
    before, mark = snapshot(base), fingerprint(base)
    for bias in ("all", "lora_only"):
        trained: dict[str, torch.Tensor] = {}

        def grab(peft_model, trained=trained):
            trained.update(
                {
                    n.split("base_model.model.", 1)[-1].replace(".base_layer", ""): p.detach().clone()
                    for n, p in peft_model.named_parameters()
                    if n.endswith("bias")
                }
            )

        run_trial(
            make_trial_config(*TINY, f"lora.bias={bias}"),
            tmp_path / bias,
            resources,
            show_progress=False,
            on_adapter_ready=grab,
        )
        moved = [n for n, v in biases.items() if not torch.equal(trained[n], v)]
        assert moved, f"lora.bias={bias}: no bias trained in the trial"  # the trial did write biases...
        assert fingerprint(base) == mark  # ...but not the shared base's
        assert_same_weights(base, before)


def test_a_4bit_base_copies_with_its_layout(make_trial_config, tmp_path):
    """bias=all on an NF4 base goes through the deep copy: the trial trains, and the shared 4-bit
    base keeps its packed weights and quantization state."""
    cfg = make_trial_config(*TINY, "quant=nf4", "lora.bias=all")
    resources = build_resources(cfg)
    base = resources.base_model
    layout = {n: (type(p).__name__, p.dtype, tuple(p.shape)) for n, p in base.named_parameters()}
    assert "Params4bit" in {kind for kind, _, _ in layout.values()}
    copied = base_for_trial(base, base_writes(cfg.lora))
    assert copied is not base
    assert {n: (type(p).__name__, p.dtype, tuple(p.shape)) for n, p in copied.named_parameters()} == layout
    assert fingerprint(copied) == fingerprint(base)  # packed weights and absmax scales copied exactly
    before, mark = snapshot(base), fingerprint(base)
    result = run_trial(cfg, tmp_path, resources, show_progress=False)
    assert result.steps == 3
    assert fingerprint(base) == mark
    assert_same_weights(base, before)
    assert {n: (type(p).__name__, p.dtype, tuple(p.shape)) for n, p in base.named_parameters()} == layout


def test_evaluating_a_4bit_base_keeps_its_layout(make_trial_config):
    """Loud check of lora_lab.model.base.keep_4bit_layout: bitsandbytes repacks a 4-bit weight in place at
    an eval-mode forward on an AVX512-BF16 CPU unless told not to through an undocumented flag. If this
    fails after a bitsandbytes upgrade, find its new switch (pyproject pins bitsandbytes for this)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16

    resources = build_resources(make_trial_config(*TINY, "quant=nf4"))
    base = resources.base_model
    layers = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers
    if has_avx512bf16():  # the CPUs where bitsandbytes would repack: the flag must exist and be off
        assert all(m.support_avx512bf16_for_cpu is False for m in layers)
    before, mark = snapshot(base), fingerprint(base)
    base.eval()
    with torch.no_grad():
        base(input_ids=torch.tensor([[1, 5, 9, 13, 2]]))
    base.train()
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    assert fingerprint(base) == mark
    assert_same_weights(base, before)


def test_a_write_that_slips_through_is_caught_then_and_at_every_later_trial(make_trial_config):
    """A setting missing from base_writes would adapt the shared base in place: the fingerprint check
    fails that trial, and every later one, instead of letting them adapt a changed model."""
    resources = build_resources(make_trial_config(*TINY))
    base = resources.base_model
    pissa = LoraSettings(r=4, init_lora_weights="pissa")
    with pytest.raises(BaseModelChangedError, match="this trial changed the shared base model"):
        with trial_base(base, []) as unprotected:  # as if base_writes did not know pissa
            assert unprotected is base
            detach_adapter(attach_adapter(unprotected, pissa, make_trial_config().model))
    with pytest.raises(BaseModelChangedError, match="no longer the model that was loaded"):
        with trial_base(base, []):
            pass


def test_an_adapter_that_leaves_the_base_alone_shares_it(shared):
    assert base_for_trial(shared.base_model, base_writes(LoraSettings())) is shared.base_model


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lora.init_lora_weights=loftq"], "'loftq' is not supported"),
        (["lora.init_lora_weights=pissa", "quant=nf4"], "use quant=none for pissa"),
        (["lora.init_lora_weights=olora", "quant=int8"], "quant.method='int8'"),
    ],
)
def test_settings_that_cannot_protect_the_base_are_refused(make_trial_config, overrides, message):
    with pytest.raises(ConfigError, match="lora.init_lora_weights") as info:
        make_trial_config(*overrides)
    assert message in str(info.value)
    assert "'true', 'false', 'gaussian'" in str(info.value)
