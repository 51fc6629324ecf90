"""
Sample text from a trained checkpoint: masked diffusion (MDLM) models fill a canvas of MASKs, causal
(AR) checkpoints decode left to right. Optionally displaces freshly committed tokens by one position
(the shift probe) to measure how much a model suffers from tokens that land one slot off.

    python decode.py --ckpt out-ctc/ckpt.pt --prompt "The list type" --length 128 --steps 128
    python decode.py --ckpt out-ctc/ckpt.pt --sampler confidence --block-length 32 --temperature 0
    python decode.py --ckpt out-ctc/ckpt.pt --shift-rate 0.02 --num-samples 8 --json
    python decode.py --ckpt out-ctc/ckpt.pt --length 32 --steps 32 --show-steps    # watch it fill
    python decode.py --ckpt out/ckpt.pt --bench-cache --steps 1000 --length 128     # MDLM's cache
    python decode.py --ckpt out-ar/ckpt.pt --prompt "The list type"                 # AR twin

The model config, noise schedule, whether SLACK may be sampled and the collapse map are read from
the checkpoint, so no flag repeats them.

Papers:
- Sahoo et al. 2024, MDLM (arXiv 2406.07524): ancestral sampling from the SUBS reverse process and
  its cache, which skips the network when no token was unmasked in a step.
- Nie et al. 2025, LLaDA (arXiv 2502.09992): low-confidence remasking and semi-autoregressive blocks
  (their inference section), Gumbel-max sampling in float64.
- Zheng et al. 2024 (arXiv 2409.02908): why float32 Gumbel noise quietly lowers the temperature.
- Ye et al. 2026 (arXiv 2601.22947): the `<slack>` token, the collapse map applied to the output,
  and the shift probe (a committed token moved by one position).
"""

import argparse
import json
import statistics
import sys
import time

import torch
from tqdm import tqdm

import mdlm
from ctc_slack import collapse_tokens
from mdlm import EOS, MASK, SLACK

SAMPLERS = ("ancestral", "confidence")

# ----------------------------------------------------------------------------------------------
# Random draws. Every draw is made on the generator's own device (CPU for the command line) and
# then moved, so one seed gives the same samples on any accelerator, up to the network's numerics.


def _rand(shape, generator, device, dtype=torch.float32):
    """Uniform [0, 1) numbers of `shape` on `device`, drawn from `generator`."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def sample_tokens(log_p, temperature, generator):
    """One token per position from softmax(log_p / temperature); temperature 0 = argmax.

    Gumbel-max: argmax_v (log_p[v] / tau + g_v) with g = -log(-log u) is an exact sample from
    softmax(log_p / tau). In float32, u is truncated near 1, which cuts off the large-noise tail
    and acts like a lower temperature (Zheng et al. 2024), so the noise and the sum are float64,
    as in LLaDA's sampler. Banned tokens keep -inf and are never chosen.
    log_p (B, T, V) -> (B, T) ids
    """
    if temperature == 0:
        return log_p.argmax(dim=-1)
    u = _rand(log_p.shape, generator, "cpu", torch.float64).clamp_(min=1e-300)  # (B, T, V)
    work = log_p.cpu() if log_p.device.type == "mps" else log_p  # MPS has no float64
    g = -torch.log(-torch.log(u.to(work.device)))  # standard Gumbel noise
    return (work.double() / temperature + g).argmax(dim=-1).to(log_p.device)  # (B, T)


# ----------------------------------------------------------------------------------------------
# One step of each sampler. `region` (B, T) marks the positions this step may fill: still MASK
# and inside the block being decoded. Both return the proposed tokens and which of them to commit.


def ancestral_commit(log_p, region, j, n_steps, temperature, schedule, generator):
    """MDLM ancestral step j of n_steps, from time t = 1 - j/n to s = 1 - (j+1)/n.

    Under the reverse process q(z_s | z_t, x) a masked token stays masked with probability
    (1 - alpha(s)) / (1 - alpha(t)), otherwise it is unmasked to x ~ p(. | z_t), so

        P(unmask) = (alpha(s) - alpha(t)) / (1 - alpha(t))        (MDLM's reverse posterior)

    At the last step s = 0, alpha(s) = 1 and every remaining mask is filled.
    """
    t, s = torch.tensor(1.0 - j / n_steps), torch.tensor(1.0 - (j + 1) / n_steps)
    a_t, a_s = mdlm.alpha_t(t, schedule).item(), mdlm.alpha_t(s, schedule).item()
    p_unmask = 1.0 if j == n_steps - 1 else (a_s - a_t) / (1.0 - a_t)
    x = sample_tokens(log_p, temperature, generator)  # (B, T)
    # the coin is drawn even when p_unmask = 1 so the random stream does not depend on the step
    coin = _rand(region.shape, generator, region.device) < p_unmask  # (B, T)
    return x, region & coin


def confidence_commit(log_p, region, steps_left, temperature, generator):
    """LLaDA low-confidence remasking: propose a token everywhere, keep the k most confident.

    k = ceil(masked in block / steps left in block): the block's masks are split evenly over its
    steps, earlier steps taking the remainder (the split LLaDA's get_num_transfer_tokens makes).
    Confidence is the model probability of the proposed token; its log ranks positions the same way.
    """
    x = sample_tokens(log_p, temperature, generator)  # (B, T)
    conf = log_p.gather(-1, x[..., None]).squeeze(-1)  # (B, T) log p(x_i | z_t)
    conf = conf.masked_fill(~region, float("-inf"))
    k = (region.sum(1) + steps_left - 1) // steps_left  # (B,) ceil division
    rank = conf.argsort(dim=1, descending=True, stable=True).argsort(dim=1)  # (B, T) 0 = most sure
    return x, region & (rank < k[:, None])


# ----------------------------------------------------------------------------------------------
# The shift probe (arXiv 2601.22947): after a step, each token committed in it moves with
# probability `rate` by one position into a still-masked neighbour; its old slot becomes MASK and
# is decoded again later. A fixed-position decoder never revisits a token, so this imitates one
# early placement error and shows how much the rest of the text depends on exact positions.


def shift_probe(canvas, committed_now, rate, generator=None, gen_start=0, gen_end=None):
    """canvas (B, T), committed_now (B, T) bool -> (new canvas (B, T), moves per row (B,) long).

    Side: left or right with probability 1/2; if that neighbour is not MASK the other side is
    tried; with neither masked the token stays. Moves stay in [gen_start, gen_end) (the prompt and
    other blocks are never touched). Tokens are processed left to right, each at most once, so a
    token may move into the slot its left neighbour has just vacated.
    """
    B, T = canvas.shape
    moved = torch.zeros(B, dtype=torch.long)
    if rate <= 0:
        return canvas, moved
    gen_end = T if gen_end is None else gen_end
    u_move = _rand((B, T), generator, "cpu") < rate  # (B, T) which tokens try to move
    go_left = (_rand((B, T), generator, "cpu") < 0.5).tolist()  # (B, T) preferred side
    rows = canvas.cpu().tolist()
    for b, i in (committed_now.cpu() & u_move).nonzero().tolist():  # row-major: left to right
        row = rows[b]
        first = -1 if go_left[b][i] else 1
        for j in (i + first, i - first):
            if gen_start <= j < gen_end and row[j] == MASK:
                row[j], row[i] = row[i], MASK
                moved[b] += 1
                break
    return torch.tensor(rows, dtype=canvas.dtype, device=canvas.device), moved


# ----------------------------------------------------------------------------------------------
# Masked diffusion decoding.


def check_request(prompt_len, length, steps, sampler, block_length, seq_len, temperature=1.0):
    """Raise ValueError with a readable message for a request the samplers cannot serve.
    Returns (number of blocks, block length, steps per block)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    if length < 1 or steps < 1:
        raise ValueError(f"length ({length}) and steps ({steps}) must be at least 1")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if prompt_len + length > seq_len:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + length ({length}) = {prompt_len + length} exceeds the "
            f"model's canvas of {seq_len} positions; shorten the prompt or lower --length"
        )
    block_length = length if block_length is None else block_length
    if block_length < 1 or length % block_length:
        raise ValueError(f"length {length} is not divisible by block length {block_length}")
    n_blocks = length // block_length
    if steps % n_blocks:
        raise ValueError(f"steps {steps} must be divisible by the number of blocks {n_blocks}")
    return n_blocks, block_length, steps // n_blocks


@torch.no_grad()
def generate(model, prompt, length, *, steps, sampler="ancestral", block_length=None, temperature=1.0,
             schedule="linear", allow_slack=False, shift_rate=0.0, generator=None, record_steps=False,
             use_cache=True, progress=False):
    """Fill `length` MASK positions after `prompt` (B, P) with a bidirectional model.

    Blocks (block_length) are decoded left to right, steps // n_blocks steps each; without
    block_length the whole region is one block. Committed tokens and the prompt never change
    (only the shift probe moves a token, once, right after it is committed).
    Returns {"canvas" (B, P + length), "model_calls", "n_committed" (B,), "n_shifted" (B,)} and
    "history" (canvas after each step, on CPU) when record_steps. A move fills one mask and frees
    another, so n_committed is always `length` and n_shifted / n_committed is the realised rate.
    """
    B, P = prompt.shape
    n_blocks, block_len, steps_per_block = check_request(
        P, length, steps, sampler, block_length, model.cfg.seq_len, temperature)
    device = next(model.parameters()).device
    canvas = torch.cat([prompt.to(device), torch.full((B, length), MASK, device=device)], 1)  # (B, T)
    # the probe draws from its own stream (seeded from the main one, which is always advanced), so
    # a run with the probe differs from one without only through the moves themselves
    probe_seed = int(torch.randint(2**62, (1,), generator=generator,
                                   device=generator.device if generator is not None else "cpu"))
    probe_gen = torch.Generator().manual_seed(probe_seed)
    n_committed, n_shifted = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    calls, log_p, history = 0, None, []
    for step in tqdm(range(steps), disable=not progress, leave=False):
        blk, j = divmod(step, steps_per_block)
        lo, hi = P + blk * block_len, P + (blk + 1) * block_len  # the block being decoded
        # MDLM's cache: the network is a function of the canvas only (no time input), so while
        # the canvas is unchanged its output is too and the call can be skipped
        if log_p is None or not use_cache:
            log_p = mdlm.subs_log_probs(model(canvas), canvas, allow_slack)  # (B, T, V)
            calls += 1
        in_block = torch.zeros_like(canvas, dtype=torch.bool)
        in_block[:, lo:hi] = True
        region = (canvas == MASK) & in_block  # (B, T) positions this step may fill
        if sampler == "ancestral":
            x, commit = ancestral_commit(log_p, region, j, steps_per_block, temperature, schedule,
                                         generator)
        else:
            x, commit = confidence_commit(log_p, region, steps_per_block - j, temperature, generator)
        new = torch.where(commit, x, canvas)  # (B, T)
        n_committed += commit.sum(1).cpu()
        new, moved = shift_probe(new, commit, shift_rate, probe_gen, lo, hi)
        n_shifted += moved
        if not torch.equal(new, canvas):
            log_p = None  # the canvas changed: the next step needs a fresh network call
        canvas = new
        if record_steps:
            history.append(canvas.cpu().clone())
    out = {"canvas": canvas, "model_calls": calls, "n_committed": n_committed, "n_shifted": n_shifted}
    if record_steps:
        out["history"] = history
    return out


# ----------------------------------------------------------------------------------------------
# Autoregressive decoding, for causal checkpoints (the baseline and judge).


@torch.no_grad()
def generate_ar(model, prompt, length, *, temperature=1.0, generator=None):
    """Sample `length` tokens after `prompt` (B, P) one at a time; SLACK and MASK are banned.

    With an empty prompt the model reads a single EOS (the separator between training documents)
    as its start token; it is not part of the returned canvas (B, P + length). Once every row has
    produced an EOS the rest is filled with EOS without further calls (finish cuts there anyway).
    """
    B, P = prompt.shape
    if P + length > model.cfg.seq_len:
        raise ValueError(f"prompt ({P}) + length ({length}) exceeds the model's canvas of "
                         f"{model.cfg.seq_len} positions; shorten the prompt or lower --length")
    device = next(model.parameters()).device
    start = prompt.to(device) if P > 0 else torch.full((B, 1), EOS, device=device)
    seq, calls = start, 0  # (B, P or 1)
    banned = torch.tensor([SLACK, MASK], device=device)
    for _ in range(length):
        logits = model(seq)[:, -1:].float().index_fill(-1, banned, float("-inf"))  # (B, 1, V)
        x = sample_tokens(logits.log_softmax(-1), temperature, generator)  # (B, 1)
        seq, calls = torch.cat([seq, x], 1), calls + 1
        if (seq[:, start.shape[1]:] == EOS).any(1).all():
            break
    gen = seq[:, start.shape[1]:]  # (B, <= length)
    pad = torch.full((B, length - gen.shape[1]), EOS, dtype=gen.dtype, device=device)
    return {"canvas": torch.cat([prompt.to(device), gen, pad], 1), "model_calls": calls}


# ----------------------------------------------------------------------------------------------
# From canvas to text.

# glyphs of the raw canvas view: SLACK and MASK must stay visible, the prompt is set off by "▸"
GLYPHS = {SLACK: "·", MASK: "□", EOS: "⏎", ord("\n"): "↵"}


def finish(canvas_row, prompt_len, collapse, slack):
    """The output ids of one canvas row: the generated part, collapsed by the checkpoint's map when
    it was trained with slack (surface: drop SLACK; standard: merge repeats, then drop SLACK), cut
    at the first EOS, with any MASK (and stray SLACK) removed. Text: mdlm.decode(ids)."""
    ids = [int(i) for i in canvas_row[prompt_len:]]
    if slack:
        ids = collapse_tokens(ids, SLACK, collapse)
    if EOS in ids:
        ids = ids[: ids.index(EOS)]
    return [i for i in ids if i not in (MASK, SLACK)]


def render_canvas(row, prompt_len):
    """The raw canvas as one printable line: printable ASCII as is, "·" SLACK, "□" MASK, "⏎" EOS,
    "↵" newline, other bytes as \\xNN (so multi-byte UTF-8 shows as escapes)."""
    def glyph(i):
        if i in GLYPHS:
            return GLYPHS[i]
        return chr(i) if 32 <= i < 127 else f"\\x{i:02x}"

    ids = [int(i) for i in row]
    return "".join(map(glyph, ids[:prompt_len])) + "▸" + "".join(map(glyph, ids[prompt_len:]))


# ----------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Sample from an MDLM (or AR) checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    p.add_argument("--prompt", default="", help="text the canvas starts with (kept fixed)")
    p.add_argument("--length", type=int, default=128, help="number of positions to generate")
    p.add_argument("--steps", type=int, default=128, help="denoising steps (MDLM checkpoints)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ancestral",
                   help="MDLM ancestral sampling or LLaDA low-confidence remasking; "
                        "AR checkpoints always decode left to right")
    p.add_argument("--block-length", type=int, default=None,
                   help="semi-autoregressive blocks of this many positions, decoded left to right "
                        "(must divide --length; their count must divide --steps); unset: one block")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--num-samples", type=int, default=1, help="samples drawn (as one batch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling random stream")
    p.add_argument("--device", default="auto", help="cuda, mps, cpu, or auto (first available)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per sample (text, counts, settings) instead of text")
    p.add_argument("--shift-rate", type=float, default=0.0,
                   help="shift probe: probability that a freshly committed token moves one position")
    p.add_argument("--show-canvas", action="store_true",
                   help="also print the raw final canvas (· = SLACK, □ = MASK, ⏎ = EOS)")
    p.add_argument("--show-steps", action="store_true", help="print the raw canvas after every step")
    p.add_argument("--no-cache", action="store_true",
                   help="call the network at every step, even when the canvas did not change")
    p.add_argument("--bench-cache", action="store_true",
                   help="time the ancestral sampler with and without the cache at --steps/--length")
    return p.parse_args(argv)


def bench_cache(model, prompt, args, meta, device):
    """Same seed, cached vs uncached: identical canvases, fewer calls; median of 3 wall times."""
    def run(use_cache):
        times = []
        for _ in range(3):
            gen = torch.Generator().manual_seed(args.seed)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = generate(model, prompt, args.length, steps=args.steps, sampler="ancestral",
                           temperature=args.temperature, schedule=meta["schedule"],
                           allow_slack=meta["slack"], generator=gen, use_cache=use_cache)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return out, statistics.median(times)

    cached, t_cached = run(True)
    plain, t_plain = run(False)
    same = torch.equal(cached["canvas"], plain["canvas"])
    print(f"steps {args.steps}, length {args.length}, device {device}, identical canvases: {same}")
    print(f"uncached: {plain['model_calls']:5d} model calls, median {t_plain:.3f} s")
    print(f"cached:   {cached['model_calls']:5d} model calls, median {t_cached:.3f} s")
    print(f"speed-up: {t_plain / t_cached:.2f}x")


def print_samples(out, args, prompt_len, collapse, slack, causal):
    """Text (or JSON lines) of each sample; with --show-steps / --show-canvas the raw canvases."""
    for b in range(args.num_samples):
        row = out["canvas"][b].cpu()
        text = mdlm.decode(finish(row, prompt_len, collapse, slack))
        n_c, n_s = int(out["n_committed"][b]), int(out["n_shifted"][b])
        if args.json:
            print(json.dumps({
                "sample": b, "prompt": args.prompt, "text": text, "n_committed": n_c, "n_shifted": n_s,
                "shift_fraction": n_s / max(n_c, 1), "model_calls": out["model_calls"],
                "sampler": "ar" if causal else args.sampler, "steps": args.steps, "length": args.length,
                "temperature": args.temperature, "shift_rate": args.shift_rate, "seed": args.seed,
                "canvas": render_canvas(row, prompt_len) if args.show_canvas else None,
            }, ensure_ascii=False))
            continue
        print(f"--- sample {b}: {n_c} committed, {n_s} shifted, {out['model_calls']} model calls")
        for k, step_canvas in enumerate(out.get("history", [])):
            print(f"step {k + 1:4d} {render_canvas(step_canvas[b], prompt_len)}")
        if args.show_canvas:
            print("canvas:", render_canvas(row, prompt_len))
        print(args.prompt + text)


def main(argv=None):
    args = parse_args(argv)
    device = mdlm.pick_device(args.device)

    # --- load the checkpoint: the model, and how it was trained
    try:
        ckpt = mdlm.load_checkpoint(args.ckpt, map_location="cpu")
        model = mdlm.model_from_checkpoint(ckpt, device=device)
    except mdlm.CheckpointError as e:
        # one line: torch's own unpickling messages run over many lines, the first one says enough
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    meta = mdlm.checkpoint_meta(ckpt)  # what the checkpoint was trained as
    causal = model.cfg.causal
    ids = mdlm.encode(args.prompt)
    prompt = torch.tensor([ids] * args.num_samples, dtype=torch.long).view(args.num_samples, len(ids))

    # --- refuse impossible requests with one line before any work
    try:
        check_request(len(ids), args.length, args.steps, args.sampler,
                      None if causal else args.block_length, model.cfg.seq_len, args.temperature)
        if args.shift_rate < 0 or args.shift_rate > 1 or args.num_samples < 1:
            raise ValueError("--shift-rate must be in [0, 1] and --num-samples at least 1")
        if causal and (args.bench_cache or args.shift_rate > 0):
            raise ValueError("--bench-cache and --shift-rate need a masked diffusion (non-causal) model")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.bench_cache:
        bench_cache(model, prompt, args, meta, device)
        return 0

    # --- sample all --num-samples as one batch
    gen = torch.Generator().manual_seed(args.seed)  # CPU stream: the same samples on any device
    if causal:
        out = generate_ar(model, prompt, args.length, temperature=args.temperature, generator=gen)
        out["n_committed"] = torch.full((args.num_samples,), args.length)
        out["n_shifted"] = torch.zeros(args.num_samples, dtype=torch.long)
    else:
        out = generate(model, prompt, args.length, steps=args.steps, sampler=args.sampler,
                       block_length=args.block_length, temperature=args.temperature,
                       schedule=meta["schedule"], allow_slack=bool(meta["slack"]),
                       shift_rate=args.shift_rate, generator=gen, record_steps=args.show_steps,
                       use_cache=not args.no_cache, progress=not args.json and args.steps >= 256)

    # --- print
    print_samples(out, args, len(ids), meta["collapse"], bool(meta["slack"]) and not causal, causal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
