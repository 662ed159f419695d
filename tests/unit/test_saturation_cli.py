"""`routescope analyze saturation`: per-layer overlap of two runs' top-k sets, against a hand count."""

import json

import numpy as np
from test_store import LAYERS, E, K, batch_of, make_seq, new_run
from typer.testing import CliRunner

from routescope.cli._app import app
from routescope.store.store import RoutingStore


def test_saturation_between_twin_runs(tmp_path):
    rng = np.random.default_rng(11)
    seqs = [make_seq(rng, 6, 0) for _ in range(3)]
    twins = []
    for s in seqs:  # same tokens, routing changed at random
        t = dict(s)
        t["experts"] = np.stack(
            [np.stack([rng.permutation(E)[:K] for _ in LAYERS]) for _ in s["token_ids"]]
        ).astype(np.int16)
        twins.append(t)
    db = str(tmp_path / "s.duckdb")
    meta = [{"seq_id": i, "label": "x"} for i in range(3)]
    with RoutingStore(db) as store:
        new_run(store, "base")
        new_run(store, "steered")
        store.write_batch("base", meta, batch_of(seqs))
        store.write_batch("steered", meta, batch_of(twins))
    res = CliRunner().invoke(
        app, ["analyze", "saturation", "base", "steered", "--db", db, "--json"]
    )
    assert res.exit_code == 0, res.output
    rows = {r["layer"]: r for r in json.loads(res.output)["rows"]}
    for col, layer in enumerate(LAYERS):
        overlap = sum(
            len(set(a[t, col]) & set(b[t, col]))
            for s, w in zip(seqs, twins, strict=True)
            for a, b in [(s["experts"], w["experts"])]
            for t in range(len(s["token_ids"]))
        )
        n = sum(len(s["token_ids"]) for s in seqs)
        assert abs(rows[layer]["saturation"] - overlap / (K * n)) < 1e-12
        assert rows[layer]["chance"] == K / E
    same = CliRunner().invoke(app, ["analyze", "saturation", "base", "base", "--db", db, "--json"])
    assert all(r["saturation"] == 1.0 for r in json.loads(same.output)["rows"])
