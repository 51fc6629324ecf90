"""
Evaluate masked diffusion models on the two claims of arXiv 2601.22947: (a) a CE-trained MDLM
degrades sharply when ~1% of its committed tokens land one position off during decoding (the shift
probe); (b) a slack-CTC fine-tune degrades less under that probe than a matched CE fine-tune.

    python evaluate.py task copy --out-dir tasks/copy           # train.jsonl, test.jsonl, task.json
    python evaluate.py task text --out-dir tasks/text --prompt-len 32 --length 96   # test only
    python evaluate.py bpb --ckpts out/ckpt.pt out-ar/ckpt.pt   # held-out bits per byte
    python evaluate.py score --task copy --refs tasks/copy/test.jsonl \\
        --gens ce=gens/ce.jsonl ctc=gens/ctc.jsonl --out-dir eval/copy
    python evaluate.py score --task text --refs tasks/text/test.jsonl --judge out-ar/ckpt.pt \\
        --gens ce=gens/ce.jsonl ctc=gens/ctc.jsonl --out-dir eval/text
    python evaluate.py curves --logs ce=out-ce/log.jsonl ctc=out-ctc/log.jsonl --out-dir eval/curves
    python evaluate.py choose --scores val/results.json --out-dir choice  # the decoder, on val
    python evaluate.py lengths --ckpts a@1/ckpt.pt --refs tasks/grammar/train.jsonl --out-dir len

`score` reads decode.py's output (a JSON line per prompt and shift rate) and writes results.json
(every number, per-prompt values per seed, settings), results.md (the tables, also printed) and
PRIMARY.svg (the first of a task's tasks.METRICS against the shift rate); `curves` writes
curves.md, .json, .svg. Runs named ARM@SEED are the training seeds of one arm; a difference
"b - a" has a 95% interval from a two-level bootstrap over training seeds and prompts
(stats.py): one that excludes 0 says the difference is unlikely to come from which seeds were
trained or which prompts were drawn.

Papers: Ye et al. 2026 (arXiv 2601.22947): the shift probe, CE vs slack-CTC fine-tuning; Sahoo et
al. 2024, MDLM (arXiv 2406.07524): the NELBO in bits per byte, stratified t (sec. 3.5).
"""

import argparse
import functools
import json
import math
import os
import platform
import re
import sys
import time

import numpy as np
import torch

import common
import data
import mdlm
import stats
import tables
import tasks

# ----------------------------------------------------------------------------------------------
# `task`: the examples every model is scored on. Train and test come from different seeds, and a
# test example that also occurs in train is dropped: no model may pass by recalling an answer.


def run_task(args):
    """Write out_dir/train.jsonl, val.jsonl, test-old.jsonl (not for text), test.jsonl and
    task.json. Validation prompts are for choosing settings (decoder rules, training length);
    test prompts only score what was chosen."""
    files, dropped = {}, {}
    if args.task == "text":  # text fine-tunes train on the corpus itself: a test set only
        train_ids, val_ids, vocab = data.load_corpus(args.data, n_tokens=args.vocab_size)
        if vocab.tokenizer == "bytes":
            files["test"] = tasks.held_out_examples(val_ids, args.n_test, args.prompt_len,
                                                    args.length)
        else:  # a token file: its ids, and their text where the tokenizer is at hand
            files["test"] = tasks.held_out_token_examples(val_ids, args.n_test, args.prompt_len,
                                                    args.length, vocab)
    else:
        if args.task == "copy":
            make = functools.partial(tasks.copy_examples, min_len=args.min_len,
                                     max_len=args.max_len)
        else:
            make = functools.partial(tasks.grammar_examples, prompt_words=args.prompt_words,
                                     max_bytes=args.max_bytes, min_bytes=args.min_bytes,
                                     sentences=(args.min_sentences, args.max_sentences))
        files["train"] = make(args.n_train, seed=args.seed)
        seen = {r["prompt"] + r["response"] for r in files["train"]}  # each example's full text
        # test-old from seed + 1 (the test prompts of earlier runs, decoded for the slack-rule and
        # rate sweeps before the primary comparison was declared: a second, labelled set),
        # validation from seed + 2, test from seed + 3 (a seed never decoded before: the fresh
        # test prompts, decoded once, after every choice). A text drawn before is dropped, so no
        # model may pass by recalling an answer, validation never peeks at a test prompt, and the
        # fresh prompts hold no text of the old ones. The draws keep their order, so train, val
        # and test-old are the files earlier runs had
        for split, n, seed in [("test-old", args.n_test, args.seed + 1),
                               ("val", args.n_val, args.seed + 2),
                               ("test", args.n_test, args.seed + 3)]:
            drawn = make(n, seed=seed)
            files[split] = [r for r in drawn if r["prompt"] + r["response"] not in seen]
            dropped[split] = len(drawn) - len(files[split])
            seen |= {r["prompt"] + r["response"] for r in files[split]}
    # the flags and the counts: enough to redo the files
    task = {**{k: v for k, v in vars(args).items() if k not in ("mode", "out_dir")},
            **{f"n_{k.replace('-', '_')}": len(v) for k, v in files.items()},
            **{f"dropped_{k.replace('-', '_')}": v for k, v in dropped.items()}}
    # what the test examples look like: how long prompts and responses are, in bytes
    for part in ("prompt", "response"):
        sizes = [len((r.get(part) or "").encode()) for r in files["test"]]
        task[f"{part}_bytes_mean"] = float(np.mean(sizes))
        task[f"{part}_bytes_sd"] = float(np.std(sizes))
    # makes out_dir
    tables.write_files(args.out_dir, {"task.json": json.dumps(task, indent=1) + "\n"})
    for split, recs in files.items():
        data.write_jsonl(os.path.join(args.out_dir, f"{split}.jsonl"), recs)
    print(f"{args.out_dir}: " + ", ".join(f"{len(v)} {k} examples" for k, v in files.items())
          + (f" ({dropped} dropped as seen before)" if dropped else ""))


# ----------------------------------------------------------------------------------------------
# `bpb`: held-out likelihood in bits per byte. Bytes are the tokens, so it compares any two models
# of this project directly, and it reads as compression: 1 bit per byte codes text in 1/8 its size.


@torch.no_grad()
def bits_per_token(model, meta, val_ids, seq_len, batch_size, t_samples=8, seed=0, device="cpu",
                  max_batches=None):
    """Bits per token (per byte for a byte model) of the held-out ids `val_ids` (1-D) over
    non-overlapping windows.
    AR:   exact  -1/n sum_i log2 p(x_i | x_<i): windows of seq_len + 1 bytes with stride seq_len,
          so each byte after a window's first is predicted once (mdlm.ar_loss / ln 2).
    MDLM: the NELBO  E_t[ w(t) sum_{i masked in z_t} -log p(x_i | z_t) ] / T / ln 2 (MDLM eq. 10),
          an upper bound on the model's bits per byte, estimated with `t_samples` stratified draws
          of t for every window. The seed fixes t and the masks: the same number on every call.
    Returns (bits, standard error): the error of the mean over windows (and draws of t) taken as
    independent, which overstates it a little for stratified t."""
    ar = meta.get("objective") == "ar" or model.cfg.causal
    if seq_len > model.cfg.seq_len:  # the rotary tables stop at the model's canvas length
        raise ValueError(f"--seq-len {seq_len} exceeds the model's canvas ({model.cfg.seq_len})")
    # an AR window needs one extra byte: it reads x_0..x_{T-1} and predicts x_1..x_T
    width = seq_len + 1 if ar else seq_len
    n_win = (len(val_ids) - width) // seq_len + 1  # windows that start at 0, T, 2T, ... and fit
    if n_win < 1:
        raise ValueError(f"held-out split of {len(val_ids)} tokens is shorter than one window "
                         f"({width})")
    # one generator for every draw of t and of the masks: two checkpoints get identical noise
    gen = torch.Generator(device=device).manual_seed(seed)
    schedule, values = meta.get("schedule", "linear"), []  # per window and draw, nats per token
    mask = mdlm.special_ids(model.cfg.vocab_size)[2]  # the model's own MASK, never a default
    for start in range(0, n_win, batch_size)[:max_batches]:  # max_batches None: every batch
        # data.windows reads only these bytes of the split (a memmap): the rest stays on disk
        x = data.windows(val_ids, np.arange(start, min(start + batch_size, n_win)) * seq_len, width)
        x = x.to(device)  # (B, width)
        losses = [mdlm.ar_loss(model(x[:, :-1]), x)] if ar else []  # (B,) nats per predicted byte
        # each MDLM draw is one Monte-Carlo sample of the NELBO per window; stratified t (evenly
        # spread over (0, 1] across the batch) keeps its variance low with few draws
        for _ in range(0 if ar else t_samples):
            t, z_t = mdlm.forward_process(x, schedule, mask_id=mask, generator=gen)  # (B,), (B, T)
            losses.append(mdlm.mdlm_loss(model(z_t), x, z_t, t, schedule))  # (B,) nats per byte
        values += torch.cat(losses).double().tolist()
    # nats -> bits: log2 p = ln p / ln 2. For MDLM this bounds -log2 p(x) from above
    v = np.asarray(values) / math.log(2)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan


def bpb_corpus(ckpt, path, args):
    """The held-out split a checkpoint is scored on: --data (with --vocab-size, or else the
    checkpoint's own vocabulary for a token file without metadata), or the corpus it was trained
    on, as its run recorded it. The vocabularies must agree: the same ids, the same meaning."""
    vocab = data.vocab_of(ckpt)
    trained = ckpt.get("args") or {}
    if args.data is None and trained.get("sft"):
        raise common.UserError(f"{path} was trained on SFT records ({trained['sft']}), not a "
                             f"corpus: give --data")
    corpus = args.data if args.data is not None else trained.get("data")
    if corpus is not None and not os.path.exists(corpus):
        raise common.UserError(f"{path} was trained on {corpus!r}, which is not here: give --data")
    n = args.vocab_size
    if n is None and corpus is not None and corpus.endswith(".bin"):
        meta = os.path.splitext(corpus)[0] + ".json"
        n = None if os.path.isfile(meta) else vocab.n_tokens  # the file's own metadata wins
    _, val, corpus_vocab = data.load_corpus(corpus, n_tokens=n)  # val: the held-out 5%
    if corpus_vocab.n_tokens != vocab.n_tokens:
        raise common.UserError(f"{path} has a vocabulary of {vocab.n_tokens} ordinary ids, the "
                             f"corpus {corpus or 'default'} {corpus_vocab.n_tokens}")
    return val, vocab


def run_bpb(args):
    """Print the held-out bits per token (per byte for byte models) of each checkpoint."""
    device = common.pick_device(args.device)
    for path in args.ckpts:
        ckpt = common.load_checkpoint(path)  # EMA weights; meta: objective, schedule, slack...
        val, vocab = bpb_corpus(ckpt, path, args)
        model = common.model_from_checkpoint(ckpt, device=device)
        meta = common.checkpoint_meta(ckpt)
        bpb, se = bits_per_token(model, meta, val, args.seq_len or model.cfg.seq_len,
                            args.eval_batch_size, args.t_samples, args.seed, device,
                            args.max_batches or None)
        unit = "byte" if vocab.tokenizer == "bytes" else "token"
        print(f"{path}: {bpb:.4f} ± {se:.4f} bits per {unit} ({meta['objective']}; ± the "
              f"standard error of the estimate)")


# ----------------------------------------------------------------------------------------------
# `score`, part 2: reading and checking its inputs, each problem one common.UserError: a silent
# mismatch (a shifted index, a missing rate) would give plausible-looking, wrong numbers.


def parse_named(specs, flag):
    """["NAME=PATH" or "PATH", ...] -> {name: path} in the given order; a bare PATH is named by
    its file name without the extension. A name is a label and may hold "/"."""
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:  # a bare path
            name, path = os.path.splitext(os.path.basename(spec))[0], spec
        if not (name and path) or name in out:
            raise common.UserError(f"{flag}: need NAME=PATH or PATH with a new name each time, "
                                 f"got {specs}")
        out[name] = path
    return out


def load_gens(name, path, n_refs, need_text=False):
    """{setting: {rate key: {prompt index: record}}} of one gens file, a setting being the slack
    rule, positions per step and block length that decode.py recorded ("last/1/16"; "" when it
    recorded none). A rate is keyed by its shortest spelling ("0", "0.01"): JSON keys must be
    strings. An output is its text, or its ids where the model's tokenizer was not at hand."""
    if not os.path.isfile(path):
        raise common.UserError(f"gens file {path!r} (for {name!r}) does not exist")
    settings = {}
    for n, g in enumerate(data.read_jsonl(path), 1):
        i, rate, counts = g.get("i"), g.get("rate"), [g.get("n_committed"), g.get("n_shifted")]
        if not (type(i) is int and 0 <= i < n_refs and isinstance(rate, (int, float))  # True: no i
                and (isinstance(g.get("output"), str)
                     or not need_text and isinstance(g.get("output_ids"), list))
                and all(type(c) is int and c >= 0 for c in counts)):
            raise common.UserError(f"{path}: record {n} needs a prompt index i in 0..{n_refs - 1} "
                                 f"(has {i!r}), a number rate, a string output (a list "
                                 f"output_ids will do for --task text: this task checks text), "
                                 f"counts n_committed, n_shifted")
        setting = "/".join(str(g[k]) if g[k] is not None else "all"  # all: one block
                           for k in ("slack_rule", "per_step", "block_length") if k in g)
        by_rate = settings.setdefault(setting, {}).setdefault(f"{float(rate):g}", {})
        if i in by_rate:
            raise common.UserError(f"{path}: prompt {i} appears twice at shift rate {rate:g}"
                                 + (f" and setting {setting}" if setting else ""))
        by_rate[i] = g
    for setting, by_rate in settings.items():
        if "0" not in by_rate:  # robustness is a change from rate 0: without it nothing compares
            raise common.UserError(f"{path} ({name!r}) has no records at shift rate 0"
                                 + (f" for setting {setting}" if setting else ""))
    return settings


def shared_prompts(gens):
    """(shared rates, shared prompt indices, notes). A rate missing from some name is left out,
    with a note; every name and rate must hold the same prompts, or the pairing would be wrong."""
    sets = {name: set(g) for name, g in gens.items()}
    rates = sorted(set.intersection(*sets.values()), key=float)  # as numbers: '1e-05' < '0.5'
    notes = [f"{name!r} also has shift rates {', '.join(sorted(s - set(rates), key=float))}; only "
             f"the shared rates are compared: {', '.join(rates)}"
             for name, s in sets.items() if s != set(rates)]
    first = next(iter(gens))
    idx = sorted(gens[first]["0"])  # rate 0 exists: load_gens checks
    odd = [(name, r) for name in gens for r in rates if sorted(gens[name][r]) != idx][:1]
    for name, r in odd:  # the first mismatch, with a few of the prompts one side lacks
        raise common.UserError(f"{name!r} at shift rate {r} and {first!r} at rate 0 hold different "
                             f"prompts (e.g. i = {sorted(set(gens[name][r]) ^ set(idx))[:5]})")
    return rates, idx, notes


def score_run(metric_fn, metrics, refs, recs, idx, task=None, ref_lengths=None):
    """Per-example metrics, their means (nan values left out), the realised shift of one run, and
    `whole`: what only the run's outputs together show (whole_output). ref_lengths: the data's
    response lengths at these prompts (default: the run's own, as for the true responses)."""
    std = tasks.STANDARDISED.get(task)
    rows = [metric_fn(refs[i], recs[i]) for i in idx]
    per = {m: [row[m] for row in rows] for m in metrics if not std or m != std["metric"]}
    whole, summary = {}, {}
    if "length" in per:
        whole = whole_output(task, per, [recs[i] for i in idx], [refs[i] for i in idx],
                             per["length"] if ref_lengths is None else ref_lengths)
    if std:  # the rate standardised to the data's lengths, linearised per example (stats.py)
        s = stats.length_standardised(per[std["of"]], per[std["length"]],
                                      per["length"] if ref_lengths is None else ref_lengths)
        per[std["metric"]], summary[std["metric"]] = s["per_example"], s["std"]
    per = {m: per[m] for m in metrics}  # {metric: values in idx order}, in the task's order
    committed, shifted = (sum(recs[i][k] for i in idx) for k in ("n_committed", "n_shifted"))
    # the realised probe rate: moved tokens / all commits (re-fills of vacated slots included)
    summary = {m: summary.get(m, float(np.mean([x for x in per[m] if not math.isnan(x)]
                                               or [stats.NAN]))) for m in metrics}
    return {"summary": summary, "per_example": per, "whole": whole,
            "n_committed": committed, "n_shifted": shifted,
            "realised_shift": shifted / committed if committed else stats.NAN}


def whole_output(task, per, recs, refs, ref_lengths):
    """{length_tv, length_shares, coverage, distinct_valid}: the run's output lengths against
    the data's (total variation between the two histograms over stats.py's length bins, with
    the shares shorter and longer than every text of the data last), the data's mass in the
    bins it reaches, and the share of its outputs that are valid and distinct (prompt + output
    told apart; a model that writes one safe text for every prompt of a first word scores low
    however often that text parses)."""
    s = stats.length_standardised([0.0] * len(recs), per["length"], ref_lengths)
    out = {"length_tv": s["length_tv"], "length_shares": s["shares"], "coverage": s["coverage"]}
    valid = tasks.VALID.get(task)
    if valid:
        texts = {(ref.get("prompt") or "") + (rec.get("output") or "")
                 for ref, rec, ok in zip(refs, recs, per[valid]) if ok == 1}
        out["distinct_valid"] = len(texts) / len(recs)
    return out


def pool_whole(arms, runs):
    """Each arm's `whole` at each rate: the mean over its seeds (length_shares bin by bin), and
    every seed's value (whole_by_seed)."""
    for by_rate in arms.values():
        for r, cell in by_rate.items():
            seeds = [runs[n][r]["whole"] for n in cell["seeds"]]
            keys = [k for k in seeds[0] if all(k in w for w in seeds)]
            cell["whole"] = {k: np.mean([w[k] for w in seeds], axis=0).tolist() for k in keys}
            cell["whole_by_seed"] = {k: [w[k] for w in seeds] for k in keys
                                     if not isinstance(seeds[0][k], list)}


def length_notes(res, task, ref_lengths):
    """The length bins every run of `res` is measured in (res["lengths"]), the standardised
    metric of the task where it has one (res["standardised"]), and a note on each: why
    those bins, and why the standardised rate cannot be raised by writing less."""
    if ref_lengths is not None:
        edges = stats.length_edges(ref_lengths)
        res["lengths"] = {"bins": stats.LENGTH_BINS, "edges": edges.tolist(),
                          "data_shares": np.bincount(stats.length_bin(ref_lengths, edges),
                                                     minlength=len(edges) - 1).tolist()}
        res["lengths"]["data_shares"] = [c / len(ref_lengths)
                                         for c in res["lengths"]["data_shares"]]
        res["notes"].append(
            f"Length bins: the true responses' quantiles 0, 20, ..., 100% (bytes "
            f"{', '.join(tables.num(e, 1) for e in edges)}), so each holds about a fifth of the "
            f"data; an output outside the data's lengths is in no bin. length_tv: total variation "
            f"between a run's length histogram and the data's over these bins and the two outside.")
    std = tasks.STANDARDISED.get(task)
    if std and std["metric"] in res["metrics"]:
        res["standardised"] = {**std, "bins": stats.LENGTH_BINS}
        res["notes"].append(
            f"{std['metric']}: the rate of {std['of']}, standardised to the data's length "
            f"distribution: sum over the length bins of the data's share of the bin times "
            f"the run's rate among its outputs in the bin (0 where it has none); coverage is the "
            f"data's share in the bins the run reaches. Writing shorter texts than the data "
            f"cannot raise it.")


def run_score(args):
    """Score every gens file against the refs; write results.json, results.md and PRIMARY.svg."""
    t0, metrics = time.time(), tasks.METRICS[args.task]
    refs, paths = data.read_jsonl(args.refs), parse_named(args.gens, "--gens")
    if not refs or not all(isinstance(r.get(k), str) or isinstance(r.get(k + "_ids"), list)
                           for r in refs for k in ("prompt", "response")):
        raise common.UserError(f"{args.refs}: need records with string 'prompt' and 'response' "
                             f"(or lists 'prompt_ids' and 'response_ids')")

    if (args.task == "text") != bool(args.judge):
        raise common.UserError("--judge (an AR checkpoint) is needed with --task text, and only "
                             "there")
    gens = {}  # a file decoded with several settings is one run per setting: NAME:SETTING
    for name, path in paths.items():
        settings = load_gens(name, path, len(refs), need_text=args.task != "text")
        gens.update({name if len(settings) == 1 else f"{name}:{k}": g for k, g in settings.items()})
    rates, idx, notes = shared_prompts(gens)  # the notes head results.md, which is printed too
    baseline = args.baseline or tables.arm_of(next(iter(gens)))  # default: the first arm
    if baseline not in map(tables.arm_of, gens):
        raise common.UserError(f"--baseline {baseline!r} is none of the arms "
                             f"{list(dict.fromkeys(map(tables.arm_of, gens)))}")
    primary = None
    if args.primary:
        arm, rate = args.primary
        if arm not in map(tables.arm_of, gens) or f"{float(rate):g}" not in rates:
            raise common.UserError(f"--primary {arm} {rate}: no such arm, or no such shift rate")
        primary = {"arm": arm, "rate": f"{float(rate):g}"}
    if args.primary_metric is not None:  # the declared primary first: tables, plot, choose
        if args.primary_metric not in metrics:
            raise common.UserError(f"--primary-metric {args.primary_metric}: the {args.task} "
                                   f"task's metrics are {', '.join(metrics)}")
        metrics = (args.primary_metric, *(m for m in metrics if m != args.primary_metric))
    res = {"task": args.task, "primary": metrics[0], "metrics": list(metrics),
           "primary_comparison": primary, "names": list(gens), "baseline": baseline,
           "rates": rates, "n_prompts": len(idx), "prompt_indices": idx,
           "notes": notes, "judge": None}
    metric_fn = {"copy": tasks.copy_metrics, "grammar": tasks.grammar_metrics}.get(args.task)
    if args.task == "text":
        ckpt = common.load_checkpoint(args.judge)
        judge = common.model_from_checkpoint(ckpt, device=common.pick_device(args.device))
        if not judge.cfg.causal:  # judge_nll needs exact left-to-right probabilities
            raise common.UserError(f"the judge {args.judge!r} is not an autoregressive checkpoint")
        res["judge"] = {"ckpt": args.judge, "step": ckpt.get("step"),
                        "meta": common.checkpoint_meta(ckpt)}
        vocab = data.vocab_of(ckpt)  # the judge's ids: every prompt and output is read in them
        metric_fn = functools.partial(tasks.text_metrics, judge, vocab)
    # the true responses, scored alike: the quality (and the length) a model could aim for
    true = {i: {"output": refs[i].get("response") or "", "output_ids": refs[i].get("response_ids"),
                "n_committed": 0, "n_shifted": 0} for i in idx}
    res["reference"] = score_run(metric_fn, metrics, refs, true, idx, args.task)
    ref_lengths = res["reference"]["per_example"].get("length")
    res["runs"] = runs = {name: {r: score_run(metric_fn, metrics, refs, g[r], idx, args.task,
                                              ref_lengths) for r in rates}
                          for name, g in gens.items()}
    res["arms"] = arms = stats.group_seeds(runs, metrics)
    pool_whole(arms, runs)
    length_notes(res, args.task, ref_lengths)
    res.update(stats.comparisons(arms, baseline, rates, metrics, args.n_boot, args.seed))
    # everything needed to rerun (or distrust) the numbers travels with them
    res["settings"] = {**vars(args), "gens": paths, "torch": torch.__version__,
                       "numpy": np.__version__,
                       "python": platform.python_version(), "wall_seconds": time.time() - t0}
    m, ref = metrics[0], res.get("reference")
    series = {name: [(float(r), arms[name][r]["summary"][m]) for r in rates] for name in arms}
    svg = tables.svg_plot(series,
                   f"{args.task}: {m} under the shift probe", "nominal shift rate", m,
                   hline=("true responses", ref["summary"][m]) if ref else None)
    files = {"results.json": tables.json_text(res),
             "results.md": tables.markdown_report(res, tasks.BETTER), f"{m}.svg": svg}
    print(files["results.md"] + "wrote " + ", ".join(tables.write_files(args.out_dir, files)))
    return res


# ----------------------------------------------------------------------------------------------
# `choose`: the decoder, fixed on validation prompts before any test prompt is decoded. The rule
# is declared here, not picked after the fact: among the settings of a validation score (names
# ARM:SETTING), the one whose primary metric, averaged over the fine-tuned arms (each arm the
# mean of its seeds, every arm weighted alike) and over the file's shift rates, is best; a tie
# goes to the setting listed first. The primary is the one the score declares (grammar's
# parses_std: a decoder that makes the models write shorter texts is not chosen for it).

SETTING_FLAGS = ("--slack-rule", "--per-step", "--block-length")  # the parts of "plain/1/16"


def run_choose(args):
    """Write choice.json (the setting, its flags, every candidate's value) and flags.txt (the
    flags on one line, for a script to pass to decode.py)."""
    try:
        res = json.load(open(args.scores, encoding="utf-8"))
        metric, lower = res["primary"], tasks.BETTER.get(res["primary"]) == tasks.LOWER
        values = {}  # {setting: [mean over seeds of one arm at one rate, ...]}
        for name, by_rate in res["arms"].items():
            arm, _, setting = name.partition(":")
            if not setting:
                raise common.UserError(f"{args.scores}: arm {name!r} carries no setting")
            if arm not in args.exclude:
                values.setdefault(setting, []).extend(c["summary"][metric]
                                                      for c in by_rate.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise common.UserError(f"{args.scores}: not a validation score of decode.py settings "
                             f"({type(e).__name__}: {e})")
    if not values:
        raise common.UserError(f"{args.scores}: no arm left to choose with")
    means = {s: float(np.nanmean(v)) for s, v in values.items()}
    best = (min if lower else max)(means, key=means.get)  # the first of equal values wins
    parts = best.split("/")
    flags = " ".join(f"{f} {v}" for f, v in zip(SETTING_FLAGS, parts) if v != "all")
    choice = {"setting": best, "flags": flags, "metric": metric, "scores": args.scores,
              "rates": res["rates"], "excluded": args.exclude, "candidates": means}
    rows = [[s, tables.num(m)] for s, m in means.items()]
    md = [f"# The decoder chosen on validation: {best}", "",
          f"mean {metric} over the arms (but {', '.join(args.exclude)}) and rates "
          f"{', '.join(res['rates'])}", "", tables.table(["setting", metric], rows), ""]
    files = {"choice.json": tables.json_text(choice), "choice.md": "\n".join(md) + "\n",
             "flags.txt": flags + "\n"}
    print(files["choice.md"] + "wrote " + ", ".join(tables.write_files(args.out_dir, files)))
    return choice


# ----------------------------------------------------------------------------------------------
# `curves`: the validation curves of several training runs side by side. train.py logs a record
# per validation step, on the same held-out canvases in every run, so equal steps compare directly.


def run_curves(args):
    """curves.md (a table per key: names x steps), curves.json and KEY.svg for each key."""
    logs = parse_named(args.logs, "--logs")
    # records without an integer step (training-loss lines, notes) are not validation points
    recs = {name: [r for r in data.read_jsonl(path) if type(r.get("step")) is int]
            for name, path in logs.items()}
    seen = [k for rs in recs.values() for r in rs for k in r if k.startswith("val_")]
    keys = args.keys or list(dict.fromkeys(seen))  # in order of first appearance
    if not keys:
        raise common.UserError("the logs hold no val_* keys; name the keys to tabulate with --keys")
    curves, md, files = {}, ["# Validation curves", ""], {}
    for key in keys:
        # the last value per step wins: a resumed run logs the steps after its checkpoint again
        per = {name: sorted({r["step"]: float(r[key]) for r in rs
                             if isinstance(r.get(key), (int, float))}.items())
               for name, rs in recs.items()}
        curves[key] = {name: pts for name, pts in per.items() if pts}  # a run may lack a key
        if not curves[key]:
            raise common.UserError(f"no log has values for the key {key!r}")
        steps = sorted({s for pts in curves[key].values() for s, _ in pts})
        rows = [[name] + [tables.num(dict(pts).get(s, stats.NAN), 4) for s in steps]
                for name, pts in per.items()]
        md += [f"## {key}", "", tables.table(["name", *steps], rows), ""]  # n/a: not logged
        # the file is named after the key, never after a run name (names may hold "/")
        svg = tables.svg_plot(curves[key], key, "step", key)
        files[re.sub(r"[^\w.-]", "_", key) + ".svg"] = svg
    files["curves.md"] = "\n".join(md) + "\n"
    files["curves.json"] = tables.json_text({"logs": logs, "keys": keys, "curves": curves})
    print(files["curves.md"] + "wrote " + ", ".join(tables.write_files(args.out_dir, files)))
    return curves


# ----------------------------------------------------------------------------------------------
# `lengths`: does a model know when a text must end? A grammar text of 1-3 sentences is at most
# --max-bytes long, so after a first sentence of L bytes the data ends the text with probability
# P(end | L), which reaches 1 once no second sentence fits. Each model reads the first sentence,
# visible, with the rest of the canvas MASK, and its P(EOS) right after the sentence is set
# against P(end | L). A model that tracks where it is on the canvas follows the data's curve.


def run_lengths(args):
    """lengths.json and lengths.md: per first-sentence length, the data's P(end) and each arm's
    (checkpoints named ARM@SEED pooled by their mean)."""
    refs = data.read_jsonl(args.refs)
    texts = [r["prompt"] + r["response"] for r in refs]
    curves = {}
    for path in args.ckpts:
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        ckpt = common.load_checkpoint(path)
        model = common.model_from_checkpoint(ckpt)
        curves[name] = tasks.end_probability(model, texts, model.cfg.seq_len,
                                             start=common.checkpoint_meta(ckpt)["bos"])
    arms = {}
    for name, c in curves.items():
        arms.setdefault(tables.arm_of(name), []).append(c)
    first = next(iter(curves.values()))
    lengths = [L for L, (n, _, _) in first.items() if n >= args.min_count]
    rows = [[L, first[L][0], tables.num(first[L][1])] + [tables.num(np.mean([c[L][2] for c in cs]))
                                                  for cs in arms.values()] for L in lengths]
    md = ["# P(end) after a first sentence of L bytes: the data, and each arm's P(EOS)", ""]
    md += [tables.table(["L", "texts", "data", *arms], rows), ""]
    files = {"lengths.md": "\n".join(md) + "\n",
             "lengths.json": tables.json_text({"refs": args.refs, "min_count": args.min_count,
                                        "curves": curves})}
    print(files["lengths.md"] + "wrote " + ", ".join(tables.write_files(args.out_dir, files)))


# ----------------------------------------------------------------------------------------------
# Command line: one subcommand per job above; `evaluate.py MODE --help` lists its flags.

DATA_HELP = "text or token file whose last 5%% is held out (default: the default corpus)"
TASK_FLAGS = {  # (flag, type, default, help) of each task beyond the common ones
    "copy": [("--min-len", int, 8, "shortest string to copy"),
             ("--max-len", int, 8, "longest one")],
    "grammar": [("--prompt-words", int, 1, "words of each text given as the prompt; 0: an empty "
                 "prompt (unconditional generation)"),
                ("--max-bytes", int, None, "longest prompt + response in bytes, None = no limit"),
                ("--min-bytes", int, 0, "shortest prompt + response in bytes"),
                ("--min-sentences", int, 1, "fewest sentences per text"),
                ("--max-sentences", int, 3, "most sentences per text")],
    "text": [("--data", str, None, DATA_HELP),
             ("--vocab-size", int, None, "ordinary ids of a .bin file without .json"),
             ("--prompt-len", int, 32, "tokens (bytes) per prompt"),
             ("--length", int, 96, "bytes of the true continuation after each prompt")],
}


def build_parser():
    """The subcommands and their flags."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    kinds = sub.add_parser("task", help="write a task's examples").add_subparsers(dest="task",
                                                                                  required=True)
    for name, flags in TASK_FLAGS.items():
        a = kinds.add_parser(name, help=f"the {name} task").add_argument
        a("--out-dir", required=True, help="folder for train.jsonl, test.jsonl and task.json")
        n_test = 128 if name == "text" else 512  # text prompts are long: fewer, decoded more slowly
        a("--n-test", type=int, default=n_test, help=f"test examples (default: {n_test})")
        if name != "text":  # text prompts are evenly spaced held-out offsets: no seed, no train set
            a("--n-train", type=int, default=20000, help="training examples (default: 20000)")
            a("--n-val", type=int, default=128,
              help="validation examples drawn, for choosing settings (default: 128)")
            a("--seed", type=int, default=1337,
              help="seed of train; test uses seed + 3, validation seed + 2, the earlier test "
                   "prompts (test-old) seed + 1 (default: 1337)")
        for flag, typ, default, text in flags:
            a(flag, type=typ, default=default, help=f"{text} (default: {default})")
    a = sub.add_parser("bpb", help="held-out bits per byte of checkpoints").add_argument
    a("--ckpts", nargs="+", required=True, help="checkpoints written by train.py")
    a("--data", default=None, help="text or token file whose last 5%% is held out (default: "
      "the corpus each checkpoint was trained on)")
    a("--vocab-size", type=int, default=None, help="ordinary ids of a .bin file without .json "
      "(default: the checkpoint's)")
    a("--seq-len", type=int, default=None,
      help="window length in tokens (default: each model's canvas)")
    a("--t-samples", type=int, default=8, help="draws of t per window, MDLM only (default: 8)")
    a("--max-batches", type=int, default=16, help="cap on batches, 0 = all (default: 16)")
    a("--eval-batch-size", type=int, default=32, help="windows per batch (default: 32)")
    a("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    a("--seed", type=int, default=1337, help="seed of t and of the masks (default: 1337)")
    a = sub.add_parser("score", help="score decode.py's outputs and compare them").add_argument
    a("--task", choices=tuple(tasks.METRICS), required=True, help="which task, so which metrics")
    a("--refs", required=True, help="the test.jsonl that `task` wrote")
    a("--gens", nargs="+", required=True, help="NAME=PATH per decode.py output (a name may hold /)")
    a("--baseline", default=None, help="the name every other is compared with (default: the first)")
    a("--primary", nargs=2, default=None, metavar=("ARM", "RATE"),
      help="the pre-declared primary comparison: ARM - baseline on the primary metric at shift "
           "rate RATE; every other comparison of the file is exploratory (default: none)")
    a("--primary-metric", default=None,
      help="the pre-declared primary metric, one of the task's (default: its first: "
           + ", ".join(f"{t} {m[0]}" for t, m in tasks.METRICS.items()) + ")")
    a("--judge", default=None,
      help="AR checkpoint (train.py --objective ar) that scores --task text")
    a("--n-boot", type=int, default=2000, help="bootstrap resamples per interval (default: 2000)")
    a("--seed", type=int, default=1337, help="seed of the bootstrap (default: 1337)")
    a("--device", default="auto", help="the judge's device: cpu, cuda, mps or auto (default: auto)")
    a("--out-dir", required=True, help="folder for results.json, results.md and PRIMARY.svg")
    a = sub.add_parser("choose", help="the decoder setting chosen on validation").add_argument
    a("--scores", required=True, help="results.json of `score` on validation prompts, its names "
      "ARM:SETTING (decode.py with --slack-rules, --per-steps, --block-lengths)")
    a("--exclude", nargs="*", default=["pretrained"],
      help="arms left out of the average (default: pretrained)")
    a("--out-dir", required=True, help="folder for choice.json, choice.md and flags.txt")
    a = sub.add_parser("curves", help="validation curves of training runs").add_argument
    a("--logs", nargs="+", required=True, help="NAME=PATH of each run's log.jsonl")
    a("--keys", nargs="+", default=None,
      help="keys to tabulate and plot (default: every val_* key)")
    a("--out-dir", required=True, help="folder for curves.md, curves.json and KEY.svg")
    a = sub.add_parser("lengths", help="does a model know when a text must end?").add_argument
    a("--ckpts", nargs="+", required=True, help="checkpoints, named by their folders (ARM@SEED)")
    a("--refs", required=True, help="grammar texts (train.jsonl of `task grammar`)")
    a("--min-count", type=int, default=50, help="skip lengths of fewer texts (default: 50)")
    a("--out-dir", required=True, help="folder for lengths.md and lengths.json")
    return p


def main(argv=None):
    """Parse argv and run the chosen subcommand; returns the exit status (1 with a one-line
    error)."""
    args = build_parser().parse_args(argv)
    try:
        run = {"task": run_task, "bpb": run_bpb, "score": run_score, "curves": run_curves,
               "lengths": run_lengths, "choose": run_choose}
        run[args.mode](args)
    except (common.UserError, common.CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)  # an expected failure: a message, no traceback
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
