"""Quality metrics of a trained adapter on the held-out split.

Loss and token accuracy come from transformers' ``Trainer.evaluate`` (the two functions below plug
into it); exact match comes from greedy generation on held-out prompts, the closest thing to how
the adapter will be used.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch
from transformers import BatchEncoding, EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase

from lora_lab.data import IGNORE_INDEX, RENDERED


def argmax_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep only the predicted token ids, so evaluation does not hold every logit in memory."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def token_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Share of response tokens predicted exactly (next-token, teacher forced)."""
    predicted = np.asarray(prediction.predictions)[:, :-1]
    labels = np.asarray(prediction.label_ids)[:, 1:]
    mask = labels != IGNORE_INDEX
    correct = (predicted == labels) & mask
    return {"token_accuracy": float(correct.sum() / max(mask.sum(), 1))}


@torch.no_grad()
def score(model: torch.nn.Module, examples, batch_size: int = 64) -> dict[str, float]:
    """Loss and token accuracy of ``model`` on tokenized examples (a ``TensorExamples``) without a
    Trainer: the zero-shot baseline and the task A scores before and after adaptation.

    The same numbers ``Trainer.evaluate`` gives with ``token_accuracy`` (a test checks it): the loss
    is each batch's mean over response tokens, averaged over batches weighted by their size, and the
    accuracy is pooled over every response token."""
    was_training = model.training
    model.eval()
    target_device = next(model.parameters()).device
    loss_sum, sequences, correct, tokens = 0.0, 0, 0, 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples.__getitems__(list(range(start, min(start + batch_size, len(examples)))))
            batch = {key: value.to(target_device) for key, value in batch.items()}
            out = model(**batch)
            size = batch["input_ids"].shape[0]
            loss_sum += float(out.loss) * size
            sequences += size
            predicted = out.logits[:, :-1].argmax(dim=-1)
            labels = batch["labels"][:, 1:]
            mask = labels != IGNORE_INDEX
            correct += int(((predicted == labels) & mask).sum())
            tokens += int(mask.sum())
    finally:
        model.train(was_training)
    return {"loss": loss_sum / max(sequences, 1), "token_accuracy": correct / max(tokens, 1)}


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged run reports inf rather than overflowing."""
    return math.exp(loss) if loss < 700 else math.inf


_PROMPTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Encoded prompt batches by tokenizer, then by (padding side, prompts): see ``prompt_batch``."""


def prompt_batch(tokenizer: PreTrainedTokenizerBase, records: list[dict[str, str]]) -> BatchEncoding:
    """The records' prompts (after the BOS token, unless a chat template rendered them), padded on the tokenizer's side, as tensors: encoded
    once per tokenizer and prompts, since every trial of a sweep generates from the same held-out
    prompts (``exact_match`` copies it to the model's device; the cached batch stays as encoded)."""
    prompts = tuple(r["prompt"] if r.get(RENDERED) else (tokenizer.bos_token or "") + r["prompt"] for r in records)
    batches = _PROMPTS.setdefault(tokenizer, {})
    key = (tokenizer.padding_side, prompts)
    if key not in batches:
        batches[key] = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    return batches[key]


@torch.no_grad()
def exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict[str, str]],
    max_new_tokens: int,
    batch_size: int = 64,
) -> float:
    """Share of held-out prompts whose greedy continuation equals the reference response."""
    if not records:
        return float("nan")
    was_training = model.training
    model.eval()
    target_device = next(model.parameters()).device
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation continues from the last real token
    hits = 0
    try:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            enc = {name: ids.to(target_device) for name, ids in prompt_batch(tokenizer, batch).items()}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            hits += sum(text.strip() == r["response"].strip() for text, r in zip(texts, batch, strict=True))
    finally:
        tokenizer.padding_side = previous_side
        model.train(was_training)
    return hits / len(records)


def entropy_effective_rank(singular_values: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank exp(H(p)), p = s / sum(s): 1 for a rank-1 matrix, k for k equal
    singular values, and in between when the energy is spread unevenly."""
    s = singular_values.double().clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def adapter_singular_values(peft_model: torch.nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """Singular values of each adapted module's update delta W = scale * B @ A.

    Computed from the r x r core of QR factors of B and A^T rather than the full d_out x d_in
    product: the same singular values at O(d r^2) cost, which matters for 4096-wide models."""
    out: dict[str, torch.Tensor] = {}
    for name, module in peft_model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or adapter not in lora_a:
            continue
        a = module.lora_A[adapter].weight.double()  # r x d_in
        b = module.lora_B[adapter].weight.double()  # d_out x r
        _, r_b = torch.linalg.qr(b)
        _, r_a = torch.linalg.qr(a.T)
        out[name] = torch.linalg.svdvals(r_b @ r_a.T) * float(module.scaling[adapter])
    return out


def effective_ranks(peft_model: torch.nn.Module, adapter: str = "default") -> dict[str, float]:
    """Effective rank of each adapted module's update: how much of the allotted rank training used."""
    return {name: entropy_effective_rank(s) for name, s in adapter_singular_values(peft_model, adapter).items()}
