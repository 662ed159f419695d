"""numba kernels behind routing consistency (SRP/SCH) and expert-cache simulation.

All kernels take request arrays ``X: int16/int32[N, nL, K]`` (token rows x layers x requests per
token, ``-1`` = padding, used for batch steps whose request sets vary in size) and ``offsets:
int64[S+1]`` (the token rows of each sequence). The compiled kernels get them as C-contiguous
[nL, N, K] arrays (`layer_major`): each task walks one layer's rows, which are then contiguous.
Work is split into (layer, chunk of sequences) tasks run with ``prange``; each task owns its output
row, so there are no races, and rows are summed afterwards.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

# Policy codes of the generic stack kernel (all are priority algorithms, hence stack algorithms).
LRU, LFU, LOOKAHEAD, BELADY, BYPASS = 0, 1, 2, 3, 4
# Service models.
STREAM, TOKEN, SIMULTANEOUS = 0, 1, 2

_SHIFT = np.int64(1) << np.int64(36)  # room for access stamps inside a composite key
_INF = np.int64(1) << np.int64(60)  # "never requested again"
_BOOST = np.int64(1) << np.int64(62)  # simultaneous: the current token's experts outrank all
PARALLEL_MIN = 2_000_000  # request-array entries below which kernels run on one thread


def chunk_bounds(num_seqs: int, num_chunks: int) -> np.ndarray:
    """Split sequences 0..S-1 into num_chunks contiguous runs; returns int64[num_chunks+1]."""
    return np.linspace(0, num_seqs, num_chunks + 1).round().astype(np.int64)


@njit(cache=True, inline="always")
def _key(e, policy, boost, t, last, cnt, win, mark, nu):
    """Priority of resident item e (higher = keep); depends only on the request string and time."""
    if policy == LRU:
        k = last[e]
    elif policy == LFU:
        k = cnt[e] * _SHIFT + last[e]
    elif policy == LOOKAHEAD:
        c = win[e]
        if mark[e] == t:
            c -= 1  # already served at this token: not a request still to come
        k = c * _SHIFT + last[e]
    else:
        k = _INF - nu[e]
    if boost and mark[e] == t:
        k += _BOOST
    return k


@njit(cache=True, inline="always")
def _find(stack, m, e):
    for i in range(m):
        if stack[i] == e:
            return i
    return -1


@njit(cache=True, inline="always")
def _win_add(X, row, layer, win, sign):
    for j in range(X.shape[2]):
        e = X[row, layer, j]
        if e >= 0:
            win[e] += sign


@njit(cache=True, inline="always")
def _refresh_row(X, row, layer, pos, sk, policy, boost, t, last, cnt, win, mark, nu):
    """Recompute the cached key of each stacked item requested at `row` (its key changed)."""
    for j in range(X.shape[2]):
        e = X[row, layer, j]
        if e >= 0 and pos[e] >= 0:
            sk[pos[e]] = _key(e, policy, boost, t, last, cnt, win, mark, nu)


@njit(cache=True, parallel=True)
def _stack_depths(Y, offsets, chunks, n_items, policy, service, window):
    """One pass of a stack (priority) algorithm: hit depths for every capacity at once.

    Returns (hist[nL, n_items+1], requests[nL], distinct[nL, n_items+1]): hist[l, d] counts the
    requests that hit in every cache of capacity >= d (d = 0: a miss at every capacity);
    distinct[l, D] counts sequences with D distinct requested items (for warm start).
    Under TOKEN and SIMULTANEOUS service a request's depth is taken before its token is served.

    Each stacked item's priority key is cached beside it (sk). A key changes when its item is
    served, and, for lookahead or simultaneous service, at token boundaries for the items of the
    tokens entering or leaving the window or the current token: those few are refreshed through
    `pos` (each item's stack position) at the start of each token, so the walk down the stack
    only reads cached keys.
    """
    X = Y.transpose(1, 0, 2)  # [N, nL, K] view of [nL, N, K]: a layer's rows are contiguous
    n_rows, n_layers, kk = X.shape
    n_chunks = len(chunks) - 1
    n_tasks = n_layers * n_chunks
    hist = np.zeros((n_tasks, n_items + 1), dtype=np.int64)
    reqs = np.zeros(n_tasks, dtype=np.int64)
    dist = np.zeros((n_tasks, n_items + 1), dtype=np.int64)
    max_len = 0
    for s in range(len(offsets) - 1):
        max_len = max(max_len, offsets[s + 1] - offsets[s])
    boost = service == SIMULTANEOUS
    # keys that also change at token boundaries: track stack positions to refresh them
    track = policy == LOOKAHEAD or service == SIMULTANEOUS
    # LRU keys are access times, so the stack stays in recency order: every level above the
    # request moves down one, no comparison needed (unless tokens are boosted)
    recency = policy == LRU and not track
    # lookahead and next-use keys make the comparison a coin flip: selects instead of a branch
    # (measured 1.2-1.5x faster for them; LFU's branch predicts well and stays a branch)
    selects = policy >= LOOKAHEAD
    for task in prange(n_tasks):
        layer = task // n_chunks
        ch = task % n_chunks
        stack = np.empty(n_items, dtype=np.int64)
        sk = np.empty(n_items, dtype=np.int64)
        pos = np.full(n_items, -1, dtype=np.int64)
        last = np.zeros(n_items, dtype=np.int64)
        cnt = np.zeros(n_items, dtype=np.int64)
        win = np.zeros(n_items, dtype=np.int64)
        mark = np.full(n_items, -1, dtype=np.int64)
        nu = np.full(n_items, _INF, dtype=np.int64)
        seen = np.full(n_items, -1, dtype=np.int64)
        nxt = np.empty(max(1, max_len * kk), dtype=np.int64)
        depth = np.empty(kk, dtype=np.int64)
        for s in range(chunks[ch], chunks[ch + 1]):
            a, b = offsets[s], offsets[s + 1]
            T = b - a
            if T == 0:
                continue
            for e in range(n_items):
                last[e] = -1
                cnt[e] = 0
                win[e] = 0
                mark[e] = -1
                nu[e] = _INF
                seen[e] = -1
                pos[e] = -1
            if policy >= BELADY:  # next request index of every request (flattened t*K + j)
                for i in range(T * kk - 1, -1, -1):
                    e = X[a + i // kk, layer, i % kk]
                    if e >= 0:
                        nxt[i] = _INF if seen[e] < 0 else seen[e]
                        seen[e] = i
                for e in range(n_items):
                    seen[e] = -1
            m = 0
            for t in range(T):
                row = a + t
                if policy == LOOKAHEAD:  # win = request counts over tokens t .. t+window-1
                    if t == 0:
                        for u in range(min(window, T)):
                            _win_add(X, a + u, layer, win, 1)
                    else:
                        _win_add(X, row - 1, layer, win, -1)
                        if t + window - 1 < T:
                            _win_add(X, row + window - 1, layer, win, 1)
                if service != STREAM:
                    # hits are decided against the cache as it stood before the token
                    for j in range(kk):
                        e = X[row, layer, j]
                        if e < 0:
                            continue
                        depth[j] = _find(stack, m, e)
                    for j in range(kk):
                        e = X[row, layer, j]
                        if e < 0:
                            continue
                        reqs[task] += 1
                        hist[task, depth[j] + 1] += 1
                        if service == SIMULTANEOUS:  # the whole token is served at once
                            mark[e] = t
                            last[e] = t * kk + j
                            cnt[e] += 1
                            if policy >= BELADY:
                                nu[e] = nxt[t * kk + j]
                if track and t > 0:  # keys that changed with the token boundary
                    _refresh_row(X, row - 1, layer, pos, sk, policy, boost, t, last, cnt, win,
                                 mark, nu)  # fmt: skip
                    if policy == LOOKAHEAD and t + window - 1 < T:
                        _refresh_row(X, row + window - 1, layer, pos, sk, policy, boost, t, last,
                                     cnt, win, mark, nu)  # fmt: skip
                    if boost:
                        _refresh_row(X, row, layer, pos, sk, policy, boost, t, last, cnt, win,
                                     mark, nu)  # fmt: skip
                for j in range(kk):
                    e = X[row, layer, j]
                    if e < 0:
                        continue
                    if service != SIMULTANEOUS:  # stream and token: served in rank order
                        mark[e] = t
                        last[e] = t * kk + j
                        cnt[e] += 1
                        if policy >= BELADY:
                            nu[e] = nxt[t * kk + j]
                    # one pass finds e (depth d) and pushes the displaced items down the stack
                    ke = _key(e, policy, boost, t, last, cnt, win, mark, nu)
                    if m == 0:
                        stack[0] = e
                        sk[0] = ke
                        if track:
                            pos[e] = 0
                        m = 1
                        d = -1
                    elif stack[0] == e:
                        sk[0] = ke
                        d = 0
                    else:
                        if policy == BYPASS:  # e itself competes for every cache size
                            carry = e
                            kc = ke
                            start = 0
                        else:  # e is admitted: on top
                            carry = stack[0]
                            kc = sk[0]
                            stack[0] = e
                            sk[0] = ke
                            if track:
                                pos[e] = 0
                            start = 1
                        d = -1
                        for i in range(start, m):
                            y = stack[i]
                            if y == e:
                                d = i
                                break
                            ky = sk[i]
                            if recency:  # keys fall down the stack: y always moves down
                                stack[i] = carry
                                sk[i] = kc
                                carry = y
                                kc = ky
                                continue
                            # ky < kc: y leaves the cache of size i+1 and carry stays in it
                            if not selects:
                                if ky < kc:
                                    stack[i] = carry
                                    sk[i] = kc
                                    if track:
                                        pos[carry] = i
                                    carry = y
                                    kc = ky
                                continue
                            swap = ky < kc
                            keep = carry if swap else y
                            stack[i] = keep
                            sk[i] = kc if swap else ky
                            if track:
                                pos[keep] = i
                            carry = y if swap else carry
                            kc = ky if swap else kc
                        at = d if d >= 0 else m  # where e was, or a new bottom level
                        stack[at] = carry
                        sk[at] = kc
                        if track:
                            pos[carry] = at
                        if d < 0:
                            m += 1
                    if service == STREAM:
                        reqs[task] += 1
                        hist[task, d + 1] += 1
            dist[task, m] += 1
    out_hist = np.zeros((n_layers, n_items + 1), dtype=np.int64)
    out_reqs = np.zeros(n_layers, dtype=np.int64)
    out_dist = np.zeros((n_layers, n_items + 1), dtype=np.int64)
    for task in range(n_tasks):
        layer = task // n_chunks
        out_hist[layer] += hist[task]
        out_reqs[layer] += reqs[task]
        out_dist[layer] += dist[task]
    return out_hist, out_reqs, out_dist


@njit(cache=True, parallel=True)
def _fifo_hits(Y, offsets, chunks, n_items, capacities, service):
    """FIFO (not a stack algorithm: Belady's anomaly) simulated once per capacity.

    Returns hits[nL, len(capacities)] under cold start. Under SIMULTANEOUS service the oldest
    resident that the current token does not request is evicted.
    """
    X = Y.transpose(1, 0, 2)  # [N, nL, K] view of [nL, N, K]: a layer's rows are contiguous
    n_rows, n_layers, kk = X.shape
    n_chunks = len(chunks) - 1
    n_caps = len(capacities)
    n_tasks = n_layers * n_caps * n_chunks
    hits = np.zeros(n_tasks, dtype=np.int64)
    for task in prange(n_tasks):
        layer = task // (n_caps * n_chunks)
        ci = (task // n_chunks) % n_caps
        ch = task % n_chunks
        cap = capacities[ci]
        resident = np.zeros(n_items, dtype=np.bool_)
        mark = np.full(n_items, -1, dtype=np.int64)
        q = np.empty(cap, dtype=np.int64)
        h = 0
        for s in range(chunks[ch], chunks[ch + 1]):
            a, b = offsets[s], offsets[s + 1]
            for e in range(n_items):
                resident[e] = False
                mark[e] = -1
            h = 0
            n = 0
            for t in range(b - a):
                row = a + t
                if service != STREAM:
                    for j in range(kk):
                        e = X[row, layer, j]
                        if e >= 0:
                            mark[e] = t
                            if resident[e]:
                                hits[task] += 1
                for j in range(kk):
                    e = X[row, layer, j]
                    if e < 0:
                        continue
                    if resident[e]:
                        if service == STREAM:
                            hits[task] += 1
                        continue
                    if n == cap:  # evict the oldest admissible resident
                        skip = 0
                        if service == SIMULTANEOUS:
                            while skip < n - 1 and mark[q[(h + skip) % cap]] == t:
                                skip += 1
                        victim = q[(h + skip) % cap]
                        for u in range(skip, 0, -1):
                            q[(h + u) % cap] = q[(h + u - 1) % cap]
                        h = (h + 1) % cap
                        n -= 1
                        resident[victim] = False
                    q[(h + n) % cap] = e
                    n += 1
                    resident[e] = True
    out = np.zeros((n_layers, n_caps), dtype=np.int64)
    for task in range(n_tasks):
        layer = task // (n_caps * n_chunks)
        ci = (task // n_chunks) % n_caps
        out[layer, ci] += hits[task]
    return out


@njit(cache=True, parallel=True)
def _static_topc(Y, offsets, chunks, n_items):
    """Best static placement: topc[l, C] = sum over sequences of the C largest request counts."""
    X = Y.transpose(1, 0, 2)  # [N, nL, K] view of [nL, N, K]: a layer's rows are contiguous
    n_rows, n_layers, kk = X.shape
    n_chunks = len(chunks) - 1
    n_tasks = n_layers * n_chunks
    acc = np.zeros((n_tasks, n_items + 1), dtype=np.int64)
    for task in prange(n_tasks):
        layer = task // n_chunks
        ch = task % n_chunks
        counts = np.zeros(n_items, dtype=np.int64)
        for s in range(chunks[ch], chunks[ch + 1]):
            counts[:] = 0
            for row in range(offsets[s], offsets[s + 1]):
                for j in range(kk):
                    e = X[row, layer, j]
                    if e >= 0:
                        counts[e] += 1
            srt = np.sort(counts)[::-1]
            run = 0
            for c in range(n_items):
                run += srt[c]
                acc[task, c + 1] += run
    out = np.zeros((n_layers, n_items + 1), dtype=np.int64)
    for task in range(n_tasks):
        out[task // n_chunks] += acc[task]
    return out


@njit(cache=True, inline="always")
def _touch_pos(i, tau, a, last_a, S):
    S[i] += a[i] * (tau - last_a[i])
    last_a[i] = tau


@njit(cache=True, inline="always")
def _touch_val(v, tau, g, last_g, G):
    G[v] += g[v] * (tau - last_g[v])
    last_g[v] = tau


@njit(cache=True, inline="always")
def _window_update(X, row, layer, sign, tau, n, g, lo, a, last_a, last_g, S, G):
    """Add (sign=+1) or remove (-1) one token's experts from the window, keeping the sorted
    multiset of per-expert counts (a, descending; buckets g/lo) and lazy window sums."""
    for j in range(X.shape[2]):
        e = X[row, layer, j]
        if e < 0:
            continue
        v = n[e]
        if sign > 0:
            i = lo[v]  # leftmost position holding v becomes v+1
            _touch_pos(i, tau, a, last_a, S)
            a[i] = v + 1
            _touch_val(v, tau, g, last_g, G)
            _touch_val(v + 1, tau, g, last_g, G)
            if g[v + 1] == 0:
                lo[v + 1] = i
            g[v + 1] += 1
            g[v] -= 1
            lo[v] = i + 1
            n[e] = v + 1
        else:
            i = lo[v] + g[v] - 1  # rightmost position holding v becomes v-1
            _touch_pos(i, tau, a, last_a, S)
            a[i] = v - 1
            _touch_val(v, tau, g, last_g, G)
            _touch_val(v - 1, tau, g, last_g, G)
            g[v] -= 1
            g[v - 1] += 1
            lo[v - 1] = i
            n[e] = v - 1


@njit(cache=True, parallel=True)
def _window_stats(Y, offsets, chunks, n_experts, seg):
    """Sliding windows of `seg` tokens (stride 1) inside each sequence, O(k) work per token.

    Returns (G[nL, seg+1], S[nL, E], W[nL]): G[l, v] = number of (window, expert) pairs whose
    count n_{w,e} equals v; S[l, i] = sum over windows of the (i+1)-th largest n_{w,e};
    W[l] = number of windows. SRP follows from G, the segment-oracle SCH from S.
    """
    X = Y.transpose(1, 0, 2)  # [N, nL, K] view of [nL, N, K]: a layer's rows are contiguous
    n_rows, n_layers, kk = X.shape
    n_chunks = len(chunks) - 1
    n_tasks = n_layers * n_chunks
    G = np.zeros((n_tasks, seg + 1), dtype=np.int64)
    S = np.zeros((n_tasks, n_experts), dtype=np.int64)
    W = np.zeros(n_tasks, dtype=np.int64)
    for task in prange(n_tasks):
        layer = task // n_chunks
        ch = task % n_chunks
        n = np.zeros(n_experts, dtype=np.int64)
        g = np.zeros(seg + 2, dtype=np.int64)
        lo = np.zeros(seg + 2, dtype=np.int64)
        last_g = np.zeros(seg + 2, dtype=np.int64)
        a = np.zeros(n_experts, dtype=np.int64)
        last_a = np.zeros(n_experts, dtype=np.int64)
        s_loc = np.zeros(n_experts, dtype=np.int64)
        g_loc = np.zeros(seg + 1, dtype=np.int64)
        for s in range(chunks[ch], chunks[ch + 1]):
            start, stop = offsets[s], offsets[s + 1]
            T = stop - start
            if seg > T:
                continue
            n[:] = 0
            g[:] = 0
            lo[:] = 0
            last_g[:] = 0
            a[:] = 0
            last_a[:] = 0
            g[0] = n_experts
            for u in range(seg):
                _window_update(X, start + u, layer, 1, 0, n, g, lo, a, last_a, last_g, s_loc, g_loc)
            nw = T - seg + 1
            for w in range(1, nw):
                _window_update(
                    X, start + w - 1, layer, -1, w, n, g, lo, a, last_a, last_g, s_loc, g_loc
                )
                _window_update(
                    X,
                    start + w + seg - 1,
                    layer,
                    1,
                    w,
                    n,
                    g,
                    lo,
                    a,
                    last_a,
                    last_g,
                    s_loc,
                    g_loc,
                )
            for i in range(n_experts):
                _touch_pos(i, nw, a, last_a, s_loc)
            for v in range(seg + 1):
                _touch_val(v, nw, g, last_g, g_loc)
            W[task] += nw
        S[task, :] = s_loc
        G[task, :] = g_loc
    outG = np.zeros((n_layers, seg + 1), dtype=np.int64)
    outS = np.zeros((n_layers, n_experts), dtype=np.int64)
    outW = np.zeros(n_layers, dtype=np.int64)
    for task in range(n_tasks):
        layer = task // n_chunks
        outG[layer] += G[task]
        outS[layer] += S[task]
        outW[layer] += W[task]
    return outG, outS, outW


@njit(cache=True, parallel=True)
def _distinct_hist(Y, offsets, chunks, n_items):
    """dist[l, D] = number of sequences whose layer-l requests name D distinct items."""
    X = Y.transpose(1, 0, 2)  # [N, nL, K] view of [nL, N, K]: a layer's rows are contiguous
    n_rows, n_layers, kk = X.shape
    n_chunks = len(chunks) - 1
    n_tasks = n_layers * n_chunks
    acc = np.zeros((n_tasks, n_items + 1), dtype=np.int64)
    for task in prange(n_tasks):
        layer = task // n_chunks
        ch = task % n_chunks
        mark = np.full(n_items, -1, dtype=np.int64)
        for s in range(chunks[ch], chunks[ch + 1]):
            d = 0
            for row in range(offsets[s], offsets[s + 1]):
                for j in range(kk):
                    e = X[row, layer, j]
                    if e >= 0 and mark[e] != s:
                        mark[e] = s
                        d += 1
            acc[task, d] += 1
    out = np.zeros((n_layers, n_items + 1), dtype=np.int64)
    for task in range(n_tasks):
        out[task // n_chunks] += acc[task]
    return out


@njit(cache=True, parallel=True)
def _repetition_counts(Y, offsets):
    """Consecutive token rows of one sequence, per layer: (pairs, top1[nL], share[nL],
    overlap[nL]) = pairs, pairs whose top-1 expert repeats, pairs whose top-2 sets share an expert,
    and the sum over pairs of how many of the later token's experts the earlier token also had."""
    X = Y.transpose(1, 0, 2)  # [N, nL, K] view of [nL, N, K]: a layer's rows are contiguous
    n_rows, n_layers, kk = X.shape
    pairs = 0
    for s in range(len(offsets) - 1):
        if offsets[s + 1] > offsets[s]:
            pairs += offsets[s + 1] - offsets[s] - 1
    top1 = np.zeros(n_layers, dtype=np.int64)
    share = np.zeros(n_layers, dtype=np.int64)
    overlap = np.zeros(n_layers, dtype=np.int64)
    for layer in prange(n_layers):
        t1 = 0
        sh = 0
        ov = 0
        for s in range(len(offsets) - 1):
            for row in range(offsets[s] + 1, offsets[s + 1]):
                if X[row, layer, 0] == X[row - 1, layer, 0]:
                    t1 += 1
                if kk >= 2:
                    hit = False
                    for j in range(2):
                        for i in range(2):
                            if X[row, layer, j] == X[row - 1, layer, i]:
                                hit = True
                    if hit:
                        sh += 1
                for j in range(kk):
                    for i in range(kk):
                        if X[row, layer, j] == X[row - 1, layer, i]:
                            ov += 1
                            break
        top1[layer] = t1
        share[layer] = sh
        overlap[layer] = ov
    return pairs, top1, share, overlap


@njit(cache=True)
def _step_requests(Y, offsets, batch_size, n_items):
    """Batch steps: sequences are grouped in batches of `batch_size` (in trace order) and a step
    is one position across a batch's sequences; its requests are the union of their experts,
    ordered by (rank, sequence). Returns (Xs[steps, nL, Kp] padded with -1, step offsets per batch).
    """
    X = Y.transpose(1, 0, 2)  # [N, nL, K] view of [nL, N, K]: a layer's rows are contiguous
    n_rows, n_layers, kk = X.shape
    n_seq = len(offsets) - 1
    n_batches = (n_seq + batch_size - 1) // batch_size
    kp = min(n_items, batch_size * kk)
    boff = np.zeros(n_batches + 1, dtype=np.int64)
    for bi in range(n_batches):
        mx = 0
        for s in range(bi * batch_size, min(n_seq, (bi + 1) * batch_size)):
            mx = max(mx, offsets[s + 1] - offsets[s])
        boff[bi + 1] = boff[bi] + mx
    Xs = np.full((boff[-1], n_layers, kp), -1, dtype=np.int32)
    mark = np.full(n_items, -1, dtype=np.int64)
    stamp = 0
    for bi in range(n_batches):
        s0 = bi * batch_size
        s1 = min(n_seq, (bi + 1) * batch_size)
        for p in range(boff[bi + 1] - boff[bi]):
            out_row = boff[bi] + p
            for layer in range(n_layers):
                stamp += 1
                fill = 0
                for j in range(kk):
                    for s in range(s0, s1):
                        if p < offsets[s + 1] - offsets[s]:
                            e = X[offsets[s] + p, layer, j]
                            if e >= 0 and mark[e] != stamp:
                                mark[e] = stamp
                                Xs[out_row, layer, fill] = e
                                fill += 1
    return Xs, boff


def layer_major(X: np.ndarray) -> np.ndarray:
    """Request array X[N, nL, K] laid out layer by layer in memory (a view of a C-contiguous
    [nL, N, K] array), int16 or int32: the layout the kernels walk, one layer's rows at a time.
    No copy when X is already so (a clustered store's chunks are read that way)."""
    if X.dtype != np.int16 and X.dtype != np.int32:
        X = X.astype(np.int32)
    return np.ascontiguousarray(X.transpose(1, 0, 2)).transpose(1, 0, 2)


def select_rows(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`layer_major(X)[rows]` (a boolean mask or indices over token rows), copied once and
    still laid out layer by layer (`Y[:, rows]` would come back row-major: numpy moves the
    indexed axis first)."""
    idx = np.flatnonzero(rows) if rows.dtype == np.bool_ else rows
    return np.take(layer_major(X).transpose(1, 0, 2), idx, axis=1).transpose(1, 0, 2)


def _rows_by_layer(X: np.ndarray) -> np.ndarray:
    """The C-contiguous [nL, N, K] array behind `layer_major(X)`: what the kernels take (one
    compiled variant per dtype, whatever layout the caller's array has)."""
    return layer_major(X).transpose(1, 0, 2)


def _run(kernel, X, *args):
    """Run a prange kernel on X[N, nL, K] (passed as [nL, N, K]); small inputs on one thread
    (waking threads on a busy machine costs far more than the work: measured 100-300 ms against
    0.03 ms per call)."""
    Y = _rows_by_layer(X)
    if Y.size >= PARALLEL_MIN:
        return kernel(Y, *args)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(Y, *args)
    finally:
        numba.set_num_threads(before)


def step_requests(X, offsets, batch_size, n_items):
    """Batch steps: sequences are grouped in batches of `batch_size` (in trace order) and a step
    is one position across a batch's sequences; its requests are the union of their experts,
    ordered by (rank, sequence). Returns (Xs int32[steps, nL, Kp] padded with -1, step offsets
    per batch)."""
    return _step_requests(_rows_by_layer(X), offsets, batch_size, n_items)


def stack_depths(X, offsets, chunks, n_items, policy, service, window):
    """One pass of a stack (priority) algorithm: hit depths for every capacity at once.

    Returns (hist[nL, n_items+1], requests[nL], distinct[nL, n_items+1]): hist[l, d] counts the
    requests that hit in every cache of capacity >= d (d = 0: a miss at every capacity);
    distinct[l, D] counts sequences with D distinct requested items (for warm start).
    Under TOKEN and SIMULTANEOUS service a request's depth is taken before its token is served.
    """
    return _run(_stack_depths, X, offsets, chunks, n_items, policy, service, window)


def fifo_hits(X, offsets, chunks, n_items, capacities, service):
    """FIFO (not a stack algorithm: Belady's anomaly), simulated once per capacity (cold)."""
    caps = np.ascontiguousarray(capacities, dtype=np.int64)
    return _run(_fifo_hits, X, offsets, chunks, n_items, caps, service)


def static_topc(X, offsets, chunks, n_items):
    """Best static placement: topc[l, C] = sum over sequences of the C largest request counts."""
    return _run(_static_topc, X, offsets, chunks, n_items)


def window_stats(X, offsets, chunks, n_experts, seg):
    """Sliding-window count statistics (see `_window_stats`): (G, S, W) per layer."""
    return _run(_window_stats, X, offsets, chunks, n_experts, seg)


def distinct_hist(X, offsets, chunks, n_items):
    """dist[l, D] = number of sequences whose layer-l requests name D distinct items (warm start)."""
    return _run(_distinct_hist, X, offsets, chunks, n_items)


def repetition_counts(X, offsets):
    """(pairs, top1, share, overlap) of consecutive token rows (see `_repetition_counts`)."""
    return _run(_repetition_counts, X, offsets)
