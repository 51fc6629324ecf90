"""Exactness tests for ctc_slack.py: every fast path against a slow obvious one (enumeration of all
alignments, torch.nn.functional.ctc_loss, the loop over time), plus the invariants of METHOD.md
section 6. Run: python -m pytest tests/test_ctc_slack.py"""

import itertools
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ctc_slack import collapse_tokens, ctc_slack_align, ctc_slack_loss

V, SLACK, MASK = 4, 3, 9  # tiny vocabulary: tokens 0..2, slack 3; MASK outside the vocabulary
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """The loops run many small ops; on a shared 2-core machine one thread is faster and steadier."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# Helpers


def alignment_score(lp, a, canvas):
    """log prob of one alignment a given the canvas (visible: log 1 if it agrees, else log 0)."""
    total = 0.0
    for t, tok in enumerate(a):
        if canvas is not None and canvas[t] != MASK:
            if canvas[t] != tok:
                return -math.inf
        else:
            total += lp[t, tok].item()
    return total


def brute_scores(lp, y, T, canvas, collapse):
    """Scores of every alignment of length T over the vocabulary that collapses to y."""
    alignments = itertools.product(range(lp.shape[1]), repeat=T)
    valid = [a for a in alignments if collapse_tokens(list(a), SLACK, collapse) == y]
    scores = [alignment_score(lp, a, canvas) for a in valid]
    return [s for s in scores if s > -math.inf]


def brute_loss(lp, y, T, canvas, collapse):
    scores = brute_scores(lp, y, T, canvas, collapse)
    return -torch.tensor(scores, dtype=torch.float64).logsumexp(0).item() if scores else math.inf


def random_batch(gen, B, T_max, U_max, p_visible, vocab=V):
    """Random log-probs, targets with many repeats, lengths in [0, max] and a random canvas whose
    visible positions hold tokens and slack (often inconsistent with y: infeasible rows)."""
    lp = torch.randn(B, T_max, vocab, generator=gen, dtype=torch.float64).log_softmax(-1)
    targets = torch.randint(0, 2, (B, U_max), generator=gen)  # two tokens only: repeats are common
    T_b = torch.randint(0, T_max + 1, (B,), generator=gen)
    U_b = torch.randint(0, U_max + 1, (B,), generator=gen)
    canvas = torch.full((B, T_max), MASK)
    visible = torch.rand(B, T_max, generator=gen) < p_visible
    canvas[visible] = torch.randint(0, vocab, (int(visible.sum()),), generator=gen)
    return lp, targets, T_b, U_b, canvas


def feasible_canvas(gen, y, T_b, T_max, p_visible, collapse="surface", slack=SLACK, mask=MASK):
    """A canvas showing a random fraction of one valid alignment of y (y padded with -1; slack at
    random places)."""
    B = y.shape[0]
    canvas = torch.full((B, T_max), mask)
    for b in range(B):
        U, T = int((y[b] >= 0).sum()), int(T_b[b])
        keep = torch.randperm(T, generator=gen)[:U].sort().values
        z0 = torch.full((T,), slack)
        z0[keep] = y[b, :U]
        if collapse == "standard" and collapse_tokens(z0.tolist(), slack, collapse) != y[b, :U].tolist():
            continue  # a run merged two equal tokens: leave this row without a canvas
        shown = torch.rand(T, generator=gen) < p_visible
        canvas[b, :T][shown] = z0[shown]
    return canvas


# ----------------------------------------------------------------------------------------------
# 1. Brute force


@pytest.mark.parametrize("collapse", ["surface", "standard"])
@pytest.mark.parametrize("algorithm", ["band", "time"])
def test_brute_force(collapse, algorithm):
    gen = torch.Generator().manual_seed(0)
    checked = {"inf": 0, "finite": 0}
    for trial in range(40):
        lp, y, T_b, U_b, canvas = random_batch(gen, 4, 5, 4, p_visible=0.3 if trial % 2 else 0.0)
        # Hand-picked corners: U = 0, K = 0, T < U, T = 0.
        T_b[:3], U_b[:3] = torch.tensor([5, 3, 2]), torch.tensor([0, 3, 4])
        T_b[3] = 0 if trial == 0 else T_b[3]
        for use_canvas in (False, True):
            c = canvas if use_canvas else None
            out = ctc_slack_loss(lp, y, T_b, U_b, slack_id=SLACK, canvas=c, mask_id=MASK, collapse=collapse,
                                 reduction="none", algorithm=algorithm)
            for b in range(4):
                cb = canvas[b].tolist() if use_canvas else None
                ref = brute_loss(lp[b], y[b, : U_b[b]].tolist(), int(T_b[b]), cb, collapse)
                if math.isinf(ref):
                    assert out[b].item() == math.inf, (b, out[b], ref)
                    checked["inf"] += 1
                else:
                    assert abs(out[b].item() - ref) < 1e-10, (b, out[b].item(), ref)
                    checked["finite"] += 1
    assert checked["inf"] > 20 and checked["finite"] > 100, checked  # both kinds were exercised


def test_standard_needs_room_for_repeats():
    """y = (a, a) needs a slack between the two a's under the standard collapse: T = 2 is too short."""
    lp = torch.randn(1, 3, V, dtype=torch.float64).log_softmax(-1)
    y = torch.tensor([[1, 1]])
    kw = dict(slack_id=SLACK, reduction="none")
    assert ctc_slack_loss(lp, y, [2], [2], collapse="standard", **kw).item() == math.inf
    assert math.isfinite(ctc_slack_loss(lp, y, [3], [2], collapse="standard", **kw).item())
    assert math.isfinite(ctc_slack_loss(lp, y, [2], [2], collapse="surface", **kw).item())


# ----------------------------------------------------------------------------------------------
# 2. Standard collapse without a canvas equals F.ctc_loss (blank = slack)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_standard_matches_torch_ctc(reduction):
    gen = torch.Generator().manual_seed(1)
    B, T, vocab = 5, 40, 7
    logits = torch.randn(B, T, vocab, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (B, 15), generator=gen)  # 3 tokens: many repeats
    T_b, U_b = torch.tensor([40, 33, 20, 40, 9]), torch.tensor([15, 10, 0, 12, 6])
    lp = logits.log_softmax(-1)
    ours = ctc_slack_loss(lp, y, T_b, U_b, slack_id=vocab - 1, collapse="standard", reduction=reduction)
    ref = F.ctc_loss(lp.transpose(0, 1), y, T_b, U_b, blank=vocab - 1, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    # F.ctc_loss's own gradient assumes a log_softmax in the graph: compare gradients w.r.t. logits.
    g_ours, = torch.autograd.grad(ours.sum(), logits, retain_graph=True)
    g_ref, = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_zero_infinity_matches_torch_ctc():
    logits = torch.randn(3, 6, V, dtype=torch.float64, requires_grad=True)
    y, T_b, U_b = torch.tensor([[0, 1, 1, 2]] * 3), torch.tensor([6, 3, 6]), torch.tensor([4, 4, 2])
    lp = logits.log_softmax(-1)
    for zero_infinity in (False, True):
        ours = ctc_slack_loss(lp, y, T_b, U_b, slack_id=SLACK, collapse="standard", reduction="none",
                              zero_infinity=zero_infinity)
        ref = F.ctc_loss(lp.transpose(0, 1), y, T_b, U_b, blank=SLACK, reduction="none",
                         zero_infinity=zero_infinity)
        torch.testing.assert_close(ours, ref)
    g, = torch.autograd.grad(ours.sum(), logits)
    assert ours[1] == 0 and g[1].abs().max() == 0 and g[0].abs().max() > 0


# ----------------------------------------------------------------------------------------------
# 3. The band equals the loop over time at T = 1024


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("visible,scale", [(0.0, 1.0), (0.5, 1.0), (0.5, 20.0)])
def test_band_matches_time_loop(dtype, visible, scale):
    """scale 20 makes the log-probs of y very negative (a path scores ~ -2e4): a fixed stand-in for
    log 0 such as -1e4 would then let forbidden paths leak into the sum."""
    gen = torch.Generator().manual_seed(2)
    B, T, vocab = 2, 1024, 50
    T_b, U_b = torch.tensor([1024, 1000]), torch.tensor([920, 760])  # K = 104 and 240
    y = torch.randint(0, vocab - 2, (B, 920), generator=gen)
    padded = torch.where(torch.arange(920) < U_b[:, None], y, -1)
    canvas = feasible_canvas(gen, padded, T_b, T, visible, slack=vocab - 1, mask=vocab - 2)
    lp = (scale * torch.randn(B, T, vocab, generator=gen)).log_softmax(-1).to(dtype).requires_grad_()
    kw = dict(slack_id=vocab - 1, canvas=canvas, mask_id=vocab - 2, reduction="none")
    band = ctc_slack_loss(lp, y, T_b, U_b, algorithm="band", **kw)
    g_band, = torch.autograd.grad(band.sum(), lp)
    time_ = ctc_slack_loss(lp, y, T_b, U_b, algorithm="time", **kw)
    g_time, = torch.autograd.grad(time_.sum(), lp)
    rtol = 1e-9 if dtype == torch.float64 else 1e-6
    assert ((band - time_).abs() / time_.abs()).max() <= rtol, (band, time_)
    atol = 1e-7 if dtype == torch.float64 else 1e-5  # posteriors are in [0, 1]
    assert (g_band - g_time).abs().max() <= atol
    assert band.dtype == dtype and g_band.dtype == dtype and torch.isfinite(band).all()


# ----------------------------------------------------------------------------------------------
# 4. gradcheck


@pytest.mark.parametrize("collapse,algorithm",
                         [("surface", "band"), ("surface", "time"), ("standard", "time")])
def test_gradcheck(collapse, algorithm):
    gen = torch.Generator().manual_seed(3)
    B, T = 3, 7
    y = torch.tensor([[0, 1, 1, 2], [2, 2, -1, -1], [0, 1, 2, -1]])
    U_b, T_b = (y >= 0).sum(1), torch.tensor([7, 5, 6])
    canvas = feasible_canvas(gen, y, T_b, T, 0.4, collapse)
    y = y.clamp(min=0)
    lp = torch.randn(B, T, V, generator=gen, dtype=torch.float64).log_softmax(-1).requires_grad_()
    fn = lambda x: ctc_slack_loss(x, y, T_b, U_b, slack_id=SLACK, canvas=canvas, mask_id=MASK,  # noqa: E731
                                  collapse=collapse, reduction="none", algorithm=algorithm)
    assert torch.isfinite(fn(lp)).all() and (canvas != MASK).sum() >= 4
    assert torch.autograd.gradcheck(fn, (lp,), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# 5. Closed forms


def test_closed_forms():
    gen = torch.Generator().manual_seed(4)
    B, T = 2, 6
    lp = torch.randn(B, T, V, generator=gen, dtype=torch.float64).log_softmax(-1)
    y = torch.tensor([[0, 1, 1, 2, 0, 2], [2, 0, 0, 1, 2, 1]])
    full = torch.full((B,), T)
    kw = dict(slack_id=SLACK, reduction="none")
    # K = 0 (surface): the only alignment is y itself, so L = -sum_t log p_t(y_t) (= cross-entropy).
    ce = -lp.gather(2, y[..., None]).squeeze(-1).sum(1)
    torch.testing.assert_close(ctc_slack_loss(lp, y, full, full, **kw), ce, rtol=1e-12, atol=1e-12)
    # U = 0: all slack, L = -sum_t log p_t(slack), for both collapses.
    all_slack = -lp[:, :, SLACK].sum(1)
    for collapse in ("surface", "standard"):
        out = ctc_slack_loss(lp, y, full, torch.zeros(B, dtype=torch.long), collapse=collapse, **kw)
        torch.testing.assert_close(out, all_slack, rtol=1e-12, atol=1e-12)
    # A fully visible canvas: 0 if it collapses to y, +inf otherwise (0 with zero_infinity).
    canvas = torch.tensor([[0, SLACK, 1, 1, 2, SLACK], [2, 0, 1, SLACK, 0, SLACK]])  # y, not y
    U_b = torch.tensor([4, 4])
    out = ctc_slack_loss(lp, y, full, U_b, canvas=canvas, mask_id=MASK, **kw)
    assert out[0].item() == 0 and out[1].item() == math.inf
    out = ctc_slack_loss(lp, y, full, U_b, canvas=canvas, mask_id=MASK, zero_infinity=True, **kw)
    assert out.tolist() == [0.0, 0.0]
    out = ctc_slack_loss(lp, y, full, U_b, canvas=canvas, mask_id=MASK, collapse="standard", **kw)
    assert out[0].item() == math.inf  # standard: "1 1" merges into one 1, so y is not produced


# ----------------------------------------------------------------------------------------------
# 6. Occupancy: each free position is used exactly once, exactly K of them as slack


@pytest.mark.parametrize("collapse", ["surface", "standard"])
@pytest.mark.parametrize("visible", [0.0, 0.3])
def test_occupancy(collapse, visible):
    gen = torch.Generator().manual_seed(5)
    B, T, vocab = 3, 60, 9
    T_b, U_b = torch.tensor([60, 50, 41]), torch.tensor([48, 20, 30])
    y = torch.randint(0, vocab - 2, (B, 48), generator=gen)
    padded = torch.where(torch.arange(48) < U_b[:, None], y, -1)
    canvas = feasible_canvas(gen, padded, T_b, T, visible, collapse, slack=vocab - 1, mask=vocab - 2)
    logits = torch.randn(B, T, vocab, generator=gen, dtype=torch.float64, requires_grad=True)
    lp = logits.log_softmax(-1)
    loss = ctc_slack_loss(lp, y, T_b, U_b, slack_id=vocab - 1, canvas=canvas, mask_id=vocab - 2,
                          collapse=collapse, reduction="sum")
    assert torch.isfinite(loss)
    g_lp, g_logits = torch.autograd.grad(loss, (lp, logits))
    free = (torch.arange(T) < T_b[:, None]) & (canvas == vocab - 2)  # (B, T): masked, inside
    # sum_v d(-log Z)/d log p_t(v) = -(posterior probability that free position t is used) = -1;
    # visible and padding positions are not free and get no gradient.
    torch.testing.assert_close(g_lp.sum(-1), -free.double(), rtol=0, atol=1e-9)
    zeros = torch.zeros(B, T, dtype=torch.float64)  # through log_softmax: the vocabulary sums to 0
    torch.testing.assert_close(g_logits.sum(-1), zeros, rtol=0, atol=1e-9)
    slack_free = (T_b - U_b) - ((canvas == vocab - 1) & free.logical_not()).sum(1)  # K - visible slack
    if collapse == "surface":  # every alignment has exactly K = T - U slacks
        torch.testing.assert_close(g_lp[..., vocab - 1].sum(1), -slack_free.double(), rtol=0, atol=1e-9)
    else:
        assert (g_lp[..., vocab - 1].sum(1) > -slack_free).all()  # repeats absorb some positions


# ----------------------------------------------------------------------------------------------
# 7. Padding and batch invariance


@pytest.mark.parametrize("collapse", ["surface", "standard"])
def test_padding_and_batch_invariance(collapse):
    gen = torch.Generator().manual_seed(6)
    T, U, vocab = 12, 8, 6
    lp = torch.randn(1, T, vocab, generator=gen, dtype=torch.float64).log_softmax(-1)
    y = torch.tensor([[0, 1, 1, 2, 3, 3, 0, 4]])
    canvas = torch.full((1, T), MASK)
    canvas[0, [0, 5]] = torch.tensor([0, 3])
    kw = dict(slack_id=vocab - 1, mask_id=MASK, collapse=collapse, reduction="none")
    lp_alone = lp.clone().requires_grad_()
    alone = ctc_slack_loss(lp_alone, y, [T], [U], canvas=canvas, **kw)
    alone.backward()
    # The same example between two others, with 7 more positions and 5 more target slots of junk.
    big_lp = torch.randn(3, T + 7, vocab, generator=gen, dtype=torch.float64).log_softmax(-1)
    big_lp[1, :T] = lp[0]
    big_lp.requires_grad_()
    big_y = torch.randint(0, vocab - 1, (3, U + 5), generator=gen)
    big_y[1, :U] = y[0]
    big_canvas = torch.full((3, T + 7), MASK)
    big_canvas[1, :T], big_canvas[1, T:] = canvas[0], 2  # visible junk in the padding is ignored
    out = ctc_slack_loss(big_lp, big_y, torch.tensor([19, T, 15]), torch.tensor([13, U, 3]),
                         canvas=big_canvas, **kw)
    out.sum().backward()
    assert math.isfinite(alone.item())
    torch.testing.assert_close(out[1], alone[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(big_lp.grad[1, :T], lp_alone.grad[0], rtol=1e-10, atol=1e-12)
    assert big_lp.grad[1, T:].abs().max() == 0


def test_infeasible_rows_give_inf_and_finite_gradients():
    gen = torch.Generator().manual_seed(7)
    lp = torch.randn(3, 6, V, generator=gen, dtype=torch.float64).log_softmax(-1).requires_grad_()
    y = torch.tensor([[0, 1, 2, 0], [0, 1, 2, 0], [0, 1, -1, -1]]).clamp(min=0)
    canvas = torch.full((3, 6), MASK)
    canvas[2, 0] = 2  # position 0 shows a token that y=(0, 1) can never place there
    for collapse in ("surface", "standard"):
        for zero_infinity in (False, True):
            out = ctc_slack_loss(lp, y, [6, 3, 6], [4, 4, 2], slack_id=SLACK, canvas=canvas, mask_id=MASK,
                                 collapse=collapse, reduction="none", zero_infinity=zero_infinity)
            bad = 0.0 if zero_infinity else math.inf
            assert math.isfinite(out[0].item()) and out[1].item() == bad and out[2].item() == bad
            lp.grad = None
            out.sum().backward()
            assert torch.isfinite(lp.grad).all() and lp.grad[1:].abs().max() == 0


@pytest.mark.parametrize("algorithm", ["band", "time"])
def test_long_infeasible_row_is_inf(algorithm):
    """A long row whose canvas no alignment matches: every path goes through a log 0. Its total
    (~ -1e4 - 2e4 with a fixed stand-in of -1e4) is no smaller than a real path's, so the stand-in
    has to scale with the example for the row to be recognised as infeasible."""
    gen = torch.Generator().manual_seed(11)
    T, vocab = 600, 30
    lp = (20 * torch.randn(2, T, vocab, generator=gen, dtype=torch.float64)).log_softmax(-1)
    y = torch.randint(0, vocab - 2, (2, T), generator=gen)
    canvas = torch.full((2, T), vocab - 2)
    canvas[:, 300] = vocab - 1  # a visible slack, but K = 0 leaves no room for one
    out = ctc_slack_loss(lp, y, [T, T], [T, T - 1], slack_id=vocab - 1, canvas=canvas, mask_id=vocab - 2,
                         reduction="none", algorithm=algorithm)
    assert out[0].item() == math.inf and math.isfinite(out[1].item()) and out[1].item() > 1e4


# ----------------------------------------------------------------------------------------------
# 8. CPU and CUDA agree


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("collapse", ["surface", "standard"])
def test_cuda_matches_cpu(collapse):
    gen = torch.Generator().manual_seed(8)
    B, T, vocab = 4, 200, 30
    T_b, U_b = torch.tensor([200, 180, 150, 200]), torch.tensor([180, 170, 100, 150])
    y = torch.randint(0, vocab - 2, (B, 180), generator=gen)
    padded = torch.where(torch.arange(180) < U_b[:, None], y, -1)
    canvas = feasible_canvas(gen, padded, T_b, T, 0.3, collapse, slack=vocab - 1, mask=vocab - 2)
    lp = torch.randn(B, T, vocab, generator=gen).log_softmax(-1)
    results = []
    for device in ("cpu", "cuda"):
        x = lp.to(device).requires_grad_()
        out = ctc_slack_loss(x, y.to(device), T_b.to(device), U_b.to(device), slack_id=vocab - 1,
                             canvas=canvas.to(device), mask_id=vocab - 2, collapse=collapse, reduction="sum")
        out.backward()
        results.append((out.cpu(), x.grad.cpu()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The most probable alignment, the collapse map, the benchmark command


@pytest.mark.parametrize("collapse", ["surface", "standard"])
def test_align_is_the_best_alignment(collapse):
    gen = torch.Generator().manual_seed(9)
    for trial in range(30):
        lp, y, T_b, U_b, canvas = random_batch(gen, 4, 6, 4, p_visible=0.3)
        out = ctc_slack_align(lp, y, T_b, U_b, slack_id=SLACK, canvas=canvas, mask_id=MASK,
                              collapse=collapse)
        assert out.shape == (4, 6) and out.dtype == torch.long
        for b in range(4):
            T, target = int(T_b[b]), y[b, : U_b[b]].tolist()
            a = out[b].tolist()
            assert all(tok == SLACK for tok in a[T:])  # padding holds slack
            scores = brute_scores(lp[b], target, T, canvas[b].tolist(), collapse)
            if not scores:  # infeasible: the documented tail placement, targets then slack
                assert a[:T] == (target + [SLACK] * T)[:T]
                continue
            assert collapse_tokens(a[:T], SLACK, collapse) == target
            assert abs(alignment_score(lp[b], a[:T], canvas[b].tolist()) - max(scores)) < 1e-10


def test_align_without_canvas_long():
    """On a longer example the alignment is valid and scores at least as well as the tail placement."""
    gen = torch.Generator().manual_seed(10)
    T, U, vocab = 300, 270, 20
    lp = torch.randn(1, T, vocab, generator=gen, dtype=torch.float64).log_softmax(-1)
    y = torch.randint(0, vocab - 1, (1, U), generator=gen)
    a = ctc_slack_align(lp, y, [T], [U], slack_id=vocab - 1)[0]
    assert collapse_tokens(a.tolist(), vocab - 1, "surface") == y[0].tolist()
    tail = torch.cat([y[0], torch.full((T - U,), vocab - 1)])
    score = lambda z: lp[0].gather(1, z[:, None]).sum().item()  # noqa: E731
    assert score(a) >= score(tail) and (a == vocab - 1).sum() == T - U


def test_collapse_tokens():
    s = SLACK
    assert collapse_tokens([0, s, 0, 0, s, 1, 1, s], s, "surface") == [0, 0, 0, 1, 1]
    assert collapse_tokens([0, s, 0, 0, s, 1, 1, s], s, "standard") == [0, 0, 1]
    assert collapse_tokens([s, s], s, "standard") == [] and collapse_tokens([], s, "surface") == []
    assert collapse_tokens([2, 2, 2], s, "standard") == [2]
    assert collapse_tokens([2, 2, 2], s, "surface") == [2, 2, 2]


def test_bench_command_runs():
    cmd = [sys.executable, "ctc_slack.py", "--bench", "--shapes", "2x24x7", "--rates", "0.1",
           "--repeats", "1", "--threads", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("surface") == 2 and "standard" in out.stdout
