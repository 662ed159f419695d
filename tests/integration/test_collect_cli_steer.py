"""`routescope collect --steer` from the command line: a saved tiny model, a spec file and a preset."""

import duckdb
import numpy as np
from test_collect_job import PROSE, build_tiny_olmoe, make_tokenizer

from routescope.cli import main


def _cli(monkeypatch, *args: str) -> int:
    monkeypatch.setattr("sys.argv", ["routescope", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _experts_at(db: str, run_id: str, layer: int) -> np.ndarray:
    con = duckdb.connect(db, read_only=True)
    rows = con.execute(
        "select unnest(experts) from routes where run_id = ? and layer = ?", [run_id, layer]
    ).fetchall()
    con.close()
    return np.array([r[0] for r in rows])


def test_collect_steer_spec_file_and_preset(tmp_path, monkeypatch):
    model_dir = tmp_path / "tiny"
    build_tiny_olmoe(seed=5).save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROSE) + "\n")
    db = str(tmp_path / "s.duckdb")
    common = ["collect", "--model", str(model_dir), "--prompts", str(prompts), "--db", db, "-q"]
    assert _cli(monkeypatch, *common, "--name", "base") == 0
    base = _experts_at(db, "base", 1)
    busiest = int(np.bincount(base).argmax())
    spec = tmp_path / "off.toml"
    spec.write_text(f'[[edits]]\nlayer = 1\nexpert = {busiest}\naction = "deactivate"\n')

    assert _cli(monkeypatch, *common, "--name", "by-file", "--steer", str(spec)) == 0
    steered = _experts_at(db, "by-file", 1)
    assert len(steered) == len(base) and busiest not in steered

    assert _cli(monkeypatch, "presets", "create", "off", "--spec", str(spec), "--db", db) == 0
    assert _cli(monkeypatch, *common, "--name", "by-preset", "--steer", "off") == 0
    np.testing.assert_array_equal(_experts_at(db, "by-preset", 1), steered)
    con = duckdb.connect(db, read_only=True)
    sid = con.execute("select steering_id from runs where run_id = 'by-preset'").fetchone()[0]
    pid = con.execute("select preset_id from steering_presets where name = 'off'").fetchone()[0]
    con.close()
    assert sid == pid

    # an unknown preset is one clear line, nothing written
    assert _cli(monkeypatch, *common, "--name", "bad", "--steer", "no-such-preset") == 2
    con = duckdb.connect(db, read_only=True)
    assert con.execute("select count(*) from runs where run_id = 'bad'").fetchone()[0] == 0
    con.close()
