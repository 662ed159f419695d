"""Prompt sets: read JSONL / CSV / Parquet / plain-text files into `Prompt`s and tokenize them.

Columns: `text` (or `messages`, a chat rendered with the tokenizer's chat template), optional `id`,
`label`, `target`, `split`.

`target` marks the tokens a localization should use (recorded per token as `in_target`). It is
either a **string that occurs in the text** (its first occurrence is the span; in a chat, it is
searched in the rendered text) or a **character span** `[start, end)` given as a two-element list
(JSONL/Parquet) or "start:end" (CSV). A token is in the target when its character range overlaps the
span (found with the tokenizer's offset mapping; special tokens are never in the target).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from routescope.core.errors import PromptFileError

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".txt": "txt"}


@dataclass
class Prompt:
    """One prompt of a set. Exactly one of `text` / `messages` is set until rendered."""

    text: str | None
    prompt_set: str
    id: str
    label: str | None = None
    target: str | tuple[int, int] | None = None
    messages: list[dict[str, Any]] | None = None
    source: str = ""  # "file:line" for error messages


@dataclass
class TokenizedPrompt:
    """A prompt ready for the engine: token ids (truncated) and the per-token target mask."""

    prompt: Prompt
    text: str
    input_ids: list[int]
    in_target: np.ndarray = field(repr=False)


def _err(path: Path, line: int | None, what: str) -> PromptFileError:
    where = f"{path}:{line}" if line is not None else str(path)
    return PromptFileError(f"{where}: {what}")


def _parse_target(value: Any, path: Path, line: int) -> str | tuple[int, int] | None:
    """A target substring, or a [start, end) char span from a list or 'start:end'."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    if isinstance(value, str):
        head, sep, tail = value.partition(":")
        if sep and head.strip().isdigit() and tail.strip().isdigit():
            value = [int(head), int(tail)]
        else:
            return value
    if isinstance(value, list | tuple | np.ndarray) and len(value) == 2:
        start, end = (int(x) for x in value)
        if 0 <= start < end:
            return (start, end)
    raise _err(
        path, line, f"`target` must be a substring of the text or [start, end), got {value!r}"
    )


def _row_to_prompt(
    row: dict[str, Any], path: Path, line: int, set_name: str, index: int
) -> Prompt | None:
    text = row.get("text")
    messages = row.get("messages")
    if text is None and messages is None:
        raise _err(path, line, "no `text` (or `messages`) field; each prompt needs one")
    if messages is not None:
        if isinstance(messages, np.ndarray):
            messages = messages.tolist()
        ok = isinstance(messages, list) and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        )
        if not ok or not messages:
            raise _err(path, line, "`messages` must be a list of {role, content} objects")
        text = None
    elif not isinstance(text, str):
        raise _err(path, line, f"`text` must be a string, got {type(text).__name__}")
    pid = row.get("id")
    label = row.get("label")
    return Prompt(
        text=text,
        messages=messages,
        prompt_set=set_name,
        id=str(pid) if pid is not None and pid == pid else str(index),
        label=None if label is None or label != label else str(label),
        target=_parse_target(row.get("target"), path, line),
        source=f"{path}:{line}",
    )


def _read_rows(path: Path, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row dict) for each record; line numbers are 1-based file lines (CSV: the
    header is line 1; Parquet: the row number)."""
    if fmt == "jsonl":
        rows = []
        with path.open(encoding="utf-8") as fh:
            for i, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise _err(
                        path, i, f"not valid JSON ({exc.msg}); fix or remove the line"
                    ) from None
                if not isinstance(obj, dict):
                    raise _err(path, i, "each JSONL line must be an object with a `text` field")
                rows.append((i, obj))
        return rows
    if fmt == "csv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if "text" not in fields and "messages" not in fields:
                raise _err(path, 1, f"no `text` column (columns are {fields})")
            rows = []
            for row in reader:
                row = {k: (None if v == "" else v) for k, v in row.items() if k is not None}
                if isinstance(row.get("messages"), str):
                    try:
                        row["messages"] = json.loads(row["messages"])
                    except json.JSONDecodeError:
                        raise _err(path, reader.line_num, "`messages` is not valid JSON") from None
                rows.append((reader.line_num, row))
            return rows
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise _err(path, None, f"cannot read as Parquet ({exc})".splitlines()[0]) from None
        if "text" not in table.column_names and "messages" not in table.column_names:
            raise _err(path, None, f"no `text` column (columns are {table.column_names})")
        return [(i, r) for i, r in enumerate(table.to_pylist(), start=1)]
    # txt: one prompt per non-empty line
    with path.open(encoding="utf-8") as fh:
        return [(i, {"text": s.rstrip("\n")}) for i, s in enumerate(fh, start=1) if s.strip()]


def read_prompt_set(
    path: str | Path,
    label: str | None = None,
    split: str | None = None,
    name: str | None = None,
) -> list[Prompt]:
    """Read one prompt file. label overrides every prompt's label; split keeps rows whose
    `split` column equals it; name is the prompt_set name recorded (default: the file stem)."""
    p = Path(path)
    if not p.is_file():
        raise _err(
            p,
            None,
            "file not found; check the path (relative paths in a job file are "
            "relative to the job file)",
        )
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise _err(
            p, None, f"unknown prompt file type {p.suffix!r}; use .jsonl, .csv, .parquet or .txt"
        )
    set_name = name or p.stem
    prompts: list[Prompt] = []
    try:
        rows = _read_rows(p, fmt)
    except UnicodeDecodeError:
        raise _err(p, None, "not UTF-8 text; re-save it as UTF-8") from None
    has_split = any("split" in r for _, r in rows)
    if split is not None and not has_split:
        raise _err(p, None, f"split {split!r} asked for but the file has no `split` column")
    for index, (line, row) in enumerate(rows):
        if split is not None and row.get("split") != split:
            continue
        prompt = _row_to_prompt(row, p, line, set_name, index)
        if prompt is None:
            continue
        if label is not None:
            prompt.label = label
        if prompt.text is not None and not prompt.text.strip():
            raise _err(p, line, "empty prompt text")
        prompts.append(prompt)
    if not prompts:
        extra = f" with split {split!r}" if split is not None else ""
        raise _err(p, None, f"no prompts{extra}; the prompt set is empty")
    return prompts


def render_prompt(prompt: Prompt, tokenizer: Any) -> str:
    """The prompt's text; a chat is rendered with the tokenizer's chat template."""
    if prompt.messages is None:
        return prompt.text or ""
    if not getattr(tokenizer, "chat_template", None):
        raise PromptFileError(
            f"{prompt.source}: a `messages` prompt needs a tokenizer with a chat template; this "
            "model's tokenizer has none, so give plain `text` instead"
        )
    return str(tokenizer.apply_chat_template(prompt.messages, tokenize=False))


def _target_span(prompt: Prompt, text: str) -> tuple[int, int] | None:
    if prompt.target is None:
        return None
    if isinstance(prompt.target, tuple):
        start, end = prompt.target
        if end > len(text):
            raise PromptFileError(
                f"{prompt.source}: target span {start}:{end} runs past the text "
                f"({len(text)} characters)"
            )
        return start, end
    start = text.find(prompt.target)
    if start < 0:
        raise PromptFileError(
            f"{prompt.source}: target {prompt.target[:40]!r} does not occur in the prompt text"
        )
    return start, start + len(prompt.target)


def tokenize_prompts(
    prompts: Sequence[Prompt], tokenizer: Any, max_length: int | None = None
) -> list[TokenizedPrompt]:
    """Render and tokenize prompts (special tokens added as the tokenizer does), truncating to
    max_length tokens, with each token's in_target flag from the offset mapping."""
    out: list[TokenizedPrompt] = []
    for prompt in prompts:
        text = render_prompt(prompt, tokenizer)
        span = _target_span(prompt, text)
        # A rendered chat template already holds its special tokens.
        add_special = prompt.messages is None
        kwargs: dict[str, Any] = {"add_special_tokens": add_special}
        if max_length is not None:
            kwargs.update(truncation=True, max_length=int(max_length))
        if span is not None:
            if not getattr(tokenizer, "is_fast", False):
                raise PromptFileError(
                    f"{prompt.source}: `target` needs a fast tokenizer (offset mapping); this "
                    "model's tokenizer is a slow one"
                )
            enc = tokenizer(text, return_offsets_mapping=True, **kwargs)
            offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
            nonempty = offsets[:, 1] > offsets[:, 0]
            mask = nonempty & (offsets[:, 0] < span[1]) & (offsets[:, 1] > span[0])
        else:
            enc = tokenizer(text, **kwargs)
            mask = np.zeros(len(enc["input_ids"]), dtype=bool)
        ids = [int(x) for x in enc["input_ids"]]
        if not ids:
            raise PromptFileError(f"{prompt.source}: the prompt tokenizes to no tokens")
        out.append(TokenizedPrompt(prompt=prompt, text=text, input_ids=ids, in_target=mask))
    return out
