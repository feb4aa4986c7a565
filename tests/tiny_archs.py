"""Tiny random-weight checkpoints of common architectures, built from transformers' own config classes
and saved with ``save_pretrained`` beside the shipped tiny_llama tokenizer: a user's local checkpoint,
made offline in a fraction of a second."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
)

from lora_lab.model.base import ASSETS_DIR

WIDTH, LAYERS, HEADS, KV_HEADS, MLP, POSITIONS = 32, 2, 4, 2, 64, 128


def _configs(vocab: int, ids: dict[str, int]) -> dict:
    decoder = dict(
        vocab_size=vocab,
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=POSITIONS,
        **ids,
    )
    return {
        "llama": LlamaConfig(**decoder),
        "qwen2": Qwen2Config(**decoder),
        "mistral": MistralConfig(**decoder),
        "gemma2": Gemma2Config(**decoder, head_dim=WIDTH // HEADS),
        "phi3": Phi3Config(**decoder),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS, **ids),
        "gpt_neox": GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=WIDTH,
            intermediate_size=MLP,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=POSITIONS,
            **ids,
        ),
        "opt": OPTConfig(
            vocab_size=vocab,
            hidden_size=WIDTH,
            ffn_dim=MLP,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=POSITIONS,
            word_embed_proj_dim=WIDTH,
            **ids,
        ),
    }


ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma2", "phi3", "gpt2", "gpt_neox", "opt")
"""transformers model types of the checkpoints ``save_checkpoint`` writes."""


def save_checkpoint(model_type: str, directory: Path, seed: int = 0) -> Path:
    """A tiny ``model_type`` model with seeded random weights and the shipped tokenizer, saved to
    ``directory`` as a user's own checkpoint would be."""
    tokenizer = AutoTokenizer.from_pretrained(ASSETS_DIR / "tiny_llama", local_files_only=True)
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = _configs(len(tokenizer), ids)[model_type]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
