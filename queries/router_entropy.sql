-- Router entropy per layer, from the full router distributions (router_probs).
-- Answers: how confident is the router at each layer (low entropy = peaked, decisive routing)?
--   Needs a run collected with full router distributions saved; otherwise returns no rows.
-- Params:
--   run_id  the run (default: the newest run)
--   phase   'prefill' or 'decode' tokens only (default: all tokens)
-- Columns: layer, tokens, mean_entropy (nats, −Σ p ln p over the E experts, 0·ln 0 = 0),
--   normalized_entropy (mean_entropy ÷ ln E; 1 = uniform), min_entropy, max_entropy,
--   mean_max_prob (mean of the largest probability)
WITH params AS (
    SELECT coalesce(CAST(getvariable('run_id') AS VARCHAR),
                    (SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 1))
               AS run_id,
           CAST(getvariable('phase') AS VARCHAR) AS phase
), ent AS (
    SELECT rp.layer,
           list_sum(list_transform(rp.probs,
                    lambda x: CASE WHEN x > 0 THEN -CAST(x AS DOUBLE) * ln(CAST(x AS DOUBLE))
                              ELSE 0.0 END)) AS h,
           list_max(rp.probs) AS max_prob,
           len(rp.probs) AS e
    FROM router_probs rp
    JOIN params p ON rp.run_id = p.run_id
    JOIN tokens t ON t.run_id = rp.run_id AND t.seq_id = rp.seq_id AND t.pos = rp.pos
    WHERE p.phase IS NULL OR t.phase = p.phase
)
SELECT layer,
       count(*) AS tokens,
       avg(h) AS mean_entropy,
       avg(h) / ln(max(e)) AS normalized_entropy,
       min(h) AS min_entropy,
       max(h) AS max_entropy,
       avg(max_prob) AS mean_max_prob
FROM ent
GROUP BY layer
ORDER BY layer;
