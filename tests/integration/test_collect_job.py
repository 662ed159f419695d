"""A real collection job on a tiny random OLMoE (no hub): interrupt, resume, compare databases."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
from tiny_models import BOS, EOS, PAD, VOCAB, WORDS, build_tiny_olmoe, make_tokenizer  # noqa: F401

from routescope.collect.engine import collect_batch
from routescope.collect.jobs import job_from_options
from routescope.collect.runner import CollectionInterrupted, run_job
from routescope.models import LoadedModel
from routescope.steering.presets import job_steering
from routescope.store.store import RoutingStore


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return LoadedModel.from_model(
        build_tiny_olmoe(seed=3), tokenizer=make_tokenizer(), model_id="tiny/olmoe"
    )


PROSE = [
    "the cat sat on the mat",
    "a big dog ran under the red rug",
    "one two three four five",
    "the small blue cat",
    "der cat ist ein dog und die mat",
    "green",
]
CODE = [
    "def f ( x ) : return x + 1",
    "if x = 0 : print ( y ) else : print ( z )",
    "for x in y : print ( x * 2 )",
    "return 3",
    "x = y - z",
]


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory) -> list[str]:
    root: Path = tmp_path_factory.mktemp("prompts")
    prose = root / "prose.txt"
    prose.write_text("\n".join(PROSE) + "\n")
    code = root / "code.jsonl"
    targets = {0: "return x", 1: "print"}
    code.write_text(
        "\n".join(
            json.dumps({"text": t, "label": "code", "target": targets.get(i)})
            for i, t in enumerate(CODE)
        )
        + "\n"
    )
    return [str(prose), str(code)]


def dump(path: str) -> dict[str, list]:
    con = duckdb.connect(path, read_only=True)
    tables = {
        "runs": "SELECT * EXCLUDE (created_at) FROM runs ORDER BY run_id",
        "sequences": "SELECT * FROM sequences ORDER BY run_id, seq_id",
        "tokens": "SELECT * FROM tokens ORDER BY run_id, seq_id, pos",
        "routes": "SELECT * FROM routes ORDER BY run_id, seq_id, pos, layer",
        "router_probs": "SELECT * FROM router_probs ORDER BY run_id, seq_id, pos, layer",
    }
    out = {name: con.execute(q).fetchall() for name, q in tables.items()}
    con.close()
    return out


def test_interrupted_job_resumed_equals_uninterrupted(tmp_path, lm, prompt_files):
    opts = dict(batch_size=3, max_new_tokens=2, save_probs=True, model="tiny/olmoe")
    clean_db = str(tmp_path / "clean.duckdb")
    clean = run_job(
        job_from_options(prompt_files, db=clean_db, **opts),
        quiet=True,
        lm=lm,
        collect_fn=collect_batch,
    )
    assert clean.sequences_written == len(PROSE) + len(CODE) and clean.status == "complete"

    db = str(tmp_path / "resumed.duckdb")
    job = job_from_options(prompt_files, db=db, **opts)
    calls = []

    def interrupt_after_two(i: int) -> None:
        calls.append(i)
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(CollectionInterrupted, match="re-run the same command"):
        run_job(job, quiet=True, lm=lm, collect_fn=collect_batch, after_batch=interrupt_after_two)
    with RoutingStore(db, read_only=True) as store:
        assert store.run_info(job.run_id)["status"] == "interrupted"
        assert len(store.stored_seq_ids(job.run_id)) == 6  # two whole batches of 3
    resumed = run_job(job, quiet=True, lm=lm, collect_fn=collect_batch)
    assert resumed.sequences_skipped == 6 and resumed.sequences_written == 5

    got, want = dump(db), dump(clean_db)
    for table in want:
        assert len(got[table]) == len(want[table]), table
        assert got[table] == want[table], table
    con = duckdb.connect(db, read_only=True)
    # no duplicates and no missing rows: every token has exactly one route row per MoE layer
    n_tokens = con.execute("SELECT count(*) FROM tokens").fetchall()[0][0]
    n_routes = con.execute("SELECT count(DISTINCT (seq_id, pos, layer)) FROM routes").fetchall()
    assert n_routes[0][0] == n_tokens * len(lm.moe_layers)
    assert con.execute("SELECT count(*) FROM routes").fetchall()[0][0] == n_routes[0][0]
    n_decode = con.execute("SELECT count(*) FROM tokens WHERE phase = 'decode'").fetchall()[0][0]
    assert 0 < n_decode <= 2 * len(PROSE + CODE)
    # the target spans: 'return x' in code prompt 0 (words 6-7), the first 'print' in prompt 1
    marked = con.execute(
        "SELECT s.prompt_id, t.pos, t.token FROM tokens t JOIN sequences s USING (run_id, seq_id)"
        " WHERE t.in_target ORDER BY ALL"
    ).fetchall()
    con.close()
    words0, words1 = CODE[0].split(), CODE[1].split()
    want_marked = [
        ("0", 1 + words0.index("return"), "return"),
        ("0", 2 + words0.index("return"), "x"),
        ("1", 1 + words1.index("print"), "print"),  # +1: BOS is position 0
    ]
    assert marked == want_marked

    with RoutingStore(db, read_only=True) as store:
        tr = store.load_trace(job.run_id)
    assert tr.layers == tuple(lm.moe_layers) and tr.num_experts == 8 and tr.top_k == 2
    assert tr.labels.tolist() == [None] * len(PROSE) + ["code"] * len(CODE)
    # each token's experts are distinct and in range
    assert (tr.experts >= 0).all() and (tr.experts < 8).all()
    assert (tr.experts[:, :, 0] != tr.experts[:, :, 1]).all()


def test_steered_job_records_the_edit(tmp_path, lm, prompt_files):
    """A job with `steering` = a spec file deactivating an expert never records that expert
    at that layer; other layers' first-token routing is unchanged up to the edited layer."""
    db = str(tmp_path / "steer.duckdb")
    base = run_job(
        job_from_options(prompt_files, db=db, batch_size=4, model="tiny/olmoe"),
        quiet=True,
        lm=lm,
        collect_fn=collect_batch,
    )
    with RoutingStore(db, read_only=True) as store:
        tr = store.load_trace(base.run_id)
    layer = lm.moe_layers[1]
    col = tr.layer_position(layer)
    counts = np.bincount(tr.experts[:, col, :].ravel(), minlength=8)
    busiest = int(counts.argmax())
    assert counts[busiest] > 0
    spec = tmp_path / "off.toml"
    spec.write_text(f'[[edits]]\nlayer = {layer}\nexpert = {busiest}\naction = "deactivate"\n')
    job = job_from_options(
        prompt_files, db=db, batch_size=4, model="tiny/olmoe", steering=str(spec)
    )
    steered = run_job(job, quiet=True, lm=lm, collect_fn=collect_batch, steering=job_steering(job))
    assert steered.run_id != base.run_id
    with RoutingStore(db, read_only=True) as store:
        st = store.load_trace(steered.run_id)
        info = store.run_info(steered.run_id)
    assert info["steering_id"] == str(spec)
    assert info["config"]["steering_spec"]["edits"][0]["expert"] == busiest
    assert not (st.experts[:, col, :] == busiest).any()
    # layers before the edited one route exactly as without steering
    first = tr.layer_position(lm.moe_layers[0])
    np.testing.assert_array_equal(st.experts[:, first, :], tr.experts[:, first, :])
