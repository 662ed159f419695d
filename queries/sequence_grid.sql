-- One sequence as a token × layer grid: each row a token, each column an MoE layer's top-k experts.
-- Answers: how does one prompt's routing look, token by token and layer by layer?
-- Params:
--   run_id  the run (default: the newest run)
--   seq_id  the sequence (default: the run's lowest seq_id)
-- Columns: pos, token_id, token, phase, then one column per MoE layer named L<layer> (zero-padded
--   so columns sort by layer) holding that token's experts in rank order
PIVOT (
    WITH params AS (
        SELECT coalesce(CAST(getvariable('run_id') AS VARCHAR),
                        (SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 1))
                   AS run_id
    ), target AS (
        SELECT p.run_id,
               coalesce(CAST(getvariable('seq_id') AS BIGINT),
                        (SELECT min(s.seq_id) FROM sequences s WHERE s.run_id = p.run_id)) AS seq_id
        FROM params p
    ), cells AS (
        SELECT rt.pos, rt.layer, rt.experts
        FROM routes rt JOIN target USING (run_id, seq_id)
    )
    SELECT c.pos, t.token_id, t.token, t.phase,
           'L' || lpad(CAST(c.layer AS VARCHAR),
                       CAST(length(CAST(max(c.layer) OVER () AS VARCHAR)) AS INTEGER), '0')
               AS layer_col,
           c.experts
    FROM cells c
    JOIN target g ON true
    LEFT JOIN tokens t ON t.run_id = g.run_id AND t.seq_id = g.seq_id AND t.pos = c.pos
)
ON layer_col
USING first(experts)
GROUP BY pos, token_id, token, phase
ORDER BY pos;
