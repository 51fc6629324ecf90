"""Fine-tuning with CE, slack CTC and both, through the batch and loss code train.py runs
(objective.py), and through train.py itself."""
import functools
import json
import os

import numpy as np
import pytest
import torch

import common
import conftest
import ctc_slack
import data
import decode
import mdlm
import objective
import sampling
import train

EOS, SLACK, MASK = mdlm.special_ids(mdlm.BYTE_VOCAB_SIZE)  # the byte vocabulary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--seq-len", "32", "--batch-size", "8",
        "--eval-interval", "1000", "--eval-batches", "1", "--sample-interval", "0", "--no-progress",
        # fp32: these tests compare runs exactly (bf16 against fp32: test_gpu_path.py)
        "--device", "cpu", "--warmup", "5", "--dtype", "fp32"]


def obj_for(**kw):
    """The objective of a canvas of 32 positions (placement: tail unless given)."""
    return objective.Objective(**{"seq_len": 32, "vocab_size": mdlm.BYTE_VOCAB_SIZE, **kw})


tiny_model = functools.partial(conftest.tiny_model, n_embd=32)


def batch_for(split, obj, model, seed=0, n=6, stats=None):
    gen = torch.Generator().manual_seed(seed)
    b = objective.get_batch(split, obj, n, gen, stats or {"truncated": 0}, model)
    return conftest.noised(b, obj, gen)  # t and z_t, as train.py's loop draws them


def loss_on_same_batch(model, ids, seed, **kw):
    obj = obj_for(**kw)
    b = batch_for(ids, obj, model, seed)
    return objective.loss(model(b["z_t"]), b, obj), b


IDS = np.frombuffer(("abcabd " * 400).encode(), dtype=np.uint8)  # as data.load_corpus gives


@pytest.mark.parametrize("prompt_len", [0, 8])
def test_ctc_equals_ce_at_slack_rate_zero(prompt_len):
    model = tiny_model()
    for seed in range(3):
        ce, b1 = loss_on_same_batch(model, IDS, seed, loss="ce", prompt_len=prompt_len)
        ctc, b2 = loss_on_same_batch(model, IDS, seed, loss="ctc", prompt_len=prompt_len)
        assert torch.equal(b1["z_t"], b2["z_t"])  # same batch and noise
        assert (b1["z_t"] == MASK).any()
        assert torch.allclose(ce, ctc, rtol=1e-5, atol=1e-6), (ce, ctc)


@pytest.mark.parametrize("placement", ["random", "tail"])
def test_ctc_never_exceeds_ce_when_reference_collapses_to_target(placement):
    model = tiny_model()
    for seed in range(3):
        ce, b = loss_on_same_batch(model, IDS, seed, loss="ce", slack_rate=0.25, prompt_len=4,
                                   placement=placement)
        ctc, _ = loss_on_same_batch(model, IDS, seed, loss="ctc", slack_rate=0.25, prompt_len=4,
                                    placement=placement)
        # the reference canvas collapses to the target: drop slack from the response, get y back
        for z0, P, y, U in zip(b["z0"], b["P"], b["y"], b["U"]):
            assert [v for v in z0[P:].tolist() if v != SLACK] == y[:U].tolist()
        assert (ctc <= ce + 1e-5).all() and (ctc < ce - 1e-3).any(), (ctc, ce)


def test_ctc_plus_ce_is_the_weighted_sum():
    model = tiny_model()
    kw = dict(slack_rate=0.2, prompt_len=4, placement="random")
    ce, _ = loss_on_same_batch(model, IDS, 0, loss="ce", **kw)
    ctc, _ = loss_on_same_batch(model, IDS, 0, loss="ctc", **kw)
    both, _ = loss_on_same_batch(model, IDS, 0, loss="ctc+ce", ctc_weight=0.7, ce_weight=0.3, **kw)
    assert torch.allclose(both, 0.7 * ctc + 0.3 * ce, rtol=1e-6)


@pytest.mark.parametrize("loss", ["ce", "ctc"])
def test_prompt_positions_are_never_masked_nor_scored(loss):
    model = tiny_model()
    obj = obj_for(loss=loss, slack_rate=0.1, prompt_len=10)
    b = batch_for(IDS, obj, model)
    assert b["is_prompt"][:, :10].all() and not b["is_prompt"][:, 10:].any()
    assert torch.equal(b["z_t"][:, :10], b["z0"][:, :10])
    # change the prompt's logits only: the loss must not move
    logits = torch.randn(6, 32, mdlm.BYTE_VOCAB_SIZE, requires_grad=True)
    out = objective.loss(logits, b, obj).sum()
    out.backward()
    assert logits.grad[:, :10].abs().max() == 0 and logits.grad[:, 10:].abs().max() > 0


def test_model_placement_puts_targets_in_order():
    model = tiny_model()
    b = batch_for(IDS, obj_for(loss="ctc", slack_rate=0.25, prompt_len=4, placement="model"), model)
    for z0, y in zip(b["z0"], b["y"]):
        assert [v for v in z0[4:].tolist() if v != SLACK] == y.tolist()
        assert (z0[4:] == SLACK).sum() == round(0.25 * 28)


def write_sft(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")


def test_sft_reader(tmp_path):
    path = str(tmp_path / "sft.jsonl")
    write_sft(path, [{"prompt": "Grüß", "response": "日本"}, "",
                     {"prompt": "q", "response": ""}])
    recs = data.read_sft(path)
    assert recs == [(list("Grüß".encode()), list("日本".encode()) + [EOS]), (list(b"q"), [EOS])]
    for bad, message in [("{not json", ":1: not valid JSON"),
                         ('{"prompt": "x"}', ":1: need string keys"),
                         ('["prompt", "response"]', ":1: need string keys")]:
        write_sft(path, [bad])
        with pytest.raises(common.UserError, match=message):
            data.read_sft(path)
    write_sft(path, [{"prompt": "a", "response": "b"}, '{"prompt": 1, "response": "b"}'])
    with pytest.raises(common.UserError, match=":2:"):
        data.read_sft(path)


def test_start_token_is_trained_kept_by_fine_tunes_and_decoded(tmp_path):
    """train.py --bos puts EOS before every prompt (here empty ones: unconditional texts) and
    records it; a fine-tune of that checkpoint keeps it without the flag; decode.py decodes after
    it, and its output is what the sampler gives on a canvas that starts with EOS."""
    sft = str(tmp_path / "sft.jsonl")
    write_sft(sft, [{"prompt": "", "response": "ab" * (1 + i % 5)} for i in range(40)])
    pre, fine = str(tmp_path / "pre"), str(tmp_path / "fine")
    train.main(["--sft", sft, "--bos", "--out-dir", pre, "--steps", "3", *TINY,
                "--sample-interval", "3"])  # the sample shows the prompt without its start token
    train.main(["--sft", sft, "--init-from", os.path.join(pre, "ckpt.pt"), "--out-dir", fine,
                "--steps", "2", "--loss", "ctc", "--slack-rate", "0.1", *TINY])
    ckpt = common.load_checkpoint(os.path.join(fine, "ckpt.pt"))
    assert common.checkpoint_meta(ckpt)["bos"] is True
    args = train.get_args(["--sft", sft, "--out-dir", str(tmp_path / "x"), *TINY])
    with_start, _, _ = train.load_splits(args, ckpt)
    without, _, _ = train.load_splits(args, None)  # a fresh run without --bos
    assert [p for p, _ in with_start] == [[EOS]] * 38 and [p for p, _ in without] == [[]] * 38
    assert [r for _, r in with_start] == [r for _, r in without]

    prompts, out = tmp_path / "p.jsonl", tmp_path / "gens.jsonl"
    write_sft(str(prompts), [{"prompt": ""}])
    assert decode.main(["--ckpt", os.path.join(fine, "ckpt.pt"), "--prompts", str(prompts),
                        "--out", str(out), "--sampler", "confidence", "--temperature", "0",
                        "--device", "cpu"]) == 0
    rec = json.loads(out.read_text())
    model = common.model_from_checkpoint(ckpt)
    canvas = sampling.generate(model, torch.tensor([[EOS]]), 31, steps=31, sampler="confidence",
                               temperature=0, allow_slack=True,
                               slack_rule=decode.DEFAULT_SLACK_RULE)["canvas"]
    assert rec["n_committed"] == 31  # 32 positions less the start token
    assert rec["prompt"] == "" and rec["output_ids"] == ctc_slack.read_outputs(
        canvas, prompt_lengths=1, slack_id=SLACK, eos_id=EOS, mask_id=MASK)[0]


def test_start_token_of_a_token_vocabulary_is_its_eos(tmp_path):
    """The same off the byte path: ids of a 50-token vocabulary, whose EOS (the start token) is
    id 50, not the byte vocabulary's 256."""
    sft, prompts, out = (str(tmp_path / n) for n in ("sft.jsonl", "p.jsonl", "gens.jsonl"))
    write_sft(sft, [{"prompt_ids": [], "response_ids": [i % 50] * (1 + i % 5)} for i in range(40)])
    write_sft(prompts, [{"prompt_ids": []}])
    pre = str(tmp_path / "pre")
    train.main(["--sft", sft, "--vocab-size", "50", "--bos", "--out-dir", pre, "--steps", "2",
                *TINY])
    ckpt = common.load_checkpoint(os.path.join(pre, "ckpt.pt"))
    args = train.get_args(["--sft", sft, "--out-dir", str(tmp_path / "x"), *TINY])
    assert {tuple(p) for p, _ in train.load_splits(args, ckpt)[0]} == {(50,)}
    assert decode.main(["--ckpt", os.path.join(pre, "ckpt.pt"), "--prompts", prompts, "--out",
                        out, "--device", "cpu"]) == 0
    rec = json.loads(open(out).read())
    assert rec["n_committed"] == 31 and all(i < 50 for i in rec["output_ids"])


def test_sft_batches_truncate_pad_with_eos_and_count():
    records = [(list(b"p" * 5), list(b"r" * 40) + [EOS]), (list(b"q"), list(b"ok") + [EOS])]
    stats = {"truncated": 0}
    b = batch_for(records, obj_for(loss="ctc", slack_rate=0.1), None, stats=stats)
    long_rows = (b["P"] == 5).sum().item()
    assert stats["truncated"] == long_rows > 0
    for z0, P, y, U in zip(b["z0"], b["P"], b["y"], b["U"]):
        P, U = int(P), int(U)
        R = 32 - P
        assert R == 32 - P and U == R - round(0.1 * R)  # exactly K = round(rate * R) slacks
        # truncated / EOS-padded
        expect = list(b"r" * U) if P == 5 else list(b"ok") + [EOS] * (U - 2)
        assert y[:U].tolist() == expect
        assert [v for v in z0[P:].tolist() if v != SLACK] == expect
        assert (z0[P:] == SLACK).sum() == R - U


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    corpus = d / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 300, encoding="utf-8")
    out = str(d / "pre")
    train.main(["--data", str(corpus), "--out-dir", out, "--steps", "60", "--lr", "3e-3", *TINY])
    return str(corpus), os.path.join(out, "ckpt.pt"), d


def test_ctc_fine_tune_lowers_its_loss_and_learns_slack(pretrained):
    corpus, ckpt, d = pretrained
    out = str(d / "ctc")
    flags = ["--data", corpus, "--loss", "ctc", "--slack-rate", "0.2", "--prompt-len", "8", *TINY]
    train.main(["--init-from", ckpt, "--out-dir", out, "--steps", "80", "--lr", "3e-3", *flags])
    log = [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]
    assert log[0]["step"] == 0 and "val_ctc_random" in log[0]  # the fine-tune's starting point
    log = [rec for rec in log if "loss" in rec]  # training steps
    first, last = sum(l["loss"] for l in log[:10]) / 10, sum(l["loss"] for l in log[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    fine = common.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert fine["meta"]["slack"] is True and fine["meta"]["collapse"] == "surface"
    model = common.model_from_checkpoint(fine)
    # the fine-tuned model puts real probability on SLACK at masked positions;
    # the pretrained one none
    z = torch.tensor([mdlm.encode("the cat ") + [MASK] * 24])
    with torch.no_grad():
        p_slack = model(z).float().softmax(-1)[0, 8:, SLACK].mean().item()
        p_before = (common.model_from_checkpoint(common.load_checkpoint(ckpt))(z)
                    .float().softmax(-1)[0, 8:, SLACK])
    assert p_slack > 0.05 and p_slack > 10 * p_before.mean().item(), (p_slack, p_before.mean())
    # decoding it uses slack in the canvas, yet the output never contains a SLACK (or MASK) id
    prompt = torch.tensor([mdlm.encode("the cat ")] * 8)
    gen = torch.Generator().manual_seed(0)
    out = sampling.generate(model, prompt, 24, steps=24, allow_slack=True, generator=gen)
    assert (out["canvas"][:, 8:] == SLACK).any()
    outputs = ctc_slack.read_outputs(out["canvas"], prompt_lengths=8, slack_id=SLACK, eos_id=EOS,
                                     mask_id=MASK)
    assert all(SLACK not in ids and MASK not in ids and len(ids) > 0 for ids in outputs)


def test_fine_tune_bad_input_keeps_files(pretrained, tmp_path, capsys):
    corpus, ckpt, d = pretrained
    model = tiny_model(vocab_size=SLACK)  # a vocabulary without SLACK (and MASK)
    no_slack = str(tmp_path / "noslack.pt")
    common.save_checkpoint({"config": model.cfg.to_dict(), "model": model.state_dict(), "ema": None,
                          "meta": {"objective": "mdlm"}}, no_slack)
    sft = str(tmp_path / "bad.jsonl")
    write_sft(sft, [{"prompt": "a", "response": "b"}, {"prompt": "a"}])
    out = str(tmp_path / "o")
    cases = [
        (["--data", corpus, "--init-from", no_slack, "--loss", "ctc"], "ordinary ids"),
        (["--data", corpus, "--init-from", ckpt, "--loss", "ctc", "--slack-rate", "-0.1"],
         "--slack-rate"),
        (["--data", corpus, "--init-from", ckpt, "--loss", "ctc", "--prompt-len", "32"],
         "--prompt-len"),
        (["--init-from", ckpt, "--loss", "ctc", "--sft", sft], "bad.jsonl:2:"),
        (["--data", corpus, "--init-from", ckpt, "--sft", sft], "not both"),
        (["--data", corpus, "--bos"], "--bos is for --sft"),
        (["--data", corpus, "--init-from", ckpt, "--loss", "ctc", "--slack-placement", "mix",
          "--mix-random", "2"], "--mix-random"),
        (["--data", corpus, "--init-from", ckpt, "--slack-placement", "model",
          "--collapse", "standard"],
         "needs --collapse surface"),
    ]
    for extra, message in cases:
        code, err = conftest.run_main(train.main, ["--out-dir", out, "--steps", "2", *TINY,
                                                   *extra], capsys)
        assert code == 1 and message in err and "Traceback" not in err, (extra, err)
        assert not os.path.exists(os.path.join(out, "ckpt.pt"))


def test_mix_placement_rows_are_random_or_aligned():
    """mix: each row is either the random placement or the model's alignment of the same example,
    with about --mix-random of them random; the other rows equal a pure "model" batch."""
    model = tiny_model()
    kw = dict(loss="ctc", slack_rate=0.25, prompt_len=4)
    mix, rnd, mod = (batch_for(IDS, obj_for(placement=p, mix_random=0.5, **kw), model, n=64)
                     for p in ("mix", "random", "model"))
    is_rnd = (mix["z0"] == rnd["z0"]).all(1)
    is_mod = (mix["z0"] == mod["z0"]).all(1)
    assert (is_rnd | is_mod).all() and 10 < is_rnd.sum() < 54 and is_mod.sum() > 10
    assert torch.equal(mix["t"], rnd["t"])  # the same examples and noise draws in all three


def test_grad_accum_equals_one_big_batch(tmp_path):
    """--grad-accum 2 --batch-size 4 takes exactly the step of --batch-size 8: same examples, and
    the mean of two micro-batch means (each divided by 2) is the mean over the 8."""
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 300, encoding="utf-8")
    base = ["--data", str(corpus), "--steps", "2", "--ckpt-interval", "2", "--ema", "0", *TINY]
    train.main([*base, "--out-dir", str(tmp_path / "big"), "--batch-size", "8"])
    train.main([*base, "--out-dir", str(tmp_path / "acc"), "--batch-size", "4",
                "--grad-accum", "2"])
    a = common.load_checkpoint(str(tmp_path / "big" / "ckpt.pt"))["model"]
    b = common.load_checkpoint(str(tmp_path / "acc" / "ckpt.pt"))["model"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k
    train.main([*base, "--out-dir", str(tmp_path / "one"), "--batch-size", "4"])
    one = common.load_checkpoint(str(tmp_path / "one" / "ckpt.pt"))["model"]
    assert any(not torch.allclose(a[k], one[k], atol=1e-6) for k in a)  # a different batch differs
