"""
Evaluate masked diffusion checkpoints on the two claims of arXiv 2601.22947: (a) a CE-trained MDLM
degrades sharply when ~1% of its generated tokens land one position off during decoding (the shift
probe); (b) fine-tuning with the slack CTC beats a matched CE fine-tune on open-ended generation
and degrades less under that probe.

    python evaluate.py bpb --ckpts out/ckpt.pt out-ar/ckpt.pt        # held-out bits per byte
    python evaluate.py compare --ckpts out-ce/ckpt.pt out-ctc/ckpt.pt --names ce-ft ctc-ft \\
        --judge out-ar/ckpt.pt --out-dir eval                     # quality at shift rates 0..5%
    python evaluate.py reproduce --out-dir experiment                # everything, ~35-40 min on 2 CPUs
    python evaluate.py reproduce --tiny --out-dir /tmp/tiny          # the same at toy sizes, ~1 min

`compare` (and `reproduce` at its end) writes to --out-dir: results.json (every number, per-prompt
values and the exact settings), results.md (the tables, also printed) and quality.svg (judge
perplexity against shift rate, one line per model).

Metrics, one value per prompt (so that models are compared prompt by prompt): judge_nll (nats per
byte of the continuation under an AR judge given the prompt; tables show the judge perplexity
exp(mean judge_nll)), entropy of the continuation's byte histogram, distinct-1/2/3 and length. A
model that repeats itself can get a low judge perplexity; entropy and distinct-n expose it. An
empty continuation (EOS first) counts in `empty` and is left out of the other means.

Reading the tables: a difference "b - a" comes with a 95% interval from a paired bootstrap over
prompts. An interval that excludes 0 says the difference is unlikely to be an accident of which
prompts were drawn; it says nothing about the randomness of training (one seed per model here).

Papers:
- Ye et al. 2026 (arXiv 2601.22947): the shift probe, the CE vs slack-CTC fine-tuning comparison.
- Sahoo et al. 2024, MDLM (arXiv 2406.07524): the NELBO in bits per byte, stratified t (sec. 3.5).
- Efron & Tibshirani 1993, "An Introduction to the Bootstrap", ch. 13: percentile intervals.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from xml.sax.saxutils import escape

import numpy as np
import torch

import decode
import mdlm
import train

# ----------------------------------------------------------------------------------------------
# Settings of the reproduce experiment, all in one block. SIZES ran in 41 minutes on a 2-core CPU
# (pretrain 1207 s while sharing the cores, ~600 s alone; judge 552 s; fine-tunes 186 s and 206 s;
# evaluation 284 s: see README, "Results"); more when the cores are shared.
# TINY runs each stage in seconds (the end-to-end test). `compare` takes its defaults from SIZES.
# Each value's type (int or float) is also the type of its command-line flag.

SIZES = dict(
    n_layer=4, n_head=4, n_embd=128, seq_len=256,  # train.py's defaults, for the MDLM and the AR judge
    batch_size=32, lr=2e-3, finetune_lr=5e-4,  # the fine-tunes start from a trained model: smaller lr
    pretrain_steps=1500, judge_steps=1500, finetune_steps=500,  # pretrain and judge = train.py defaults
    eval_interval=250,  # train.py validates every N steps
    slack_rate=0.1,  # K = round(0.1 * R) slacks per response canvas, for both fine-tunes
    num_prompts=128, prompt_len=32, length=96, steps=64,  # prompt + length <= seq_len
    gen_batch_size=64, eval_batch_size=32, t_samples=8, max_batches=16,
)
TINY = dict(
    n_layer=1, n_head=2, n_embd=32, seq_len=32, batch_size=8, lr=2e-3, finetune_lr=1e-3,
    pretrain_steps=30, judge_steps=30, finetune_steps=20, eval_interval=1000, slack_rate=0.1,
    num_prompts=6, prompt_len=8, length=16, steps=8,
    gen_batch_size=6, eval_batch_size=8, t_samples=2, max_batches=2,
)
SHIFT_RATES = (0.0, 0.01, 0.02, 0.05)  # the probe rates of METHOD.md section 9
# per-prompt metrics, in the order of results.json; judge_nll is what the robustness tables track
METRICS = ("judge_nll", "entropy", "distinct_1", "distinct_2", "distinct_3", "length")
TABLE_DIFFS = ("judge_nll", "entropy", "distinct_2", "length")  # results.md; results.json has all
HERE = os.path.dirname(os.path.abspath(__file__))
NAN = float("nan")  # "no value": an empty continuation has no entropy; JSON writes it as null


class StageError(Exception):
    """A training stage of `reproduce` failed or left no usable checkpoint."""


# ----------------------------------------------------------------------------------------------
# Prompts: prefixes of the held-out split (what the models never trained on), or a file. Held-out
# text matters twice: a model cannot have memorised the continuation, and the true next bytes give
# a reference row (what real text scores under the same judge).


def held_out_prompts(val_ids, num_prompts, prompt_len, length):
    """`num_prompts` prefixes of `prompt_len` bytes at evenly spaced fixed offsets of the held-out
    bytes, and the `length` true bytes after each: the reference row (what real text scores)."""
    span = prompt_len + length
    if num_prompts < 1 or len(val_ids) < span:
        raise ValueError(f"need >= 1 prompt and >= {span} held-out bytes, have {len(val_ids)}")
    ids = val_ids.tolist()
    # evenly spaced, not random: every run and every model sees the same prompts, and they cover
    # the whole split instead of clustering in one part of it
    offsets = np.linspace(0, len(ids) - span, num_prompts).astype(int).tolist()
    return [ids[o:o + prompt_len] for o in offsets], [ids[o + prompt_len:o + span] for o in offsets]


def file_prompts(path):
    """JSON lines {"prompt": "..."} -> list of byte-id lists (no reference continuations)."""
    with open(path, encoding="utf-8") as f:  # blank lines are allowed (and skipped)
        recs = [(n, json.loads(line)) for n, line in enumerate(f, 1) if line.strip()]
    for n, rec in recs:
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"]:
            raise ValueError(f"{path}:{n}: need an object with a non-empty string 'prompt'")
    if not recs:
        raise ValueError(f"prompt file {path!r} has no prompts")
    return [mdlm.encode(rec["prompt"]) for _, rec in recs]


def load_model(path, device):
    """(model, meta, checkpoint) with the EMA weights; meta falls back to plain MDLM values."""
    ckpt = mdlm.load_checkpoint(path)
    model = mdlm.model_from_checkpoint(ckpt, device=device)
    return model, mdlm.checkpoint_meta(ckpt), ckpt


# ----------------------------------------------------------------------------------------------
# Held-out likelihood in bits per byte. Bytes are the tokens, so bits per byte compares any two
# models of this project directly (no tokenizer to normalise for), and it reads as compression: a
# model at 1 bit per byte could code the held-out text in 1/8 of its size.


@torch.no_grad()
def bits_per_byte(model, meta, val_ids, seq_len, batch_size, t_samples=8, seed=0, device="cpu",
                  max_batches=None):
    """Bits per byte of the held-out bytes `val_ids` (1-D), over non-overlapping windows.

    AR:   exact  -1/n sum_i log2 p(x_i | x_<i): windows of seq_len + 1 bytes with stride seq_len,
          so each byte after a window's first is predicted once (mdlm.ar_loss / ln 2).
    MDLM: the NELBO  E_t[ w(t) sum_{i masked in z_t} -log p(x_i | z_t) ] / T / ln 2 (MDLM eq. 10),
          an upper bound on the model's bits per byte, estimated with `t_samples` stratified draws
          of t for every window. The seed fixes t and the masks: the same number on every call.
    """
    val = val_ids.long()
    ar = meta.get("objective") == "ar" or model.cfg.causal
    # an AR window needs one extra byte: it reads x_0..x_{T-1} and predicts x_1..x_T
    width = seq_len + 1 if ar else seq_len
    n_win = (len(val) - width) // seq_len + 1  # windows that start at 0, T, 2T, ... and fit
    if n_win < 1:
        raise ValueError(f"held-out split of {len(val)} bytes is shorter than one window ({width})")
    windows = val[:(n_win - 1) * seq_len + width].unfold(0, width, seq_len)  # (N, width)
    # one generator for every draw of t and of the masks: the estimate is a fixed function of the
    # seed, so two checkpoints (or two runs) are scored on identical noise
    gen = torch.Generator(device=device).manual_seed(seed)
    schedule = meta.get("schedule", "linear")
    total, count = 0.0, 0
    for start in range(0, n_win, batch_size)[:max_batches]:  # max_batches None: every batch
        x = windows[start:start + batch_size].to(device)  # (B, width)
        if ar:
            losses = mdlm.ar_loss(model(x[:, :-1]), x)  # (B,) nats per predicted byte
        else:
            # each draw is one Monte-Carlo sample of the NELBO per window; stratified t (evenly
            # spread over (0, 1] across the batch) keeps its variance low with few draws
            draws = []
            for _ in range(t_samples):  # a fresh stratification offset each draw
                t = mdlm.sample_t(len(x), generator=gen, device=device)  # (B,)
                z_t = mdlm.forward_mask(x, t, schedule, generator=gen)  # (B, T)
                draws.append(mdlm.mdlm_loss(model(z_t), x, z_t, t, schedule))  # (B,) nats per byte
            losses = torch.cat(draws)  # (t_samples * B,)
        total, count = total + losses.sum().item(), count + len(losses)
    # nats -> bits: log2 p = ln p / ln 2. For MDLM this bounds -log2 p(x) from above (the ELBO is
    # below log p(x)), so an MDLM number next to an AR one is pessimistic for the MDLM
    return total / count / math.log(2)


# ----------------------------------------------------------------------------------------------
# Metrics of one continuation. Plain definitions, checked by hand in the tests.
#
# Why three kinds: the judge perplexity asks "does this read like the corpus?", but a model stuck
# in a loop ("the the the ...") is very predictable and scores a low, flattering perplexity. The
# byte entropy and distinct-n measure variety instead, so a degenerate output shows up there even
# when its perplexity looks good. A real improvement lowers perplexity without losing variety;
# the held-out text row says how much variety real text has.


def unigram_entropy(ids):
    """H = -sum_v p(v) log2 p(v) with p the byte histogram of `ids`, in bits; nan if empty.

    0 bits for one repeated byte, at most log2(256) = 8 for uniformly random bytes; English prose
    sits at about 4 to 4.5. It ignores order, so it flags a narrow vocabulary, not a repeated phrase."""
    if len(ids) == 0:
        return NAN
    counts = np.bincount(np.asarray(ids, dtype=np.int64))
    p = counts[counts > 0] / len(ids)  # empirical p(v) of the bytes that occur (0 log 0 = 0)
    return float(abs(-(p * np.log2(p)).sum()))  # abs: a constant sequence gives 0, not -0


def distinct_n(ids, n):
    """Unique n-grams / all n-grams of `ids` (1 = no repetition); nan if shorter than n.

    Catches what entropy misses: a phrase repeated verbatim keeps its byte histogram but repeats
    all its 2- and 3-grams. It falls with length even for real text, so compare equal lengths."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else NAN


@torch.no_grad()
def judge_nll(judge, prompt_ids, cont_ids):
    """(sum_j -log p_judge(c_j | prompt, c_<j) in nats, number of bytes scored) for continuation c.

    The judge reads at most seq_len tokens: a longer prompt keeps its last bytes, and the
    continuation is cut so that prompt + continuation fits seq_len + 1 (the last byte is only a
    target). The sum runs over continuation bytes only; the prompt is context, never scored.
    """
    # Why an AR judge: an MDLM has no exact likelihood of its own samples, and a model should not
    # grade itself. A causal model trained on the same corpus gives the exact probability of any
    # text, so every model's output is scored by one fixed, independent reader.
    if len(prompt_ids) == 0:
        raise ValueError("the judge needs at least one prompt byte to predict the first output byte")
    T = judge.cfg.seq_len
    prompt = list(prompt_ids)[-T:]
    cont = list(cont_ids)[:T + 1 - len(prompt)]
    if not cont:
        return 0.0, 0
    device = next(judge.parameters()).device
    x = torch.tensor([prompt + cont], dtype=torch.long, device=device)  # (1, P + C)
    log_p = judge(x[:, :-1]).float().log_softmax(-1)  # (1, P + C - 1, V): position i predicts i + 1
    # continuation byte j sits at position P + j and is predicted from position P + j - 1
    picked = log_p[:, len(prompt) - 1:].gather(-1, x[:, len(prompt):, None])  # (1, C, 1)
    return -picked.sum().item(), len(cont)


def continuation_metrics(judge, prompt_ids, cont_ids):
    """Every per-prompt metric of METRICS for one continuation."""
    nll, n = judge_nll(judge, prompt_ids, cont_ids)
    # judge_nll per byte, so that continuations of different lengths are comparable
    return {"judge_nll": nll / n if n else NAN, "entropy": unigram_entropy(cont_ids),
            **{f"distinct_{k}": distinct_n(cont_ids, k) for k in (1, 2, 3)},
            "length": float(len(cont_ids))}


def nan_mean(xs):
    """Mean of the values that are not nan (nan if none): empty continuations are left out."""
    vals = [x for x in xs if not math.isnan(x)]
    return sum(vals) / len(vals) if vals else NAN


# ----------------------------------------------------------------------------------------------
# Generation: every model continues the same prompts with the same seed and decoding settings.


def generate_continuations(model, meta, prompts, args, shift_rate, device):
    """One continuation per prompt (output ids after the collapse map, cut at EOS), and counts.

    Prompts of equal length share a batch (a canvas is rectangular). One CPU generator seeded with
    args.seed drives every draw, so two models see the same random stream at every shift rate.
    AR checkpoints decode left to right and are never probed.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # stable: fixed batches
    conts, committed, shifted, calls = [None] * len(prompts), 0, 0, 0
    # on the CPU, so that the same seed gives the same samples whatever the device
    gen = torch.Generator().manual_seed(args.seed)
    slack = bool(meta["slack"]) and not model.cfg.causal  # only slack-trained MDLMs emit SLACK
    pos = 0
    while pos < len(order):  # the next batch: up to gen_batch_size prompts of one length
        P = len(prompts[order[pos]])
        batch = [i for i in order[pos:pos + args.gen_batch_size] if len(prompts[i]) == P]
        pos += len(batch)
        x = torch.tensor([prompts[i] for i in batch], dtype=torch.long, device=device)  # (B, P)
        if model.cfg.causal:
            out = decode.generate_ar(model, x, args.length, temperature=args.temperature, generator=gen)
            committed += len(batch) * args.length
        else:
            # the probe (shift_rate > 0) moves a just-committed token into a masked neighbour,
            # imitating one misplaced token (decode.shift_probe); rate 0 is plain decoding
            out = decode.generate(model, x, args.length, steps=args.steps, sampler=args.sampler,
                                  block_length=args.block_length, temperature=args.temperature,
                                  schedule=meta["schedule"], allow_slack=slack,
                                  shift_rate=shift_rate, generator=gen)
            committed += int(out["n_committed"].sum())
            shifted += int(out["n_shifted"].sum())
        calls += out["model_calls"]
        for k, i in enumerate(batch):  # canvas -> output ids: drop the prompt, collapse, cut at EOS
            conts[i] = decode.finish(out["canvas"][k].cpu(), P, meta["collapse"], slack)
    # the realised probe rate: shifted tokens / all commits (re-fills of vacated slots included)
    counts = {"n_committed": committed, "n_shifted": shifted,
              "realised_shift": shifted / max(committed, 1), "model_calls": calls}
    return conts, counts


def score(judge, prompts, conts):
    """Per-prompt metrics {metric: [value per prompt]} and their summary (means over prompts)."""
    rows = [continuation_metrics(judge, p, c) for p, c in zip(prompts, conts)]
    per_prompt = {m: [r[m] for r in rows] for m in METRICS}
    summary = {m: nan_mean(per_prompt[m]) for m in METRICS}
    # perplexity = exp(mean nats per byte): the geometric mean of the per-prompt perplexities, so
    # one garbled continuation cannot dominate it the way it would an arithmetic mean
    summary["judge_ppl"] = math.exp(summary["judge_nll"])
    summary["empty"] = sum(1 for n in per_prompt["length"] if n == 0)
    return per_prompt, summary


def evaluate_generation(name, model, meta, prompts, judge, args, device):
    """{rate: {"summary", "per_prompt", counts, "samples"}} for every shift rate (rate 0 for AR)."""
    results = {}
    # AR models only at rate 0: the probe moves a token into a masked slot, and a left-to-right
    # decoder never has one; their row shows what the same backbone reaches without diffusion
    for rate in ([0.0] if model.cfg.causal else args.shift_rates):
        t0 = time.time()
        conts, counts = generate_continuations(model, meta, prompts, args, rate, device)
        per_prompt, summary = score(judge, prompts, conts)
        # rates are keyed by their shortest spelling ("0", "0.01"): JSON keys must be strings
        results[f"{rate:g}"] = {"summary": summary, "per_prompt": per_prompt, **counts,
                                "samples": [mdlm.decode(c) for c in conts[:args.show_samples]],
                                "seconds": time.time() - t0}
        print(f"{name:>12s} shift {rate:<5g} realised {counts['realised_shift']:.4f}  judge ppl "
              f"{summary['judge_ppl']:8.3f}  entropy {summary['entropy']:.3f}  distinct-2 "
              f"{summary['distinct_2']:.3f}  ({time.time() - t0:.1f} s)", flush=True)
    return results


# ----------------------------------------------------------------------------------------------
# Paired comparisons: the same prompts for every model, so differences are taken prompt by prompt
# (which removes the prompt-to-prompt variance from the comparison).
#
# Why pairing matters: prompts differ far more in difficulty than two models differ from each
# other. For per-prompt values a_i, b_i the unpaired and paired variances of the mean difference
# are
#     unpaired: (Var a + Var b) / n        paired: Var(b - a) / n = (Var a + Var b - 2 Cov(a, b)) / n
# and Cov(a, b) is large and positive (a hard prompt is hard for both), so the paired interval is
# much narrower: the same prompts detect a smaller real difference.


def paired_bootstrap(a, b, n_boot=2000, seed=0):
    """(mean of d, 2.5th and 97.5th percentile of its bootstrap distribution), d_i = b_i - a_i.

    Percentile bootstrap: resample the n pairs with replacement n_boot times and take the mean of
    each resample. Pairs where either value is nan are dropped; nan everywhere if none is left.
    """
    # The spread of the resampled means stands in for the spread we would see if the experiment
    # were rerun on n fresh prompts from the same text; its middle 95% is the interval. No normal
    # approximation is needed, which matters for skewed per-prompt values (perplexity outliers).
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal shapes, got {a.shape} and {b.shape}")
    d = (b - a)[~(np.isnan(a) | np.isnan(b))]  # keep a pair only if both continuations exist
    if len(d) == 0:
        return NAN, NAN, NAN
    rng = np.random.default_rng(seed)  # seeded: the same interval on every run
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)  # (n_boot,)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)


def comparisons(models, n_boot, seed):
    """Three families of paired intervals, all as b - a:
    - robustness: judge_nll at shift rate r minus the same model's at rate 0 (claim a);
    - differences: model b minus model a (earlier in --ckpts) at equal rate, for every metric;
    - diff_in_diff: b's judge_nll rise from rate 0 minus a's (negative: b degrades less; claim b).
    """
    ci = lambda a, b: dict(zip(("mean_diff", "lo", "hi"), paired_bootstrap(a, b, n_boot, seed)))
    nll = lambda name, r: np.asarray(models[name]["rates"][r]["per_prompt"]["judge_nll"])
    # robustness pairs a model with itself: same prompts and seed, only the probe differs
    robust = [{"model": name, "rate": r, **ci(nll(name, "0"), nll(name, r))}
              for name, entry in models.items() for r in entry["rates"] if r != "0"]
    # every pair once, in --ckpts order: b - a reads "later model minus earlier (baseline) model"
    names, diffs, did = list(models), [], []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for r in [r for r in models[a]["rates"] if r in models[b]["rates"]]:
                pa, pb = models[a]["rates"][r]["per_prompt"], models[b]["rates"][r]["per_prompt"]
                for m in METRICS:
                    diffs.append({"a": a, "b": b, "rate": r, "metric": m, **ci(pa[m], pb[m])})
                # difference in differences, per prompt: (b_r - b_0) - (a_r - a_0). Each model's
                # own rate-0 quality cancels, leaving only how much more (or less) b suffers
                if r != "0":
                    did.append({"a": a, "b": b, "rate": r,
                                **ci(nll(a, r) - nll(a, "0"), nll(b, r) - nll(b, "0"))})
    return {"robustness": robust, "differences": diffs, "diff_in_diff": did}


# ----------------------------------------------------------------------------------------------
# Reports: markdown tables and a hand-written SVG line plot (no plotting dependency).


def fmt(x, digits=3):
    """A number for a table cell; nan (an empty continuation's metric) shows as n/a."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_ci(d):
    """A paired difference as "mean [lo, hi]", its 95% bootstrap interval in brackets."""
    return f"{fmt(d['mean_diff'])} [{fmt(d['lo'])}, {fmt(d['hi'])}]"


def table(head, rows):
    """A markdown table (header, separator, one line per row of cells), then a blank line."""
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"
    return [line(head), "|---" * len(head) + "|"] + [line(r) for r in rows] + [""]


def quality_cells(s):
    """The metric cells of one row of the generation-quality table, from a summary."""
    return [fmt(s[m]) for m in ("judge_ppl", "entropy", "distinct_1", "distinct_2", "distinct_3")] + [
        fmt(s["length"], 1), s["empty"]]


def markdown_report(res):
    """All tables of one evaluation as a markdown string."""
    st, models = res["settings"], res["models"]
    out = [f"# Evaluation ({st['num_prompts']} prompts of {st['prompt_len']} bytes, {st['length']} "
           f"generated positions, {st['sampler']} sampler, {st['steps']} steps, temperature "
           f"{st['temperature']}, seed {st['seed']})", "",
           "## Held-out bits per byte (MDLM: NELBO upper bound; AR: exact)", "",
           "Slack-trained models also put probability on `<slack>`, which held-out text never "
           "holds, so their NELBO is not a like-for-like likelihood.", ""]
    out += table(["model", "objective", "step", "bits per byte"],  # step: the checkpoint's
                 [[name, e["meta"]["objective"], e["step"], fmt(e["bpb"], 4)]
                  for name, e in list(models.items()) + [("judge", res["judge"])]])
    # one row per model and shift rate, under the true continuations of the same prompts
    ref = res.get("reference")
    rows = [["held-out text", "-", "-"] + quality_cells(ref["summary"])] if ref else []
    rows += [[name, r, fmt(v["realised_shift"], 4)] + quality_cells(v["summary"])
             for name, e in models.items() for r, v in e["rates"].items()]
    out += [f"## Generation quality (judge: {res['judge']['ckpt']})", ""]
    out += table(["model", "shift rate", "realised shift", "judge ppl", "entropy (bits)", "distinct-1",
                  "distinct-2", "distinct-3", "length", "empty"], rows)
    out += ["## Robustness: judge nll (nats/byte) at rate r minus rate 0, same model, "
            "95% paired bootstrap CI", ""]
    out += table(["model", "shift rate", "change"],
                 [[d["model"], d["rate"], fmt_ci(d)] for d in res["robustness"]])
    cells = {}  # (pair, rate) -> one "mean [lo, hi]" cell per metric, in TABLE_DIFFS order
    for d in (d for d in res["differences"] if d["metric"] in TABLE_DIFFS):
        cells.setdefault((d["b"] + " - " + d["a"], d["rate"]), []).append(fmt_ci(d))
    out += ["## Paired differences b - a, 95% bootstrap CI (judge nll in nats/byte: lower is better)", ""]
    out += table(["b - a", "shift rate", *TABLE_DIFFS], [[*k, *v] for k, v in cells.items()])
    out += ["## Difference in degradation: b's judge-nll rise from rate 0 minus a's "
            "(negative: b degrades less)", ""]
    out += table(["b vs a", "shift rate", "b rise - a rise"],
                 [[f"{d['b']} vs {d['a']}", d["rate"], fmt_ci(d)] for d in res["diff_in_diff"]])
    out += ["## Samples (first prompts; ↵ = newline)", ""]
    for name, e in models.items():  # the first prompts at the lowest and the highest shift rate
        for r in sorted({min(e["rates"], key=float), max(e["rates"], key=float)}, key=float):
            for s in e["rates"][r]["samples"]:  # newlines and backticks would break the markdown
                out.append(f"- {name}, shift {r}: `{s[:160].replace(chr(10), '↵').replace('`', chr(39))}`")
    return "\n".join(out) + "\n"


def svg_plot(series, title, xlabel, ylabel, hline=None, width=640, height=400):
    """A line chart as an SVG string: series {name: [(x, y), ...]} as polylines with dots, linear
    axes with 5 ticks each, a legend on the right; hline = (label, y) draws a dashed reference."""
    left, right, top, bottom = 70, 170, 40, 50  # margins; the legend lives in the right one
    pts = [(x, y) for s in series.values() for x, y in s if not math.isnan(y)]
    xs = [x for x, _ in pts] or [0.0, 1.0]  # no data at all: a unit square
    ys = [y for _, y in pts] + ([hline[1]] if hline else []) or [0.0, 1.0]
    # the data range, widened where it is empty (one x value) and padded by 5% on y, so that no
    # dot sits on the frame
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1.0
    pad = 0.05 * (max(ys) - min(ys)) or 1.0
    y0, y1 = min(ys) - pad, max(ys) + pad
    # data -> pixel, linear: px = left + (x - x0) / (x1 - x0) * plot width; SVG's y axis points
    # down, so y is measured up from the bottom margin
    sx = lambda x: round(left + (x - x0) / (x1 - x0) * (width - left - right), 1)
    sy = lambda y: round(height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom), 1)
    # the two SVG elements everything is drawn with; text is escaped (a name may hold <, > or &)
    line = lambda xa, ya, xb, yb, style='stroke="black"': (
        f'<line x1="{xa}" y1="{ya}" x2="{xb}" y2="{yb}" {style}/>')
    text = lambda x, y, s, style="": f'<text x="{x}" y="{y}"{style}>{escape(str(s))}</text>'
    colors = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    base, legend_x, y_mid = sy(y0), width - right + 10, (top + sy(y0)) / 2  # base: the x axis's row
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
          f'font-family="sans-serif" font-size="12">',
          f'<rect width="{width}" height="{height}" fill="white"/>',
          text(width / 2, 20, title, ' text-anchor="middle" font-size="14"'),
          line(left, base, sx(x1), base), line(left, base, left, sy(y1))]  # the x and y axes
    for k in range(5):  # 5 evenly spaced ticks per axis, labelled with 3-4 significant digits
        xv, yv = x0 + k * (x1 - x0) / 4, y0 + k * (y1 - y0) / 4
        px, py = sx(xv), sy(yv)
        el += [line(px, base, px, base + 5) + text(px, base + 18, f"{xv:.3g}", ' text-anchor="middle"'),
               line(left - 5, py, left, py) + text(left - 8, py + 4, f"{yv:.4g}", ' text-anchor="end"')]
    # axis labels; the y label is rotated about its own anchor point
    el += [text((left + sx(x1)) / 2, height - 12, xlabel, ' text-anchor="middle"'),
           text(16, y_mid, ylabel, f' text-anchor="middle" transform="rotate(-90 16 {y_mid})"')]
    if hline:  # the reference line gets the legend slot after the last series
        el += [line(left, sy(hline[1]), sx(x1), sy(hline[1]), 'stroke="gray" stroke-dasharray="5,4"'),
               text(legend_x, top + 20 * len(series) + 14, "- - " + hline[0], ' fill="gray"')]
    for k, (name, s) in enumerate(series.items()):  # one coloured line per model, nan points left out
        c, ok = colors[k % len(colors)], [(sx(x), sy(y)) for x, y in s if not math.isnan(y)]
        el.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                  + " ".join(f"{px},{py}" for px, py in ok) + '"/>')
        el += [f'<circle cx="{px}" cy="{py}" r="3" fill="{c}"/>' for px, py in ok]
        el.append(text(legend_x, top + 20 * k + 14, name, f' fill="{c}"'))
    return "\n".join(el + ["</svg>"]) + "\n"


def json_ready(x):
    """nan and inf -> None (JSON has neither), numpy scalars -> Python numbers, recursively."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x.item() if isinstance(x, np.generic) else x


def write_outputs(res, out_dir):
    """results.json, results.md and quality.svg in out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, n) for n in ("results.json", "results.md", "quality.svg")]
    # the plot: judge perplexity against shift rate, one line per model (an AR model is a dot)
    series = {name: [(float(r), v["summary"]["judge_ppl"]) for r, v in e["rates"].items()]
              for name, e in res["models"].items()}
    ref = res.get("reference")
    svg = svg_plot(series, "Quality under the shift probe", "shift rate (fraction of tokens moved)",
                   "judge perplexity (lower is better)",
                   hline=("held-out text", ref["summary"]["judge_ppl"]) if ref else None)
    for path, text in zip(paths, [json.dumps(json_ready(res), indent=1, ensure_ascii=False),
                                  markdown_report(res), svg]):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return paths


# ----------------------------------------------------------------------------------------------
# The `bpb` and `compare` modes.


def run_bpb(args):
    """Print the held-out bits per byte of each checkpoint."""
    device = mdlm.pick_device(args.device)
    _, val_ids = train.load_corpus(args.data)  # (train, held-out): the same split as training
    for path in args.ckpts:
        model, meta, _ = load_model(path, device)
        bpb = bits_per_byte(model, meta, val_ids, model.cfg.seq_len, args.eval_batch_size, args.t_samples,
                            args.seed, device, args.max_batches or None)
        print(f"{path}: {bpb:.4f} bits per byte ({meta['objective']})")


def run_compare(args):
    """Evaluate every checkpoint of args.ckpts on the same prompts; write and print the report."""
    t_start, device = getattr(args, "t_start", None) or time.time(), mdlm.pick_device(args.device)
    names = args.names or [os.path.basename(os.path.dirname(os.path.abspath(p))) for p in args.ckpts]
    if len(names) != len(args.ckpts) or len(set(names)) != len(names):
        raise ValueError(f"--names needs one distinct name per checkpoint, got {names}")
    judge, judge_meta, judge_ckpt = load_model(args.judge, device)
    if not judge.cfg.causal:  # judge_nll reads exact left-to-right probabilities
        raise ValueError(f"the judge {args.judge!r} is not an autoregressive (causal) checkpoint")
    _, val_ids = train.load_corpus(args.data)
    prompts, refs = ((file_prompts(args.prompts), None) if args.prompts else
                     held_out_prompts(val_ids, args.num_prompts, args.prompt_len, args.length))
    # the judge's own bits per byte says how good a reader it is: a judge barely better than
    # uniform (8 bits) would rank any text about the same, and its perplexities would mean little
    bpb = lambda m, meta: bits_per_byte(m, meta, val_ids, m.cfg.seq_len, args.eval_batch_size,
                                        args.t_samples, args.seed, device, args.max_batches or None)
    # everything needed to rerun (or distrust) the numbers travels with them in results.json
    settings = {**vars(args), "names": names, "num_prompts": len(prompts), "device": device,
                "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    res = {"settings": settings, "models": {},
           "judge": {"ckpt": args.judge, "step": judge_ckpt.get("step"), "meta": judge_meta,
                     "bpb": bpb(judge, judge_meta)}}
    if refs is not None:  # real text after the same prompts: the quality a model could aim for
        per_prompt, summary = score(judge, prompts, refs)
        res["reference"] = {"summary": summary, "per_prompt": per_prompt}
    for name, path in zip(names, args.ckpts):  # one model in memory at a time
        model, meta, ckpt = load_model(path, device)
        entry = {"ckpt": path, "step": ckpt.get("step"), "meta": meta, "bpb": bpb(model, meta)}
        print(f"{name:>12s} {path}: {entry['bpb']:.4f} bits per byte", flush=True)
        entry["rates"] = evaluate_generation(name, model, meta, prompts, judge, args, device)
        res["models"][name] = entry
    res.update(comparisons(res["models"], args.n_boot, args.seed))
    settings["wall_seconds"] = time.time() - t_start
    paths = write_outputs(res, args.out_dir)
    print(markdown_report(res))
    print("wrote " + ", ".join(paths))
    return res, paths


# ----------------------------------------------------------------------------------------------
# The `reproduce` mode: train.py stages as subprocesses, then `compare`. Resume-friendly: a stage
# whose out-dir/ckpt.pt already holds a finished run with the same flags is skipped; one stopped
# halfway continues with train.py --resume; one with other flags is an error (delete its folder).


def stage_state(path, flags, steps):
    """'missing', 'partial' or 'done' for the checkpoint a stage would write with these flags."""
    if not os.path.exists(path):
        return "missing"
    try:
        ckpt = mdlm.load_checkpoint(path)
    except mdlm.CheckpointError as e:
        raise StageError(f"{e}; delete {os.path.dirname(path)} to retrain this stage")
    # train.py stores its parsed flags; a checkpoint trained otherwise must not be silently reused,
    # or the comparison would mix models from two different experiments
    stored = ckpt.get("args") or {}
    want = {f[2:].replace("-", "_"): v for f, v in zip(flags[::2], flags[1::2])}  # "--name value" pairs
    want.setdefault("data", None)  # no --data: the default corpus, stored as None
    # the device may differ (a run moved to a GPU), and so may the paths inside the experiment's
    # folder (a copied or renamed folder); nothing else
    free = ("device", "out_dir", "init_from", "sft")
    for key, value in want.items():
        if key not in free and key in stored and str(stored[key]) != str(value):
            raise StageError(f"{path} was trained with --{key.replace('_', '-')} {stored[key]}, this run "
                             f"asks for {value}; delete {os.path.dirname(path)} or choose another --out-dir")
    return "done" if (ckpt.get("step") or 0) >= steps else "partial"


def run_stage(name, out_dir, steps, flags, seconds):
    """Run `python train.py --out-dir out_dir --steps steps flags...` unless already done; its
    output streams to this terminal. Returns the checkpoint path; its wall time goes to seconds."""
    path = os.path.join(out_dir, "ckpt.pt")
    flags = [str(f) for f in ["--out-dir", out_dir, "--steps", steps] + flags]  # as argv: strings
    state = stage_state(path, flags, steps)
    if state == "done":
        print(f"== {name}: {path} is complete ({steps} steps), skipped", flush=True)
        return path
    cmd = [sys.executable, os.path.join(HERE, "train.py")] + flags + ["--resume"] * (state == "partial")
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    # a subprocess, not an import: each stage is exactly the command a reader could run by hand
    if subprocess.run(cmd).returncode != 0:
        raise StageError(f"stage {name} failed (command above); fix it and rerun: finished stages are kept")
    if stage_state(path, flags, steps) != "done":
        raise StageError(f"stage {name} ended without a complete checkpoint at {path}")
    seconds[name] = time.time() - t0
    print(f"== {name}: done in {seconds[name]:.0f} s", flush=True)
    return path


def reproduce(args):
    """Pretrain (CE), train the AR judge, fine-tune a CE and a CTC copy, then compare all three."""
    args.t_start, args.stage_seconds = time.time(), {}
    # every flag left unset takes its value from the settings block (TINY with --tiny)
    sizes = TINY if args.tiny else SIZES
    vars(args).update({k: v for k, v in sizes.items() if getattr(args, k, None) is None})
    common = ["--batch-size", args.batch_size, "--seed", args.seed, "--device", args.device,
              "--eval-interval", args.eval_interval, "--seq-len", args.seq_len]
    common += ["--data", args.data] if args.data else []
    scratch = common + ["--n-layer", args.n_layer, "--n-head", args.n_head, "--n-embd", args.n_embd,
                        "--lr", args.lr]
    stage = lambda name, steps, flags: run_stage(name, os.path.join(args.out_dir, name), steps, flags,
                                                 args.stage_seconds)
    # the judge has the MDLM's size and data but a causal mask: it scores, it is never compared
    pre = stage("pretrain", args.pretrain_steps, scratch + ["--objective", "mdlm"])
    judge = stage("judge", args.judge_steps, scratch + ["--objective", "ar"])
    # the matched pair: same init, data, steps, seed, prompt length and slack rate; only the loss
    # differs (train.py puts CE's slack at the tail, as LLaDA pads with EOS; CTC's at random)
    finetune = common + ["--init-from", pre, "--lr", args.finetune_lr, "--slack-rate", args.slack_rate,
                         "--prompt-len", args.prompt_len]
    ce = stage("ce-ft", args.finetune_steps, finetune + ["--loss", "ce"])
    ctc = stage("ctc-ft", args.finetune_steps, finetune + ["--loss", "ctc"])
    print("== evaluate", flush=True)
    # the pretrained model is the baseline (first): both fine-tunes are compared with it and ctc-ft
    # with ce-ft, the comparison of claim (b)
    args.ckpts, args.names, args.judge = [pre, ce, ctc], ["pretrained", "ce-ft", "ctc-ft"], judge
    _, paths = run_compare(args)
    print(f"== reproduce finished in {time.time() - args.t_start:.0f} s; results: " + ", ".join(paths))


# ----------------------------------------------------------------------------------------------
# Command line.


def add_size(p, key, text, reproduce):
    """A flag whose default (and type) lives in the settings block; in `reproduce` --tiny changes it.
    There the default is None, so that reproduce() can tell an unset flag from a set one."""
    default = None if reproduce else SIZES[key]
    note = f"default {SIZES[key]}; --tiny {TINY[key]}" if reproduce else f"default {SIZES[key]}"
    p.add_argument("--" + key.replace("_", "-"), type=type(SIZES[key]), default=default,
                   help=f"{text} ({note})")


def add_eval_flags(p, reproduce=False, generation=True):
    """Flags shared by the modes: data, device, seeds, likelihood and generation settings."""
    a = p.add_argument
    a("--data", default=None, help="UTF-8 text, last 5%% held out (default: train.py's corpus)")
    a("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    a("--seed", type=int, default=1337, help="seed of t, masks and sampling (default: 1337, train.py's)")
    add_size(p, "eval_batch_size", "windows per batch for bits per byte", reproduce)
    add_size(p, "t_samples", "draws of t per window for the MDLM NELBO", reproduce)
    add_size(p, "max_batches", "cap on bits-per-byte batches (0: the whole held-out split)", reproduce)
    if not generation:  # `bpb` stops here
        return
    add_size(p, "num_prompts", "prompts taken from the held-out split, evenly spaced", reproduce)
    add_size(p, "prompt_len", "bytes per held-out prompt", reproduce)
    add_size(p, "length", "positions generated after each prompt", reproduce)
    add_size(p, "steps", "denoising steps per continuation", reproduce)
    add_size(p, "gen_batch_size", "prompts decoded together", reproduce)
    a("--prompts", default=None, help='JSON lines {"prompt": ...} to use instead of held-out prefixes')
    a("--sampler", choices=decode.SAMPLERS, default="ancestral",
      help="MDLM ancestral sampling or LLaDA low-confidence remasking (default: ancestral)")
    a("--block-length", type=int, default=None, help="semi-autoregressive block length (default: none)")
    a("--temperature", type=float, default=1.0, help="sampling temperature, 0 = greedy (default: 1)")
    a("--shift-rates", type=float, nargs="+", default=list(SHIFT_RATES),
      help="shift-probe rates; rate 0 is always added (default: 0 0.01 0.02 0.05)")
    a("--n-boot", type=int, default=2000, help="bootstrap resamples per interval (default: 2000)")
    a("--show-samples", type=int, default=2, help="texts kept per model and shift rate (default: 2)")


def build_parser():
    """The three modes, each a subcommand with its own flags (`evaluate.py MODE --help`)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("bpb", help="held-out bits per byte of checkpoints")
    b.add_argument("--ckpts", nargs="+", required=True, help="checkpoints written by train.py")
    add_eval_flags(b, generation=False)
    c = sub.add_parser("compare", help="generation quality and robustness of checkpoints, compared")
    c.add_argument("--ckpts", nargs="+", required=True, help="checkpoints; the first is the baseline")
    c.add_argument("--names", nargs="+", default=None, help="one name per checkpoint (default: folder names)")
    c.add_argument("--judge", required=True, help="AR checkpoint (train.py --objective ar) that scores text")
    c.add_argument("--out-dir", default="eval", help="folder of results.json, .md, .svg (default: eval)")
    add_eval_flags(c)
    r = sub.add_parser("reproduce", help="train every model from scratch, then compare (one command)")
    r.add_argument("--out-dir", default="experiment", help="a folder per stage (default: experiment)")
    r.add_argument("--tiny", action="store_true", help="toy sizes: seconds per stage (for the tests)")
    for key, text in [("n_layer", "Transformer blocks"), ("n_head", "attention heads"),
                      ("n_embd", "model width"), ("seq_len", "canvas length T"),
                      ("batch_size", "training batch size"), ("pretrain_steps", "MDLM pretraining steps"),
                      ("judge_steps", "AR judge training steps"),
                      ("finetune_steps", "steps of each fine-tune"),
                      ("eval_interval", "train.py validates every N steps"),
                      ("lr", "peak learning rate of pretraining and the judge"),
                      ("finetune_lr", "peak learning rate of both fine-tunes"),
                      ("slack_rate", "slack rate of both fine-tunes")]:
        add_size(r, key, text, reproduce=True)
    add_eval_flags(r, reproduce=True)
    return p


def main(argv=None):
    """Parse argv and run the chosen mode; returns the exit status (1 with a one-line error)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "shift_rates", None) is not None and 0.0 not in args.shift_rates:
        args.shift_rates = [0.0] + args.shift_rates  # robustness is measured against rate 0
    try:
        {"bpb": run_bpb, "compare": run_compare, "reproduce": reproduce}[args.mode](args)
    except (ValueError, OSError, mdlm.CheckpointError, train.UserError, StageError) as e:
        print(f"error: {e}", file=sys.stderr)  # an expected failure: a message, no traceback
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
