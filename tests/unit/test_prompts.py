"""Prompt readers (JSONL, CSV, Parquet, txt), their one-line errors, and target token masks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from routescope.collect.prompts import read_prompt_set, tokenize_prompts  # noqa: E402
from routescope.core.errors import PromptFileError  # noqa: E402

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "a",
    "dog",
    "ran",
    "far",
    "user",
    "assistant",
    "hello",
    "hi",
    "there",
    "<",
    ">",
    "/",
    "def",
    "x",
]


def make_tokenizer(chat: bool = True):
    """A tiny word-level fast tokenizer (BOS added) built locally; no hub."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, "[UNK]": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
    )
    if chat:
        tok.chat_template = (
            "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
        )
    return tok


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_fields_defaults_label_override_and_split(tmp_path):
    p = write_jsonl(
        tmp_path / "set.jsonl",
        [
            {"text": "the cat", "id": "a1", "label": "animals", "split": "train"},
            "",
            {"text": "a dog ran", "target": "dog", "split": "test"},
            {"text": "hi there", "target": [0, 2], "split": "test"},
        ],
    )
    prompts = read_prompt_set(p)
    assert [x.text for x in prompts] == ["the cat", "a dog ran", "hi there"]
    assert [x.id for x in prompts] == ["a1", "1", "2"]  # default id: row index in the file
    assert [x.label for x in prompts] == ["animals", None, None]
    assert [x.target for x in prompts] == [None, "dog", (0, 2)]
    assert {x.prompt_set for x in prompts} == {"set"}
    assert prompts[1].source == f"{p}:3"
    test = read_prompt_set(p, label="L", split="test", name="custom")
    assert [x.text for x in test] == ["a dog ran", "hi there"]
    assert [x.id for x in test] == ["1", "2"]  # ids stay the file's, not the filtered index
    assert {x.label for x in test} == {"L"} and {x.prompt_set for x in test} == {"custom"}


def test_csv_with_span_target_and_messages(tmp_path):
    p = tmp_path / "set.csv"
    p.write_text(
        "id,text,label,target,messages\n"
        "q1,the cat sat,pets,4:7,\n"
        'q2,,,,"[{""role"": ""user"", ""content"": ""hello""}]"\n'
    )
    prompts = read_prompt_set(p)
    assert prompts[0].text == "the cat sat" and prompts[0].target == (4, 7)
    assert prompts[0].label == "pets" and prompts[0].id == "q1"
    assert prompts[1].text is None
    assert prompts[1].messages == [{"role": "user", "content": "hello"}]


def test_parquet_text_and_messages(tmp_path):
    p = tmp_path / "set.parquet"
    pq.write_table(
        pa.table({"text": ["the cat", "a dog"], "label": ["x", None], "target": ["cat", None]}), p
    )
    prompts = read_prompt_set(p)
    assert [(x.text, x.label, x.target, x.id) for x in prompts] == [
        ("the cat", "x", "cat", "0"),
        ("a dog", None, None, "1"),
    ]
    chat = tmp_path / "chat.parquet"
    msgs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    pq.write_table(pa.table({"messages": msgs, "target": ["hello"]}), chat)
    (cp,) = read_prompt_set(chat)
    assert cp.messages == msgs[0] and cp.target == "hello"


def test_txt_one_prompt_per_line(tmp_path):
    p = tmp_path / "lines.txt"
    p.write_text("the cat\n\n  \na dog ran\n")
    prompts = read_prompt_set(p)
    assert [(x.text, x.id, x.source) for x in prompts] == [
        ("the cat", "0", f"{p}:1"),
        ("a dog ran", "1", f"{p}:4"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("missing.jsonl", None, r"missing\.jsonl: file not found"),
        ("bad.jsonl", '{"text": "ok"}\n{"text": oops}\n', r"bad\.jsonl:2: not valid JSON"),
        ("notobj.jsonl", '["a"]\n', r"notobj\.jsonl:1: each JSONL line must be an object"),
        ("notext.jsonl", '{"text": "ok"}\n\n{"prompt": "x"}\n', r"notext\.jsonl:3: no `text`"),
        ("nottext.jsonl", '{"text": 5}\n', r"nottext\.jsonl:1: `text` must be a string"),
        ("empty.jsonl", "\n\n", r"empty\.jsonl: no prompts; the prompt set is empty"),
        ("empty.txt", "", r"empty\.txt: no prompts"),
        ("blank.jsonl", '{"text": "  "}\n', r"blank\.jsonl:1: empty prompt text"),
        ("nocol.csv", "prompt,label\nx,y\n", r"nocol\.csv:1: no `text` column"),
        ("badmsg.jsonl", '{"messages": "hi"}\n', r"badmsg\.jsonl:1: `messages` must be a list"),
        ("badtgt.jsonl", '{"text": "abc", "target": [3, 1]}\n', r"badtgt\.jsonl:1: `target`"),
        ("set.xlsx", "x", r"set\.xlsx: unknown prompt file type"),
    ],
)
def test_bad_inputs_are_one_line_naming_file_and_line(tmp_path, name, content, pattern):
    p = tmp_path / name
    if content is not None:
        p.write_text(content)
    with pytest.raises(PromptFileError, match=pattern) as info:
        read_prompt_set(p)
    assert "\n" not in str(info.value)


def test_parquet_without_text_and_split_without_column(tmp_path):
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"prompt": ["a"]}), p)
    with pytest.raises(PromptFileError, match=r"x\.parquet: no `text` column"):
        read_prompt_set(p)
    j = write_jsonl(tmp_path / "s.jsonl", [{"text": "a", "split": "train"}])
    with pytest.raises(PromptFileError, match="no prompts with split 'test'"):
        read_prompt_set(j, split="test")
    t = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}])
    with pytest.raises(PromptFileError, match="no `split` column"):
        read_prompt_set(t, split="test")


def reference_mask(text: str, start: int, end: int, tok) -> list[bool]:
    """Plain reference: [BOS] then whitespace/punctuation words; a word is in the target when its
    character range overlaps [start, end)."""
    import re

    flags = [False]  # BOS
    for m in re.finditer(r"\w+|[^\w\s]+", text):
        flags.append(m.start() < end and m.end() > start)
    return flags


def test_target_substring_and_span_give_the_same_mask(tmp_path):
    tok = make_tokenizer()
    text = "the cat sat on the mat"
    p = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"text": text, "target": "on the mat"},
            {"text": text, "target": [12, 22]},
            {"text": text, "target": "at o"},  # partial words: sat and on overlap
            {"text": text},
        ],
    )
    sub, span, partial, none = tokenize_prompts(read_prompt_set(p), tok)
    start = text.find("on the mat")
    assert sub.in_target.tolist() == reference_mask(text, start, start + 10, tok)
    assert sub.in_target.tolist() == [False, False, False, False, True, True, True]
    assert span.in_target.tolist() == sub.in_target.tolist()
    assert partial.in_target.tolist() == reference_mask(text, 9, 13, tok)
    assert partial.in_target.tolist() == [False, False, False, True, True, False, False]
    assert not none.in_target.any() and len(none.in_target) == len(none.input_ids) == 7
    assert sub.input_ids == tok(text)["input_ids"]


def test_truncation_and_target_errors(tmp_path):
    tok = make_tokenizer()
    p = write_jsonl(tmp_path / "t.jsonl", [{"text": "the cat sat on the mat", "target": "mat"}])
    (tp,) = tokenize_prompts(read_prompt_set(p), tok, max_length=3)
    assert tp.input_ids == tok("the cat sat on the mat")["input_ids"][:3]
    assert tp.in_target.tolist() == [False, False, False]
    q = write_jsonl(tmp_path / "q.jsonl", [{"text": "the cat", "target": "dog"}])
    with pytest.raises(PromptFileError, match=r"q\.jsonl:1: target 'dog' does not occur"):
        tokenize_prompts(read_prompt_set(q), tok)
    r = write_jsonl(tmp_path / "r.jsonl", [{"text": "the cat", "target": [2, 50]}])
    with pytest.raises(PromptFileError, match=r"r\.jsonl:1: target span 2:50 runs past"):
        tokenize_prompts(read_prompt_set(r), tok)


def test_chat_rendered_with_template_and_target_in_answer(tmp_path):
    tok = make_tokenizer()
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    p = write_jsonl(tmp_path / "c.jsonl", [{"messages": msgs, "target": "hello there"}])
    (tp,) = tokenize_prompts(read_prompt_set(p), tok)
    assert tp.text == "<user> hi <assistant> hello there "
    toks = tok.convert_ids_to_tokens(tp.input_ids)
    assert toks == ["<", "user", ">", "hi", "<", "assistant", ">", "hello", "there"]
    assert [t for t, m in zip(toks, tp.in_target, strict=True) if m] == ["hello", "there"]
    no_chat = make_tokenizer(chat=False)
    with pytest.raises(PromptFileError, match="needs a tokenizer with a chat template"):
        tokenize_prompts(read_prompt_set(p), no_chat)


def test_every_format_gives_the_same_prompts(tmp_path):
    rows = [{"text": "the cat", "label": "a"}, {"text": "a dog", "label": "b"}]
    write_jsonl(tmp_path / "s.jsonl", rows)
    (tmp_path / "s.csv").write_text("text,label\nthe cat,a\na dog,b\n")
    pq.write_table(
        pa.table({"text": ["the cat", "a dog"], "label": ["a", "b"]}), tmp_path / "s.parquet"
    )
    got = {
        ext: [(x.text, x.label, x.id) for x in read_prompt_set(tmp_path / f"s.{ext}")]
        for ext in ("jsonl", "csv", "parquet")
    }
    assert (
        got["jsonl"] == got["csv"] == got["parquet"] == [("the cat", "a", "0"), ("a dog", "b", "1")]
    )
    tok = make_tokenizer()
    ids = [tp.input_ids for tp in tokenize_prompts(read_prompt_set(tmp_path / "s.csv"), tok)]
    assert ids == [[1, 4, 5], [1, 9, 10]]  # [BOS]=1, the=4, cat=5, a=9, dog=10
