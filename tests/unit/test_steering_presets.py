"""Steering presets in the store: create, list, show, update, delete, and one-line errors."""

from __future__ import annotations

import pytest

from routescope.core.errors import RoutescopeError
from routescope.steering.presets import (
    PresetError,
    create_preset,
    delete_preset,
    get_preset,
    list_presets,
    resolve_spec,
    update_preset,
)
from routescope.steering.spec import ModelShape, SteeringSpec, SteeringSpecError
from routescope.store import RoutingStore

SHAPE = ModelShape(moe_layers=(0, 1, 2), num_experts=8, top_k=2)
SPEC = SteeringSpec.from_edits([(0, 3, "deactivate"), (2, 1, "scale", 0.5)], mode="drop")


@pytest.fixture()
def con():
    store = RoutingStore(":memory:")
    yield store.con
    store.close()


def test_create_show_list_round_trip(con) -> None:
    p = create_preset(con, "no-three", SPEC, model_id="m", shape=SHAPE)
    assert p.name == "no-three" and p.model_id == "m" and p.spec == SPEC
    again = get_preset(con, "no-three")
    assert again == p and get_preset(con, p.preset_id) == p
    create_preset(con, "a-first", SteeringSpec.from_edits([(1, 0, "activate")]))
    listed = list_presets(con)
    assert listed["name"].to_list() == ["a-first", "no-three"]
    assert listed["edits"].to_list() == [1, 2]
    assert listed["layers"].to_list() == ["1", "0,2"]
    # stored as JSON that plain SQL can read
    n = con.execute(
        "SELECT json_array_length(spec -> '$.edits') FROM steering_presets WHERE name = 'no-three'"
    ).fetchall()
    assert n == [(2,)]


def test_duplicate_unknown_and_invalid_are_one_line(con) -> None:
    create_preset(con, "x", SPEC)
    with pytest.raises(PresetError, match="already exists") as err:
        create_preset(con, "x", SPEC)
    assert "\n" not in str(err.value)
    with pytest.raises(PresetError, match=r"no steering preset named 'y' \(presets: x\)"):
        get_preset(con, "y")
    bad = SteeringSpec.from_edits([(5, 0, "deactivate")])
    with pytest.raises(SteeringSpecError, match="layer 5 is not an MoE layer"):
        create_preset(con, "bad", bad, shape=SHAPE)
    assert list_presets(con)["name"].to_list() == ["x"]  # nothing written on failure
    with pytest.raises(PresetError, match="looks like a file path"):
        create_preset(con, "specs/a.toml", SPEC)
    assert issubclass(PresetError, RoutescopeError)


def test_update_and_delete(con) -> None:
    p = create_preset(con, "p", SPEC, model_id="m1")
    new = SteeringSpec.from_edits([(1, 4, "deactivate")])
    u = update_preset(con, "p", spec=new, shape=SHAPE)
    assert u.preset_id == p.preset_id and u.spec == new and u.model_id == "m1"
    assert u.updated_at >= p.updated_at
    r = update_preset(con, "p", new_name="q", model_id="m2")
    assert r.name == "q" and r.model_id == "m2" and r.spec == new
    create_preset(con, "other", SPEC)
    with pytest.raises(PresetError, match="already exists"):
        update_preset(con, "q", new_name="other")
    with pytest.raises(SteeringSpecError, match="expert 9 is out of range"):
        update_preset(con, "q", spec=SteeringSpec.from_edits([(0, 9, "activate")]), shape=SHAPE)
    gone = delete_preset(con, "q")
    assert gone.name == "q"
    assert list_presets(con)["name"].to_list() == ["other"]
    with pytest.raises(PresetError, match="no steering preset named 'q'"):
        delete_preset(con, "q")


def test_resolve_spec_from_file_or_preset(con, tmp_path) -> None:
    f = tmp_path / "s.json"
    f.write_text(SPEC.to_json())
    spec, pid = resolve_spec(str(f), con)
    assert spec == SPEC and pid is None
    p = create_preset(con, "named", SPEC)
    spec, pid = resolve_spec("named", con)
    assert spec == SPEC and pid == p.preset_id
    with pytest.raises(SteeringSpecError, match="not found"):
        resolve_spec(str(tmp_path / "missing.toml"), con)
    with pytest.raises(PresetError, match="no database"):
        resolve_spec("named", None)


def test_presets_and_specs_do_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, routescope.steering as s, routescope.steering.presets; "
        "s.SteeringSpec; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
