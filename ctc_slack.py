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

The file, in reading order:
    1. the definition: the collapse map and the loss as a plain recursion over time (slow, exact)
    2. the loss to call, ctc_slack_loss, and the porter API for fine-tuning and decoding an MDLM:
           K = slack_count(R, rate)                  slacks per response canvas of R positions
           place_slack / align_slack                 the reference canvas: slack at random places,
                                                     at the tail, or where the model aligns it
           build_canvas                              prompt + response canvas, and the prompt mask
           slack_ctc_term                            the fine-tuning loss from the model's logits
           slack_last                                the decoding side: commit slack last
           collapse_tokens                           read a canvas out: delete slack
    3. the fast paths: the surface collapse as a band of K+1 rows with a hand-written backward,
       and the standard collapse through PyTorch's own CTC kernel
    4. the most probable alignment (Viterbi), for the "model" placement

Cost (algorithm="band", the default): surface, K+1 sequential steps of O(B * U) vectorized work
in float64, memory O(B * (K+1) * (U+1)); standard, PyTorch's CTC kernel on edited log-probs, at
about F.ctc_loss's time and memory. algorithm="time": the slow references of section 1.

    python -m pytest tests/test_ctc_slack.py  # exactness (brute force, F.ctc_loss, gradcheck)
    python bench.py ctc --quick               # speed and memory against F.ctc_loss

This file imports only torch; copy it alone into another codebase.
"""

import torch
from torch.nn.functional import pad

# log 0 in the slow reference loops: finite, as -inf gives NaN gradients (inf - inf); a path
# through it adds exactly nothing in float64 (finite log-probs are assumed to be above -1e20).
NEG_TIME = -1e30


# ----------------------------------------------------------------------------------------------
# 1. The definition: the collapse map, and the loss as a recursion over canvas positions.
# ----------------------------------------------------------------------------------------------


def collapse_tokens(seq, slack_id, collapse="surface"):
    """The collapse map B on a python list. surface: drop slack. standard: merge runs of equal
    tokens, then drop slack (so `a a <slack> a` -> `a a`, `a a a` -> `a`)."""
    if collapse not in ("surface", "standard"):
        raise ValueError(f"unknown collapse {collapse!r}; use 'surface' or 'standard'")
    if collapse == "standard":
        seq = [x for i, x in enumerate(seq) if i == 0 or x != seq[i - 1]]
    return [x for x in seq if x != slack_id]


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


def _graves_lattice(log_probs, targets, U_b, slack_id, canvas, mask_id):
    """Standard collapse states: labels l' = (slack, y1, slack, ..., yU, slack) (B, 2U+1), skip
    (0 where s-2 -> s is allowed), emissions (B, T, 2U+1), start, the two end states (B, 2),
    end_ok."""
    B, T, V = log_probs.shape
    U, dev = int(U_b.max()), log_probs.device
    ext = torch.full((B, 2 * U + 1), slack_id, dtype=torch.long, device=dev)
    ext[:, 1::2] = targets[:, :U].long().clamp(0, V - 1)  # (B, 2U+1)
    # Skipping s-2 -> s jumps over a slack: allowed only between different tokens (else they merge).
    skip = torch.full(ext.shape, NEG_TIME, dtype=torch.float64, device=dev)
    skip[:, 3::2] = torch.where(ext[:, 3::2] != ext[:, 1:-2:2], 0.0, NEG_TIME)
    start = torch.where(torch.arange(2 * U + 1, device=dev) == 0, 0.0, NEG_TIME)
    start = start.double().expand(B, -1)
    last = torch.stack([2 * U_b, (2 * U_b - 1).clamp(min=0)], 1)  # (B, 2): after slack, after y_U
    end_ok = U_b[:, None] >= torch.arange(2, device=dev)  # (B, 2): 2U-1 exists only when U >= 1
    return ext, skip, _time_emissions(log_probs, ext, canvas, mask_id), start, last, end_ok


def _standard_time(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
    """Standard (Graves) collapse over the extended labels l'. From s a step may stay, go to s+1,
    or skip to s+2 when l'(s+2) is a token different from l'(s):
        log_fwd_t(s) = log p_t(l'(s)) + logsumexp(log_fwd_{t-1}(s), log_fwd_{t-1}(s-1),
                                                   log_fwd_{t-1}(s-2) if skip allowed)
    The end is s = 2U or 2U-1 after T_b positions. Cost O(B * T * U) time and memory."""
    ext, skip, e, log_fwd, last, end_ok = _graves_lattice(log_probs, targets, U_b, slack_id,
                                                          canvas, mask_id)
    read = lambda lf: torch.where(end_ok, lf.gather(1, last), NEG_TIME).logsumexp(1)  # noqa: E731
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
# 2. The loss, and the porter API: the method as functions of tensors, in the order a training
#    step calls them. A canvas is P_b prompt positions, then R_b = T - P_b positions holding the
#    U_b targets y and K_b = R_b - U_b slacks:
#        z0:   T h e _ l i s t | t y p e · i s _ a · m u t a b l e   (place_slack, build_canvas)
#        z_t:  T h e _ l i s t | t ? p ? · ? ? _ ? ? m ? t ? ? l ?     (? = MASK: your forward
#                                                                       process)
#    CE scores each masked position against z0; the slack CTC scores z_t against y under every
#    alignment. Every length argument that is easy to swap is keyword-only (ctc_slack_loss keeps
#    F.ctc_loss's order), and every malformed argument is a ValueError that says what it expected.
# ----------------------------------------------------------------------------------------------


def _lengths(lengths, name, B, top, device):
    """A (B,) long tensor of lengths in [0, top], or a ValueError naming the argument."""
    x = torch.as_tensor(lengths, device=device)
    if x.dim() != 1 or len(x) != B or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"{name} must be {B} integers (one per row), got {tuple(x.shape)} "
                         f"{x.dtype}")
    x = x.long()
    if len(x) and (int(x.min()) < 0 or int(x.max()) > top):
        raise ValueError(f"{name} must lie in [0, {top}], got {int(x.min())}..{int(x.max())}")
    return x


def _check(log_probs, targets, input_lengths, target_lengths, slack_id, canvas, mask_id,
           collapse):
    """Refuse malformed arguments with a ValueError; the lengths as (B,) long tensors on the
    device of log_probs."""
    if log_probs.dim() != 3 or not log_probs.dtype.is_floating_point:
        raise ValueError(f"log_probs must be float (B, T, V), got {tuple(log_probs.shape)} "
                         f"{log_probs.dtype}")
    B, T, V = log_probs.shape
    if targets.dim() != 2 or targets.shape[0] != B or targets.dtype.is_floating_point:
        raise ValueError(f"targets must be integer ids (B, U_max) = ({B}, U_max), got "
                         f"{tuple(targets.shape)} {targets.dtype}")
    if collapse not in ("surface", "standard"):
        raise ValueError(f"unknown collapse {collapse!r}; use 'surface' or 'standard'")
    if not 0 <= slack_id < V:
        raise ValueError(f"slack_id {slack_id} is not an id of the {V}-id vocabulary")
    if canvas is not None and (canvas.shape != (B, T) or mask_id is None):
        raise ValueError(f"a canvas must be (B, T) = ({B}, {T}) ids and needs mask_id, got "
                         f"{tuple(canvas.shape)} and mask_id={mask_id}")
    T_b = _lengths(input_lengths, "input_lengths", B, T, log_probs.device)
    U_b = _lengths(target_lengths, "target_lengths", B, targets.shape[1], log_probs.device)
    inside = torch.arange(targets.shape[1], device=targets.device) < U_b.to(targets.device)[:, None]
    y = targets[inside]  # the real targets, padding left out
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= V or bool((y == slack_id).any())):
        raise ValueError(f"targets must be ids in [0, {V}) other than slack_id {slack_id}")
    return T_b, U_b


def ctc_slack_loss(log_probs, targets, input_lengths, target_lengths, *, slack_id, canvas=None,
                   mask_id=None, collapse="surface", reduction="mean", zero_infinity=False,
                   algorithm="band"):
    """-log P(y | canvas) = -log sum over alignments a with B(a) = y that agree with the visible
    positions of prod_t p_t(a_t). Arguments mirror torch.nn.functional.ctc_loss, batch-first:
        log_probs (B, T, V) log-softmax outputs; targets (B, U_max) ids, padded (never slack_id);
        input_lengths T_b, target_lengths U_b (B,); slack_id plays the blank.
        canvas (B, T) or None: where canvas != mask_id the position is visible, fixed to its token.
        collapse: "surface" (delete slack) or "standard" (merge repeats, then delete slack).
        reduction: "none" (B,), "sum", or "mean" (each loss / max(target length, 1), averaged).
        zero_infinity: infeasible examples give 0 (and zero gradient) instead of +inf.
        algorithm: "band" (fast: the band for surface, the native CTC kernel for standard) or
            "time" (the slow references of section 1, float64).
    Infeasible examples (T_b < U_b, a visible token no alignment can use, too few positions for
    standard repeats) give +inf, never NaN, and zero gradient. Surface runs in float64, standard
    in the dtype of log_probs (float32 at least: F.ctc_loss's precision); the result has the dtype
    of log_probs. The gradient is d/d log_probs (F.ctc_loss's assumes a log_softmax), exactly 0
    where visible."""
    if algorithm not in ("band", "time") or reduction not in ("none", "sum", "mean"):
        raise ValueError(f"algorithm must be 'band' or 'time' and reduction 'none', 'sum' or "
                         f"'mean', got {algorithm!r} and {reduction!r}")
    T_b, U_b = _check(log_probs, targets, input_lengths, target_lengths, slack_id, canvas,
                      mask_id, collapse)
    args = (log_probs, targets, T_b, U_b, slack_id, canvas, mask_id)
    if algorithm == "time":
        logz, ok = (_surface_time if collapse == "surface" else _standard_time)(*args)
    elif collapse == "surface":
        logz, ok = _BandLogZ.apply(*args)
    else:
        logz, ok = _StandardLogZ.apply(*args)
    bad = 0.0 if zero_infinity else float("inf")
    nll = torch.where(ok, -logz, bad).to(log_probs.dtype)  # (B,); where() keeps NaN out of grads
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    return (nll / U_b.clamp(min=1).to(nll.dtype)).mean()


def slack_count(canvas_lengths, rate):
    """K = round(rate * R): the slacks of a response canvas of R positions (an int or a tensor of
    them), rounded half to even as Python's round. The target then has U = R - K tokens."""
    if not 0 <= rate < 1:
        raise ValueError(f"the slack rate must lie in [0, 1), got {rate}")
    return torch.round(torch.as_tensor(canvas_lengths).double() * rate).long()


def place_slack(targets, placement="random", *, target_lengths, canvas_lengths, slack_id,
                generator=None):
    """Reference response canvas (B, R_max) long: the U_b targets (B, U_max) in order and
    K_b = R_b - U_b slacks, at random positions ("random") or after the targets ("tail"); slack
    past R_b. Always draws torch.rand(B, R_max, generator=generator) on CPU, whatever the
    placement, so that runs differing only in placement see identical noise afterwards."""
    if placement not in ("random", "tail"):
        raise ValueError(f"unknown placement {placement!r}: 'random' or 'tail' (the model's own "
                         f"alignment: align_slack)")
    dev = targets.device
    R = _lengths(canvas_lengths, "canvas_lengths", len(targets), float("inf"), dev)
    U = _lengths(target_lengths, "target_lengths", len(targets), targets.shape[1], dev)
    if bool((U > R).any()):
        b = int((U > R).nonzero()[0, 0])
        raise ValueError(f"row {b} has {int(U[b])} targets for {int(R[b])} canvas positions: "
                         f"need target_lengths <= canvas_lengths (swapped arguments?)")
    B, R_max = len(R), int(R.max()) if len(R) else 0
    pos = torch.arange(R_max, device=dev)[None, :]  # (1, R_max)
    scores = torch.rand(B, R_max, generator=generator).to(dev).masked_fill(pos >= R[:, None], 2.0)
    # "random": the K_b lowest of R_b uniform scores (padding, 2.0, ranks last), a uniform subset.
    rank = scores.argsort(1).argsort(1)  # (B, R_max)
    is_slack = pos >= U[:, None] if placement == "tail" else rank < (R - U)[:, None]  # (B, R_max)
    return _fill_canvas(targets, R, U, is_slack | (pos >= R[:, None]), slack_id)  # padding: slack


def align_slack(log_probs, targets, *, target_lengths, canvas_lengths, slack_id,
                collapse="surface"):
    """The "model" placement (Imputer-style): the most probable alignment of y under log_probs
    (B, R_max, V), typically response_log_probs of the model on an all-MASK response, as a
    reference response canvas (B, R_max). A thin wrapper over ctc_slack_align; no gradient. More
    targets than canvas positions is a ValueError, not a silent fallback."""
    R = _lengths(canvas_lengths, "canvas_lengths", len(targets), log_probs.shape[1],
                 log_probs.device)
    U = _lengths(target_lengths, "target_lengths", len(targets), targets.shape[1], R.device)
    if bool((U > R).any()):
        raise ValueError(f"{int((U > R).sum())} rows have more targets than canvas positions: "
                         f"need target_lengths <= canvas_lengths (swapped arguments?)")
    return ctc_slack_align(log_probs, targets, R, U, slack_id=slack_id, collapse=collapse)


def response_positions(prompt_lengths, R_max, T):
    """(B, R_max) canvas positions P_b + j of the response region, clamped to T - 1."""
    j = torch.arange(R_max, device=prompt_lengths.device)
    return (prompt_lengths[:, None] + j[None, :]).clamp(max=T - 1)


def build_canvas(prompt, response, *, prompt_lengths, canvas_length):
    """prompt (B, P_max) padded, response (B, R_max), prompt lengths P (B,) -> (z0 (B, T) long,
    is_prompt (B, T) bool: the positions the forward process never masks nor the loss scores),
    T = canvas_length: row b is its P_b prompt tokens, then its response, cut at T."""
    B, T = len(prompt), canvas_length
    P = _lengths(prompt_lengths, "prompt_lengths", B, min(prompt.shape[1], T), response.device)
    if response.dim() != 2 or len(response) != B or response.shape[1] < 1:
        raise ValueError(f"response must be (B, R_max) = ({B}, >= 1), got {tuple(response.shape)}")
    pos = torch.arange(T, device=response.device)[None, :]  # (1, T)
    is_prompt = pos < P[:, None]  # (B, T)
    if prompt.shape[1]:
        from_prompt = prompt.gather(1, pos.clamp(max=prompt.shape[1] - 1).expand(B, -1))
    else:
        from_prompt = torch.zeros(B, T, dtype=torch.long, device=response.device)
    from_resp = response.gather(1, (pos - P[:, None]).clamp(0, response.shape[1] - 1))  # (B, T)
    return torch.where(is_prompt, from_prompt, from_resp), is_prompt


def response_log_probs(logits, R_max, *, prompt_lengths, mask_id):
    """float32 log p (B, R_max, V) at the response positions, left-aligned so that the CTC sees
    each response canvas as its own sequence. The MASK logit is -inf (SUBS: the model never
    predicts MASK). Visible positions need no carry-over: the CTC reads them from the canvas."""
    mask = torch.tensor([mask_id], device=logits.device)
    logits = logits.float().index_fill(-1, mask, float("-inf"))
    idx = response_positions(prompt_lengths, R_max, logits.shape[1])  # (B, R_max)
    return logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1])).log_softmax(-1)


def slack_ctc_term(logits, z_t, targets, *, prompt_lengths, target_lengths, weight, slack_id,
                   mask_id, collapse="surface"):
    """Per-example (B,) slack-CTC fine-tuning loss from the model's logits (B, T, V) on z_t (B, T):
        L_CTC = weight * (-log P(y | z_t)) / R_b,   R_b = T - P_b
    weight (B,) = each example's NELBO weight w(t) (1/t for the linear schedule): CE's weight and
    1/R, so that with K = 0 and the surface collapse (one alignment, y) the two are equal. z_t must
    mask a canvas that collapses to y: then an alignment exists, and the loss is never +inf."""
    if logits.dim() != 3 or z_t.shape != logits.shape[:2]:
        raise ValueError(f"need logits (B, T, V) and z_t (B, T), got {tuple(logits.shape)} and "
                         f"{tuple(z_t.shape)}")
    B, T = z_t.shape
    P = _lengths(prompt_lengths, "prompt_lengths", B, T - 1, z_t.device)
    R = T - P  # (B,) response canvas lengths
    R_max = int(R.max())
    log_p = response_log_probs(logits, R_max, prompt_lengths=P, mask_id=mask_id)  # (B, R_max, V)
    canvas = z_t.gather(1, response_positions(P, R_max, T))  # (B, R_max)
    nll = ctc_slack_loss(log_p, targets, R, target_lengths, slack_id=slack_id, canvas=canvas,
                         mask_id=mask_id, collapse=collapse, reduction="none")  # -log P(y | z_t)
    return weight * nll / R


def slack_last(confidence, proposals, *, slack_id, threshold=None):
    """The decoding side. A low-confidence-remasking sampler (LLaDA's) commits, at each step, the
    masked positions whose proposed token has the highest probability `confidence` (B, T) in
    [0, 1]. This returns a confidence under which every slack proposal (proposals == slack_id)
    ranks below every real one, in its own order, unless its probability is >= threshold: a
    slack-trained model is often split at a position between "this token here" and "the same
    token one slot later", and committing the slack first fixes that split before the neighbours
    are known. Rank by the result; commit the proposals themselves."""
    demote = proposals == slack_id
    if threshold is not None:
        demote &= confidence < threshold
    return confidence - 2.0 * demote  # slack proposals land in [-2, -1], below all of [0, 1]


# ----------------------------------------------------------------------------------------------
# 3. Fast paths. The surface lattice is a band.
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
    valid = valid & torch.isfinite(em)
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
# With max in place of logsumexp (cummax) the same line gives the Viterbi row (_align_surface).


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


# ----------------------------------------------------------------------------------------------
# 3. Fast paths, continued. The standard collapse is Graves CTC on edited log-probs, so PyTorch's
# native kernel runs it. A visible position is a one-hot emission row (log 1 = 0 for its token,
# log 0 for every other), and given such rows F.ctc_loss sums exactly the alignments that agree
# with the canvas.
# Here log 0 is -inf itself, not a finite stand-in as in the band: the kernel's recursions treat
# -inf exactly (a forbidden path adds exactly 0, an infeasible row gives nll = +inf), while a
# finite one makes them 10-25% slower (every forbidden transition underflows exp). -inf does give
# NaN gradients, but only at the -inf entries themselves, whose gradient is zeroed by selection.
# ----------------------------------------------------------------------------------------------


def _standard_emissions(log_probs, T_b, canvas, mask_id):
    """The log-probs that F.ctc_loss reads (B, T, V): visible rows one-hot (0 at the token, -inf
    elsewhere), non-finite entries -inf; free (B, T, V) bool, the entries that stay real,
    differentiable log-probs (finite, at a masked position inside the example)."""
    if log_probs.dtype not in (torch.float32, torch.float64):  # the native kernel's dtypes
        log_probs = log_probs.float()
    B, T, V = log_probs.shape
    keep = torch.arange(T, device=log_probs.device) < T_b[:, None]  # (B, T): inside the example
    if canvas is not None:
        visible = canvas != mask_id  # (B, T)
        keep &= ~visible
    free = torch.isfinite(log_probs) & keep[..., None]  # (B, T, V)
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
# 4. The most probable alignment (Viterbi): the same lattices with max in place of logsumexp.
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
def _align_surface(log_probs, targets, T_b, U_b, slack_id, canvas, mask_id):
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


def ctc_slack_align(log_probs, targets, input_lengths, target_lengths, *, slack_id, canvas=None,
                    mask_id=None, collapse="surface"):
    """The most probable surface alignment consistent with the canvas, a (B, T) LongTensor of
    tokens and slack (T = log_probs.shape[1]; slack_id from input_length on) that collapses to y
    and agrees with every visible position; ties broken arbitrarily. Infeasible rows (T < U, or
    no alignment agrees with the canvas) get the targets first, then slack (the first T targets
    if T < U). Only the surface map: it is the one the "model" placement trains with."""
    if collapse != "surface":
        raise ValueError(f"the alignment is implemented for the surface collapse, not {collapse!r}")
    T_b, U_b = _check(log_probs, targets, input_lengths, target_lengths, slack_id, canvas,
                      mask_id, collapse)
    return _align_surface(log_probs.detach(), targets, T_b, U_b, slack_id, canvas, mask_id)
