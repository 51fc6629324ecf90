"""
A copy task where a one-position error is measurable exactly: the prompt is a random lowercase string
and "=", the answer is the same string. Pretrain an MDLM on it with CE, fine-tune two copies (CE with
slack at the tail, slack CTC with slack at random positions), then decode the held-out prompts under
the shift probe and score the outputs against the known answers: exact match and character error
rate (edit distance / answer length), with paired bootstrap intervals.

    python synthetic.py --out-dir synthetic                 # the whole experiment, ~6 min on 2 CPUs
    python synthetic.py --tiny --out-dir /tmp/synthetic     # the same at toy sizes, seconds per stage
    python synthetic.py --out-dir synthetic --temperature 1   # trained stages kept: decode again

Writes to --out-dir: train.jsonl and test.jsonl (the task), task.json (its settings), one folder per
training stage (pretrain, ce-ft, ctc-ft; each a train.py run), results.json (every number, per-prompt
values, settings, wall times), results.md (the tables, also printed) and exact_match.svg. A stage
that is already complete is skipped, so a second run only decodes and scores again.

Why a copy task: on natural text the probe's effect on quality has to be read through a judge model
and is noisy at laptop scale. Here the right answer is known, so a token that lands one slot off
costs exactly one edit (1/n of the CER of an n-letter answer), and nothing else is being measured.

Papers:
- Ye et al. 2026 (arXiv 2601.22947): the shift probe and the CE vs slack-CTC fine-tuning comparison.
- Sahoo et al. 2024, MDLM (arXiv 2406.07524): ancestral sampling; Nie et al. 2025, LLaDA
  (arXiv 2502.09992): prompt-conditioned training, responses padded at the tail.
- Wagner & Fischer 1974, "The String-to-String Correction Problem": the edit-distance recursion.
- Efron & Tibshirani 1993, ch. 13: percentile bootstrap intervals (evaluate.paired_bootstrap).
"""

import argparse
import json
import os
import random
import string
import sys
import time

import numpy as np
import torch

import decode
import evaluate
import mdlm
import train
from evaluate import fmt, fmt_ci, table

# ----------------------------------------------------------------------------------------------
# Settings. SIZES is the default experiment (376 s on an idle 2-core CPU: pretrain 180 s, the
# fine-tunes 44 s and 48 s, decoding and scoring 104 s; see README, "Results");
# TINY runs every stage in seconds (the end-to-end test). A flag left unset takes its value
# from SIZES, or from TINY with --tiny; each value's type is the type of its flag.

# Why one string length by default: the letter to copy then sits at a fixed offset (n + 1 to the
# left), which rotary attention learns in a few hundred steps. With lengths that vary, the model must
# first work out the offset of each row; at these sizes a 4..12 task was still at exact match 0
# (CER 0.8) after 1500 steps, 6..8 after 800, while 8..8 reached CER 0.33 after 500. Set --min-len
# and --max-len (and more steps) to try the harder task.
SIZES = dict(
    n_train=20000, n_test=512, min_len=8, max_len=8,
    n_layer=4, n_head=4, n_embd=128, seq_len=32,  # prompt (9) + answer + EOS (9) + slack fit 32
    batch_size=64, lr=2e-3, finetune_lr=5e-4, pretrain_steps=2000, finetune_steps=500,
    eval_interval=250, slack_rate=0.1, gen_batch_size=128, n_boot=2000,
)
TINY = dict(
    n_train=200, n_test=16, min_len=2, max_len=4, n_layer=1, n_head=2, n_embd=32, seq_len=16,
    batch_size=8, lr=2e-3, finetune_lr=1e-3, pretrain_steps=20, finetune_steps=10,
    eval_interval=1000, slack_rate=0.1, gen_batch_size=16, n_boot=100,
)
SHIFT_RATES = (0.0, 0.01, 0.02, 0.05, 0.1)
ALPHABET = string.ascii_lowercase  # 26 one-byte tokens
SEP = "="  # ends every prompt: "where the copy starts"
MODELS = ("pretrained", "ce-ft", "ctc-ft")  # the first is the baseline of the paired differences


# ----------------------------------------------------------------------------------------------
# The task. A string s of n letters, n uniform in [min_len, max_len]; prompt s + "=", answer s.
# train.py appends EOS to the answer and pads it with EOS up to R - round(rate * R) tokens, so the
# response canvas holds exactly round(rate * R) slacks.


def make_examples(n, min_len, max_len, seed):
    """n examples {"prompt": s + "=", "response": s} with n distinct strings s, fixed by the seed."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    # sum of 26^n over the lengths: drawing more distinct strings than exist would never finish
    if n > sum(len(ALPHABET) ** k for k in range(min_len, max_len + 1)):
        raise ValueError(f"there are fewer than {n} strings of {min_len}..{max_len} letters")
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        s = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(min_len, max_len)))
        if s not in seen:  # distinct, so a test string can never also be a training string
            seen.add(s)
            out.append({"prompt": s + SEP, "response": s})
    return out


def write_task(path_train, path_test, n_train, n_test, seed, min_len=8, max_len=8):
    """Write the two JSON-lines files: the first n_test distinct strings are the test set, the
    next n_train the training set (disjoint by construction)."""
    pool = make_examples(n_train + n_test, min_len, max_len, seed)
    for path, recs in ((path_test, pool[:n_test]), (path_train, pool[n_test:])):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in recs)
        os.replace(path + ".tmp", path)  # never a half-written file under the real name


def prepare_task(args):
    """Write the task into out_dir; refuse when task.json there was written with other settings,
    because the stages trained on the old files would otherwise be reused silently."""
    task = {k: getattr(args, k) for k in ("n_train", "n_test", "min_len", "max_len", "seed")}
    path = os.path.join(args.out_dir, "task.json")
    if os.path.exists(path):
        old = json.load(open(path))
        if old != task:
            raise ValueError(f"{path} holds {old}, this run asks for {task}; delete {args.out_dir} "
                             f"or choose another --out-dir")
    paths = [os.path.join(args.out_dir, n) for n in ("train.jsonl", "test.jsonl")]
    write_task(*paths, args.n_train, args.n_test, args.seed, args.min_len, args.max_len)
    json.dump(task, open(path, "w"))
    return paths


# ----------------------------------------------------------------------------------------------
# Exact metrics. The edit distance counts a misplaced letter as what it is: "abdef" for "abcdef"
# is one deletion, "abccdef" one insertion, so either one-slot error costs exactly 1 / 6.


def levenshtein(a, b):
    """Fewest insertions, deletions and substitutions that turn sequence a into b (str or list).

        D[i][j] = min(D[i-1][j] + 1, D[i][j-1] + 1, D[i-1][j-1] + [a_i != b_j]),  D[i][0] = i,
        D[0][j] = j  (Wagner & Fischer 1974), kept one row at a time: O(|a| |b|) time, O(|b|) memory.
    """
    prev = list(range(len(b) + 1))  # row i = 0: turning "" into b[:j] takes j insertions
    for i, x in enumerate(a, 1):
        cur = [i]  # column j = 0: deleting all i letters of a[:i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def score(outputs, references):
    """Per-example {"exact": [1.0 or 0.0], "cer": [levenshtein / len(reference)]}; outputs and
    references are strings or id lists (the experiment compares bytes, so nothing is decoded)."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")
    if any(len(r) == 0 for r in references):
        raise ValueError("the character error rate needs non-empty references")
    return {"exact": [float(list(o) == list(r)) for o, r in zip(outputs, references)],
            "cer": [levenshtein(o, r) / len(r) for o, r in zip(outputs, references)]}


# ----------------------------------------------------------------------------------------------
# Training: three train.py runs as subprocesses (evaluate.run_stage: a complete stage is skipped,
# a stopped one resumed). The matched pair differs only in --loss: train.py then puts CE's slack
# at the tail (as LLaDA pads with EOS) and the CTC's at random positions (METHOD.md section 5).


def train_stages(args, train_path, seconds):
    """Pretrain with CE from scratch, then the two fine-tunes; returns {name: ckpt path}."""
    common = ["--sft", train_path, "--seq-len", args.seq_len, "--batch-size", args.batch_size,
              "--seed", args.seed, "--device", args.device, "--eval-interval", args.eval_interval]
    stage = lambda name, steps, flags: evaluate.run_stage(
        name, os.path.join(args.out_dir, name), steps, common + flags, seconds)
    # slack rate 0: K = 0, the answer and its EOS are padded with EOS to fill the canvas (LLaDA)
    pre = stage("pretrain", args.pretrain_steps, ["--loss", "ce", "--lr", args.lr, "--n-layer",
                                                  args.n_layer, "--n-head", args.n_head,
                                                  "--n-embd", args.n_embd])
    # same init, data, steps, seed and learning rate; only the loss (and so the placement) differs
    ft = ["--init-from", pre, "--lr", args.finetune_lr, "--slack-rate", args.slack_rate]
    ce = stage("ce-ft", args.finetune_steps, ft + ["--loss", "ce"])
    ctc = stage("ctc-ft", args.finetune_steps, ft + ["--loss", "ctc"])
    return dict(zip(MODELS, (pre, ce, ctc)))


# ----------------------------------------------------------------------------------------------
# Decoding. Each prompt of P bytes gets the canvas its training examples had: P + (seq_len - P)
# positions, so prompts are decoded in groups of equal length. steps = length: the ancestral
# sampler unmasks each remaining mask with probability 1 / (steps left), about one token per step,
# so most tokens are committed next to still-masked positions, where the probe can move them.


def decode_task(model, meta, prompts, args, rate, device):
    """Output ids (collapsed, cut at EOS) for each prompt, in order, and the summed counts."""
    outputs, counts = [None] * len(prompts), {"n_committed": 0, "n_shifted": 0, "model_calls": 0}
    for P in sorted({len(p) for p in prompts}):
        idx = [i for i, p in enumerate(prompts) if len(p) == P]
        L = args.seq_len - P
        # evaluate.generate_continuations batches, seeds one CPU generator and decodes; the seed
        # depends on P only, so every model and every rate sees the same random stream per group
        # (with temperature 0 the committed positions and probe moves then match across models)
        run = argparse.Namespace(length=L, steps=L, seed=args.seed + P, sampler=args.sampler,
                                 temperature=args.temperature, block_length=None,
                                 gen_batch_size=args.gen_batch_size)
        conts, c = evaluate.generate_continuations(model, meta, [prompts[i] for i in idx], run, rate, device)
        for i, out in zip(idx, conts):
            outputs[i] = out
        for k in counts:
            counts[k] += c[k]
    # the realised probe rate: moved tokens / committed tokens (re-fills of vacated slots included)
    counts["realised_shift"] = counts["n_shifted"] / max(counts["n_committed"], 1)
    return outputs, counts


def evaluate_models(ckpts, test_path, args, device):
    """{name: {"ckpt", "step", "rates": {rate: summary, per-example values, counts, samples}}}."""
    recs = [json.loads(line) for line in open(test_path, encoding="utf-8") if line.strip()]
    prompts = [mdlm.encode(r["prompt"]) for r in recs]
    refs = [mdlm.encode(r["response"]) for r in recs]  # bytes: one letter is one token
    models = {}
    for name, path in ckpts.items():  # one model in memory at a time
        model, meta, ckpt = evaluate.load_model(path, device)
        entry = models[name] = {"ckpt": path, "step": ckpt.get("step"), "meta": meta, "rates": {}}
        for rate in args.shift_rates:
            t0 = time.time()
            outputs, counts = decode_task(model, meta, prompts, args, rate, device)
            per = score(outputs, refs)
            summary = {"exact_match": float(np.mean(per["exact"])), "cer": float(np.mean(per["cer"]))}
            samples = [f"{recs[i]['prompt']} {mdlm.decode(outputs[i])}" for i in range(args.show_samples)]
            entry["rates"][f"{rate:g}"] = {"summary": summary, "per_example": per, **counts,
                                           "samples": samples, "seconds": time.time() - t0}
            print(f"{name:>10s} shift {rate:<5g} realised {counts['realised_shift']:.4f}  exact "
                  f"{summary['exact_match']:.3f}  cer {summary['cer']:.4f}  ({time.time() - t0:.1f} s)",
                  flush=True)
    return models


# ----------------------------------------------------------------------------------------------
# Paired comparisons. Every model decodes the same prompts with the same random streams, so
# differences are taken prompt by prompt (evaluate.py explains why pairing narrows the interval).


def comparisons(models, n_boot, seed):
    """Paired bootstrap 95% intervals of b - a for exact match and CER:
    - degradation: a model at rate r minus itself at rate 0;
    - differences: a later model minus an earlier one (MODELS order) at equal rate;
    - diff_in_diff: b's degradation minus a's (for CER, negative: b suffers less from the probe)."""
    ci = lambda a, b: dict(zip(("mean_diff", "lo", "hi"), evaluate.paired_bootstrap(a, b, n_boot, seed)))
    val = lambda name, r, m: np.asarray(models[name]["rates"][r]["per_example"][m])
    metrics, rates = ("exact", "cer"), [r for r in next(iter(models.values()))["rates"]]
    out = {"degradation": [], "differences": [], "diff_in_diff": []}
    names = list(models)
    for m in metrics:
        for r in rates:
            out["degradation"] += [{"model": n, "rate": r, "metric": m, **ci(val(n, "0", m), val(n, r, m))}
                                   for n in names if r != "0"]
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    out["differences"].append({"a": a, "b": b, "rate": r, "metric": m,
                                               **ci(val(a, r, m), val(b, r, m))})
                    # per prompt (b_r - b_0) - (a_r - a_0): each model's own rate-0 level cancels
                    if r != "0":
                        out["diff_in_diff"].append({"a": a, "b": b, "rate": r, "metric": m, **ci(
                            val(a, r, m) - val(a, "0", m), val(b, r, m) - val(b, "0", m))})
    return out


# ----------------------------------------------------------------------------------------------
# Reports: markdown tables (evaluate.table) and one plot (evaluate.svg_plot).


def pair_rows(items, key):
    """Table rows (key..., rate, exact CI, CER CI) from comparison records of both metrics."""
    cells = {}
    for d in items:
        cells.setdefault((*key(d), d["rate"]), {})[d["metric"]] = fmt_ci(d)
    return [[*k, v["exact"], v["cer"]] for k, v in cells.items()]


def markdown_report(res):
    """Every table of the experiment as one markdown string."""
    st, models, cmp = res["settings"], res["models"], res["comparisons"]
    out = [f"# Copy task: {st['n_test']} test strings of {st['min_len']}-{st['max_len']} letters, canvas "
           f"{st['seq_len']}, {st['sampler']} sampler, steps = length, temperature {st['temperature']}, "
           f"seed {st['seed']}", "",
           "Exact match: output == answer (higher is better). CER: edit distance / answer length "
           "(lower is better; one misplaced letter in an n-letter answer costs 1/n). Intervals: "
           "95% paired bootstrap over test prompts.", ""]
    out += table(["model", "step", "shift rate", "realised shift", "exact match", "CER", "seconds"],
                 [[n, e["step"], r, fmt(v["realised_shift"], 4), fmt(v["summary"]["exact_match"]),
                   fmt(v["summary"]["cer"], 4), fmt(v["seconds"], 1)]
                  for n, e in models.items() for r, v in e["rates"].items()])
    out += ["## Degradation: rate r minus rate 0, same model", ""]
    out += table(["model", "shift rate", "exact match", "CER"],
                 pair_rows(cmp["degradation"], lambda d: (d["model"],)))
    # the matched pair only; results.json also holds every other pair of models
    pair = lambda fam: [d for d in cmp[fam] if (d["a"], d["b"]) == ("ce-ft", "ctc-ft")]
    out += ["## Paired differences ctc-ft - ce-ft at equal rate", ""]
    out += table(["b - a", "shift rate", "exact match", "CER"],
                 pair_rows(pair("differences"), lambda d: (f"{d['b']} - {d['a']}",)))
    out += ["## Difference in degradation: ctc-ft's change from rate 0 minus ce-ft's "
            "(CER: negative = ctc-ft degrades less)", ""]
    out += table(["b vs a", "shift rate", "exact match", "CER"],
                 pair_rows(pair("diff_in_diff"), lambda d: (f"{d['b']} vs {d['a']}",)))
    out += ["## Wall times (seconds; stages run this time only)", ""]
    out += table(["part", "seconds"], [[k, fmt(v, 1)] for k, v in res["seconds"].items()])
    out += ["## Samples (prompt, then output)", ""]
    for n, e in models.items():  # the first prompts at the lowest and the highest rate
        for r in sorted({min(e["rates"], key=float), max(e["rates"], key=float)}, key=float):
            out += [f"- {n}, shift {r}: `{s.replace('`', chr(39))}`" for s in e["rates"][r]["samples"]]
    return "\n".join(out) + "\n"


def write_outputs(res, out_dir):
    """results.json, results.md and exact_match.svg in out_dir; returns their paths."""
    paths = [os.path.join(out_dir, n) for n in ("results.json", "results.md", "exact_match.svg")]
    series = {n: [(float(r), v["summary"]["exact_match"]) for r, v in e["rates"].items()]
              for n, e in res["models"].items()}
    svg = evaluate.svg_plot(series, "Copy task under the shift probe",
                            "shift rate (fraction of tokens moved)", "exact match (higher is better)")
    texts = [json.dumps(evaluate.json_ready(res), indent=1), markdown_report(res), svg]
    for path, text in zip(paths, texts):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return paths


# ----------------------------------------------------------------------------------------------
# The experiment, top to bottom.


def check_sizes(args):
    """The longest answer + EOS must fit the smallest response canvas, slack for the fine-tunes
    included, or train.py would truncate answers and the copy could never be exact."""
    R = args.seq_len - (args.max_len + len(SEP))  # the response canvas of the longest prompt
    if R - round(args.slack_rate * R) < args.max_len + 1:
        raise ValueError(f"--seq-len {args.seq_len} is too short for {args.max_len}-letter strings at "
                         f"slack rate {args.slack_rate}: need a prompt, the answer and EOS to fit")
    if any(not 0 <= r <= 1 for r in args.shift_rates) or args.show_samples > args.n_test:
        raise ValueError("shift rates must lie in [0, 1] and --show-samples be at most --n-test")


def run(args):
    t_start, seconds = time.time(), {}
    vars(args).update({k: v for k, v in (TINY if args.tiny else SIZES).items() if getattr(args, k) is None})
    args.shift_rates = sorted({0.0, *args.shift_rates})  # degradation is measured against rate 0
    check_sizes(args)
    os.makedirs(args.out_dir, exist_ok=True)
    train_path, test_path = prepare_task(args)
    ckpts = train_stages(args, train_path, seconds)
    print("== evaluate", flush=True)
    t0, device = time.time(), mdlm.pick_device(args.device)
    models = evaluate_models(ckpts, test_path, args, device)
    seconds["evaluate"] = time.time() - t0
    cmp = comparisons(models, args.n_boot, args.seed)
    seconds["total"] = time.time() - t_start
    settings = {**vars(args), "device": device, "torch": torch.__version__,
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t_start))}
    res = {"settings": settings, "seconds": seconds, "models": models, "comparisons": cmp}
    paths = write_outputs(res, args.out_dir)
    print(markdown_report(res))
    print("wrote " + ", ".join(paths))
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--out-dir", default="synthetic", help="folder of the task, stages and results (default: synthetic)")
    a("--tiny", action="store_true", help="toy sizes for every unset size flag: seconds per stage")
    for key, text in [("n_train", "training strings"),
                      ("n_test", "test strings (disjoint from training)"),
                      ("min_len", "shortest string, letters"),
                      ("max_len", "longest string, letters"),
                      ("n_layer", "Transformer blocks"),
                      ("n_head", "attention heads"),
                      ("n_embd", "model width"),
                      ("seq_len", "canvas length T: prompt + response canvas"),
                      ("batch_size", "training batch size"),
                      ("lr", "peak learning rate of pretraining"),
                      ("finetune_lr", "peak learning rate of both fine-tunes"),
                      ("pretrain_steps", "CE pretraining steps"),
                      ("finetune_steps", "steps of each fine-tune"),
                      ("eval_interval", "train.py validates every N steps"),
                      ("slack_rate", "slack rate of both fine-tunes: round(rate * R) slacks per canvas"),
                      ("gen_batch_size", "prompts decoded together"),
                      ("n_boot", "bootstrap resamples per interval")]:
        # default None: run() can tell an unset flag (SIZES or TINY decides) from a set one
        a("--" + key.replace("_", "-"), type=type(SIZES[key]), default=None,
          help=f"{text} (default {SIZES[key]}; --tiny {TINY[key]})")
    a("--shift-rates", type=float, nargs="+", default=list(SHIFT_RATES),
      help="shift-probe rates; 0 is always added (default: 0 0.01 0.02 0.05 0.1)")
    a("--sampler", choices=decode.SAMPLERS, default="ancestral",
      help="MDLM ancestral or LLaDA low-confidence sampling, steps = length (default: ancestral)")
    a("--temperature", type=float, default=0.0, help="sampling temperature, 0 = greedy (default: 0)")
    a("--show-samples", type=int, default=3, help="outputs kept per model and rate (default: 3)")
    a("--seed", type=int, default=1337, help="seed of the task, training and decoding (default: 1337)")
    a("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    return p.parse_args(argv)


def main(argv=None):
    """Run the experiment; returns the exit status (1 with a one-line error)."""
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError, mdlm.CheckpointError, train.UserError, evaluate.StageError) as e:
        print(f"error: {e}", file=sys.stderr)  # an expected failure: a message, no traceback
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
