-- Routing difference between a steered run and its unsteered twin over the same tokens, per layer.
-- Answers: how much did a steering preset change routing (router saturation, DESIGN §4.3)?
-- Params:
--   run_id       the steered run (default: the newest run with a steering_id)
--   base_run_id  the unsteered twin (default: the newest run of the same model without a
--                steering_id); rows are matched on (seq_id, pos, layer)
-- Columns: layer, tokens (matched token rows), changed_sets (share whose top-k set differs, order
--   ignored), changed_top1 (share whose rank-0 expert differs), mean_overlap (mean |S ∩ S'| / k;
--   1 = identical), chance_overlap (= k/E, two independent uniform choices), token_mismatches
--   (matched rows whose token ids differ; should be 0 for a true twin)
WITH steered AS (
    SELECT coalesce(CAST(getvariable('run_id') AS VARCHAR),
                    (SELECT run_id FROM runs WHERE steering_id IS NOT NULL
                     ORDER BY created_at DESC, run_id LIMIT 1)) AS run_id
), params AS (
    SELECT s.run_id,
           coalesce(CAST(getvariable('base_run_id') AS VARCHAR),
                    (SELECT b.run_id FROM runs b JOIN runs r ON b.model_id = r.model_id
                     WHERE r.run_id = s.run_id AND b.steering_id IS NULL
                       AND b.run_id <> s.run_id
                     ORDER BY b.created_at DESC, b.run_id LIMIT 1)) AS base_run_id
    FROM steered s
), run AS (
    SELECT r.num_experts AS e, r.top_k AS k FROM runs r JOIN params USING (run_id)
), matched AS (
    SELECT a.layer, a.seq_id, a.pos, a.experts AS ex, b.experts AS base_ex
    FROM params p
    JOIN routes a ON a.run_id = p.run_id
    JOIN routes b ON b.run_id = p.base_run_id
                 AND b.seq_id = a.seq_id AND b.pos = a.pos AND b.layer = a.layer
), mism AS (
    SELECT count(*) AS n
    FROM params p
    JOIN tokens ta ON ta.run_id = p.run_id
    JOIN tokens tb ON tb.run_id = p.base_run_id AND tb.seq_id = ta.seq_id AND tb.pos = ta.pos
    WHERE ta.token_id IS DISTINCT FROM tb.token_id
)
SELECT layer,
       count(*) AS tokens,
       avg(CAST(list_sort(ex) <> list_sort(base_ex) AS DOUBLE)) AS changed_sets,
       avg(CAST(ex[1] <> base_ex[1] AS DOUBLE)) AS changed_top1,
       avg(len(list_intersect(ex, base_ex)) / (SELECT k FROM run)) AS mean_overlap,
       (SELECT k FROM run) / (SELECT e FROM run) AS chance_overlap,
       (SELECT n FROM mism) AS token_mismatches
FROM matched
GROUP BY layer
ORDER BY layer;
