"""mdlm.py: tokenizer, schedules, forward process, SUBS, attention masks, the NELBO."""
import functools
import itertools
import math

import pytest
import torch

import common
import conftest
import mdlm
EOS, SLACK, MASK = mdlm.special_ids(mdlm.BYTE_VOCAB_SIZE)  # the byte vocabulary

tiny_model = functools.partial(conftest.tiny_model, seq_len=16, n_layer=2)


def test_tokenizer_round_trip_and_specials():
    text = "héllo, wörld ✓ 𝄞\n\x00"
    ids = mdlm.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert bytes(ids).decode("utf-8") == text
    assert len({EOS, SLACK, MASK}) == 3 and max(EOS, SLACK, MASK) == mdlm.BYTE_VOCAB_SIZE - 1


@pytest.mark.parametrize("schedule", mdlm.SCHEDULES)
def test_schedule_endpoints_and_weight(schedule):
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(mdlm.alpha_t(t, schedule), torch.tensor([1.0, 0.0], dtype=torch.float64),
                          atol=1e-12)
    # w(t) = -alpha'(t) / (1 - alpha(t)) against a central finite difference
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    d_alpha = (mdlm.alpha_t(t + h, schedule) - mdlm.alpha_t(t - h, schedule)) / (2 * h)
    expect = -d_alpha / (1 - mdlm.alpha_t(t, schedule))
    assert torch.allclose(mdlm.w_t(t, schedule), expect, rtol=1e-6)
    if schedule == "linear":
        assert torch.allclose(mdlm.w_t(t, schedule), 1 / t)


def test_stratified_times():
    t = mdlm.sample_t(1000, eps=1e-3, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 1e-3 and t.max() <= 1.0
    # one point in each stratum [i/B, (i+1)/B) (after mapping to [eps, 1])
    u = ((t - 1e-3) / (1 - 1e-3)).sort().values
    assert torch.all((u * 1000).floor() == torch.arange(1000))


def test_masking_rate_matches_schedule_and_keeps_prompt():
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randint(0, 256, (4, 20000), generator=gen)
    t = torch.tensor([0.1, 0.5, 0.9, 0.3])
    keep = torch.zeros_like(z0, dtype=torch.bool)
    keep[:, :100] = True
    for schedule in mdlm.SCHEDULES:
        z_t = mdlm.forward_mask(z0, t, schedule, mask_id=MASK, generator=gen, is_prompt=keep)
        assert (z_t[:, :100] == z0[:, :100]).all()
        visible = z_t[:, 100:] != MASK
        assert (z_t[:, 100:][visible] == z0[:, 100:][visible]).all()  # visible tokens are unchanged
        rate = (~visible).double().mean(1)
        expect = 1 - mdlm.alpha_t(t.double(), schedule)
        sd = (expect * (1 - expect) / visible.shape[1]).sqrt()
        assert ((rate - expect).abs() < 5 * sd + 1e-9).all(), (rate, expect)


def test_forward_process_is_the_stratified_times_then_the_masks():
    """forward_process is sample_t, then forward_mask, from one generator (the definition, drawn
    again by hand): the same t and z_t, the prompt never masked, on a device-free CPU stream."""
    z0 = torch.randint(0, 256, (6, 40), generator=torch.Generator().manual_seed(1))
    is_prompt = torch.arange(40)[None, :] < torch.tensor([0, 3, 7, 39, 40, 12])[:, None]
    for schedule in mdlm.SCHEDULES:
        gen = torch.Generator().manual_seed(2)
        t, z_t = mdlm.forward_process(z0, schedule, mask_id=MASK, generator=gen,
                                      is_prompt=is_prompt)
        gen = torch.Generator().manual_seed(2)
        t_ref = mdlm.sample_t(6, generator=gen)
        z_ref = mdlm.forward_mask(z0, t_ref, schedule, mask_id=MASK, generator=gen,
                                  is_prompt=is_prompt)
        assert torch.equal(t, t_ref) and torch.equal(z_t, z_ref)
        assert torch.equal(z_t[is_prompt], z0[is_prompt]) and (z_t == MASK).any()
        assert t.min() >= 1e-3 and t.max() <= 1


def test_subs_parameterization():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, mdlm.BYTE_VOCAB_SIZE)
    z_t = torch.tensor([[MASK, 7, MASK, 9, MASK], [1, 2, 3, MASK, MASK]])
    lp = mdlm.subs_log_probs(logits, z_t, allow_slack=False)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(2, 5))
    assert torch.isinf(lp[..., MASK]).all() and torch.isinf(lp[..., SLACK]).all()
    assert torch.isfinite(mdlm.subs_log_probs(logits, z_t, allow_slack=True)[0, 0, SLACK])
    # carry-over: a visible position predicts itself with probability one
    assert lp[0, 1, 7] == 0 and lp[1, 2, 3] == 0
    assert torch.isinf(lp[0, 1, :7]).all()
    # the caller's logits are not modified in place
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("causal", [False, True])
def test_attention_direction(causal):
    model = tiny_model(causal=causal)
    x = torch.randint(0, 256, (1, 12))
    y = x.clone()
    y[0, 8] = (y[0, 8] + 1) % 256  # perturb a later token
    with torch.no_grad():
        a, b = model(x), model(y)
    earlier_changed = not torch.allclose(a[0, :8], b[0, :8], atol=1e-6)
    assert earlier_changed != causal  # bidirectional: earlier outputs change; causal: they do not
    assert not torch.allclose(a[0, 8:], b[0, 8:])


def test_longer_than_model_is_an_error():
    with pytest.raises(ValueError, match="longer than the model"):
        tiny_model(seq_len=8)(torch.zeros(1, 9, dtype=torch.long))


def exact_nelbo(model, z0):
    """E_{t ~ U(0,1)} E_{z_t} [w(t) sum_{masked} -log p(z0_i | z_t)] / T, enumerated exactly for the
    linear schedule: a pattern with m masked positions has weight int_0^1 (1/t) t^m (1-t)^(T-m) dt
    = B(m, T - m + 1) = (m-1)! (T-m)! / T!."""
    T = z0.shape[1]
    total = 0.0
    for pattern in itertools.product([0, 1], repeat=T):
        m = sum(pattern)
        if m == 0:
            continue
        weight = math.factorial(m - 1) * math.factorial(T - m) / math.factorial(T)
        z_t = torch.where(torch.tensor(pattern, dtype=torch.bool)[None], MASK, z0)
        with torch.no_grad():
            lp = model(z_t).float().log_softmax(-1)[0]
        total += weight * sum(-lp[i, z0[0, i]].item() for i in range(T) if pattern[i])
    return total / T


def test_nelbo_monte_carlo_matches_exact_enumeration():
    model = tiny_model(seq_len=5)
    z0 = torch.tensor([[3, 1, 4, 1, 5]])
    exact = exact_nelbo(model, z0)
    gen = torch.Generator().manual_seed(0)
    n, B = 200, 256
    vals = []
    with torch.no_grad():
        for _ in range(n):
            t = mdlm.sample_t(B, eps=1e-5, generator=gen)
            zb = z0.expand(B, -1)
            z_t = mdlm.forward_mask(zb, t, "linear", mask_id=MASK, generator=gen)
            vals.append(mdlm.mdlm_loss(model(z_t), zb, z_t, t))
    vals = torch.cat(vals).double()
    est, se = vals.mean().item(), vals.std().item() / math.sqrt(len(vals))
    assert abs(est - exact) < 4 * se + 1e-3 * exact, (est, exact, se)
    # a loose upper bound holds too: the NELBO is at least the entropy of nothing, i.e. positive
    assert exact > 0


def test_mdlm_loss_scores_only_masked_scored_positions():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, mdlm.BYTE_VOCAB_SIZE)
    z0 = torch.tensor([[10, 11, 12, 13]])
    z_t = torch.tensor([[MASK, 11, MASK, MASK]])
    scored = torch.tensor([[False, True, True, True]])  # position 0 is a prompt position
    t = torch.tensor([0.5])
    lp = logits.index_fill(-1, torch.tensor([MASK]), float("-inf")).log_softmax(-1)
    expect = (1 / 0.5) * -(lp[0, 2, 12] + lp[0, 3, 13]) / 3
    assert torch.allclose(mdlm.mdlm_loss(logits, z0, z_t, t, is_prompt=~scored), expect.reshape(1))


def test_ar_loss_matches_hand_sum():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 6))
    logits = torch.randn(2, 5, mdlm.BYTE_VOCAB_SIZE)
    lp = logits.log_softmax(-1)
    expect = torch.stack([-sum(lp[b, i, x[b, i + 1]] for i in range(5)) / 5 for b in range(2)])
    assert torch.allclose(mdlm.ar_loss(logits, x), expect)


def test_tiny_model_overfits_one_batch():
    """One fixed batch (clean text, times and masks): the loss must fall close to zero."""
    model = tiny_model(seq_len=32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    z0 = torch.tensor([mdlm.encode("the quick brown fox jumps over t")] * 8)
    t = mdlm.sample_t(8, generator=gen).clamp(max=0.7)
    z_t = mdlm.forward_mask(z0, t, "linear", mask_id=MASK, generator=gen)
    losses = []
    for step in range(400):
        loss = mdlm.mdlm_loss(model(z_t), z0, z_t, t).mean()
        losses.append(loss.item())
        opt.zero_grad(), loss.backward(), opt.step()
    assert losses[-1] < 0.01 * losses[0], (losses[0], losses[-1])


def test_checkpoint_round_trip_and_errors(tmp_path):
    model = tiny_model()
    path = str(tmp_path / "ckpt.pt")
    common.save_checkpoint({"config": model.cfg.to_dict(), "model": model.state_dict(),
                          "ema": None}, path)
    again = common.model_from_checkpoint(common.load_checkpoint(path))
    x = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    with pytest.raises(common.CheckpointError, match="does not exist"):
        common.load_checkpoint(str(tmp_path / "missing.pt"))
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])  # truncated
    with pytest.raises(common.CheckpointError, match="corrupted"):
        common.load_checkpoint(path)
    other = tiny_model(seq_len=32)
    ckpt = {"config": model.cfg.to_dict(), "model": {**other.state_dict(), "extra": torch.zeros(1)}}
    with pytest.raises(common.CheckpointError, match="does not match"):
        common.model_from_checkpoint(ckpt)


def test_checkpoint_meta_defaults_and_overrides():
    causal = mdlm.ModelConfig(vocab_size=mdlm.BYTE_VOCAB_SIZE, causal=True).to_dict()
    assert common.checkpoint_meta({"config": causal})["objective"] == "ar"
    config = mdlm.ModelConfig(vocab_size=mdlm.BYTE_VOCAB_SIZE).to_dict()
    plain = common.checkpoint_meta({"config": config})
    assert plain == {"objective": "mdlm", "schedule": "linear", "slack": False,
                     "collapse": "surface", "bos": False}
    stored = {"objective": "mdlm", "slack": True, "collapse": "standard"}
    got = common.checkpoint_meta({"config": config, "meta": stored})
    assert got["slack"] is True and got["collapse"] == "standard" and got["schedule"] == "linear"


def test_a_mask_only_canvas_has_no_position_and_a_start_token_gives_it_one():
    """Positions are rotary, so relative only: at a canvas of MASK alone every position sees the
    same thing and the model predicts the same at each (so a prompt-free model cannot know where
    its text begins; measured on a grammar model: P(EOS) 0.451 at every one of 48 positions). One
    token in front, EOS as the start token of train.py --bos, is an anchor they can be told by."""
    model = conftest.tiny_model(sharp=True)
    eos, _, mask = mdlm.special_ids(model.cfg.vocab_size)
    with torch.no_grad():
        blind = model(torch.full((1, 32), mask))[0]  # (32, V)
        anchored = model(torch.tensor([[eos] + [mask] * 31]))[0, 1:]  # (31, V)
    assert torch.allclose(blind, blind[:1].expand_as(blind), atol=1e-4)
    # with the anchor the predictions vary with the position (a trained model learns how)
    assert (anchored - anchored[:1]).abs().amax() > 1.0
