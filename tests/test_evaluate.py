"""Tests of evaluate.py: metrics against hand-computed values, bits per byte against mdlm's losses,
the bootstrap's determinism and coverage, the report writers, and the reproduce command end to end
at toy sizes."""

import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

import evaluate
import mdlm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model(causal, seed=0, seq_len=24):
    torch.manual_seed(seed)
    cfg = mdlm.ModelConfig(seq_len=seq_len, n_layer=1, n_head=2, n_embd=16, causal=causal)
    return mdlm.Transformer(cfg).eval()


def save_tiny(path, causal, seed=0, seq_len=24, slack=False):
    """A hand-made checkpoint in train.py's format."""
    model = tiny_model(causal, seed, seq_len)
    meta = {"objective": "ar" if causal else "mdlm", "schedule": "linear", "slack": slack,
            "collapse": "surface"}
    mdlm.save_checkpoint({"config": model.cfg.to_dict(), "model": model.state_dict(), "ema": None,
                          "step": 7, "meta": meta, "args": {}}, str(path))
    return str(path)


# ----------------------------------------------------------------------------------------------
# Metrics of one continuation


def test_unigram_entropy_by_hand():
    assert evaluate.unigram_entropy([1, 1, 2, 2]) == pytest.approx(1.0)
    assert evaluate.unigram_entropy([7, 7, 7]) == 0.0
    assert evaluate.unigram_entropy([0, 1, 2, 3]) == pytest.approx(2.0)
    # p = (1/2, 1/4, 1/4): H = 0.5 * 1 + 2 * 0.25 * 2 = 1.5 bits
    assert evaluate.unigram_entropy([5, 5, 6, 9]) == pytest.approx(1.5)
    assert math.isnan(evaluate.unigram_entropy([]))


def test_distinct_n_by_hand():
    assert evaluate.distinct_n([1, 1, 1, 1], 1) == 0.25
    assert evaluate.distinct_n([1, 1, 1, 1], 2) == pytest.approx(1 / 3)  # (1,1) three times
    assert evaluate.distinct_n([1, 2, 1, 2], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert evaluate.distinct_n([1, 2, 3], 3) == 1.0
    assert math.isnan(evaluate.distinct_n([1, 2], 3))


def test_judge_nll_equals_ar_loss():
    """With a one-byte prompt every other byte is a continuation byte, so the judge's sum is
    mdlm.ar_loss (a mean over the same targets) times their number."""
    judge = tiny_model(causal=True, seq_len=24)
    x = torch.randint(0, 256, (1, 17), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = mdlm.ar_loss(judge(x[:, :-1]), x).item()
    nll, n = evaluate.judge_nll(judge, x[0, :1].tolist(), x[0, 1:].tolist())
    assert n == 16
    assert nll / n == pytest.approx(ref, rel=1e-5)
    # a longer prompt scores only the continuation: the mean over the last 6 targets
    with torch.no_grad():
        per_byte = torch.nn.functional.cross_entropy(judge(x[:, :-1])[0].float(), x[0, 1:], reduction="none")
    nll, n = evaluate.judge_nll(judge, x[0, :11].tolist(), x[0, 11:].tolist())
    assert n == 6 and nll == pytest.approx(per_byte[10:].sum().item(), rel=1e-5)


def test_judge_nll_truncates_to_the_judge_window():
    judge = tiny_model(causal=True, seq_len=8)
    nll, n = evaluate.judge_nll(judge, [65] * 5, [66] * 20)
    assert n == 8 + 1 - 5 and math.isfinite(nll)  # prompt + continuation = seq_len + 1 bytes
    nll, n = evaluate.judge_nll(judge, [65] * 30, [66] * 3)  # long prompt: its tail is kept
    assert n == 1
    assert evaluate.judge_nll(judge, [65], []) == (0.0, 0)
    with pytest.raises(ValueError):
        evaluate.judge_nll(judge, [], [66])


def test_continuation_metrics_of_empty_output_are_nan():
    judge = tiny_model(causal=True)
    m = evaluate.continuation_metrics(judge, [65, 66], [])
    assert m["length"] == 0 and all(math.isnan(m[k]) for k in evaluate.METRICS if k != "length")
    assert evaluate.nan_mean([1.0, float("nan"), 3.0]) == 2.0


# ----------------------------------------------------------------------------------------------
# Bits per byte


def test_bits_per_byte_ar_matches_ar_loss():
    model = tiny_model(causal=True, seq_len=8)
    val = torch.randint(0, 256, (8 * 5 + 3,), generator=torch.Generator().manual_seed(1), dtype=torch.long)
    val = val.to(torch.uint8)  # train.load_corpus gives bytes as uint8
    # by hand: windows val[8k : 8k + 9], k = 0..4, each predicting 8 bytes
    x = torch.stack([val[8 * k:8 * k + 9].long() for k in range(5)])
    with torch.no_grad():
        ref = mdlm.ar_loss(model(x[:, :-1]), x).mean().item() / math.log(2)
    got = evaluate.bits_per_byte(model, {"objective": "ar"}, val, 8, batch_size=2)
    assert got == pytest.approx(ref, rel=1e-5)
    # max_batches caps the windows read: one batch of 2 windows
    got1 = evaluate.bits_per_byte(model, {"objective": "ar"}, val, 8, batch_size=2, max_batches=1)
    with torch.no_grad():
        ref1 = mdlm.ar_loss(model(x[:2, :-1]), x[:2]).mean().item() / math.log(2)
    assert got1 == pytest.approx(ref1, rel=1e-5)


def test_bits_per_byte_mdlm_deterministic_and_finite():
    model = tiny_model(causal=False, seq_len=16)
    val = torch.randint(0, 256, (200,), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    meta = {"objective": "mdlm", "schedule": "linear"}
    a = evaluate.bits_per_byte(model, meta, val, 16, batch_size=4, t_samples=3, seed=5)
    b = evaluate.bits_per_byte(model, meta, val, 16, batch_size=4, t_samples=3, seed=5)
    c = evaluate.bits_per_byte(model, meta, val, 16, batch_size=4, t_samples=3, seed=6)
    assert math.isfinite(a) and a == b and a != c
    # an untrained model is near uniform over 258 outcomes: the NELBO estimate is near log2(258)
    assert 5.0 < a < 11.0
    # the same estimate written out: 12 windows of 16 bytes in one batch, 3 stratified draws of t
    x = val[:192].long().view(12, 16)
    gen, draws = torch.Generator().manual_seed(5), []
    with torch.no_grad():
        for _ in range(3):
            t = mdlm.sample_t(12, generator=gen)
            z_t = mdlm.forward_mask(x, t, "linear", generator=gen)
            draws.append(mdlm.mdlm_loss(model(z_t), x, z_t, t, "linear"))
    ref = torch.cat(draws).mean().item() / math.log(2)
    got = evaluate.bits_per_byte(model, meta, val, 16, batch_size=12, t_samples=3, seed=5)
    assert got == pytest.approx(ref)


def test_bits_per_byte_too_short_split():
    with pytest.raises(ValueError):
        evaluate.bits_per_byte(tiny_model(causal=True, seq_len=8), {"objective": "ar"},
                               torch.zeros(8, dtype=torch.uint8), 8, 2)


# ----------------------------------------------------------------------------------------------
# Paired bootstrap


def test_bootstrap_deterministic_and_covers_known_difference():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 1.0, 200)  # large spread between prompts ...
    b = a + 0.5 + rng.normal(0.0, 0.05, 200)  # ... but a small one in the paired difference
    first = evaluate.paired_bootstrap(a, b, n_boot=2000, seed=1)
    assert first == evaluate.paired_bootstrap(a, b, n_boot=2000, seed=1)
    mean, lo, hi = first
    assert lo < 0.5 < hi and lo > 0 and hi - lo < 0.05
    assert mean == pytest.approx(np.mean(b - a))
    assert evaluate.paired_bootstrap(a, b, seed=2) != first  # the seed matters
    assert evaluate.paired_bootstrap(b, a, seed=1)[0] == pytest.approx(-mean)


def test_bootstrap_identical_inputs_and_nans():
    a = [1.0, 2.0, 5.0, 3.0]
    assert evaluate.paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    # nan pairs are dropped: only the pairs (1, 2) and (3, 5) remain
    mean, lo, hi = evaluate.paired_bootstrap([1.0, float("nan"), 3.0], [2.0, 4.0, 5.0])
    assert mean == 1.5 and 1.0 <= lo <= hi <= 2.0
    assert all(math.isnan(v) for v in evaluate.paired_bootstrap([float("nan")], [1.0]))
    with pytest.raises(ValueError):
        evaluate.paired_bootstrap([1.0, 2.0], [1.0])


# ----------------------------------------------------------------------------------------------
# Prompts, generation and reports


def test_held_out_prompts_are_fixed_prefixes():
    val = torch.arange(100) % 256
    prompts, refs = evaluate.held_out_prompts(val, 4, 5, 10)
    assert len(prompts) == 4 and all(len(p) == 5 for p in prompts) and all(len(r) == 10 for r in refs)
    assert prompts[0] == [0, 1, 2, 3, 4] and refs[-1][-1] == 99  # first and last offsets
    assert evaluate.held_out_prompts(val, 4, 5, 10) == (prompts, refs)
    with pytest.raises(ValueError):
        evaluate.held_out_prompts(val[:10], 2, 5, 10)


def test_file_prompts(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ab"}\n\n{"prompt": "é"}\n', encoding="utf-8")
    assert evaluate.file_prompts(str(f)) == [[97, 98], [0xC3, 0xA9]]
    f.write_text('{"text": "ab"}\n', encoding="utf-8")
    with pytest.raises(ValueError):
        evaluate.file_prompts(str(f))


def test_svg_plot_is_valid_xml():
    svg = evaluate.svg_plot({"ce <ft>": [(0, 3.0), (0.01, 4.0), (0.05, float("nan"))], "ctc": [(0, 2.5)]},
                            "t", "x", "y", hline=("text", 2.0))
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    assert "ce &lt;ft&gt;" in svg


def test_compare_end_to_end_on_hand_made_checkpoints(tmp_path, monkeypatch):
    """compare on an untrained MDLM (twice) and an AR model, with an untrained judge: every output
    is written, numbers are finite, a model compared with itself differs by exactly 0 at shift rate
    0, and the AR model (never probed) appears at rate 0 only."""
    decode = pytest.importorskip("decode")
    text = ("The quick brown fox jumps over the lazy dog. " * 40).encode()
    data = tmp_path / "d.txt"
    data.write_bytes(text)
    a = save_tiny(tmp_path / "a.pt", causal=False, seed=0)
    j = save_tiny(tmp_path / "j.pt", causal=True, seed=2)
    out = tmp_path / "eval"
    argv = ["compare", "--ckpts", a, a, j, "--names", "one", "same", "ar", "--judge", j, "--data", str(data),
            "--out-dir", str(out), "--num-prompts", "3", "--prompt-len", "6", "--length", "12",
            "--steps", "6", "--shift-rates", "0.5", "--n-boot", "200", "--max-batches", "1",
            "--t-samples", "2", "--gen-batch-size", "2"]
    assert evaluate.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["models"]) == ["one", "same", "ar"]
    assert list(res["models"]["one"]["rates"]) == ["0", "0.5"]
    assert list(res["models"]["ar"]["rates"]) == ["0"]
    assert res["settings"]["torch"] == torch.__version__ and res["settings"]["wall_seconds"] > 0
    s = res["models"]["one"]["rates"]["0"]["summary"]
    assert all(math.isfinite(s[k]) for k in ("judge_ppl", "entropy", "distinct_1", "length"))
    assert res["models"]["one"]["rates"]["0.5"]["realised_shift"] > 0  # the probe did move tokens
    same = [d for d in res["differences"] if d["b"] == "same"]
    assert len(same) == 2 * len(evaluate.METRICS)  # rates 0 and 0.5
    assert all(d["mean_diff"] == d["lo"] == d["hi"] == 0 for d in same if d["rate"] == "0")
    assert "| one | 0.5 |" in (out / "results.md").read_text()
    ET.parse(out / "quality.svg")
    # the judge must be causal: a bidirectional checkpoint is refused with a message
    assert evaluate.main([a if x == j else x for x in argv]) == 1


def test_stage_state_skips_resumes_or_refuses(tmp_path):
    """reproduce skips a finished stage, resumes an interrupted one, refuses one with other flags."""
    path = str(tmp_path / "ckpt.pt")
    flags = ["--out-dir", str(tmp_path), "--steps", "10", "--lr", "0.002"]
    assert evaluate.stage_state(path, flags, 10) == "missing"
    model = tiny_model(causal=False)
    stored = {"out_dir": str(tmp_path), "steps": 10, "lr": 0.002, "data": None, "device": "cuda"}
    for step, state in ((10, "done"), (4, "partial")):
        mdlm.save_checkpoint({"config": model.cfg.to_dict(), "model": model.state_dict(), "step": step,
                              "args": stored}, path)
        assert evaluate.stage_state(path, flags + ["--device", "cpu"], 10) == state
    for other in (["--lr", "0.001"], ["--data", "other.txt"], ["--steps", "20"]):
        with pytest.raises(evaluate.StageError):
            evaluate.stage_state(path, flags + other, 10)
    open(path, "wb").write(b"not a checkpoint")
    with pytest.raises(evaluate.StageError):
        evaluate.stage_state(path, flags, 10)


def test_reproduce_tiny_end_to_end(tmp_path):
    """The one-command experiment at toy sizes: four train.py stages, then the comparison."""
    for f in ("train.py", "decode.py", "ctc_slack.py"):
        if not os.path.exists(os.path.join(ROOT, f)):
            pytest.skip(f"{f} is not there yet")
    out = tmp_path / "exp"
    cmd = [sys.executable, "evaluate.py", "reproduce", "--tiny", "--out-dir", str(out), "--device", "cpu"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert list(res["models"]) == ["pretrained", "ce-ft", "ctc-ft"]
    for entry in res["models"].values():
        assert math.isfinite(entry["bpb"]) and list(entry["rates"]) == ["0", "0.01", "0.02", "0.05"]
        for v in entry["rates"].values():
            assert math.isfinite(v["summary"]["judge_ppl"]) and 0 <= v["realised_shift"] <= 1
    assert math.isfinite(res["judge"]["bpb"]) and res["reference"]["summary"]["judge_ppl"] > 1
    assert (out / "results.md").read_text().count("| ctc-ft |") >= 4
    ET.parse(out / "quality.svg")
    # a second run finds every stage complete and only evaluates again
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.count("skipped") == 4, run.stdout[-2000:] + run.stderr[-2000:]


def test_stage_state_accepts_a_moved_experiment_folder(tmp_path):
    """A finished stage copied to another folder is still complete; a changed setting is not."""
    cfg = mdlm.ModelConfig(seq_len=8, n_layer=1, n_head=2, n_embd=8)
    path = str(tmp_path / "ckpt.pt")
    stored = {"out_dir": "old/ce-ft", "init_from": "old/pretrain/ckpt.pt", "sft": "old/train.jsonl",
              "lr": 0.0005, "data": None, "device": "cuda"}
    mdlm.save_checkpoint({"config": cfg.to_dict(), "model": mdlm.Transformer(cfg).state_dict(),
                          "step": 10, "args": stored}, path)
    flags = ["--out-dir", "new/ce-ft", "--init-from", "new/pretrain/ckpt.pt", "--sft", "new/train.jsonl",
             "--lr", "0.0005", "--device", "cpu"]
    assert evaluate.stage_state(path, flags, 10) == "done"
    with pytest.raises(evaluate.StageError, match="--lr"):
        evaluate.stage_state(path, flags[:-4] + ["--lr", "0.001", "--device", "cpu"], 10)
