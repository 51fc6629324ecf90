"""Exactness tests for ctc_slack.py: every fast path against a slow obvious one (enumeration of all
alignments, torch.nn.functional.ctc_loss, the loop over time), the loss's invariants, CPU against
CUDA, and the porter API (reference canvases, the prompt + response layout, the loss term) against
mdlm.py's position-wise CE.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_ctc_slack.py      # ~15 s on one core
    python -m pytest -q tests/test_ctc_slack.py -k cuda                # the CUDA-only tests
"""

import itertools
import functools
import math

import pytest
import torch
import torch.nn.functional as F

import ctc_slack
import mdlm

BEOS, BSLACK, BMASK = mdlm.special_ids(mdlm.BYTE_VOCAB_SIZE)  # the byte vocabulary
from ctc_slack import (align_slack, build_canvas, collapse_tokens, ctc_slack_loss,
                       place_slack, response_log_probs, response_positions, slack_count,
                       slack_ctc_term, slack_last)

V, SLACK, MASK = 4, 3, 9  # tiny vocabulary: tokens 0..2, slack 3; MASK outside the vocabulary
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
f64 = dict(dtype=torch.float64)  # the references compute in float64: compare at 1e-10


@pytest.fixture(autouse=True)
def one_thread():
    """The loops run many small ops; on a shared 2-core machine
    one thread is faster and steadier."""
    n = torch.get_num_threads()  # restored after the test
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# Helpers: the obvious (exponential) definitions, and random cases with every kind of row.


def alignment_score(lp, a, canvas):
    """log prob of one alignment a given the canvas (visible: log 1 if it agrees, else log 0)."""
    if canvas is not None and any(c != MASK and c != tok for c, tok in zip(canvas, a)):
        return -math.inf  # it contradicts a visible position
    return sum(lp[t, tok].item() for t, tok in enumerate(a) if canvas is None or canvas[t] == MASK)


def brute_scores(lp, y, T, canvas, collapse):
    """Scores of every alignment of length T over the vocabulary that collapses to y (the
    definition of the loss, enumerated: V^T candidates, so T stays tiny)."""
    alignments = itertools.product(range(lp.shape[1]), repeat=T)  # every sequence of length T
    valid = [a for a in alignments if collapse_tokens(list(a), SLACK, collapse) == y]
    return [s for s in (alignment_score(lp, a, canvas) for a in valid) if s > -math.inf]


def brute_loss(lp, y, T, canvas, collapse):
    """-log of the summed probability of the alignments above; +inf when there are none."""
    scores = brute_scores(lp, y, T, canvas, collapse)  # the finite ones
    return -torch.tensor(scores, **f64).logsumexp(0).item() if scores else math.inf


def random_batch(gen, B, T_max, U_max, p_visible, vocab=V):
    """Random log-probs, targets with many repeats, lengths in [0, max] and a random canvas whose
    visible positions hold tokens and slack (often inconsistent with y: infeasible rows)."""
    lp = torch.randn(B, T_max, vocab, generator=gen, **f64).log_softmax(-1)
    targets = torch.randint(0, 2, (B, U_max), generator=gen)  # two tokens only: repeats are common
    T_b = torch.randint(0, T_max + 1, (B,), generator=gen)  # T = 0 included
    U_b = torch.randint(0, U_max + 1, (B,), generator=gen)  # U = 0 included, and U > T
    canvas = torch.full((B, T_max), MASK)  # all masked...
    visible = torch.rand(B, T_max, generator=gen) < p_visible  # ...but these
    canvas[visible] = torch.randint(0, vocab, (int(visible.sum()),), generator=gen)  # any token
    return lp, targets, T_b, U_b, canvas


def feasible_canvas(gen, y, T_b, T_max, p_visible, collapse="surface", slack=SLACK, mask=MASK):
    """A canvas showing a random fraction of one valid alignment of y (y padded with -1): y in
    order with slack at random places, and, for the standard collapse, a slack between every two
    equal neighbours (without one they would merge). A row with too little room gets no canvas."""
    canvas = torch.full((y.shape[0], T_max), mask)  # rows without room stay all MASK
    for b in range(y.shape[0]):
        ys, T = y[b][y[b] >= 0].tolist(), int(T_b[b])
        # under standard, a repeat needs a slack before it
        repeats = [collapse == "standard" and i and ys[i] == ys[i - 1] for i in range(len(ys))]
        seq = [x for i in range(len(ys)) for x in ([slack, ys[i]] if repeats[i] else [ys[i]])]
        if len(seq) > T:
            continue
        # where seq goes, in order
        keep = torch.randperm(T, generator=gen)[: len(seq)].sort().values
        z0 = torch.full((T,), slack)  # slack everywhere...
        z0[keep] = torch.tensor(seq, dtype=torch.long)  # ...but where seq goes
        assert collapse_tokens(z0.tolist(), slack, collapse) == ys  # a valid alignment indeed
        shown = torch.rand(T, generator=gen) < p_visible  # the positions left visible
        canvas[b, :T][shown] = z0[shown]
    return canvas


def no_repeats(gen, B, U, vocab):
    """Targets (B, U) over tokens 0..vocab-3 where no token equals its neighbour: any slack
    placement is then valid under both collapses, so long cases test the collapses alike."""
    return torch.randint(1, vocab - 2, (B, U), generator=gen).cumsum(1) % (vocab - 2)


def loss_grad(lp, y, T_b, U_b, **kw):
    """ctc_slack_loss (reduction "none" unless given) and its gradient w.r.t. a fresh copy of lp."""
    x = lp.detach().clone().requires_grad_()  # a leaf of its own: calls never share a .grad
    out = ctc_slack_loss(x, y, T_b, U_b, **{"reduction": "none", **kw})
    return out, torch.autograd.grad(out.sum(), x)[0]  # the sum: inf rows add no gradient


# ----------------------------------------------------------------------------------------------
# 1. Brute force: both collapses, both algorithms, with and without a canvas, every corner.


@pytest.mark.parametrize("collapse", ["surface", "standard"])
@pytest.mark.parametrize("algorithm", ["band", "time"])
def test_brute_force(collapse, algorithm):
    gen = torch.Generator().manual_seed(0)
    checked = {"inf": 0, "finite": 0}  # rows seen of each kind
    for trial in range(40):
        lp, y, T_b, U_b, canvas = random_batch(gen, 4, 5, 4, p_visible=0.3 if trial % 2 else 0.0)
        T_b[:3], U_b[:3] = torch.tensor([5, 3, 2]), torch.tensor([0, 3, 4])  # U = 0, K = 0, T < U
        T_b[3] = 0 if trial == 0 else T_b[3]  # and once T = 0
        for c in (None, canvas):
            out = ctc_slack_loss(lp, y, T_b, U_b, slack_id=SLACK, canvas=c, mask_id=MASK,
                                 collapse=collapse, reduction="none", algorithm=algorithm)
            for b in range(4):
                cb = None if c is None else c[b].tolist()  # this row's canvas, as a list
                ref = brute_loss(lp[b], y[b, : U_b[b]].tolist(), int(T_b[b]), cb, collapse)
                checked["inf" if math.isinf(ref) else "finite"] += 1  # count the kinds seen
                if math.isinf(ref):  # no alignment: exactly +inf, never a large finite number
                    assert out[b].item() == math.inf, (b, out[b], ref)
                else:
                    assert abs(out[b].item() - ref) < 1e-10, (b, out[b].item(), ref)
    assert checked["inf"] > 20 and checked["finite"] > 100, checked  # both kinds were exercised


def test_standard_needs_room_for_repeats():
    """y = (a, a) needs a slack between the two a's under the standard collapse:
    T = 2 is too short."""
    lp, y = torch.randn(1, 3, V, **f64).log_softmax(-1), torch.tensor([[1, 1]])
    for algorithm in ("band", "time"):  # the native kernel and the reference agree on it
        kw = dict(slack_id=SLACK, reduction="none", algorithm=algorithm)  # for both paths
        assert ctc_slack_loss(lp, y, [2], [2], collapse="standard", **kw).item() == math.inf
        assert math.isfinite(ctc_slack_loss(lp, y, [3], [2], collapse="standard", **kw))  # room now
        # no merging
        assert math.isfinite(ctc_slack_loss(lp, y, [2], [2], collapse="surface", **kw))


# ----------------------------------------------------------------------------------------------
# 2. Standard collapse without a canvas equals F.ctc_loss (blank = slack)


@pytest.mark.parametrize("algorithm", ["band", "time"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_standard_matches_torch_ctc(reduction, algorithm):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 40, 7, generator=gen, **f64, requires_grad=True)  # B = 5, T = 40, V = 7
    y = torch.randint(0, 3, (5, 15), generator=gen)  # 3 tokens: many repeats
    T_b, U_b = torch.tensor([40, 33, 20, 40, 9]), torch.tensor([15, 10, 0, 12, 6])
    lp = logits.log_softmax(-1)  # the log-probs both losses read
    ours = ctc_slack_loss(lp, y, T_b, U_b, slack_id=6, collapse="standard", reduction=reduction,
                          algorithm=algorithm)
    ref = F.ctc_loss(lp.transpose(0, 1), y, T_b, U_b, blank=6, reduction=reduction)  # time-major
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)  # equal values
    # F.ctc_loss's own gradient assumes a log_softmax in the graph: compare gradients w.r.t. logits.
    g_ours, = torch.autograd.grad(ours.sum(), logits, retain_graph=True)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_zero_infinity_matches_torch_ctc():
    logits = torch.randn(3, 6, V, **f64, requires_grad=True)  # B = 3, T = 6
    y, T_b, U_b = torch.tensor([[0, 1, 1, 2]] * 3), torch.tensor([6, 3, 6]), torch.tensor([4, 4, 2])
    lp = logits.log_softmax(-1)
    for zero_infinity in (False, True):  # row 1 is infeasible (T = 3 < U = 4)
        kw = dict(reduction="none", zero_infinity=zero_infinity)
        ours = ctc_slack_loss(lp, y, T_b, U_b, slack_id=SLACK, collapse="standard", **kw)
        torch.testing.assert_close(ours,
                                   F.ctc_loss(lp.transpose(0, 1), y, T_b, U_b, blank=SLACK, **kw))
    g, = torch.autograd.grad(ours.sum(), logits)  # gradient of the zero_infinity run
    assert ours[1] == 0 and g[1].abs().max() == 0 and g[0].abs().max() > 0  # no gradient from row 1


# ----------------------------------------------------------------------------------------------
# 3. The fast paths equal the loops over time: the standard collapse's native kernel on small
# random cases with every kind of row, and both collapses at T = 1024.


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_standard_native_matches_time_loop(reduction, zero_infinity):
    """Values and gradients w.r.t. log_probs (the true ones, not F.ctc_loss's logits convention),
    float64, on batches mixing feasible rows, infeasible ones (+inf, or 0 with zero_infinity;
    never NaN, zero gradient), U = 0, T = 0, repeats, canvases, -inf log-probs."""
    gen = torch.Generator().manual_seed(12)
    for trial in range(10):
        lp, y, T_b, U_b, canvas = random_batch(gen, 6, 9, 5, p_visible=0.25)
        T_b[:3], U_b[:3] = torch.tensor([9, 0, 9]), torch.tensor([0, 0, 5])  # U = 0; T = U = 0
        padded = torch.where(torch.arange(5) < U_b[:, None], y, -1)  # y cut to U_b, -1 after
        # feasible rows
        canvas[2:4] = feasible_canvas(gen, padded[2:4], T_b[2:4], 9, 0.4, "standard")
        lp[4, 2, 1] = -math.inf  # a log 0 the model itself gives: a token it never emits there
        lp[4, 2] = lp[4, 2].log_softmax(-1)  # still log-probabilities (raw logits are refused)
        c = None if trial % 3 == 0 else canvas  # a third without any canvas
        kw = dict(slack_id=SLACK, canvas=c, mask_id=MASK, collapse="standard", reduction=reduction,
                  zero_infinity=zero_infinity)
        outs, grads = zip(*(loss_grad(lp, y, T_b, U_b, algorithm=a, **kw)
                            for a in ("band", "time")))
        assert not outs[0].isnan().any() and torch.isfinite(grads[0]).all()  # -inf gives no NaN
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)  # inf == inf included
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
        if c is not None:  # exactly zero, not merely small, wherever the canvas shows a token
            assert grads[0][c != MASK].abs().max() == 0


def torch_ctc_float32_error(lp, y, T_b, U_b, blank):
    """How far F.ctc_loss's gradient (w.r.t. the logits lp) in float32 lies from its float64 one."""
    grads = []  # float32, then float64
    for dtype in (torch.float32, torch.float64):
        x = lp.to(dtype).requires_grad_()  # logits in this dtype, a leaf
        out = F.ctc_loss(x.log_softmax(-1).transpose(0, 1), y, T_b, U_b, blank=blank,
                         reduction="sum")
        grads.append(torch.autograd.grad(out, x)[0].double())
    return (grads[0] - grads[1]).abs().max().item()


@pytest.mark.parametrize("collapse", ["surface", "standard"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("visible,scale", [(0.0, 1.0), (0.5, 1.0), (0.5, 20.0)])
def test_fast_matches_time_loop_at_T1024(collapse, dtype, visible, scale):
    """The band (surface) and the native kernel (standard) against the loops over time at T = 1024.
    scale 20 makes the log-probs of y very negative (a path scores ~ -2e4): a fixed stand-in for
    log 0 such as -1e4 would then let forbidden paths leak into the sum."""
    gen = torch.Generator().manual_seed(2)
    T, vocab = 1024, 50  # long enough that real paths score below any fixed stand-in
    T_b, U_b = torch.tensor([1024, 1000]), torch.tensor([920, 760])  # K = 104 and 240
    y = no_repeats(gen, 2, 920, vocab)  # so one random canvas serves both collapses
    padded = torch.where(torch.arange(920) < U_b[:, None], y, -1)  # y cut to U_b, -1 after
    canvas = feasible_canvas(gen, padded, T_b, T, visible, collapse, slack=vocab - 1,
                             mask=vocab - 2)
    raw = scale * torch.randn(2, T, vocab, generator=gen)
    raw[..., vocab - 2] = -1e6  # SUBS's finite ban (MASK has probability 0), as kuleshov's
    lp = raw.log_softmax(-1).to(dtype)
    kw = dict(slack_id=vocab - 1, canvas=canvas, mask_id=vocab - 2, collapse=collapse)
    fast, g_fast = loss_grad(lp, y, T_b, U_b, algorithm="band", **kw)  # band / native kernel
    time_, g_time = loss_grad(lp, y, T_b, U_b, algorithm="time", **kw)  # the loops, float64
    rtol = 1e-9 if dtype == torch.float64 else 1e-6
    assert ((fast - time_).abs() / time_.abs()).max() <= rtol, (fast, time_)
    atol = 1e-7 if dtype == torch.float64 else 1e-5  # posteriors are in [0, 1]
    if collapse == "standard" and dtype == torch.float32:
        # The native kernel runs in the input's float32 (the band always in float64), so its
        # posteriors carry F.ctc_loss's own float32 error, which grows with T and with peaked
        # log-probs: allow what F.ctc_loss itself shows on these log-probs without a canvas.
        atol += 2 * torch_ctc_float32_error(lp, y, T_b, U_b, vocab - 1)
    assert (g_fast - g_time).abs().max() <= atol  # the posteriors agree
    assert fast.dtype == dtype and g_fast.dtype == dtype and torch.isfinite(fast).all()


# ----------------------------------------------------------------------------------------------
# 4. gradcheck: finite differences against each backward (the band's and the native one are
# hand-written; the time loops run under autograd)


@pytest.mark.parametrize("collapse", ["surface", "standard"])
@pytest.mark.parametrize("algorithm", ["band", "time"])
def test_gradcheck(collapse, algorithm):
    gen = torch.Generator().manual_seed(3)
    y = torch.tensor([[0, 1, 1, 2], [2, 2, -1, -1], [0, 1, 2, -1]])  # padded with -1
    U_b, T_b = (y >= 0).sum(1), torch.tensor([7, 5, 6])  # lengths from the padding
    canvas = feasible_canvas(gen, y, T_b, 7, 0.4, collapse)
    y = y.clamp(min=0)  # padding is never read
    lp = torch.randn(3, 7, V, generator=gen, **f64).log_softmax(-1).requires_grad_()
    fn = functools.partial(ctc_slack_loss, targets=y, input_lengths=T_b, target_lengths=U_b,
                           slack_id=SLACK, canvas=canvas, mask_id=MASK, collapse=collapse,
                           reduction="none", algorithm=algorithm)
    assert torch.isfinite(fn(lp)).all() and (canvas != MASK).sum() >= 4  # a real canvas, feasible
    assert torch.autograd.gradcheck(fn, (lp,), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# 5. Closed forms


def test_closed_forms():
    lp = torch.randn(2, 6, V, generator=torch.Generator().manual_seed(4), **f64).log_softmax(-1)
    y = torch.tensor([[0, 1, 1, 2, 0, 2], [2, 0, 0, 1, 2, 1]])  # repeats in both rows
    full, kw = torch.full((2,), 6), dict(slack_id=SLACK, reduction="none")
    # K = 0 (surface): the only alignment is y itself, so L = -sum_t log p_t(y_t) (= cross-entropy).
    ce = -lp.gather(2, y[..., None]).squeeze(-1).sum(1)  # -sum_t log p_t(y_t)
    torch.testing.assert_close(ctc_slack_loss(lp, y, full, full, **kw), ce, rtol=1e-12, atol=1e-12)
    # U = 0: all slack, L = -sum_t log p_t(slack), for both collapses.
    for collapse in ("surface", "standard"):
        out = ctc_slack_loss(lp, y, full, torch.zeros(2, dtype=torch.long), collapse=collapse, **kw)
        torch.testing.assert_close(out, -lp[:, :, SLACK].sum(1), rtol=1e-12, atol=1e-12)
    # A fully visible canvas: 0 if it collapses to y, +inf otherwise (0 with zero_infinity).
    canvas = torch.tensor([[0, SLACK, 1, 1, 2, SLACK], [2, 0, 1, SLACK, 0, SLACK]])  # y, not y
    kw.update(canvas=canvas, mask_id=MASK)  # the canvas from here on
    assert ctc_slack_loss(lp, y, full, [4, 4], **kw).tolist() == [0.0, math.inf]
    assert ctc_slack_loss(lp, y, full, [4, 4], zero_infinity=True, **kw).tolist() == [0.0, 0.0]
    out = ctc_slack_loss(lp, y, full, [4, 4], collapse="standard", **kw)
    assert out[0].item() == math.inf  # standard: "1 1" merges into one 1, so y is not produced


# ----------------------------------------------------------------------------------------------
# 6. Occupancy: each free position is used exactly once, exactly K of them as slack


@pytest.mark.parametrize("collapse", ["surface", "standard"])
@pytest.mark.parametrize("visible", [0.0, 0.3])
def test_occupancy(collapse, visible):
    gen = torch.Generator().manual_seed(5)
    T, vocab = 60, 9  # long enough for many alignments
    T_b, U_b = torch.tensor([60, 50, 41]), torch.tensor([48, 20, 30])
    y = torch.randint(0, vocab - 2, (3, 48), generator=gen)  # repeats possible
    padded = torch.where(torch.arange(48) < U_b[:, None], y, -1)  # y cut to U_b, -1 after
    canvas = feasible_canvas(gen, padded, T_b, T, visible, collapse, slack=vocab - 1,
                             mask=vocab - 2)
    logits = torch.randn(3, T, vocab, generator=gen, **f64)
    logits = logits.index_fill(-1, torch.tensor([vocab - 2]), -math.inf).requires_grad_()  # SUBS
    lp = logits.log_softmax(-1)  # the log-probs the loss reads
    loss = ctc_slack_loss(lp, y, T_b, U_b, slack_id=vocab - 1, canvas=canvas, mask_id=vocab - 2,
                          collapse=collapse, reduction="sum")
    assert torch.isfinite(loss)  # the canvas is feasible
    g_lp, g_logits = torch.autograd.grad(loss, (lp, logits))  # w.r.t. log-probs and logits
    free = (torch.arange(T) < T_b[:, None]) & (canvas == vocab - 2)  # (B, T): masked, inside
    # sum_v d(-log Z)/d log p_t(v) = -(posterior probability that free position t is used) = -1;
    # visible and padding positions are not free and get no gradient.
    torch.testing.assert_close(g_lp.sum(-1), -free.double(), rtol=0, atol=1e-9)
    zeros = torch.zeros(3, T, **f64)  # through log_softmax: the vocabulary sums to 0
    torch.testing.assert_close(g_logits.sum(-1), zeros, rtol=0, atol=1e-9)
    # K - visible slack
    slack_free = (T_b - U_b) - ((canvas == vocab - 1) & free.logical_not()).sum(1)
    if collapse == "surface":  # every alignment has exactly K = T - U slacks
        torch.testing.assert_close(g_lp[..., vocab - 1].sum(1), -slack_free.double(),
                                   rtol=0, atol=1e-9)
    else:
        assert (g_lp[..., vocab - 1].sum(1) > -slack_free).all()  # repeats absorb some positions


# ----------------------------------------------------------------------------------------------
# 7. Padding and batch invariance; infeasible rows; low precision


@pytest.mark.parametrize("collapse", ["surface", "standard"])
def test_padding_and_batch_invariance(collapse):
    gen = torch.Generator().manual_seed(6)
    T, U, vocab = 12, 8, 6
    lp = torch.randn(1, T, vocab, generator=gen, **f64).log_softmax(-1)
    y = torch.tensor([[0, 1, 1, 2, 3, 3, 0, 4]])  # repeats: 1 1, 3 3
    canvas = torch.full((1, T), MASK)  # all masked...
    canvas[0, [0, 5]] = torch.tensor([0, 3])  # ...but two positions
    kw = dict(slack_id=vocab - 1, mask_id=MASK, collapse=collapse)
    alone, g_alone = loss_grad(lp, y, [T], [U], canvas=canvas, **kw)
    # The same example between two others, with 7 more positions and 5 more target slots of junk.
    big_lp = torch.randn(3, T + 7, vocab, generator=gen, **f64).log_softmax(-1)
    big_lp[1, :T] = lp[0]  # the same log-probs in row 1
    big_y = torch.randint(0, vocab - 1, (3, U + 5), generator=gen)
    big_y[1, :U] = y[0]  # the same targets in row 1
    big_canvas = torch.full((3, T + 7), MASK)
    big_canvas[1, :T], big_canvas[1, T:] = canvas[0], 2  # visible junk in the padding is ignored
    big_T, big_U = torch.tensor([19, T, 15]), torch.tensor([13, U, 3])
    out, g = loss_grad(big_lp, big_y, big_T, big_U, canvas=big_canvas, **kw)
    assert math.isfinite(alone.item())
    torch.testing.assert_close(out[1], alone[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g[1, :T], g_alone[0], rtol=1e-10, atol=1e-12)
    assert g[1, T:].abs().max() == 0  # nothing past the example's own length


@pytest.mark.parametrize("collapse", ["surface", "standard"])
@pytest.mark.parametrize("zero_infinity", [False, True])
def test_infeasible_rows_give_inf_and_finite_gradients(collapse, zero_infinity):
    lp = torch.randn(3, 6, V, generator=torch.Generator().manual_seed(7), **f64).log_softmax(-1)
    y = torch.tensor([[0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 0, 0]])
    canvas = torch.full((3, 6), MASK)
    canvas[2, 0] = 2  # position 0 shows a token that y=(0, 1) can never place there
    out, g = loss_grad(lp, y, [6, 3, 6], [4, 4, 2], slack_id=SLACK, canvas=canvas, mask_id=MASK,
                       collapse=collapse, zero_infinity=zero_infinity)  # row 1: T = 3 < U = 4
    bad = 0.0 if zero_infinity else math.inf
    assert math.isfinite(out[0].item()) and out[1].item() == bad and out[2].item() == bad
    assert torch.isfinite(g).all() and g[1:].abs().max() == 0


@pytest.mark.parametrize("collapse", ["surface", "standard"])
@pytest.mark.parametrize("algorithm", ["band", "time"])
def test_long_infeasible_row_is_inf(collapse, algorithm):
    """A long row whose canvas no alignment matches: every path goes through a log 0. Its total
    (~ -1e4 - 2e4 with a fixed stand-in of -1e4) is no smaller than a real path's, so the stand-in
    has to scale with the example for the row to be recognised as infeasible."""
    gen = torch.Generator().manual_seed(11)
    T, vocab = 600, 30
    raw = 20 * torch.randn(2, T, vocab, generator=gen, **f64)
    lp = raw.index_fill(-1, torch.tensor([vocab - 2]), -math.inf).log_softmax(-1)  # SUBS
    y = no_repeats(gen, 2, T, vocab)  # no repeats: row 1 (one slack) is feasible for both collapses
    canvas = torch.full((2, T), vocab - 2)
    canvas[:, 300] = vocab - 1  # a visible slack, but K = 0 leaves no room for one
    out = ctc_slack_loss(lp, y, [T, T], [T, T - 1], slack_id=vocab - 1, canvas=canvas,
                         mask_id=vocab - 2, reduction="none", collapse=collapse,
                         algorithm=algorithm)
    assert out[0].item() == math.inf and math.isfinite(out[1].item()) and out[1].item() > 1e4


@pytest.mark.parametrize("collapse", ["surface", "standard"])
def test_low_precision_inputs(collapse):
    """bfloat16 log-probs: the band computes in float64, the native kernel in float32 (it takes
    float32 and float64 only); both return the input dtype, gradients included."""
    lp = torch.randn(2, 30, V,
                     generator=torch.Generator().manual_seed(13)).log_softmax(-1).bfloat16()
    y, T_b, U_b = torch.tensor([[0, 1, 2, 0, 1]] * 2), torch.tensor([30, 25]), torch.tensor([5, 4])
    out, g = loss_grad(lp, y, T_b, U_b, slack_id=SLACK, collapse=collapse)
    ref = ctc_slack_loss(lp.double(), y, T_b, U_b, slack_id=SLACK, collapse=collapse,
                         reduction="none")
    assert out.dtype == g.dtype == torch.bfloat16  # the input's dtype, whatever ran inside
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=0)  # bfloat16 keeps ~3 digits


# ----------------------------------------------------------------------------------------------
# 8. CPU and CUDA agree (run on a GPU: python -m pytest tests -k cuda)


@needs_cuda
@pytest.mark.parametrize("collapse", ["surface", "standard"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(collapse, dtype):
    """Values and gradients on CUDA equal those on the CPU, with a canvas, an infeasible row
    (a visible token y cannot place) and zero_infinity both ways."""
    gen = torch.Generator().manual_seed(8)
    T_b, U_b, vocab = torch.tensor([200, 180, 150, 200]), torch.tensor([180, 170, 100, 150]), 30
    y = torch.randint(0, vocab - 2, (4, 180), generator=gen)
    padded = torch.where(torch.arange(180) < U_b[:, None], y, -1)
    canvas = feasible_canvas(gen, padded, T_b, 200, 0.3, collapse, slack=vocab - 1, mask=vocab - 2)
    canvas[3] = vocab - 2
    canvas[3, 0] = vocab - 3 if y[3, 0] != vocab - 3 else vocab - 4  # row 3: infeasible
    lp = torch.randn(4, 200, vocab, generator=gen).log_softmax(-1).to(dtype)
    for zero_infinity in (False, True):
        kw = dict(slack_id=vocab - 1, mask_id=vocab - 2, collapse=collapse,
                  zero_infinity=zero_infinity)
        (out, g), (out_c, g_c) = [loss_grad(*(z.to(d) for z in (lp, y, T_b, U_b)),
                                            canvas=canvas.to(d), **kw)
                                  for d in ("cpu", "cuda")]
        # row 3: inf or 0
        assert math.isinf(out_c[3]) != zero_infinity and torch.isfinite(g_c).all()
        torch.testing.assert_close(out, out_c.cpu(), rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(g, g_c.cpu(), rtol=1e-4, atol=1e-5)


@needs_cuda
def test_cuda_porter_api_matches_cpu():
    """The porter API on CUDA tensors (the generator stays on the CPU) gives the CPU's canvases
    and loss."""
    (z0, term), (z0_c, term_c) = [porter_term(porter_batch(torch.Generator().manual_seed(14), 0.2,
                                                           device=d))
                                  for d in ("cpu", "cuda")]
    assert torch.equal(z0, z0_c.cpu())  # the same random numbers, drawn on the CPU, the same canvas
    torch.testing.assert_close(term, term_c.cpu(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The most probable alignment, the collapse map


def test_align_is_the_best_alignment():
    collapse = "surface"  # the only map the alignment (and the "model" placement) uses
    gen = torch.Generator().manual_seed(9)
    for trial in range(30):
        lp, y, T_b, U_b, canvas = random_batch(gen, 4, 6, 4, p_visible=0.3)
        out = ctc_slack._align(lp, y, T_b, U_b, slack_id=SLACK, canvas=canvas, mask_id=MASK)
        assert out.shape == (4, 6) and out.dtype == torch.long
        for b in range(4):
            T, target, a = int(T_b[b]), y[b, : U_b[b]].tolist(), out[b].tolist()
            assert all(tok == SLACK for tok in a[T:])  # padding holds slack
            scores = brute_scores(lp[b], target, T, canvas[b].tolist(), collapse)
            if not scores:  # infeasible: the documented tail placement, targets then slack
                assert a[:T] == (target + [SLACK] * T)[:T]
                continue
            assert collapse_tokens(a[:T], SLACK, collapse) == target
            assert abs(alignment_score(lp[b], a[:T], canvas[b].tolist()) - max(scores)) < 1e-10


def test_align_without_canvas_long():
    """On a longer example the alignment is valid and scores at least as well as
    the tail placement."""
    gen = torch.Generator().manual_seed(10)
    T, U, vocab = 300, 270, 20
    lp = torch.randn(1, T, vocab, generator=gen, **f64).log_softmax(-1)
    y = torch.randint(0, vocab - 1, (1, U), generator=gen)
    a = ctc_slack._align(lp, y, [T], [U], slack_id=vocab - 1)[0]
    assert collapse_tokens(a.tolist(), vocab - 1, "surface") == y[0].tolist()
    tail = torch.cat([y[0], torch.full((T - U,), vocab - 1)])
    a_score, tail_score = (lp[0].gather(1, z[:, None]).sum().item() for z in (a, tail))
    assert a_score >= tail_score and (a == vocab - 1).sum() == T - U


def test_collapse_tokens():
    s = SLACK
    assert collapse_tokens([0, s, 0, 0, s, 1, 1, s], s, "surface") == [0, 0, 0, 1, 1]
    assert collapse_tokens([0, s, 0, 0, s, 1, 1, s], s, "standard") == [0, 0, 1]
    assert collapse_tokens([s, s], s, "standard") == [] and collapse_tokens([], s, "surface") == []
    assert collapse_tokens([2, 2, 2], s, "standard") == [2]  # runs merge
    assert collapse_tokens([2, 2, 2], s, "surface") == [2, 2, 2]  # runs stay


# ----------------------------------------------------------------------------------------------
# 9. The porter API: canvases and the loss term, with mdlm.py's tokens and CE as the reference


def porter_batch(gen, rate, device="cpu", B=5, T=40):
    """A fine-tuning batch as a porter builds one: prompts of different lengths, targets y with
    U_b = R_b - round(rate * R_b), the reference canvas, the forward process, random logits with
    the MASK column at -inf (SUBS, as a porter's model applies it)."""
    P = torch.randint(0, T // 2, (B,), generator=gen)  # prompt lengths, 0 included
    R = T - P  # response canvas lengths
    U = R - (rate * R).round().long()  # K = round(rate * R) slacks each
    y = torch.randint(0, 256, (B, int(U.max())), generator=gen)
    prompt = torch.randint(0, 256, (B, int(P.max())), generator=gen)
    resp = place_slack(y.to(device), target_lengths=U.to(device), canvas_lengths=R.to(device),
                       slack_id=BSLACK, generator=gen)
    z0, is_prompt = build_canvas(prompt.to(device), resp, prompt_lengths=P.to(device),
                                 canvas_length=T)
    t = mdlm.sample_t(B, generator=gen)  # (B,) stratified times
    z_t = mdlm.forward_mask(z0.cpu(), t, "linear", mask_id=BMASK, generator=gen,
                             is_prompt=is_prompt.cpu())  # (B, T)
    logits = torch.randn(B, T, mdlm.BYTE_VOCAB_SIZE, generator=gen, **f64)
    logits[..., BMASK] = -math.inf  # SUBS: the model never predicts MASK
    b = dict(P=P, R=R, U=U, y=y, prompt=prompt, resp=resp, z0=z0, is_prompt=is_prompt, t=t, z_t=z_t,
             logits=logits)
    return {k: v.to(device) for k, v in b.items()}


def porter_term(b, collapse="surface", schedule="linear"):
    """(z0, slack_ctc_term) of a porter batch, weighted by the NELBO weight w(t) of the schedule."""
    w = mdlm.w_t(b["t"], schedule)  # the CE term's weight: 1/t for the linear schedule
    return b["z0"], slack_ctc_term(b["logits"], b["z_t"], b["y"], prompt_lengths=b["P"],
                                   target_lengths=b["U"], weight=w, slack_id=BSLACK,
                                   mask_id=BMASK, collapse=collapse)


def test_place_slack_counts_order_and_noise():
    """Each row holds exactly K_b = R_b - U_b slacks inside R_b, slack past it, and y in order;
    "tail" puts y first. Both placements draw the same random numbers, so whatever follows them
    (the masking noise) is the same for a CE run (tail) and a CTC run (random)."""
    y = torch.randint(0, 256, (4, 30), generator=torch.Generator().manual_seed(0))
    U, R = torch.tensor([30, 10, 17, 0]), torch.tensor([33, 30, 17, 5])  # K = 3, 20, 0, 5
    canvases, after = {}, {}
    for placement in ("random", "tail"):
        gen = torch.Generator().manual_seed(1)
        canvases[placement] = c = place_slack(y, placement, target_lengths=U, canvas_lengths=R,
                                              slack_id=BSLACK, generator=gen)
        after[placement] = torch.rand(8, generator=gen)  # what the forward process would draw next
        assert c.shape == (4, 33) and c.dtype == torch.long
        for row, u, r, target in zip(c.tolist(), U.tolist(), R.tolist(), y.tolist()):
            assert row[r:] == [BSLACK] * (33 - r) and row[:r].count(BSLACK) == r - u  # K_b
            assert collapse_tokens(row, BSLACK, "surface") == target[:u]  # y in order
    assert torch.equal(after["random"], after["tail"])  # the same generator consumption
    assert canvases["tail"][1, :10].tolist() == y[1, :10].tolist()  # tail: targets first
    assert not torch.equal(canvases["random"], canvases["tail"])  # random really moved slack


def test_build_canvas_round_trip():
    """Prompt tokens then the response canvas; response_positions reads the response back."""
    b = porter_batch(torch.Generator().manual_seed(2), rate=0.2)
    T, R_max = b["z0"].shape[1], b["resp"].shape[1]
    for i, (P, R) in enumerate(zip(b["P"].tolist(), b["R"].tolist())):
        assert b["z0"][i, :P].tolist() == b["prompt"][i, :P].tolist() and P + R == T
        assert b["z0"][i, P:].tolist() == b["resp"][i, :R].tolist()
        assert b["is_prompt"][i].tolist() == [True] * P + [False] * R
    back = b["z0"].gather(1, response_positions(b["P"], R_max, T))  # (B, R_max), left-aligned
    inside = torch.arange(R_max) < b["R"][:, None]  # past R_b: clamped reads, not the response
    assert torch.equal(back[inside], b["resp"][inside])


def test_response_log_probs():
    """Left-aligned log-softmax of the logits at P_b + j, MASK at -inf, in float32 or the
    logits' dtype if wider (float64 stays float64, bf16 becomes float32); logits whose MASK
    column could take mass are refused, a head without one (mask_id = V) is read as is."""
    b = porter_batch(torch.Generator().manual_seed(3), rate=0.1)
    raw = b["logits"].clone()
    raw[..., BMASK] = 0.0
    with pytest.raises(ValueError, match="MASK column"):
        response_log_probs(raw, int(b["R"].max()), prompt_lengths=b["P"], mask_id=BMASK)
    headless = b["logits"][..., :BMASK]  # no MASK column at all
    lp = response_log_probs(headless, 4, prompt_lengths=b["P"], mask_id=BMASK)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:2], dtype=lp.dtype))
    for dtype, want in ((torch.float64, torch.float64), (torch.float32, torch.float32),
                        (torch.bfloat16, torch.float32)):
        logits = b["logits"].to(dtype)
        lp = response_log_probs(logits, int(b["R"].max()), prompt_lengths=b["P"], mask_id=BMASK)
        assert lp.shape == (5, int(b["R"].max()), mdlm.BYTE_VOCAB_SIZE) and lp.dtype == want
        assert (lp[..., BMASK] == -math.inf).all()  # SUBS: MASK is never a prediction
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(lp.shape[:2], dtype=want))
        ref = logits[2, int(b["P"][2]) + 3].to(want)  # response position 3 of example 2, by hand
        ref[BMASK] = -math.inf
        torch.testing.assert_close(lp[2, 3], ref.log_softmax(-1))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_slack_ctc_term_equals_ce_without_slack(schedule):
    """K = 0 and the surface collapse: the only alignment is y itself, so the CTC term is the
    position-wise CE (the NELBO) exactly: same weight w(t), same 1/R, same positions scored."""
    b = porter_batch(torch.Generator().manual_seed(4), rate=0.0)
    ce = mdlm.mdlm_loss(b["logits"], b["z0"], b["z_t"], b["t"], schedule,
                         is_prompt=b["is_prompt"])  # float32, as mdlm computes it
    b32 = {**b, "logits": b["logits"].float()}  # float32 logits: the term in float32 too
    torch.testing.assert_close(porter_term(b32, schedule=schedule)[1], ce, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("collapse", ["surface", "standard"])
def test_slack_ctc_term_at_most_ce(collapse):
    """With slack, CE scores one alignment (z0 itself) and CTC the sum over all of them that agree
    with z_t, z0 among them: CTC <= CE wherever z0 collapses to y (under standard, a repeat in y
    with no slack between would merge: those rows are left out)."""
    b = porter_batch(torch.Generator().manual_seed(5), rate=0.25)
    ctc = porter_term(b, collapse)[1]  # (B,)
    ce = mdlm.mdlm_loss(b["logits"], b["z0"], b["z_t"], b["t"], is_prompt=b["is_prompt"])
    ok = [collapse_tokens(r, BSLACK, collapse) == y[:u] for r, y, u in
          zip(b["resp"].tolist(), b["y"].tolist(), b["U"].tolist())]  # z0 is an alignment of y
    assert any(ok) and torch.isfinite(ctc[ok]).all()
    assert (ctc[ok] <= ce[ok] + 1e-6).all() and (ctc[ok] < ce[ok] - 1e-3).any()  # and strictly less


def test_align_slack_is_the_best_canvas():
    """The "model" placement: a reference canvas with exactly K slacks, y in order, scoring the most
    of all canvases under the log-probs (brute force on a tiny case); the alignment underneath."""
    lp = torch.randn(3, 6, V, generator=torch.Generator().manual_seed(6), **f64).log_softmax(-1)
    y, U, R = torch.tensor([[0, 1, 1, 2]] * 3), torch.tensor([4, 3, 2]), torch.tensor([6, 5, 6])
    out = align_slack(lp, y, target_lengths=U, canvas_lengths=R, slack_id=SLACK)
    assert torch.equal(out, ctc_slack._align(lp, y, R, U, slack_id=SLACK))  # lengths in CTC order
    for b, (row, u, r) in enumerate(zip(out.tolist(), U.tolist(), R.tolist())):
        assert (row[r:] == [SLACK] * (6 - r)
                and collapse_tokens(row, SLACK, "surface") == y[b, :u].tolist())
        best = max(brute_scores(lp[b], y[b, :u].tolist(), r, None, "surface"))  # over all canvases
        assert abs(alignment_score(lp[b], row[:r], None) - best) < 1e-10


def test_slack_count_is_pythons_round():
    """K = round(rate * R), half to even as Python rounds, for ints and tensors alike."""
    for rate in (0.0, 0.05, 0.1, 0.2, 0.25, 0.5):
        R = torch.arange(0, 200)
        want = [round(rate * r) for r in R.tolist()]
        assert slack_count(R, rate).tolist() == want
        assert [int(slack_count(r, rate)) for r in R.tolist()] == want
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        slack_count(10, 1.0)


def test_porter_api_refuses_swaps_and_bad_arguments():
    """Every malformed call is a ValueError (or, for a wrong kind of value, a TypeError) that says
    what was expected; swapped lengths (more
    targets than canvas positions) are refused, never quietly turned into a tail placement."""
    y, U, R = torch.zeros(2, 5, dtype=torch.long), torch.tensor([5, 3]), torch.tensor([6, 4])
    lp = torch.randn(2, 6, V, **f64).log_softmax(-1)
    wide = torch.zeros(2, 8, dtype=torch.long)  # room for the swapped target lengths
    with pytest.raises(ValueError, match="swapped"):
        place_slack(wide, target_lengths=torch.tensor([6, 4]), canvas_lengths=torch.tensor([5, 3]),
                    slack_id=SLACK)
    with pytest.raises(ValueError, match="swapped"):
        align_slack(lp, y, target_lengths=torch.tensor([5, 5]), canvas_lengths=torch.tensor([4, 6]),
                    slack_id=SLACK)
    with pytest.raises(TypeError):  # lengths are keyword-only: a positional swap cannot happen
        place_slack(y, "random", U, R, slack_id=SLACK)
    bad = [  # (call, words the message must hold)
        (lambda: place_slack(y, "middle", target_lengths=U, canvas_lengths=R, slack_id=SLACK),
         "placement"),
        (lambda: place_slack(y, target_lengths=U[:1], canvas_lengths=R, slack_id=SLACK),
         "target_lengths must be 2 integers"),
        (lambda: ctc_slack_loss(lp[0], y, R, U, slack_id=SLACK), "log_probs must be (B, T, V)"),
        (lambda: ctc_slack_loss(lp, y.float(), R, U, slack_id=SLACK),
         "targets must hold integer ids"),
        (lambda: ctc_slack_loss(lp, y, R, torch.tensor([5, 9]), slack_id=SLACK),
         "targets has only U_max = 5 columns"),
        (lambda: ctc_slack_loss(lp, y, torch.tensor([7, 4]), U, slack_id=SLACK),
         "input_lengths must lie in [0, 6]"),
        (lambda: ctc_slack_loss(lp, y + SLACK, R, U, slack_id=SLACK), "targets hold slack_id"),
        (lambda: ctc_slack_loss(lp, y, R, U, slack_id=V), "not an id"),
        (lambda: ctc_slack_loss(lp, y, R, U, slack_id=SLACK, canvas=y), "canvas must be (B, T)"),
        (lambda: ctc_slack_loss(lp, y, R, U, slack_id=SLACK, collapse="greedy"), "collapse"),
        (lambda: ctc_slack_loss(lp, y, R, U, slack_id=SLACK, reduction="avg"), "reduction"),
        (lambda: ctc_slack._align(lp, y, R, U, slack_id=SLACK, collapse="standard"), "surface"),
        (lambda: build_canvas(y, y, prompt_lengths=torch.tensor([9, 0]), canvas_length=8),
         "prompt_lengths must lie in"),
    ]
    for call, words in bad:
        with pytest.raises((TypeError, ValueError)) as e:  # a wrong kind, or a wrong value
            call()
        assert words in str(e.value), (words, str(e.value))


def test_slack_last_ranks_slack_below_every_real_proposal():
    """The decoding helper: slack proposals go below all real ones, each group in its own order,
    and a slack proposal at or above the threshold keeps its place."""
    conf = torch.tensor([[0.9, 0.2, 0.95, 0.5, 0.1]])
    prop = torch.tensor([[SLACK, 0, SLACK, 1, 2]])
    masked = torch.ones_like(prop, dtype=torch.bool)
    order = slack_last(conf, prop, slack_id=SLACK, masked=masked).argsort(descending=True)
    order = order[0].tolist()
    assert order == [3, 1, 4, 2, 0]  # real tokens by confidence, then the slacks by theirs
    order = slack_last(conf, prop, slack_id=SLACK, masked=masked, threshold=0.92)
    order = order.argsort(descending=True)[0]
    assert order.tolist() == [2, 3, 1, 4, 0]  # the 0.95 slack stays first
