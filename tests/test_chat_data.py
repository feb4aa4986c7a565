"""Chat-format data ({"messages": [...]}) rendered with a chat template, the loss on the assistant
turns alone; and local datasets (a save_to_disk directory, local JSON/CSV/parquet files), offline."""

from __future__ import annotations

import json
import re

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from lora_lab.config import DataConfig
from lora_lab.data import IGNORE_INDEX, RENDERED, ChatFormat, build_task_data, load_records
from lora_lab.errors import DataError
from lora_lab.model.base import ASSETS_DIR
from lora_lab.train import run_trial

# The shipped tokenizer is character-level with no chat template (a base model's, as most are), and no
# newline character: turns are separated by '|'.
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: "
    "{% if m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% else %}{{ m['content'] }}{% endif %}|"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)
MARKED = TEMPLATE.replace(
    "{{ m['content'] }}{{ eos_token }}", "{% generation %}{{ m['content'] }}{{ eos_token }}|{% endgeneration %}"
).replace("{% else %}{{ m['content'] }}{% endif %}|", "{% else %}{{ m['content'] }}|{% endif %}")
"""The same rendering, with the assistant's text marked for transformers' return_assistant_tokens_mask."""


def conversation(i: int) -> dict:
    word = "abcdefghij"[i % 10] * 2 + str(i)
    return {
        "messages": [
            {"role": "system", "content": "echo"},
            {"role": "user", "content": f"say {word}"},
            {"role": "assistant", "content": word},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": word[::-1]},
        ]
    }


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS_DIR / "tiny_llama", local_files_only=True)


@pytest.fixture
def chat_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(conversation(i)) + "\n" for i in range(40)))
    return path


def expected_labels(messages: list[dict], tokenizer) -> tuple[str, list[bool]]:
    """Which characters of the rendering are the assistant's, found by hand: each assistant content,
    its EOS and the '|' that closes its turn, located in order in the text (one token per character)."""
    text = tokenizer.apply_chat_template(messages, chat_template=TEMPLATE, tokenize=False)
    keep, cursor = [False] * len(text), 0
    for m in messages:
        piece = f"{m['role']}: {m['content']}" + (tokenizer.eos_token if m["role"] == "assistant" else "") + "|"
        start = text.index(piece, cursor)
        if m["role"] == "assistant":
            first = start + len("assistant: ")
            keep[first : start + len(piece)] = [True] * (start + len(piece) - first)
        cursor = start + len(piece)
    return text, keep


def test_chat_jsonl_labels_cover_exactly_the_assistant_turns(chat_file, tokenizer):
    cfg = DataConfig(task="jsonl", path=str(chat_file), chat_template=TEMPLATE, eval_fraction=0.25)
    task = build_task_data(cfg, tokenizer, max_seq_len=256)
    train, _ = load_records(cfg)
    assert len(task.train) == len(train) == 30
    for record, row in zip(train, task.train, strict=True):
        text, keep = expected_labels(record["messages"], tokenizer)
        ids = row["input_ids"]
        # the shipped tokenizer gives one token per character, special tokens one each
        chars = [c for c in re.split(r"(<s>|</s>)", text) if c]
        pieces = [p for c in chars for p in ([c] if c in ("<s>", "</s>") else list(c))]
        assert tokenizer.convert_ids_to_tokens(ids) == pieces
        starts = [sum(len(p) for p in pieces[:k]) for k in range(len(pieces))]
        want = [tok if keep[s] else IGNORE_INDEX for tok, s in zip(ids, starts, strict=True)]
        assert row["labels"] == want
        labelled = tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
        first, second = record["messages"][2]["content"], record["messages"][4]["content"]
        assert labelled == f"{first}</s>|{second}</s>|"


def test_labels_match_transformers_assistant_mask_where_the_template_marks_it(chat_file, tokenizer):
    """The rendering-prefix method (any template) and transformers' {% generation %} mask agree."""
    plain = ChatFormat(DataConfig(task="jsonl", path="x", chat_template=TEMPLATE), tokenizer)
    marked = ChatFormat(DataConfig(task="jsonl", path="x", chat_template=MARKED), tokenizer)
    assert marked.marked and not plain.marked
    for i in range(5):
        messages = conversation(i)["messages"]
        assert plain.render(messages) == marked.render(messages)
        assert plain.encode(messages, 256) == marked.encode(messages, 256)


def test_chat_held_out_prompt_is_the_conversation_before_the_last_answer(chat_file, tokenizer):
    cfg = DataConfig(task="jsonl", path=str(chat_file), chat_template=TEMPLATE)
    task = build_task_data(cfg, tokenizer, max_seq_len=256)
    record = task.eval_records[0]
    assert record[RENDERED] and record["prompt"].startswith("<s>system: echo|")
    assert record["prompt"].endswith("|user: again|assistant: ") and record["prompt"].count("assistant: ") == 2
    assert record["prompt"][: -len("|user: again|assistant: ")].endswith(record["response"][::-1] + "</s>")


def test_a_tokenizer_without_chat_template_is_a_clear_error(chat_file, tokenizer, tmp_path):
    with pytest.raises(DataError, match=r"has no chat template .* data\.chat_template="):
        build_task_data(DataConfig(task="jsonl", path=str(chat_file)), tokenizer, 256)
    template_file = tmp_path / "chat.jinja"
    template_file.write_text(TEMPLATE)
    from_file = build_task_data(
        DataConfig(task="jsonl", path=str(chat_file), chat_template=str(template_file)), tokenizer, 256
    )
    inline = build_task_data(DataConfig(task="jsonl", path=str(chat_file), chat_template=TEMPLATE), tokenizer, 256)
    assert from_file.train["labels"] == inline.train["labels"]
    with pytest.raises(DataError, match=r"data.chat_template='nowhere.jinja': no such file"):
        build_task_data(DataConfig(task="jsonl", path=str(chat_file), chat_template="nowhere.jinja"), tokenizer, 256)


@pytest.mark.parametrize(
    "record, message",
    [
        ({"messages": []}, "field 'messages' is missing or not a non-empty list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "it has no 'assistant' message"),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
            "every message must be an object with string 'role' and 'content'",
        ),
    ],
)
def test_malformed_chat_records_name_their_line(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(conversation(0)) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: {message}")):
        load_records(DataConfig(task="jsonl", path=str(path), format="chat"))


def test_a_chat_trial_trains_and_scores_exact_match(make_trial_config, chat_file, tmp_path):
    template_file = tmp_path / "chat.jinja"
    template_file.write_text(TEMPLATE)
    cfg = make_trial_config(
        "data=jsonl",
        f"data.path={chat_file}",
        f"data.chat_template={template_file}",
        "train.max_steps=2",
        "train.batch_size=8",
        "train.eval_every=2",
        "train.eval_generate=4",
        "train.save_adapter=false",
        "train.max_seq_len=96",
        "tracking.enabled=false",
    )
    result = run_trial(cfg, tmp_path, show_progress=False)
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.eval_loss))
    assert 0.0 <= result.exact_match <= 1.0  # generated from the rendered prompts (no second BOS)


# -- local datasets --------------------------------------------------------------------------------

PAIRS = [{"prompt": f"q{i}:", "response": f"a{i}"} for i in range(20)]


def test_a_save_to_disk_directory_loads_offline(tmp_path):
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PAIRS[:16]), "test": datasets.Dataset.from_list(PAIRS[16:])}
    ).save_to_disk(saved)
    train, held_out = load_records(DataConfig(task="hf", hf_name=str(saved), hf_eval_split="test"))
    assert train == PAIRS[:16] and held_out == PAIRS[16:]
    single = tmp_path / "single"
    datasets.Dataset.from_list([conversation(i) for i in range(10)]).save_to_disk(single)
    train, held_out = load_records(DataConfig(task="hf", hf_name=str(single), eval_fraction=0.2))
    assert len(train) == 8 and len(held_out) == 2 and all("messages" in r for r in train + held_out)
    with pytest.raises(DataError, match="'validation' is not a split of .* \\(splits: train, test\\)"):
        load_records(DataConfig(task="hf", hf_name=str(saved), hf_eval_split="validation"))


@pytest.mark.parametrize("kind", ["json", "csv", "parquet"])
def test_local_data_files_load_through_datasets(tmp_path, kind):
    frame = datasets.Dataset.from_list(PAIRS)
    train_file, test_file = tmp_path / f"train.{kind}", tmp_path / f"test.{kind}"
    write = {"json": "to_json", "csv": "to_csv", "parquet": "to_parquet"}[kind]
    getattr(frame.select(range(16)), write)(str(train_file))
    getattr(frame.select(range(16, 20)), write)(str(test_file))
    train, held_out = load_records(
        DataConfig(task="hf", data_files={"train": str(train_file), "test": str(test_file)}, hf_eval_split="test")
    )
    assert train == PAIRS[:16] and held_out == PAIRS[16:]
    named = load_records(DataConfig(task="hf", hf_name=kind, data_files=str(train_file), eval_fraction=0.25))
    assert sorted(named[0] + named[1], key=lambda r: int(r["prompt"][1:-1])) == PAIRS[:16]


def test_hf_group_with_data_files_composes(make_trial_config, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    cfg = make_trial_config("data=hf", f"data.data_files={path}")
    assert cfg.data.hf_name is None and load_records(cfg.data)[0][0].keys() == {"prompt", "response"}
    with pytest.raises(Exception, match="data.hf_name"):
        make_trial_config("data=hf")
