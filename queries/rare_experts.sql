-- Experts never or rarely used: (layer, expert) pairs whose load is far below the uniform level.
-- Answers: which experts are dead or nearly dead in this run (candidates for pruning/offloading)?
-- Params:
--   run_id     the run (default: the newest run)
--   max_ratio  keep experts whose load_ratio (assignments ÷ the uniform level, 1 = uniform) is at
--              most this (default: 0.1); 0 lists only the never-used experts
-- Columns: layer, expert, assignments, load_ratio, never_used (rarest first within each layer)
WITH params AS (
    SELECT coalesce(CAST(getvariable('run_id') AS VARCHAR),
                    (SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 1))
               AS run_id,
           coalesce(CAST(getvariable('max_ratio') AS DOUBLE), 0.1) AS max_ratio
), run AS (
    SELECT r.run_id, r.num_experts FROM runs r JOIN params USING (run_id)
), sel AS (
    SELECT rt.layer, rt.experts FROM routes rt JOIN run USING (run_id)
), per_layer AS (
    SELECT layer, sum(len(experts)) AS total FROM sel GROUP BY layer
), counts AS (
    SELECT layer, CAST(unnest(experts) AS INTEGER) AS expert FROM sel
), load AS (
    SELECT g.layer, CAST(g.range AS INTEGER) AS expert, count(c.expert) AS assignments,
           count(c.expert) * (SELECT num_experts FROM run) / any_value(l.total) AS load_ratio
    FROM (SELECT layer, range FROM per_layer, range((SELECT num_experts FROM run))) g
    JOIN per_layer l USING (layer)
    LEFT JOIN counts c ON c.layer = g.layer AND c.expert = g.range
    GROUP BY g.layer, g.range
)
SELECT layer, expert, assignments, load_ratio, assignments = 0 AS never_used
FROM load
WHERE load_ratio <= (SELECT max_ratio FROM params)
ORDER BY layer, assignments, expert;
