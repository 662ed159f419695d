-- Expert load per layer: how many routed assignments each (layer, expert) received in one run.
-- Answers: is load balanced across experts at each MoE layer, and which experts are hot?
-- Params:
--   run_id  the run (default: the newest run)
--   phase   'prefill' or 'decode' tokens only (default: all tokens)
-- Columns: layer, expert, assignments, share (of the layer's assignments; uniform = 1/E),
--   token_share (of the layer's tokens that selected the expert; uniform = k/E),
--   load_ratio (share × E; 1 = uniform). Experts never selected appear with 0.
WITH params AS (
    SELECT coalesce(CAST(getvariable('run_id') AS VARCHAR),
                    (SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 1))
               AS run_id,
           CAST(getvariable('phase') AS VARCHAR) AS phase
), run AS (
    SELECT r.run_id, r.num_experts FROM runs r JOIN params USING (run_id)
), sel AS (
    SELECT rt.layer, rt.experts
    FROM routes rt
    JOIN run USING (run_id)
    JOIN tokens t ON t.run_id = rt.run_id AND t.seq_id = rt.seq_id AND t.pos = rt.pos
    WHERE (SELECT phase FROM params) IS NULL OR t.phase = (SELECT phase FROM params)
), per_layer AS (
    SELECT layer, count(*) AS tokens, sum(len(experts)) AS total FROM sel GROUP BY layer
), counts AS (
    SELECT layer, CAST(unnest(experts) AS INTEGER) AS expert FROM sel
), grid AS (
    SELECT l.layer, CAST(e.range AS INTEGER) AS expert
    FROM per_layer l, range((SELECT num_experts FROM run)) e
)
SELECT g.layer, g.expert,
       count(c.expert) AS assignments,
       count(c.expert) / any_value(l.total) AS share,
       count(c.expert) / any_value(l.tokens) AS token_share,
       count(c.expert) / any_value(l.total) * (SELECT num_experts FROM run) AS load_ratio
FROM grid g
JOIN per_layer l USING (layer)
LEFT JOIN counts c ON c.layer = g.layer AND c.expert = g.expert
GROUP BY g.layer, g.expert
ORDER BY g.layer, g.expert;
