"""The samplers of mdlm.py and decode.py's command line, on tiny random models (CPU, seconds)."""
import functools
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import common
import ctc_slack
import data
import decode
import conftest
import mdlm
import sampling

EOS, SLACK, MASK = mdlm.special_ids(mdlm.BYTE_VOCAB_SIZE)  # the byte vocabulary
BYTES = data.Vocab(256, "bytes")


def byte_outputs(row, P, collapse="surface"):
    """The output ids of one canvas row of the byte vocabulary, as decode.py reads them."""
    return ctc_slack.read_outputs(torch.as_tensor(row)[None], prompt_lengths=P, slack_id=SLACK,
                                  eos_id=EOS, mask_id=MASK, collapse=collapse)[0]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

tiny_model = conftest.tiny_model  # 1 layer, width 16


class Wrapped(nn.Module):
    """A model whose logits get `bias` added at `token`, and which counts its calls."""

    def __init__(self, model, token=None, bias=0.0):
        super().__init__()
        self.model, self.cfg, self.token, self.bias, self.calls = model, model.cfg, token, bias, 0

    def forward(self, ids):
        self.calls += 1
        logits = self.model(ids)
        if self.token is not None:
            logits[..., self.token] += self.bias
        return logits


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def prompt_of(text, batch):
    ids = mdlm.encode(text)
    return torch.tensor([ids] * batch, dtype=torch.long).view(batch, len(ids))


# ------------------------------------------------------------------------------------------------
# The samplers


@pytest.mark.parametrize("sampler,block_length", [("ancestral", None), ("ancestral", 4),
                                                  ("confidence", None), ("confidence", 4)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_committed_tokens_and_prompt_never_change(sampler, block_length, temperature):
    model, prompt = tiny_model(), prompt_of("hey", 3)
    out = sampling.generate(model, prompt, 16, steps=8, sampler=sampler, block_length=block_length,
                          temperature=temperature, generator=gen(1), record_steps=True)
    canvas = out["canvas"]
    assert canvas.shape == (3, 19)
    assert torch.equal(canvas[:, :3], prompt), "the prompt changed"
    assert not (canvas == MASK).any(), "masks left at the end"
    assert not (canvas == SLACK).any(), "SLACK sampled although not allowed"
    assert len(out["history"]) == 8 and torch.equal(out["history"][-1], canvas)
    prev = torch.cat([prompt, torch.full((3, 16), MASK)], 1)
    for step in out["history"]:
        seen = prev != MASK
        assert torch.equal(step[seen], prev[seen]), "a committed token or the prompt changed"
        prev = step
    assert out["n_committed"].tolist() == [16] * 3 and out["n_shifted"].tolist() == [0] * 3


def test_blocks_fill_left_to_right_with_even_split():
    # length 12 in 3 blocks of 4, 6 steps -> 2 steps per block, 2 tokens per step (LLaDA's split)
    out = sampling.generate(tiny_model(), prompt_of("ab", 2), 12, steps=6, sampler="confidence",
                          block_length=4, temperature=1.0, generator=gen(), record_steps=True)
    prev_masked = 12
    for k, step in enumerate(out["history"]):
        gen_part = step[:, 2:]
        masked = (gen_part == MASK).sum(1)
        assert masked.tolist() == [prev_masked - 2] * 2, f"step {k} did not commit exactly 2"
        prev_masked -= 2
        done_blocks = (k + 1) // 2  # blocks finished after this step
        assert not (gen_part[:, : 4 * done_blocks] == MASK).any()
        assert (gen_part[:, 4 * (k // 2 + 1):] == MASK).all(), "a later block was touched early"


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ancestral_unmasks_at_the_schedule_rate(schedule):
    # after step k of n, the expected fraction of visible positions is alpha(1 - k/n)
    B, L, n = 256, 16, 4
    out = sampling.generate(tiny_model(), prompt_of("", B), L, steps=n, schedule=schedule,
                          generator=gen(3), record_steps=True)
    for k, step in enumerate(out["history"][:-1], start=1):
        visible = (step != MASK).float().mean().item()
        expect = mdlm.alpha_t(torch.tensor(1.0 - k / n), schedule).item()
        assert abs(visible - expect) < 0.03, (k, visible, expect)


def test_same_seed_same_samples_other_seed_differs():
    model, prompt = tiny_model(), prompt_of("x", 2)
    a = sampling.generate(model, prompt, 16, steps=8, generator=gen(5))["canvas"]
    b = sampling.generate(model, prompt, 16, steps=8, generator=gen(5))["canvas"]
    c = sampling.generate(model, prompt, 16, steps=8, generator=gen(6))["canvas"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_ancestral_cache_matches_uncached_with_fewer_calls():
    steps, length = 200, 16
    cached_model, plain_model = Wrapped(tiny_model(sharp=True)), Wrapped(tiny_model(sharp=True))
    cached = sampling.generate(cached_model, prompt_of("ab", 2), length, steps=steps,
                               generator=gen(2), record_steps=True)
    plain = sampling.generate(plain_model, prompt_of("ab", 2), length, steps=steps,
                              generator=gen(2), use_cache=False)
    assert torch.equal(cached["canvas"], plain["canvas"])
    assert plain_model.calls == plain["model_calls"] == steps
    assert cached_model.calls == cached["model_calls"]
    prev, changed = None, 0
    for step in cached["history"]:
        changed += prev is None or not torch.equal(step, prev)
        prev = step
    assert cached["model_calls"] <= changed + 1
    assert cached["model_calls"] <= 2 * length + 1 < steps // 4


def test_request_errors():
    model = tiny_model(seq_len=32)
    with pytest.raises(ValueError, match="exceeds"):
        sampling.generate(model, prompt_of("0123456789", 1), 23, steps=4)
    with pytest.raises(ValueError, match="at least 1"):
        sampling.generate(model, prompt_of("", 1), 16, steps=4, sampler="confidence",
                          block_length=0)
    with pytest.raises(ValueError, match="number of blocks"):
        sampling.generate(model, prompt_of("", 1), 16, steps=6, sampler="confidence",
                          block_length=4)


# ------------------------------------------------------------------------------------------------
# SLACK


@pytest.mark.parametrize("sampler", ["ancestral", "confidence"])
def test_slack_only_when_allowed(sampler):
    model = Wrapped(tiny_model(), token=SLACK, bias=50.0)  # SLACK would win everywhere
    for allow in (False, True):
        out = sampling.generate(model, prompt_of("hi", 2), 16, steps=4, sampler=sampler,
                              allow_slack=allow, generator=gen())
        n_slack = (out["canvas"] == SLACK).sum().item()
        assert (n_slack > 16) if allow else (n_slack == 0), (allow, n_slack)
        for row in out["canvas"]:
            for collapse in ("surface", "standard"):
                ids = byte_outputs(row, 2, collapse)
                assert all(i < 256 for i in ids), "finish left a special id in the output"


def test_read_outputs_collapse_eos_and_mask():
    """The one read-out: the collapse map, then the cut at the first EOS (none with eos_id=None,
    for a corpus whose documents EOS separates), one prompt length for every row or one per row;
    a response that still holds MASK is an error, never ids; MASK in a prompt is no response."""
    a, b, c = mdlm.encode("abc")
    row = mdlm.encode("p:") + [a, SLACK, a, a, SLACK, b, b, EOS, c, SLACK]
    assert byte_outputs(row, 2) == [a, a, a, b, b]
    assert byte_outputs(row, 2, "standard") == [a, a, b]
    assert byte_outputs([a, b], 0) == [a, b]  # no EOS: all kept
    assert BYTES.decode(byte_outputs(row, 2, "standard")) == "aab"
    read = functools.partial(ctc_slack.read_outputs, slack_id=SLACK, mask_id=MASK)
    assert read([row, row], prompt_lengths=2, eos_id=None) == [[a, a, a, b, b, EOS, c]] * 2
    assert read([row, row], prompt_lengths=[2, 8], eos_id=EOS) == [[a, a, a, b, b], [b]]
    assert read([[MASK, a, EOS, MASK]], prompt_lengths=1, eos_id=None,
                mask_id=ord("z")) == [[a, EOS, MASK]]  # another vocabulary: MASK is an id here
    for bad in ([MASK, a, a, b], [a, a, EOS, MASK]):  # before or after the first EOS alike
        with pytest.raises(ValueError, match="row 1 still holds MASK"):
            read([row, mdlm.encode("p:") + bad + [EOS] * 6], prompt_lengths=2, eos_id=EOS)
    assert read([[MASK, a]], prompt_lengths=1, eos_id=EOS) == [[a]]  # the prompt is not read


def test_render_canvas_shows_specials():
    row = torch.tensor(mdlm.encode("hi") + [SLACK, MASK, EOS, 0xC3, ord("\n"), ord("a")])
    assert decode.render_canvas(row, 2) == "hi▸·□⏎\\xc3↵a"


# ------------------------------------------------------------------------------------------------
# The shift probe


def test_shift_probe_crafted_canvas():
    # prompt 0..1 | generation 2..11.  Committed now: A(2) B(5) D(9) E(10); C(6), F(11) are older.
    A, B, C, D, E, F, P = 65, 66, 67, 68, 69, 70, 80
    M = MASK
    canvas = torch.tensor([[P, P, A, M, M, B, C, M, M, D, E, F]])
    now = torch.zeros_like(canvas, dtype=torch.bool)
    now[0, [2, 5, 9, 10]] = True
    # every token has one free side at its turn, so the result does not depend on the coin:
    # A: left is the prompt -> right; B: right is C -> left; D: right is E -> left;
    # E: its left was just vacated by D -> left (tokens are processed left to right)
    expect = torch.tensor([[P, P, M, A, B, M, C, M, D, E, M, F]])
    for seed in range(5):
        out, moved = sampling.shift_probe(canvas, now, 1.0, gen(seed), gen_start=2, mask_id=MASK)
        assert torch.equal(out, expect) and moved.tolist() == [4]
    # a token with no masked neighbour stays, and nothing moves at rate 0
    stuck = torch.tensor([[P, A, B, C]])
    stays = sampling.shift_probe(stuck, stuck != P, 1.0, gen(), gen_start=1, mask_id=MASK)[1]
    assert stays.item() == 0
    out, moved = sampling.shift_probe(canvas, now, 0.0, gen(), gen_start=2, mask_id=MASK)
    assert torch.equal(out, canvas) and moved.item() == 0
    # masked slots outside [gen_start, gen_end) (another block) are never entered
    edge = torch.tensor([[M, A, M, M, B, M]])
    out, moved = sampling.shift_probe(edge, edge != M, 1.0, gen(), gen_start=1, gen_end=5,
                                  mask_id=MASK)
    assert torch.equal(out, torch.tensor([[M, M, A, B, M, M]])) and moved.item() == 2


def test_shift_probe_random_isolated_tokens():
    # committed-now tokens 3 apart never interact: at rate 1 each one with a masked neighbour moves
    # exactly one slot, the count equals half the changed positions, and the prompt is untouched
    g, lefts, both = torch.Generator().manual_seed(0), 0, 0
    for trial in range(50):
        B, T, P = 4, 40, 5
        canvas = torch.randint(0, 256, (B, T), generator=g)
        canvas[:, P:][torch.rand(B, T - P, generator=g) < 0.5] = MASK
        now = torch.zeros(B, T, dtype=torch.bool)
        for b in range(B):
            for i in range(P + torch.randint(0, 3, (1,), generator=g).item(), T, 3):
                if torch.rand(1, generator=g) < 0.6:
                    now[b, i], canvas[b, i] = True, torch.randint(0, 256, (1,), generator=g)
        out, moved = sampling.shift_probe(canvas, now, 1.0, gen(trial), gen_start=P, mask_id=MASK)
        assert torch.equal(out[:, :P], canvas[:, :P])
        assert ((out != canvas).sum(1) == 2 * moved).all()
        for b, i in now.nonzero().tolist():
            free = [j for j in (i - 1, i + 1) if P <= j < T and canvas[b, j] == MASK]
            if not free:
                assert out[b, i] == canvas[b, i]
                continue
            assert out[b, i] == MASK and any(out[b, j] == canvas[b, i] for j in free)
            if len(free) == 2:
                both, lefts = both + 1, lefts + int(out[b, i - 1] == canvas[b, i])
    assert 0.35 < lefts / both < 0.65, "left and right should be equally likely"


def test_generate_with_tiny_probe_rate_equals_no_probe():
    # the probe has its own random stream: without a realised move the samples are identical
    model, prompt = tiny_model(), prompt_of("ab", 2)
    def run(rate):
        return sampling.generate(model, prompt, 16, steps=8, sampler="confidence", block_length=8,
                               shift_rate=rate, generator=gen(4))

    base, tiny, some = run(0.0), run(1e-12), run(0.5)
    assert torch.equal(base["canvas"], tiny["canvas"]) and tiny["n_shifted"].sum() == 0
    assert some["n_shifted"].sum() > 0 and not torch.equal(base["canvas"], some["canvas"])
    # vacated slots are refilled: every mask is still filled and the prompt kept; a move fills one
    # mask and frees another, so the number of commits stays the length
    assert not (some["canvas"] == MASK).any() and torch.equal(some["canvas"][:, :2], prompt)
    assert some["n_committed"].tolist() == [16, 16]


# ------------------------------------------------------------------------------------------------
# Autoregressive checkpoints


def test_generate_ar():
    model = tiny_model(causal=True)
    prompt = prompt_of("hey", 2)
    out = sampling.generate_ar(model, prompt, 10, temperature=1.0, generator=gen())
    assert out["canvas"].shape == (2, 13) and torch.equal(out["canvas"][:, :3], prompt)
    assert not ((out["canvas"] == SLACK) | (out["canvas"] == MASK)).any()
    empty = sampling.generate_ar(Wrapped(model, token=EOS, bias=50.0), prompt_of("", 2), 10,
                               temperature=0.0)
    assert empty["canvas"].shape == (2, 10) and (empty["canvas"] == EOS).all()
    assert empty["model_calls"] == 1, "all rows ended: decoding should stop"


# ------------------------------------------------------------------------------------------------
# Command line


def write_ckpt(path, causal=False, slack=True):
    model = tiny_model(causal=causal)
    meta = {"objective": "ar" if causal else "mdlm", "schedule": "linear", "slack": slack,
            "collapse": "surface"}
    common.save_checkpoint({"config": model.cfg.to_dict(), "model": model.state_dict(), "ema": None,
                          "step": 0, "meta": meta}, str(path))
    return str(path)


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a tiny model: threads only add start-up time
    return subprocess.run([sys.executable, os.path.join(ROOT, "decode.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)


def test_cli_json(tmp_path):
    ckpt = write_ckpt(tmp_path / "m.pt")
    r = run_cli("--ckpt", ckpt, "--prompt", "hi", "--length", "16", "--steps", "8", "--json",
                "--num-samples", "2", "--shift-rate", "0.1", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 2 and all(row["prompt"] == "hi" for row in rows)
    for row in rows:
        assert (row["n_committed"] == 16 and 0 <= row["shift_fraction"] <= 1
                and row["model_calls"] >= 1)


def test_cli_errors_and_text_mode(tmp_path, capsys):
    ckpt = write_ckpt(tmp_path / "m.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert decode.main(["--ckpt", str(tmp_path / "missing.pt"), "--device", "cpu"]) == 1
    assert decode.main(["--ckpt", str(bad), "--device", "cpu"]) == 1
    assert decode.main(["--ckpt", ckpt, "--prompt", "x" * 30, "--length", "16",
                        "--device", "cpu"]) == 1
    assert decode.main(["--ckpt", ckpt, "--length", "16", "--steps", "7", "--sampler", "confidence",
                        "--block-length", "5", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err), err
    assert "does not exist" in err[0] and "corrupted" in err[1] and "exceeds" in err[2]
    assert decode.main(["--ckpt", ckpt, "--prompt", "hi", "--length", "8", "--steps", "4",
                        "--show-steps", "--show-canvas", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "step    4 hi▸" in out and "canvas: hi▸" in out
    ar = write_ckpt(tmp_path / "ar.pt", causal=True, slack=False)
    assert decode.main(["--ckpt", ar, "--prompt", "hi", "--length", "8", "--json",
                        "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["sampler"] == "ar"


def test_uneven_last_block_fills_left_to_right():
    """Blocks of 5 over 12 positions: 5, 5 and a last block of 2, each filled before the next."""
    out = sampling.generate(tiny_model(), prompt_of("ab", 1), 12, steps=6, sampler="confidence",
                        block_length=5, generator=gen(), record_steps=True)
    filled = [(h[0, 2:] != MASK).sum().item() for h in out["history"]]
    assert filled == [3, 5, 8, 10, 11, 12]  # ceil(masked in block / steps left in block) per step
    for k, h in enumerate(out["history"]):  # nothing beyond the current block is ever filled
        blk_end = 2 + 5 * (k // 2 + 1)
        assert (h[0, blk_end:] == MASK).all()


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p, "response": "x"}) + "\n" for p in prompts))
    return str(path)


def test_cli_prompts_file_at_several_rates(tmp_path):
    """--prompts/--out: one record per prompt and rate, prompts of different lengths, each output
    the same as decoding that prompt alone with the group's seed (seed + prompt length)."""
    ckpt = write_ckpt(tmp_path / "m.pt")
    prompts = write_prompts(tmp_path / "p.jsonl", ["ab", "xyz", "cd"])
    out = tmp_path / "g" / "gens.jsonl"
    assert decode.main(["--ckpt", ckpt, "--prompts", prompts, "--out", str(out),
                        "--sampler", "confidence",
                        "--block-length", "8", "--per-step", "2", "--shift-rates", "0", "0.5",
                        "--temperature", "1", "--seed", "3", "--device", "cpu"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(recs) == 6 and {r["rate"] for r in recs} == {0.0, 0.5}
    assert sorted(r["i"] for r in recs if r["rate"] == 0) == [0, 1, 2]
    assert all(r["n_committed"] == 32 - len(r["prompt"]) for r in recs)
    assert all(r["n_shifted"] == 0 for r in recs if r["rate"] == 0)
    assert sum(r["n_shifted"] for r in recs if r["rate"] == 0.5) > 0
    # "xyz" alone: a group of one, seed 3 + 3, canvas filled to 32 positions, 29 / 2 -> 15 steps
    model = common.model_from_checkpoint(common.load_checkpoint(ckpt))
    # a slack-trained checkpoint: slack allowed, and decode.py's default rule for such models
    alone = sampling.generate(model, prompt_of("xyz", 1), 29, steps=4 * 4, sampler="confidence",
                          block_length=8, temperature=1.0, generator=gen(6), allow_slack=True,
                          slack_rule=decode.DEFAULT_SLACK_RULE)
    rec = next(r for r in recs if r["prompt"] == "xyz" and r["rate"] == 0)
    assert rec["output_ids"] == byte_outputs(alone["canvas"][0].tolist(), 3)
    assert rec["output"] == BYTES.decode(rec["output_ids"])


def test_cli_several_checkpoints_and_settings(tmp_path):
    """Several checkpoints into a folder, one file each named by the checkpoint's folder; every
    slack rule x positions per step x rate is decoded and recorded, and "auto" resolves to the
    default rule for a slack-trained checkpoint and to plain for one without slack."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    cks = [write_ckpt(tmp_path / "a" / "ckpt.pt"), write_ckpt(tmp_path / "b" / "ckpt.pt",
                                                              slack=False)]
    prompts = write_prompts(tmp_path / "p.jsonl", ["ab", "xyz"])
    assert decode.main(["--ckpt", *cks, "--prompts", prompts, "--out", str(tmp_path / "g"),
                        "--sampler", "confidence", "--block-length", "8", "--slack-rules", "auto",
                        "threshold", "--per-steps", "1", "2", "--shift-rates", "0", "0.1",
                        "--device", "cpu"]) == 0
    for name, auto in (("a", decode.DEFAULT_SLACK_RULE), ("b", "plain")):
        recs = [json.loads(line) for line in (tmp_path / "g" / f"{name}.jsonl").open()]
        settings = {(r["slack_rule"], r["per_step"]) for r in recs}
        assert settings == {(auto, 1), (auto, 2), ("threshold", 1), ("threshold", 2)}
        assert len(recs) == 2 * 2 * 2 * 2  # prompts x rules x per-steps x rates


def test_block_lengths_sweep_and_a_model_without_slack_decoded_once(tmp_path):
    """--block-lengths is a sweep like the others, recorded per output; a checkpoint that never
    samples slack is decoded once per setting of the other flags and recorded under every rule,
    which is exact: decoding it under each rule on its own gives the same outputs."""
    (tmp_path / "b").mkdir()
    ck = write_ckpt(tmp_path / "b" / "ckpt.pt", slack=False)
    prompts = write_prompts(tmp_path / "p.jsonl", ["ab", "xyz"])
    flags = ["--prompts", prompts, "--sampler", "confidence", "--temperature", "1",
             "--shift-rates", "0", "0.1", "--device", "cpu", "--no-progress"]
    assert decode.main(["--ckpt", ck, "--out", str(tmp_path / "all.jsonl"), *flags,
                        "--slack-rules", "plain", "last", "first", "--block-lengths", "4",
                        "8"]) == 0
    recs = [json.loads(line) for line in (tmp_path / "all.jsonl").open()]
    assert {(r["slack_rule"], r["block_length"]) for r in recs} == {
        (rule, b) for rule in ("plain", "last", "first") for b in (4, 8)}
    for rule in ("last", "first"):
        out = tmp_path / f"{rule}.jsonl"
        assert decode.main(["--ckpt", ck, "--out", str(out), *flags, "--slack-rule", rule,
                            "--block-length", "8"]) == 0
        alone = [json.loads(line) for line in out.open()]
        swept = [r for r in recs if r["slack_rule"] == rule and r["block_length"] == 8]
        assert [r["output_ids"] for r in alone] == [r["output_ids"] for r in swept]


def test_slack_rules_order_the_commits():
    """plain ranks every proposal by its probability; last puts slack proposals after every real
    one; threshold lets a slack proposal keep its rank when its probability is high enough; first
    puts slack before every real one. The proposals and the number committed are the same under
    every rule."""
    V = mdlm.BYTE_VOCAB_SIZE
    probs = torch.zeros(1, 4, V)
    for pos, (tok, p) in enumerate([(SLACK, 0.97), (5, 0.6), (SLACK, 0.8), (7, 0.5)]):
        probs[0, pos] = (1 - p) / (V - 1)  # the rest of the mass spread over the other ids
        probs[0, pos, tok] = p
    log_p = probs.log()
    region = torch.ones(1, 4, dtype=torch.bool)
    commits = {}
    for rule in sampling.SLACK_RULES:  # 4 masked positions over 2 steps: commit 2 now
        x, c = sampling.confidence_commit(log_p, region, 2, 0.0, None, rule, slack_threshold=0.9)
        assert x.tolist() == [[SLACK, 5, SLACK, 7]] and c.sum() == 2
        commits[rule] = c[0].nonzero().flatten().tolist()
    assert commits == {"plain": [0, 2], "last": [1, 3], "threshold": [0, 1], "first": [0, 2]}
    # positions outside the region never take a commit: the k commits all land inside it
    region = torch.tensor([[True, False, True, False]])
    for rule in sampling.SLACK_RULES:
        _, c = sampling.confidence_commit(log_p, region, 1, 0.0, None, rule, slack_threshold=0.9)
        assert c[0].tolist() == [True, False, True, False], rule


def test_slack_last_ranks_by_groups_on_any_scale():
    """slack_last against the obvious order, sorted(key=(group, -confidence, position)): masked
    real proposals, then masked slack that waits, then decoded positions; the same order for
    probabilities and their logs (with a penalty on the value, slack ranked second of three on
    log-probabilities), with ties, and a threshold on the confidence's own scale."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        B, T = 3, int(torch.randint(1, 12, (1,), generator=gen))
        p = (torch.rand(B, T, generator=gen) * 4).round() / 4 + 0.01  # many ties
        x = torch.where(torch.rand(B, T, generator=gen) < 0.4, SLACK,
                        torch.randint(0, 256, (B, T), generator=gen))
        masked = torch.rand(B, T, generator=gen) < 0.7
        for threshold in (None, 0.5):
            waits = (x == SLACK) & masked & (p < (threshold or math.inf))
            group = (~masked) * 2 + waits
            want = [sorted(range(T), key=lambda i: (int(group[b, i]), -float(p[b, i]), i))
                    for b in range(B)]
            for conf, thr in ((p, threshold), (p.log(), threshold and math.log(threshold))):
                key = ctc_slack.slack_last(conf, x, slack_id=SLACK, masked=masked, threshold=thr)
                assert key.argsort(1, descending=True).tolist() == want
    log_p = torch.tensor([[0.9, 0.5, 0.1]]).log()  # slack, then two real proposals
    key = ctc_slack.slack_last(log_p, torch.tensor([[SLACK, 1, 2]]), slack_id=SLACK,
                               masked=torch.ones(1, 3, dtype=torch.bool))
    assert key.argsort(1, descending=True).tolist() == [[1, 2, 0]]  # slack last


def test_slack_at_minus_inf_leaves_mask_that_read_outputs_refuses():
    """A porter who bans slack's confidence to -inf (and so every decoded position's) lets a
    decoded position take a commit: the step commits too few, MASK is left, and read_outputs
    refuses the canvas. slack_last with the positions still masked commits k masked positions."""
    canvas = torch.tensor([[7, MASK, MASK, MASK]])  # a prompt of one token
    x0 = torch.tensor([[7, SLACK, SLACK, 3]])  # the proposals
    conf = torch.tensor([[0.0, -1.0, -2.0, -3.0]])  # log-probabilities
    masked, k = canvas == MASK, 3  # the last step: every masked position is committed
    banned = torch.where(x0 == SLACK, -math.inf, conf).masked_fill(~masked, -math.inf)
    order = banned.argsort(dim=1, descending=True, stable=True)  # ties (-inf): leftmost first
    done = torch.where(masked & (order.argsort(1) < k), x0, canvas)
    with pytest.raises(ValueError, match="MASK"):
        ctc_slack.read_outputs(done, prompt_lengths=1, slack_id=SLACK, eos_id=EOS, mask_id=MASK)
    key = ctc_slack.slack_last(conf, x0, slack_id=SLACK, masked=masked)
    done = torch.where(masked & (key.argsort(1, descending=True).argsort(1) < k), x0, canvas)
    assert ctc_slack.read_outputs(done, prompt_lengths=1, slack_id=SLACK, eos_id=EOS,
                                  mask_id=MASK) == [[3]]


def readme_decoding_block():
    """The README's porting section's decoding block (its second python block)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Use the slack CTC in your own MDLM", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[1]


def test_readme_decoding_block_is_what_decode_py_runs(monkeypatch):
    """The porter's decoding block and decode.py (--sampler confidence --slack-rule last, one
    block, temperature 0) on one model and the same prompts: the same canvases and outputs, each
    through ctc_slack's masked_canvas, slack_last and read_outputs (counted by spies). The model
    proposes slack often enough that the rule changes the canvases."""
    calls = {}

    def spy(name, real):
        def counted(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)
        monkeypatch.setattr(ctc_slack, name, counted)
    for name in ("masked_canvas", "slack_last", "read_outputs"):
        spy(name, getattr(ctc_slack, name))
    model = Wrapped(tiny_model(seq_len=24, sharp=True), token=SLACK, bias=35.0)
    code = readme_decoding_block()
    model_line = re.search(r"^model = .*# your MDLM$", code, re.M).group(0)
    porter = {"MODEL": model}
    exec(code.replace(model_line, "model = MODEL"), porter)  # its own `import ctc_slack`
    T, steps, prompts = porter["T"], porter["steps"], porter["prompts"]
    assert calls == {"masked_canvas": 1, "slack_last": steps, "read_outputs": 1}
    meta = {"schedule": "linear", "slack": 1, "collapse": "surface"}
    canvases = {}
    for rule in ("last", "plain"):
        calls.clear()
        for p in prompts:  # decode.py batches prompts of one length: here one each
            d = decode.Decoding("confidence", T - len(p), steps, 1, None, 0.0, rule, 0.9)
            out = decode.run_batch(model, meta, torch.tensor([p]), d, 0.0, gen())
            canvases[rule, len(p)] = out["canvas"][0]
            ids, _ = decode.output_record(out["canvas"][0].tolist(), len(p), meta, BYTES, False)
            if rule == "last":
                assert ids == porter["outputs"][prompts.index(p)]
        n = len(prompts)
        assert calls == ({"masked_canvas": n, "slack_last": n * steps, "read_outputs": n}
                         if rule == "last" else {"masked_canvas": n, "read_outputs": n})
    for k, p in enumerate(prompts):
        assert torch.equal(canvases["last", len(p)], porter["canvas"][k]), k
        assert (porter["canvas"][k] == SLACK).any()
        assert not torch.equal(canvases["plain", len(p)], porter["canvas"][k]), k


@pytest.mark.parametrize("rule", sampling.SLACK_RULES)
def test_every_slack_rule_fills_every_block(rule):
    """A model that proposes slack often, decoded in blocks with each rule: no MASK is left."""
    model = Wrapped(tiny_model(), token=SLACK, bias=4.0)  # slack proposed most of the time
    out = sampling.generate(model, prompt_of("ab", 4), 24, steps=12, sampler="confidence",
                        block_length=8, allow_slack=True, slack_rule=rule, generator=gen(1))
    assert not (out["canvas"] == MASK).any() and (out["canvas"] == SLACK).any()


@pytest.mark.parametrize("flags,message", [
    (["--prompt", "\udcff"], "not valid UTF-8"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "nope"], "device"),
    (["--num-samples", "0"], "at least 1"),
    (["--per-step", "-1"], "at least 1"),
    (["--shift-rate", "1.5"], "shift rates"),
    (["--shift-rates", "0", "0.1"], "--shift-rates needs --prompts"),
    (["--prompts", "p.jsonl"], "go together"),
    (["--length", "0"], "at least 1"),
    (["--temperature", "-1"], "temperature"),
])
def test_cli_bad_values_are_one_line(tmp_path, capsys, flags, message):
    ckpt = write_ckpt(tmp_path / "m.pt")
    assert decode.main(["--ckpt", ckpt, "--device", "cpu", *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_cli_prompts_file_problems(tmp_path, capsys):
    ckpt = write_ckpt(tmp_path / "m.pt")
    out = str(tmp_path / "g.jsonl")
    assert decode.main(["--ckpt", ckpt, "--prompts", str(tmp_path), "--out", out,
                        "--device", "cpu"]) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"no prompt": 1}\n')
    assert decode.main(["--ckpt", ckpt, "--prompts", str(bad), "--out", out,
                        "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err), err
    assert not os.path.exists(out)
