"""The store's DuckDB schema (DESIGN.md §3). Table names and these columns are the contract.

Version 2 (this one) adds `runs.source`, `runs.has_weights` and `runs.layout`, renames the memo of
analysis results to `analysis_results`, and keeps each finished run's `routes` and `router_probs`
clustered by layer (`routescope.store.layout`), so reading one layer does not scan the run.
"""

SCHEMA_VERSION = 2

#: The meta key holding how many sequences a run's job has (merge decides completeness by it).
JOB_SIZE_PREFIX = "job_sequences:"


def job_size_key(run_id: str) -> str:
    """The meta key of the run's job size."""
    return JOB_SIZE_PREFIX + run_id


DDL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    name VARCHAR,
    model_id VARCHAR,
    model_revision VARCHAR,
    family VARCHAR,
    num_layers INTEGER,
    moe_layers INTEGER[],
    num_experts INTEGER,
    top_k INTEGER,
    num_shared_experts INTEGER,
    norm_topk_prob BOOLEAN,
    dtype VARCHAR,
    device VARCHAR,
    steering_id VARCHAR,
    config JSON,
    versions JSON,
    status VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp,
    source VARCHAR DEFAULT 'routescope',
    has_weights BOOLEAN DEFAULT true,
    layout VARCHAR
);
CREATE TABLE IF NOT EXISTS sequences (
    run_id VARCHAR,
    seq_id BIGINT,
    prompt_set VARCHAR,
    prompt_id VARCHAR,
    label VARCHAR,
    text VARCHAR,
    num_tokens INTEGER
);
CREATE TABLE IF NOT EXISTS tokens (
    run_id VARCHAR,
    seq_id BIGINT,
    pos INTEGER,
    token_id INTEGER,
    token VARCHAR,
    phase VARCHAR,
    in_target BOOLEAN
);
CREATE TABLE IF NOT EXISTS routes (
    run_id VARCHAR,
    seq_id BIGINT,
    pos INTEGER,
    layer SMALLINT,
    experts USMALLINT[],
    weights FLOAT[]
);
CREATE TABLE IF NOT EXISTS router_probs (
    run_id VARCHAR,
    seq_id BIGINT,
    pos INTEGER,
    layer SMALLINT,
    probs FLOAT[]
);
CREATE TABLE IF NOT EXISTS speculative_routes (
    run_id VARCHAR,
    seq_id BIGINT,
    pos INTEGER,
    layer SMALLINT,
    distance SMALLINT,
    experts SMALLINT[]
);
CREATE TABLE IF NOT EXISTS steering_presets (
    preset_id VARCHAR PRIMARY KEY,
    name VARCHAR UNIQUE,
    model_id VARCHAR,
    spec JSON,
    created_at TIMESTAMP DEFAULT current_timestamp,
    updated_at TIMESTAMP DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS expert_notes (
    model_id VARCHAR,
    layer INTEGER,
    expert INTEGER,
    label VARCHAR,
    note VARCHAR,
    updated_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (model_id, layer, expert)
);
CREATE TABLE IF NOT EXISTS analysis_results (
    run_id VARCHAR,
    kind VARCHAR,
    params_key VARCHAR,
    params JSON,
    result BLOB,
    created_at TIMESTAMP DEFAULT current_timestamp,
    PRIMARY KEY (run_id, kind, params_key)
);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE OR REPLACE VIEW route_choices AS
    SELECT run_id, seq_id, pos, layer,
           CAST(generate_subscripts(experts, 1) - 1 AS SMALLINT) AS rank,
           unnest(experts) AS expert,
           unnest(weights) AS weight
    FROM routes;
"""
