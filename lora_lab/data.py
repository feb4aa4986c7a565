"""Examples for a trial: built-in synthetic tasks, local JSONL files, Hub or local datasets.

A source yields prompt/response records, or chat conversations (``{"messages": [...]}``) rendered
with a chat template; tokenization masks everything but the response (the assistant turns) so the
loss (and the token accuracy) is computed on it alone.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from lora_lab.config import SYNTHETIC_TASKS, DataConfig
from lora_lab.errors import DataError

IGNORE_INDEX = -100
"""Label value that transformers' loss functions skip: marks prompt and padding positions."""


MESSAGES = "messages"
"""Key of a chat record's list of {role, content} messages (whatever data.messages_field was)."""
RENDERED = "rendered"
"""Set in a held-out record whose prompt the chat template rendered: it holds its special tokens
already, so no BOS is added before it."""

FIELDS = {"input_ids": None, "attention_mask": 0, "labels": IGNORE_INDEX}
"""What a training example holds, and what pads it (None: the tokenizer's pad token)."""


class TensorExamples(torch.utils.data.Dataset):
    """Tokenized examples held in memory as padded tensors: what the Trainer's dataloader reads.

    A batch comes out in one indexing per field (``__getitems__``, which torch's DataLoader calls
    with a whole batch of indices), already padded to its longest example on the tokenizer's side.
    Reading an Arrow-backed ``datasets.Dataset`` row by row and padding it with the tokenizer at every
    batch was a visible share of a CPU trial (``benchmarks/bench_trial_overhead.py`` times each step's
    batch fetch); trials of a sweep share these tensors, built once with the data."""

    def __init__(self, rows: datasets.Dataset, pad_token_id: int, padding_side: str = "right"):
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.lengths = torch.tensor([len(ids) for ids in rows["input_ids"]], dtype=torch.long)
        self.fields = {}
        for key, fill in FIELDS.items():
            self.fields[key] = pad_sequence(
                [torch.tensor(values, dtype=torch.long) for values in rows[key]],
                batch_first=True,
                padding_side=padding_side,
                padding_value=pad_token_id if fill is None else fill,
            )

    def __len__(self) -> int:
        return len(self.lengths)

    def _rows(self, index: int | torch.Tensor, length: int) -> dict[str, torch.Tensor]:
        cut = slice(0, length) if self.padding_side == "right" else slice(-length, None)
        return {key: values[index, cut] for key, values in self.fields.items()}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One example, unpadded."""
        return self._rows(index, int(self.lengths[index]))

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """A batch, padded to its longest example."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self._rows(index, int(self.lengths[index].max()))

    def collator(self) -> PadToLongest:
        """The Trainer's data_collator for these examples (same pad token and side)."""
        return PadToLongest(self.pad_token_id, self.padding_side)


@dataclass
class PadToLongest:
    """The collator for ``TensorExamples``: pads a list of its examples to the longest one
    (input_ids with the pad token, attention_mask with 0, labels with IGNORE_INDEX) and passes a
    batch that ``TensorExamples.__getitems__`` already padded through unchanged. The same batches as
    transformers' ``DataCollatorForSeq2Seq(tokenizer, padding=True)`` (a test checks it)."""

    pad_token_id: int
    padding_side: str = "right"

    def __call__(self, rows: list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(rows, dict):
            return rows
        return {
            key: pad_sequence(
                [row[key] for row in rows],
                batch_first=True,
                padding_side=self.padding_side,
                padding_value=self.pad_token_id if fill is None else fill,
            )
            for key, fill in FIELDS.items()
        }


@dataclass
class TaskData:
    """Tokenized train/eval splits plus the raw held-out records used for generation metrics."""

    name: str
    train: datasets.Dataset
    eval: datasets.Dataset
    eval_records: list[dict[str, str]]
    digest: str
    """Short hash of every record, so runs on different data never look comparable."""
    max_response_tokens: int
    train_examples: TensorExamples
    """``train`` as tensors, what trials train on (built with the data, shared by a sweep's trials)."""
    eval_examples: TensorExamples
    """``eval`` as tensors."""
    retain_records: list[dict[str, str]] | None = None
    """Held-out examples of the base model's pretraining task (task A) that the new task leaves
    unchanged; scored before and after adaptation to measure forgetting. None when the task has none."""
    retain_examples: TensorExamples | None = None
    """``retain_records`` tokenized, as tensors."""


def _random_words(
    rng: random.Random, n: int, min_len: int, max_len: int, alphabet: str = string.ascii_lowercase
) -> list[str]:
    capacity = sum(len(alphabet) ** k for k in range(min_len, max_len + 1))
    if n > capacity // 2:
        raise DataError(
            f"data.n_train + data.n_eval = {n} is more than half the {capacity} distinct "
            f"words of length {min_len}..{max_len}; lower them or widen data.min_len/max_len."
        )
    words: set[str] = set()
    ordered: list[str] = []
    while len(ordered) < n:
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        if word not in words:
            words.add(word)
            ordered.append(word)
    return ordered


def cipher_key(seed: int) -> dict[str, str]:
    """The fixed letter permutation of the cipher task for a given data seed."""
    letters = list(string.ascii_lowercase)
    shuffled = letters[:]
    random.Random(seed).shuffle(shuffled)
    return dict(zip(letters, shuffled, strict=True))


def family_keys(family_seed: int, n_keys: int) -> list[dict[str, str]]:
    """The letter permutations of the cipher family (task A). Key i depends on the seed and i alone,
    so raising ``n_keys`` adds keys without changing the others."""
    letters = list(string.ascii_lowercase)
    keys = []
    for index in range(n_keys):
        shuffled = letters[:]
        random.Random(f"cipher-family:{family_seed}:key:{index}").shuffle(shuffled)
        keys.append(dict(zip(letters, shuffled, strict=True)))
    return keys


def swapped_key(key: dict[str, str], swaps: int, seed: int) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """``key`` with the cipher letters of ``swaps`` disjoint letter pairs exchanged (task B's key),
    and the pairs: exactly 2 x swaps letters map differently from ``key``."""
    rng = random.Random(f"cipher-swap:{seed}")
    chosen = rng.sample(string.ascii_lowercase, 2 * swaps)
    pairs = [(chosen[2 * i], chosen[2 * i + 1]) for i in range(swaps)]
    new = dict(key)
    for a, b in pairs:
        new[a], new[b] = key[b], key[a]
    return new, pairs


def _keyed_records(words: list[str], keys: list[tuple[int, dict[str, str]]]) -> list[dict[str, str]]:
    """Word i enciphered with keys[i mod len(keys)], its prompt prefixed by that key's tag."""
    out = []
    for i, word in enumerate(words):
        tag, key = keys[i % len(keys)]
        out.append({"prompt": f"{tag}{word}:", "response": "".join(key[c] for c in word)})
    return out


def family_records(cfg: DataConfig, n_train: int, n_eval: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Task A: words through the family's keys, each key equally often. The held-out words are
    drawn first, so held-out task A depends on ``family_seed`` and ``n_eval`` alone and stays
    held out from a pretraining run with any ``n_train``."""
    rng = random.Random(f"cipher-family:{cfg.family_seed}:words")
    words = _random_words(rng, n_train + n_eval, cfg.min_len, cfg.max_len)
    keys = list(enumerate(family_keys(cfg.family_seed, cfg.n_keys)))
    held_out = _keyed_records(words[:n_eval], keys)
    return _keyed_records(words[n_eval:], keys), held_out


def task_b_key(cfg: DataConfig) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """cipher_swap's key (family key ``key_index`` with ``swaps`` pairs exchanged) and its pairs."""
    return swapped_key(family_keys(cfg.family_seed, cfg.n_keys)[cfg.key_index], cfg.swaps, cfg.seed)


def retain_records(cfg: DataConfig) -> list[dict[str, str]] | None:
    """Held-out task A on the keys task B leaves unchanged (all but ``key_index``): how much of its
    pretraining the base keeps after adapting to B. None for tasks that are not a family's task B."""
    if cfg.task != "cipher_swap":
        return None
    _, held_out = family_records(cfg, 0, cfg.n_eval)
    tag = str(cfg.key_index)
    return [r for r in held_out if not r["prompt"].startswith(tag)]


def synthetic_records(cfg: DataConfig) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Deterministic train and held-out records of a built-in task; the two never share a prompt."""
    rng = random.Random(cfg.seed)
    total = cfg.n_train + cfg.n_eval
    if cfg.task == "cipher_family":
        return family_records(cfg, cfg.n_train, cfg.n_eval)
    if cfg.task == "cipher_swap":
        key, _ = task_b_key(cfg)
        words = _random_words(rng, total, cfg.min_len, cfg.max_len)
        records = _keyed_records(words, [(cfg.key_index, key)])
    elif cfg.task == "cipher":
        key = cipher_key(cfg.seed)
        words = _random_words(rng, total, cfg.min_len, cfg.max_len)
        records = [{"prompt": f"{w}:", "response": "".join(key[c] for c in w)} for w in words]
    elif cfg.task == "reverse":
        words = _random_words(rng, total, cfg.min_len, cfg.max_len)
        records = [{"prompt": f"{w}<", "response": w[::-1]} for w in words]
    elif cfg.task == "add":
        pairs: set[tuple[int, int]] = set()
        ordered: list[tuple[int, int]] = []
        lo, hi = 10 ** (cfg.min_len - 1) if cfg.min_len > 1 else 0, 10**cfg.max_len - 1
        if total > ((hi - lo + 1) ** 2) // 2:
            raise DataError(
                f"data.n_train + data.n_eval = {total} is more than half the distinct "
                f"sums of {cfg.min_len}..{cfg.max_len}-digit numbers; lower them."
            )
        while len(ordered) < total:
            pair = (rng.randint(lo, hi), rng.randint(lo, hi))
            if pair not in pairs:
                pairs.add(pair)
                ordered.append(pair)
        records = [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a, b in ordered]
    else:
        raise DataError(f"data.task={cfg.task!r} is not a synthetic task")
    return records[: cfg.n_train], records[cfg.n_train :]


def _read_jsonl(path: str, cfg: DataConfig, field: str = "data.path") -> tuple[list[dict[str, Any]], list[str]]:
    """The file's records, and where each comes from ('file:line') for error messages."""
    file = Path(path)
    if not file.is_file():
        raise DataError(
            f"{field}: no such file {str(file)!r}. Give a JSONL file with one "
            f'{{"{cfg.prompt_field}": ..., "{cfg.response_field}": ...}} or '
            f'{{"{cfg.messages_field}": [{{"role": ..., "content": ...}}, ...]}} object per line.'
        )
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = file.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{file}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
            f"JSONL is UTF-8: convert the file, e.g. `iconv -f latin1 -t utf-8 {file.name} > fixed.jsonl`."
        ) from None
    rows, where = [], []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}).") from None
        if not isinstance(row, dict):
            raise DataError(f"{file}:{lineno}: expected a JSON object, got {type(row).__name__}.")
        rows.append(row)
        where.append(f"{file}:{lineno}")
    if not rows:
        raise DataError(f"{file}: holds no records.")
    return rows, where


def is_chat(rows: list[dict[str, Any]], cfg: DataConfig) -> bool:
    """Whether records are chat conversations: data.format, or with 'auto' the first record's fields."""
    if cfg.format != "auto":
        return cfg.format == "chat"
    return bool(rows) and cfg.messages_field in rows[0]


def _check_messages(rows: list[dict[str, Any]], cfg: DataConfig, where: list[str]) -> list[dict[str, Any]]:
    """Chat records as {"messages": [...]}, each checked: a list of {role, content} strings with at
    least one assistant turn (the turns the loss is computed on)."""
    out = []
    for i, row in enumerate(rows):
        messages = row.get(cfg.messages_field)
        problem = None
        if not isinstance(messages, list) or not messages:
            problem = f"field {cfg.messages_field!r} is missing or not a non-empty list (fields present: {', '.join(row) or 'none'})"
        elif not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            problem = "every message must be an object with string 'role' and 'content'"
        elif not any(m["role"] == "assistant" for m in messages):
            problem = "it has no 'assistant' message, so nothing to train on"
        if problem:
            raise DataError(
                f"{where[i]}: {problem}. Chat records are "
                f'{{"{cfg.messages_field}": [{{"role": "user", "content": ...}}, {{"role": "assistant", "content": ...}}]}} '
                f"(data.messages_field names the field; data.format=prompt_response reads prompt/response records instead)."
            )
        out.append({MESSAGES: [{"role": m["role"], "content": m["content"]} for m in messages]})
    return out


def _to_records(
    rows: list[dict[str, Any]], cfg: DataConfig, source: str, where: list[str] | None = None
) -> list[dict[str, Any]]:
    """Records of one source: chat conversations, or prompt/response pairs with the template applied.
    ``where`` says where each row comes from, for error messages (default: 'record i of <source>')."""
    where = where or [f"record {i} of {source}" for i in range(len(rows))]
    if is_chat(rows, cfg):
        return _check_messages(rows, cfg, where)
    for i, row in enumerate(rows):
        for key in (cfg.prompt_field, cfg.response_field):
            if not isinstance(row.get(key), str):
                raise DataError(
                    f"{where[i]}: field {key!r} is missing or not a string "
                    f"(fields present: {', '.join(row) or 'none'}); set data.prompt_field / "
                    f"data.response_field to the record's field names, or give chat records "
                    f'({{"{cfg.messages_field}": [...]}}, data.format=chat).'
                )
    return _template(rows, cfg, source)


def _template(rows: list[dict[str, Any]], cfg: DataConfig, where: str) -> list[dict[str, str]]:
    out = []
    for i, row in enumerate(rows):
        try:
            prompt = cfg.prompt_template.format(**row)
        except (KeyError, IndexError) as exc:
            raise DataError(
                f"data.prompt_template names {exc} which record {i} of {where} lacks "
                f"(fields present: {', '.join(row)})."
            ) from None
        except ValueError as exc:
            raise DataError(
                f"data.prompt_template={cfg.prompt_template!r} is not a valid format string "
                f"({exc}); name record fields in braces, e.g. 'Q: {{prompt}}\\nA: '."
            ) from None
        out.append({"prompt": prompt, "response": row[cfg.response_field]})
    return out


def _split(rows: list[dict[str, str]], fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(rows) * fraction)))
    if n_eval >= len(rows):
        raise DataError(
            f"{len(rows)} record(s) are too few to hold out data.eval_fraction={fraction}; "
            f"add records or give data.eval_path."
        )
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def jsonl_records(cfg: DataConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Records of a local JSONL file (and optional held-out file): chat conversations, or
    prompt/response pairs with the prompt template applied."""
    rows, where = _read_jsonl(cfg.path, cfg)
    train = _to_records(rows, cfg, cfg.path, where)
    if cfg.eval_path:
        rows, where = _read_jsonl(cfg.eval_path, cfg, "data.eval_path")
        return train, _to_records(rows, cfg, cfg.eval_path, where)
    return _split(train, cfg.eval_fraction, cfg.seed)


@contextmanager
def _hub_offline(offline: bool):
    """Make datasets read only its local cache while the Hub is unreachable, so an offline machine
    gets an answer at once instead of minutes of retries (the flag is read from module state that
    is set at import, hence set here for the duration of the call)."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
"""datasets' loader for a local data file, by extension (data.data_files with data.hf_name=null)."""


def _loader_name(cfg: DataConfig) -> str:
    if cfg.hf_name:
        return cfg.hf_name
    files = cfg.data_files
    first = next(iter(files.values())) if isinstance(files, dict) else files
    first = first[0] if isinstance(first, (list, tuple)) else first
    suffix = Path(str(first)).suffix.lower()
    if suffix not in LOADERS:
        raise DataError(
            f"data.data_files={files!r}: cannot tell the loader from the extension {suffix!r}; name it with "
            f"data.hf_name (one of json, csv, parquet, or any datasets loader)."
        )
    return LOADERS[suffix]


def _is_saved_dataset(path: str | None) -> bool:
    """Whether ``path`` is a directory written by datasets' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    if not path or not Path(path).is_dir():
        return False
    return any((Path(path) / name).is_file() for name in ("dataset_dict.json", "state.json"))


def _load_splits(cfg: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The training split and the held-out split (None: none named) of the configured dataset."""
    if _is_saved_dataset(cfg.hf_name) and not cfg.data_files:
        saved = datasets.load_from_disk(cfg.hf_name)
        if isinstance(saved, datasets.Dataset):
            return saved, None
        for split in (cfg.hf_train_split, cfg.hf_eval_split):
            if split is not None and split not in saved:
                raise DataError(
                    f"data.hf_train_split/hf_eval_split: {split!r} is not a split of {cfg.hf_name} "
                    f"(splits: {', '.join(saved)})."
                )
        return saved[cfg.hf_train_split], saved[cfg.hf_eval_split] if cfg.hf_eval_split else None
    name = _loader_name(cfg) if cfg.data_files else cfg.hf_name
    local = cfg.data_files is not None or Path(name).exists()
    from lora_lab.model.base import hub_reachable

    offline = not local and not hub_reachable()
    kwargs = {"data_files": cfg.data_files} if cfg.data_files else {}
    with _hub_offline(offline):
        train_ds = datasets.load_dataset(name, cfg.hf_config, split=cfg.hf_train_split, **kwargs)
        eval_ds = (
            datasets.load_dataset(name, cfg.hf_config, split=cfg.hf_eval_split, **kwargs) if cfg.hf_eval_split else None
        )
    return train_ds, eval_ds


def hf_records(cfg: DataConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Records of a Hub dataset, a local ``save_to_disk`` directory or local data files
    (``data.data_files``); offline, only local data and datasets already in the cache load."""
    where = cfg.hf_name or str(cfg.data_files)
    try:
        train_ds, eval_ds = _load_splits(cfg)
    except DataError:
        raise
    except Exception as exc:  # datasets raises many types for "not reachable / not cached"
        raise DataError(
            f"data.hf_name={cfg.hf_name!r}{f' (data.data_files={cfg.data_files!r})' if cfg.data_files else ''} "
            f"could not be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}). Offline, only local data (a directory "
            f"written by save_to_disk, or files with data.data_files) and datasets already in the local "
            f"Hugging Face cache load; otherwise export it to JSONL and use data=jsonl data.path=..."
        ) from None
    rows = list(train_ds)
    if is_chat(rows, cfg):
        needed = [cfg.messages_field]
    else:
        needed = [cfg.prompt_field, cfg.response_field]
    for column in needed:
        if column not in train_ds.column_names:
            field = {cfg.prompt_field: "prompt_field", cfg.response_field: "response_field"}.get(
                column, "messages_field"
            )
            raise DataError(
                f"data.{field}={column!r} is not a column of {where} (columns: {', '.join(train_ds.column_names)})."
            )
    train = _to_records(rows, cfg, where)
    if eval_ds is not None:
        return train, _to_records(list(eval_ds), cfg, where)
    return _split(train, cfg.eval_fraction, cfg.seed)


def load_records(cfg: DataConfig) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Train and held-out prompt/response records for the configured source."""
    if cfg.task == "jsonl":
        return jsonl_records(cfg)
    if cfg.task == "hf":
        return hf_records(cfg)
    return synthetic_records(cfg)


def encode_record(record: dict[str, str], tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> dict:
    """Token ids of prompt + response (+ EOS) with the prompt masked out of the labels."""
    prompt_ids = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    response_ids = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
    response_ids = response_ids + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_seq_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_seq_len]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


class ChatFormat:
    """Renders chat records with a chat template, and labels the assistant turns alone.

    The labels come from transformers' ``return_assistant_tokens_mask`` when the template marks the
    assistant's text with ``{% generation %}``; most templates do not, so otherwise each assistant
    turn's characters are found by rendering the conversation up to it twice, without and with that
    turn (``add_generation_prompt`` on the first, so the assistant header stays a prompt), and tokens
    starting inside one of those spans are labelled (the tokenizer's character offsets)."""

    def __init__(self, cfg: DataConfig, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.template = chat_template(cfg, tokenizer)
        self.marked = "{% generation %}" in self.template or "{%- generation %}" in self.template

    def render(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=generation_prompt
        )

    def assistant_spans(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character spans of its assistant turns."""
        text = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], generation_prompt=True) if i else ""
            upto = self.render(messages[: i + 1])
            if not (upto.startswith(before) and text.startswith(upto)):
                raise DataError(
                    "data.chat_template: the template does not render a conversation as the rendering of "
                    "its first turns followed by the next (it rewrites earlier turns), so the assistant "
                    "turns cannot be located; give a template that marks them with {% generation %} ... "
                    "{% endgeneration %} in data.chat_template."
                )
            spans.append((len(before), len(upto)))
        return text, spans

    def encode(self, messages: list[dict[str, str]], max_seq_len: int) -> dict:
        """Token ids of the rendered conversation, labels on the assistant turns alone."""
        if self.marked:
            enc = self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
            ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
        else:
            text, spans = self.assistant_spans(messages)
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            mask = [any(lo <= start < hi for lo, hi in spans) for start, _ in enc["offset_mapping"]]
        labels = [tok if keep else IGNORE_INDEX for tok, keep in zip(ids, mask, strict=True)]
        ids, labels = ids[:max_seq_len], labels[:max_seq_len]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    def held_out(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """A held-out conversation as a generation prompt (everything before its last assistant turn,
        rendered, ending with the assistant header) and the reference answer (that turn)."""
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = self.render(messages[:last], generation_prompt=True) if last else self.render([], True)
        return {"prompt": prompt, "response": messages[last]["content"], RENDERED: True}


def chat_template(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    """The chat template chat records are rendered with: data.chat_template (the text, or a file
    holding it), else the tokenizer's own; a DataError saying how to give one when there is neither."""
    given = cfg.chat_template
    if given:
        if "{" in given:
            return given
        path = Path(given).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8")
        raise DataError(
            f"data.chat_template={given!r}: no such file, and not a template (a Jinja template holds "
            f"{{% ... %}} or {{{{ ... }}}}); give the template's text or the path of a file holding it."
        )
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default")
    if own:
        return own
    raise DataError(
        f'data.format: the records are chat conversations ({{"{cfg.messages_field}": [...]}}), but the '
        f"model's tokenizer has no chat template to render them with (base models usually have none). Give "
        f"one with data.chat_template=<a Jinja template, or the path of a file holding one>, for instance "
        f"the chat_template of the instruct model of the same family (its chat_template.jinja or "
        f"tokenizer_config.json); or write the data as prompt/response records (data.format=prompt_response)."
    )


def records_digest(train: list[dict[str, str]], held_out: list[dict[str, str]]) -> str:
    """Content hash of both splits."""
    blob = json.dumps([train, held_out], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def build_task_data(cfg: DataConfig, tokenizer: PreTrainedTokenizerBase, max_seq_len: int) -> TaskData:
    """Load, split and tokenize the configured data once; trials reuse the result."""
    train_records, eval_records = load_records(cfg)
    chat = ChatFormat(cfg, tokenizer) if any(MESSAGES in r for r in train_records + eval_records) else None

    def encode(record: dict[str, Any]) -> dict:
        if MESSAGES in record:
            return chat.encode(record[MESSAGES], max_seq_len)
        return encode_record(record, tokenizer, max_seq_len)

    def to_dataset(records: list[dict[str, Any]]) -> datasets.Dataset:
        rows = [encode(r) for r in records]
        rows = [r for r in rows if any(label != IGNORE_INDEX for label in r["labels"])]
        if not rows:
            raise DataError(
                f"every example is longer than train.max_seq_len={max_seq_len} tokens before "
                f"its response starts; raise train.max_seq_len."
            )
        return datasets.Dataset.from_list(rows)

    train, held_out = to_dataset(train_records), to_dataset(eval_records)
    digest = records_digest(train_records, eval_records)
    if chat is not None:  # exact match: the last assistant turn, generated from the conversation before it
        eval_records = [chat.held_out(r[MESSAGES]) if MESSAGES in r else r for r in eval_records]
    retain = retain_records(cfg)
    max_response = max(
        len(tokenizer(r["response"], add_special_tokens=False)["input_ids"]) for r in eval_records + (retain or [])
    )
    name = cfg.task if cfg.task in SYNTHETIC_TASKS else (cfg.path or cfg.hf_name or cfg.task)

    def tensors(rows: datasets.Dataset) -> TensorExamples:
        return TensorExamples(rows, tokenizer.pad_token_id, tokenizer.padding_side)

    return TaskData(
        name=name,
        train=train,
        eval=held_out,
        eval_records=eval_records,
        digest=digest,
        max_response_tokens=max_response + 1,
        train_examples=tensors(train),
        eval_examples=tensors(held_out),
        retain_records=retain,
        retain_examples=tensors(to_dataset(retain)) if retain else None,
    )
