"""Job specs: TOML parsing, path resolution, validation errors, deterministic run ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from routescope.collect.jobs import JobSpec, JobSpecError, PromptSetSpec, job_from_options, load_job

FULL = """
name = "My Demo Run"
model = "org/tiny-moe"
revision = "abc123"
dtype = "bfloat16"
device = "cpu"
trust_remote_code = false
batch_size = 4
max_length = 128
max_new_tokens = 8
save_probs = true
steering = "presets/no_code.toml"
db = "out/routes.duckdb"

[[prompts]]
path = "sets/code.jsonl"
label = "code"
split = "test"

[[prompts]]
path = "/abs/prose.csv"
name = "prose-set"
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_full_job_parses_with_paths_relative_to_the_job_file(tmp_path):
    job = load_job(write(tmp_path / "collectors" / "job.toml", FULL))
    assert job.model == "org/tiny-moe" and job.revision == "abc123"
    assert (job.dtype, job.device, job.trust_remote_code) == ("bfloat16", "cpu", False)
    assert (job.batch_size, job.max_length, job.max_new_tokens) == (4, 128, 8)
    assert job.save_probs is True and job.db == "out/routes.duckdb"  # db: relative to the CWD
    assert job.steering == str(tmp_path / "collectors" / "presets" / "no_code.toml")
    assert job.prompt_sets == (
        PromptSetSpec(str(tmp_path / "collectors" / "sets" / "code.jsonl"), "code", "test"),
        PromptSetSpec("/abs/prose.csv", None, None, "prose-set"),
    )
    assert [p.set_name for p in job.prompt_sets] == ["code", "prose-set"]
    assert job.run_id == "my-demo-run"


def test_defaults_and_string_prompt_entries(tmp_path):
    job = load_job(write(tmp_path / "j.toml", 'prompts = ["a.txt", "b.jsonl"]\n'))
    assert job.model == "demo" and job.dtype == "float32" and job.device == "cpu"
    assert (job.batch_size, job.max_length, job.max_new_tokens) == (8, 512, 0)
    assert job.trust_remote_code is False and job.save_probs is False and job.steering is None
    assert job.db == "routescope.duckdb" and job.name is None
    assert [p.path for p in job.prompt_sets] == [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('model = "x"\n', r"no \[\[prompts\]\] tables"),
        ('modle = "x"\nprompts = ["a.txt"]\n', r"unknown key\(s\) \['modle'\]"),
        ('batch_size = "8"\nprompts = ["a.txt"]\n', r"`batch_size` must be a int"),
        ('batch_size = 0\nprompts = ["a.txt"]\n', "batch_size must be a positive integer"),
        ('save_probs = 1\nprompts = ["a.txt"]\n', "`save_probs` must be a bool"),
        ('dtype = "fp8"\nprompts = ["a.txt"]\n', "dtype 'fp8' is not one of"),
        ('max_new_tokens = -1\nprompts = ["a.txt"]\n', "max_new_tokens must be an integer >= 0"),
        ('[[prompts]]\nlabel = "x"\n', "prompts entry 1 needs a `path`"),
        ('[[prompts]]\npath = "a"\nlabels = "x"\n', r"unknown key\(s\) \['labels'\]"),
        ("model = \n", "not valid TOML"),
    ],
)
def test_bad_job_files_are_one_line(tmp_path, text, pattern):
    p = write(tmp_path / "bad.toml", text)
    with pytest.raises(JobSpecError, match=pattern) as info:
        load_job(p)
    assert str(p) in str(info.value) and "\n" not in str(info.value)


def test_missing_job_file(tmp_path):
    with pytest.raises(JobSpecError, match="job file not found"):
        load_job(tmp_path / "nope.toml")


def test_run_id_is_deterministic_and_tracks_what_changes_routing(tmp_path, monkeypatch):
    data = write(tmp_path / "sets" / "p.jsonl", '{"text": "hello"}\n')
    job = job_from_options([str(data)], model="org/Tiny-MoE", max_length=64)
    rid = job.run_id
    assert rid.startswith("tiny-moe-") and len(rid) == len("tiny-moe-") + 10
    # same job from another working directory (absolute vs relative path): same run
    monkeypatch.chdir(tmp_path / "sets")
    assert job_from_options(["p.jsonl"], model="org/Tiny-MoE", max_length=64).run_id == rid
    # batch size, device and db do not change the routing: same run, so a resume can change them
    assert job.with_overrides(batch_size=1, device="cuda", db="x.duckdb").run_id == rid
    # these do: a new run
    changed = [
        job.with_overrides(max_length=65),
        job.with_overrides(max_new_tokens=2),
        job.with_overrides(dtype="bfloat16"),
        job.with_overrides(model="org/other"),
        job_from_options([str(data)], label="x", model="org/Tiny-MoE", max_length=64),
    ]
    ids = {j.run_id for j in changed}
    assert rid not in ids and len(ids) == len(changed)
    data.write_text('{"text": "hello, edited"}\n')  # edited prompt file → new run
    assert job.run_id != rid


def test_with_overrides_ignores_none_and_rejects_unknown(tmp_path):
    job = JobSpec(prompt_sets=(PromptSetSpec("a.txt"),), batch_size=4)
    assert job.with_overrides(batch_size=None, name="x").batch_size == 4
    assert job.with_overrides(name="x").name == "x"
    with pytest.raises(JobSpecError, match="unknown job option"):
        job.with_overrides(bogus=1)
    with pytest.raises(JobSpecError, match="no prompt sets"):
        JobSpec(prompt_sets=())


def test_shipped_job_specs_parse():
    root = Path(__file__).resolve().parents[2] / "collectors"
    specs = sorted(root.glob("*.toml"))
    assert specs, "collectors/ should ship at least one job spec"
    for spec in specs:
        job = load_job(spec)
        assert job.prompt_sets and job.batch_size >= 1
