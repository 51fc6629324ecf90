"""Tests of synthetic.py: the copy task's data, the exact metrics against hand values and a brute-force
edit distance, the decoding of prompts of mixed lengths, and the one-command experiment end to end at
toy sizes."""

import argparse
import functools
import json
import math
import os
import random
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

import decode
import mdlm
import synthetic
from mdlm import EOS, MASK, SLACK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# The task


def test_examples_are_deterministic_distinct_and_well_formed():
    a = synthetic.make_examples(300, 4, 12, seed=5)
    assert a == synthetic.make_examples(300, 4, 12, seed=5)
    assert a != synthetic.make_examples(300, 4, 12, seed=6)
    for r in a:
        s = r["response"]
        assert r["prompt"] == s + "=" and 4 <= len(s) <= 12 and set(s) <= set("abcdefghijklmnopqrstuvwxyz")
    assert len({r["response"] for r in a}) == 300
    assert {len(r["response"]) for r in a} == set(range(4, 13))  # every length occurs in 300 draws


def test_examples_refuse_impossible_requests():
    one = synthetic.make_examples(26, 1, 1, seed=0)  # every one-letter string, each once
    assert sorted(r["response"] for r in one) == list("abcdefghijklmnopqrstuvwxyz")
    with pytest.raises(ValueError):
        synthetic.make_examples(27, 1, 1, seed=0)
    with pytest.raises(ValueError):
        synthetic.make_examples(5, 3, 2, seed=0)


def test_write_task_is_deterministic_and_disjoint(tmp_path):
    paths = [str(tmp_path / n) for n in ("train.jsonl", "test.jsonl")]
    synthetic.write_task(*paths, n_train=400, n_test=50, seed=3)
    first = [open(p).read() for p in paths]
    synthetic.write_task(*paths, n_train=400, n_test=50, seed=3)
    assert [open(p).read() for p in paths] == first
    train, test = ([json.loads(line) for line in text.splitlines()] for text in first)
    assert len(train) == 400 and len(test) == 50
    assert not {r["response"] for r in train} & {r["response"] for r in test}
    # train.py reads the files: prompt bytes, then the answer bytes and EOS
    import train as train_py
    recs = train_py.read_sft(paths[1])
    assert recs[0] == (mdlm.encode(test[0]["prompt"]), mdlm.encode(test[0]["response"]) + [EOS])


def test_prepare_task_refuses_other_settings(tmp_path):
    args = argparse.Namespace(out_dir=str(tmp_path), n_train=20, n_test=5, min_len=2, max_len=4, seed=1)
    synthetic.prepare_task(args)
    synthetic.prepare_task(args)  # the same settings again: fine
    args.n_train = 21
    with pytest.raises(ValueError, match="task.json"):
        synthetic.prepare_task(args)


# ----------------------------------------------------------------------------------------------
# Exact metrics


def test_levenshtein_by_hand():
    assert synthetic.levenshtein("kitten", "sitting") == 3
    assert synthetic.levenshtein("", "abc") == 3 and synthetic.levenshtein("abc", "") == 3
    assert synthetic.levenshtein("abcdef", "abcdef") == 0
    assert synthetic.levenshtein("", "") == 0
    assert synthetic.levenshtein("flaw", "lawn") == 2
    assert synthetic.levenshtein([1, 2, 3], [1, 3]) == 1  # any sequences, e.g. byte ids


def brute_levenshtein(a, b):
    """The definition, recursively from the front: a different algorithm from the row-by-row table."""
    @functools.lru_cache(maxsize=None)
    def d(i, j):
        if i == len(a) or j == len(b):
            return (len(a) - i) + (len(b) - j)
        if a[i] == b[j]:
            return d(i + 1, j + 1)
        return 1 + min(d(i + 1, j), d(i, j + 1), d(i + 1, j + 1))
    return d(0, 0)


def test_levenshtein_matches_brute_force():
    rng = random.Random(0)
    for _ in range(400):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 7)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 7)))
        d = synthetic.levenshtein(a, b)
        assert d == brute_levenshtein(a, b) == synthetic.levenshtein(b, a), (a, b)


def test_score_by_hand():
    per = synthetic.score(["abc", "abd", "", "abcx"], ["abc", "abc", "abc", "abc"])
    assert per["exact"] == [1.0, 0.0, 0.0, 0.0]
    assert per["cer"] == pytest.approx([0.0, 1 / 3, 1.0, 1 / 3])
    with pytest.raises(ValueError):
        synthetic.score(["a"], [""])
    with pytest.raises(ValueError):
        synthetic.score(["a", "b"], ["a"])


def test_one_position_error_costs_exactly_one_edit():
    ref = "abcdef"
    per = synthetic.score(["abdef", "abccdef", "abcdeff", "bacdef", "abcdef"], [ref] * 5)
    # a dropped letter, a doubled letter, a repeated last letter: one edit each; a swap: two
    assert per["cer"] == pytest.approx([1 / 6, 1 / 6, 1 / 6, 2 / 6, 0.0])
    assert per["exact"] == [0.0, 0.0, 0.0, 0.0, 1.0]


def test_one_slot_error_through_the_readout():
    """Canvases as the decoder leaves them, read with decode.finish (surface collapse): a letter
    moved into a slack slot is forgiven, one moved onto a letter's slot costs one edit."""
    prompt = mdlm.encode("abcdef=")
    P, ref = len(prompt), mdlm.encode("abcdef")
    ids = lambda s: [SLACK if ch == "." else EOS if ch == "$" else ord(ch) for ch in s]
    canvases = {"abcdef$...": 0.0, "abc.def$..": 0.0, "ab.cdef$..": 0.0,
                "abccdef$..": 1 / 6, "abdef$....": 1 / 6, "abcdef.f$.": 1 / 6}
    outs = [decode.finish(prompt + ids(c), P, "surface", slack=True) for c in canvases]
    assert synthetic.score(outs, [ref] * len(outs))["cer"] == pytest.approx(list(canvases.values()))


# ----------------------------------------------------------------------------------------------
# Decoding prompts of mixed lengths


def tiny_model(seed, seq_len=16):
    torch.manual_seed(seed)
    cfg = mdlm.ModelConfig(seq_len=seq_len, n_layer=1, n_head=2, n_embd=16)
    return mdlm.Transformer(cfg).eval()


def test_decode_task_gives_each_prompt_its_own_canvas():
    meta = {"objective": "mdlm", "schedule": "linear", "slack": True, "collapse": "surface"}
    recs = synthetic.make_examples(10, 2, 5, seed=0)
    prompts = [mdlm.encode(r["prompt"]) for r in recs]  # lengths 3..6, in mixed order
    args = argparse.Namespace(seq_len=16, seed=7, sampler="ancestral", temperature=0.0, gen_batch_size=3)
    outs, counts = synthetic.decode_task(tiny_model(0), meta, prompts, args, 0.1, "cpu")
    # every canvas position after the prompt is committed once: sum over prompts of seq_len - P
    assert counts["n_committed"] == sum(16 - len(p) for p in prompts)
    assert len(outs) == len(prompts) and all(MASK not in o and SLACK not in o for o in outs)
    assert counts["n_shifted"] > 0
    assert synthetic.decode_task(tiny_model(0), meta, prompts, args, 0.0, "cpu")[1]["n_shifted"] == 0
    # greedy decoding: which positions commit and which moves happen does not depend on the model,
    # so two different models meet the same probe (the comparison is paired down to the moves)
    _, counts2 = synthetic.decode_task(tiny_model(1), meta, prompts, args, 0.1, "cpu")
    assert counts2["n_shifted"] == counts["n_shifted"] and counts2["n_committed"] == counts["n_committed"]
    assert synthetic.decode_task(tiny_model(0), meta, prompts, args, 0.1, "cpu")[0] == outs
    # a rate too small to move anything leaves the rate-0 output: the probe changes only the moves
    plain, _ = synthetic.decode_task(tiny_model(0), meta, prompts, args, 0.0, "cpu")
    nearly, c = synthetic.decode_task(tiny_model(0), meta, prompts, args, 1e-9, "cpu")
    assert c["n_shifted"] == 0 and nearly == plain


class OracleCopy(torch.nn.Module):
    """Knows the task by position, as CE training teaches it: response position j holds the j-th
    prompt letter, then EOS, then SLACK. Logits are 0 elsewhere, 10 for that token."""

    def __init__(self, seq_len):
        super().__init__()
        self.cfg = mdlm.ModelConfig(seq_len=seq_len)
        self.unused = torch.nn.Parameter(torch.zeros(()))  # decode reads the device from a parameter

    def forward(self, z):
        B, T = z.shape
        logits = torch.zeros(B, T, mdlm.VOCAB_SIZE)
        for b, row in enumerate(z.tolist()):
            P = row.index(ord("=")) + 1  # the prompt is the string and "="
            for i in range(P, T):
                j = i - P
                logits[b, i, row[j] if j < P - 1 else EOS if j == P - 1 else SLACK] = 10.0
        return logits


def test_oracle_is_exact_without_the_probe_and_hurt_by_it():
    """End to end through decode_task and score, with prompts of mixed lengths in mixed order: the
    oracle copies every string exactly, so outputs come back in prompt order and each prompt's
    canvas leaves room for its answer; moving tokens by one slot then costs it exact matches."""
    meta = {"objective": "mdlm", "schedule": "linear", "slack": True, "collapse": "surface"}
    recs = synthetic.make_examples(12, 2, 6, seed=1)
    prompts = [mdlm.encode(r["prompt"]) for r in recs]
    refs = [mdlm.encode(r["response"]) for r in recs]
    args = argparse.Namespace(seq_len=16, seed=3, sampler="ancestral", temperature=0.0, gen_batch_size=4)
    outs, _ = synthetic.decode_task(OracleCopy(16), meta, prompts, args, 0.0, "cpu")
    assert synthetic.score(outs, refs)["exact"] == [1.0] * len(refs)
    outs, counts = synthetic.decode_task(OracleCopy(16), meta, prompts, args, 0.5, "cpu")
    per = synthetic.score(outs, refs)
    assert counts["n_shifted"] > 0 and sum(per["exact"]) < len(refs) and max(per["cer"]) > 0


def test_sizes_are_checked():
    args = argparse.Namespace(seq_len=24, max_len=12, slack_rate=0.1, shift_rates=[0.0], show_samples=1,
                              n_test=4)
    with pytest.raises(ValueError, match="too short"):
        synthetic.check_sizes(args)
    args.seq_len = 32
    synthetic.check_sizes(args)
    args.shift_rates = [1.5]
    with pytest.raises(ValueError):
        synthetic.check_sizes(args)


# ----------------------------------------------------------------------------------------------
# The whole experiment at toy sizes


def test_synthetic_tiny_end_to_end(tmp_path):
    out = tmp_path / "syn"
    cmd = [sys.executable, "synthetic.py", "--tiny", "--out-dir", str(out), "--device", "cpu"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert list(res["models"]) == ["pretrained", "ce-ft", "ctc-ft"]
    n_test = res["settings"]["n_test"]
    for entry in res["models"].values():
        assert list(entry["rates"]) == ["0", "0.01", "0.02", "0.05", "0.1"]
        assert entry["rates"]["0"]["n_shifted"] == 0
        for v in entry["rates"].values():
            assert 0 <= v["summary"]["exact_match"] <= 1 and math.isfinite(v["summary"]["cer"])
            assert 0 <= v["realised_shift"] <= 1 and len(v["per_example"]["cer"]) == n_test
    for family in ("degradation", "differences", "diff_in_diff"):
        assert res["comparisons"][family]
        for d in res["comparisons"][family]:
            assert all(math.isfinite(d[k]) for k in ("mean_diff", "lo", "hi")) and d["lo"] <= d["hi"]
    assert set(res["seconds"]) == {"pretrain", "ce-ft", "ctc-ft", "evaluate", "total"}
    md = (out / "results.md").read_text()
    assert md.count("| ctc-ft |") >= 5 and "ctc-ft - ce-ft" in md
    ET.parse(out / "exact_match.svg")
    # a second run finds every stage complete and only decodes and scores again
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.count("skipped") == 3, run.stdout[-2000:] + run.stderr[-2000:]
    # decoding is deterministic: the same outputs and counts, only the wall times differ
    again = json.loads((out / "results.json").read_text())["models"]
    for name, entry in res["models"].items():
        for r, v in entry["rates"].items():
            w = again[name]["rates"][r]
            assert (w["per_example"], w["n_shifted"], w["samples"]) == (v["per_example"], v["n_shifted"],
                                                                         v["samples"])
