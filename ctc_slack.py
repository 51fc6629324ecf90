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
completions of the masked positions (the Imputer, Chan et al. 2020, arXiv 2002.08926). CTC itself:
Graves et al. 2006, "Connectionist Temporal Classification" (ICML).

Sections: 1. the definition: the collapse map, and the loss as a plain recursion over time
(slow, exact); 2. the fast paths: surface as a band of K+1 rows with a hand-written backward,
standard through PyTorch's CTC kernel; 3. the most probable alignment (Viterbi); 4. the loss to
call, ctc_slack_loss (F.ctc_loss's arguments, batch-first); 5. the porter API, in the order a
training step calls it: sft_layout (an SFT batch to targets and a canvas that grows instead of
cutting a row's end), slack_count, place_slack / align_slack (the reference canvas), build_canvas,
slack_ctc_term (the loss from the model's logits); then decoding: masked_canvas, slack_last,
read_outputs; 6. the argument checks, one per public function, called at its top (Python finds
them when a call runs, so the method reads without them).

What a porter passes: ids as plain ints of the vocabulary (no defaults); logits batch-first
(B, T, V) with SUBS applied (MASK at -inf or a finite ban such as -1e6; mask_id >= V: no MASK
column); a log-prob below LOG_ZERO counts as -inf (probability 0 in every dtype); lengths (B,),
one int, a (B, 1) column or a bool prefix mask (LLaDA's prompt_index); weight w(t) per row
(1 / p_mask, never p_mask). What comes back for input it cannot score: an infeasible example
(T_b < U_b, a visible token no alignment can use, too few positions for standard repeats, slack
or a target banned) gives +inf in ctc_slack_loss, as in F.ctc_loss, and is a ValueError naming
the cause in slack_ctc_term (0 in both with zero_infinity); a NaN among an example's log-probs
gives that example a NaN loss and no gradient; a malformed argument is a TypeError or ValueError
naming it and, for another codebase's form, the one-line fix.

Cost (algorithm="band", the default): surface, K+1 sequential steps of O(B * U) vectorized work
in float64, memory O(B * (K+1) * (U+1)), run per group of rows of similar shape (band_groups) so
that an uneven batch costs at most twice its rows' own cells, not B x K_max x U_max; standard,
PyTorch's CTC kernel on edited log-probs, at about F.ctc_loss's time and memory. Tests:
tests/test_ctc_slack.py, tests/test_uneven.py; speed: bench.py ctc.

This file imports only torch; copy it alone into another codebase.
"""

import math
import numbers
import operator

import torch
from torch.nn.functional import pad

# log 0 in the slow reference loops: finite, as -inf gives NaN gradients (inf - inf); a path
# through it adds exactly nothing in float64 (log-probs below LOG_ZERO are read as log 0 too).
NEG_TIME = -1e30

# A log-prob below LOG_ZERO is log 0: its exp is 0 in every float dtype (float64's smallest number
# above 0 is e^-744.4), so the model's own probability there is 0. Codebases ban a token with a
# finite stand-in (-1e6, torch.finfo(dtype).min); read as it is, such a number would swamp the
# float64 sums that stand in for log 0 here, so every lattice reads it as -inf.
LOG_ZERO = -746.0


def _nonzero(log_p):
    """Where exp(log_p) is a probability above 0: finite and >= LOG_ZERO (not NaN, not -inf)."""
    return torch.isfinite(log_p) & (log_p >= LOG_ZERO)


# ----------------------------------------------------------------------------------------------
# 1. The definition: the collapse map, and the loss as a recursion over canvas positions.
# ----------------------------------------------------------------------------------------------


def collapse_tokens(seq, slack_id, collapse="surface"):
    """The collapse map B on one sequence of ids (a list, or a 1-D tensor), as a list. surface:
    drop slack. standard: merge runs of equal tokens, then drop slack (so `a a <slack> a` ->
    `a a`, `a a a` -> `a`)."""
    seq = _check_collapse_tokens(seq, slack_id, collapse)  # a list of ids
    if collapse == "standard":
        seq = [x for i, x in enumerate(seq) if i == 0 or x != seq[i - 1]]
    return [x for x in seq if x != slack_id]


def _time_emissions(log_probs, labels, canvas, mask_id):
    """e[b, t, s] = log p_t(labels[b, s]) (B, T, S) in float64, with the canvas applied: a visible
    position has log-prob 0 for its own token and log 0 (NEG_TIME) for every other."""
    T = log_probs.shape[1]
    e = log_probs.gather(2, labels[:, None, :].expand(-1, T, -1)).double()  # (B, T, S)
    ok = _nonzero(e)
    if canvas is not None:
        visible = (canvas != mask_id)[:, :, None]  # (B, T, 1)
        ok = ok & (~visible | (canvas.long()[:, :, None] == labels[:, None, :]))
        e = torch.where(visible, 0.0, e)
    return torch.where(ok, e, NEG_TIME)


def _surface_time(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
    """Surface collapse, one position at a time. With log_fwd_t(u) = log P(positions 0..t emit
    y[1..u] and slack):
        log_fwd_t(u) = logaddexp(log_fwd_{t-1}(u) + log p_t(slack),      the position is slack
                                 log_fwd_{t-1}(u-1) + log p_t(y[u]))     or it emits y[u]
    and log Z = log_fwd_{T-1}(U). O(B * T * U) time and memory (autograd keeps every step)."""
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
    """Standard (Graves) collapse over the extended labels l' = (slack, y1, slack, ..., yU, slack).
    From s a step may stay, go to s+1, or skip to s+2 when l'(s+2) is a token different from l'(s):
        log_fwd_t(s) = log p_t(l'(s)) + logsumexp(log_fwd_{t-1}(s), log_fwd_{t-1}(s-1),
                                                   log_fwd_{t-1}(s-2) if skip allowed)
    The end is s = 2U or 2U-1 after T_b positions. Cost O(B * T * U) time and memory."""
    B, T, V = log_probs.shape
    U, dev = int(U_b.max()), log_probs.device
    ext = torch.full((B, 2 * U + 1), slack_id, dtype=torch.long, device=dev)
    ext[:, 1::2] = targets[:, :U].long().clamp(0, V - 1)  # (B, 2U+1): l'
    # Skipping s-2 -> s jumps over a slack: allowed only between different tokens (else they merge).
    skip = torch.full(ext.shape, NEG_TIME, dtype=torch.float64, device=dev)
    skip[:, 3::2] = torch.where(ext[:, 3::2] != ext[:, 1:-2:2], 0.0, NEG_TIME)
    e = _time_emissions(log_probs, ext, canvas, mask_id)  # (B, T, 2U+1)
    log_fwd = torch.where(torch.arange(2 * U + 1, device=dev) == 0, 0.0, NEG_TIME)
    log_fwd = log_fwd.double().expand(B, -1)  # before any position: at s = 0
    last = torch.stack([2 * U_b, (2 * U_b - 1).clamp(min=0)], 1)  # (B, 2): after slack, after y_U
    end_ok = U_b[:, None] >= torch.arange(2, device=dev)  # (B, 2): 2U-1 exists only when U >= 1

    def read(lf):  # log P(y): the two end states summed, where they exist
        return torch.where(end_ok, lf.gather(1, last), NEG_TIME).logsumexp(1)
    final = read(log_fwd)
    ends = set(T_b.tolist())  # read the end only at steps where some example ends
    for t, e_t in enumerate(e.unbind(1)):  # unbind once: per-step indexing makes backward O(T^2)
        shifted = pad(log_fwd, (2, 0), value=NEG_TIME)  # (B, 2U+3): shifted[:, s+2] = log_fwd(s)
        one, two = shifted[:, 1:-1], shifted[:, :-2] + skip  # from s-1; from s-2 if allowed
        log_fwd = torch.logaddexp(torch.logaddexp(log_fwd, one), two) + e_t  # (B, 2U+1)
        if t + 1 in ends:
            final = torch.where(T_b == t + 1, read(log_fwd), final)
    return final, (T_b >= U_b) & (final > NEG_TIME / 2)


# ----------------------------------------------------------------------------------------------
# 2. The fast paths. Surface: the lattice is a band.
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
# An alignment is a monotone path from (0,0) to (U,K). The lattice has only K+1 rows, each solved
# in closed form, so the loop runs over the slack count: K+1 steps, usually far fewer than T.
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
    # An edge exists inside the example (u <= U, d <= K, t < T): a token edge from u >= 1, a
    # slack edge from d >= 1.
    Tb, Ub, Kb = T_b.view(B, 1, 1, 1), U_b.view(B, 1, 1, 1), K_b.view(B, 1, 1, 1)
    inside = (u + d - 1 < Tb) & (u <= Ub) & (d <= Kb)  # (B, 1, K+1, U+1)
    edge = torch.cat([(u >= 1).expand(1, 1, K1, U1), (d >= 1).expand(1, 1, K1, U1)], 1)
    return (t * V + v).view(B, -1), t, v, inside & edge


def _band_emissions(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
    """Gather the band once: em (B, 2, K+1, U+1) float64 (em[:, 0] = tok, em[:, 1] = slk); free
    (same shape, bool: a real, differentiable log-prob); neg (B, 1), the stand-in for log 0; low
    (B,), a lower bound on any allowed path. Entries no alignment may use (outside the example,
    contradicting a visible position, -inf) become neg; visible ones that agree become 0."""
    B, T, V = log_probs.shape
    flat, t, v, valid = _band_index(targets, T_b, U_b, slack_id, T, V)
    K1, U1 = t.shape[2], t.shape[3]
    em = log_probs.reshape(B, T * V).gather(1, flat).view(B, 2, K1, U1).double()
    valid = valid & _nonzero(em)
    visible = torch.zeros_like(valid)
    if canvas is not None:
        c = canvas.long().gather(1, t.view(1, -1).expand(B, -1)).view(B, 1, K1, U1)
        visible = c != mask_id  # (B, 1, K+1, U+1): the entry's position is visible
        valid = valid & (~visible | (c == v))  # a visible position allows only its own token
    free = valid & ~visible
    em = torch.where(free, em, 0.0)  # (B, 2, K+1, U+1)
    # The stand-in for log 0. Every path uses U token edges and K slack edges, so an allowed path
    # scores >= low = U * min(tok) + K * min(slk) over allowed entries; one through a forbidden
    # entry scores <= neg (log-probs are <= 0). With fewer than 4^T paths, neg = low - 2T - 100
    # leaves forbidden paths under e^-100 of the true sum; a fixed -1e4 is not enough (at T = 1000
    # a real path easily scores below it). A small |neg| also keeps each row's cumsum precise.
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
#     G_d(u) = logaddexp(tok_d(u+1) + G_d(u+1), E'_d(u))
#            = logsumexp_{j>=u} [E'_d(j) + C_d(j) - C_d(u)]
# Why float64: C grows like (number of forbidden entries) * |neg|, and in float32 C(u) - C(j) then
# loses every digit of the small terms; in float64 the error is about 1e-16 * |C|, ~1e-9 at
# T = 1024 with half of the positions visible. neg must be finite: E - C would be inf - inf = NaN.
# With max in place of logsumexp (cummax) the same line gives the Viterbi row (_align_band).


class _BandLogZ(torch.autograd.Function):
    """log Z over surface alignments (the band DP), with a hand-written forward-backward (autograd
    would keep every intermediate of every row): 26 bytes per band cell kept for backward, against
    F.ctc_loss's 4 per (t, state). Outputs log Z (B,) and feasible (B,) (bool)."""

    @staticmethod
    def forward(ctx, log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
        em, free, neg, low = _band_emissions(log_probs, targets, T_b, U_b, slack_id, canvas,
                                             mask_id)
        B, _, K1, U1 = em.shape
        cum = em[:, 0].cumsum(2)  # (B, K+1, U+1): C of every row at once
        # The closed form above, E - C = F_{d-1} + (slk_d - C_d), slk - C made once for all rows.
        slk_minus_cum = (em[:, 1] - cum).unbind(1)  # K+1 rows of (B, U+1)
        cum = cum.unbind(1)
        u = torch.arange(U1, device=em.device)
        start = torch.where(u == 0, 0.0, neg)  # (B, U+1): row 0 starts at (0, 0) with probability 1
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
            # G_d(u) = log sum of suffixes from (u, d) to (U, K); entries E'_d(u) = slk_{d+1}(u) +
            # G_{d+1}(u) come by the slack edges down; row K itself starts at the end.
            e_plus_c = end + cum[d] if d == K1 - 1 else rows[-1] + slk_plus_cum[d]
            if ragged:  # rows past an example's own K hold log 0; its row K starts at the end
                past = torch.where(d > K_b, neg + cum[d], e_plus_c)
                e_plus_c = torch.where(d == K_b, end + cum[d], past)
            rows.append(torch.logcumsumexp(e_plus_c, 1) - cum[d])
        log_bwd = torch.stack(rows[::-1], 1).flip(2)  # (B, K+1, U+1), u in order again
        # Edge posterior = exp(F(source) + edge + G(target) - log Z) <= 1; the clamp guards only
        # infeasible rows, whose gradient is zero anyway.
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


# Uneven batches. The band above is padded to the batch's widest shape: B x (K_max+1) x (U_max+1)
# cells and K_max + 1 steps, so one row with a short target (large K) beside rows with long ones
# (large U) makes every row pay K_max x U_max. Rows of similar shape are therefore grouped, and
# each group runs the band on its own slices (its own T, U and K maxima); autograd carries the
# gradient back through the indexing. The rule (band_groups): sort the rows by (K_b, U_b); a row
# joins the current group while the group's padded band, n_g x (K_g+1) x (U_g+1), stays within
# PAD_FACTOR times the cells its rows need, sum of (K_b+1)(U_b+1), or under SMALL_BAND cells (a
# small band costs its steps' fixed overhead, not its cells, and another group adds steps). So a
# batch allocates at most PAD_FACTOR x its rows' own cells, plus SMALL_BAND per group; an even
# batch is one group and runs the band above unchanged. Each group costs its own K_g + 1 steps.
PAD_FACTOR = 2
SMALL_BAND = 2**16


def band_groups(K_b, U_b):
    """The rows of a batch (K_b, U_b: (B,) slack and target counts) cut into groups by the rule
    above: a list of lists of row indices, each row in exactly one, in (K_b, U_b) order. One pass:
    in that order the group's K maximum is its newest row's, its U maximum and its cells a running
    max and sum."""
    K, U = K_b.tolist(), U_b.tolist()
    groups, u_max, need = [], 0, 0
    for b in sorted(range(len(K)), key=lambda b: (K[b], U[b])):
        cells = (K[b] + 1) * (U[b] + 1)  # the cells row b fills alone
        if groups:
            g_u, g_need = max(u_max, U[b]), need + cells
            padded = (len(groups[-1]) + 1) * (K[b] + 1) * (g_u + 1)  # the joined group's band
            if padded <= PAD_FACTOR * g_need or padded <= SMALL_BAND:
                groups[-1].append(b)
                u_max, need = g_u, g_need
                continue
        groups.append([b])
        u_max, need = U[b], cells
    return groups


def _by_groups(fn, log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
    """fn (_BandLogZ.apply, or the band's Viterbi) on each group of band_groups, on the group's
    own slices; its outputs reassembled in row order: (B,) vectors, and (B, T) alignments with
    slack past a group's T. One group (or an empty batch): fn on the batch as it is."""
    groups = band_groups((T_b - U_b).clamp(min=0), U_b)
    if len(groups) <= 1:
        return fn(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id)
    outs = []
    for g in groups:
        i = torch.tensor(g, device=T_b.device)
        T_g, U_g = max(int(T_b[i].max()), 1), int(U_b[i].max())  # the group's own maxima
        c = None if canvas is None else canvas[i, :T_g]
        outs.append(fn(log_probs[i, :T_g], targets[i, :U_g], T_b[i], U_b[i], slack_id, c,
                       mask_id))
    order = torch.tensor([b for g in groups for b in g], device=T_b.device).argsort()
    single = torch.is_tensor(outs[0])  # one output (an alignment) or a tuple (log Z, feasible)
    parts = [outs] if single else list(zip(*outs))
    T = log_probs.shape[1]
    joined = [torch.cat([pad(x, (0, T - x.shape[1]), value=slack_id) if x.dim() == 2 else x
                         for x in part])[order] for part in parts]
    return joined[0] if single else tuple(joined)


# ----------------------------------------------------------------------------------------------
# Standard: Graves CTC on edited log-probs, so PyTorch's native kernel runs it. A visible
# position is a one-hot emission row (log 1 = 0 for its token, log 0 for every other), and given
# such rows F.ctc_loss sums exactly the alignments that agree with the canvas. Here log 0 is -inf
# itself, not a finite stand-in as in the band: the kernel's recursions treat -inf exactly (a
# forbidden path adds exactly 0, an infeasible row gives nll = +inf), while a finite one slows
# them (every forbidden transition computes an exp that underflows). -inf does give NaN
# gradients, but only at the -inf entries themselves, whose gradient is zeroed by selection.
# ----------------------------------------------------------------------------------------------


def _standard_emissions(log_probs, T_b, canvas, mask_id):
    """The log-probs that F.ctc_loss reads (B, T, V): visible rows one-hot (0 at the token, -inf
    elsewhere), entries of probability 0 (below LOG_ZERO) -inf; free (B, T, V) bool, the entries
    that stay real, differentiable log-probs (_nonzero, at a masked position inside the example)."""
    if log_probs.dtype not in (torch.float32, torch.float64):  # the native kernel's dtypes
        log_probs = log_probs.float()
    B, T, V = log_probs.shape
    keep = torch.arange(T, device=log_probs.device) < T_b[:, None]  # (B, T): inside the example
    if canvas is not None:
        visible = canvas != mask_id  # (B, T)
        keep &= ~visible
    free = _nonzero(log_probs) & keep[..., None]  # (B, T, V)
    lp = torch.where(free, log_probs, float("-inf"))  # (B, T, V)
    if canvas is not None:  # log 1 at the visible token; a token outside the vocabulary: none
        tok = canvas.long().clamp(0, V - 1)[..., None]  # (B, T, 1)
        shown = (visible & (canvas >= 0) & (canvas < V))[..., None]
        lp.scatter_(2, tok, torch.where(shown, 0.0, lp.gather(2, tok)))
    return lp, free


class _StandardLogZ(torch.autograd.Function):
    """log Z of the standard collapse by torch's native CTC kernel (C++ or CUDA) in the dtype of
    log_probs (float32 at least). Saves what F.ctc_loss saves plus the canvas: the edited log-probs
    are rebuilt in backward, not kept. Outputs log Z (B,) and feasible (B,) (bool)."""

    @staticmethod
    def forward(ctx, log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
        lp, _ = _standard_emissions(log_probs, T_b, canvas, mask_id)
        lens = (T_b.tolist(), U_b.tolist())
        # The op F.ctc_loss calls, so that log_alpha is ours to pass to its backward; time-major.
        nll, log_alpha = torch.ops.aten._ctc_loss(lp.transpose(0, 1), targets.long(), *lens,
                                                  slack_id)
        feasible = torch.isfinite(nll)  # +inf: no alignment agrees with the canvas, or T too short
        ctx.save_for_backward(log_probs, targets, T_b, canvas, nll, log_alpha, feasible)
        ctx.lens, ctx.slack_id, ctx.mask_id = lens, slack_id, mask_id
        ctx.mark_non_differentiable(feasible)
        return -nll, feasible

    @staticmethod
    def backward(ctx, grad_logz, _):
        log_probs, targets, T_b, canvas, nll, log_alpha, feasible = ctx.saved_tensors
        lp, free = _standard_emissions(log_probs, T_b, canvas, ctx.mask_id)
        g = (grad_logz * feasible).to(lp.dtype)  # (B,): infeasible rows get no gradient
        # Given h = d/d nll, the native backward returns h * (exp(lp) - posterior), the gradient
        # w.r.t. the logits of a log_softmax (its Jacobian folded in). We owe d log Z / d lp =
        # posterior, and log Z = -nll, so with h = -g:  g * posterior = g * exp(lp) + native.
        # zero_infinity=True zeroes the infeasible rows (nll = +inf) instead of NaN-filling them.
        native = torch.ops.aten._ctc_loss_backward(-g, lp.transpose(0, 1), targets.long(),
                                                   *ctx.lens, nll, log_alpha, ctx.slack_id,
                                                   True)  # (T, B, V)
        # exp is many times slower where it underflows: clamp first (e^-80 ~ 2e-35, nothing here).
        grad = lp.clamp_(min=-80.0).exp_().mul_(g.view(-1, 1, 1)).add_(native.transpose(0, 1))
        # Exact zeros where the entry is not free (visible, -inf, past T_b): masked_fill selects,
        # so the NaN that native holds at -inf entries goes too. In place: no third buffer.
        grad = grad.masked_fill_(~free, 0.0).to(log_probs.dtype)
        return grad, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# 3. The most probable alignment (Viterbi): the same lattices with max in place of logsumexp.
# ----------------------------------------------------------------------------------------------


def _fill_canvas(targets, T_b, U_b, is_slack, slack_id):
    """A (B, T) canvas with slack where is_slack (and past T_b) and y, in order, everywhere else."""
    B, T = is_slack.shape
    t = torch.arange(T, device=is_slack.device)
    tok = ~is_slack & (t < T_b[:, None])  # (B, T): positions that hold a target token
    # (B, T): the k-th token position holds y[k]
    rank = (tok.long().cumsum(1) - 1).clamp(0, max(targets.shape[1] - 1, 0))
    y = targets.long().gather(1, rank) if targets.shape[1] else torch.zeros_like(rank)
    return torch.where(tok & (rank < U_b[:, None]), y, slack_id)


@torch.no_grad()
def _align_band(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
    """Viterbi over the band: the argmax j of each row's cummax is where the best path entered
    row d, by a slack at position j + d - 1; following these from (U, K) places all K slacks."""
    em, _, neg, low = _band_emissions(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id)
    B, _, K1, U1 = em.shape
    cum_tok, slk = em[:, 0].cumsum(2).unbind(1), em[:, 1].unbind(1)
    entry = torch.where(torch.arange(U1, device=em.device) == 0, 0.0, neg)  # (B, U+1)
    rows, args = [], []  # best score of each state, and where its row was entered
    for d in range(K1):
        if d > 0:
            entry = rows[-1] + slk[d]  # E_d(u) = F_{d-1}(u) + slk_d(u), as in the sum
        # F_d(u) = C(u) + max_{j<=u} (E(j) - C(j))
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


# ----------------------------------------------------------------------------------------------
# 4. The loss to call (the arguments of F.ctc_loss, batch-first), and the best alignment.
# ----------------------------------------------------------------------------------------------


def _nll(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id, collapse, zero_infinity,
         algorithm):
    """-log P(y | canvas) per example (B,), arguments checked."""
    args = (log_probs, targets, T_b, U_b, slack_id, canvas, mask_id)
    if algorithm == "time":
        logz, ok = (_surface_time if collapse == "surface" else _standard_time)(*args)
    elif collapse == "surface":  # the band, per group of rows of similar shape (band_groups)
        logz, ok = _by_groups(_BandLogZ.apply, *args)
    else:
        logz, ok = _StandardLogZ.apply(*args)
    bad = 0.0 if zero_infinity else float("inf")
    nll = torch.where(ok, -logz, bad).to(log_probs.dtype)  # (B,); where() keeps NaN out of grads
    # NaN in, NaN out: the lattices read a NaN as log 0, so it would pass for an infeasible
    # example (+inf, or 0 with zero_infinity). The NaN is a constant here: no gradient.
    inside = torch.arange(log_probs.shape[1], device=log_probs.device) < T_b[:, None]  # (B, T)
    has_nan = (torch.isnan(log_probs.detach()).any(-1) & inside).any(1)  # (B,)
    return torch.where(has_nan, float("nan"), nll)


def ctc_slack_loss(log_probs, targets, input_lengths, target_lengths, *, slack_id, canvas=None,
                   mask_id=None, collapse="surface", reduction="mean", zero_infinity=False,
                   algorithm="band"):
    """-log P(y | canvas): -log of the sum over alignments a with B(a) = y that agree with the
    visible positions of prod_t p_t(a_t). The arguments of torch.nn.functional.ctc_loss,
    batch-first: log_probs (B, T, V) log-softmax outputs (never logits nor probabilities);
    targets (B, U_max) ids, padded, never slack_id; input_lengths T_b, target_lengths U_b;
    slack_id the blank. canvas (B, T) or None: where canvas != mask_id the position is visible,
    fixed to its token. collapse "surface" or "standard"; reduction "none" (B,), "sum", or "mean"
    (each loss / max(U_b, 1), averaged); zero_infinity: infeasible examples give 0, not +inf;
    algorithm "band" (section 2) or "time" (section 1, float64). Surface runs in float64,
    standard in the dtype of log_probs (float32 at least); the result has the dtype of log_probs.
    The gradient is d/d log_probs (F.ctc_loss's assumes a log_softmax), exactly 0 where visible."""
    targets, T_b, U_b, slack_id, canvas, mask_id = _check_loss(
        log_probs, targets, input_lengths, target_lengths, slack_id, canvas, mask_id, collapse,
        reduction, zero_infinity, algorithm)
    if len(log_probs) == 0:  # an empty batch: nothing to score
        return log_probs.sum((1, 2)) if reduction == "none" else log_probs.sum()
    nll = _nll(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id, collapse, zero_infinity,
               algorithm)
    if reduction == "none":
        return nll
    return nll.sum() if reduction == "sum" else (nll / U_b.clamp(min=1).to(nll.dtype)).mean()


def _align(log_probs, targets, input_lengths, target_lengths, *, slack_id, canvas=None,
           mask_id=None, collapse="surface"):
    """The most probable surface alignment (B, T) long: collapses to y, agrees with every visible
    position, slack from T_b on; ties broken arbitrarily. An infeasible row gets the targets
    first, then slack. Arguments as ctc_slack_loss's; NaN log-probs are refused (no alignment is
    best among NaNs). The porter's name for it is align_slack (keyword lengths, no T < U)."""
    targets, T_b, U_b, slack_id, canvas, mask_id = _check_loss(
        log_probs, targets, input_lengths, target_lengths, slack_id, canvas, mask_id, collapse,
        align=True)
    # _align_band per group of rows of similar shape (band_groups)
    return _by_groups(_align_band, log_probs.detach(), targets, T_b, U_b, slack_id, canvas,
                      mask_id)


# ----------------------------------------------------------------------------------------------
# 5. The porter API: the method as functions of tensors, in the order a training step calls
#    them, then what a decoder needs. A canvas is P_b prompt positions, then R_b = T - P_b
#    positions holding the U_b targets y and K_b = R_b - U_b slacks:
#        z0:   T h e _ l i s t | t y p e · i s _ a · m u t a b l e   (place_slack, build_canvas)
#        z_t:  T h e _ l i s t | t ? p ? · ? ? _ ? ? m ? t ? ? l ?     (your forward process)
#    (? = MASK). CE scores each masked position against z0; the slack CTC scores z_t against y
#    under every alignment. Every length argument that is easy to swap is keyword-only.
#    canvas_length is T, the whole canvas (build_canvas, masked_canvas); canvas_lengths are the
#    R_b = T - P_b of the responses alone (slack_count, place_slack, align_slack): T there would
#    give each response P_b positions too many, cut by build_canvas with real targets in them.
# ----------------------------------------------------------------------------------------------


def slack_count(canvas_lengths, rate):
    """K = round(rate * R): the slacks of a response canvas of R = T - P positions (an int or a
    tensor of them; never the canvas_length T), rounded half to even as Python's round. The
    target then has U = R - K tokens. rate: a real number in [0, 1), a one-element tensor too."""
    R, rate = _check_slack_count(canvas_lengths, rate)
    return torch.round(R.double() * rate).long()


def sft_layout(input_ids, *, prompt_lengths, rate, eos_id):
    """From the rows an SFT trainer has (LLaDA's) to the slack CTC's layout, dropping no token.
    input_ids (B, L): row b is its P_b prompt tokens, its answer, then eos_id padding to L; every
    position past the prompt is a target, the padding too (the model learns to stop), as in
    LLaDA's SFT. Returns targets (B, U_max) (row b's L - P_b tokens after its prompt, then eos_id
    up to U_b), target_lengths U_b (B,) and canvas_length T >= L, the smallest at which each row
    keeps them all beside K_b = slack_count(T - P_b, rate) slacks: the canvas grows by about
    rate / (1 - rate) of the answer instead of cutting its end (at rate 0, T = L). Then
    place_slack(..., canvas_lengths=T - P_b) and build_canvas(input_ids, response, ...)."""
    input_ids, P, eos_id = _check_layout(input_ids, prompt_lengths, rate, eos_id)
    L = input_ids.shape[1]
    A = L - P  # (B,): each row's tokens after its prompt, all kept
    T = L
    while len(P) and bool((T - P - slack_count(T - P, rate) < A).any()):  # U_b grows with T
        T += 1
    U = T - P - slack_count(T - P, rate)  # (B,), U_b >= A_b
    j = torch.arange(int(U.max()) if len(U) else 0, device=input_ids.device)[None, :]  # (1, U_max)
    from_row = input_ids.gather(1, (P[:, None] + j).clamp(max=L - 1))  # (B, U_max)
    return torch.where(j < A[:, None], from_row, eos_id), U, T  # eos_id past the row's end


def place_slack(targets, placement="random", *, target_lengths, canvas_lengths, slack_id,
                generator=None):
    """Reference response canvas (B, R_max) long: the U_b targets (B, U_max) in order and
    K_b = R_b - U_b slacks, at random positions ("random") or after the targets ("tail"); slack
    past R_b. canvas_lengths: R_b = T - P_b, the response canvas alone, never T. Always draws
    torch.rand(B, R_max, generator=generator) on CPU, whatever the placement, so that runs
    differing only in placement see identical noise afterwards."""
    targets, R, U, slack_id = _check_place(targets, placement, target_lengths, canvas_lengths,
                                           slack_id, generator)
    B, R_max, dev = len(R), int(R.max()) if len(R) else 0, targets.device
    pos = torch.arange(R_max, device=dev)[None, :]  # (1, R_max)
    scores = torch.rand(B, R_max, generator=generator).to(dev).masked_fill(pos >= R[:, None], 2.0)
    # "random": the K_b lowest of R_b uniform scores (padding, 2.0, ranks last), a uniform subset.
    rank = scores.argsort(1).argsort(1)  # (B, R_max)
    is_slack = pos >= U[:, None] if placement == "tail" else rank < (R - U)[:, None]  # (B, R_max)
    return _fill_canvas(targets, R, U, is_slack | (pos >= R[:, None]), slack_id)  # padding: slack


def align_slack(log_probs, targets, *, target_lengths, canvas_lengths, slack_id,
                collapse="surface"):
    """The "model" placement (Imputer-style): the most probable alignment of y under log_probs
    (B, R_max, V), as a reference response canvas (B, R_max); no gradient. log_probs are the
    response's, response_log_probs(logits, R_max = max R_b, ...) of the logits on masked_canvas:
    the whole canvas's (B, T, V) would align the prompt too, and is refused. canvas_lengths
    R_b = T - P_b, as in place_slack; more targets than positions is a ValueError."""
    R, U = _check_align_slack(log_probs, target_lengths, canvas_lengths)
    return _align(log_probs, targets, R, U, slack_id=slack_id, collapse=collapse)


def response_positions(prompt_lengths, R_max, T):
    """(B, R_max) canvas positions P_b + j of the response region, clamped to T - 1."""
    j = torch.arange(R_max, device=prompt_lengths.device)
    return (prompt_lengths[:, None] + j[None, :]).clamp(max=T - 1)


def build_canvas(prompt, response, *, prompt_lengths, canvas_length):
    """prompt (B, P_max) padded, response (B, R_max), prompt lengths P (B,) -> (z0 (B, T) long,
    is_prompt (B, T) bool: the positions the forward process never masks nor the loss scores).
    canvas_length is T, the whole canvas: row b is the first P_b entries of its prompt row (so
    the prompt may be the SFT batch's input_ids), then the first T - P_b of its response.
    response: place_slack's or align_slack's for canvas_lengths T - P_b, R_max = T - min P_b
    columns; narrower cannot reach T, wider holds entries no row reads (canvas_lengths T given
    in place of T - P_b, which cuts real targets): both are refused."""
    prompt, response, P, T = _check_build(prompt, response, prompt_lengths, canvas_length)
    pos = torch.arange(T, device=response.device)[None, :]  # (1, T)
    is_prompt = pos < P[:, None]  # (B, T)
    # one column of padding, so that an empty prompt (B, 0) can be gathered from too
    from_prompt = pad(prompt, (0, 1)).gather(1, pos.clamp(max=prompt.shape[1]).expand(len(P), -1))
    from_resp = response.gather(1, (pos - P[:, None]).clamp(0, response.shape[1] - 1))  # (B, T)
    return torch.where(is_prompt, from_prompt, from_resp), is_prompt


def response_log_probs(logits, R_max, *, prompt_lengths, mask_id):
    """log p (B, R_max, V) at the response positions, left-aligned so that the CTC sees each
    response canvas as its own sequence, in float32 or the logits' dtype if wider. SUBS is the
    model's: MASK at probability 0 already (-inf or a finite ban), or mask_id >= V (no column)."""
    P, R_max = _check_response_log_probs(logits, R_max, prompt_lengths, mask_id)
    idx = response_positions(P, R_max, logits.shape[1])  # (B, R_max)
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 -> float32
    x = x.gather(1, idx[..., None].expand(-1, -1, logits.shape[2]))  # (B, R_max, V)
    # NaN in, NaN out, and no gradient (_nll): log_softmax's backward would spread a NaN over
    # every logit of its position, so a response that holds one is detached.
    nan = torch.isnan(x.detach()).flatten(1).any(1).view(-1, 1, 1)  # (B, 1, 1)
    return torch.where(nan, x.detach(), x).log_softmax(-1)


def slack_ctc_term(logits, z_t, targets, *, prompt_lengths, target_lengths, weight, slack_id,
                   mask_id, collapse="surface", reduction="none", zero_infinity=False):
    """The slack-CTC fine-tuning loss from the model's logits on the noised canvas z_t:
        L_CTC(b) = weight_b * (-log P(y_b | z_t[b])) / R_b,    R_b = T - P_b
    CE's weight w(t) and its 1/R: at K = 0 (target_lengths = R) and the surface collapse y is
    the one alignment, and this equals MDLM's masked CE without the MASK column (SUBS).
    logits (B, T, V), batch-first, MASK column banned; a time-first tensor is refused when
    B != T, and at B == T no check can tell, so mind the layout. z_t (B, T): P_b prompt tokens,
    then a response canvas holding y_b in order and K_b = R_b - U_b slacks, each position
    visible or mask_id. targets (B, U_max), padded past U_b, never slack_id. P_b <= T - 1,
    U_b <= R_b. weight: a number or (B,), w(t) per row (1 / p_mask, not p_mask). The standard
    collapse needs a slack between repeats in y: end EOS-padded targets at their first EOS.
    reduction "none" (B,), "sum" or "mean" over rows. A row that no alignment fits (lengths
    swapped, slack or a target banned) is a ValueError naming the cause, or 0 with no gradient
    with zero_infinity=True. Returns float32 (wider if logits or weight are); NaN with no
    gradient for a row whose response logits hold a NaN."""
    z_t, targets, P, R, U, w, slack_id, mask_id = _check_term(
        logits, z_t, targets, prompt_lengths, target_lengths, weight, slack_id, mask_id,
        collapse, reduction, zero_infinity)
    if len(z_t) == 0:  # an empty batch: nothing to score
        return logits.sum((1, 2)) if reduction == "none" else logits.sum()
    R_max = int(R.max())
    canvas = z_t.gather(1, response_positions(P, R_max, z_t.shape[1]))  # (B, R_max)
    log_p = response_log_probs(logits, R_max, prompt_lengths=P, mask_id=mask_id)  # (B, R_max, V)
    nll = _nll(log_p, targets, R, U, slack_id, canvas, mask_id, collapse, zero_infinity,
               "band")  # -log P(y | z_t), (B,)
    _check_feasible(nll, log_p, canvas, targets, R, U, slack_id, mask_id, collapse)
    per = w * nll / R
    return per if reduction == "none" else per.sum() if reduction == "sum" else per.mean()


def masked_canvas(prompt, *, prompt_lengths, canvas_length, mask_id):
    """Where decoding starts: (canvas (B, T), is_prompt (B, T)), row b its P_b prompt tokens
    (prompt (B, P_max), padded) then MASK to T: as in training each response canvas runs to the
    end, R_b = T - P_b, so prompts of different lengths share a batch."""
    prompt, P, T, mask_id = _check_masked_canvas(prompt, prompt_lengths, canvas_length, mask_id)
    response = torch.full((len(prompt), T - int(P.min()) if len(P) else 1), mask_id,
                          dtype=torch.long, device=prompt.device)
    return build_canvas(prompt, response, prompt_lengths=P, canvas_length=T)


# Decoding with low-confidence remasking (LLaDA's sampler): each step proposes a token at every
# masked position and commits the k proposals it is most sure of. A rule on slack only reorders
# those commits, so it is a ranking by groups. A penalty on the confidence holds on one scale
# only: p - 2 puts every slack below every real proposal for probabilities in [0, 1], but on
# log-probabilities a slack at log p = -1 (-3 with the penalty) still beats a real one at -5.
# Groups hold on any scale: only the order of the confidence within a group is read.


def rank_in_groups(confidence, groups):
    """The key (B, T) float64 to commit by: every position of group 0 above every one of group 1,
    and so on; within a group, the most confident first (ties: the leftmost). confidence (B, T)
    any scale where larger is surer (probabilities, log-probabilities, negated entropies);
    groups (B, T) small ints. Commit the k largest keys (topk, or argsort descending)."""
    groups = _check_confidence(confidence, groups, "groups")
    by_conf = confidence.argsort(dim=-1, descending=True, stable=True)
    r = by_conf.argsort(dim=-1)  # (B, T) place in the row's confidence order, 0 = surest
    return -(groups.to(torch.float64) * confidence.shape[-1] + r)  # unique per row: no ties


def slack_waits(confidence, proposals, *, slack_id, threshold=None):
    """Which proposals (B, T) are slack that waits under the slack-last rule: every slack
    proposal, or with a threshold (on the confidence's own scale: log 0.9 for log-probabilities)
    those under it. A slack-trained model is often split between "this token here" and "the same
    token one slot later"; committing the slack first locks one in before its neighbours settle."""
    proposals, slack_id = _check_slack_waits(confidence, proposals, slack_id, threshold)
    waits = proposals == slack_id
    return waits if threshold is None else waits & (confidence < threshold)


def slack_last(confidence, proposals, *, slack_id, masked, threshold=None):
    """The slack-last rule as the key (B, T) to commit by (rank_in_groups), groups first: the
    masked positions with a real proposal, then the masked ones whose proposal is slack that
    waits (slack_waits), then the rest; within a group by confidence (any scale). So the k
    largest keys are masked positions whenever k <= masked.sum(1). masked (B, T) bool: exactly
    the positions this step may fill; with blocks (LLaDA's), still MASK and inside the block.
    Never rule a position out by a confidence of -inf: its group comes first, so a real proposal
    past the block, even at -inf, outranks every slack inside it. Nor ban slack by -inf in
    LLaDA's own sort: it ties with the decoded positions there, whose commit leaves MASK."""
    masked = _check_confidence(confidence, masked, "masked", torch.bool)
    waits = slack_waits(confidence, proposals, slack_id=slack_id, threshold=threshold) & masked
    return rank_in_groups(confidence, waits.long() + 2 * (~masked).long())


def read_outputs(canvas, *, prompt_lengths, slack_id, eos_id, mask_id, collapse="surface"):
    """The outputs of decoded canvases (B, T) as B lists of ids: each row from its P_b on, read
    through the collapse map the model was trained with, then cut at the first EOS (eos_id=None:
    not cut, for a corpus whose documents EOS separates). A response that still holds MASK was
    not decoded to the end (rank with slack_last): a ValueError, never ids."""
    canvas, P, slack_id, eos_id = _check_read(canvas, prompt_lengths, slack_id, eos_id, mask_id,
                                              collapse)
    out = []
    for row, p in zip(canvas.tolist(), P.tolist()):
        ids = collapse_tokens(row[p:], slack_id, collapse)
        out.append(ids[:ids.index(eos_id)] if eos_id is not None and eos_id in ids else ids)
    return out


# ----------------------------------------------------------------------------------------------
# 6. Checking what a caller passes. A malformed batch rarely breaks the lattice: a swapped length
#    or id moves it, and the loss is a plausible number. So each public function calls one check
#    at its top: a wrong kind of value is a TypeError, a wrong shape or value a ValueError naming
#    the argument and, for the forms other codebases use, the one-line fix. Those forms are read
#    as what they mean where nothing else can be meant: one number for every row, a (B, 1)
#    column, a bool mask that marks a prefix of each row (LLaDA's prompt_index).
# ----------------------------------------------------------------------------------------------

COLLAPSES, REDUCTIONS = ("surface", "standard"), ("none", "sum", "mean")


def _choice(value, name, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _flag(value, name):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _int(x, name, low=-math.inf, high=math.inf, what=None):
    """x as a Python int (an int, numpy or one-element tensor integer; not None, bool, float) in
    [low, high], which `what` may name."""
    try:
        if isinstance(x, bool) or (isinstance(x, torch.Tensor) and x.dtype == torch.bool):
            raise TypeError
        x = operator.index(x)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {x!r}") from None
    if not low <= x <= high:
        raise ValueError(f"{name} {x} is not {what or f'in [{low}, {high}]'}")
    return x


def _id(x, name, V=math.inf, slack_id=None):
    """x as an id in [0, V); mask_id also differs from slack_id."""
    x = _int(x, name, 0, V - 1, f"an id of the {V}-id vocabulary" if V < math.inf else "an id")
    if x == slack_id:
        raise ValueError(f"{name} must differ from slack_id {x}: a visible slack would be masked")
    return x


def _tensor(x, name, what, device=None):
    try:
        return torch.as_tensor(x, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be {what}, got {type(x).__name__}") from None


def _not_int(x):
    return x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool


def _ids(x, name, dims, device=None):
    """x as an integer tensor of `dims` dimensions: a tensor, or (nested) lists of ints of equal
    lengths; an empty list stands for an empty batch."""
    if not isinstance(x, torch.Tensor):
        x = _tensor(x, name, "a tensor or lists of integer ids of equal lengths")
        if x.numel() == 0:  # [] holds no id, so its inferred float dtype means nothing
            x = x.long().reshape((0,) * dims if x.dim() < dims else x.shape)
    if _not_int(x):
        raise TypeError(f"{name} must hold integer ids, got {x.dtype}")
    if x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(x.shape)}")
    return x if device is None else x.to(device)


def _per_row(x, name, B, what, hint=""):
    """x (a tensor) as (B,): one number for every row, (B,) itself, or a (B, 1) column."""
    x = x[:, 0] if x.dim() == 2 and x.shape[1] == 1 else x
    x = x.expand(B) if x.dim() == 0 else x
    if x.shape != (B,):
        raise ValueError(f"{name} must be {what}, got shape {tuple(x.shape)}{hint}")
    return x


def _lengths(lengths, name, B, top, device, hint=""):
    """A (B,) long tensor of lengths in [0, top], from any form _per_row reads or a bool (B, n)
    mask that marks a prefix of each row (its row sums); hint ends a wrong count's message."""
    x = _tensor(lengths, name, "integers", device)
    x = x.long() if x.numel() == 0 and x.dim() == 1 else x  # [] infers float: an empty batch
    if x.dtype == torch.bool and x.dim() == 2:
        if bool((x[:, 1:] & ~x[:, :-1]).any()):  # a False before a True: not a prefix
            raise ValueError(f"{name}: a bool mask must mark a prefix of each row, or pass {B} "
                             f"integers")
        x = x.sum(1)
    if _not_int(x):
        raise TypeError(f"{name} must be integers, got {x.dtype}" +
                        (" (.long() them)" if x.dtype.is_floating_point else ""))
    x = _per_row(x, name, B, f"{B} integers (one per row)", hint).long()
    if B and (int(x.min()) < 0 or int(x.max()) > top):
        raise ValueError(f"{name} must lie in [0, {top}], got {int(x.min())}..{int(x.max())}")
    return x


def _target_lengths(target_lengths, targets, device):  # U_b (B,), or the width they pass
    U = _lengths(target_lengths, "target_lengths", len(targets), math.inf, device)
    if len(U) and int(U.max()) > targets.shape[1]:
        raise ValueError(f"target_lengths reach {int(U.max())}, but targets has only U_max = "
                         f"{targets.shape[1]} columns")
    return U


def _weight(weight, B, device):
    """w(t) per row (B,), finite and >= 0, from any form _per_row reads."""
    w = _tensor(weight, "weight", "a number or a (B,) tensor", device)
    if w.dtype == torch.bool or w.dtype.is_complex:
        raise TypeError(f"weight must hold real numbers, got {w.dtype}")
    w = _per_row(w, "weight", B, f"a number or ({B},), each row's w(t) (LLaDA's (B, L) p_mask: "
                 f"weight = 1 / p_mask[:, 0])")
    if not bool((w.detach() >= 0).all() & torch.isfinite(w.detach()).all()):
        raise ValueError("weight must be finite and >= 0 (w(t) = 1/t: keep t away from 0)")
    return w


def _floats(x, name):
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a float tensor (B, T, V), got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 3:
        raise ValueError(f"{name} must be (B, T, V), batch-first, got shape {tuple(x.shape)}")


def _rows(bad):
    """The index of the first True of a (B,) bool tensor, or None."""
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


def _fits(U, R, room):
    if (b := _rows(U > R)) is not None:
        raise ValueError(f"row {b} has {int(U[b])} targets for {int(R[b])} positions: need "
                         f"target_lengths <= {room} (swapped?)")


def _check_ids(ids, name, V, other=None):
    """Every id lies in [0, V), or equals `other` (mask_id at masked positions)."""
    ids = ids[ids != other] if other is not None else ids
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= V):
        raise ValueError(f"{name} holds ids {int(ids.min())}..{int(ids.max())}: need ids of the "
                         f"{V}-id vocabulary" + ("" if other is None else f" (or mask_id {other})"))


def _check_targets(targets, U_b, V, slack_id):
    """The real targets (inside U_b) are ids of the vocabulary, never slack."""
    y = targets[torch.arange(targets.shape[1], device=targets.device) < U_b[:, None]]
    _check_ids(y, "targets (within target_lengths)", V)
    if bool((y == slack_id).any()):
        raise ValueError(f"targets hold slack_id {slack_id} within target_lengths")


def _check_mask_banned(x, name, mask_id, inside):
    """SUBS: x (B, T, V), logits or log-probs, gives MASK probability 0 at the positions inside
    (B, T): its column below the position's largest entry by more than -LOG_ZERO (-inf, or a
    finite ban such as -1e6). mask_id >= V: no MASK column. A NaN is not refused here."""
    if mask_id >= x.shape[2]:
        return
    gap = (x[..., mask_id] - x.amax(-1)).detach()  # (B, T): >= log p(MASK)
    if (b := _rows((inside & (gap >= LOG_ZERO)).any(1))) is not None:
        raise ValueError(f"{name}: the MASK column (mask_id {mask_id}) is open at row {b}: apply "
                         f"SUBS (-inf or -1e6 before the softmax), or mask_id >= {x.shape[2]}")


def _check_loss(log_probs, targets, input_lengths, target_lengths, slack_id, canvas, mask_id,
                collapse, reduction="none", zero_infinity=False, algorithm="band", align=False):
    # align=True for _align: the surface collapse, NaN refused, the normalisation not checked
    _choice(algorithm, "algorithm", ("band", "time"))
    _choice(reduction, "reduction", REDUCTIONS)
    _flag(zero_infinity, "zero_infinity")
    if align and collapse != "surface":
        raise ValueError(f"the alignment is implemented for the surface collapse, not {collapse!r}")
    _choice(collapse, "collapse", COLLAPSES)
    _floats(log_probs, "log_probs")
    (B, T, V), dev = log_probs.shape, log_probs.device
    targets = _ids(targets, "targets", 2, dev)
    if len(targets) != B:
        raise ValueError(f"targets must be (B, U_max) = ({B}, U_max), got {tuple(targets.shape)}: "
                         f"log_probs must be batch-first (B, T, V), transpose(0, 1) if time-first")
    slack_id = _id(slack_id, "slack_id", V)
    T_b = _lengths(input_lengths, "input_lengths", B, T, dev)
    U_b = _target_lengths(target_lengths, targets, dev)
    if canvas is not None:
        canvas = _ids(canvas, "canvas", 2, dev)
        if canvas.shape != (B, T):
            raise ValueError(f"canvas must be (B, T) = ({B}, {T}) ids, got {tuple(canvas.shape)}")
        mask_id = _id(mask_id, "mask_id", slack_id=slack_id)
        _check_ids(canvas, "canvas", V, mask_id)
        inside = torch.arange(T, device=dev) < T_b[:, None]
        _check_mask_banned(log_probs, "log_probs", mask_id, inside)
    _check_targets(targets, U_b, V, slack_id)
    if align and bool(torch.isnan(log_probs).any()):
        raise ValueError("log_probs holds NaN: no alignment can be chosen")
    if not align:  # logits or probabilities: logsumexp over V is not 0 (at each row's ends)
        pos = torch.stack([torch.zeros_like(T_b), (T_b - 1).clamp(min=0)], 1)  # (B, 2)
        lse = log_probs.detach().gather(1, pos[..., None].expand(-1, -1, V)).float().logsumexp(-1)
        bad = (T_b > 0)[:, None] & ~torch.isnan(lse) & ~(lse.abs() <= 0.05)  # (B, 2)
        if (b := _rows(bad.any(1))) is not None:
            raise ValueError(f"log_probs: log-probabilities (log_softmax) expected: raw logits "
                             f"or probabilities? At row {b} their exps sum to "
                             f"{float(lse[b][bad[b]][0].exp()):.4g}, not 1")
    return targets, T_b, U_b, slack_id, canvas, mask_id


def _check_collapse_tokens(seq, slack_id, collapse):
    _choice(collapse, "collapse", COLLAPSES)
    _int(slack_id, "slack_id")
    return _ids(seq, "seq (collapse_tokens reads one sequence)", 1).tolist()


def _check_slack_count(canvas_lengths, rate):
    if isinstance(rate, torch.Tensor) and rate.numel() == 1:  # bool, complex: refused below
        rate = rate.item()  # a rate from a schedule: numpy's numbers are numbers.Real already
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
        raise ValueError(f"the slack rate must be a number in [0, 1), got {rate!r}")
    R = _tensor(canvas_lengths, "canvas_lengths", "integers >= 0")
    if _not_int(R) or (R.numel() and int(R.min()) < 0):
        raise ValueError(f"canvas_lengths must be integers >= 0, got {canvas_lengths!r}")
    return R, float(rate)


def _check_layout(input_ids, prompt_lengths, rate, eos_id):
    input_ids = _ids(input_ids, "input_ids", 2)
    if input_ids.shape[1] < 1:
        raise ValueError("input_ids must be rows (B, L) of at least one position")
    P = _lengths(prompt_lengths, "prompt_lengths", len(input_ids), input_ids.shape[1],
                 input_ids.device)
    _check_slack_count(0, rate)
    return input_ids, P, _id(eos_id, "eos_id")


def _check_place(targets, placement, target_lengths, canvas_lengths, slack_id, generator):
    _choice(placement, "placement ('model': align_slack)", ("random", "tail"))
    targets, slack_id = _ids(targets, "targets", 2), _id(slack_id, "slack_id")
    if generator is not None and (not isinstance(generator, torch.Generator)
                                  or generator.device.type != "cpu"):
        raise TypeError(f"generator must be None or a CPU torch.Generator, got {generator!r}")
    R = _lengths(canvas_lengths, "canvas_lengths", len(targets), math.inf, targets.device)
    U = _target_lengths(target_lengths, targets, targets.device)
    _fits(U, R, "canvas_lengths")
    _check_targets(targets, U, math.inf, slack_id)
    return targets, R, U, slack_id


def _check_align_slack(log_probs, target_lengths, canvas_lengths):
    _floats(log_probs, "log_probs")
    B, T, dev = len(log_probs), log_probs.shape[1], log_probs.device
    R = _lengths(canvas_lengths, "canvas_lengths", B, math.inf, dev,
                 ": log_probs must be batch-first (B, R_max, V), transpose(0, 1) if time-first")
    if B and int(R.max()) != T:  # response_log_probs gives exactly R_max = max R_b columns
        raise ValueError(f"log_probs must be the response's (B, R_max = {int(R.max())}, V), not "
                         f"the canvas's ({T} wide): response_log_probs(logits, R_max, ...)")
    U = _lengths(target_lengths, "target_lengths", B, math.inf, dev)
    _fits(U, R, "canvas_lengths")
    return R, U


def _check_build(prompt, response, prompt_lengths, canvas_length):
    response = _ids(response, "response", 2)
    prompt = _ids(prompt, "prompt", 2, response.device)
    T, B = _int(canvas_length, "canvas_length", 1), len(prompt)
    P = _lengths(prompt_lengths, "prompt_lengths", B, min(prompt.shape[1], T), response.device)
    need = max(1, T - int(P.min())) if B else 1
    if len(response) != B or response.shape[1] < need:
        raise ValueError(f"response must be (B, R_max) = ({B}, >= {need}) to reach canvas_length "
                         f"{T}, got {tuple(response.shape)}")
    if B and response.shape[1] > need:  # place_slack's width is max R_b: T - P_b gives need
        raise ValueError(f"response has {response.shape[1]} columns, no row reads past {need}: "
                         f"canvas_lengths (place_slack) are T - P_b, not the canvas_length T")
    return prompt, response, P, T


def _check_response_log_probs(logits, R_max, prompt_lengths, mask_id):
    _floats(logits, "logits")
    (B, T, V), dev = logits.shape, logits.device
    mask_id, R_max = _id(mask_id, "mask_id"), _int(R_max, "R_max", 0, T)
    P = _lengths(prompt_lengths, "prompt_lengths", B, T, dev)
    _check_mask_banned(logits, "logits", mask_id, torch.arange(T, device=dev) >= P[:, None])
    return P, R_max


def _check_term(logits, z_t, targets, prompt_lengths, target_lengths, weight, slack_id, mask_id,
                collapse, reduction, zero_infinity):
    _choice(reduction, "reduction", REDUCTIONS)
    _choice(collapse, "collapse", COLLAPSES)
    _flag(zero_infinity, "zero_infinity")
    _floats(logits, "logits")
    (B, T, V), dev = logits.shape, logits.device
    z_t, targets = _ids(z_t, "z_t", 2, dev), _ids(targets, "targets", 2, dev)
    z_t = z_t.reshape(0, T) if B == 0 and z_t.numel() == 0 else z_t  # [] reads as (0, 0)
    if z_t.shape != (B, T) or len(targets) != B:
        raise ValueError(f"need logits (B, T, V) batch-first (time-first: transpose), z_t (B, T), "
                         f"targets (B, U_max), got {tuple(logits.shape)}, {tuple(z_t.shape)}, "
                         f"{tuple(targets.shape)}")
    slack_id = _id(slack_id, "slack_id", V)
    mask_id = _id(mask_id, "mask_id", slack_id=slack_id)
    P = _lengths(prompt_lengths, "prompt_lengths", B, T - 1, dev)
    U = _target_lengths(target_lengths, targets, dev)
    _fits(U, T - P, "T - prompt_lengths")
    _check_targets(targets, U, V, slack_id)
    _check_ids(z_t, "z_t", V, mask_id)
    if B:
        canvas = z_t.gather(1, response_positions(P, int((T - P).max()), T))  # (B, R_max)
        _check_room(canvas, targets, T - P, U, slack_id, mask_id, collapse)
    return z_t, targets, P, T - P, U, _weight(weight, B, dev), slack_id, mask_id


def _check_room(canvas, targets, R, U, slack_id, mask_id, collapse):
    """A response canvas (B, R_max) must be able to hold y: at most K_b visible slacks and U_b
    visible tokens, and (standard) a slack between repeats."""
    inside = torch.arange(canvas.shape[1], device=canvas.device) < R[:, None]  # (B, R_max)
    slacks = ((canvas == slack_id) & inside).sum(1)
    tokens = ((canvas != slack_id) & (canvas != mask_id) & inside).sum(1)
    if (b := _rows(slacks > R - U)) is not None:
        raise ValueError(f"row {b} of z_t shows {int(slacks[b])} slacks, more than R_b - U_b = "
                         f"{int(R[b] - U[b])}: slack_id and mask_id swapped? target_lengths?")
    if (b := _rows(tokens > U)) is not None:
        raise ValueError(f"row {b} of z_t shows {int(tokens[b])} tokens in its response, more "
                         f"than its {int(U[b])} targets: wrong lengths?")
    if collapse == "standard":  # y_i = y_{i-1} needs a slack between the two
        j = torch.arange(targets.shape[1], device=targets.device)[1:]  # none for 0 columns
        repeats = ((targets[:, 1:] == targets[:, :-1]) & (j < U[:, None])).sum(1)
        if (b := _rows(U + repeats > R)) is not None:
            raise ValueError(f"collapse 'standard' merges repeats: row {b} needs more than R_b = "
                             f"{int(R[b])} positions; end targets at their first EOS, or 'surface'")


def _check_feasible(nll, log_p, canvas, targets, R, U, slack_id, mask_id, collapse):
    """After the loss: a row that no alignment fits (nll = +inf) is an error naming its cause,
    an id it needs at a masked position that the logits give probability 0 at every one, or
    else z_t and the lengths."""
    if (b := _rows(nll == math.inf)) is None:
        return
    y, row = targets[b, :int(U[b])].tolist(), canvas[b, :int(R[b])]
    masked = row == mask_id
    open_ = _nonzero(log_p[b, :len(row)][masked]).any(0)  # (V,): > 0 at some masked position
    need = {v: y.count(v) for v in y}
    need[slack_id] = len(row) - len(y) if collapse == "surface" else sum(
        y[i] == y[i - 1] for i in range(1, len(y)))  # standard: a slack between repeats
    for v, n in need.items():
        if n > int((row == v).sum()) and bool(masked.any()) and not bool(open_[v]):
            raise ValueError(f"logits give id {v} ({'slack_id' if v == slack_id else 'a target'}) "
                             f"probability 0 at every masked position of row {b}, which needs "
                             f"it: ban only MASK (SUBS), never slack or a target")
    raise ValueError(f"row {b}: no alignment of its targets agrees with the visible tokens of z_t: "
                     f"prompt_lengths and target_lengths swapped, or targets not those of z_t? "
                     f"(zero_infinity=True scores such a row 0)")


# The decoding functions' checks.


def _check_masked_canvas(prompt, prompt_lengths, canvas_length, mask_id):
    prompt = _ids(prompt, "prompt", 2)
    T, mask_id = _int(canvas_length, "canvas_length"), _int(mask_id, "mask_id")
    P = _lengths(prompt_lengths, "prompt_lengths", len(prompt), prompt.shape[1], prompt.device)
    if len(P) and int(P.max()) >= T:  # every row needs a response position to decode
        raise ValueError(f"canvas_length must exceed every prompt length: {T} <= {int(P.max())}")
    return prompt, P, T, mask_id


def _check_confidence(confidence, other, name, dtype=None):
    """confidence a float tensor (B, T); `other` of its shape: bool with dtype=torch.bool, else
    integer ids (a tensor or lists). Returns `other` on the confidence's device."""
    if not isinstance(confidence, torch.Tensor) or not confidence.dtype.is_floating_point:
        raise TypeError(f"confidence must be a float tensor (B, T), got "
                        f"{getattr(confidence, 'dtype', type(confidence))}")
    if confidence.dim() == 3 and confidence.shape[-1] == 1:  # a gather's (B, T, 1) kept whole
        raise ValueError("confidence must be (B, T), got (B, T, 1): .squeeze(-1) it")
    if bool(confidence.isnan().any()):  # a sort puts NaN above every number: it would commit first
        raise ValueError("confidence holds NaN: no order of commits can be read from it")
    other = (_ids(other, name, confidence.dim(), confidence.device) if dtype is None else
             _tensor(other, name, "a bool tensor", confidence.device))
    if (dtype is not None and other.dtype != dtype) or other.shape != confidence.shape:
        raise ValueError(f"{name} must be {'a bool' if dtype else 'an integer'} tensor of the "
                         f"confidence's shape {tuple(confidence.shape)}, got {other.dtype} "
                         f"{tuple(other.shape)}")
    return other


def _check_slack_waits(confidence, proposals, slack_id, threshold):
    proposals = _check_confidence(confidence, proposals, "proposals")
    if threshold is not None and (isinstance(threshold, bool)
                                  or not isinstance(threshold, (int, float))
                                  or threshold != threshold):  # NaN
        raise TypeError(f"threshold must be a number on the confidence's scale, or None, got "
                        f"{threshold!r}")
    return proposals, _int(slack_id, "slack_id")


def _check_read(canvas, prompt_lengths, slack_id, eos_id, mask_id, collapse):
    _choice(collapse, "collapse", COLLAPSES)
    canvas = _ids(canvas, "canvas", 2)
    P = _lengths(prompt_lengths, "prompt_lengths", len(canvas), canvas.shape[1], canvas.device)
    slack_id, mask_id = _int(slack_id, "slack_id"), _int(mask_id, "mask_id")
    if slack_id == mask_id:
        raise ValueError(f"slack_id and mask_id are both {slack_id}: slack would read as MASK")
    eos_id = None if eos_id is None else _int(eos_id, "eos_id")
    response = torch.arange(canvas.shape[1], device=canvas.device) >= P[:, None]  # (B, T)
    if (b := _rows(((canvas == mask_id) & response).any(1))) is not None:
        raise ValueError(f"canvas row {b} still holds MASK (mask_id {mask_id}): decode every "
                         f"position of the response before reading the outputs")
    return canvas, P, slack_id, eos_id
