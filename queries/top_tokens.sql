-- Top tokens per expert: the input tokens most often routed to each (layer, expert) in one run.
-- Answers: what vocabulary does an expert handle (OLMoE-style vocabulary specialization)?
-- Params:
--   run_id     the run (default: the newest run)
--   layer      only this MoE layer (default: all layers)
--   expert     only this expert (default: all experts)
--   top_n      tokens kept per (layer, expert) (default: 10)
--   min_count  ignore tokens seen fewer times than this in the run (default: 1)
-- Columns: layer, expert, rank, token_id, token, n (times the token was routed to the expert),
--   expert_share (n ÷ the expert's assignments), token_share (n ÷ occurrences of the token, i.e.
--   the share of this token's occurrences that selected the expert)
WITH params AS (
    SELECT coalesce(CAST(getvariable('run_id') AS VARCHAR),
                    (SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 1))
               AS run_id,
           CAST(getvariable('layer') AS INTEGER) AS layer,
           CAST(getvariable('expert') AS INTEGER) AS expert,
           coalesce(CAST(getvariable('top_n') AS INTEGER), 10) AS top_n,
           coalesce(CAST(getvariable('min_count') AS INTEGER), 1) AS min_count
), tok AS (
    SELECT t.seq_id, t.pos, t.token_id, t.token
    FROM tokens t JOIN params p ON t.run_id = p.run_id
), occ AS (
    SELECT token_id, count(*) AS occurrences FROM tok GROUP BY token_id
), choice AS (
    SELECT c.layer, CAST(c.expert AS INTEGER) AS expert, tok.token_id, any_value(tok.token) AS token,
           count(*) AS n
    FROM route_choices c
    JOIN params p ON c.run_id = p.run_id
    JOIN tok ON tok.seq_id = c.seq_id AND tok.pos = c.pos
    WHERE (p.layer IS NULL OR c.layer = p.layer) AND (p.expert IS NULL OR c.expert = p.expert)
    GROUP BY c.layer, c.expert, tok.token_id
), totals AS (
    SELECT layer, expert, sum(n) AS expert_total FROM choice GROUP BY layer, expert
), ranked AS (
    SELECT ch.*, o.occurrences, tt.expert_total
    FROM choice ch
    JOIN occ o USING (token_id)
    JOIN totals tt USING (layer, expert)
    WHERE o.occurrences >= (SELECT min_count FROM params)
)
SELECT layer, expert,
       CAST(row_number() OVER (PARTITION BY layer, expert ORDER BY n DESC, token_id) AS INTEGER)
           AS rank,
       token_id, token, n,
       n / expert_total AS expert_share,
       n / occurrences AS token_share
FROM ranked
QUALIFY rank <= (SELECT top_n FROM params)
ORDER BY layer, expert, rank;
