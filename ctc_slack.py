"""CTC with a `<slack>` token: an exact, fast, standalone loss for masked diffusion language models.

A masked diffusion model fills a canvas of T positions. The target text y has U <= T tokens, so
K = T - U positions must hold a `<slack>` token, which plays the part of the CTC blank and absorbs
the positional uncertainty between target tokens and canvas positions (arXiv 2601.22947). The loss
is the negative log of the total probability of every canvas ("alignment") that collapses to y:

    L = -log sum_{a : B(a) = y} prod_t p_t(a_t)

where the collapse map B is either
    surface  (default, the paper's v2): delete slack; repeated tokens are kept,
    standard (Graves CTC, the paper's v1): merge repeated tokens, then delete slack.
Some canvas positions may be visible (not masked): their token is fixed, so the sum runs only over
completions of the masked positions (the Imputer, Chan et al. 2020, arXiv 2002.08926).

Papers: Graves et al. 2006, "Connectionist Temporal Classification" (ICML); Chan et al. 2020,
"Imputer" (arXiv 2002.08926); Ye et al. 2026, the slack paper (arXiv 2601.22947).

Usage:
    python ctc_slack.py --bench               # speed and memory against torch.nn.functional.ctc_loss
    python ctc_slack.py --bench --quick       # a smaller set of shapes
    python -m pytest tests/test_ctc_slack.py  # exactness tests (brute force, F.ctc_loss, gradcheck)

Cost, surface collapse (algorithm="band", the default): K+1 sequential steps (K = T - U slacks)
of O(B * U) vectorized work, memory O(B * (K+1) * (U+1)); standard collapse: the usual loop over
T positions and 2U+1 states under autograd, O(B * T * U) time and memory. The recursions run in
float64 whatever the input dtype (see "One row in closed form" for why); the result has the
input dtype.

On CPU the band runs many small ops in sequence: on a machine whose cores are busy with other
work, torch.set_num_threads(1) (or --threads 1 for the benchmark) can make it several times faster.

This file imports only torch; copy it alone into another codebase.
"""

import argparse
import json
import time

import torch
from torch.nn.functional import pad

# A stand-in for log 0 in the slow reference loops. It is finite because -inf makes autograd produce
# NaN gradients (inf - inf); any path through it is smaller than any real path by ~1e30, so it adds
# exactly nothing in float64. Finite log-probs are assumed to be above -1e20.
NEG_TIME = -1e30


def collapse_tokens(seq, slack_id, collapse="surface"):
    """The collapse map B on a python list. surface: drop slack. standard: merge runs of equal
    tokens, then drop slack (so `a a <slack> a` -> `a a`, `a a a` -> `a`)."""
    assert collapse in ("surface", "standard"), f"unknown collapse {collapse!r}"
    if collapse == "standard":
        seq = [x for i, x in enumerate(seq) if i == 0 or x != seq[i - 1]]
    return [x for x in seq if x != slack_id]


# ----------------------------------------------------------------------------------------------
# The surface lattice is a band.
#
# With the surface collapse every position either emits the next target token or a slack, and
# exactly K = T - U positions emit slack. Name a state (u, d): u tokens and d slacks emitted, after
# t = u + d positions. Drawn for U = 4, K = 2 (each arrow consumes one canvas position):
#
#     d=0   (0,0) -y1-> (1,0) -y2-> (2,0) -y3-> (3,0) -y4-> (4,0)        right: emit y[u+1]
#             |s        |s          |s          |s          |s          down:  emit slack
#     d=1   (0,1) -y1-> (1,1) -y2-> (2,1) -y3-> (3,1) -y4-> (4,1)
#             |s        |s          |s          |s          |s
#     d=2   (0,2) -y1-> (1,2) -y2-> (2,2) -y3-> (3,2) -y4-> (4,2) = end, t = T
#
# An alignment is a monotone path from (0,0) to (U,K). A loop over time would take T steps over
# the U+1 states; here the lattice has only K+1 rows, and each row is solved in closed form, so
# the loop runs over the slack count: K+1 steps, usually far fewer than T. Work and memory are
# O(B * (K+1) * (U+1)), not the O(B * T * U) of a time loop over all 2U+1 CTC states.
#
# Both arrows into (u, d) consume the same position t = u + d - 1, so one gather reads them:
#     tok[d, u] = log p_{u+d-1}(y[u])   (edge (u-1,d) -> (u,d), u >= 1; y is 1-indexed here)
#     slk[d, u] = log p_{u+d-1}(slack)  (edge (u,d-1) -> (u,d), d >= 1)
# ----------------------------------------------------------------------------------------------


def _band_index(targets, T_b, U_b, slack_id, T, V):
    """Where each band entry reads log_probs: flat index t * V + v (B, 2, K+1, U+1), the position
    t (1, 1, K+1, U+1), the token v (B, 2, 1, U+1), and which entries exist (B, 2, K+1, U+1)."""
    B, dev = targets.shape[0], targets.device
    K_b = (T_b - U_b).clamp(min=0)
    K1, U1 = int(K_b.max()) + 1, int(U_b.max()) + 1
    d = torch.arange(K1, device=dev).view(1, 1, K1, 1)
    u = torch.arange(U1, device=dev).view(1, 1, 1, U1)
    t = (u + d - 1).clamp(0, T - 1)  # (1, 1, K+1, U+1): the position consumed on entering (u, d)
    # v = y[u] for the token edge (u-1 -> u), slack for the slack edge; clamped padding is masked.
    y = targets[:, : U1 - 1].long().clamp(0, V - 1)
    y = torch.cat([y.new_full((B, 1), slack_id), y], 1)  # (B, U+1): y[u], y[0] a placeholder
    v = torch.stack([y, torch.full_like(y, slack_id)], 1).view(B, 2, 1, U1)  # (B, 2, 1, U+1)
    # The edge exists if it stays inside the example: u <= U, d <= K, t < T; u >= 1 for a token
    # edge, d >= 1 for a slack edge.
    Tb, Ub, Kb = T_b.view(B, 1, 1, 1), U_b.view(B, 1, 1, 1), K_b.view(B, 1, 1, 1)
    inside = (u + d - 1 < Tb) & (u <= Ub) & (d <= Kb)  # (B, 1, K+1, U+1)
    edge = torch.cat([(u >= 1).expand(1, 1, K1, U1), (d >= 1).expand(1, 1, K1, U1)], 1)
    return (t * V + v).view(B, -1), t, v, inside & edge


def _band_emissions(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
    """Gather the band once: em (B, 2, K+1, U+1) float64 (em[:, 0] = tok, em[:, 1] = slk); free
    (same shape, bool: the entry is a real, differentiable log-prob); neg (B, 1), the stand-in for
    log 0; low (B,), a lower bound on any allowed path. Entries that no alignment may use (outside
    the example, contradicting a visible position, a -inf log-prob) become neg; entries at visible
    positions that agree become 0 (probability 1). Memory O(B * (K+1) * (U+1)), never O(B*T*U)."""
    B, T, V = log_probs.shape
    flat, t, v, valid = _band_index(targets, T_b, U_b, slack_id, T, V)
    K1, U1 = t.shape[2], t.shape[3]
    em = log_probs.reshape(B, T * V).gather(1, flat).view(B, 2, K1, U1).double()
    valid = valid & torch.isfinite(em)
    visible = torch.zeros_like(valid)
    if canvas is not None:
        c = canvas.long().gather(1, t.view(1, -1).expand(B, -1)).view(B, 1, K1, U1)
        visible = c != mask_id  # (B, 1, K+1, U+1): the entry's position is visible
        valid = valid & (~visible | (c == v))  # a visible position allows only its own token
    free = valid & ~visible
    em = torch.where(free, em, 0.0)  # (B, 2, K+1, U+1)
    # The stand-in for log 0. Every path uses U token edges and K slack edges, so an allowed path
    # has log-prob >= low = U * min(tok) + K * min(slk) over allowed entries. A path through a
    # forbidden entry scores <= neg, and there are fewer than 4^T paths, so with
    # neg = low - 2T - 100 forbidden paths add less than e^-100 relative to the true sum (this
    # assumes log-probs <= 0, as log-softmax outputs are). A fixed stand-in such as -1e4 is not
    # enough: at T = 1000 a real path easily scores below -1e4. Keeping |neg| as small as this
    # also keeps the cumulative sums of each row (below) small, hence precise.
    big = torch.where(valid, em, float("inf")).amin(dim=(2, 3))  # (B, 2)
    big = torch.where(torch.isfinite(big), big, 0.0)
    K_b = (T_b - U_b).clamp(min=0)
    low = U_b * big[:, 0] + K_b * big[:, 1]  # (B,)
    neg = (low - 2 * T_b - 100).view(B, 1).double()
    em = torch.where(valid, em, neg.view(B, 1, 1, 1))
    em[:, 0, :, 0] = 0.0  # no token edge into u = 0: a placeholder, a constant under the cumsum
    return em, free, neg, low


# One row in closed form. Within row d the recurrence is
#     F_d(u) = logaddexp(F_d(u-1) + tok_d(u), E_d(u)),   E_d(u) = F_{d-1}(u) + slk_d(u)
# (E: the entries from the row above). Unrolled, F_d(u) = logsumexp_{j<=u} [E_d(j) + tok_d(j+1)
# + ... + tok_d(u)], that is, with the running sum C_d(u) = tok_d(1) + ... + tok_d(u):
#     F_d(u) = C_d(u) + logcumsumexp_j (E_d(j) - C_d(j))
# one cumsum and one logcumsumexp per row instead of a loop over u. Backwards (suffix sums):
#     G_d(u) = logaddexp(tok_d(u+1) + G_d(u+1), E'_d(u)) = logsumexp_{j>=u} [E'_d(j) + C_d(j) - C_d(u)]
# Why float64: C grows like (number of forbidden entries) * |neg|, and in float32 the difference
# C(u) - C(j) then loses every digit of the small terms once visible tokens pin positions. In
# float64 the absolute error in log space is about 1e-16 * |C|: ~1e-9 at T = 1024 with half of the
# positions visible. neg must be finite: with -inf, E - C would be inf - inf = NaN.
# With max in place of logsumexp (cummax) the same line gives the Viterbi row (_align_surface).


class _BandLogZ(torch.autograd.Function):
    """log Z = log sum over surface alignments (the band DP), with a hand-written backward
    (the forward-backward algorithm). Autograd through the K+1 rows would be exact too, but
    slower, and would keep every intermediate of every row. Kept for backward: the band em
    (float64), its free mask and the forward rows F (float64), 26 bytes per band cell, against
    F.ctc_loss's float32 (B, T, 2U+1) table. Outputs log Z (B,) and feasible (B,) (bool)."""

    @staticmethod
    def forward(ctx, log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
        em, free, neg, low = _band_emissions(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id)
        B, _, K1, U1 = em.shape
        cum = em[:, 0].cumsum(2)  # (B, K+1, U+1): C of every row at once
        # The closed form above, with E - C = F_{d-1} + (slk_d - C_d) and slk - C made once for
        # all rows: three small ops per row.
        slk_minus_cum = (em[:, 1] - cum).unbind(1)  # K+1 rows of (B, U+1)
        cum = cum.unbind(1)
        u = torch.arange(U1, device=em.device)
        # Row 0 starts at (0, 0) with probability 1; log 0 (neg) at every other u.
        start = torch.where(u == 0, 0.0, neg)  # (B, U+1)
        rows = []
        for d in range(K1):  # K+1 steps, not T: each step solves a whole row
            # (u, d) is entered from above by a slack: E_d(u) = F_{d-1}(u) + slk_d(u).
            e_minus_c = start - cum[0] if d == 0 else rows[-1] + slk_minus_cum[d]
            rows.append(cum[d] + torch.logcumsumexp(e_minus_c, 1))  # F_d = C + lcse(E - C)
        log_fwd = torch.stack(rows, 1)  # (B, K+1, U+1)
        K_b = (T_b - U_b).clamp(min=0)
        logz = log_fwd[torch.arange(B, device=em.device), K_b, U_b]  # each example at its own end
        # Allowed totals are >= low; by the choice of neg, infeasible ones sit below low - 100.
        feasible = (T_b >= U_b) & (logz >= low - 30)
        ctx.save_for_backward(targets, T_b, U_b, em, free, neg, log_fwd, logz, feasible)
        ctx.slack_id, ctx.shape, ctx.dtype = slack_id, log_probs.shape, log_probs.dtype
        ctx.mark_non_differentiable(feasible)
        return logz, feasible

    @staticmethod
    def backward(ctx, grad_logz, _):
        targets, T_b, U_b, em, free, neg, log_fwd, logz, feasible = ctx.saved_tensors
        B, _, K1, U1 = em.shape
        # The backward rows run right to left; flip u once for the whole band, not once per row:
        # in flipped coordinates the suffix form above is G = logcumsumexp(E' + C) - C.
        cum = em[:, 0].cumsum(2).flip(2)  # (B, K+1, U+1), u reversed
        slk_plus_cum = (em[:, 1, 1:].flip(2) + cum[:, :-1]).unbind(1)  # slk_{d+1} + C_d, d < K
        cum = cum.unbind(1)
        K_b = (T_b - U_b).clamp(min=0).view(B, 1)
        ragged = bool((K_b != K1 - 1).any())  # examples of different K: mask rows past their K
        u = torch.arange(U1, device=em.device)
        end = torch.where(u == U_b.view(B, 1), 0.0, neg).flip(1)  # (B, U+1): log 1 at (U, K)
        rows = []
        for d in reversed(range(K1)):
            # G_d(u) = log sum of path suffixes from (u, d) to (U, K). The entries are the slack
            # edges down: E'_d(u) = slk_{d+1}(u) + G_{d+1}(u); row K itself starts at the end.
            e_plus_c = end + cum[d] if d == K1 - 1 else rows[-1] + slk_plus_cum[d]
            if ragged:  # rows past an example's own K hold log 0; its row K starts at the end
                e_plus_c = torch.where(d == K_b, end + cum[d], torch.where(d > K_b, neg + cum[d], e_plus_c))
            rows.append(torch.logcumsumexp(e_plus_c, 1) - cum[d])
        log_bwd = torch.stack(rows[::-1], 1).flip(2)  # (B, K+1, U+1), u in order again
        # Edge posterior = exp(F(source) + edge + G(target) - log Z), at most 1: the clamp guards
        # only the forbidden region of infeasible rows, whose gradient is zero anyway.
        post = torch.zeros_like(em)  # (B, 2, K+1, U+1)
        lz = logz.view(B, 1, 1)
        post[:, 0, :, 1:] = log_fwd[:, :, :-1] + em[:, 0, :, 1:] + log_bwd[:, :, 1:] - lz  # tok
        post[:, 1, 1:, :] = log_fwd[:, :-1, :] + em[:, 1, 1:, :] + log_bwd[:, 1:, :] - lz  # slk
        post = post.clamp_(max=0).exp_()
        # d log Z / d log p_t(v) = sum of the posteriors of the edges that read (t, v).
        g = (grad_logz * feasible).view(B, 1, 1, 1).to(post.dtype)
        grad_em = torch.where(free, post * g, 0.0).view(B, -1)
        T, V = ctx.shape[1], ctx.shape[2]
        flat = _band_index(targets, T_b, U_b, ctx.slack_id, T, V)[0]
        grad = torch.zeros((B, T * V), dtype=ctx.dtype, device=em.device)
        grad = grad.scatter_add_(1, flat, grad_em.to(ctx.dtype)).view(B, T, V)
        return grad, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# Slow exact references: loops over time, one canvas position per step. The standard collapse
# uses only this one: it also fits a band, but each cell would need two states (inside a run of a
# token, or of slack) and a gate between equal tokens; the familiar Graves loop is kept instead.
# ----------------------------------------------------------------------------------------------


def _time_emissions(log_probs, labels, canvas, mask_id):
    """e[b, t, s] = log p_t(labels[b, s]) (B, T, S) in float64, with the canvas applied: a visible
    position has log-prob 0 for its own token and log 0 (NEG_TIME) for every other."""
    T = log_probs.shape[1]
    e = log_probs.gather(2, labels[:, None, :].expand(-1, T, -1)).double()  # (B, T, S)
    ok = torch.isfinite(e)
    if canvas is not None:
        visible = (canvas != mask_id)[:, :, None]  # (B, T, 1)
        ok = ok & (~visible | (canvas.long()[:, :, None] == labels[:, None, :]))
        e = torch.where(visible, 0.0, e)
    return torch.where(ok, e, NEG_TIME)


def _surface_time(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
    """Surface collapse, one step per position. log_fwd_t(u) = log prob that positions 0..t emit
    exactly y[1..u] (plus slack):  log_fwd_t(u) = logaddexp(log_fwd_{t-1}(u) + log p_t(slack),
    log_fwd_{t-1}(u-1) + log p_t(y[u])). Cost O(B * T * U) time and memory."""
    B, T, V = log_probs.shape
    U1 = int(U_b.max()) + 1
    y = targets[:, : U1 - 1].long().clamp(0, V - 1)
    labels = torch.cat([y.new_full((B, 1), slack_id), y], 1)  # (B, U+1): slack, y[1..U]
    e = _time_emissions(log_probs, labels, canvas, mask_id)  # (B, T, U+1)
    u = torch.arange(U1, device=log_probs.device)
    log_fwd = torch.where(u == 0, 0.0, NEG_TIME).double().expand(B, U1)  # before any position
    final = log_fwd.gather(1, U_b[:, None]).squeeze(1)  # the answer when T_b = 0
    ends = set(T_b.tolist())  # read the end only at steps where some example ends
    for t, e_t in enumerate(e.unbind(1)):  # unbind once: per-step indexing makes backward O(T^2)
        moved = pad(log_fwd[:, :-1] + e_t[:, 1:], (1, 0), value=NEG_TIME)  # (B, U+1): emit y[u]
        log_fwd = torch.logaddexp(log_fwd + e_t[:, :1], moved)  # or emit slack at t
        if t + 1 in ends:
            final = torch.where(T_b == t + 1, log_fwd.gather(1, U_b[:, None]).squeeze(1), final)
    return final, (T_b >= U_b) & (final > NEG_TIME / 2)


def _standard_time(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
    """Standard (Graves) collapse: states s = 0..2U of the extended label l' = (slack, y1, slack,
    y2, ..., yU, slack). From s a step may stay, go to s+1, or skip to s+2 when l'(s+2) is a token
    different from l'(s): skipping the slack between two equal tokens would merge them.
        log_fwd_t(s) = log p_t(l'(s)) + logsumexp(log_fwd_{t-1}(s), log_fwd_{t-1}(s-1),
                                                   log_fwd_{t-1}(s-2) if skip allowed)
    The end is s = 2U or 2U-1 after T_b positions. Cost O(B * T * U) time and memory."""
    B, T, V = log_probs.shape
    U = int(U_b.max())
    S = 2 * U + 1
    dev = log_probs.device
    ext = torch.full((B, S), slack_id, dtype=torch.long, device=dev)
    ext[:, 1::2] = targets[:, :U].long().clamp(0, V - 1)  # (B, 2U+1)
    skip = torch.zeros((B, S), dtype=torch.bool, device=dev)
    skip[:, 3::2] = ext[:, 3::2] != ext[:, 1:-2:2]  # (B, 2U+1): may come from s-2
    skip_bias = torch.where(skip, 0.0, NEG_TIME).double()
    e = _time_emissions(log_probs, ext, canvas, mask_id)  # (B, T, 2U+1)
    s = torch.arange(S, device=dev)
    log_fwd = torch.where(s == 0, 0.0, NEG_TIME).double().expand(B, S)  # before any position
    last = torch.stack([2 * U_b, (2 * U_b - 1).clamp(min=0)], 1)  # (B, 2): the two end states
    end_ok = torch.stack([U_b >= 0, U_b >= 1], 1)
    read = lambda lf: torch.where(end_ok, lf.gather(1, last), NEG_TIME).logsumexp(1)  # noqa: E731
    final = read(log_fwd)
    ends = set(T_b.tolist())  # read the end only at steps where some example ends
    for t, e_t in enumerate(e.unbind(1)):  # unbind once: per-step indexing makes backward O(T^2)
        shifted = pad(log_fwd, (2, 0), value=NEG_TIME)  # (B, 2U+3): shifted[:, s+2] = log_fwd(s)
        one, two = shifted[:, 1:-1], shifted[:, :-2] + skip_bias  # from s-1; from s-2 if allowed
        log_fwd = torch.logaddexp(torch.logaddexp(log_fwd, one), two) + e_t  # (B, 2U+1)
        if t + 1 in ends:
            final = torch.where(T_b == t + 1, read(log_fwd), final)
    return final, (T_b >= U_b) & (final > NEG_TIME / 2)


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------


def ctc_slack_loss(log_probs, targets, input_lengths, target_lengths, *, slack_id, canvas=None,
                   mask_id=None, collapse="surface", reduction="mean", zero_infinity=False,
                   algorithm="band"):
    """-log P(y | canvas) = -log sum over alignments a with B(a) = y that agree with the visible
    positions of prod_t p_t(a_t). Arguments mirror torch.nn.functional.ctc_loss, batch-first:
        log_probs (B, T, V) log-softmax outputs (contiguous, else copied once); targets (B, U_max)
        padded (never slack_id);
        input_lengths, target_lengths (B,); slack_id plays the blank.
        canvas (B, T) or None: where canvas != mask_id the position is visible, fixed to that token.
        collapse: "surface" (delete slack) or "standard" (merge repeats, then delete slack).
        reduction: "none" (B,), "sum", or "mean" (each loss / max(target length, 1), then averaged).
        zero_infinity: infeasible examples give 0 (and zero gradient) instead of +inf.
        algorithm: "band" (fast, surface only; standard falls back to time) or "time" (reference).
    Infeasible examples (T < U, a visible token no alignment can use, too few positions for
    standard repeats) give +inf, never NaN; their gradient is zero. Computed in float64, returned
    in the dtype of log_probs."""
    assert log_probs.dim() == 3, "log_probs must be (B, T, V)"
    assert targets.dim() == 2 and targets.shape[0] == log_probs.shape[0], "targets must be (B, U_max)"
    assert collapse in ("surface", "standard"), f"unknown collapse {collapse!r}"
    assert algorithm in ("band", "time"), f"unknown algorithm {algorithm!r}"
    assert reduction in ("none", "sum", "mean"), f"unknown reduction {reduction!r}"
    assert canvas is None or mask_id is not None, "a canvas needs mask_id"
    dev = log_probs.device
    T_b = torch.as_tensor(input_lengths, device=dev).long()
    U_b = torch.as_tensor(target_lengths, device=dev).long()
    assert int(T_b.max()) <= log_probs.shape[1], "input_lengths exceed log_probs.shape[1]"
    assert int(U_b.max()) <= targets.shape[1], "target_lengths exceed targets.shape[1]"
    args = (log_probs, targets, T_b, U_b, slack_id, canvas, mask_id)
    if collapse == "surface" and algorithm == "band":
        logz, ok = _BandLogZ.apply(*args)
    elif collapse == "surface":
        logz, ok = _surface_time(*args)
    else:
        logz, ok = _standard_time(*args)
    bad = 0.0 if zero_infinity else float("inf")
    nll = torch.where(ok, -logz, bad).to(log_probs.dtype)  # (B,); where() keeps NaN out of grads
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return (nll / U_b.clamp(min=1).to(nll.dtype)).mean()


# ----------------------------------------------------------------------------------------------
# The most probable alignment (Viterbi): the same lattices with max in place of logsumexp.
# ----------------------------------------------------------------------------------------------


def _fill_canvas(targets, T_b, U_b, is_slack, slack_id):
    """A (B, T) canvas with slack where is_slack (and past T_b) and y, in order, everywhere else."""
    B, T = is_slack.shape
    t = torch.arange(T, device=is_slack.device)
    tok = ~is_slack & (t < T_b[:, None])  # (B, T): positions that hold a target token
    # The k-th token position (counting from 0) holds y[k]: k = (number of token positions so far) - 1.
    rank = (tok.long().cumsum(1) - 1).clamp(0, max(targets.shape[1] - 1, 0))  # (B, T)
    y = targets.long().gather(1, rank) if targets.shape[1] else torch.zeros_like(rank)
    return torch.where(tok & (rank < U_b[:, None]), y, slack_id)


@torch.no_grad()
def _align_surface(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
    """Viterbi over the band. Row d: F(u) = C(u) + max_{j<=u} (E(j) - C(j)); the argmax j (from
    cummax) is where the best path entered row d, by a slack at position j + d - 1. Following
    these entry points from (U, K) up to row 0 places all K slacks."""
    em, _, neg, low = _band_emissions(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id)
    B, _, K1, U1 = em.shape
    cum_tok, slk = em[:, 0].cumsum(2).unbind(1), em[:, 1].unbind(1)
    entry = torch.where(torch.arange(U1, device=em.device) == 0, 0.0, neg)  # (B, U+1)
    rows, args = [], []  # best score of each state, and where its row was entered
    for d in range(K1):
        if d > 0:
            entry = rows[-1] + slk[d]  # E_d(u) = F_{d-1}(u) + slk_d(u), as in the sum
        # F_d(u) = C(u) + max_{j<=u} (E(j) - C(j)); the argmax j is kept for the walk back.
        best, arg = torch.cummax(entry - cum_tok[d], 1)  # (B, U+1) each
        rows.append(cum_tok[d] + best)
        args.append(arg)
    K_b = (T_b - U_b).clamp(min=0)
    score = torch.stack(rows, 1)[torch.arange(B, device=em.device), K_b, U_b]  # (B,)
    feasible = (T_b >= U_b) & (score >= low - 30)
    # Trace back: in row d (d <= K) the path entered at u = j, by a slack at position j + d - 1.
    T = log_probs.shape[1]
    is_slack = torch.zeros((B, T + 1), dtype=torch.bool, device=em.device)
    u = U_b.clone()  # (B,): where the walk is in the current row; it starts at the end (U, K)
    for d in range(K1 - 1, 0, -1):  # rows above an example's own K are skipped (active = False)
        active = d <= K_b
        j = args[d].gather(1, u[:, None]).squeeze(1)  # (B,)
        pos = torch.where(active, j + d - 1, T)  # column T is a dump for inactive rows
        is_slack[torch.arange(B, device=em.device), pos] = True
        u = torch.where(active, j, u)
    # Infeasible rows: tail placement (the targets first, then slack; cut at T when T < U).
    t = torch.arange(T, device=em.device)
    is_slack = torch.where(feasible[:, None], is_slack[:, :T], t >= U_b[:, None])
    return _fill_canvas(targets, T_b, U_b, is_slack, slack_id)


@torch.no_grad()
def _align_standard(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
    """Viterbi over the 2U+1-state lattice, one step per position, keeping for every state which
    predecessor (stay, s-1, s-2) was best; then a walk back from the best end state."""
    B, T, V = log_probs.shape
    U = int(U_b.max())
    S, dev = 2 * U + 1, log_probs.device
    ext = torch.full((B, S), slack_id, dtype=torch.long, device=dev)
    ext[:, 1::2] = targets[:, :U].long().clamp(0, V - 1)  # (B, 2U+1)
    skip = torch.zeros((B, S), dtype=torch.bool, device=dev)
    skip[:, 3::2] = ext[:, 3::2] != ext[:, 1:-2:2]
    skip_bias = torch.where(skip, 0.0, NEG_TIME).double()
    e = _time_emissions(log_probs, ext, canvas, mask_id)  # (B, T, 2U+1)
    log_fwd = torch.where(torch.arange(S, device=dev) == 0, 0.0, NEG_TIME).double().expand(B, S)
    # As in _standard_time, with max for logsumexp; each example's best end state is kept at t = T_b.
    last = torch.stack([2 * U_b, (2 * U_b - 1).clamp(min=0)], 1)  # (B, 2): the two end states
    end_ok = torch.stack([U_b >= 0, U_b >= 1], 1)
    score = torch.full((B,), NEG_TIME, dtype=torch.float64, device=dev)
    state = 2 * U_b
    back = []
    for t, e_t in enumerate(e.unbind(1)):
        shifted = pad(log_fwd, (2, 0), value=NEG_TIME)  # (B, 2U+3): shifted[:, s+2] = log_fwd(s)
        one, two = shifted[:, 1:-1], shifted[:, :-2] + skip_bias
        three = torch.stack([log_fwd, one, two])  # (3, B, 2U+1)
        best, arg = three.max(0)
        log_fwd = best + e_t
        back.append(arg)  # (B, S): 0 stay, 1 from s-1, 2 from s-2
        ends = torch.where(end_ok, log_fwd.gather(1, last), 2 * NEG_TIME)  # (B, 2)
        at_end = T_b == t + 1
        score = torch.where(at_end, ends.max(1).values, score)
        state = torch.where(at_end, last.gather(1, ends.argmax(1, keepdim=True)).squeeze(1), state)
    # Walk back: at each position write the label of the current state, then move to its best
    # predecessor. Positions at or past an example's T_b stay slack.
    out = torch.full((B, T), slack_id, dtype=torch.long, device=dev)
    for t in range(T - 1, -1, -1):
        active = t < T_b
        out[:, t] = torch.where(active, ext.gather(1, state[:, None]).squeeze(1), slack_id)
        prev = (state - back[t].gather(1, state[:, None]).squeeze(1)).clamp(min=0)  # 0 if infeasible
        state = torch.where(active, prev, state)
    feasible = (T_b >= U_b) & (score > NEG_TIME / 2)
    tail = _fill_canvas(targets, T_b, U_b, torch.arange(T, device=dev) >= U_b[:, None], slack_id)
    return torch.where(feasible[:, None], out, tail)


def ctc_slack_align(log_probs, targets, input_lengths, target_lengths, *, slack_id, canvas=None,
                    mask_id=None, collapse="surface"):
    """The single most probable alignment consistent with the canvas, as a (B, T) LongTensor of
    tokens and slack (T = log_probs.shape[1]; positions >= input_length hold slack_id). It
    collapses to y and agrees with every visible position. Used to place slack where the model
    wants it (training) and to show where slack went (decoding). Ties are broken arbitrarily.
    Infeasible rows (T < U, or no alignment agrees with the canvas) get the tail placement: the
    targets first, then slack (only the first T targets when T < U), ignoring the canvas."""
    assert collapse in ("surface", "standard"), f"unknown collapse {collapse!r}"
    assert canvas is None or mask_id is not None, "a canvas needs mask_id"
    dev = log_probs.device
    T_b = torch.as_tensor(input_lengths, device=dev).long()
    U_b = torch.as_tensor(target_lengths, device=dev).long()
    assert int(T_b.max()) <= log_probs.shape[1], "input_lengths exceed log_probs.shape[1]"
    args = (log_probs.detach(), targets, T_b, U_b, slack_id, canvas, mask_id)
    return _align_surface(*args) if collapse == "surface" else _align_standard(*args)


# ----------------------------------------------------------------------------------------------
# Benchmark: python ctc_slack.py --bench
# ----------------------------------------------------------------------------------------------


def _bench_case(B, T, V, rate, visible, device, gen):
    """Random log-probs (a leaf), targets and, when visible > 0, a canvas that shows that fraction
    of a random reference alignment (the slack in random places). Slack is V-1, mask is V-2."""
    K = round(rate * T)
    logits = torch.randn(B, T, V, generator=gen)
    lp = logits.log_softmax(-1).to(device).requires_grad_()
    y = torch.randint(0, V - 2, (B, T - K), generator=gen)
    canvas = None
    if visible > 0:
        keys = torch.rand(B, T, generator=gen)
        is_slack = keys <= keys.kthvalue(K, 1, keepdim=True).values if K else keys < 0  # K per row
        z0 = _fill_canvas(y, torch.full((B,), T), torch.full((B,), T - K), is_slack, V - 1)
        canvas = torch.where(torch.rand(B, T, generator=gen) < visible, z0, V - 2).to(device)
    lens = (torch.full((B,), T, device=device), torch.full((B,), T - K, device=device))
    return lp, y.to(device), lens, canvas


def _measure(loss_fn, lp, repeats):
    """Median wall time of forward + backward (ms), and memory (MB): on CUDA the peak allocated
    during the call; on CPU the bytes of the unique storages autograd saves for backward plus the
    output (the leaf log_probs excluded: both methods share it)."""
    cuda = lp.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    saved = {}

    def pack(x):
        st = x.untyped_storage()
        if st.data_ptr() != lp.untyped_storage().data_ptr():
            saved[st.data_ptr()] = st.nbytes()
        return x

    # Autograd calls pack() for every tensor it saves for backward; keyed by storage, a tensor
    # saved twice (or a view of one already saved) is counted once.
    times = []
    for i in range(repeats + 1):  # the first run warms up
        lp.grad = None
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            out = loss_fn()
        out.backward()
        sync()
        times.append(time.perf_counter() - start)
        mem = torch.cuda.max_memory_allocated() - base if cuda else sum(saved.values()) + 8
        saved.clear()
    return sorted(times[1:])[repeats // 2] * 1e3, mem / 2**20


def bench(args):
    """Print (and optionally write as JSON) the speed and memory of ctc_slack_loss against
    torch.nn.functional.ctc_loss (same log_probs, reduction 'sum', blank = slack). F.ctc_loss
    cannot take a canvas, so a canvas row is compared with F.ctc_loss at the same shape without one."""
    from torch.nn.functional import ctc_loss
    gen = torch.Generator().manual_seed(0)
    if args.shapes:  # e.g. --shapes 2x64x11 --rates 0.1
        shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
        cases = [(*shape, float(r)) for shape in shapes for r in args.rates.split(",")]
    else:
        Ts, rates = ([512, 1024], [0.05, 0.1]) if args.quick else ([512, 1024, 4096], [0.05, 0.1, 0.25])
        cases = [(8, T, 259, r) for T in Ts for r in rates] + [(32, 256, 32000, 0.1)]
    head = f"{'B':>3} {'T':>5} {'V':>6} {'slack':>5} {'canvas':>6} {'collapse':>8} | {'ours ms':>8} " \
           f"{'F ms':>8} {'ratio':>6} | {'ours MB':>8} {'F MB':>8} {'ratio':>6}"
    print(f"device {args.device}, threads {torch.get_num_threads()}, median of {args.repeats}\n{head}")
    rows = []
    for B, T, V, rate in cases:
        # The baseline: F.ctc_loss wants (T, B, V); a transposed view of the same leaf.
        lp, y, (T_b, U_b), _ = _bench_case(B, T, V, rate, 0.0, args.device, gen)
        ref = _measure(lambda: ctc_loss(lp.transpose(0, 1), y, T_b, U_b, blank=V - 1,
                                        reduction="sum"), lp, args.repeats)
        runs = [("surface", 0.0), ("surface", 0.5)]
        if T <= args.standard_max_t:
            runs.append(("standard", 0.0))
        for collapse, visible in runs:
            lp, y, (T_b, U_b), canvas = _bench_case(B, T, V, rate, visible, args.device, gen)
            ours = _measure(lambda: ctc_slack_loss(lp, y, T_b, U_b, slack_id=V - 1, canvas=canvas,
                                                   mask_id=V - 2, collapse=collapse, reduction="sum"),
                            lp, args.repeats)
            row = dict(B=B, T=T, V=V, slack=rate, visible=visible, collapse=collapse, ours_ms=ours[0],
                       ref_ms=ref[0], ours_mb=ours[1], ref_mb=ref[1])
            rows.append(row)
            print(f"{B:>3} {T:>5} {V:>6} {rate:>5.0%} {visible:>6.0%} {collapse:>8} | {ours[0]:>8.1f} "
                  f"{ref[0]:>8.1f} {ours[0] / ref[0]:>6.2f} | {ours[1]:>8.1f} {ref[1]:>8.1f} "
                  f"{ours[1] / ref[1]:>6.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", action="store_true", help="run the speed/memory benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer shapes: T in {512, 1024}, slack "
                        "5%% and 10%%, plus B=32 T=256 V=32000 (default: T up to 4096, slack up to 25%%)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per shape, after one "
                        "warm-up; the median is reported (default 3)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default 0: "
                        "torch's default). On a busy machine 1 gives steadier timings")
    parser.add_argument("--standard-max-t", type=int, default=1024, help="time the standard "
                        "collapse (a loop over time under autograd) only up to this T (default 1024)")
    parser.add_argument("--shapes", default="", help="comma-separated BxTxV shapes to run instead "
                        "of the preset ones, e.g. 8x1024x259")
    parser.add_argument("--rates", default="0.1", help="comma-separated slack rates K/T for --shapes")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bench:
        bench(args)
    else:
        parser.print_help()
