"""GPU benchmark (CUDA machines only): bf16 LoRA and QLoRA NF4 on real-size Llama-shaped models,
lora_lab's trial against the plain PEFT + Trainer script of the same configuration.

    .venv/bin/python benchmarks/bench_gpu.py                       # both shapes, bf16 and nf4, 3 runs each side
    .venv/bin/python benchmarks/bench_gpu.py --models qwen2_5_0_5b --variants bf16 --runs 3 --steps 40

Without a CUDA device it prints "no CUDA device: skipped" and exits 0, so it can be run anywhere.
(``--cpu-smoke`` runs the same code path on tiny shapes on the CPU to check the script itself; it
measures nothing worth reporting and writes no results file.)

The models are built from their published configs with random weights (no download): the
Qwen2.5-0.5B shape (hidden 896, 24 layers, 14 heads, 2 kv heads, MLP 4864, vocab 151936) with
``Qwen2Config`` and the Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads, 8 kv heads, MLP 8192,
vocab 128256) with ``LlamaConfig``; saved once to a temporary directory with lora_lab's built-in
character tokenizer, so both sides load them with ``from_pretrained`` (lora_lab as
``model.source=hub model.pretrained=<dir>``). The data is a JSONL file of random-word
prompt/response pairs of about ``--seq-len`` characters (one token per character).

Per model, variant (bf16 LoRA / QLoRA NF4 through bitsandbytes) and side, runs alternate lora_lab,
plain, lora_lab, plain, ... after one untimed warm-up of each, and the medians are reported:

* tokens/s: non-padding tokens of the batches seen / ``train_runtime`` (no evaluation inside the
  training loop; the same batches on both sides);
* peak GPU memory: ``torch.cuda.max_memory_allocated()`` from just before training (weights loaded)
  to the end of training;
* MFU: 6 * parameters * tokens / train_runtime / the device's dense bf16 peak (by
  ``torch.cuda.get_device_name()``; ``--peak-tflops`` for a device not in the table).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import string
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, median, stopwatch  # noqa: E402

SHAPES = {
    # published configs of the models (random weights here): the dimensions that set the cost
    "qwen2_5_0_5b": dict(
        kind="qwen2",
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        vocab_size=151936,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
    "llama3_2_1b": dict(
        kind="llama",
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    ),
}
SMOKE_SHAPES = {
    "tiny_qwen2": dict(
        kind="qwen2",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=512,
        max_position_embeddings=512,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    ),
}

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets; matched in order
# against torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.05),
    ("L4", 121.0),
]

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in device_name:
            return tflops * 1e12
    return None


def build_model_dir(name: str, shape: dict, root: Path, device: str):
    """Save a random-weight model of this shape (bf16) with lora_lab's character tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from lora_lab.model.base import builtin_tokenizer

    tokenizer = builtin_tokenizer()
    fields = {k: v for k, v in shape.items() if k != "kind"}
    config_cls = Qwen2Config if shape["kind"] == "qwen2" else LlamaConfig
    config = config_cls(
        **fields,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        use_cache=False,
    )
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    target = root / name
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model
    gc.collect()
    return target, n_params


def write_data(root: Path, seq_len: int, n_train: int, n_eval: int) -> tuple[Path, Path]:
    """Random-word prompt/response pairs of about seq_len characters (= tokens)."""
    rng = random.Random(0)

    def text(n_chars: int) -> str:
        words = []
        while sum(len(w) + 1 for w in words) < n_chars:
            words.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9))))
        return " ".join(words)[:n_chars]

    paths = []
    for split, n in (("train", n_train), ("eval", n_eval)):
        path = root / f"{split}.jsonl"
        with path.open("w") as handle:
            for _ in range(n):
                handle.write(
                    json.dumps({"prompt": text(seq_len // 2 - 2) + ": ", "response": text(seq_len // 2 - 2)}) + "\n"
                )
        paths.append(path)
    return paths[0], paths[1]


def lora_lab_cfg(model_dir: Path, name: str, variant: str, train_path: Path, eval_path: Path, args, steps: int):
    from hydra import compose, initialize_config_dir

    from lora_lab.config import to_trial_config

    overrides = [
        "model.source=hub",
        f"model.pretrained={model_dir}",
        f"model.name={name}",
        f"quant={variant if variant != 'bf16' else 'none'}",
        "data=jsonl",
        f"data.path={train_path}",
        f"data.eval_path={eval_path}",
        f"train.max_seq_len={args.seq_len}",
        f"train.batch_size={args.batch_size}",
        f"train.max_steps={steps}",
        f"train.eval_every={steps + 1}",
        f"train.learning_rate={args.lr}",
        "train.eval_generate=0",
        "train.save_adapter=false",
        f"train.logging_steps={max(1, steps // 4)}",
        f"lora.r={args.r}",
        f"lora.lora_alpha={2 * args.r}",
        "lora.targets=all_linear",
        "tracking.enabled=false",
    ]
    with initialize_config_dir(config_dir=str(_common.CONF), version_base=None):
        return to_trial_config(compose("config", overrides=overrides)), overrides


def peak_at_train_end():
    """A Trainer callback that reads the peak GPU memory when training ends (before the evaluation)."""
    import torch
    from transformers import TrainerCallback

    class PeakAtTrainEnd(TrainerCallback):
        peak_mb = float("nan")

        def on_train_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                self.peak_mb = torch.cuda.max_memory_allocated() / 2**20

    return PeakAtTrainEnd()


def run_lora_lab(cfg, out: Path) -> dict:
    from lora_lab.train import run_trial

    peak = peak_at_train_end()
    # run_trial loads the model, resets the peak memory statistics, trains, evaluates
    result = run_trial(cfg, out, callbacks=[peak], show_progress=False)
    run = {
        "train": result.train_time_s,
        "tokens": result.tokens_per_s * result.train_time_s,
        "peak_mb": peak.peak_mb,
        "loss": next(e["train_loss"] for e in reversed(result.history) if "train_loss" in e),
    }
    del result
    return run


def run_plain(model_dir: Path, variant: str, cfg, out: Path) -> dict:
    """The script a user writes: (Q)LoRA with transformers, PEFT and bitsandbytes, same settings."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from lora_lab.data import build_task_data

    on_cuda = torch.cuda.is_available()
    bf16 = on_cuda and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32
    t = cfg.train
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = build_task_data(cfg.data, tokenizer, t.max_seq_len)  # the same records and tokens as lora_lab's
    quantization = None
    if variant == "nf4":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    set_seed(t.seed)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, quantization_config=quantization, device_map={"": "cuda" if on_cuda else "cpu"}
    )
    model.config.use_cache = False
    if quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    set_seed(t.seed)
    model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.lora_alpha,
            lora_dropout=0.0,
            target_modules=TARGETS,
            task_type="CAUSAL_LM",
        ),
    )
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=max(t.batch_size, 64),
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm,
        eval_strategy="no",
        logging_steps=t.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=t.seed,
        data_seed=t.seed,
        bf16=bf16,
        use_cpu=not on_cuda,
        disable_tqdm=True,
        label_names=["labels"],
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
    )
    trainer.remove_callback(PrinterCallback)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    output = trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else float("nan")
    trainer.evaluate()
    run = {"train": output.metrics["train_runtime"], "peak_mb": peak, "loss": output.training_loss}
    del trainer, model
    return run


def free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="qwen2_5_0_5b,llama3_2_1b", help="comma-separated: " + ", ".join(SHAPES))
    parser.add_argument("--variants", default="bf16,nf4", help="comma-separated: bf16 (LoRA), nf4 (QLoRA)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each side (alternating)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2r), all linear layers")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device, TFLOP/s")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on the CPU: checks the script only")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no CUDA device: skipped")
        sys.exit(0)
    _common.quiet()
    from lora_lab.config import register_configs

    register_configs()
    smoke = args.cpu_smoke and not torch.cuda.is_available()
    if smoke:
        args.steps, args.batch_size, args.seq_len, args.runs, args.no_report = 3, 2, 32, 1, True
    shapes = SMOKE_SHAPES if smoke else {k: SHAPES[k] for k in args.models.split(",")}
    variants = args.variants.split(",")
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke test)"
    peak = peak_flops(device_name, args.peak_tflops)
    machine = _common.Machine()
    print(
        f"device: {device_name}; dense bf16 peak {fmt(peak / 1e12 if peak else float('nan'), 4)} TFLOP/s; "
        f"host {machine.cpu}, {machine.cores} cores, torch {machine.torch}"
    )

    root = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    train_path, eval_path = write_data(root, args.seq_len, max(args.batch_size * (args.steps + 5), 256), 16)
    results = []
    for name, shape in shapes.items():
        with stopwatch() as t:
            model_dir, n_params = build_model_dir(name, shape, root, "cuda" if torch.cuda.is_available() else "cpu")
        print(f"{name}: {n_params / 1e6:,.1f}M parameters, random weights saved in {t['s']:.1f} s")
        for variant in variants:
            cfg, overrides = lora_lab_cfg(model_dir, name, variant, train_path, eval_path, args, args.steps)
            warm, _ = lora_lab_cfg(model_dir, name, variant, train_path, eval_path, args, 3)
            run_lora_lab(warm, root / "warm_a")  # untimed warm-up of each side: CUDA context, kernels
            free()
            run_plain(model_dir, variant, warm, root / "warm_b")
            free()
            runs = {"lora_lab": [], "plain": []}
            for i in range(args.runs):
                for side in ("lora_lab", "plain"):
                    out = root / f"{name}_{variant}_{side}_{i}"
                    run = run_lora_lab(cfg, out) if side == "lora_lab" else run_plain(model_dir, variant, cfg, out)
                    free()
                    runs[side].append(run)
                    print(
                        f"  {variant:<5} run {i + 1} {side:<9} train_runtime {run['train']:8.2f} s  "
                        f"peak {run['peak_mb']:9,.0f} MiB  final train loss {run['loss']:.4f}",
                        flush=True,
                    )
            tokens = runs["lora_lab"][0]["tokens"]  # the same batches on both sides
            for side, rs in runs.items():
                train = median([r["train"] for r in rs])
                tps = tokens / train
                results.append(
                    {
                        "model": name,
                        "params": n_params,
                        "variant": variant,
                        "side": side,
                        "train": train,
                        "tokens_per_s": tps,
                        "peak_mb": median([r["peak_mb"] for r in rs]),
                        "mfu": 6 * n_params * tps / peak if peak else float("nan"),
                        "loss": median([r["loss"] for r in rs]),
                        "overrides": overrides,
                    }
                )
    machine.finish()

    rows = []
    for r in results:
        base = next(
            b for b in results if b["model"] == r["model"] and b["variant"] == r["variant"] and b["side"] == "plain"
        )
        rows.append(
            [
                r["model"],
                f"{fmt(r['params'] / 1e6, 4)}M",
                "LoRA bf16" if r["variant"] == "bf16" else "QLoRA NF4",
                r["side"],
                fmt(r["tokens_per_s"], 5),
                f"{r['tokens_per_s'] / base['tokens_per_s']:.3f}",
                fmt(r["peak_mb"], 5),
                f"{r['peak_mb'] / base['peak_mb']:.3f}" if base["peak_mb"] == base["peak_mb"] else "n/a",
                "n/a" if r["mfu"] != r["mfu"] else f"{100 * r['mfu']:.1f}%",
            ]
        )
    header = [
        "model shape",
        "params",
        "variant",
        "side",
        "tokens/s",
        "tokens/s vs plain",
        "peak MiB",
        "peak vs plain",
        "MFU",
    ]
    for line in _common.table(header, rows):
        print(line)
    if args.no_report:
        return
    body = [
        f"- device: **{device_name}**, dense bf16 peak used for MFU: "
        f"{fmt(peak / 1e12, 4) + ' TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}",
        "",
        "## What was compared",
        "",
        f"Random-weight models of the published shapes, LoRA r={args.r} alpha={2 * args.r} on all linear layers, "
        f"{args.steps} steps of batch {args.batch_size} x about {args.seq_len} tokens, learning rate {args.lr:g}, "
        "no evaluation inside the training loop, no gradient checkpointing. bf16: base weights in bf16, bf16 "
        "autocast. nf4: bitsandbytes NF4 with double quantization, bf16 compute, PEFT's "
        "`prepare_model_for_kbit_training`. lora_lab: `run_trial` with the overrides below (plus "
        "`model.pretrained=<dir>` and the data paths); plain: `run_plain()` in the script. "
        f"Runs alternated lora_lab, plain, ... ({args.runs} each, medians) after one untimed warm-up of each. "
        "MFU = 6 x parameters x tokens/s / peak.",
        "",
        "## Results (medians)",
        "",
    ]
    body += _common.table(header, rows)
    _common.write_report("gpu", "GPU: LoRA bf16 and QLoRA NF4, lora_lab vs plain PEFT + Trainer", machine, body)


if __name__ == "__main__":
    main()
