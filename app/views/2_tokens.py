"""Tokens: one sequence's text coloured by each token's top-1 expert at a chosen layer, and its
token × layer routing heatmap (hover: every expert and weight at every layer).

Reads only what it shows (DESIGN §7): the run's sequence list, then the picked sequence's routing
(`RoutingStore.sequence_trace`) and the text of that sequence's token ids; never the whole run.
"""

from __future__ import annotations

import _shared as sh
import numpy as np
import streamlit as st

from routescope.analysis.figures_app import token_html, token_route_heatmap, token_route_text

MAX_TOKENS = 200  # tokens shown at once (a window into longer sequences)
MAX_LISTED = 5000  # sequences offered in a list; a longer run picks its sequence by id

st.title("Tokens")
run = sh.current_run()
if run is None:
    st.stop()
db, version, run_id = run

with sh.guarded():
    info = sh.load_run_info(db, version, run_id)
    seqs = sh.load_sequence_list(db, version, run_id)
    notes = sh.note_labels(sh.load_notes(db, version, info["model_id"]))

if seqs.height == 0:
    st.info("This run holds no sequences yet.")
    st.stop()

ids = seqs["seq_id"].to_list()
described = {
    int(r["seq_id"]): (
        f"seq {r['seq_id']}"
        + (f" · {r['label']}" if r["label"] is not None else "")
        + f" · {r['num_tokens']} tok · {' '.join(str(r['head']).split())[:50]}"
    )
    for r in seqs.iter_rows(named=True)
}
layers = [int(x) for x in info["moe_layers"]]

c1, c2 = st.columns([3, 1])
with c1:
    if len(ids) <= MAX_LISTED:
        seq_id = int(st.selectbox("Sequence", ids, format_func=lambda i: described[int(i)]))
    else:
        seq_id = int(
            st.number_input(
                f"Sequence id ({len(ids):,} sequences, ids {ids[0]}–{ids[-1]})",
                min_value=int(ids[0]),
                max_value=int(ids[-1]),
                value=int(ids[0]),
            )
        )
        if seq_id not in described:
            st.info(f"This run has no sequence {seq_id}.")
            st.stop()
        st.caption(described[seq_id])
with c2:
    layer = sh.layer_select(layers, key="tokens_layer")

with sh.guarded():
    trace = sh.load_sequence(db, version, run_id, seq_id)
n = trace.num_tokens
lo, hi = 0, n
if n > MAX_TOKENS:
    start = int(
        st.number_input(
            f"First position shown ({MAX_TOKENS} at a time)",
            min_value=0,
            max_value=n - 1,
            value=0,
            step=MAX_TOKENS,
        )
    )
    lo, hi = start, min(n, start + MAX_TOKENS)

token_ids = trace.token_ids[lo:hi]
with sh.guarded():
    texts = sh.load_token_strings(db, version, run_id, tuple(int(t) for t in np.unique(token_ids)))
experts = trace.experts[lo:hi]
weights = trace.weights[lo:hi] if trace.weights is not None else np.full(experts.shape, np.nan)
tokens = [texts.get(int(t)) or f"<{int(t)}>" for t in token_ids]
decode = trace.phase[lo:hi] == 1
col = trace.layer_position(layer)
titles = [
    f"pos {int(p)} {tok!r}{' (generated)' if d else ''}\n"
    + token_route_text(experts[i], weights[i], trace.layers, notes, sep="\n")
    for i, (p, tok, d) in enumerate(zip(trace.positions[lo:hi], tokens, decode, strict=True))
]

st.subheader(f"Text coloured by top-1 expert at layer {layer}")
st.caption("Hover a token for all its experts and weights at every layer.")
st.html(token_html(tokens, experts[:, col, 0], titles, trace.num_experts))
if decode.any():
    st.caption(f"{int(decode.sum())} of these tokens were generated (decode phase).")

sh.plot(
    token_route_heatmap(experts, weights, trace.layers, tokens, trace.num_experts, notes),
    key="token_heatmap",
)
