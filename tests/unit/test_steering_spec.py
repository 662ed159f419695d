"""Steering spec parsing and validation: every bad edit is one line that names it."""

import json

import pytest

from routescope.steering.spec import Edit, ModelShape, SteeringSpec, SteeringSpecError

SHAPE = ModelShape(moe_layers=(1, 2, 3), num_experts=8, top_k=2)


def test_round_trip_json_and_toml(tmp_path):
    spec = SteeringSpec.from_edits([(1, 3, "deactivate"), (2, 0, "scale", 0.5), (3, 7, "activate")])
    again = SteeringSpec.from_json(spec.to_json())
    assert again.edits == spec.edits and again.mode == "reroute"
    toml = tmp_path / "s.toml"
    toml.write_text(
        'mode = "drop"\nrenormalize = true\n[[edits]]\nlayer = 1\nexpert = 3\naction = "deactivate"\n'
    )
    parsed = SteeringSpec.from_file(toml)
    assert parsed.mode == "drop" and parsed.renormalize
    assert parsed.edits == (Edit(1, 3, "deactivate"),)
    assert parsed.validate(SHAPE) is parsed


def test_empty_spec_is_empty():
    assert SteeringSpec.from_dict({"edits": []}).is_empty


@pytest.mark.parametrize(
    ("edits", "needle"),
    [
        ([{"layer": 0, "expert": 1, "action": "deactivate"}], "layer 0 is not an MoE layer"),
        ([{"layer": 1, "expert": 8, "action": "deactivate"}], "expert 8 is out of range 0..7"),
        (
            [
                {"layer": 1, "expert": 2, "action": "deactivate"},
                {"layer": 1, "expert": 2, "action": "activate"},
            ],
            "already has action 'deactivate'",
        ),
        ([{"layer": 1, "expert": e, "action": "deactivate"} for e in range(7)], "at most E-k = 6"),
        ([{"layer": 2, "expert": e, "action": "activate"} for e in range(3)], "only top-k = 2"),
    ],
)
def test_validation_names_the_bad_edit(edits, needle):
    spec = SteeringSpec.from_dict({"edits": edits})
    with pytest.raises(SteeringSpecError) as err:
        spec.validate(SHAPE)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"edits": [{"layer": 1, "expert": 2}]}, "lacks action"),
        ({"edits": [{"layer": 1, "expert": 2, "action": "boost"}]}, "action 'boost'"),
        ({"edits": [{"layer": 1, "expert": 2, "action": "scale"}]}, "needs a factor"),
        (
            {"edits": [{"layer": 1, "expert": 2, "action": "scale", "factor": -1}]},
            "finite and >= 0",
        ),
        ({"edits": [], "mode": "mask"}, "mode 'mask'"),
        ({"edits": [{"layer": "x", "expert": 2, "action": "activate"}]}, "must be integers"),
        ({"edits": [], "colour": 1}, "unknown key"),
    ],
)
def test_malformed_specs(data, needle):
    with pytest.raises(SteeringSpecError) as err:
        SteeringSpec.from_dict(data, "f.json")
    assert needle in str(err.value) and str(err.value).startswith("f.json")


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(SteeringSpecError, match="not valid JSON"):
        SteeringSpec.from_json("{oops", "x.json")
    with pytest.raises(SteeringSpecError, match="not found"):
        SteeringSpec.from_file(tmp_path / "nope.json")
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"edits": [{"layer": 1, "expert": 1, "action": "activate"}]}))
    assert SteeringSpec.from_file(p).experts(1, "activate") == [1]
