-- Top-1 repetition rate per layer: how often consecutive tokens of a sequence keep the same expert.
-- Answers: how local is routing in time (the Mixtral paper's Table 5), against chance?
-- Params:
--   run_id  the run (default: the newest run)
-- Columns: layer, pairs (consecutive token pairs t, t+1 within a sequence), top1_repeat (share of
--   pairs whose rank-0 expert is the same), top1_chance (= 1/E), top2_share (share of pairs whose
--   top-2 sets share an expert; NULL when k = 1), top2_chance (= 1 − C(E−2,2)/C(E,2))
WITH params AS (
    SELECT coalesce(CAST(getvariable('run_id') AS VARCHAR),
                    (SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 1))
               AS run_id
), run AS (
    SELECT r.run_id, r.num_experts AS e, r.top_k AS k FROM runs r JOIN params USING (run_id)
), seq AS (
    SELECT rt.layer, rt.seq_id, rt.pos, rt.experts,
           lag(rt.experts) OVER w AS prev_experts,
           lag(rt.pos) OVER w AS prev_pos
    FROM routes rt JOIN params p ON rt.run_id = p.run_id
    WINDOW w AS (PARTITION BY rt.layer, rt.seq_id ORDER BY rt.pos)
), pairs AS (
    SELECT layer,
           experts[1] = prev_experts[1] AS same_top1,
           len(list_intersect(experts[1:2], prev_experts[1:2])) > 0 AS top2_overlap
    FROM seq
    WHERE prev_pos = pos - 1
)
SELECT layer,
       count(*) AS pairs,
       avg(CAST(same_top1 AS DOUBLE)) AS top1_repeat,
       1 / (SELECT e FROM run) AS top1_chance,
       CASE WHEN (SELECT k FROM run) >= 2 THEN avg(CAST(top2_overlap AS DOUBLE)) END AS top2_share,
       CASE WHEN (SELECT k FROM run) >= 2 THEN
           1 - ((SELECT e FROM run) - 2) * ((SELECT e FROM run) - 3)
               / ((SELECT e FROM run) * ((SELECT e FROM run) - 1)) END AS top2_chance
FROM pairs
GROUP BY layer
ORDER BY layer;
