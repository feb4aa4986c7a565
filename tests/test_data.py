"""Examples: the synthetic tasks, prompt masking in the labels, and local JSONL files."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import string

import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from lora_lab.config import DataConfig
from lora_lab.data import (
    IGNORE_INDEX,
    PadToLongest,
    build_task_data,
    cipher_key,
    encode_record,
    load_records,
    synthetic_records,
)
from lora_lab.errors import DataError
from lora_lab.model.base import builtin_tokenizer

SMALL = ("data.n_train=120", "data.n_eval=30")


@pytest.fixture(scope="module")
def tokenizer():
    return builtin_tokenizer()


@pytest.fixture(scope="module")
def data_cfg(make_trial_config):
    """``data_cfg(group, *overrides)``: the DataConfig of ``data=<group>`` from conf/, made small."""
    return lambda group, *overrides: make_trial_config(f"data={group}", *SMALL, *overrides).data


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# -- synthetic tasks ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["cipher", "reverse", "add"])
def test_synthetic_tasks_are_deterministic_and_disjoint(data_cfg, task):
    cfg = data_cfg(task)
    train, held_out = synthetic_records(cfg)
    assert (train, held_out) == synthetic_records(dataclasses.replace(cfg))  # same seed, same records
    assert len(train) == 120 and len(held_out) == 30
    train_prompts = {r["prompt"] for r in train}
    held_prompts = {r["prompt"] for r in held_out}
    assert len(train_prompts) == 120 and len(held_prompts) == 30  # no duplicates either
    assert not train_prompts & held_prompts
    other_train, other_held = synthetic_records(dataclasses.replace(cfg, seed=cfg.seed + 1))
    assert other_train != train and other_held != held_out


def test_cipher_responses_follow_the_key(data_cfg):
    cfg = data_cfg("cipher")
    key = cipher_key(cfg.seed)
    assert sorted(key) == sorted(key.values()) == list(string.ascii_lowercase)  # a permutation
    assert sum(k != v for k, v in key.items()) > 20  # and not (nearly) the identity
    assert cipher_key(cfg.seed + 1) != key
    train, held_out = synthetic_records(cfg)
    for record in train + held_out:
        word = record["prompt"][:-1]
        assert record["prompt"].endswith(":") and cfg.min_len <= len(word) <= cfg.max_len
        assert record["response"] == "".join(key[c] for c in word)


def test_reverse_and_add_answers_are_right(data_cfg):
    cfg = data_cfg("reverse")
    for record in sum(synthetic_records(cfg), []):
        word = record["prompt"][:-1]
        assert record["prompt"].endswith("<") and record["response"] == word[::-1]
        assert cfg.min_len <= len(word) <= cfg.max_len
    seen_lengths = set()
    for record in sum(synthetic_records(data_cfg("add")), []):
        a, b = re.fullmatch(r"(\d+)\+(\d+)=", record["prompt"]).groups()
        assert int(record["response"]) == int(a) + int(b)
        seen_lengths |= {len(a), len(b)}
    assert seen_lengths <= {1, 2, 3}


def test_too_many_examples_for_the_word_space_is_a_clear_error():
    with pytest.raises(DataError, match="more than half the 26 distinct words"):
        synthetic_records(DataConfig(task="cipher", n_train=10, n_eval=10, min_len=1, max_len=1))


# -- tokenization ----------------------------------------------------------------------------------


def test_encode_record_masks_the_prompt_and_keeps_response_and_eos(tokenizer):
    enc = encode_record({"prompt": "abc:", "response": "xyz"}, tokenizer, max_seq_len=64)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["<s>", "a", "b", "c", ":", "x", "y", "z", "</s>"]
    assert enc["labels"] == [IGNORE_INDEX] * 5 + enc["input_ids"][5:]
    assert enc["attention_mask"] == [1] * 9
    short = encode_record({"prompt": "abc:", "response": "xyz"}, tokenizer, max_seq_len=6)
    assert short["input_ids"] == enc["input_ids"][:6] and short["labels"] == enc["labels"][:6]


def test_task_data_labels_cover_exactly_the_response(data_cfg, tokenizer):
    cfg = data_cfg("cipher")
    task = build_task_data(cfg, tokenizer, max_seq_len=64)
    train_records, eval_records = synthetic_records(cfg)
    assert len(task.train) == len(train_records) and len(task.eval) == len(eval_records)
    assert task.eval_records == eval_records
    for rows, records in ((task.train, train_records), (task.eval, eval_records)):
        for row, record in zip(rows, records, strict=True):
            n_prompt = 1 + len(record["prompt"])  # BOS + one token per character
            labels = row["labels"]
            assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
            assert labels[n_prompt:] == row["input_ids"][n_prompt:]
            assert labels[-1] == tokenizer.eos_token_id
            assert tokenizer.decode(labels[n_prompt:-1]) == record["response"]
    assert task.max_response_tokens == max(len(r["response"]) for r in eval_records) + 1
    assert task.digest == build_task_data(cfg, tokenizer, 64).digest
    assert task.digest != build_task_data(dataclasses.replace(cfg, seed=7), tokenizer, 64).digest


def test_examples_truncated_before_their_response_are_dropped(data_cfg, tokenizer):
    cfg = data_cfg("reverse")  # words of 3..7 letters: prompts of 1 + 4..8 tokens
    task = build_task_data(cfg, tokenizer, max_seq_len=7)
    train_records, _ = synthetic_records(cfg)
    assert len(task.train) == sum(1 + len(r["prompt"]) < 7 for r in train_records) < len(train_records)
    assert all(len(row["input_ids"]) <= 7 for row in task.train)
    with pytest.raises(DataError, match="raise train.max_seq_len"):
        build_task_data(data_cfg("cipher"), tokenizer, max_seq_len=4)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_tensor_batches_equal_transformers_seq2seq_collator(data_cfg, tokenizer, padding_side):
    """Trials train on TensorExamples batches (through PadToLongest): they must be exactly those of
    DataCollatorForSeq2Seq(padding=True) over the datasets rows, for examples of mixed lengths, on
    either padding side, whether the DataLoader fetches a whole batch or example by example."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = padding_side
    task = build_task_data(data_cfg("reverse"), tokenizer, max_seq_len=64)  # words of 3..7 letters
    reference = DataCollatorForSeq2Seq(tokenizer, padding=True)
    collate = PadToLongest(tokenizer.pad_token_id, tokenizer.padding_side)
    for split, examples in ((task.train, task.train_examples), (task.eval, task.eval_examples)):
        assert len(examples) == len(split)
        assert examples[5]["input_ids"].tolist() == split[5]["input_ids"]  # one example comes back unpadded
        indices = list(range(0, min(len(split), 40), 3))
        assert len({len(split[i]["input_ids"]) for i in indices}) > 1  # padding really happens
        expected = reference([split[i] for i in indices])
        for got in (collate(examples.__getitems__(indices)), collate([examples[i] for i in indices])):
            assert set(got) == set(expected)
            for key in expected:
                assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), key
        loader = torch.utils.data.DataLoader(examples, batch_size=len(indices), sampler=indices, collate_fn=collate)
        assert all(torch.equal(next(iter(loader))[key], expected[key]) for key in expected)


# -- JSONL files ----------------------------------------------------------------------------------


def test_jsonl_with_prompt_template_and_eval_file(make_trial_config, tmp_path, tokenizer):
    train_file = write_jsonl(
        tmp_path / "train.jsonl",
        [{"question": f"{i}+{i}", "answer": str(2 * i), "topic": "sums"} for i in range(6)] + [""],
    )
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"question": "9+9", "answer": "18", "topic": "more"}])
    cfg = make_trial_config(
        "data=jsonl",
        f"data.path={train_file}",
        f"data.eval_path={eval_file}",
        "data.prompt_field=question",
        "data.response_field=answer",
        "data.prompt_template='Q[{topic}]: {question} A: '",
    ).data
    train, held_out = load_records(cfg)
    assert train[2] == {"prompt": "Q[sums]: 2+2 A: ", "response": "4"}
    assert len(train) == 6  # the blank line is skipped
    assert held_out == [{"prompt": "Q[more]: 9+9 A: ", "response": "18"}]
    task = build_task_data(cfg, tokenizer, 64)
    assert task.name == str(train_file)
    row = task.eval[0]
    assert tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX], skip_special_tokens=True) == "18"
    assert tokenizer.decode(row["input_ids"], skip_special_tokens=True) == "Q[more]: 9+9 A: 18"


def test_jsonl_without_eval_file_holds_out_a_seeded_fraction(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(20)])
    cfg = DataConfig(task="jsonl", path=str(path), eval_fraction=0.25, seed=3)
    train, held_out = load_records(cfg)
    assert len(held_out) == 5 and len(train) == 15
    assert sorted(r["prompt"] for r in train + held_out) == sorted(f"p{i}" for i in range(20))
    assert load_records(cfg) == (train, held_out)
    assert load_records(dataclasses.replace(cfg, seed=4))[1] != held_out


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"prompt": "a", "response": "b"}', "", "{'prompt': 'a'}"], r":3: not valid JSON \(Expecting property name"),
        (['{"prompt": "a", "response": "b"}', "[1, 2]"], r":2: expected a JSON object, got list"),
        (
            ['{"prompt": "a", "response": "b"}', '{"question": "a", "response": "b"}'],
            r":2: field 'prompt' is missing or not a string \(fields present: question, response\); "
            r"set data.prompt_field",
        ),
        (['{"prompt": "a", "response": 4}'], r":1: field 'response' is missing or not a string"),
        (["", "  "], r": holds no records"),
    ],
)
def test_malformed_jsonl_names_the_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=re.escape(str(path)) + message):
        load_records(DataConfig(task="jsonl", path=str(path)))


def test_missing_jsonl_file_and_missing_template_field(tmp_path):
    with pytest.raises(DataError, match=r"data.path: no such file '.*nowhere.jsonl'"):
        load_records(DataConfig(task="jsonl", path=str(tmp_path / "nowhere.jsonl")))
    path = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "a", "response": "b"}] * 4)
    with pytest.raises(DataError, match=r"data.prompt_template names 'topic' which record 0 .* lacks"):
        load_records(DataConfig(task="jsonl", path=str(path), prompt_template="{topic}: {prompt}"))


def test_malformed_prompt_template_is_a_data_error(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "a", "response": "b"}] * 4)
    with pytest.raises(DataError, match="prompt_template"):
        load_records(DataConfig(task="jsonl", path=str(path), prompt_template="Q: {prompt"))


def test_missing_eval_file_names_eval_path(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "a", "response": "b"}] * 4)
    with pytest.raises(DataError, match=r"^data\.eval_path"):
        load_records(DataConfig(task="jsonl", path=str(path), eval_path=str(tmp_path / "nowhere.jsonl")))


def test_truncated_jsonl_line_reports_its_column(tmp_path):
    truncated = '{"prompt": "a", "response": "b"'  # 31 characters: the ',' or '}' is missing at column 32
    path = write_jsonl(tmp_path / "cut.jsonl", ['{"prompt": "a", "response": "b"}', truncated])
    with pytest.raises(DataError, match=r":2: not valid JSON \(Expecting ',' delimiter at column 32\)"):
        load_records(DataConfig(task="jsonl", path=str(path)))
