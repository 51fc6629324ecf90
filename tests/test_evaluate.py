"""Tests of evaluate.py: metrics against hand-computed values and slow loops, bits per byte against
mdlm's losses, the bootstrap, `score` on hand-made generation files (exact numbers), the checks on
bad input, `task` (determinism, fresh test prompts), `curves`, and the SVG and CLI plumbing."""

import argparse
import functools
import json
import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

import common
import conftest
import data
import evaluate
import mdlm
import objective
import stats
import tables
import tasks

tiny_model = functools.partial(conftest.tiny_model, n_embd=32)


def save_tiny(path, causal, seed=0, seq_len=32):
    """A hand-made checkpoint in train.py's format."""
    m = tiny_model(causal, seed, seq_len)
    meta = {"objective": "ar" if causal else "mdlm", "schedule": "linear", "loss": "ce",
            "slack": False, "collapse": "surface"}
    common.save_checkpoint({"config": m.cfg.to_dict(), "model": m.state_dict(),
                            "ema": m.state_dict(), "step": 0, "meta": meta}, str(path))
    return str(path)


def write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return str(path)


def gen(i, output, rate, committed=10, shifted=0, prompt=""):
    """One record as decode.py writes it."""
    return {"i": i, "prompt": prompt, "output": output, "output_ids": list(output.encode()),
            "rate": rate, "n_committed": committed, "n_shifted": shifted}


def run(argv, capsys):
    """(exit status, stdout, stderr) of evaluate.main(argv)."""
    status = evaluate.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


# ----------------------------------------------------------------------------------------------
# Metrics of one output


def test_unigram_entropy_by_hand():
    assert tasks.unigram_entropy([1, 1, 2, 2]) == pytest.approx(1.0)
    assert tasks.unigram_entropy([7, 7, 7]) == 0.0
    assert tasks.unigram_entropy([0, 1, 2, 3]) == pytest.approx(2.0)
    # p = (1/2, 1/4, 1/4): H = 0.5 * 1 + 2 * 0.25 * 2 = 1.5 bits
    assert tasks.unigram_entropy([5, 5, 6, 9]) == pytest.approx(1.5)
    assert math.isnan(tasks.unigram_entropy([]))


def test_distinct_n_by_hand():
    assert tasks.distinct_n([1, 1, 1, 1], 1) == 0.25
    assert tasks.distinct_n([1, 1, 1, 1], 2) == pytest.approx(1 / 3)  # (1,1) three times
    assert tasks.distinct_n([1, 2, 1, 2], 2) == pytest.approx(2 / 3)  # (1,2) (2,1) (1,2)
    assert tasks.distinct_n([1, 2, 3], 3) == 1.0
    assert math.isnan(tasks.distinct_n([1, 2], 3))


def test_judge_nll_equals_a_loop_over_prefixes():
    """The judge's one-pass sum equals feeding every prefix separately and reading the last row."""
    judge = tiny_model(causal=True, seq_len=32)
    prompt, cont = [72, 105, 32], [116, 104, 101, 114, 101, 33]
    want = 0.0
    with torch.no_grad():
        for j in range(len(cont)):
            x = torch.tensor([prompt + cont[:j]])
            want -= judge(x)[0, -1].float().log_softmax(-1)[cont[j]].item()
    nll, n = tasks.judge_nll(judge, prompt, cont)
    assert n == 6 and nll == pytest.approx(want, rel=1e-5)
    # text_metrics reports it per byte, with the continuation's entropy, distinct-2 and length
    m = tasks.text_metrics(judge, data.Vocab(), {"prompt": "Hi "}, {"output": "there!"})
    assert m["judge_nll"] == pytest.approx(want / 6, rel=1e-5) and m["length"] == 6.0
    assert m["entropy"] == pytest.approx(tasks.unigram_entropy(cont)) and m["distinct_2"] == 1.0
    empty = tasks.text_metrics(judge, data.Vocab(), {"prompt": "Hi "},
                                  {"output": "", "output_ids": []})
    assert (empty["length"] == 0.0 and math.isnan(empty["judge_nll"])
            and math.isnan(empty["entropy"]))


def test_judge_nll_truncates_to_the_judge_window():
    judge = tiny_model(causal=True, seq_len=8)
    nll, n = tasks.judge_nll(judge, [65] * 5, [66] * 20)
    assert n == 8 + 1 - 5 and math.isfinite(nll)  # prompt + continuation = seq_len + 1 bytes
    nll, n = tasks.judge_nll(judge, [65] * 30, [66] * 3)  # long prompt: its tail is kept
    assert n == 1
    assert tasks.judge_nll(judge, [65], []) == (0.0, 0)
    with pytest.raises(ValueError):
        tasks.judge_nll(judge, [], [66])


def test_copy_metrics_by_hand():
    def m(out, ref):
        return tasks.copy_metrics({"response": ref}, {"output": out})
    assert m("abcdef", "abcdef") == {"exact": 1.0, "cer": 0.0, "dropped_doubled": 0.0,
                                     "length_error": 0.0, "length": 6.0}
    # one letter dropped: one deletion; doubled in its place: one substitution,
    # the probe's signature
    assert m("abdef", "abcdef") == {"exact": 0.0, "cer": pytest.approx(1 / 6),
                                    "dropped_doubled": 0.0, "length_error": -1.0, "length": 5.0}
    assert m("abccef", "abcdef") == {"exact": 0.0, "cer": pytest.approx(1 / 6),
                                     "dropped_doubled": 1.0, "length_error": 0.0, "length": 6.0}
    assert m("ba", "ab")["cer"] == 1.0  # a swap is two substitutions: 2 / 2
    assert m("", "abcd")["cer"] == 1.0 and m("abcdxyz", "abcd")["cer"] == 0.75
    assert m("abcdxyz", "abcd")["length_error"] == 3.0
    assert tasks.levenshtein("kitten", "sitting") == 3  # the textbook example


def test_grammar_metrics_by_hand():
    def m(out):
        return tasks.grammar_metrics({"prompt": "the ", "response": ""}, {"output": out})
    # "the cat sees the ox.": 1 sentence of 5 words, 3 + 3 + 4 + 3 + 2 = 15 bytes of words
    assert m("cat sees the ox.") == {"parses": 1.0, "valid": 1.0, "lexicon": 1.0,
                                     "dropped_doubled": 0.0, "length": 16.0, "sentences": 1.0,
                                     "words": 5.0, "sentence_words": 5.0, "word_bytes": 3.0}
    # "badder" is badger with the g dropped and a d doubled: 1 of the 2 output words; the full text
    # "the badder runs." has 3 words, 2 in the lexicon, and its one sentence is not valid
    assert m("badder runs.") == {"parses": 0.0, "valid": 0.0, "lexicon": pytest.approx(2 / 3),
                                 "dropped_doubled": 0.5, "length": 12.0, "sentences": 1.0,
                                 "words": 3.0, "sentence_words": 3.0,
                                 "word_bytes": pytest.approx(13 / 3)}
    assert m("cat sees. an eel runs.")["sentences"] == 2.0  # "the cat sees. an eel runs."
    assert m("cat sees. an eel runs.")["word_bytes"] == pytest.approx(19 / 6)
    assert m("cat sees. an eel runs.")["sentence_words"] == 3.0  # 6 words, 2 sentences
    assert (m("cat sees. an eel runs.")["valid"] == 1.0
            and m("cat sees. eel an runs.")["valid"] == 0.5)
    # nothing generated: "the " alone is one invalid sentence of one lexicon word
    assert m("") == {"parses": 0.0, "valid": 0.0, "lexicon": 1.0, "dropped_doubled": 0.0,
                     "length": 0.0, "sentences": 1.0, "words": 1.0, "sentence_words": 1.0,
                     "word_bytes": 3.0}


# ----------------------------------------------------------------------------------------------
# Bits per byte


def test_bits_per_token_ar_matches_ar_loss():
    model = tiny_model(causal=True, seq_len=8)
    # as data.load_corpus
    val = np.random.default_rng(1).integers(0, 256, 8 * 5 + 3).astype(np.uint8)
    # by hand: windows val[8k : 8k + 9], k = 0..4, each predicting 8 bytes
    x = torch.stack([torch.from_numpy(val[8 * k:8 * k + 9].astype(np.int64)) for k in range(5)])
    with torch.no_grad():
        ref = mdlm.ar_loss(model(x[:, :-1]), x).mean().item() / math.log(2)
        ref1 = mdlm.ar_loss(model(x[:2, :-1]), x[:2]).mean().item() / math.log(2)
    assert (evaluate.bits_per_token(model, {"objective": "ar"}, val, 8, batch_size=2)[0]
            == pytest.approx(ref))
    # max_batches caps the windows read: one batch of 2 windows
    got1, _ = evaluate.bits_per_token(model, {"objective": "ar"}, val, 8, batch_size=2,
                                       max_batches=1)
    assert got1 == pytest.approx(ref1, rel=1e-5)
    with pytest.raises(ValueError):  # shorter than one window
        evaluate.bits_per_token(model, {"objective": "ar"}, val[:8], 8, 2)


def test_bits_per_token_mdlm_is_the_written_out_nelbo():
    model = tiny_model(causal=False, seq_len=16)
    val = np.random.default_rng(2).integers(0, 256, 200).astype(np.uint8)
    meta = {"objective": "mdlm", "schedule": "linear"}
    a = evaluate.bits_per_token(model, meta, val, 16, batch_size=4, t_samples=3, seed=5)
    assert a == evaluate.bits_per_token(model, meta, val, 16, batch_size=4, t_samples=3, seed=5)
    assert a != evaluate.bits_per_token(model, meta, val, 16, batch_size=4, t_samples=3, seed=6)
    # the same estimate written out: 12 windows of 16 bytes in one batch, 3 stratified draws of t
    x = torch.from_numpy(val[:192].astype(np.int64)).view(12, 16)
    g, draws = torch.Generator().manual_seed(5), []
    with torch.no_grad():
        for _ in range(3):
            t = mdlm.sample_t(12, generator=g)
            mask = mdlm.special_ids(model.cfg.vocab_size)[2]
            z_t = mdlm.forward_mask(x, t, "linear", mask_id=mask, generator=g)
            draws.append(mdlm.mdlm_loss(model(z_t), x, z_t, t, "linear"))
    ref = torch.cat(draws).mean().item() / math.log(2)
    got, _ = evaluate.bits_per_token(model, meta, val, 16, batch_size=12, t_samples=3, seed=5)
    assert got == pytest.approx(ref)


def test_bpb_command(tmp_path, capsys):
    (tmp_path / "d.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200)
    ckpt = save_tiny(tmp_path / "ar.pt", causal=True, seq_len=16)
    flags = ["--data", str(tmp_path / "d.txt"), "--device", "cpu"]
    status, out, _ = run(["bpb", "--ckpts", ckpt, *flags], capsys)
    assert status == 0 and "bits per byte (ar;" in out
    status, _, err = run(["bpb", "--ckpts", str(tmp_path / "none.pt"), *flags], capsys)
    assert status == 1 and err.startswith("error: ") and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# Paired bootstrap


def test_bootstrap_deterministic_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 1.0, 800)  # large spread between prompts ...
    b = a + 0.5 + rng.normal(0.0, 0.2, 800)  # ... a small one in the paired difference
    first = stats.paired_bootstrap(a, b, n_boot=2000, seed=1)
    assert first == stats.paired_bootstrap(a, b, n_boot=2000, seed=1)
    mean, lo, hi = first
    assert mean == pytest.approx(np.mean(b - a)) and lo < mean < hi and lo < 0.5 < hi
    assert stats.paired_bootstrap(a, b, seed=2) != first  # the seed matters
    # the interval narrows about as 1 / sqrt(n): 50 prompts give a ~4x wider one than 800
    _, lo50, hi50 = stats.paired_bootstrap(a[:50], b[:50], n_boot=2000, seed=1)
    assert 2.5 < (hi50 - lo50) / (hi - lo) < 6.5
    assert stats.paired_bootstrap(b, a, seed=1)[0] == pytest.approx(-mean)


def test_bootstrap_identical_inputs_and_nans():
    a = [1.0, 2.0, 5.0, 3.0]
    assert stats.paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    # nan pairs are dropped: only the pairs (1, 2) and (3, 5) remain
    mean, lo, hi = stats.paired_bootstrap([1.0, float("nan"), 3.0], [2.0, 4.0, 5.0])
    assert mean == 1.5 and 1.0 <= lo <= hi <= 2.0
    assert all(math.isnan(v) for v in stats.paired_bootstrap([float("nan")], [1.0]))
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1.0, 2.0], [1.0])


# ----------------------------------------------------------------------------------------------
# `score` on hand-made generation files

COPY_REFS = [{"prompt": s + "=", "response": s} for s in ("abcd", "efgh", "ijkl", "mnop")]


def copy_files(tmp_path):
    """Two models, rates 0 and 0.1. ce: perfect at 0; at 0.1 one dropped/doubled output and one
    deletion. ctc-random/confidence: one dropped/doubled output at both rates."""
    refs = write_jsonl(tmp_path / "test.jsonl", COPY_REFS)
    ce = [gen(i, r["response"], 0.0, 10, 0) for i, r in enumerate(COPY_REFS)]
    ce += [gen(0, "abbd", 0.1, 10, 1), gen(1, "egh", 0.1, 10, 2), gen(2, "ijkl", 0.1, 10, 0),
           gen(3, "mnop", 0.1, 10, 1)]
    ctc = [gen(i, "aacd" if i == 0 else r["response"], rate, 8, 0 if rate == 0 else 1)
           for rate in (0.0, 0.1) for i, r in enumerate(COPY_REFS)]
    return (refs, write_jsonl(tmp_path / "ce.jsonl", ce[::-1]),
            write_jsonl(tmp_path / "ctc.jsonl", ctc))


def test_score_copy_exact_numbers(tmp_path, capsys):
    refs, ce, ctc = copy_files(tmp_path)
    out = tmp_path / "eval"
    status, stdout, err = run(["score", "--task", "copy", "--refs", refs, "--gens", f"ce={ce}",
                               f"ctc-random/confidence={ctc}", "--out-dir", str(out)], capsys)
    assert status == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["names"] == ["ce", "ctc-random/confidence"] and res["baseline"] == "ce"
    assert res["rates"] == ["0", "0.1"] and res["primary"] == "exact" and res["n_prompts"] == 4
    ce0, ce1 = res["runs"]["ce"]["0"], res["runs"]["ce"]["0.1"]
    ctc0, ctc1 = (res["runs"]["ctc-random/confidence"][r] for r in ("0", "0.1"))
    # the records of ce were written in reverse order: they are matched by i, not by position
    assert ce0["per_example"] == {"exact": [1.0] * 4, "cer": [0.0] * 4,
                                  "dropped_doubled": [0.0] * 4, "length_error": [0.0] * 4,
                                  "length": [4.0] * 4}
    assert ce1["per_example"] == {"exact": [0.0, 0.0, 1.0, 1.0], "cer": [0.25, 0.25, 0.0, 0.0],
                                  "dropped_doubled": [1.0, 0.0, 0.0, 0.0],
                                  "length_error": [0.0, -1.0, 0.0, 0.0],
                                  "length": [4.0, 3.0, 4.0, 4.0]}
    assert ce1["summary"] == {"exact": 0.5, "cer": 0.125, "dropped_doubled": 0.25,
                              "length_error": -0.25, "length": 3.75}
    assert ctc0["summary"] == ctc1["summary"] == {"exact": 0.75, "cer": 0.0625,
                                                  "dropped_doubled": 0.25, "length_error": 0.0,
                                                  "length": 4.0}
    # the whole output: "egh" is shorter than every answer (in no length bin: a quarter of the
    # outputs outside the data's lengths), two of four outputs exact and distinct
    assert ce1["whole"]["length_tv"] == 0.25 and ce1["whole"]["distinct_valid"] == 0.5
    assert ce0["whole"] == {"length_tv": 0.0, "length_shares": [1.0, 0.0, 0.0],
                            "coverage": 1.0, "distinct_valid": 1.0}
    assert res["lengths"] == {"bins": 5, "edges": [4.0, 4.0], "data_shares": [1.0]}
    # the realised shift: sum shifted / sum committed over the 4 prompts
    assert ce0["realised_shift"] == 0.0 and ce1["realised_shift"] == pytest.approx(4 / 40)
    assert ctc1["realised_shift"] == pytest.approx(4 / 32) and ctc1["n_committed"] == 32
    def pick(fam, **kw):
        return [d for d in res[fam] if all(d[k] == v for k, v in kw.items())]
    # (a) rate 0.1 minus rate 0, same name: ce loses 0.5 exact match, ctc nothing
    (d,) = pick("robustness", name="ce", rate="0.1", metric="exact")
    assert d["mean_diff"] == -0.5 and d["lo"] <= -0.5 <= d["hi"]
    (d,) = pick("robustness", name="ctc-random/confidence", rate="0.1", metric="exact")
    assert d["mean_diff"] == d["lo"] == d["hi"] == 0.0
    # the first four metrics of each name (exact, cer, dropped_doubled, length_error), at the
    # one shifted rate
    assert len(res["robustness"]) == 4 * 2 and len(res["diff_in_diff"]) == 4 * 1
    # (b) each name minus the baseline, every metric, every rate
    assert len(res["differences"]) == 5 * 2
    (d,) = pick("differences", name="ctc-random/confidence", rate="0", metric="exact")
    assert d["mean_diff"] == -0.25 and d["baseline"] == "ce"
    (d,) = pick("differences", name="ctc-random/confidence", rate="0.1", metric="cer")
    assert d["mean_diff"] == pytest.approx(0.0625 - 0.125)
    # (c) difference in degradation: ctc (0) minus ce (-0.5) = +0.5 exact match
    (d,) = pick("diff_in_diff", name="ctc-random/confidence", rate="0.1", metric="exact")
    assert d["mean_diff"] == 0.5
    md = (out / "results.md").read_text()
    assert md in stdout and "| ce | 1.000 | 0.500 |" in md
    assert "| realised shift: ce | 0.0000 | 0.1000 |" in md
    assert md.index("## exact") < md.index("## cer") < md.index("## Change from rate 0")
    # the plot of the primary metric; names stay labels
    root = ET.parse(out / "exact.svg").getroot()
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    assert sorted(p.name for p in out.iterdir()) == ["exact.svg", "results.json", "results.md"]


def test_score_pools_training_seeds_and_splits_settings(tmp_path, capsys):
    """Runs named ARM@SEED are seeds of one arm: per prompt the metric is their mean, and the
    summary is the mean over seeds with their standard deviation; a gens file decoded with
    several settings (slack rule / positions per step) is one run per setting."""
    refs = write_jsonl(tmp_path / "refs.jsonl", [{"prompt": f"{w}=", "response": w}
                                                 for w in ("ab", "cd", "ef", "gh")])
    outs = {1: ["ab", "cd", "ef", "xx"], 2: ["ab", "cd", "xx", "xx"]}  # 0.75 and 0.5 exact
    paths = []
    for seed, words in outs.items():
        recs = [gen(i, w, r) for r in (0, 0.1) for i, w in enumerate(words)]
        paths.append(write_jsonl(tmp_path / f"ctc@{seed}.jsonl", recs))
    base = write_jsonl(tmp_path / "ce.jsonl", [gen(i, w, r) for r in (0, 0.1)
                                               for i, w in enumerate(("ab", "cd", "ef", "gh"))])
    out = tmp_path / "eval"
    status, stdout, err = run(["score", "--task", "copy", "--refs", refs, "--gens", base, *paths,
                               "--baseline", "ce", "--n-boot", "50", "--out-dir", str(out)], capsys)
    assert status == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["names"] == ["ce", "ctc@1", "ctc@2"] and list(res["arms"]) == ["ce", "ctc"]
    arm = res["arms"]["ctc"]["0"]
    assert arm["summary"]["exact"] == 0.625 and arm["by_seed"]["exact"] == [0.75, 0.5]
    assert arm["seed_sd"]["exact"] == pytest.approx(np.std([0.75, 0.5], ddof=1))
    assert arm["per_example"]["exact"] == [1.0, 1.0, 0.5, 0.0]  # each prompt: its seed mean
    (d,) = [d for d in res["differences"] if d["rate"] == "0" and d["metric"] == "exact"]
    assert d["name"] == "ctc" and d["mean_diff"] == -0.375  # the arm, over both seeds
    assert "| ctc | 0.625 ± 0.177 |" in (out / "results.md").read_text()
    # one file, two settings: two runs, NAME:SETTING
    recs = [{**gen(i, w, 0), "slack_rule": rule, "per_step": 1}
            for rule, words in (("plain", outs[1]), ("last", outs[2])) for i, w in enumerate(words)]
    both = write_jsonl(tmp_path / "ctc-rules.jsonl", recs)
    status, _, err = run(["score", "--task", "copy", "--refs", refs, "--gens", base, both,
                          "--n-boot", "50", "--out-dir", str(tmp_path / "e2")], capsys)
    res = json.loads((tmp_path / "e2" / "results.json").read_text())
    assert status == 0 and res["names"] == ["ce", "ctc-rules:plain/1", "ctc-rules:last/1"], err
    assert res["arms"]["ctc-rules:last/1"]["0"]["summary"]["exact"] == 0.5


def test_score_grammar_exact_numbers(tmp_path, capsys):
    refs = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "the ", "response": "cat runs."},
                                                 {"prompt": "an ", "response": "ox sleeps."}])
    gens = write_jsonl(tmp_path / "g.jsonl", [gen(0, "cat sees the ox.", 0.0),
                                              gen(1, "ox sleeps.", 0.0),
                                              gen(0, "badder runs.", 0.5, 10, 5),
                                              gen(1, "", 0.5, 10, 5)])
    out = tmp_path / "eval"
    status, _, err = run(["score", "--task", "grammar", "--refs", refs, "--gens", f"m={gens}",
                          "--out-dir", str(out), "--n-boot", "100"], capsys)
    assert status == 0, err
    res = json.loads((out / "results.json").read_text())
    # "the cat sees the ox." (5 words, 15 bytes) and "an ox sleeps." (3 words, 10 bytes)
    assert res["runs"]["m"]["0"]["summary"] == {"parses_std": 0.5, "parses": 1.0, "valid": 1.0,
                                                "lexicon": 1.0, "dropped_doubled": 0.0,
                                                "length": 13.0, "sentences": 1.0, "words": 4.0,
                                                "sentence_words": 4.0,
                                                "word_bytes": pytest.approx((3 + 10 / 3) / 2)}
    # parses_std: the data's responses have 9 and 10 bytes, half in the first length bin and half
    # in the last; the 16-byte output is longer than any of the data's (in no bin), so only the
    # last bin is reached, where all parse: 0.5 x 0 + 0.5 x 1
    assert res["primary"] == "parses_std" and res["lengths"]["data_shares"] == [0.5, 0, 0, 0, 0.5]
    assert res["runs"]["m"]["0"]["whole"]["coverage"] == 0.5
    assert res["standardised"] == {"metric": "parses_std", "of": "parses", "length": "length",
                                   "bins": 5}
    # "the badder runs.": 0 of 1 sentences, 2 of 3 words, 1 of 2 output words dropped/doubled;
    # "an ": 0 of 1 sentence, 1 of 1 word, no output words
    s = res["runs"]["m"]["0.5"]["summary"]
    assert s == {"parses_std": 0.0, "parses": 0.0, "valid": 0.0,
                 "lexicon": pytest.approx((2 / 3 + 1) / 2), "dropped_doubled": 0.25,
                 "length": 6.0, "sentences": 1.0, "words": 2.0, "sentence_words": 2.0,
                 "word_bytes": pytest.approx((13 / 3 + 2) / 2)}
    assert res["runs"]["m"]["0.5"]["realised_shift"] == 0.5 and res["differences"] == []
    (d,) = [d for d in res["robustness"] if d["metric"] == "parses"]
    assert d["mean_diff"] == -1.0
    ET.parse(out / "parses_std.svg")
    # the old primary on request, the new one still computed beside it
    status, _, err = run(["score", "--task", "grammar", "--refs", refs, "--gens", f"m={gens}",
                          "--out-dir", str(tmp_path / "p"), "--n-boot", "10",
                          "--primary-metric", "parses"], capsys)
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert status == 0 and res["metrics"][:2] == ["parses", "parses_std"], err
    assert run(["score", "--task", "grammar", "--refs", refs, "--gens", f"m={gens}", "--out-dir",
                str(tmp_path / "q"), "--primary-metric", "exact"], capsys)[0] == 1


def test_score_text_with_a_judge(tmp_path, capsys):
    judge = save_tiny(tmp_path / "judge.pt", causal=True)
    refs = write_jsonl(tmp_path / "test.jsonl",
                       [{"prompt": "The list ", "response": "type is mutable."},
                        {"prompt": "A dict ", "response": "maps keys."}])
    gens = write_jsonl(tmp_path / "g.jsonl", [gen(0, "type is fine.", 0.0), gen(1, "", 0.0),
                                              gen(0, "tpye is fine.", 0.02), gen(1, "maps.", 0.02)])
    out = tmp_path / "eval"
    argv = ["score", "--task", "text", "--refs", refs, "--gens", f"a={gens}", f"b={gens}",
            "--judge", judge, "--device", "cpu", "--out-dir", str(out), "--n-boot", "100"]
    status, _, err = run(argv, capsys)
    assert status == 0, err
    res = json.loads((out / "results.json").read_text())
    m = tiny_model(causal=True)
    nll, n = tasks.judge_nll(m, mdlm.encode("The list "), mdlm.encode("type is fine."))
    per = res["runs"]["a"]["0"]["per_example"]
    assert (per["judge_nll"][0] == pytest.approx(nll / n, rel=1e-5)
            and per["judge_nll"][1] is None)  # empty
    assert per["length"] == [13.0, 0.0] and res["judge"]["ckpt"] == judge
    # the held-out continuations, scored by the same judge: the reference row and the dashed line
    nll, n = tasks.judge_nll(m, mdlm.encode("A dict "), mdlm.encode("maps keys."))
    assert res["reference"]["per_example"]["judge_nll"][1] == pytest.approx(nll / n, rel=1e-5)
    assert "| true responses |" in (out / "results.md").read_text()
    assert all(d["mean_diff"] == 0 for d in res["differences"]
               if d["mean_diff"] is not None)  # b is a
    assert "stroke-dasharray" in (out / "judge_nll.svg").read_text()
    # the judge must be causal, and text needs one
    mdlm_ckpt = save_tiny(tmp_path / "mdlm.pt", causal=False)
    assert run([mdlm_ckpt if x == judge else x for x in argv], capsys)[0] == 1
    assert run(argv[:argv.index("--judge")] + argv[argv.index("--judge") + 2:], capsys)[0] == 1


@pytest.mark.parametrize("case, message", [
    ("missing file", "does not exist"),
    ("i out of range", "0..3"),
    ("i is a bool", "0..3"),
    ("repeated name", "new name"),
    ("no rate 0", "shift rate 0"),
    ("prompt twice", "twice"),
    ("unknown baseline", "--baseline"),
    ("other prompts", "different prompts"),
])
def test_score_refuses_bad_input(tmp_path, capsys, case, message):
    refs, ce, ctc = copy_files(tmp_path)
    good = [gen(i, r["response"], rate) for rate in (0.0, 0.1) for i, r in enumerate(COPY_REFS)]
    bad = {"i out of range": good + [gen(4, "x", 0.2)],
           "i is a bool": good[1:] + [{**good[0], "i": True}],
           "no rate 0": good[4:], "prompt twice": good + [good[0]], "other prompts": good[:-1]}
    path = write_jsonl(tmp_path / "bad.jsonl", bad.get(case, good))
    names = ({"missing file": [f"x={tmp_path / 'none.jsonl'}"],
              "repeated name": [f"ce={ce}", f"ce={path}"],
              "unknown baseline": [f"ce={ce}", "--baseline", "zz"]}
             .get(case, [f"ce={ce}", f"bad={path}"]))
    status, _, err = run(["score", "--task", "copy", "--refs", refs,
                          "--out-dir", str(tmp_path / "e"), "--gens", *names], capsys)
    assert (status == 1 and err.startswith("error: ") and message in err
            and err.count("\n") == 1), err
    assert not (tmp_path / "e").exists()  # nothing written on bad input


def test_score_compares_only_shared_rates_and_says_so(tmp_path, capsys):
    refs, ce, _ = copy_files(tmp_path)
    extra = write_jsonl(tmp_path / "x.jsonl", [gen(i, r["response"], rate)
                                               for rate in (0.0, 0.05, 0.1)
                                               for i, r in enumerate(COPY_REFS)])
    status, out, err = run(["score", "--task", "copy", "--refs", refs, "--gens",
                            f"ce={ce}", f"x={extra}", "--out-dir", str(tmp_path / "e"),
                            "--n-boot", "50"], capsys)
    assert status == 0, err
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["rates"] == ["0", "0.1"] and "0.05" in res["notes"][0] and "Note:" in out


def test_every_interval_recomputes_from_the_collected_per_prompt_values(tmp_path, capsys):
    """A grammar score of two arms of two seeds each and a one-seed pretrained model, collected as
    runs/collect.py collects it: the slim file and the compact per-prompt values, from which
    stats.recompute gives every published interval again, bit for bit (the standardised rate
    derived again from the flags and the lengths)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("collect", conftest.ROOT + "/runs/collect.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    refs = tasks.grammar_examples(12, seed=5)
    exp = tmp_path / "exp"
    (exp / "score-test").mkdir(parents=True)
    (exp / "setup.json").write_text("{}")
    rng = np.random.default_rng(0)
    outs = [r["response"] for r in refs] + ["ox sleeps.", "cat.", "", "cat runs. an eel hides."]
    paths = []
    for name in ("pretrained", "ce-ft@1", "ce-ft@2", "ctc@1", "ctc@2"):
        recs = [gen(i, outs[rng.integers(len(outs))], rate, 10, int(rate * 10))
                for rate in (0, 0.1) for i in range(len(refs))]
        paths.append(f"{name}=" + write_jsonl(tmp_path / f"{name}.jsonl", recs))
    refs_path = write_jsonl(tmp_path / "test.jsonl", refs)
    status, _, err = run(["score", "--task", "grammar", "--refs", refs_path, "--gens", *paths,
                          "--baseline", "ce-ft", "--primary", "ctc", "0.1", "--n-boot", "200",
                          "--out-dir", str(exp / "score-test")], capsys)
    assert status == 0, err
    collect.collect_experiment(str(exp), str(tmp_path / "results"))
    slim = json.loads((tmp_path / "results" / "score-test.json").read_text())
    examples = json.loads((tmp_path / "results" / "score-test-examples.json").read_text())
    assert "per_seed" not in json.dumps(slim) and set(examples["runs"]) == {
        "pretrained", "ce-ft@1", "ce-ft@2", "ctc@1", "ctc@2"}
    assert isinstance(examples["runs"]["ctc@1"]["0"]["parses"], str)  # a string of flags
    assert "parses_std" not in examples["runs"]["ctc@1"]["0"]  # derived again
    again = stats.recompute(slim, examples)
    for family in ("robustness", "differences", "diff_in_diff", "retained"):
        assert json.loads(tables.json_text(again[family])) == slim[family], family
    (e,) = [e for e in slim["differences"] if (e["name"], e["rate"], e["metric"]) == (
        "ctc", "0.1", "parses_std")]
    assert not math.isnan(e["paired_lo"])  # ctc and ce-ft hold the same seeds
    # a changed flag changes the recomputed intervals: the values are what they rest on
    flags = examples["runs"]["ctc@1"]["0.1"]["parses"]
    examples["runs"]["ctc@1"]["0.1"]["parses"] = "".join("1" for _ in flags)
    assert stats.recompute(slim, examples)["differences"] != slim["differences"]


# ----------------------------------------------------------------------------------------------
# `task`


def test_task_is_deterministic_and_grammar_test_prompts_are_fresh(tmp_path, capsys):
    def argv(d):
        return ["task", "grammar", "--out-dir", str(tmp_path / d), "--n-train", "300",
                "--n-test", "200", "--seed", "3"]
    assert run(argv("a"), capsys)[0] == 0 and run(argv("b"), capsys)[0] == 0
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "task.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    train, val, test, old = (data.read_jsonl(str(tmp_path / "a" / f"{n}.jsonl"))
                             for n in ("train", "val", "test", "test-old"))
    task = json.loads((tmp_path / "a" / "task.json").read_text())
    def full(recs):  # each example's whole text
        return {r["prompt"] + r["response"] for r in recs}
    assert len(train) == 300 and not full(train) & full(test)
    assert val and not full(val) & (full(train) | full(test))  # validation never peeks at test
    # the fresh test set is drawn with seed + 3 and every text drawn before dropped (train, the
    # old test set of seed + 1, validation of seed + 2), and task.json says how many
    drawn = tasks.grammar_examples(200, 6)
    seen = full(train) | full(old) | full(val)
    assert test == [r for r in drawn if r["prompt"] + r["response"] not in seen]
    assert task["n_test"] == len(test) and task["dropped_test"] == 200 - len(test)
    # the old test set and validation are what earlier runs drew: seed + 1, then seed + 2
    assert old == [r for r in tasks.grammar_examples(200, 4)
                   if r["prompt"] + r["response"] not in full(train)]
    assert task["n_test_old"] == len(old) and task["dropped_test_old"] == 200 - len(old)
    assert task["seed"] == 3 and task["n_val"] == len(val)
    # a copy task small enough to collide: 26 one-letter strings, 20 of them in train
    assert run(["task", "copy", "--out-dir", str(tmp_path / "c"), "--n-train", "20",
                "--n-test", "10", "--n-val", "10", "--min-len", "1",
                "--max-len", "1"], capsys)[0] == 0
    task = json.loads((tmp_path / "c" / "task.json").read_text())
    assert task["dropped_test"] > 0 and task["n_test"] + task["dropped_test"] == 10


def test_task_text_takes_held_out_prompts(tmp_path, capsys):
    text = "".join(f"line {k}: caf\u00e9 na\u00efve \u00fcber.\n" for k in range(400))
    (tmp_path / "d.txt").write_text(text, encoding="utf-8")
    argv = ["task", "text", "--data", str(tmp_path / "d.txt"), "--out-dir", str(tmp_path / "t"),
            "--n-test", "7", "--prompt-len", "10", "--length", "20"]
    assert run(argv, capsys)[0] == 0
    test = data.read_jsonl(str(tmp_path / "t" / "test.jsonl"))
    assert len(test) == 7 and not (tmp_path / "t" / "train.jsonl").exists()
    val = bytes(data.load_corpus(str(tmp_path / "d.txt"))[1])
    for r in test:  # whole characters from the held-out split: prompt + response is a piece of it
        p, c = r["prompt"].encode(), r["response"].encode()
        assert "\ufffd" not in r["prompt"] + r["response"] and p + c in val
        assert 10 <= len(p) <= 13 and 20 <= len(c) <= 23
    assert val.startswith(test[0]["prompt"].encode())  # the first prompt opens the split
    assert run(argv[:-4] + ["--prompt-len", "1000", "--length", "20"],
               capsys)[0] == 1  # > the split


# ----------------------------------------------------------------------------------------------
# `curves`


def test_curves_tabulates_every_key_and_tolerates_missing_ones(tmp_path, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [{"step": 0, "loss": 5.0},  # a training line: no val_ key
                                          {"step": 250, "val_bits": 3.5, "val_ctc_random": 3.0},
                                          {"step": 500, "val_bits": 3.2, "val_ctc_random": 2.9},
                                          # resumed
                                          {"step": 500, "val_bits": 3.1, "val_ctc_random": 2.8}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"note": "start"}, {"step": 250, "val_bits": 3.6},
                                          {"step": 750, "val_bits": 3.0}])
    out = tmp_path / "curves"
    status, stdout, err = run(["curves", "--logs", f"ce/x={a}", f"ctc={b}", "--out-dir", str(out)],
                              capsys)
    assert status == 0, err
    res = json.loads((out / "curves.json").read_text())
    assert res["keys"] == ["val_bits", "val_ctc_random"]
    assert res["curves"]["val_bits"] == {"ce/x": [[250, 3.5], [500, 3.1]],
                                         "ctc": [[250, 3.6], [750, 3.0]]}
    assert list(res["curves"]["val_ctc_random"]) == ["ce/x"]  # ctc never logged it
    md = (out / "curves.md").read_text()
    assert (md in stdout and "| name | 250 | 500 | 750 |" in md
            and "| ce/x | 3.5000 | 3.1000 | n/a |" in md)
    assert "| ctc | n/a | n/a |" in md  # listed, with no values, under val_ctc_random
    for key in res["keys"]:
        assert ET.parse(out / f"{key}.svg").getroot().tag.endswith("svg")
    assert run(["curves", "--logs", f"a={a}", "--keys", "val_nope", "--out-dir", str(out)],
               capsys)[0] == 1
    assert run(["curves", "--logs", f"a={tmp_path / 'none.jsonl'}", "--out-dir", str(out)],
               capsys)[0] == 1


# ----------------------------------------------------------------------------------------------
# Plot and command line


def test_svg_plot_is_valid_xml():
    svg = tables.svg_plot({"ce <ft>": [(0, 3.0), (0.01, 4.0), (0.05, float("nan"))],
                             "ctc": [(0, 2.5)]},
                            "t", "x", "y", hline=("text", 2.0))
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    assert "ce &lt;ft&gt;" in svg
    ET.fromstring(tables.svg_plot({}, "empty", "x", "y"))  # no data at all still draws


def test_every_flag_has_help(capsys):
    parser = evaluate.build_parser()
    subs = [parser]
    while subs:
        p = subs.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                subs += list(action.choices.values())
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{p.prog} {action.option_strings} has no help"
    for argv in (["--help"], ["task", "text", "--help"], ["score", "--help"], ["curves", "--help"]):
        with pytest.raises(SystemExit) as e:
            evaluate.main(argv)
        assert e.value.code == 0
    assert "--gens" in capsys.readouterr().out


def test_choose_takes_the_best_mean_setting(tmp_path, capsys):
    """evaluate.py choose: the setting of the best mean primary metric over the fine-tuned arms
    (each arm weighted alike, pretrained left out) and the file's rates; a tie goes to the
    setting listed first; the flags decode.py takes, on one line."""
    def cell(v):
        return {"summary": {"parses": v}}
    arms = {"pretrained:plain/1/16": {"0": cell(1.0)},  # left out, else it would win plain/1/16
            "ce-ft:plain/1/16": {"0": cell(0.5)}, "ce-ft:last/2/8": {"0": cell(0.6)},
            "ce-ft:first/1/all": {"0": cell(0.6)},
            "ctc@1:plain/1/16": {"0": cell(0.5)}, "ctc@1:last/2/8": {"0": cell(0.6)},
            "ctc@1:first/1/all": {"0": cell(0.6)}}
    scores = tmp_path / "val.json"
    scores.write_text(json.dumps({"primary": "parses", "rates": ["0"], "arms": arms}))
    status, out, err = run(["choose", "--scores", str(scores), "--out-dir", str(tmp_path / "c")],
                           capsys)
    assert status == 0, err
    choice = json.loads((tmp_path / "c" / "choice.json").read_text())
    assert choice["setting"] == "last/2/8"  # ties first/1/all, listed later
    assert (tmp_path / "c" / "flags.txt").read_text() == (
        "--slack-rule last --per-step 2 --block-length 8\n")
    arms["ce-ft:first/1/all"] = {"0": cell(0.9)}
    scores.write_text(json.dumps({"primary": "parses", "rates": ["0"], "arms": arms}))
    assert run(["choose", "--scores", str(scores), "--out-dir", str(tmp_path / "d")],
               capsys)[0] == 0
    assert (tmp_path / "d" / "flags.txt").read_text() == "--slack-rule first --per-step 1\n"
    # the file's declared primary decides: parses_std (grammar's) against plain parses
    arms = {"ce-ft:short/1/16": {"0": {"summary": {"parses_std": 0.3, "parses": 0.9}}},
            "ce-ft:long/1/16": {"0": {"summary": {"parses_std": 0.6, "parses": 0.7}}}}
    scores.write_text(json.dumps({"primary": "parses_std", "rates": ["0"], "arms": arms}))
    assert run(["choose", "--scores", str(scores), "--out-dir", str(tmp_path / "s")],
               capsys)[0] == 0
    choice = json.loads((tmp_path / "s" / "choice.json").read_text())
    assert choice["setting"] == "long/1/16" and choice["metric"] == "parses_std"
    scores.write_text(json.dumps({"primary": "parses", "rates": ["0"],
                                  "arms": {"ce-ft": {"0": cell(0.5)}}}))
    status, _, err = run(["choose", "--scores", str(scores), "--out-dir", str(tmp_path / "e")],
                         capsys)
    assert status == 1 and "carries no setting" in err
