"""Build the demo model's prompt sets in ``collectors/demo/``.

- ``<domain>.jsonl`` (one per domain): excerpts of 32-128 tokens cut from the held-out corpus
  chunks (never trained on), with ``id``, ``label`` = domain and ``split`` (train | heldout: a
  fixed 3:1 split of the prompts, so a localization can be fitted on one part and checked on the
  other).
- ``behaviour_<name>.jsonl``: fTRI-style ("Mixture of Tunable Experts") behaviour sets. Each target
  prompt elicits a switch (English prose into Python code, German, Russian, or a number table);
  its matched control uses the same template with no switch. ``label`` is target/control,
  ``target`` the substring whose tokens show the behaviour (in the control: the same slot),
  ``pair`` links a target to its control.

``python -m routescope.models.demo.prompts`` rewrites all files deterministically.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from routescope.models.demo import DEMO_DOMAINS, DEMO_MODEL_PATH, DEMO_PROMPTS_DIR
from routescope.models.demo.corpus import build_corpus, catalogs, load_corpus, read_mo
from routescope.models.demo.train import WORK_DIR

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MIN_TOKENS, MAX_TOKENS = 32, 128
MAX_PROMPTS_PER_DOMAIN = 300
SEED = 7


def _ntok(tok: PreTrainedTokenizerBase, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _truncate(tok: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` that ends on a token boundary within ``max_tokens``."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= max_tokens:
        return text
    return text[: offsets[max_tokens - 1][1]]


def excerpts(tok: PreTrainedTokenizerBase, chunk: str, rng: random.Random) -> list[str]:
    """Cut a chunk into excerpts of MIN..MAX tokens at line boundaries (long lines truncated)."""
    out: list[str] = []
    buf: list[str] = []
    goal = rng.randint(48, MAX_TOKENS)
    for line in chunk.splitlines():
        candidate = "\n".join([*buf, line])
        n = _ntok(tok, candidate)
        if n <= goal:
            buf.append(line)
            continue
        if buf and _ntok(tok, "\n".join(buf)) >= MIN_TOKENS:
            out.append("\n".join(buf))
            buf = [line]
        else:
            out.append(_truncate(tok, candidate, goal))
            buf = []
        goal = rng.randint(48, MAX_TOKENS)
    if buf:
        text = "\n".join(buf)
        if _ntok(tok, text) >= MIN_TOKENS:
            out.append(_truncate(tok, text, MAX_TOKENS))
    return [e for e in out if e.strip() and MIN_TOKENS <= _ntok(tok, e) <= MAX_TOKENS]


def domain_prompts(
    tok: PreTrainedTokenizerBase, corpus: dict[str, list[dict[str, str]]]
) -> dict[str, list[dict]]:
    """Held-out excerpts per domain."""
    result: dict[str, list[dict]] = {}
    for domain in DEMO_DOMAINS:
        rng = random.Random(f"{SEED}-{domain}")
        rows: list[dict] = []
        for chunk in corpus[domain]:
            if chunk["split"] != "heldout":
                continue
            for text in excerpts(tok, chunk["text"], rng):
                i = len(rows)
                rows.append(
                    {
                        "id": f"{domain}-{i:04d}",
                        "text": text,
                        "label": domain,
                        "split": "heldout" if i % 4 == 3 else "train",
                        "source": chunk["source"],
                    }
                )
                if len(rows) >= MAX_PROMPTS_PER_DOMAIN:
                    break
            if len(rows) >= MAX_PROMPTS_PER_DOMAIN:
                break
        result[domain] = rows
    return result


def _plain(s: str) -> bool:
    """A message usable inside a template: one line, no format directives or markup."""
    return (
        20 <= len(s) <= 110
        and "\n" not in s
        and not any(c in s for c in "%{}<>\\\t_&$")
        and not s.startswith(("-", "'", '"'))
    )


def translation_pairs(lang: str) -> list[tuple[str, str]]:
    """(English, translation) message pairs from the language's installed catalogs."""
    pairs: dict[str, str] = {}
    for f in catalogs(lang):
        for msgid, msgstr in read_mo(f):
            a, b = msgid.strip(), msgstr.strip()
            if _plain(a) and _plain(b) and a != b and a not in pairs:
                pairs[a] = b
    return sorted(pairs.items(), key=lambda p: zlib.crc32(p[0].encode()))


def python_snippets(corpus: dict[str, list[dict[str, str]]], n: int) -> list[str]:
    """Short code snippets (3-6 non-empty, non-comment lines) from held-out Python chunks."""
    out: list[str] = []
    for chunk in corpus["python"]:
        if chunk["split"] != "heldout":
            continue
        lines = [
            ln
            for ln in chunk["text"].splitlines()
            if ln.strip() and not ln.lstrip().startswith(("#", '"', "'"))
        ]
        for i in range(0, len(lines) - 6, 12):
            block = lines[i : i + 5]
            indent = min(len(ln) - len(ln.lstrip()) for ln in block)
            out.append("\n".join(ln[indent:] for ln in block))
            if len(out) >= n:
                return out
    return out


def number_tables(rng: random.Random, n: int) -> list[str]:
    """Small generated CSV tables."""
    out = []
    for _ in range(n):
        ncol = rng.randint(3, 5)
        rows = [",".join(str(rng.randint(0, 99999)) for _ in range(ncol)) for _ in range(4)]
        out.append("\n".join(rows))
    return out


LANG_TEMPLATES = (
    ("The message {en!r} is shown in {lang} as: ", "The message {en!r} is shown in English as: "),
    ("Translation of {en!r} into {lang}: ", "Restatement of {en!r} in plain English: "),
    ("Original: {en}\n{lang}: ", "Original: {en}\nEnglish: "),
)
CODE_TEMPLATES = (
    ("{en} Here is the code:\n", "{en} Here is the explanation:\n"),
    ("Task: {en}\nSolution in Python:\n", "Task: {en}\nSolution in words:\n"),
    (
        "The following snippet relates to this note: {en}\n",
        "The following text relates to this note: {en}\n",
    ),
)
TABLE_TEMPLATES = (
    ("{en} The values are listed below.\n", "{en} The details are described below.\n"),
    ("Report: {en}\nData:\n", "Report: {en}\nSummary:\n"),
)


def _pair_rows(
    name: str, k: int, target_text: str, target: str, control_text: str, control: str
) -> list[dict]:
    split = "heldout" if k % 4 == 3 else "train"
    rows = []
    for label, text, span in (("target", target_text, target), ("control", control_text, control)):
        assert text.find(span) == text.rfind(span), "target span must occur once"
        rows.append(
            {
                "id": f"{name}-{k:03d}-{label}",
                "text": text,
                "label": label,
                "target": span,
                "pair": f"{name}-{k:03d}",
                "behaviour": name,
                "split": split,
            }
        )
    return rows


def behaviour_prompts(corpus: dict[str, list[dict[str, str]]], n: int = 120) -> dict[str, list]:
    """Target/control pairs for four switches: into German, Russian, Python code, numbers."""
    rng = random.Random(SEED)
    english = [en for en, _ in translation_pairs("de")]
    result: dict[str, list[dict]] = {}
    for name, lang, code in (("to_german", "German", "de"), ("to_russian", "Russian", "ru")):
        pairs = translation_pairs(code)
        rows: list[dict] = []
        for k in range(min(n, len(pairs) // 2)):
            en, tr = pairs[2 * k]
            en_other = pairs[2 * k + 1][0]
            t_tpl, c_tpl = LANG_TEMPLATES[k % len(LANG_TEMPLATES)]
            prefix_t = t_tpl.format(en=en, lang=lang)
            prefix_c = c_tpl.format(en=en)
            if tr in prefix_t or en_other in prefix_c:
                continue
            rows += _pair_rows(name, k, prefix_t + tr, tr, prefix_c + en_other, en_other)
        result[name] = rows
    snippets = python_snippets(corpus, n)
    rows = []
    for k, code in enumerate(snippets):
        en, expl = english[3 * k], english[3 * k + 1]
        t_tpl, c_tpl = CODE_TEMPLATES[k % len(CODE_TEMPLATES)]
        rows += _pair_rows(
            "to_python", k, t_tpl.format(en=en) + code, code, c_tpl.format(en=en) + expl, expl
        )
    result["to_python"] = rows
    rows = []
    for k, table in enumerate(number_tables(rng, n)):
        en, prose = english[3 * k + 2], english[3 * k + 3]
        t_tpl, c_tpl = TABLE_TEMPLATES[k % len(TABLE_TEMPLATES)]
        rows += _pair_rows(
            "to_numbers", k, t_tpl.format(en=en) + table, table, c_tpl.format(en=en) + prose, prose
        )
    result["to_numbers"] = rows
    return result


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, UTF-8, non-ASCII kept readable."""
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Rebuild every prompt file from the held-out corpus and the shipped tokenizer."""
    import argparse

    from transformers import AutoTokenizer

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokenizer", type=Path, default=DEMO_MODEL_PATH)
    args = p.parse_args(argv)

    corpus_dir = WORK_DIR / "corpus"
    if not (corpus_dir / "numbers.jsonl").exists():
        build_corpus(corpus_dir)
    corpus = load_corpus(corpus_dir)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    DEMO_PROMPTS_DIR.mkdir(parents=True, exist_ok=True)
    for domain, rows in domain_prompts(tok, corpus).items():
        write_jsonl(DEMO_PROMPTS_DIR / f"{domain}.jsonl", rows)
        print(domain, len(rows))
    for name, rows in behaviour_prompts(corpus).items():
        write_jsonl(DEMO_PROMPTS_DIR / f"behaviour_{name}.jsonl", rows)
        print(name, len(rows))


if __name__ == "__main__":
    main()
