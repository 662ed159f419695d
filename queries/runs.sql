-- Runs summary: one row per run with its model, routing shape, steering and how much it recorded.
-- Answers: which runs does this store hold, how big are they, which are steered, which saved probs?
-- Params:
--   model_id  only runs of this model (default: all runs)
-- Columns: run_id, name, model_id, family, num_experts, top_k, moe_layers, steering_id, status,
--   created_at, sequences, prefill_tokens, decode_tokens, route_rows, prob_rows (newest run first)
WITH seqs AS (
    SELECT run_id, count(*) AS sequences FROM sequences GROUP BY run_id
), toks AS (
    SELECT run_id,
           count(*) FILTER (WHERE phase = 'prefill') AS prefill_tokens,
           count(*) FILTER (WHERE phase = 'decode') AS decode_tokens
    FROM tokens GROUP BY run_id
), rts AS (
    SELECT run_id, count(*) AS route_rows FROM routes GROUP BY run_id
), prb AS (
    SELECT run_id, count(*) AS prob_rows FROM router_probs GROUP BY run_id
)
SELECT r.run_id, r.name, r.model_id, r.family, r.num_experts, r.top_k, r.moe_layers,
       r.steering_id, r.status, r.created_at,
       coalesce(s.sequences, 0) AS sequences,
       coalesce(t.prefill_tokens, 0) AS prefill_tokens,
       coalesce(t.decode_tokens, 0) AS decode_tokens,
       coalesce(q.route_rows, 0) AS route_rows,
       coalesce(p.prob_rows, 0) AS prob_rows
FROM runs r
LEFT JOIN seqs s USING (run_id)
LEFT JOIN toks t USING (run_id)
LEFT JOIN rts q USING (run_id)
LEFT JOIN prb p USING (run_id)
WHERE getvariable('model_id') IS NULL OR r.model_id = CAST(getvariable('model_id') AS VARCHAR)
ORDER BY r.created_at DESC, r.run_id;
