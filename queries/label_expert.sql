-- Label × expert shares per layer: for each label, the share of its tokens that selected each expert.
-- Answers: which experts specialize in a domain/label (OLMoE's domain specialization)?
-- Params:
--   run_id  the run (default: the newest run)
--   layer   only this MoE layer (default: all layers)
-- Columns: layer, label (sequences without a label appear as '(none)'), expert, tokens (of the
--   label), n (of those tokens whose top-k contains the expert), share = n ÷ tokens,
--   uniform (= k/E, the share under uniform routing), ratio = share ÷ uniform.
--   Every (layer, label, expert) appears, with 0 where the expert was never selected.
WITH params AS (
    SELECT coalesce(CAST(getvariable('run_id') AS VARCHAR),
                    (SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 1))
               AS run_id,
           CAST(getvariable('layer') AS INTEGER) AS layer
), run AS (
    SELECT r.run_id, r.num_experts, r.top_k FROM runs r JOIN params USING (run_id)
), sel AS (
    SELECT rt.layer, coalesce(s.label, '(none)') AS label, rt.experts
    FROM routes rt
    JOIN params p ON rt.run_id = p.run_id
    JOIN sequences s ON s.run_id = rt.run_id AND s.seq_id = rt.seq_id
    WHERE p.layer IS NULL OR rt.layer = p.layer
), tok AS (
    SELECT layer, label, count(*) AS tokens FROM sel GROUP BY layer, label
), hits AS (
    SELECT layer, label, CAST(unnest(experts) AS INTEGER) AS expert FROM sel
), grid AS (
    SELECT tok.layer, tok.label, tok.tokens, CAST(e.range AS INTEGER) AS expert
    FROM tok, range((SELECT num_experts FROM run)) e
)
SELECT g.layer, g.label, g.expert, g.tokens,
       count(h.expert) AS n,
       count(h.expert) / g.tokens AS share,
       (SELECT top_k FROM run) / (SELECT num_experts FROM run) AS uniform,
       count(h.expert) / g.tokens / ((SELECT top_k FROM run) / (SELECT num_experts FROM run))
           AS ratio
FROM grid g
LEFT JOIN hits h ON h.layer = g.layer AND h.label = g.label AND h.expert = g.expert
GROUP BY g.layer, g.label, g.expert, g.tokens
ORDER BY g.layer, g.label, g.expert;
