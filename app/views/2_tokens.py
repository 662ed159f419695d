"""Tokens: one sequence's text coloured by each token's top-1 expert at a chosen layer, and its
token × layer routing heatmap (hover: every expert and weight at every layer)."""

from __future__ import annotations

import _shared as sh
import streamlit as st

from routescope.analysis.figures_app import token_html, token_route_heatmap, token_route_text

MAX_TOKENS = 200  # tokens shown at once (a window into longer sequences)

st.title("Tokens")
run = sh.current_run()
if run is None:
    st.stop()
db, version, run_id = run

with sh.guarded():
    trace = sh.load_trace(db, version, run_id)
    texts = sh.load_token_strings(db, version, run_id)
    info = sh.load_run_info(db, version, run_id)
    notes = sh.note_labels(sh.load_notes(db, version, info["model_id"]))

if trace.num_sequences == 0:
    st.info("This run holds no sequences yet.")
    st.stop()

labels = trace.labels.tolist()
seq_ids = trace.seq_ids.tolist()
lengths = trace.seq_lengths.tolist()


def _describe(i: int) -> str:
    lab = f" · {labels[i]}" if labels[i] is not None else ""
    lo, hi = int(trace.seq_offsets[i]), int(trace.seq_offsets[i + 1])
    head = "".join(texts.get(int(t), "?") for t in trace.token_ids[lo : min(hi, lo + 12)])
    return f"seq {seq_ids[i]}{lab} · {lengths[i]} tok · {head.strip()[:50]}"


c1, c2 = st.columns([3, 1])
with c1:
    seq = int(st.selectbox("Sequence", list(range(trace.num_sequences)), format_func=_describe))
with c2:
    layer = sh.layer_select(list(trace.layers), key="tokens_layer")

lo, hi = int(trace.seq_offsets[seq]), int(trace.seq_offsets[seq + 1])
if hi - lo > MAX_TOKENS:
    start = int(
        st.number_input(
            f"First position shown ({MAX_TOKENS} at a time)",
            min_value=0,
            max_value=hi - lo - 1,
            value=0,
            step=MAX_TOKENS,
        )
    )
    lo, hi = lo + start, min(hi, lo + start + MAX_TOKENS)

experts = trace.experts[lo:hi]
weights = trace.weights[lo:hi]
tokens = [texts.get(int(t)) or f"<{int(t)}>" for t in trace.token_ids[lo:hi]]
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
