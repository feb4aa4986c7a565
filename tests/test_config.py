"""Config composition from the real conf/ files, the schema checks, and bad input through the real CLI."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from lora_lab import cli
from lora_lab.config import (
    TRIAL_GROUPS,
    LoraSettings,
    TrainConfig,
    TrialConfig,
    _merged_trial_config,
    flatten,
    to_trial_config,
)
from lora_lab.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
LINEAR_MODULES = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


# -- composition --------------------------------------------------------------------------------


def test_default_yaml_agrees_with_schema_defaults(make_trial_config):
    """`python -m lora_lab.train` with no overrides runs the documented defaults of config.py."""
    assert make_trial_config() == TrialConfig()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("lora=qv", {"lora.targets": "qv", "lora.r": 8, "lora.use_dora": False}),
        ("lora=dora", {"lora.use_dora": True, "lora.targets": "all_linear"}),
        ("quant=nf4", {"quant.method": "nf4", "quant.double_quant": True}),
        ("quant=fp4", {"quant.method": "fp4", "quant.double_quant": False}),
        ("quant=int8", {"quant.method": "int8"}),
        (
            "train=gpu",
            {
                "train.learning_rate": 2e-4,
                "train.max_steps": 1000,
                "train.batch_size": 8,
                "train.gradient_accumulation_steps": 4,
                "train.gradient_checkpointing": True,
                "train.seed": 0,
            },
        ),
        ("data=reverse", {"data.task": "reverse", "data.min_len": 3, "data.max_len": 7}),
        ("data=add", {"data.task": "add", "data.min_len": 1, "data.max_len": 3}),
        (
            "model=qwen2_5_0_5b",
            {
                "model.source": "hub",
                "model.pretrained": "Qwen/Qwen2.5-0.5B",
                "model.trust_remote_code": False,
                "model.target_sets": {},  # derived from the model's layers (lora_lab.model.targets)
            },
        ),
    ],
)
def test_group_options_set_their_fields(make_trial_config, override, expected):
    flat = flatten(make_trial_config(override))
    for key, value in expected.items():
        assert flat[key] == value, key


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("+sweep=rank_alpha",),
        ("lora=dora", "quant=nf4", "train=gpu"),
        ("model=qwen2_5_0_5b", "data=add", "lora.target_modules=[q_proj,v_proj]"),
        ("data=jsonl", "data.path=x.jsonl", "tracking.log_adapter=false"),
    ],
)
def test_typed_composed_config_gives_what_the_schema_merge_gives(compose_config, overrides):
    cfg = compose_config(*overrides)
    assert OmegaConf.get_type(cfg) is TrialConfig  # composed against schema_trial: the fast path
    groups = [k for k in TRIAL_GROUPS if k in cfg]
    assert to_trial_config(cfg) == _merged_trial_config(cfg, groups)
    untyped = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # no schema: merged into it
    assert to_trial_config(untyped) == to_trial_config(cfg)


def test_field_overrides_are_typed(make_trial_config):
    cfg = make_trial_config(
        "lora.r=4",
        "lora.lora_alpha=32",
        "lora.target_modules=[q_proj,k_proj]",
        "train.learning_rate=1e-3",
        "lora.init_lora_weights='false'",
    )
    assert cfg.lora.r == 4 and isinstance(cfg.lora.r, int)
    assert cfg.lora.lora_alpha == 32.0 and isinstance(cfg.lora.lora_alpha, float)
    assert cfg.lora.target_modules == ["q_proj", "k_proj"]
    assert cfg.train.learning_rate == pytest.approx(1e-3)
    assert cfg.lora.init_lora_weights == "false"
    with pytest.raises(ConfigCompositionException):  # the schema types the fields: 'abc' is no int
        make_trial_config("lora.r=abc")


def test_flatten_gives_one_param_per_field(make_trial_config):
    cfg = make_trial_config(
        "lora.r=16", "train.seed=3", "+model.target_sets.ko=[k_proj,o_proj]", "+model.target_sets.q=[q_proj]"
    )
    flat = flatten(cfg)
    assert flat["lora.r"] == 16 and flat["train.seed"] == 3 and flat["model.name"] == "tiny_llama"
    assert flat["model.target_sets"] == {"ko": ["k_proj", "o_proj"], "q": ["q_proj"]}  # a mapping stays one param
    assert not any(key.startswith("sweep") for key in flat)
    n_fields = sum(
        len(dataclasses.fields(getattr(cfg, group)))
        for group in ("model", "lora", "quant", "train", "data", "tracking")
    )
    assert len(flat) == n_fields


# -- range and choice checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field, allowed",
    [
        (["lora.r=0"], "lora.r", "1 <= r"),
        (["lora.lora_dropout=1.5"], "lora.lora_dropout", "0 <= lora_dropout < 1"),
        (["lora.lora_dropout=-0.1"], "lora.lora_dropout", "0 <= lora_dropout < 1"),
        (["lora.lora_alpha=0"], "lora.lora_alpha", "0 < lora_alpha"),
        (["lora.bias=some"], "lora.bias", "'none', 'all', 'lora_only'"),
        (["lora.init_lora_weights=xavier"], "lora.init_lora_weights", "'gaussian', 'pissa'"),
        (["lora.target_modules=[]"], "lora.target_modules", "non-empty list"),
        (["quant.method=int4"], "quant.method", "'none', 'int8', 'nf4', 'fp4'"),
        (["train.learning_rate=0"], "train.learning_rate", "0 < learning_rate"),
        (["train.warmup_ratio=1.0"], "train.warmup_ratio", "0 <= warmup_ratio < 1"),
        (["train.lr_scheduler=step"], "train.lr_scheduler", "'cosine'"),
        (["train.precision=fp8"], "train.precision", "'bf16'"),
        (["data.n_eval=0"], "data.n_eval", "1 <= n_eval"),
        (["data.min_len=7"], "data.max_len", "7 <= max_len"),
        (
            ["data.task=poetry"],
            "data.task",
            "'cipher_swap', 'cipher_family', 'cipher', 'reverse', 'add', 'jsonl', 'hf'",
        ),
        (["data.swaps=14"], "data.swaps", "0 <= swaps <= 13"),
        (["lora.method=adapter"], "lora.method", "'lora', 'full', 'none'"),
        (["data=jsonl"], "data.path", "JSONL file"),
        (["model.num_attention_heads=3"], "model.num_attention_heads", "divisor of model.hidden_size=64"),
        (["model=tiny_llama_scratch", "model.source=hub"], "model.pretrained", "Hub model id"),
        (["model.pretrained=null"], "model.pretrained", "shipped in lora_lab/assets/"),
    ],
)
def test_out_of_range_values_are_rejected(make_trial_config, overrides, field, allowed):
    with pytest.raises(ConfigError) as info:
        make_trial_config(*overrides)
    assert info.value.field == field
    message = str(info.value)
    assert f"'{field}'" in message and allowed in message


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.r=0", "lora_lab: error: Invalid value for 'lora.r': 0. Allowed: a number with 1 <= r."),
        (
            "lora.lora_dropout=1.5",
            "lora_lab: error: Invalid value for 'lora.lora_dropout': 1.5. Allowed: a number with 0 <= lora_dropout < 1.",
        ),
    ],
)
def test_config_error_becomes_one_paragraph_and_exit_2(compose_config, capsys, override, message):
    """What `python -m lora_lab.train lora.r=0` does, in-process: main() is wrapped in reports_errors."""
    entry = cli.reports_errors(lambda: to_trial_config(compose_config(override)))
    with pytest.raises(SystemExit) as info:
        entry()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == message
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "override, group, schema",
    [
        ("lora.rr=8", "lora", LoraSettings),
        ("train.maxsteps=3", "train", TrainConfig),
    ],
)
def test_unknown_field_lists_the_fields_that_exist(compose_config, capsys, override, group, schema):
    with pytest.raises(ConfigCompositionException):  # Hydra rejects it too, without the alternatives
        compose_config(override)
    with pytest.raises(SystemExit) as info:
        cli.check_overrides(["train.max_steps=1", override])
    assert info.value.code == 2
    err = capsys.readouterr().err
    key = override.split("=")[0]
    assert f"unknown field '{key}'" in err
    assert f"Fields of '{group}': " + ", ".join(f.name for f in dataclasses.fields(schema)) in err


def test_check_overrides_accepts_valid_and_non_field_arguments(capsys):
    cli.check_overrides(
        [
            "lora.r=4",
            "lora=qv",
            "train.max_steps=1",
            "+sweep=rank_alpha",
            "hydra.run.dir=x",
            "--multirun",
            "lora.target_modules=[q_proj,wq]",
            "sweep.seeds=2",
        ]
    )
    assert capsys.readouterr().err == ""


def test_unknown_group_option_lists_the_options(compose_config):
    with pytest.raises(MissingConfigException) as info:
        compose_config("lora=nope")
    message = str(info.value)
    assert "Could not find 'lora/nope'" in message
    assert "Available options in 'lora':\n\tdefault\n\tdora\n\tqv" in message


@pytest.mark.parametrize("value", ["false", "true"])
def test_init_lora_weights_accepts_unquoted_booleans(make_trial_config, value):
    assert make_trial_config(f"lora.init_lora_weights={value}").lora.init_lora_weights == value


# -- bad input through the real CLI (one process each: ~20-60 s of imports, so run concurrently) --

CLI_COMMON = ["tracking.enabled=false", "train.max_steps=1"]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Four bad-input runs of `python -m lora_lab.train`, started together, outside the repository."""
    work = tmp_path_factory.mktemp("cli")
    bad = work / "bad.jsonl"
    bad.write_text('{"prompt": "abc", "response": "cba"}\n\n{"prompt": \'abc\', "response": "cba"}\n')
    cases = {
        "unknown_option": ["lora=nope"],
        "missing_module": ["lora.target_modules=[q_proj,wq]"],
        "malformed_jsonl": ["data=jsonl", f"data.path={bad}"],
        "hub_offline": ["model=qwen2_5_0_5b"],
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    procs = {}
    for name, args in cases.items():
        cmd = [sys.executable, "-m", "lora_lab.train", *args, f"hydra.run.dir={work / name}", *CLI_COMMON]
        procs[name] = subprocess.Popen(
            cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        results[name] = (proc.returncode, out, err)
    return {"bad_jsonl": bad, **results}


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, expected",
    [
        ("unknown_option", ["Could not find 'lora/nope'", "Available options in 'lora'", "default", "dora", "qv"]),
        (
            "missing_module",
            [
                "'lora.target_modules'",
                "['q_proj', 'wq']",
                "names of linear modules of tiny_llama: " + ", ".join(LINEAR_MODULES),
                "not found: wq",
            ],
        ),
        ("malformed_jsonl", [":3: not valid JSON"]),
        ("hub_offline", ["model.pretrained='Qwen/Qwen2.5-0.5B'", "offline", "model=tiny_llama"]),
    ],
)
def test_cli_bad_input_fails_with_a_clear_message(cli_runs, case, expected):
    code, out, err = cli_runs[case]
    assert code != 0
    for text in expected:
        assert text in err, (text, err[-2000:])
    if case != "unknown_option":  # Hydra reports group options itself; lora_lab's own errors carry a prefix
        assert "lora_lab: error: " in err and code == 2
    if case == "malformed_jsonl":
        assert f"{cli_runs['bad_jsonl']}:3:" in err
    assert "Traceback" not in out + err
