"""ctc_slack.py as a porter meets it, off the path it was built on: every misuse of the loss and
the porter API gives one TypeError or ValueError that names the argument, or is made to work
(lists, empty batches), or is documented here (the standard collapse on EOS padding, time-first
logits when B == T). A NaN gives NaN, never the +inf of an infeasible example."""
import math

import pytest
import torch

import ctc_slack

V, EOS, SLACK, MASK = 12, 9, 10, 11  # a small vocabulary: ordinary ids 0..8, then the specials
B, T = 4, 10


def batch(seed=0, K=2):
    """A valid fine-tuning batch of ctc_slack's porter API, and its per-example loss. Prompts of
    1..4 tokens, y of U_b = R_b - K tokens (EOS-padded), K slacks at random, about half masked."""
    gen = torch.Generator().manual_seed(seed)
    P = torch.tensor([1, 2, 3, 4])
    R = T - P
    U = R - K
    y = torch.randint(0, EOS, (B, int(U.max())), generator=gen)
    y[:, -2:] = EOS  # EOS padding, as LLaDA pads
    prompt = torch.randint(0, EOS, (B, 4), generator=gen)
    resp = ctc_slack.place_slack(y, "random", target_lengths=U, canvas_lengths=R, slack_id=SLACK,
                                 generator=gen)
    z0, is_prompt = ctc_slack.build_canvas(prompt, resp, prompt_lengths=P, canvas_length=T)
    z_t = torch.where((torch.rand(B, T, generator=gen) < 0.5) & ~is_prompt, MASK, z0)
    logits = torch.randn(B, T, V, generator=gen, dtype=torch.float64)
    logits[..., MASK] = -math.inf  # SUBS: the model never predicts MASK
    kw = dict(prompt_lengths=P, target_lengths=U, weight=torch.full((B,), 2.0), slack_id=SLACK,
              mask_id=MASK)
    return logits, z_t, y, kw


def term(logits, z_t, y, **kw):
    return ctc_slack.slack_ctc_term(logits, z_t, y, **kw)


def refused(call, *words, kind=(TypeError, ValueError)):
    with pytest.raises(kind) as e:
        call()
    assert all(w in str(e.value) for w in words), str(e.value)


def test_the_valid_batch_is_finite():
    logits, z_t, y, kw = batch()
    assert torch.isfinite(term(logits, z_t, y, **kw)).all()


def test_swapped_lengths_are_refused():
    logits, z_t, y, kw = batch()
    swapped = {**kw, "prompt_lengths": kw["target_lengths"], "target_lengths": kw["prompt_lengths"]}
    refused(lambda: term(logits, z_t, torch.zeros(B, 9, dtype=torch.long), **swapped),
            "target_lengths", "swapped")


def test_slack_and_mask_ids_equal_or_swapped_are_refused():
    logits, z_t, y, kw = batch()
    refused(lambda: term(logits, z_t, y, **{**kw, "mask_id": SLACK}), "slack_id", "mask_id")
    refused(lambda: term(logits, z_t, y, **{**kw, "slack_id": MASK, "mask_id": SLACK}),
            "slack", "swapped")


def test_more_targets_than_response_positions_is_refused():
    logits, z_t, y, kw = batch()
    wide = torch.zeros(B, 12, dtype=torch.long)
    refused(lambda: term(logits, z_t, wide, **{**kw, "target_lengths": torch.full((B,), 9)}),
            "target_lengths")
    lp = logits.log_softmax(-1)  # the loss itself mirrors F.ctc_loss: T_b < U_b is +inf
    out = ctc_slack.ctc_slack_loss(lp, wide, torch.full((B,), 5), torch.full((B,), 6),
                                   slack_id=SLACK, reduction="none")
    assert (out == math.inf).all()


def test_a_visible_id_outside_the_vocabulary_is_refused():
    logits, z_t, y, kw = batch()
    bad = z_t.clone()
    bad[0, 0] = 999
    refused(lambda: term(logits, bad, y, **kw), "z_t", "999")
    lp = logits.log_softmax(-1)
    refused(lambda: ctc_slack.ctc_slack_loss(lp, y, torch.full((B,), T), torch.full((B,), 6),
                                             slack_id=SLACK, canvas=bad, mask_id=MASK), "canvas")


def test_a_head_without_a_mask_column_works():
    """mask_id = V: the logits have no MASK column, so there is nothing to ban; the loss equals
    the one with a MASK column at -inf."""
    logits, z_t, y, kw = batch()
    headless = logits[..., :MASK]  # V - 1 columns: ids 0..10, MASK = 11 is not one of them
    torch.testing.assert_close(term(headless, z_t, y, **kw), term(logits, z_t, y, **kw))


def test_a_mask_logit_left_open_is_refused():
    logits, z_t, y, kw = batch()
    refused(lambda: term(logits.nan_to_num(neginf=0.0), z_t, y, **kw), "MASK column")


def test_missing_or_non_integer_ids_are_refused():
    logits, z_t, y, kw = batch()
    refused(lambda: term(logits, z_t, y, **{**kw, "mask_id": None}), "mask_id", kind=TypeError)
    refused(lambda: term(logits, z_t, y, **{**kw, "slack_id": 10.0}), "slack_id", kind=TypeError)
    refused(lambda: term(logits, z_t.float(), y, **kw), "z_t", kind=TypeError)


def test_a_nan_logit_gives_nan_not_inf():
    """One NaN logit at a response position: that example's loss is NaN (never +inf, which
    would say 'no alignment'), the others are unchanged with clean gradients; ctc_slack_loss on
    log-probs holding a NaN gives NaN too, with a zero gradient there."""
    logits, z_t, y, kw = batch()
    clean = term(logits, z_t, y, **kw)
    bad = logits.clone().requires_grad_()
    with torch.no_grad():
        bad[1, 5, 0] = math.nan
    out = term(bad, z_t, y, **kw)
    assert math.isnan(out[1]) and torch.equal(out[[0, 2, 3]], clean[[0, 2, 3]])
    for zero_infinity in (False, True):  # zero_infinity zeroes +inf, never NaN
        assert math.isnan(term(bad, z_t, y, **kw, zero_infinity=zero_infinity)[1])
    out[~out.isnan()].sum().backward()  # the NaN row dropped: it leaves no gradient at all
    assert torch.isfinite(bad.grad).all() and (bad.grad[1] == 0).all()
    lp = logits.log_softmax(-1)
    lp[2, 3, 4] = math.nan
    for collapse in ("surface", "standard"):
        for algorithm in ("band", "time"):
            nll = ctc_slack.ctc_slack_loss(lp, y[:, :5], torch.full((B,), T),
                                           torch.full((B,), 5), slack_id=SLACK, reduction="none",
                                           collapse=collapse, algorithm=algorithm)
            assert math.isnan(nll[2]) and not torch.isnan(nll[[0, 1, 3]]).any()
    leaf = lp.clone().requires_grad_()
    nll = ctc_slack.ctc_slack_loss(leaf, y[:, :5], torch.full((B,), T), torch.full((B,), 5),
                                   slack_id=SLACK, reduction="none")
    nll[[0, 1, 3]].sum().backward()
    assert torch.isfinite(leaf.grad).all() and (leaf.grad[2] == 0).all()


def test_weight_must_be_a_number_or_one_per_example():
    """A number, (B,) or a (B, 1) column; LLaDA's (B, L) p_mask is refused with the fix, and a
    weight that is negative, NaN or infinite (t = 0 in 1/t) is refused."""
    logits, z_t, y, kw = batch()
    want = term(logits, z_t, y, **kw)
    for w in (2.0, torch.full((B, 1), 2.0), [2.0] * B):
        torch.testing.assert_close(term(logits, z_t, y, **{**kw, "weight": w}), want)
    refused(lambda: term(logits, z_t, y, **{**kw, "weight": torch.full((B, T), 0.5)}), "weight",
            "1 / p_mask[:, 0]")
    for w in (-1.0, math.nan, math.inf):
        refused(lambda: term(logits, z_t, y, **{**kw, "weight": w}), "weight", "finite")
    refused(lambda: term(logits, z_t, y, **{**kw, "weight": "1/t"}), "weight", kind=TypeError)


def test_time_first_logits():
    """(T, B, V) is refused when B != T; when B == T no shape can tell the layouts apart, and
    the numbers differ: the docstring says so, and this pins it."""
    logits, z_t, y, kw = batch()
    refused(lambda: term(logits.transpose(0, 1), z_t, y, **kw), "batch-first")
    assert "B == T" in ctc_slack.slack_ctc_term.__doc__
    square = torch.randn(T, T, V, dtype=torch.float64)
    square[..., MASK] = -math.inf
    z_sq = torch.full((T, T), MASK)
    y_sq = torch.zeros(T, 4, dtype=torch.long)
    kw_sq = {**kw, "prompt_lengths": torch.zeros(T, dtype=torch.long),
             "target_lengths": torch.full((T,), 4), "weight": 1.0}
    assert not torch.allclose(term(square, z_sq, y_sq, **kw_sq),
                              term(square.transpose(0, 1), z_sq, y_sq, **kw_sq))


def test_targets_as_lists_and_empty_batches_work():
    logits, z_t, y, kw = batch()
    torch.testing.assert_close(term(logits, z_t, y.tolist(), **kw), term(logits, z_t, y, **kw))
    empty = dict(prompt_lengths=[], target_lengths=[], weight=[], slack_id=SLACK, mask_id=MASK)
    none = term(logits[:0], z_t[:0], [], **empty)
    assert none.shape == (0,)
    assert term(logits[:0], z_t[:0], [], **empty, reduction="sum").item() == 0.0
    lp = logits.log_softmax(-1)[:0]
    assert ctc_slack.ctc_slack_loss(lp, [], [], [], slack_id=SLACK).item() == 0.0


def test_raw_logits_are_refused_where_log_probs_are_due():
    logits, _, y, _ = batch()
    refused(lambda: ctc_slack.ctc_slack_loss(logits.nan_to_num(neginf=0.0), y, torch.full((B,), T),
                                             torch.full((B,), 6), slack_id=SLACK),
            "log_probs", "raw logits")


def test_standard_collapse_on_eos_padding():
    """Graves' collapse merges repeats, so EOS-padded targets need a slack between every two
    EOS: slack_ctc_term refuses such a row (it cannot fit R_b), and ctc_slack_loss, which mirrors
    F.ctc_loss, gives +inf (0 with zero_infinity). Targets cut at their first EOS fit."""
    logits, z_t, y, kw = batch(K=2)
    y[:] = EOS  # an empty response, EOS-padded: U_b - 1 >= 3 repeats, and only 2 slacks
    full = torch.full_like(z_t, MASK)
    refused(lambda: term(logits, full, y, **kw, collapse="standard"), "standard", "first EOS")
    lp = logits.log_softmax(-1)
    R, U = T - kw["prompt_lengths"], kw["target_lengths"]
    for zero_infinity, want in ((False, math.inf), (True, 0.0)):
        out = ctc_slack.ctc_slack_loss(lp, y, R, U, slack_id=SLACK, collapse="standard",
                                       reduction="none", zero_infinity=zero_infinity)
        assert (out == want).all()
    out = ctc_slack.ctc_slack_loss(lp, y, R, torch.full((B,), 1), slack_id=SLACK,
                                   collapse="standard", reduction="none")  # cut at the first EOS
    assert torch.isfinite(out).all()


def test_every_public_function_checks_its_arguments():
    """The porter API beyond the loss: each refuses a malformed argument by name."""
    y = torch.zeros(2, 3, dtype=torch.long)
    refused(lambda: ctc_slack.place_slack(y.float(), target_lengths=[3, 3], canvas_lengths=[4, 4],
                                          slack_id=SLACK), "targets")
    refused(lambda: ctc_slack.place_slack(y, target_lengths=[3, 3], canvas_lengths=[4, 4],
                                          slack_id=None), "slack_id")
    refused(lambda: ctc_slack.build_canvas(y, y, prompt_lengths=[1, 1], canvas_length=10),
            "response")  # a response too short to reach the canvas's end
    refused(lambda: ctc_slack.slack_count([4, -1], 0.1), "canvas_lengths")
    refused(lambda: ctc_slack.slack_count(4, "0.1"), "rate")
    every = torch.ones(2, 3, dtype=torch.bool)
    refused(lambda: ctc_slack.slack_last(torch.rand(2, 3), torch.zeros(2, 4, dtype=torch.long),
                                         slack_id=SLACK, masked=every), "shape")
    refused(lambda: ctc_slack.masked_canvas(y, prompt_lengths=[3, 9], canvas_length=8,
                                            mask_id=MASK), "prompt_lengths")
    refused(lambda: ctc_slack.read_outputs(y, prompt_lengths=[0, 0], slack_id=SLACK,
                                           eos_id="EOS", mask_id=MASK), "eos_id")
    refused(lambda: ctc_slack.collapse_tokens(torch.zeros(2, 2), SLACK), "one sequence")
    lp = torch.randn(2, 4, V).log_softmax(-1)
    lp[0, 0, 0] = math.nan
    refused(lambda: ctc_slack.align_slack(lp, y, target_lengths=[3, 3], canvas_lengths=[4, 4],
                                          slack_id=SLACK), "NaN")


def test_masked_canvas_and_read_outputs_follow_prompt_lengths():
    prompts = torch.tensor([[1, 2, 3], [4, 0, 0]])  # row 1: one token, then padding
    canvas, is_prompt = ctc_slack.masked_canvas(prompts, prompt_lengths=[3, 1], canvas_length=6,
                                                mask_id=MASK)
    assert canvas.tolist() == [[1, 2, 3, MASK, MASK, MASK], [4, MASK, MASK, MASK, MASK, MASK]]
    assert is_prompt.sum(1).tolist() == [3, 1]
    done = torch.tensor([[1, 2, 3, 5, SLACK, EOS], [4, 6, 6, SLACK, 6, EOS]])
    assert ctc_slack.read_outputs(done, prompt_lengths=[3, 1], slack_id=SLACK, eos_id=EOS,
                                  mask_id=MASK) == [[5], [6, 6, 6]]
    assert ctc_slack.read_outputs(done, prompt_lengths=[3, 1], slack_id=SLACK, eos_id=EOS,
                                  mask_id=MASK, collapse="standard") == [[5], [6, 6]]
    # standard: 6 6 merge, and a slack parts them


# ----------------------------------------------------------------------------------------------
# Bans, NaN and empty targets: the numbers a porter's codebase feeds in


@pytest.mark.parametrize("ban", [torch.finfo(torch.float32).min, -1e15, -1e20, -1e6, -800.0])
def test_a_finite_ban_is_log_zero(ban):
    """Codebases ban tokens with finite numbers: exp of each is 0 in float64, so the model's own
    probability there is 0, and the loss and its gradient are exactly those of -inf there, on
    both algorithms and both collapses, and in slack_ctc_term."""
    logits, z_t, y, kw = batch()
    y = y[:, :5]  # no EOS padding: the standard collapse fits too
    U = torch.full((B,), 5)

    def banned(value):  # MASK everywhere, a used target and slack at a few positions
        x = logits.clone()
        x[..., MASK] = value
        x[0, 4, y[0, 1]] = value
        x[1, 2:6, SLACK] = value
        return x
    canvas = torch.full((B, T), MASK)
    for collapse in ("surface", "standard"):
        for algorithm in ("band", "time"):
            got = [_loss_grad(banned(v).log_softmax(-1), y, U, canvas, collapse, algorithm)
                   for v in (ban, -math.inf)]
            assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])
    kw = {**kw, "target_lengths": torch.tensor([5, 5, 5, 4])}
    full = torch.where(torch.arange(T) < kw["prompt_lengths"][:, None], z_t, MASK)
    got = [term(banned(v).float(), full, y, **kw) for v in (ban, -math.inf)]
    assert torch.equal(got[0], got[1]) and torch.isfinite(got[0]).all()


def _loss_grad(lp, y, U, canvas, collapse, algorithm):
    x = lp.detach().requires_grad_()
    out = ctc_slack.ctc_slack_loss(x, y, torch.full((B,), T), U, slack_id=SLACK, canvas=canvas,
                                   mask_id=MASK, collapse=collapse, algorithm=algorithm,
                                   reduction="none")
    return out, torch.autograd.grad(out.sum(), x)[0]


def test_a_nan_row_passes_no_gradient_in_either_loss():
    """Dropping the NaN row (loss[~loss.isnan()]) leaves exactly zero gradient on it, and no NaN
    anywhere, in ctc_slack_loss and in slack_ctc_term (whose softmax would spread the NaN)."""
    logits, z_t, y, kw = batch()
    x = logits.clone().requires_grad_()
    with torch.no_grad():
        x[0, 6, 2] = math.nan
    loss = term(x, z_t, y, **kw)
    loss[~loss.isnan()].sum().backward()
    assert math.isnan(loss[0]) and (x.grad[0] == 0).all() and torch.isfinite(x.grad).all()
    lp = logits.log_softmax(-1).detach()
    lp[0, 6, 2] = math.nan
    lp.requires_grad_()
    nll = ctc_slack.ctc_slack_loss(lp, y, torch.full((B,), T), torch.full((B,), 6),
                                   slack_id=SLACK, reduction="none")
    nll[~nll.isnan()].sum().backward()
    assert math.isnan(nll[0]) and (lp.grad[0] == 0).all() and torch.isfinite(lp.grad).all()


@pytest.mark.parametrize("collapse", ["surface", "standard"])
def test_zero_column_targets_give_the_all_slack_canvas(collapse):
    """targets [[], ...] (every U_b = 0): the loss of the canvas that is slack at every response
    position, -sum log p(slack), in slack_ctc_term and ctc_slack_loss (both algorithms)."""
    logits, z_t, y, kw = batch()
    P = kw["prompt_lengths"]
    full = torch.where(torch.arange(T) < P[:, None], z_t, MASK)
    kw = {**kw, "target_lengths": [0] * B, "weight": 1.0}
    got = term(logits, full, [[]] * B, **kw, collapse=collapse)
    lp = logits.log_softmax(-1)  # float64 logits: the term is float64 too
    response = torch.arange(T) >= P[:, None]
    want = -(lp[..., SLACK] * response).sum(1) / (T - P)
    torch.testing.assert_close(got, want)
    for algorithm in ("band", "time"):
        nll = ctc_slack.ctc_slack_loss(lp.double(), [[]] * B, T - P, [0] * B, slack_id=SLACK,
                                       collapse=collapse, algorithm=algorithm, reduction="none")
        torch.testing.assert_close(nll, -(lp.double()[..., SLACK] *
                                          (torch.arange(T) < (T - P)[:, None])).sum(1))


def test_a_banned_slack_or_target_is_named():
    """slack (or a target it needs) at probability 0 over the whole canvas: an error naming
    logits and the banned id, not the lengths."""
    logits, z_t, y, kw = batch()
    full = torch.where(torch.arange(T) < kw["prompt_lengths"][:, None], z_t, MASK)
    no_slack = logits.clone()
    no_slack[..., SLACK] = -math.inf
    refused(lambda: term(no_slack, full, y, **kw), "logits", f"id {SLACK}", "slack_id")
    no_target = logits.clone()
    no_target[2, :, y[2, 0]] = -1e6
    refused(lambda: term(no_target, full, y, **kw), "logits", f"id {int(y[2, 0])}", "target")
    swapped = {**kw, "target_lengths": torch.tensor([2, 2, 2, 2])}
    refused(lambda: term(logits, z_t, y, **swapped), "swapped")  # the lengths' message stays


def test_both_losses_check_the_mask_column_alike():
    """An open MASK column is refused by ctc_slack_loss (with a canvas) as by slack_ctc_term; a
    finite SUBS ban (-1e6, kuleshov's) is accepted by both with the numbers of -inf; mask_id >= V
    means no MASK column."""
    logits, z_t, y, kw = batch()
    open_ = logits.nan_to_num(neginf=0.0)
    refused(lambda: term(open_, z_t, y, **kw), "MASK column")
    R, U, P = T - kw["prompt_lengths"], kw["target_lengths"], kw["prompt_lengths"]
    canvas = z_t.gather(1, ctc_slack.response_positions(P, int(R.max()), T))
    refused(lambda: ctc_slack.ctc_slack_loss(open_.log_softmax(-1), y, T - P, U, slack_id=SLACK,
                                             canvas=z_t, mask_id=MASK), "log_probs", "MASK column")
    finite = logits.nan_to_num(neginf=-1e6)
    assert torch.equal(term(finite, z_t, y, **kw), term(logits, z_t, y, **kw))
    lp = {k: ctc_slack.response_log_probs(x, int(R.max()), prompt_lengths=P, mask_id=MASK)
          for k, x in (("finite", finite), ("inf", logits))}
    nll = {k: ctc_slack.ctc_slack_loss(v, y, R, U, slack_id=SLACK, canvas=canvas, mask_id=MASK,
                                       reduction="none") for k, v in lp.items()}
    assert torch.equal(nll["finite"], nll["inf"])
    headless = logits[:, :int(R.max()), :MASK].log_softmax(-1)  # no MASK column: mask_id >= V
    assert ctc_slack.ctc_slack_loss(headless, y, R, U, slack_id=SLACK, canvas=canvas,
                                    mask_id=MASK).isfinite()


# ----------------------------------------------------------------------------------------------
# The forms other codebases keep lengths in: read as what they mean, or refused with the fix


def test_lengths_in_the_forms_porters_have():
    """A bool prompt mask that marks a prefix (LLaDA's prompt_index) is its row sums; one int is
    every row's; a (B, 1) column is its rows; a mask that is no prefix, or float lengths, is
    refused with the fix."""
    logits, z_t, y, kw = batch()
    want = term(logits, z_t, y, **kw)
    P, U = kw["prompt_lengths"], kw["target_lengths"]
    prompt_index = torch.arange(T) < P[:, None]  # (B, T) bool
    for form in (prompt_index, P[:, None], P.tolist()):
        assert torch.equal(term(logits, z_t, y, **{**kw, "prompt_lengths": form}), want)
    assert torch.equal(term(logits, z_t, y, **{**kw, "target_lengths": U[:, None]}), want)
    refused(lambda: term(logits, z_t, y, **{**kw, "prompt_lengths": ~prompt_index}),
            "prompt_lengths", "prefix")
    refused(lambda: term(logits, z_t, y, **{**kw, "prompt_lengths": P.float()}),
            "prompt_lengths", ".long()", kind=TypeError)
    one = {**kw, "prompt_lengths": 2, "target_lengths": 6}  # one int for every row
    same = {**kw, "prompt_lengths": torch.full((B,), 2), "target_lengths": torch.full((B,), 6)}
    z2 = torch.where(torch.arange(T) < 2, z_t[0], MASK).expand(B, -1)
    assert torch.equal(term(logits, z2, y, **one), term(logits, z2, y, **same))


def test_every_argument_is_checked_by_name():
    """Holes beyond the loss's main arguments: each is refused by name."""
    logits, z_t, y, kw = batch()
    lp = logits.log_softmax(-1)
    U2, R2 = [3, 3], [4, 4]
    y2 = torch.zeros(2, 3, dtype=torch.long)
    cases = [
        (lambda: term(logits, z_t, y, **kw, zero_infinity="yes"), "zero_infinity"),
        (lambda: term(logits, z_t, y, **kw, reduction="batchmean"), "reduction"),
        (lambda: term(logits, z_t, y, **kw, collapse=None), "collapse"),
        (lambda: ctc_slack.ctc_slack_loss(lp, y, [T] * B, [6] * B, slack_id=SLACK,
                                          algorithm="fast"), "algorithm"),
        (lambda: ctc_slack.ctc_slack_loss(lp, y, [T] * B, [6] * B, slack_id=SLACK,
                                          zero_infinity=1), "zero_infinity"),
        (lambda: ctc_slack.ctc_slack_loss(lp, y, [T] * B, [6] * B, slack_id=SLACK, canvas=z_t,
                                          mask_id=-1), "mask_id"),
        (lambda: ctc_slack.place_slack(y2, target_lengths=U2, canvas_lengths=R2, slack_id=-1),
         "slack_id"),
        (lambda: ctc_slack.place_slack(y2, target_lengths=U2, canvas_lengths=R2, slack_id=SLACK,
                                       generator=0), "generator"),
        (lambda: ctc_slack.place_slack(y2, target_lengths=U2, canvas_lengths=None,
                                       slack_id=SLACK), "canvas_lengths"),
        (lambda: ctc_slack.response_log_probs(logits, T + 1, prompt_lengths=kw["prompt_lengths"],
                                              mask_id=MASK), "R_max"),
        (lambda: ctc_slack.build_canvas(y2, y2, prompt_lengths=[1, 1], canvas_length=0),
         "canvas_length"),
        (lambda: ctc_slack.build_canvas(y2, y2, prompt_lengths=[1, 1], canvas_length=2.0),
         "canvas_length"),
        (lambda: ctc_slack.collapse_tokens([1, 2], "slack"), "slack_id"),
        (lambda: ctc_slack.collapse_tokens([1.5, 2], SLACK), "seq"),
        (lambda: ctc_slack.slack_count(torch.tensor([4.0]), 0.1), "canvas_lengths"),
        (lambda: ctc_slack.sft_layout(y2, prompt_lengths=[1, 1], rate=1.0, eos_id=EOS), "rate"),
        (lambda: ctc_slack.sft_layout(y2, prompt_lengths=[4, 1], rate=0.1, eos_id=EOS),
         "prompt_lengths"),
        (lambda: ctc_slack.sft_layout(y2, prompt_lengths=[1, 1], rate=0.1, eos_id=None),
         "eos_id"),
    ]
    for call, word in cases:
        refused(call, word)


# ----------------------------------------------------------------------------------------------
# What a porter passes by mistake, named for what it is


def test_the_whole_canvas_length_as_canvas_lengths_is_refused():
    """canvas_lengths are the responses' R_b = T - P_b, canvas_length the whole T. T given to
    place_slack makes a response T wide, whose last P_b targets build_canvas would cut: it is
    refused there; R_b = T - P_b builds the canvas with every target in it."""
    gen = torch.Generator().manual_seed(0)
    P, U = torch.tensor([1, 2, 3, 4]), torch.full((B,), T - 5)
    y = torch.randint(0, EOS, (B, T), generator=gen)
    prompt = torch.randint(0, EOS, (B, 4), generator=gen)
    for R, ok in ((torch.full((B,), T), False), (T - P, True)):
        resp = ctc_slack.place_slack(y, "tail", target_lengths=U, canvas_lengths=R,
                                     slack_id=SLACK)
        build = lambda: ctc_slack.build_canvas(prompt, resp, prompt_lengths=P, canvas_length=T)
        if not ok:
            refused(build, "canvas_lengths", "T - P_b", "canvas_length T")
            continue
        z0, _ = build()
        for b in range(B):  # every target is on the canvas, in order
            assert ctc_slack.collapse_tokens(z0[b, int(P[b]):], SLACK) == y[b, :int(U[b])].tolist()


def test_align_slack_takes_the_response_log_probs():
    """The "model" placement: masked_canvas, the model, response_log_probs, align_slack. The
    whole canvas's log-probs (B, T, V) would align the prompt positions too: refused, naming
    response_log_probs; time-first log-probs name the layout."""
    gen = torch.Generator().manual_seed(1)
    P = torch.tensor([1, 2, 3, 4])
    R = T - P
    U = R - 2
    y = torch.randint(0, EOS, (B, int(U.max())), generator=gen)
    canvas, _ = ctc_slack.masked_canvas(torch.zeros(B, 4, dtype=torch.long), prompt_lengths=P,
                                        canvas_length=T, mask_id=MASK)
    logits = torch.randn(B, T, V, generator=gen, dtype=torch.float64)  # stands in for model(canvas)
    logits[..., MASK] = -math.inf
    lp = ctc_slack.response_log_probs(logits, int(R.max()), prompt_lengths=P, mask_id=MASK)
    z0 = ctc_slack.align_slack(lp, y, target_lengths=U, canvas_lengths=R, slack_id=SLACK)
    assert z0.shape == (B, int(R.max()))
    for b in range(B):
        assert ctc_slack.collapse_tokens(z0[b, :int(R[b])], SLACK) == y[b, :int(U[b])].tolist()
    refused(lambda: ctc_slack.align_slack(logits.log_softmax(-1), y, target_lengths=U,
                                          canvas_lengths=R, slack_id=SLACK),
            "log_probs", "response_log_probs")
    refused(lambda: ctc_slack.align_slack(lp.transpose(0, 1), y, target_lengths=U,
                                          canvas_lengths=R, slack_id=SLACK),
            "canvas_lengths", "batch-first", "transpose(0, 1)")


def test_time_first_log_probs_name_the_layout():
    """F.ctc_loss's habit, (T, B, V): the targets' rows then differ from B, and the message says
    that log_probs must be batch-first."""
    logits, _, y, _ = batch()
    lp = logits.log_softmax(-1)
    refused(lambda: ctc_slack.ctc_slack_loss(lp.transpose(0, 1), y, [T] * B, [6] * B,
                                             slack_id=SLACK), "batch-first", "transpose(0, 1)")


def test_probabilities_are_refused_where_log_probs_are_due():
    logits, _, y, _ = batch()
    refused(lambda: ctc_slack.ctc_slack_loss(logits.softmax(-1), y, [T] * B, [6] * B,
                                             slack_id=SLACK),
            "log_probs", "log_softmax", "probabilities?")


def test_target_lengths_past_the_targets_name_their_width():
    logits, z_t, y, kw = batch()
    U_max = y.shape[1]
    long = torch.full((B,), U_max + 1)
    width = f"targets has only U_max = {U_max} columns"
    refused(lambda: ctc_slack.ctc_slack_loss(logits.log_softmax(-1), y, [T] * B, long,
                                             slack_id=SLACK), width)
    refused(lambda: ctc_slack.place_slack(y, target_lengths=long, canvas_lengths=[T] * B,
                                          slack_id=SLACK), width)
    refused(lambda: term(logits, z_t, y, **{**kw, "target_lengths": long}), width)


def test_the_slack_rate_is_any_real_number():
    """A rate from numpy or a one-element tensor is the number it holds; two numbers, a bool,
    1.0 or NaN are refused."""
    np = pytest.importorskip("numpy")
    R = torch.arange(0, 60)
    want = ctc_slack.slack_count(R, 0.25)
    for rate in (np.float32(0.25), np.float64(0.25), torch.tensor(0.25), torch.tensor([0.25]),
                 torch.tensor(0.25, dtype=torch.float64)):
        assert torch.equal(ctc_slack.slack_count(R, rate), want), rate
    ids = torch.full((2, 8), EOS)
    assert (ctc_slack.sft_layout(ids, prompt_lengths=[1, 2], rate=torch.tensor(0.25), eos_id=EOS)
            [2] == ctc_slack.sft_layout(ids, prompt_lengths=[1, 2], rate=0.25, eos_id=EOS)[2])
    for rate in (torch.tensor([0.1, 0.2]), True, torch.tensor(True), 1.0, math.nan,
                 np.float32(-0.1)):
        refused(lambda: ctc_slack.slack_count(R, rate), "rate")


def test_a_canvas_no_longer_than_a_prompt_is_refused():
    prompts = torch.tensor([[1, 2, 3], [4, 0, 0]])
    for T_ in (3, 2, 0):
        refused(lambda: ctc_slack.masked_canvas(prompts, prompt_lengths=[3, 1], canvas_length=T_,
                                                mask_id=MASK),
                "canvas_length must exceed every prompt length")


def test_read_outputs_refuses_slack_id_equal_to_mask_id():
    done = torch.tensor([[1, 5, SLACK, EOS]])
    refused(lambda: ctc_slack.read_outputs(done, prompt_lengths=1, slack_id=SLACK, eos_id=EOS,
                                           mask_id=SLACK), "slack_id", "mask_id")


def test_confidence_kept_as_a_gather_or_holding_nan_is_refused():
    """confidence (B, T, 1), as log_p.gather(-1, x0[..., None]) leaves it: the message names
    confidence and the squeeze, not masked. A NaN would rank first: refused in every ranking."""
    gen = torch.Generator().manual_seed(2)
    log_p = torch.randn(2, 6, V, generator=gen).log_softmax(-1)
    x0 = log_p.argmax(-1)
    masked = torch.ones(2, 6, dtype=torch.bool)
    conf = log_p.gather(-1, x0[..., None])  # (B, T, 1)
    refused(lambda: ctc_slack.slack_last(conf, x0, slack_id=SLACK, masked=masked),
            "confidence", "squeeze(-1)")
    nan = conf.squeeze(-1).clone()
    nan[1, 2] = math.nan
    for call in (lambda: ctc_slack.slack_last(nan, x0, slack_id=SLACK, masked=masked),
                 lambda: ctc_slack.rank_in_groups(nan, torch.zeros_like(x0)),
                 lambda: ctc_slack.slack_waits(nan, x0, slack_id=SLACK)):
        refused(call, "confidence", "NaN")


def test_slack_last_with_blocks_needs_the_block_in_masked():
    """LLaDA's block idiom (confidence -inf past the block, masked = every MASK) would commit a
    real proposal past the block before a slack inside it, as the docstring warns: the groups
    come before the confidence. masked = MASK and inside the block commits inside it only."""
    conf = torch.tensor([[-0.1, -0.2, -0.3, -0.4]])
    x0 = torch.tensor([[1, SLACK, SLACK, 2]])  # the block is positions 0..2; 3 lies past it
    block = torch.tensor([[True, True, True, False]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    k = 2
    idiom = ctc_slack.slack_last(conf.masked_fill(~block, -math.inf), x0, slack_id=SLACK,
                                 masked=mask)
    assert 3 in idiom.topk(k).indices[0].tolist()  # the hazard the docstring names
    key = ctc_slack.slack_last(conf, x0, slack_id=SLACK, masked=mask & block)
    assert sorted(key.topk(k).indices[0].tolist()) == [0, 1]
    assert "inside the block" in ctc_slack.slack_last.__doc__


def test_an_empty_batch_as_lists_works():
    logits, _, _, _ = batch()
    empty = dict(prompt_lengths=[], target_lengths=[], weight=[], slack_id=SLACK, mask_id=MASK)
    assert term(logits[:0], [], [], **empty).shape == (0,)
    assert term(logits[:0], [], [], **empty, reduction="mean").item() == 0.0


def test_float64_logits_give_a_float64_loss():
    """slack_ctc_term computes in the wider of float32 and the logits' dtype: float64 logits
    give the float64 sum over every slack placement, by enumeration, to 1e-12; narrower logits
    give exactly the loss of their float32 copy."""
    import itertools
    logits, z_t, y, kw = batch(seed=3)
    kw = {**kw, "weight": 1.0}
    got = term(logits, z_t, y, **kw)
    assert got.dtype == torch.float64
    P, U = kw["prompt_lengths"].tolist(), kw["target_lengths"].tolist()
    lp = logits.log_softmax(-1)  # float64, MASK at -inf
    for b in range(B):
        R, terms = T - P[b], []
        for slots in itertools.combinations(range(R), R - U[b]):  # where the K slacks go
            ys = iter(y[b, :U[b]].tolist())
            a = [SLACK if j in slots else next(ys) for j in range(R)]
            vis = z_t[b, P[b]:].tolist()
            if all(v in (MASK, t) for v, t in zip(vis, a)):  # agrees with the visible positions
                terms.append(sum(float(lp[b, P[b] + j, t]) for j, t in enumerate(a)
                                 if vis[j] == MASK))
        want = -torch.tensor(terms, dtype=torch.float64).logsumexp(0) / R
        assert abs(float(got[b]) - float(want)) < 1e-12, (b, float(got[b]), float(want))
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        narrow = logits.to(dtype)
        out = term(narrow, z_t, y, **kw)
        assert out.dtype == torch.float32 and torch.equal(out, term(narrow.float(), z_t, y, **kw))
