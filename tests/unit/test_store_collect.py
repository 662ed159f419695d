"""The collection runner with a fake engine: job order, targets, resume after Ctrl-C and OOM, CLI."""

from __future__ import annotations

import json
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from routescope.collect.jobs import job_from_options  # noqa: E402
from routescope.collect.runner import CollectionInterrupted, run_job  # noqa: E402
from routescope.core.records import BatchRouting  # noqa: E402
from routescope.store.store import RoutingStore  # noqa: E402

E, K, LAYERS, V = 6, 2, [0, 2], 40
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
    "hello",
    "there",
    "big",
    "small",
    "red",
    "blue",
    "green",
]


def make_tokenizer():
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
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]"
    )


@dataclass
class FakeLM:
    """Just what the runner reads from a LoadedModel."""

    tokenizer: Any
    model_id: str = "fake/moe"
    family: str = "olmoe"
    num_layers: int = 3
    moe_layers: tuple = tuple(LAYERS)
    num_experts: int = E
    top_k: int = K
    num_shared_experts: int = 0
    norm_topk_prob: bool = False


def fake_route(token: int, pos: int, layer: int) -> list[int]:
    return [(token * 5 + pos + layer * 3 + r) % E for r in range(K)]


class FakeEngine:
    """A deterministic engine: routing is a function of (token, position, layer); generation
    appends (last * 3 + 1) % V. Records the batches it saw; can fail on a chosen call."""

    def __init__(self, fail_on: int | None = None, exc: BaseException | None = None) -> None:
        self.calls: list[list[list[int]]] = []
        self.fail_on, self.exc = fail_on, exc

    def __call__(self, lm, input_ids, max_new_tokens=0, save_probs=False, steering=None):
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise self.exc  # type: ignore[misc]
        self.calls.append([list(x) for x in input_ids])
        toks, pos, phase, offs = [], [], [], [0]
        for ids in input_ids:
            seq = list(ids)
            for _ in range(max_new_tokens):
                seq.append((seq[-1] * 3 + 1) % V)
            toks += seq
            pos += list(range(len(seq)))
            phase += [0] * len(ids) + [1] * max_new_tokens
            offs.append(len(toks))
        experts = np.array(
            [[fake_route(t, p, layer) for layer in LAYERS] for t, p in zip(toks, pos, strict=True)],
            dtype=np.int16,
        ).reshape(len(toks), len(LAYERS), K)
        weights = np.broadcast_to(np.array([0.7, 0.3], dtype=np.float32), experts.shape).copy()
        probs = None
        if save_probs:
            probs = np.full((len(toks), len(LAYERS), E), 1.0 / E, dtype=np.float32)
        return BatchRouting(
            seq_offsets=np.array(offs, dtype=np.int64),
            token_ids=np.array(toks, dtype=np.int64),
            positions=np.array(pos, dtype=np.int32),
            phase=np.array(phase, dtype=np.uint8),
            experts=experts,
            weights=weights,
            probs=probs,
        )


@pytest.fixture(scope="module")
def lm() -> FakeLM:
    return FakeLM(tokenizer=make_tokenizer())


TEXTS_A = ["the cat sat on the mat", "a dog", "hello there big red dog", "small"]
TEXTS_B = ["blue green", "the dog ran far far", "red cat sat", "a", "mat on the cat"]


@pytest.fixture
def prompt_files(tmp_path: Path) -> list[str]:
    a = tmp_path / "animals.jsonl"
    a.write_text(
        "\n".join(
            json.dumps({"text": t, "id": f"a{i}", "target": "dog" if "dog" in t else None})
            for i, t in enumerate(TEXTS_A)
        )
    )
    b = tmp_path / "colors.txt"
    b.write_text("\n".join(TEXTS_B) + "\n")
    return [str(a), str(b)]


def dump(path: str) -> dict[str, list]:
    """Every table's rows (no timestamps), in a canonical order."""
    con = duckdb.connect(path, read_only=True)
    out = {
        "runs": con.execute("SELECT * EXCLUDE (created_at) FROM runs ORDER BY run_id").fetchall(),
        "sequences": con.execute("SELECT * FROM sequences ORDER BY run_id, seq_id").fetchall(),
        "tokens": con.execute("SELECT * FROM tokens ORDER BY run_id, seq_id, pos").fetchall(),
        "routes": con.execute(
            "SELECT * FROM routes ORDER BY run_id, seq_id, pos, layer"
        ).fetchall(),
        "router_probs": con.execute(
            "SELECT * FROM router_probs ORDER BY run_id, seq_id, pos, layer"
        ).fetchall(),
    }
    con.close()
    return out


def test_job_writes_sequences_in_job_order_with_targets(tmp_path, lm, prompt_files):
    db = str(tmp_path / "r.duckdb")
    job = job_from_options(prompt_files, db=db, batch_size=3, max_new_tokens=2, name="t")
    engine = FakeEngine()
    res = run_job(job, quiet=True, lm=lm, collect_fn=engine)
    texts = TEXTS_A + TEXTS_B
    assert res.sequences_written == len(texts) and res.status == "complete"
    # batches are longest first and never exceed batch_size
    lengths = [len(ids) for call in engine.calls for ids in call]
    assert lengths == sorted(lengths, reverse=True) and max(map(len, engine.calls)) == 3
    tok = lm.tokenizer
    with RoutingStore(db, read_only=True) as store:
        tr = store.load_trace("t")
        seqs = store.sequences("t")
        info = store.run_info("t")
        strings = store.token_strings("t")
    assert info["status"] == "complete" and info["moe_layers"] == LAYERS
    assert seqs["seq_id"].to_list() == list(range(len(texts)))
    assert seqs["text"].to_list() == texts
    assert seqs["prompt_set"].to_list() == ["animals"] * 4 + ["colors"] * 5
    assert seqs["prompt_id"].to_list() == [f"a{i}" for i in range(4)] + [str(i) for i in range(5)]
    # token rows: the prompt's ids then 2 generated ones, routing as the engine defines it
    for s, text in enumerate(texts):
        rows = slice(tr.seq_offsets[s], tr.seq_offsets[s + 1])
        ids = tok(text)["input_ids"]
        gen = [(ids[-1] * 3 + 1) % V]
        gen.append((gen[0] * 3 + 1) % V)
        assert tr.token_ids[rows].tolist() == ids + gen
        assert tr.phase[rows].tolist() == [0] * len(ids) + [1, 1]
        want = [[fake_route(t, p, layer) for layer in LAYERS] for p, t in enumerate(ids + gen)]
        assert tr.experts[rows].tolist() == want
        words = ["[BOS]", *text.split()]
        want_target = [w == "dog" and s < 4 for w in words] + [False, False]
        assert tr.in_target[rows].tolist() == want_target
    assert strings[1] == "[BOS]" and strings[tok.convert_tokens_to_ids("dog")] == "dog"


@pytest.mark.parametrize("flush_rows", [1, 10**9])  # write every engine batch / only at the end
def test_interrupted_job_resumes_to_the_same_database(tmp_path, lm, prompt_files, flush_rows):
    full_db = str(tmp_path / "full.duckdb")
    run_job(
        job_from_options(prompt_files, db=full_db, batch_size=2, save_probs=True),
        quiet=True,
        lm=lm,
        collect_fn=FakeEngine(),
    )
    db = str(tmp_path / "resumed.duckdb")
    job = job_from_options(prompt_files, db=db, batch_size=2, save_probs=True)

    def stop_after_two(i: int) -> None:
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(CollectionInterrupted, match="re-run the same command") as info:
        run_job(
            job,
            quiet=True,
            lm=lm,
            collect_fn=FakeEngine(),
            after_batch=stop_after_two,
            flush_rows=flush_rows,
        )
    assert "keeps 4 of 9 sequences" in str(info.value)
    with RoutingStore(db, read_only=True) as store:
        assert store.run_info(job.run_id)["status"] == "interrupted"
        assert len(store.stored_seq_ids(job.run_id)) == 4
    engine = FakeEngine()
    res = run_job(job, quiet=True, lm=lm, collect_fn=engine, flush_rows=flush_rows)
    assert res.sequences_skipped == 4 and res.sequences_written == 5
    assert sum(len(c) for c in engine.calls) == 5  # stored sequences were not recomputed
    got, want = dump(db), dump(full_db)
    for table in want:
        assert got[table] == want[table], table
    assert len(want["router_probs"]) == len(want["routes"]) > 0
    # a complete run re-run does nothing
    again = run_job(job, quiet=True, lm=lm, collect_fn=FakeEngine())
    assert again.sequences_written == 0 and dump(db) == want


def test_out_of_memory_suggests_half_the_batch_and_resumes(tmp_path, lm, prompt_files):
    db = str(tmp_path / "oom.duckdb")
    job = job_from_options(prompt_files, db=db, batch_size=4)
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(CollectionInterrupted, match="--batch-size 2 to resume") as info:
        run_job(job, quiet=True, lm=lm, collect_fn=FakeEngine(fail_on=1, exc=oom))
    assert "out of memory at batch size 4" in str(info.value)
    with RoutingStore(db, read_only=True) as store:
        assert store.run_info(job.run_id)["status"] == "interrupted"
    smaller = job.with_overrides(batch_size=2)
    assert smaller.run_id == job.run_id
    res = run_job(smaller, quiet=True, lm=lm, collect_fn=FakeEngine())
    assert res.sequences_skipped == 4 and res.status == "complete"
    ref_db = str(tmp_path / "ref.duckdb")
    run_job(job.with_overrides(db=ref_db), quiet=True, lm=lm, collect_fn=FakeEngine())
    assert dump(db) == dump(ref_db)


def test_other_errors_mark_the_run_failed(tmp_path, lm, prompt_files):
    db = str(tmp_path / "f.duckdb")
    job = job_from_options(prompt_files, db=db, batch_size=4)
    with pytest.raises(ValueError, match="boom"):
        run_job(job, quiet=True, lm=lm, collect_fn=FakeEngine(fail_on=0, exc=ValueError("boom")))
    with RoutingStore(db, read_only=True) as store:
        assert store.run_info(job.run_id)["status"] == "failed"


def test_cli_collect_runs_export(tmp_path, lm, prompt_files, monkeypatch, capsys):
    """`routescope collect/runs/export` end to end, with the model loader and engine faked."""
    import routescope.collect.runner as runner
    from routescope.cli import main

    monkeypatch.setattr(runner, "load_job_model", lambda job, **kw: lm)
    monkeypatch.setenv("COLUMNS", "200")  # rich sizes the runs table to the terminal
    fake_engine_module = types.ModuleType("routescope.collect.engine")
    fake_engine_module.collect_batch = FakeEngine()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "routescope.collect.engine", fake_engine_module)
    db = str(tmp_path / "cli.duckdb")
    job = tmp_path / "job.toml"
    job.write_text(
        f'name = "cli-run"\nmodel = "fake"\ndb = "{db}"\n'
        + "".join(f'[[prompts]]\npath = "{p}"\n' for p in prompt_files)
    )

    def cli(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["routescope", *args])
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0

    assert cli("collect", str(job), "--batch-size", "3", "--quiet") == 0
    assert cli("runs", "--db", db) == 0
    out = capsys.readouterr().out
    assert "cli-run" in out and "fake/moe" in out and "complete" in out
    pq_dir = tmp_path / "pq"
    assert cli("export", "cli-run", "--parquet", str(pq_dir), "--db", db, "--quiet") == 0
    assert sorted(p.name for p in (pq_dir / "routes" / "run_id=cli-run").iterdir()) == [
        "layer=0",
        "layer=2",
    ]
    capsys.readouterr()
    assert cli("export", "nope", "--parquet", str(pq_dir), "--db", db) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run 'nope'") and err.count("\n") == 1
    assert cli("collect", "--quiet") == 2
    assert "nothing to collect" in capsys.readouterr().err
    # Ctrl-C during a run: exit code 130, one line saying how to resume, status 'interrupted'
    fake_engine_module.collect_batch = FakeEngine(fail_on=1, exc=KeyboardInterrupt())
    assert cli("collect", str(job), "--name", "cli-int", "--batch-size", "2", "--quiet") == 130
    err = capsys.readouterr().err
    assert "keeps 2 of 9 sequences" in err and "re-run the same command" in err
    assert err.count("\n") == 1
    fake_engine_module.collect_batch = FakeEngine()
    assert cli("collect", str(job), "--name", "cli-int", "--batch-size", "2") == 0
    assert "7 sequences" in capsys.readouterr().err  # the 2 stored ones were skipped
    with RoutingStore(db, read_only=True) as store:
        assert store.run_info("cli-int")["status"] == "complete"
        assert store.stored_seq_ids("cli-int") == set(range(9))


def test_small_engine_batches_are_grouped_into_fewer_transactions(tmp_path, lm, prompt_files):
    db = str(tmp_path / "g.duckdb")
    job = job_from_options(prompt_files, db=db, batch_size=1)
    with RoutingStore(db) as store:
        writes = []
        original = store.write_batch

        def counting(run_id, meta, *args, **kwargs):
            writes.append([m["seq_id"] for m in meta])
            return original(run_id, meta, *args, **kwargs)

        store.write_batch = counting  # type: ignore[method-assign]
        # 9 prompts of 2..7 tokens x 2 layers: 30 route rows fill a group after a few prompts
        run_job(job, quiet=True, lm=lm, collect_fn=FakeEngine(), store=store, flush_rows=30)
        assert 1 < len(writes) < 9
        assert sorted(i for w in writes for i in w) == list(range(9))
        assert store.stored_seq_ids(job.run_id) == set(range(9))
