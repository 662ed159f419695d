-- Co-activation pairs: how often two experts are selected together in one token's top-k at a layer.
-- Answers: which experts work as a team (all pairs within S_t, not only rank-adjacent ones)?
-- Params:
--   run_id     the run (default: the newest run)
--   layer      only this MoE layer (default: all layers)
--   min_count  keep pairs seen together at least this often (default: 1)
-- Columns: layer, expert_a < expert_b, n (tokens with both), n_a, n_b (tokens with each),
--   p_b_given_a = n ÷ n_a, p_a_given_b = n ÷ n_b (DESIGN §4.3's N(e_i, e_j)/N(e_i)), and
--   lift = n × tokens ÷ (n_a × n_b) (1 = as often as independent choices would give)
WITH params AS (
    SELECT coalesce(CAST(getvariable('run_id') AS VARCHAR),
                    (SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 1))
               AS run_id,
           CAST(getvariable('layer') AS INTEGER) AS layer,
           coalesce(CAST(getvariable('min_count') AS INTEGER), 1) AS min_count
), ch AS (
    SELECT c.seq_id, c.pos, c.layer, CAST(c.expert AS INTEGER) AS expert
    FROM route_choices c JOIN params p ON c.run_id = p.run_id
    WHERE p.layer IS NULL OR c.layer = p.layer
), single AS (
    SELECT layer, expert, count(*) AS n FROM ch GROUP BY layer, expert
), tokens_per_layer AS (
    SELECT layer, count(DISTINCT (seq_id, pos)) AS tokens FROM ch GROUP BY layer
), pairs AS (
    SELECT a.layer, a.expert AS expert_a, b.expert AS expert_b, count(*) AS n
    FROM ch a
    JOIN ch b ON a.seq_id = b.seq_id AND a.pos = b.pos AND a.layer = b.layer
             AND a.expert < b.expert
    GROUP BY a.layer, a.expert, b.expert
)
SELECT p.layer, p.expert_a, p.expert_b, p.n, sa.n AS n_a, sb.n AS n_b,
       p.n / sa.n AS p_b_given_a,
       p.n / sb.n AS p_a_given_b,
       p.n * t.tokens / (sa.n * sb.n) AS lift
FROM pairs p
JOIN single sa ON sa.layer = p.layer AND sa.expert = p.expert_a
JOIN single sb ON sb.layer = p.layer AND sb.expert = p.expert_b
JOIN tokens_per_layer t ON t.layer = p.layer
WHERE p.n >= (SELECT min_count FROM params)
ORDER BY p.layer, p.n DESC, p.expert_a, p.expert_b;
