"""Steering specs: which experts to switch off, force on or scale, and how (DESIGN.md §4.5).

A spec is plain data (JSON or TOML) so it can live in a file, a preset row or a URL:

    mode = "reroute"            # or "drop": top-k as usual, then the expert's weight is zeroed
    renormalize = false         # drop mode only: rescale the remaining weights to their old sum
    [[edits]]
    layer = 3
    expert = 17
    action = "deactivate"       # or "activate", or "scale" with factor = 0.5

No torch here: specs are validated against a model's shape (`ModelShape`), not a model.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from routescope.core.errors import InvalidParameterError
from routescope.core.shape import ModelShape

ACTIONS = ("deactivate", "activate", "scale")
MODES = ("reroute", "drop")


class SteeringSpecError(InvalidParameterError):
    """A steering spec is malformed or does not fit the model."""


@dataclass(frozen=True)
class Edit:
    """One edit: (layer, expert, action); `factor` only for action='scale'."""

    layer: int
    expert: int
    action: str
    factor: float = 1.0

    def describe(self) -> str:
        extra = f" x{self.factor:g}" if self.action == "scale" else ""
        return f"layer {self.layer}, expert {self.expert}, {self.action}{extra}"


@dataclass(frozen=True)
class SteeringSpec:
    """A validated-shape list of edits plus the deactivation mode."""

    edits: tuple[Edit, ...] = ()
    mode: str = "reroute"
    renormalize: bool = False
    name: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.edits

    def layers(self) -> list[int]:
        return sorted({e.layer for e in self.edits})

    def for_layer(self, layer: int) -> list[Edit]:
        return [e for e in self.edits if e.layer == layer]

    def experts(self, layer: int, action: str) -> list[int]:
        return sorted({e.expert for e in self.edits if e.layer == layer and e.action == action})

    def to_dict(self) -> dict:
        d: dict = {"mode": self.mode, "renormalize": self.renormalize}
        if self.name:
            d["name"] = self.name
        if self.meta:
            d["meta"] = self.meta
        edits = []
        for e in self.edits:
            row = asdict(e)
            if e.action != "scale":
                row.pop("factor")
            edits.append(row)
        d["edits"] = edits
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict, source: str = "spec") -> SteeringSpec:
        """Parse plain data; every malformed edit is reported by its index and content."""
        if not isinstance(data, dict):
            raise SteeringSpecError(
                f"{source}: a steering spec must be a table/object with 'edits'"
            )
        unknown = set(data) - {"edits", "mode", "renormalize", "name", "meta", "model_id"}
        if unknown:
            raise SteeringSpecError(
                f"{source}: unknown key(s) {sorted(unknown)}; "
                "allowed: edits, mode, renormalize, name, meta"
            )
        mode = data.get("mode", "reroute")
        if mode not in MODES:
            raise SteeringSpecError(f"{source}: mode {mode!r} is not one of {', '.join(MODES)}")
        raw = data.get("edits", [])
        if not isinstance(raw, list):
            raise SteeringSpecError(f"{source}: 'edits' must be a list of tables/objects")
        edits = [_parse_edit(i, r, source) for i, r in enumerate(raw)]
        meta = data.get("meta", {}) or {}
        return cls(
            edits=tuple(edits),
            mode=mode,
            renormalize=bool(data.get("renormalize", False)),
            name=data.get("name"),
            meta=dict(meta),
        )

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> SteeringSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SteeringSpecError(
                f"{source}: not valid JSON ({exc.msg}, line {exc.lineno})"
            ) from None
        return cls.from_dict(data, source)

    @classmethod
    def from_file(cls, path: str | Path) -> SteeringSpec:
        """Read a .toml or .json spec file."""
        p = Path(path)
        if not p.is_file():
            raise SteeringSpecError(f"steering spec file {p} not found; pass a .toml or .json file")
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".toml":
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise SteeringSpecError(f"{p}: not valid TOML ({exc})") from None
            return cls.from_dict(data, str(p))
        return cls.from_json(text, str(p))

    @classmethod
    def from_edits(
        cls,
        edits: Iterable[tuple[int, int, str] | tuple[int, int, str, float] | Edit],
        mode: str = "reroute",
        renormalize: bool = False,
    ) -> SteeringSpec:
        rows = [e if isinstance(e, Edit) else Edit(int(e[0]), int(e[1]), *e[2:]) for e in edits]
        return cls.from_dict(
            {"edits": [asdict(r) for r in rows], "mode": mode, "renormalize": renormalize}
        )

    def validate(self, shape: ModelShape) -> SteeringSpec:
        """Check the spec fits the model; raise one line naming the first bad edit."""
        layers = set(shape.moe_layers)
        seen: dict[tuple[int, int], str] = {}
        for i, e in enumerate(self.edits):
            where = f"edit {i} ({e.describe()})"
            if e.layer not in layers:
                raise SteeringSpecError(
                    f"{where}: layer {e.layer} is not an MoE layer; MoE layers are "
                    f"{_ranges(sorted(layers))}"
                )
            if not 0 <= e.expert < shape.num_experts:
                raise SteeringSpecError(
                    f"{where}: expert {e.expert} is out of range 0..{shape.num_experts - 1}"
                )
            prev = seen.get((e.layer, e.expert))
            if prev is not None and prev != e.action:
                raise SteeringSpecError(
                    f"{where}: expert {e.expert} of layer {e.layer} already has action {prev!r}; "
                    "an expert takes one action"
                )
            seen[(e.layer, e.expert)] = e.action
        for layer in sorted({e.layer for e in self.edits}):
            off = self.experts(layer, "deactivate")
            on = self.experts(layer, "activate")
            if len(off) > shape.num_experts - shape.top_k:
                raise SteeringSpecError(
                    f"layer {layer}: {len(off)} experts deactivated but at most E-k = "
                    f"{shape.num_experts - shape.top_k} can be (k = {shape.top_k} must remain)"
                )
            if len(on) > shape.top_k:
                raise SteeringSpecError(
                    f"layer {layer}: {len(on)} experts forced on but only top-k = {shape.top_k} "
                    "slots exist"
                )
        return self


def _parse_edit(i: int, raw: object, source: str) -> Edit:
    if not isinstance(raw, dict):
        raise SteeringSpecError(f"{source}: edit {i} must be a table/object, got {raw!r}")
    missing = [k for k in ("layer", "expert", "action") if k not in raw]
    if missing:
        raise SteeringSpecError(f"{source}: edit {i} {raw} lacks {', '.join(missing)}")
    action = raw["action"]
    if action not in ACTIONS:
        raise SteeringSpecError(
            f"{source}: edit {i} {raw}: action {action!r} is not one of {', '.join(ACTIONS)}"
        )
    try:
        layer, expert = int(raw["layer"]), int(raw["expert"])
    except (TypeError, ValueError):
        raise SteeringSpecError(
            f"{source}: edit {i} {raw}: layer and expert must be integers"
        ) from None
    if isinstance(raw["layer"], bool) or isinstance(raw["expert"], bool):
        raise SteeringSpecError(f"{source}: edit {i} {raw}: layer and expert must be integers")
    factor = raw.get("factor", 1.0)
    if action == "scale":
        if "factor" not in raw:
            raise SteeringSpecError(f"{source}: edit {i} {raw}: action 'scale' needs a factor")
        try:
            factor = float(factor)
        except (TypeError, ValueError):
            raise SteeringSpecError(f"{source}: edit {i} {raw}: factor must be a number") from None
        if not math.isfinite(factor) or factor < 0:
            raise SteeringSpecError(f"{source}: edit {i} {raw}: factor must be finite and >= 0")
    return Edit(layer=layer, expert=expert, action=action, factor=float(factor))


def _ranges(values: Sequence[int]) -> str:
    """[0,1,2,5] -> '0-2, 5' for short messages."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive values
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs) or "none"
