"""Uneven batches: the surface band runs per group of rows of similar shape (ctc_slack.band_groups),
so a row with a short target beside long ones costs its own cells, not the widest row times the
longest. Checked here: the grouped loss, gradient and alignment equal the band over the whole
padded batch and the loop over time, on batches with every kind of row; the groups cover each row
once and keep the stated bound on padded cells; an even batch is one group, the plain band.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_uneven.py      # a few seconds on one core
"""

import math

import pytest
import torch

import ctc_slack
from ctc_slack import band_groups, ctc_slack_loss

V, SLACK, MASK = 5, 4, 9  # tokens 0..3, slack 4; MASK outside the vocabulary


def uneven_batch(gen, B, T_max):
    """Float64 log-probs (B, T_max, V), targets, lengths and a canvas with every kind of row, in
    turn: an empty target (U = 0), no slack (K = 0), a short target (large K), a long one (small
    K), T < U (infeasible), each with its own T_b <= T_max (0 included). Canvases show about half
    of one valid alignment; every fifth row shows random tokens instead (mostly infeasible)."""
    lp = torch.randn(B, T_max, V, generator=gen, dtype=torch.float64).log_softmax(-1)
    T_b = torch.randint(0, T_max + 1, (B,), generator=gen)
    T_b[0] = T_max  # the batch's T is used by some row
    U_b = torch.zeros(B, dtype=torch.long)
    canvas = torch.full((B, T_max), MASK)
    targets = torch.randint(0, V - 1, (B, T_max + 2), generator=gen)  # padded with junk
    for b in range(B):
        T = int(T_b[b])
        kind = b % 5
        U = [0, T, int(torch.randint(0, T // 3 + 1, (), generator=gen)),
             T - int(torch.randint(0, 3, (), generator=gen)), T + 2][kind]
        U_b[b] = max(U, 0)
        if U_b[b] > T:  # infeasible: no canvas needed
            continue
        if b % 5 == 4 or b % 7 == 6:  # random visible tokens (ids 0..V-1, slack among them)
            shown = torch.rand(T, generator=gen) < 0.3
            canvas[b, :T][shown] = torch.randint(0, V, (int(shown.sum()),), generator=gen)
            continue
        z0 = torch.full((T,), SLACK)  # a valid alignment: y in order, slack at random places
        keep = torch.randperm(T, generator=gen)[: int(U_b[b])].sort().values
        z0[keep] = targets[b, : int(U_b[b])]
        shown = torch.rand(T, generator=gen) < 0.5
        canvas[b, :T][shown] = z0[shown]
    return lp, targets, T_b, U_b, canvas


def loss_grad(lp, targets, T_b, U_b, canvas, algorithm="band"):
    """ctc_slack_loss per row (reduction "none") and its gradient w.r.t. a fresh copy of lp."""
    x = lp.detach().clone().requires_grad_()
    out = ctc_slack_loss(x, targets, T_b, U_b, slack_id=SLACK, canvas=canvas, mask_id=MASK,
                         reduction="none", algorithm=algorithm)
    # NaN rows are left out of the sum (as a caller drops them); +inf rows add no gradient
    return out.detach(), torch.autograd.grad(out[~out.isnan()].sum(), x)[0]


def assert_same(a, b):
    """Equal losses: the same +inf and NaN rows, the finite ones to float64 precision."""
    assert torch.equal(a.isinf(), b.isinf()) and torch.equal(a.isnan(), b.isnan()), (a, b)
    ok = a.isfinite()
    torch.testing.assert_close(a[ok], b[ok], rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# 1. The grouped band against the whole padded band and the loop over time.


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_groups_equal_the_whole_band_and_the_time_loop(monkeypatch, seed):
    gen = torch.Generator().manual_seed(seed)
    lp, targets, T_b, U_b, canvas = uneven_batch(gen, 15, 14)
    lp[3, 1, 2] = float("nan")  # a NaN row: NaN loss and no gradient, grouped or not
    # At these sizes every band is under SMALL_BAND; without that floor the cells alone decide.
    monkeypatch.setattr(ctc_slack, "SMALL_BAND", 0)
    groups = band_groups((T_b - U_b).clamp(min=0), U_b)
    assert len(groups) > 2  # the grouped path is the one under test
    grouped, g_grouped = loss_grad(lp, targets, T_b, U_b, canvas)
    time, g_time = loss_grad(lp, targets, T_b, U_b, canvas, algorithm="time")
    monkeypatch.setattr(ctc_slack, "PAD_FACTOR", math.inf)  # now one group: the whole band
    assert len(band_groups((T_b - U_b).clamp(min=0), U_b)) == 1
    whole, g_whole = loss_grad(lp, targets, T_b, U_b, canvas)
    # every kind of row is there, and rows of each outcome: finite, +inf, NaN
    assert grouped.isfinite().sum() > 5 and grouped.isinf().any() and grouped.isnan().sum() == 1
    assert_same(grouped, whole)
    assert_same(grouped, time)
    torch.testing.assert_close(g_grouped, g_whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_grouped, g_time, rtol=1e-8, atol=1e-10)
    assert g_grouped[3].abs().max() == 0 and g_grouped[grouped.isinf()].abs().max() == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_grouped_alignment_equals_the_whole_band(monkeypatch, seed):
    """The best alignment per group equals the one over the whole padded band, row for row (the
    same numbers reach each row's cummax), slack past each row's T_b."""
    gen = torch.Generator().manual_seed(seed)
    lp, targets, T_b, U_b, canvas = uneven_batch(gen, 15, 14)
    kw = dict(slack_id=SLACK, canvas=canvas, mask_id=MASK)
    monkeypatch.setattr(ctc_slack, "SMALL_BAND", 0)
    assert len(band_groups((T_b - U_b).clamp(min=0), U_b)) > 2
    grouped = ctc_slack._align(lp, targets, T_b, U_b, **kw)
    monkeypatch.setattr(ctc_slack, "PAD_FACTOR", math.inf)
    whole = ctc_slack._align(lp, targets, T_b, U_b, **kw)
    assert grouped.shape == whole.shape == canvas.shape and torch.equal(grouped, whole)
    for b in range(len(T_b)):  # and it is an alignment: y in order, slack elsewhere
        T, U = int(T_b[b]), int(U_b[b])
        if U <= T:
            assert grouped[b][grouped[b] != SLACK].tolist() == targets[b, :U].tolist()
        assert (grouped[b, T:] == SLACK).all()


# ----------------------------------------------------------------------------------------------
# 2. The groups: a partition of the rows, within the stated bound; an even batch is one group.


def cells(groups, K, U):
    """The band cells the groups allocate (each padded to its own K and U maxima), and the cells
    their rows need alone (K, U: (B,) of the whole batch)."""
    padded = sum(len(g) * (int(K[g].max()) + 1) * (int(U[g].max()) + 1) for g in groups)
    need = sum(int((K[b] + 1) * (U[b] + 1)) for g in groups for b in g)
    return padded, need


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("small_band", [None, 0])
def test_groups_cover_each_row_once_within_the_bound(monkeypatch, seed, small_band):
    if small_band is not None:  # the cells alone decide
        monkeypatch.setattr(ctc_slack, "SMALL_BAND", small_band)
    gen = torch.Generator().manual_seed(seed)
    B = int(torch.randint(1, 40, (), generator=gen))
    # shapes from even to very uneven: K and U spread over one to three orders of magnitude
    top = [4, 300, 2000][seed % 3]
    K, U = torch.randint(0, top, (2, B), generator=gen)
    groups = band_groups(K, U)
    assert sorted(b for g in groups for b in g) == list(range(B))  # each row exactly once
    flat = [b for g in groups for b in g]  # the groups cut the (K, U) order into runs
    assert [(K[b], U[b]) for b in flat] == sorted((K[b], U[b]) for b in range(B))
    for g in groups:  # each group within the rule
        padded, need = cells([g], K, U)
        assert padded <= ctc_slack.PAD_FACTOR * need or padded <= ctc_slack.SMALL_BAND
    padded, need = cells(groups, K, U)
    assert padded <= ctc_slack.PAD_FACTOR * need + len(groups) * ctc_slack.SMALL_BAND


def test_an_even_batch_is_the_plain_band():
    """Rows of one shape (ragged T_b, infeasible rows and canvases included) or a small band:
    one group, and the band gets the caller's very tensors, as before grouping existed."""
    K, U = torch.full((8,), 103), torch.full((8,), 921)
    assert band_groups(K, U) == [list(range(8))]
    small = band_groups(torch.tensor([0, 30, 5]), torch.tensor([40, 2, 0]))  # a small band
    assert small == [[0, 2, 1]]  # one group, in (K, U) order
    lp = torch.randn(3, 6, V, dtype=torch.float64).log_softmax(-1)
    args = (lp, torch.zeros(3, 4, dtype=torch.long), torch.tensor([6, 5, 3]),
            torch.tensor([4, 3, 4]), SLACK, torch.full((3, 6), MASK), MASK)
    seen = []
    assert ctc_slack._by_groups(lambda *a: seen.append(a) or "out", *args) == "out"
    assert len(seen) == 1 and all(x is y for x, y in zip(seen[0], args))
    # an empty batch: no group, and fn gets it as it is
    assert band_groups(args[2][:0], args[3][:0]) == []
    seen.clear()
    ctc_slack._by_groups(lambda *a: seen.append(a), *(x[:0] if torch.is_tensor(x) else x
                                                       for x in args))
    assert len(seen) == 1 and len(seen[0][0]) == 0


@pytest.mark.parametrize("T", [1024, 2048])
def test_a_short_row_costs_its_own_cells(monkeypatch, T):
    """Four rows of T positions, one with a short target (U = 8, K = T - 8), three at 10% slack:
    the band cells the loss allocates (counted where the band is gathered) are near what the rows
    need alone, where one band padded to K_max x U_max would allocate several times as much."""
    U = torch.tensor([T - T // 10, T - T // 10, 8, T - T // 10])  # the short row in the middle
    K = T - U
    groups = band_groups(K, U)
    padded, need = cells(groups, K, U)
    whole = 4 * (int(K.max()) + 1) * (int(U.max()) + 1)  # one band for the batch
    assert padded <= ctc_slack.PAD_FACTOR * need and whole > 3 * need
    gathered = []  # the cells of every band the loss builds
    real = ctc_slack._band_emissions

    def counted(*a):
        em = real(*a)
        gathered.append(em[0][:, 0].numel())  # em: (n, 2, K+1, U+1); one cell per (n, d, u)
        return em
    monkeypatch.setattr(ctc_slack, "_band_emissions", counted)
    lp = torch.randn(4, T, V).log_softmax(-1)
    y = torch.randint(0, V - 1, (4, int(U.max())))
    with torch.no_grad():
        loss = ctc_slack_loss(lp, y, torch.full((4,), T), U, slack_id=SLACK, reduction="none")
    assert loss.isfinite().all() and len(gathered) == len(groups) == 2
    assert sum(gathered) == padded <= 1.01 * need
