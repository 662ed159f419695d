"""Collection job specs: TOML files in collectors/ (format in collectors/README.md) or CLI flags.

A job is fully described by `JobSpec`; its `run_id` is deterministic (the name, or the model plus a
hash of everything that changes the recorded routing), so re-running the same command resumes.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from routescope.core.errors import RoutescopeError
from routescope.models.dtypes import DTYPES

DEMO_MODEL = "demo"


class JobSpecError(RoutescopeError):
    """A job file or job option is invalid."""


@dataclass(frozen=True)
class PromptSetSpec:
    """One prompt file of a job; label overrides every prompt's label, split filters rows."""

    path: str
    label: str | None = None
    split: str | None = None
    name: str | None = None

    @property
    def set_name(self) -> str:
        return self.name or Path(self.path).stem


@dataclass(frozen=True)
class JobSpec:
    """Everything a collection needs. Paths are as resolved (prompt paths absolute or CWD-relative)."""

    prompt_sets: tuple[PromptSetSpec, ...]
    model: str = DEMO_MODEL
    revision: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    trust_remote_code: bool = False
    batch_size: int = 8
    max_length: int = 512
    max_new_tokens: int = 0
    save_probs: bool = False
    #: speculative-gate recording: distances d = 1..speculative (0: off) and ranking width m
    #: (None: min(2k, E)); see `routescope.collect.engine`
    speculative: int = 0
    speculative_width: int | None = None
    steering: str | None = None
    db: str = "routescope.duckdb"
    name: str | None = None
    source: str | None = field(default=None, compare=False)  # the TOML file, for messages

    def __post_init__(self) -> None:
        where = f"{self.source}: " if self.source else ""
        if not self.prompt_sets:
            raise JobSpecError(f"{where}no prompt sets; add a [[prompts]] table or --prompts FILE")
        for key in ("batch_size", "max_length"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise JobSpecError(f"{where}{key} must be a positive integer, got {value!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 0:
            raise JobSpecError(
                f"{where}max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}"
            )
        spec, width = self.speculative, self.speculative_width
        if isinstance(spec, bool) or not isinstance(spec, int) or spec < 0:
            raise JobSpecError(f"{where}speculative must be an integer >= 0, got {spec!r}")
        if width is not None:
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise JobSpecError(
                    f"{where}speculative_width must be a positive integer, got {width!r}"
                )
            if spec == 0:
                raise JobSpecError(
                    f"{where}speculative_width needs speculative = D >= 1 (the distances to record)"
                )
        if self.dtype not in DTYPES:
            raise JobSpecError(f"{where}dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.name is not None and not slug(self.name):
            raise JobSpecError(f"{where}name {self.name!r} has no letters or digits")

    def with_overrides(self, **overrides: Any) -> JobSpec:
        """A copy with the given fields replaced (None values are ignored: 'not given')."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {f.name for f in fields(self)}
        if unknown:
            raise JobSpecError(f"unknown job option(s) {sorted(unknown)}")
        return replace(self, **given)

    def identity(self) -> dict[str, Any]:
        """What determines the recorded routing (not batch size, device or db): the run's config.

        Prompt files enter by set name, label, split and a hash of their bytes, so the same job
        run from another directory is the same run, and an edited prompt file is a new one.
        Speculative recording (D, m; m None = the default 2k) enters only when on, so a job
        without it keeps the run id it always had.
        """
        sets = []
        for ps in self.prompt_sets:
            sets.append(
                {
                    "name": ps.set_name,
                    "label": ps.label,
                    "split": ps.split,
                    "sha256": file_digest(ps.path),
                }
            )
        identity: dict[str, Any] = {
            "model": self.model,
            "revision": self.revision,
            "dtype": self.dtype,
            "trust_remote_code": self.trust_remote_code,
            "max_length": self.max_length,
            "max_new_tokens": self.max_new_tokens,
            "save_probs": self.save_probs,
            "steering": self.steering,
            "prompt_sets": sets,
        }
        if self.speculative:
            identity["speculative"] = self.speculative
            identity["speculative_width"] = self.speculative_width
        return identity

    @property
    def run_id(self) -> str:
        """Deterministic run id: slug(name) if named, else slug(model) + '-' + config hash."""
        if self.name:
            return slug(self.name)
        from routescope.core.canonical import canonical_json

        digest = hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()[:10]
        stem = slug(Path(self.model.rstrip("/")).name) or "model"
        return f"{stem}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for recording in the runs table)."""
        d = asdict(self)
        d["prompt_sets"] = [asdict(p) for p in self.prompt_sets]
        return d


def slug(text: str) -> str:
    """Lower-case id from letters, digits, '-', '_' and '.' (other runs of characters → '-')."""
    return re.sub(r"[^a-z0-9._]+", "-", text.lower()).strip("-.")


def file_digest(path: str | Path) -> str | None:
    """sha256 of a file's bytes (None if it does not exist: the reader reports that clearly)."""
    p = Path(path)
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_TOP_KEYS = {
    "name",
    "model",
    "revision",
    "dtype",
    "device",
    "trust_remote_code",
    "batch_size",
    "max_length",
    "max_new_tokens",
    "save_probs",
    "speculative",
    "speculative_width",
    "steering",
    "db",
    "prompts",
}
_PROMPT_KEYS = {"path", "label", "split", "name"}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "model": str,
    "revision": str,
    "dtype": str,
    "device": str,
    "trust_remote_code": bool,
    "batch_size": int,
    "max_length": int,
    "max_new_tokens": int,
    "save_probs": bool,
    "speculative": int,
    "speculative_width": int,
    "steering": str,
    "db": str,
}


def load_job(path: str | Path) -> JobSpec:
    """Parse a TOML job file. Prompt paths (and a steering file) are relative to the job file;
    `db` is relative to the current directory (where the user runs the command)."""
    p = Path(path)
    if not p.is_file():
        raise JobSpecError(f"{p}: job file not found")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise JobSpecError(f"{p}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise JobSpecError(f"{p}: unknown key(s) {unknown}; allowed are {sorted(_TOP_KEYS)}")
    for key, typ in _TYPES.items():
        if key in data and (
            not isinstance(data[key], typ) or (typ is int and isinstance(data[key], bool))
        ):
            raise JobSpecError(
                f"{p}: `{key}` must be a {typ.__name__}, got {data[key]!r}"  # type: ignore[union-attr]
            )
    raw_sets = data.pop("prompts", None)
    if not isinstance(raw_sets, list) or not raw_sets:
        raise JobSpecError(f'{p}: no [[prompts]] tables; add at least one with `path = "..."`')
    sets = []
    for i, entry in enumerate(raw_sets, start=1):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise JobSpecError(f"{p}: prompts entry {i} needs a `path`")
        bad = sorted(set(entry) - _PROMPT_KEYS)
        if bad:
            raise JobSpecError(
                f"{p}: prompts entry {i} has unknown key(s) {bad}; allowed are "
                f"{sorted(_PROMPT_KEYS)}"
            )
        sets.append(
            PromptSetSpec(
                path=str(_relative_to(p, entry["path"])),
                label=entry.get("label"),
                split=entry.get("split"),
                name=entry.get("name"),
            )
        )
    steering = data.get("steering")
    if steering is not None and (steering.endswith((".toml", ".json")) or "/" in steering):
        data["steering"] = str(_relative_to(p, steering))
    return JobSpec(prompt_sets=tuple(sets), source=str(p), **data)


def _relative_to(job_file: Path, path: str) -> Path:
    q = Path(path).expanduser()
    return q if q.is_absolute() else job_file.parent / q


def job_from_options(
    prompts: list[str],
    label: str | None = None,
    **options: Any,
) -> JobSpec:
    """A job from CLI flags: each --prompts file is a prompt set (label applies to all)."""
    sets = tuple(PromptSetSpec(path=str(f), label=label) for f in prompts)
    given = {k: v for k, v in options.items() if v is not None}
    return JobSpec(prompt_sets=sets, **given)
