"""
Sample from a trained checkpoint: masked diffusion (MDLM) models fill a canvas of MASKs, causal (AR)
checkpoints decode left to right. Optionally displaces freshly committed tokens by one position
(the shift probe) to measure how much a model suffers from tokens that land one slot off.

    python decode.py --ckpt out-ctc/ckpt.pt --prompt "The list type" --length 128 --steps 128
    python decode.py --ckpt out-ctc/ckpt.pt --sampler confidence --block-length 32 --temperature 0
    python decode.py --ckpt out-ctc/ckpt.pt --shift-rate 0.02 --num-samples 8 --json
    python decode.py --ckpt out-ctc/ckpt.pt --length 32 --steps 32 --show-steps    # watch it fill
    python decode.py --ckpt out-ar/ckpt.pt --prompt "The list type"                 # AR twin
    python decode.py --ckpt tok/ckpt.pt --prompt-ids 464 1351 2099  # a token model, no tokenizer
    # a prompts file (JSON lines {"prompt": ...}) at several probe rates -> one JSON line each
    python decode.py --ckpt out-ctc/ckpt.pt --prompts task/test.jsonl --out gens.jsonl \\
        --sampler confidence --block-length 16 --per-step 2 --shift-rates 0 0.01 0.05
    # several checkpoints, slack rules and positions per step in one go -> gens/ce/ckpt... files
    python decode.py --ckpt out-ce/ckpt.pt out-ctc/ckpt.pt --prompts task/val.jsonl --out gens \\
        --sampler confidence --slack-rules plain last --per-steps 1 2

The model config, noise schedule, vocabulary, whether SLACK may be sampled and the collapse map
are read from the checkpoint, so no flag repeats them. --slack-rule picks when the confidence
sampler commits slack; its default for slack-trained checkpoints is LLaDA's plain rule
(DEFAULT_SLACK_RULE), and the experiments choose theirs on validation prompts. The samplers
themselves live in sampling.py (`generate`, `generate_ar`, `shift_probe`); this script is their
command line.

Papers: Sahoo et al. 2024, MDLM (arXiv 2406.07524): ancestral sampling and its cache; Nie et al.
2025, LLaDA (arXiv 2502.09992): low-confidence remasking in semi-autoregressive blocks; Ye et al.
2026 (arXiv 2601.22947): the `<slack>` token, the collapse map of the output, the shift probe.
"""

import argparse
import dataclasses
import itertools
import json
import os
import sys

import torch
from tqdm import tqdm

import common
import ctc_slack
import data
import sampling

# the slack rule of slack-trained checkpoints when none is asked for: LLaDA's, which treats slack
# as any other token; the experiment scripts choose theirs on validation prompts (evaluate.py
# choose), since which rule suits a model is a question of its task and training
DEFAULT_SLACK_RULE = "plain"

# ----------------------------------------------------------------------------------------------
# Settings


def parse_args(argv=None):
    """The command line. --length and --steps default to None, not a number: both depend on the
    prompt's length and the model's canvas, known only once the checkpoint is loaded (see plan)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--ckpt", nargs="+", required=True,
      help="checkpoint written by train.py; several, with --prompts: each is decoded into "
           "--out/NAME.jsonl, NAME the name of the checkpoint's folder")
    a("--prompt", default="", help="text the canvas starts with, kept fixed (default: empty)")
    a("--prompt-ids", type=int, nargs="+", default=None,
      help="the prompt as token ids instead of text (a token model without its tokenizer here)")
    a("--prompts", default=None,
      help="JSON lines {'prompt': text} or {'prompt_ids': [...]}: decode each (with --out)")
    a("--out", default=None, help="with --prompts: one JSON line per prompt and setting here "
      "(a folder, FOLDER/NAME.jsonl per checkpoint, when there are several checkpoints, when it "
      "ends with / or is a folder already)")
    a("--length", type=int, default=None,
      help="positions to generate (default: the rest of the model's canvas after the prompt)")
    a("--steps", type=int, default=None,
      help="denoising steps in total (default: length / --per-step, rounded up to whole blocks)")
    a("--per-step", type=int, default=1,
      help="positions committed per step when --steps is unset (default: 1)")
    a("--sampler", choices=sampling.SAMPLERS, default="ancestral",
      help="MDLM ancestral sampling or LLaDA low-confidence remasking (default: ancestral); "
           "AR checkpoints always decode left to right")
    a("--block-length", type=int, default=None,
      help="semi-autoregressive blocks of this many positions, decoded left to right (the last "
           "may be shorter); the number of blocks must divide --steps (default: one block)")
    a("--slack-rule", choices=("auto",) + sampling.SLACK_RULES, default="auto",
      help="confidence sampler: when a slack proposal may be committed; plain (LLaDA's rule: like "
           "any token), last (after every real token of the block), threshold (last, unless its "
           "probability >= --slack-threshold), first (before every real token); auto: "
           f"{DEFAULT_SLACK_RULE} for slack-trained checkpoints, plain otherwise (default: auto)")
    a("--slack-rules", choices=("auto",) + sampling.SLACK_RULES, nargs="+", default=None,
      help="with --prompts: decode every prompt with each of these rules (default: --slack-rule)")
    a("--per-steps", type=int, nargs="+", default=None,
      help="with --prompts: decode every prompt with each of these --per-step values")
    a("--block-lengths", type=int, nargs="+", default=None,
      help="with --prompts: decode every prompt with each of these --block-length values")
    a("--slack-threshold", type=float, default=0.9,
      help="the probability above which --slack-rule threshold commits slack early (default: 0.9)")
    a("--temperature", type=float, default=1.0,
      help="sampling temperature; 0 = greedy (default: 1)")
    a("--num-samples", type=int, default=1,
      help="samples of --prompt, drawn as one batch (default: 1)")
    a("--batch-size", type=int, default=64,
      help="prompts decoded at once with --prompts (default: 64)")
    a("--seed", type=int, default=0, help="seed of the sampling random stream (default: 0)")
    a("--device", default="auto", help="cuda, mps, cpu, or auto (first available; default: auto)")
    a("--shift-rate", type=float, default=0.0,
      help="shift probe: probability that a freshly committed token moves one position "
           "(default: 0)")
    a("--shift-rates", type=float, nargs="+", default=None,
      help="with --prompts: decode every prompt at each of these probe rates "
           "(default: --shift-rate)")
    a("--json", action="store_true", help="print one JSON object per sample instead of text")
    a("--show-canvas", action="store_true",
      help="also print the raw final canvas (· SLACK, □ MASK, ⏎ EOS)")
    a("--show-steps", action="store_true", help="print the raw canvas after every step")
    a("--no-progress", action="store_true", help="no tqdm bar while decoding a prompts file")
    a("--no-cache", action="store_true",
      help="call the network at every step, even if nothing changed (to see that the cache "
           "changes nothing but the time)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Checking a request before any work. Every value that cannot work is one line and exit code 1.


def check_args(args):
    """Refuse flag values that cannot work, before a model is loaded; returns the probe rates."""
    if args.num_samples < 1 or args.batch_size < 1 or min(args.per_steps or [args.per_step]) < 1:
        raise common.UserError("--num-samples, --batch-size and --per-step must be at least 1")
    if min(args.block_lengths or [args.block_length or 1]) < 1:
        raise common.UserError("--block-length must be at least 1")
    rates = args.shift_rates if args.shift_rates is not None else [args.shift_rate]
    if not all(0.0 <= r <= 1.0 for r in rates):
        raise common.UserError(f"shift rates must be in [0, 1], got {rates}")
    # checked before decoding: a missing --out would be noticed only after every prompt was done
    if (args.prompts is None) != (args.out is None):
        raise common.UserError("--prompts and --out go together: decode a file of prompts into a "
                             "file")
    sweeps = [f for f in ("shift_rates", "slack_rules", "per_steps", "block_lengths")
              if getattr(args, f)]
    if sweeps and args.prompts is None:
        raise common.UserError(f"--{sweeps[0].replace('_', '-')} needs --prompts/--out; for one "
                             f"prompt use --{sweeps[0][:-1].replace('_', '-')}")
    if len(args.ckpt) > 1 and args.prompts is None:
        raise common.UserError("several checkpoints need --prompts and an --out folder")
    if args.prompt_ids is not None and args.prompt:
        raise common.UserError("give --prompt (text) or --prompt-ids, not both")
    try:  # command-line bytes that are not UTF-8 arrive as lone surrogates
        args.prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        raise common.UserError(f"--prompt is not valid UTF-8 text (byte {e.start}); pass UTF-8")
    return rates


@dataclasses.dataclass(frozen=True)
class Decoding:
    """One decoding setting: the flags that shape a canvas's decoding (one per sweep value)."""
    sampler: str
    length: object  # positions to fill, or None: the rest of the model's canvas
    steps: object  # denoising steps, or None: from per_step
    per_step: int
    block_length: object  # None: one block
    temperature: float
    slack_rule: str
    slack_threshold: float
    use_cache: bool = True
    record_steps: bool = False


def decoding_of(args):
    """The Decoding the flags ask for (before the sweeps vary it)."""
    return Decoding(args.sampler, args.length, args.steps, args.per_step, args.block_length,
                    args.temperature, args.slack_rule, args.slack_threshold, not args.no_cache,
                    args.show_steps)


def plan(model, P, d):
    """(length, steps) of a canvas with a prompt of P tokens. The length fills the model's canvas
    unless d.length is given; the steps commit d.per_step positions each, in whole blocks."""
    L = d.length if d.length is not None else model.cfg.seq_len - P  # P + L <= seq_len
    if d.steps is not None:
        steps = d.steps
    else:
        # -(-a // b) = ceil(a / b) in integers; the last block may be shorter, so steps are
        # planned for the longest one and every block gets the same number of steps
        n_blocks = -(-L // d.block_length) if d.block_length else 1
        block = -(-L // n_blocks)  # the longest block
        steps = n_blocks * max(1, -(-block // d.per_step))  # ceil(block / per_step) per block
    # an MDLM request is checked as the sampler will check it (blocks must divide the steps); an
    # AR model has no steps or blocks, only its canvas to fit
    if not model.cfg.causal:
        sampling.check_request(P, L, steps, d.sampler, d.block_length, model.cfg.seq_len,
                               d.temperature, d.slack_rule, d.slack_threshold)
    elif P + L > model.cfg.seq_len or L < 1:
        raise ValueError(f"prompt ({P}) + length ({L}) must fit the model's {model.cfg.seq_len} "
                         f"positions")
    return L, steps


# ----------------------------------------------------------------------------------------------
# Decoding a batch of prompts of one length


def run_batch(model, meta, prompt, d, rate, gen):
    """Decode prompt (B, P) with setting d at probe rate `rate`; -> the sampler's dict (canvas,
    counts)."""
    B, P = prompt.shape  # all B rows share one prompt length P
    L, steps = plan(model, P, d)
    if model.cfg.causal:  # the AR twin: no canvas, no probe
        out = sampling.generate_ar(model, prompt, L, temperature=d.temperature, generator=gen)
        # every position committed once, none moved: the counts the MDLM sampler reports, so the
        # printer and the file writer need no AR special case
        out["n_committed"], out["n_shifted"] = torch.full((B,), L), torch.zeros(B, dtype=torch.long)
        return out
    # gen is advanced by the call: the next batch of a group continues the stream, never repeats
    return sampling.generate(model, prompt, L, steps=steps, sampler=d.sampler,
                             block_length=d.block_length, temperature=d.temperature,
                             schedule=meta["schedule"], allow_slack=bool(meta["slack"]),
                             slack_rule=d.slack_rule, slack_threshold=d.slack_threshold,
                             shift_rate=rate, generator=gen, record_steps=d.record_steps,
                             use_cache=d.use_cache)


def output_record(canvas_row, P, meta, vocab, causal):
    """(output ids, output text or None) of one canvas row, read out as a porter reads it
    (ctc_slack.read_outputs): a slack-trained MDLM's canvas through its collapse map, any other
    through the surface map, which deletes only slack and a model that never samples slack has
    none (the standard map would merge an AR twin's doubled letters); the text only where the
    vocabulary's tokenizer is at hand."""
    eos, slack, mask = vocab.specials
    collapse = meta["collapse"] if meta["slack"] and not causal else "surface"
    ids = ctc_slack.read_outputs([canvas_row], prompt_lengths=P, slack_id=slack, eos_id=eos,
                                 mask_id=mask, collapse=collapse)[0]
    return ids, vocab.decode(ids)


def read_prompts(path, vocab):
    """The prompts of a JSON-lines file as (records, lists of ids): ids as given, or text through
    the vocabulary's tokenizer."""
    recs = data.read_jsonl(path)  # [{'prompt': ...}, ...] in file order
    prompts = []
    for n, r in enumerate(recs, 1):
        # ids first: text cut from a tokenized corpus need not encode back to the same ids
        if isinstance(r.get("prompt_ids"), list) and all(type(i) is int for i in r["prompt_ids"]):
            data.check_ids(torch.tensor(r["prompt_ids"] + [0]), vocab, f"{path}:{n}")
            prompts.append(r["prompt_ids"])
        elif isinstance(r.get("prompt"), str):
            prompts.append(vocab.encode(r["prompt"], f"{path}:{n}"))
        else:
            raise common.UserError(f"{path}:{n}: need a string 'prompt' or a list 'prompt_ids'")
    return recs, prompts


def decode_file(model, meta, vocab, args, rates, device, out_path):
    """Every prompt of --prompts at every setting (slack rule x positions per step x block length
    x probe rate) -> JSON lines in out_path. Prompts of equal length share a batch (a canvas is
    rectangular); each group is seeded with seed + P, so every model, setting and rate sees the
    same random stream for a prompt (with temperature 0 the committed positions and the probe's
    moves then match across models, and comparisons are paired). A checkpoint that never samples
    slack decodes alike under every slack rule (no proposal is ever slack, so no rule reorders
    anything): it is decoded once per setting of the other flags, and recorded under each rule."""
    recs, prompts = read_prompts(args.prompts, vocab)
    prompts = [data.with_start(p, meta["bos"], vocab) for p in prompts]  # read after it
    settings = [(resolve_rule(rule, meta), ps, bl)
                for rule in args.slack_rules or [args.slack_rule]
                for ps in args.per_steps or [args.per_step]
                for bl in args.block_lengths or [args.block_length]]
    out_recs, done = [], {}  # done: decoded outputs by everything but a rule that cannot matter
    groups = sorted({len(p) for p in prompts})  # one batch shape per prompt length
    bar = tqdm(total=len(prompts) * len(rates) * len(settings), desc="decode", leave=False,
               disable=args.no_progress)
    for (rule, ps, bl), rate, P in itertools.product(settings, rates, groups):
        d = dataclasses.replace(decoding_of(args), slack_rule=rule, per_step=ps, block_length=bl)
        idx = [i for i, p in enumerate(prompts) if len(p) == P]  # file order within the group
        key = (rule if meta["slack"] else None, ps, bl, rate, P)
        if key not in done:
            done[key] = decode_group(model, meta, vocab, [prompts[i] for i in idx], d, rate,
                                     args.seed + P, args.batch_size, device)
        for i, (ids, text, n_c, n_s) in zip(idx, done[key]):
            out_recs.append({"i": i, "prompt": recs[i].get("prompt"), "output": text,
                             "output_ids": ids, "rate": rate, "slack_rule": rule,
                             "per_step": ps, "block_length": bl, "n_committed": n_c,
                             "n_shifted": n_s})
        bar.update(len(idx))
    bar.close()
    data.write_jsonl(out_path, out_recs)
    # pooled over prompts as total moves / total commits (not a mean of per-prompt fractions),
    # the realised rate evaluate.py reports; max(1, .) keeps an empty file from dividing by zero
    moved, committed = (sum(r[k] for r in out_recs) for k in ("n_shifted", "n_committed"))
    print(f"{len(out_recs)} outputs ({len(prompts)} prompts x {len(rates)} rates x "
          f"{len(settings)} settings) -> {out_path}; realised shift fraction over all rates "
          f"{moved / max(1, committed):.4f}")


def decode_group(model, meta, vocab, prompts, d, rate, seed, batch_size, device):
    """[(output ids, text, commits, moves)] of prompts that all have P tokens, in batches of
    batch_size, from one generator seeded with seed (CPU: the same stream on any device)."""
    gen, P, out = torch.Generator().manual_seed(seed), len(prompts[0]), []
    for s in range(0, len(prompts), batch_size):
        part = prompts[s:s + batch_size]
        prompt = torch.tensor(part, dtype=torch.long).view(len(part), P).to(device)
        res = run_batch(model, meta, prompt, d, rate, gen)
        for b in range(len(part)):
            ids, text = output_record(res["canvas"][b].tolist(), P, meta, vocab, model.cfg.causal)
            # plain ints: JSON
            out.append((ids, text, int(res["n_committed"][b]), int(res["n_shifted"][b])))
    return out


def resolve_rule(rule, meta):
    """--slack-rule auto: the default for slack-trained checkpoints, LLaDA's plain rule for the
    rest (they never propose slack, so every rule decodes them alike)."""
    return (DEFAULT_SLACK_RULE if meta["slack"] else "plain") if rule == "auto" else rule


# ----------------------------------------------------------------------------------------------
# Printing one prompt's samples. The raw canvas view keeps SLACK and MASK visible.


def render_canvas(row, prompt_len, vocab=data.Vocab()):
    """The raw canvas as one printable line: "·" SLACK, "□" MASK, "⏎" EOS; for bytes, printable
    ASCII as is, "↵" newline, other bytes as \\xNN (so multi-byte UTF-8 shows as escapes); for a
    token vocabulary, each token's text in brackets (or its id); "▸" ends the prompt."""
    eos, slack, mask = vocab.specials
    glyphs = {slack: "·", mask: "□", eos: "⏎"}
    if vocab.tokenizer == "bytes":
        glyphs[ord("\n")] = "↵"

    def show(i):
        if i in glyphs:
            return glyphs[i]
        if vocab.tokenizer == "bytes":
            return chr(i) if 32 <= i < 127 else f"\\x{i:02x}"
        return f"[{vocab.decode([i]) if vocab.has_text() else i}]"
    ids = [int(i) for i in row]  # a tensor row or a list, as ints
    return "".join(map(show, ids[:prompt_len])) + "▸" + "".join(map(show, ids[prompt_len:]))


def print_samples(out, args, P, meta, vocab, causal):
    """Text (or JSON lines) of each sample; with --show-steps / --show-canvas the raw canvases."""
    for b in range(args.num_samples):
        row = out["canvas"][b].cpu()  # (P + L,) the raw canvas
        ids, text = output_record(row.tolist(), P, meta, vocab, causal)
        shown = text if text is not None else " ".join(map(str, ids))  # ids without a tokenizer
        n_c, n_s = int(out["n_committed"][b]), int(out["n_shifted"][b])  # commits, moves
        if args.json:
            print(json.dumps({
                "sample": b, "prompt": args.prompt, "text": text, "ids": ids,
                "n_committed": n_c, "n_shifted": n_s, "shift_fraction": n_s / max(n_c, 1),
                "model_calls": out["model_calls"], "sampler": "ar" if causal else args.sampler,
                "temperature": args.temperature, "shift_rate": args.shift_rate, "seed": args.seed,
                "canvas": render_canvas(row, P, vocab) if args.show_canvas else None,
            }, ensure_ascii=False))
            continue
        print(f"--- sample {b}: {n_c} committed, {n_s} shifted, {out['model_calls']} model calls")
        for k, step_canvas in enumerate(out.get("history", [])):  # empty unless --show-steps
            print(f"step {k + 1:4d} {render_canvas(step_canvas[b], P, vocab)}")
        if args.show_canvas:
            print("canvas:", render_canvas(row, P, vocab))
        print(args.prompt + shown)  # the prompt as typed, then the output


def load(path, device):
    """(model, meta, vocab) of a checkpoint: its EMA weights in eval mode, how it was trained."""
    ckpt = common.load_checkpoint(path, map_location="cpu")
    model = common.model_from_checkpoint(ckpt, device=device)
    return model, common.checkpoint_meta(ckpt), data.vocab_of(ckpt)


def main(argv=None):
    """Decode --prompt (or every line of --prompts) and print or write the result; returns the
    exit status: 0, or 1 with a one-line message for anything the user can fix (no traceback)."""
    args = parse_args(argv)
    try:
        rates = check_args(args)
        device = common.pick_device(args.device)
        if args.prompts:
            for path in args.ckpt:  # several: each into --out/NAME.jsonl
                model, meta, vocab = load(path, device)
                # an AR model commits one token at the end of its sequence: there is no masked
                # neighbour to move it into, so a nonzero probe rate would measure nothing
                if model.cfg.causal and max(rates) > 0:
                    raise common.UserError("the shift probe needs a masked diffusion checkpoint")
                name = os.path.basename(os.path.dirname(os.path.abspath(path)))
                folder = len(args.ckpt) > 1 or args.out.endswith("/") or os.path.isdir(args.out)
                out = os.path.join(args.out, f"{name}.jsonl") if folder else args.out
                decode_file(model, meta, vocab, args, rates, device, out)
            return 0
        model, meta, vocab = load(args.ckpt[0], device)
        if model.cfg.causal and args.shift_rate > 0:
            raise common.UserError("the shift probe needs a masked diffusion checkpoint")
        args.slack_rule = resolve_rule(args.slack_rule, meta)
        ids = args.prompt_ids if args.prompt_ids is not None else vocab.encode(args.prompt,
                                                                               "--prompt")
        data.check_ids(torch.tensor(ids + [0]), vocab, "--prompt-ids")
        ids = data.with_start(ids, meta["bos"], vocab)
        prompt = torch.tensor([ids] * args.num_samples, dtype=torch.long)
        gen = torch.Generator().manual_seed(args.seed)  # CPU stream: the same samples anywhere
        out = run_batch(model, meta, prompt.view(args.num_samples, len(ids)).to(device),
                        decoding_of(args), args.shift_rate, gen)
    except (common.UserError, common.CheckpointError, ValueError) as e:
        # one line: torch's own unpickling messages run over many lines, the first says enough
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    print_samples(out, args, len(ids), meta, vocab, model.cfg.causal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
