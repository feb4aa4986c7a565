"""Scores of the untrained base model, computed once per base, data and evaluation settings.

Every trial on task B scores held-out task A "before" adaptation (the base as loaded: see
``lora_lab.train.base_retain_scores``), and every zero-shot baseline scores the base on the held-out
split; both are the same numbers for every trial, seed and worker of a sweep. ``BaseScores`` keeps
them in memory for the process and, given a directory (a sweep's ``sweeps/<study>/base_scores/``),
in one JSON file per key there, so a restarted sweep or a second worker reads them instead of
scoring and generating again.

The key is a SHA-256 of everything the numbers depend on: the base model's weights (the checksum
``lora_lab.model.fingerprint`` takes), the model and quantization settings, the exact token tensors
scored and the prompts generated from (so any change of data settings or tokenizer changes it), the
evaluation settings (batch size, prompts generated, new tokens), the device and the torch and
transformers versions. A file is written to a temporary name and renamed into place
(``os.replace``), so a reader sees a whole file or none; a file that does not parse, holds another
key or lacks a score is ignored, and the scores are computed again and the file rewritten.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import transformers

FORMAT = 1
"""Bumped whenever what a key covers or how a score is computed changes: older files then miss."""

DIRECTORY_NAME = "base_scores"
"""The cache's folder beside a sweep's storage: ``sweeps/<study>/base_scores/``."""

_MEMORY: dict[str, dict[str, float]] = {}
"""Scores already computed or read in this process, by key (shared by every sweep in it)."""


def tensors_digest(examples) -> str:
    """Content hash of tokenized examples (a ``lora_lab.data.TensorExamples``): every field's tokens."""
    digest = hashlib.sha256()
    for name in sorted(examples.fields):
        values = examples.fields[name].contiguous()
        digest.update(f"{name}:{tuple(values.shape)}:{values.dtype}".encode())
        digest.update(values.cpu().numpy().tobytes())
    digest.update(examples.lengths.cpu().numpy().tobytes())
    return digest.hexdigest()


def score_key(kind: str, model_fingerprint: str, settings: dict[str, Any]) -> str:
    """The cache key of one kind of base score ('retain', 'zero_shot') for a base and settings."""
    blob = {
        "format": FORMAT,
        "kind": kind,
        "model_weights": model_fingerprint,
        "settings": settings,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def trial_settings(cfg, records: list[dict[str, str]], examples, max_new_tokens: int, device: str) -> dict[str, Any]:
    """What a base score depends on besides the weights, for a trial config (``TrialConfig``)."""
    return {
        "model": asdict(cfg.model),
        "quant": asdict(cfg.quant),
        "data": asdict(cfg.data),
        "max_seq_len": cfg.train.max_seq_len,
        "scored_tokens": tensors_digest(examples),
        "generated_prompts": hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest(),
        "max_new_tokens": max_new_tokens,
        "eval_batch_size": max(cfg.train.batch_size, 64),
        "eval_generate": cfg.train.eval_generate,
        "device": device,
    }


class BaseScores:
    """The base's scores by key: from memory, else from ``directory``, else computed (and kept)."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None
        self.computed = 0
        """How many scores this instance computed (neither in memory nor on disk)."""
        self.read = 0
        """How many it read from a file."""

    def path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key[:32]}.json"

    def get(self, key: str, names: list[str], compute: Callable[[], dict[str, float]]) -> dict[str, float]:
        """The scores named ``names`` for ``key``; ``compute()`` runs only when neither this process
        nor the directory holds them whole."""
        if key in _MEMORY:
            return dict(_MEMORY[key])
        scores = self._read(key, names)
        if scores is not None:
            self.read += 1
        else:
            scores = {name: float(value) for name, value in compute().items()}
            self.computed += 1
            self._write(key, scores)
        _MEMORY[key] = scores
        return dict(scores)

    def _read(self, key: str, names: list[str]) -> dict[str, float] | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            scores = stored["scores"]
            if stored.get("key") != key or set(scores) != set(names):
                return None
            return {name: _number(scores[name]) for name in names}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None  # torn by a crash, edited by hand, another format: computed again and rewritten

    def _write(self, key: str, scores: dict[str, float]) -> None:
        path = self.path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"key": key, "format": FORMAT, "scores": {k: _json_number(v) for k, v in scores.items()}})
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)  # atomic: another worker reads the old file, the new one or none
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _json_number(value: float) -> float | str:
    """JSON has no NaN: a score that is NaN (exact match with no prompt generated) is stored as 'nan'."""
    return value if math.isfinite(value) else str(value)


def _number(value: Any) -> float:
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a score: {value!r}")
    return float(value)


def forget_memory() -> None:
    """Drop the scores this process holds (the files stay): the next ``get`` reads or computes."""
    _MEMORY.clear()
