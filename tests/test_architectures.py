"""A user's own checkpoint of each common architecture, loaded from a local directory with
``model.source=hub model.pretrained=<dir>`` (offline), trained with every target set it can express.

The checkpoints are tiny random-weight models built from transformers' own config classes
(tests/tiny_archs.py); each trial trains one step in-process, and one case runs the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_archs import ARCHITECTURES, save_checkpoint
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from lora_lab import names
from lora_lab.config import ExportConfig
from lora_lab.errors import ConfigError
from lora_lab.export import Exporter
from lora_lab.model import targets
from lora_lab.train import build_resources, run_trial

REPO = Path(__file__).resolve().parent.parent

QV_REFUSED = {"gpt2": "c_attn", "gpt_neox": "query_key_value", "phi3": "qkv_proj"}
"""Architectures that fuse query, key and value into one layer, and that layer: qv is refused."""

EXPECTED = {
    "llama": {"qv": ["q_proj", "v_proj"], "mlp": ["gate_proj", "up_proj", "down_proj"]},
    "gpt2": {"attn": ["c_attn", "attn.c_proj"], "mlp": ["c_fc", "mlp.c_proj"]},
    "gpt_neox": {"attn": ["query_key_value", "dense"], "mlp": ["dense_h_to_4h", "dense_4h_to_h"]},
    "opt": {"qv": ["v_proj", "q_proj"], "attn": ["k_proj", "v_proj", "q_proj", "out_proj"], "mlp": ["fc1", "fc2"]},
    "phi3": {"attn": ["o_proj", "qkv_proj"], "mlp": ["gate_up_proj", "down_proj"]},
}
"""What some sets must resolve to, written out by hand from each architecture's modeling code."""

STEP = (
    "data=reverse",
    "data.n_train=32",
    "data.n_eval=8",
    "train.max_steps=1",
    "train.batch_size=8",
    "train.eval_every=1",
    "train.logging_steps=1",
    "train.eval_generate=0",
    "train.save_adapter=false",
    "train.max_seq_len=24",
    "tracking.enabled=false",
    "lora.r=2",
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: save_checkpoint(arch, root / arch) for arch in ARCHITECTURES}


def hub_overrides(arch: str, directory: Path) -> tuple[str, ...]:
    return ("model.source=hub", f"model.pretrained={directory}", f"model.name={arch}")


def layer_sizes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) features of every linear or Conv1D layer, read before PEFT wraps them."""
    sizes = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            sizes[name] = (module.weight.shape[0], module.weight.shape[1])  # Conv1D stores (in, out)
        elif isinstance(module, torch.nn.Linear):
            sizes[name] = (module.in_features, module.out_features)
    return sizes


def wrapped(peft_model: torch.nn.Module) -> list[str]:
    prefix = "base_model.model."
    return [n.removeprefix(prefix) for n, m in peft_model.named_modules() if hasattr(m, "lora_A")]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_target_set_trains_on_a_local_checkpoint(arch, checkpoints, make_trial_config, tmp_path):
    cfg = make_trial_config(*hub_overrides(arch, checkpoints[arch]), *STEP)
    resources = build_resources(cfg)
    base = resources.base_model
    sizes = layer_sizes(base)
    head = base.get_output_embeddings()
    every_linear = [n for n, m in base.named_modules() if n in sizes and m is not head]
    trained = []
    for name in names.TARGET_SETS:
        trial_cfg = make_trial_config(*hub_overrides(arch, checkpoints[arch]), *STEP, f"lora.targets={name}")
        if name == "qv" and arch in QV_REFUSED:
            with pytest.raises(ConfigError) as info:
                run_trial(trial_cfg, tmp_path / name, resources, show_progress=False)
            message = str(info.value)
            assert info.value.field == "lora.targets" and f"lora.target_modules=[{QV_REFUSED[arch]}]" in message
            assert "attn, mlp or all_linear" in message and "attention:" in message
            assert not any(hasattr(m, "lora_A") for m in base.modules())
            continue
        target_set = targets.for_trial(base, trial_cfg.lora, trial_cfg.model)
        seen = {}

        def ready(model, seen=seen):
            seen["layers"] = wrapped(model)
            seen["fan_in_fan_out"] = model.peft_config["default"].fan_in_fan_out

        result = run_trial(trial_cfg, tmp_path / name, resources, show_progress=False, on_adapter_ready=ready)
        assert result.steps == 1 and torch.isfinite(torch.tensor(result.eval_loss))
        assert sorted(seen["layers"]) == sorted(target_set.layers)
        if name == "all_linear":  # PEFT's own 'all-linear' wraps what the set says it does
            assert target_set.peft_targets == "all-linear" and sorted(seen["layers"]) == sorted(every_linear)
        if name in EXPECTED.get(arch, {}):
            assert target_set.modules == EXPECTED[arch][name]
        assert seen["fan_in_fan_out"] is (arch == "gpt2")
        # exact: r x (in + out) summed over the wrapped layers, from the layer shapes before wrapping
        assert result.trainable_params == sum(2 * sum(sizes[n]) for n in target_set.layers)
        assert not any(hasattr(m, "lora_A") for m in base.modules())
        trained.append(name)
    assert trained == [s for s in names.TARGET_SETS if not (s == "qv" and arch in QV_REFUSED)]
    attn, mlp = (set(targets.resolve(base, s, cfg.model).layers) for s in ("attn", "mlp"))
    assert not attn & mlp and attn | mlp == set(every_linear)


@pytest.mark.parametrize("arch", ["qwen2", "gpt_neox"])
def test_qlora_nf4_on_a_local_checkpoint(arch, checkpoints, make_trial_config, tmp_path):
    cfg = make_trial_config(*hub_overrides(arch, checkpoints[arch]), *STEP, "quant=nf4", "lora.targets=attn")
    resources = build_resources(cfg)
    quantized = {n for n, m in resources.base_model.named_modules() if type(m).__name__ == "Linear4bit"}
    target_set = targets.for_trial(resources.base_model, cfg.lora, cfg.model)
    # 2 layers x (q, k, v, o) on Qwen2, 2 x (query_key_value, dense) on GPT-NeoX, every one of them 4-bit
    assert set(target_set.layers) <= quantized and len(target_set.layers) == {"qwen2": 8, "gpt_neox": 4}[arch]
    sizes = {n: (m.in_features, m.out_features) for n, m in resources.base_model.named_modules() if n in quantized}
    result = run_trial(cfg, tmp_path, resources, show_progress=False)
    assert result.steps == 1 and result.trainable_params == sum(2 * sum(sizes[n]) for n in target_set.layers)


def test_target_sets_resolve_from_the_config_alone(checkpoints, make_trial_config):
    """What preflight can ask before any weight loads: the sets of a model built on the meta device."""
    cfg = make_trial_config(*hub_overrides("gpt2", checkpoints["gpt2"]))
    sets = targets.target_sets_for(cfg.model)
    assert isinstance(sets["qv"], ConfigError) and "c_attn" in str(sets["qv"])
    assert sets["attn"].modules == ["c_attn", "attn.c_proj"] and sets["attn"].fan_in_fan_out
    assert sets["all_linear"].modules == ["c_attn", "c_proj", "c_fc"]
    skeleton = targets.model_skeleton(cfg.model)
    assert all(p.device.type == "meta" for p in skeleton.parameters())


def test_the_train_command_on_a_local_gpt2_checkpoint(checkpoints, tmp_path):
    """The real command, offline: a GPT-2 checkpoint (Conv1D layers) with the attention set; then its
    adapter merged (lora_lab.export)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    overrides = [o for o in STEP if not o.startswith(("tracking.", "train.save_adapter"))]
    command = [sys.executable, "-m", "lora_lab.train", *hub_overrides("gpt2", checkpoints["gpt2"]), *overrides]
    command += ["lora.targets=attn", "tracking.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # attn on GPT-2 (width 32, 2 layers): c_attn 32 -> 96 and attn.c_proj 32 -> 32, rank 2
    assert f"trainable params: {2 * 2 * ((32 + 96) + (32 + 32)):,}" in done.stdout
    assert "fan_in_fan_out" not in done.stderr  # set by lora_lab, so PEFT has nothing to correct
    # the adapter it saved merges into the Conv1D layers (weights stored transposed) as it computed
    exporter = Exporter(ExportConfig(adapter=str(tmp_path / "run" / "adapter"), output_dir=str(tmp_path / "merged")))
    exporter.setup()
    batch = exporter.tokenizer(["<s>abc<", "<s>hello<"], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        with_adapter = exporter.peft_model(**batch).logits
        merged = AutoModelForCausalLM.from_pretrained(exporter.run(), local_files_only=True)
        torch.testing.assert_close(merged(**batch).logits, with_adapter, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_short_sweep_on_a_local_checkpoint(checkpoints, tmp_path, monkeypatch):
    """The targets preset, narrowed to two sets, on an OPT checkpoint: each trial trains its own set."""
    import mlflow
    from hydra import compose, initialize_config_dir

    from lora_lab.config import register_configs
    from lora_lab.sweep import Sweep

    monkeypatch.chdir(tmp_path)
    register_configs()
    overrides = [
        *hub_overrides("opt", checkpoints["opt"]),
        *[o for o in STEP if not o.startswith(("tracking.", "lora.r"))],
        "tracking.log_adapter=false",
        "+sweep=targets",
        "sweep.study_name=opt_targets",
        "sweep.seeds=1",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides)
        cfg.sweep.params["lora.targets"].choices = ["qv", "mlp"]
        cfg.sweep.params["lora.r"].choices = [2]
        sweep = Sweep(cfg, overrides, console_progress=False)
        sweep.setup()
        summary = sweep.run()
    assert summary.counts == {"COMPLETE": 2}
    runs = mlflow.search_runs(experiment_names=["opt_targets"], filter_string="tags.`lora_lab.kind` = 'trial'")
    by_set = dict(zip(runs["params.lora.targets"], runs["metrics.trainable_params"].astype(int), strict=True))
    # OPT, width 32, MLP 64, 2 layers, r=2: qv = q_proj + v_proj (32 -> 32 each), mlp = fc1 (32 -> 64) + fc2 (64 -> 32)
    assert by_set == {"qv": 2 * 2 * 2 * (32 + 32), "mlp": 2 * 2 * 2 * (32 + 64)}
