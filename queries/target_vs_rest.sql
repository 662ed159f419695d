-- Target-span risk difference: which experts fire more on the prompts' target tokens than elsewhere.
-- Answers: a first, SQL-only look at functional localization (DESIGN §4.4's RD = p1 − p2), with
--   target tokens (tokens.in_target) as the target set and all other tokens as the control set.
--   No resampling or FDR here: use `routescope localize` for confidence intervals.
-- Params:
--   run_id  the run (default: the newest run)
--   top_n   rows kept, highest risk difference first across all layers (default: 20)
-- Columns: layer, expert, n_target, n_control (token counts of each set at that layer),
--   p_target, p_control (shares of each set whose top-k contains the expert), risk_difference
WITH params AS (
    SELECT coalesce(CAST(getvariable('run_id') AS VARCHAR),
                    (SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 1))
               AS run_id,
           coalesce(CAST(getvariable('top_n') AS INTEGER), 20) AS top_n
), run AS (
    SELECT r.num_experts FROM runs r JOIN params USING (run_id)
), sel AS (
    SELECT rt.layer, coalesce(t.in_target, false) AS tgt, rt.experts
    FROM routes rt
    JOIN params p ON rt.run_id = p.run_id
    JOIN tokens t ON t.run_id = rt.run_id AND t.seq_id = rt.seq_id AND t.pos = rt.pos
), sizes AS (
    SELECT layer, count(*) FILTER (WHERE tgt) AS n_target, count(*) FILTER (WHERE NOT tgt)
           AS n_control
    FROM sel GROUP BY layer
), hits AS (
    SELECT layer, CAST(unnest(experts) AS INTEGER) AS expert, tgt FROM sel
), counts AS (
    SELECT g.layer, CAST(g.range AS INTEGER) AS expert,
           count(h.expert) FILTER (WHERE h.tgt) AS a_target,
           count(h.expert) FILTER (WHERE NOT h.tgt) AS a_control
    FROM (SELECT layer, range FROM sizes, range((SELECT num_experts FROM run))) g
    LEFT JOIN hits h ON h.layer = g.layer AND h.expert = g.range
    GROUP BY g.layer, g.range
)
SELECT c.layer, c.expert, s.n_target, s.n_control,
       c.a_target / nullif(s.n_target, 0) AS p_target,
       c.a_control / nullif(s.n_control, 0) AS p_control,
       c.a_target / nullif(s.n_target, 0) - c.a_control / nullif(s.n_control, 0)
           AS risk_difference
FROM counts c JOIN sizes s USING (layer)
ORDER BY risk_difference DESC NULLS LAST, c.layer, c.expert
LIMIT (SELECT top_n FROM params);
