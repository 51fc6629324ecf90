"""
Train a masked diffusion language model on bytes, or its autoregressive twin; fine-tune it with
position-wise cross-entropy (CE), with the slack CTC, or with both.

    python train.py                                    # pretrain an MDLM on CPython's docs (CPU, ~10 min)
    python train.py --objective ar --out-dir out-ar    # the AR twin: baseline and judge
    python train.py --init-from out/ckpt.pt --out-dir out-ctc \\
        --loss ctc --slack-rate 0.1 --prompt-len 64 --steps 500   # slack CTC fine-tune
    python train.py --init-from out/ckpt.pt --out-dir out-ce \\
        --loss ce --slack-rate 0.1 --prompt-len 64 --steps 500    # the matched CE fine-tune
    python train.py --data big.txt --grad-accum 8 ...  # any file size (memory-mapped), batch 8 x B
    torchrun --nproc_per_node 2 train.py ...           # data parallel (nccl on GPU, gloo on CPU)

The method itself lives in the two leaves: mdlm.py (masking, the model, the NELBO) and ctc_slack.py
(slack placement, canvases, the slack CTC). This file holds the data, the settings and one flat loop.

Papers: MDLM (Sahoo et al. 2024, arXiv 2406.07524) for the NELBO; LLaDA (Nie et al. 2025,
arXiv 2502.09992) for conditional training; the slack CTC (arXiv 2601.22947) with Imputer-style
marginalisation over masked positions (Chan et al. 2020, arXiv 2002.08926).
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time

import torch
from tqdm import tqdm

import ctc_slack
import data
import mdlm
from data import UserError
from mdlm import MASK, SLACK

PLACEMENTS = ("random", "tail", "model", "mix")

# ----------------------------------------------------------------------------------------------
# Settings


def get_args(argv=None):
    """The command line. Model sizes default to None, not to their values: "not given" (take the
    checkpoint's) must differ from "given" (must agree with the checkpoint); see model_config."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    # data and output
    a("--data", default=None, help="text file to train on, any size, memory-mapped (default: CPython's docs)")
    a("--sft", default=None, help="JSON lines {'prompt': ..., 'response': ...} for conditional fine-tuning")
    a("--out-dir", default="out", help="where ckpt.pt and log.jsonl go (default: out)")
    a("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint")
    a("--init-from", default=None, help="start from this checkpoint's weights (fine-tuning), fresh optimizer")
    # objective
    a("--objective", choices=["mdlm", "ar"], default="mdlm", help="masked diffusion or left-to-right AR")
    a("--schedule", choices=mdlm.SCHEDULES, default="linear",
      help="noise schedule alpha(t) (default: linear)")  # linear: alpha = 1 - t; cosine: cos(pi t / 2)
    a("--loss", choices=["ce", "ctc", "ctc+ce"], default="ce",
      help="MDLM loss: position-wise CE (NELBO), slack CTC, or ctc_weight*CTC + ce_weight*CE (default: ce)")
    a("--ctc-weight", type=float, default=1.0, help="weight of the CTC term in ctc+ce (default: 1)")
    a("--ce-weight", type=float, default=1.0, help="weight of the CE term in ctc+ce (default: 1)")
    a("--slack-rate", type=float, default=0.0,
      help="K = round(rate * R) slacks per response canvas of R positions (default: 0)")
    a("--slack-placement", choices=PLACEMENTS, default=None,
      help="where the reference canvas puts slack: random positions, the tail, the model's Viterbi "
           "alignment, or mix (each example random with prob. --mix-random, else model) "
           "(default: tail for --loss ce, random otherwise; README, Results, says why)")
    a("--mix-random", type=float, default=0.5, help="with --slack-placement mix: share of random rows")
    a("--collapse", choices=["surface", "standard"], default="surface",
      help="CTC collapse map: delete slack (surface) or merge repeats then delete slack (standard)")
    a("--prompt-len", type=int, default=0,
      help="P visible, unscored prompt bytes at the start of each canvas")
    # model (default: new model of these sizes; with --init-from / --resume they come from the checkpoint)
    a("--seq-len", type=int, default=256, help="canvas length T in tokens (default: 256)")
    a("--n-layer", type=int, default=None, help="Transformer blocks (default: 4)")
    a("--n-head", type=int, default=None, help="attention heads (default: 4)")
    a("--n-embd", type=int, default=None, help="model width (default: 128)")
    a("--dropout", type=float, default=0.0, help="dropout rate (default: 0)")
    # optimisation
    a("--steps", type=int, default=1500, help="optimizer steps in total (default: 1500)")
    a("--batch-size", type=int, default=32,
      help="examples per micro-batch, split across DDP ranks (default: 32)")
    a("--grad-accum", type=int, default=1,
      help="micro-batches per optimizer step: the effective batch is grad_accum x batch_size (default: 1)")
    a("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    a("--min-lr-ratio", type=float, default=0.1, help="cosine decays to lr * this (default: 0.1)")
    a("--warmup", type=int, default=100, help="linear warmup steps (default: 100)")
    a("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default: 0.1)")
    a("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this (0: off; default: 1)")
    a("--ema", type=float, default=0.999, help="EMA decay of the weights used for eval and sampling")
    # bookkeeping
    a("--eval-interval", type=int, default=250, help="validate every N steps (default: 250)")
    a("--eval-batches", type=int, default=8, help="validation batches, fixed seeds (default: 8)")
    a("--sample-interval", type=int, default=500, help="print a short sample every N steps (0: never)")
    a("--ckpt-interval", type=int, default=250, help="write the checkpoint every N steps (and at the end)")
    a("--seed", type=int, default=1337, help="seed for init, data and noise: CPU runs repeat exactly")
    a("--device", default="auto", help="cpu, cuda, mps or auto (default: auto)")
    a("--compile", action="store_true", help="torch.compile the model (GPU)")
    a("--no-progress", action="store_true", help="no tqdm bar (logs still go to log.jsonl)")
    return p.parse_args(argv)


def slack_placement(args):
    """--slack-placement, or its default: the tail for --loss ce (the matched CE baseline pads at
    the tail, as LLaDA pads with EOS), random positions for the CTC losses."""
    return args.slack_placement or ("tail" if args.loss == "ce" else "random")


def check_args(args):
    """Refuse bad settings up front, so a mistake never overwrites a good checkpoint: every value
    that cannot work (zero, negative, too large, inconsistent) is one message here."""
    # --seq-len enters as seq_len - 1, so "at least 1" means T >= 2 for it (the message says 2)
    positive = {"--steps": args.steps, "--batch-size": args.batch_size, "--grad-accum": args.grad_accum,
                "--seq-len": args.seq_len - 1, "--eval-interval": args.eval_interval,
                "--eval-batches": args.eval_batches, "--ckpt-interval": args.ckpt_interval}
    for flag, v in positive.items():
        if v < 1:
            raise UserError(f"{flag} must be at least {2 if flag == '--seq-len' else 1}")
    for flag, v in {"--n-layer": args.n_layer, "--n-head": args.n_head, "--n-embd": args.n_embd}.items():
        if v is not None and v < 1:
            raise UserError(f"{flag} must be at least 1, got {v}")
    if args.n_embd is not None and args.n_head is not None and args.n_embd % args.n_head:
        raise UserError(f"--n-embd ({args.n_embd}) must be divisible by --n-head ({args.n_head})")
    if not args.lr > 0 or args.warmup < 0 or args.sample_interval < 0 or not 0 <= args.min_lr_ratio <= 1:
        raise UserError("need --lr > 0, --warmup >= 0, --sample-interval >= 0, 0 <= --min-lr-ratio <= 1")
    if not (0 <= args.ema < 1 and 0 <= args.dropout < 1 and args.grad_clip >= 0 and args.weight_decay >= 0):
        raise UserError("need 0 <= --ema < 1, 0 <= --dropout < 1, --grad-clip >= 0, --weight-decay >= 0")
    if args.ctc_weight < 0 or args.ce_weight < 0 or not 0 <= args.mix_random <= 1:
        raise UserError("--ctc-weight and --ce-weight must be >= 0 and --mix-random in [0, 1]")
    if not 0.0 <= args.slack_rate < 1.0:
        raise UserError(f"--slack-rate must be in [0, 1), got {args.slack_rate}")
    if not 0 <= args.prompt_len < args.seq_len:
        raise UserError(f"--prompt-len ({args.prompt_len}) must be >= 0 and < --seq-len ({args.seq_len})")
    if args.objective == "ar" and (args.loss != "ce" or args.slack_rate > 0 or args.prompt_len or args.sft):
        raise UserError("--objective ar trains plain next-byte prediction: "
                        "no --loss ctc, slack, prompt or SFT")
    if args.data and args.sft:
        raise UserError("give --data (a text corpus) or --sft (prompt/response pairs), not both")
    if args.resume and args.init_from:
        raise UserError("give --resume (continue a run) or --init-from (fine-tune), not both")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UserError(f"--out-dir {args.out_dir!r} is a file, not a folder")
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    if os.path.exists(ckpt_path) and not args.resume:  # never overwrite a run by accident
        raise UserError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out-dir")
    if args.resume and not os.path.exists(ckpt_path):
        raise UserError(f"--resume: there is no {ckpt_path} to continue")
    args.slack_placement = slack_placement(args)  # resolved, so the checkpoint records it
    # model_alignment aligns under the surface map (align_slack's default): the loss must use it too
    if args.slack_placement in ("model", "mix") and args.collapse != "surface":
        raise UserError(f"--slack-placement {args.slack_placement} needs --collapse surface")


# ----------------------------------------------------------------------------------------------
# Examples. Every example is a prompt (visible, never masked or scored) followed by a response
# canvas of R = T - P positions holding the U target tokens y and K = R - U slacks. Pretraining is
# the special case P = 0, K = 0: the canvas is just a window of text.
#
#     z0:   T h e _ l i s t | t y p e · i s _ a · m u t a b l e     (· = SLACK, here K = 2)
#           prompt, P = 8     response canvas, R = 22, y = "type is a mutable", U = 20
#     z_t:  T h e _ l i s t | t ? p ? · ? ? _ ? ? m ? t ? ? l ?       (? = MASK, prob. 1 - alpha(t))
#
# CE scores each masked position against z0 (SLACK included, at the place z0 put it); CTC scores
# the masked positions against y under every alignment that agrees with the visible ones.


@torch.no_grad()
def model_alignment(model, prompt, P, y, U, R, T, R_max):
    """--slack-placement model: the most probable alignment of y under the current model, given the
    prompt and an all-MASK response (as the Imputer does), as a (B, R_max) reference canvas padded
    with SLACK. Costs one extra forward pass."""
    device, r = next(model.parameters()).device, int(R.max())  # r: the longest response
    # blank (B, T): the prompt, then MASK to the end; log_p (B, r, V): the response positions only
    blank, _ = ctc_slack.build_canvas(prompt, P, torch.full((len(P), r), MASK), T)
    log_p = ctc_slack.response_log_probs(model(blank.to(device)), P.to(device), r, mask_id=MASK)
    aligned = ctc_slack.align_slack(log_p, y.to(device), U.to(device), R.to(device), slack_id=SLACK)
    return torch.nn.functional.pad(aligned.cpu(), (0, R_max - aligned.shape[1]), value=SLACK)  # (B, R_max)


def reference_canvas(y, U, R, prompt, P, args, gen, model, placement):
    """The response canvas z0 (B, R_max) with slack placed as asked: random, tail, model (the current
    model's Viterbi alignment; the tail while no model is at hand) or mix (per row, random with
    probability --mix-random, else model). The random draws are made for every placement, so runs
    that differ only in placement see identical masking noise afterwards."""
    # "mix" starts from random rows, "model" from the tail (its fallback without a model)
    simple = "random" if placement in ("random", "mix") else "tail"
    resp = ctc_slack.place_slack(y, U, R, simple, slack_id=SLACK, generator=gen)  # (B, R_max)
    pick_random = torch.rand(len(U), generator=gen) < args.mix_random  # (B,) used by "mix" only
    if placement in ("random", "tail") or model is None:
        return resp
    # the alignment pass in micro-batches: its memory stays that of one training forward pass
    step = args.batch_size  # rows per alignment pass
    aligned = torch.cat([model_alignment(model, prompt[s:s + step], P[s:s + step], y[s:s + step],
                                         U[s:s + step], R[s:s + step], args.seq_len, resp.shape[1])
                         for s in range(0, len(U), step)])  # (B, R_max)
    return aligned if placement == "model" else torch.where(pick_random[:, None], resp, aligned)


def get_batch(split, args, gen, stats, model=None, n=None, placement=None):
    """n examples (default: one optimizer step's worth, grad_accum x batch_size) as a dict of CPU
    tensors; all DDP ranks draw the same ones, then take their slices. `placement` overrides the
    run's slack placement (validation scores the same examples under several placements)."""
    T, B = args.seq_len, n or args.batch_size * args.grad_accum  # B: all ranks' examples
    if args.objective == "ar":  # windows of T + 1 bytes: read T, predict the next T
        offs = torch.randint(0, len(split) - T - 1 + 1, (B,), generator=gen)  # last start: len - (T + 1)
        return {"x": data.windows(split, offs, T + 1)}  # (B, T + 1)
    prompt, P, y, U = (data.sft_batch(split, B, T, args.slack_rate, gen, stats) if isinstance(split, list)
                       else data.text_batch(split, B, T, args.prompt_len, args.slack_rate, gen))
    R = T - P  # (B,) response canvas lengths
    resp = reference_canvas(y, U, R, prompt, P, args, gen, model, placement or slack_placement(args))
    z0, keep = ctc_slack.build_canvas(prompt, P, resp, T)  # (B, T) clean canvas, (B, T) prompt positions
    # the forward process: stratified t, then mask each response position with prob. 1 - alpha(t)
    t = mdlm.sample_t(B, generator=gen)  # (B,)
    z_t = mdlm.forward_mask(z0, t, args.schedule, generator=gen, keep=keep)  # (B, T)
    return {"z0": z0, "z_t": z_t, "t": t, "keep": keep, "P": P, "y": y, "U": U}


# ----------------------------------------------------------------------------------------------
# Losses, one value per example (nats per scored position), then averaged over the batch. Both
# terms carry the NELBO weight w(t) and divide by the response length R, so that with K = 0 and
# the surface collapse (one alignment) CTC and CE are equal (a test).


def compute_loss(model, b, args):
    """Per-example loss (B,) of the configured objective on batch b (tensors on the device)."""
    if args.objective == "ar":
        return mdlm.ar_loss(model(b["x"][:, :-1]), b["x"])  # reads x_<T, predicts x_1..x_T
    logits = model(b["z_t"])  # (B, T, V): one forward pass serves both terms of ctc+ce
    return loss_terms(logits, b, args.loss, args)


def loss_terms(logits, b, loss, args):
    """L_CE, L_CTC or ctc_weight * L_CTC + ce_weight * L_CE on precomputed logits, per example."""
    w = mdlm.w_t(b["t"], args.schedule)  # (B,) w(t) = -alpha'(t) / (1 - alpha(t)), = 1/t if linear
    # the masked CE against z0 (SLACK included where z0 put it), prompt positions never scored;
    # both are lambdas so that --loss ce never pays for the CTC recursion, nor ctc for the CE
    ce = lambda: mdlm.mdlm_loss(logits, b["z0"], b["z_t"], b["t"], args.schedule, scored=~b["keep"])  # noqa
    # -log P(y | z_t): the marginal over completions of the masked positions whose collapse is y
    ctc = lambda: ctc_slack.slack_ctc_term(logits, b["z_t"], b["P"], b["y"], b["U"], w,  # noqa
                                           slack_id=SLACK, mask_id=MASK, collapse=args.collapse)
    if loss in ("ce", "ctc"):
        return ce() if loss == "ce" else ctc()
    return args.ctc_weight * ctc() + args.ce_weight * ce()  # same logits, same w(t)


# ----------------------------------------------------------------------------------------------
# Setup: devices, model, optimizer.


def setup_device(name):
    """(rank, world size, device). torchrun sets RANK and WORLD_SIZE; a plain run is rank 0 of 1.
    GPUs talk through NCCL, CPU processes through gloo (so DDP is testable on a laptop)."""
    try:
        device = mdlm.pick_device(name)
    except ValueError as e:
        raise UserError(str(e))
    if "RANK" not in os.environ:  # not started by torchrun
        return 0, 1, device
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"  # one GPU per process on this node
        torch.cuda.set_device(device)
    # the rendezvous (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE) comes from torchrun's environment
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def model_config(args, ckpt):
    """The model's config: from the checkpoint when there is one (flags must then agree), else flags.
    Size flags default to None so that "not given" and "given, equal to the default" differ: a
    fine-tune needs no size flags, and a size flag that contradicts the checkpoint is an error."""
    sizes = {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd}
    if ckpt is None:
        defaults = mdlm.ModelConfig()
        sizes = {k: getattr(defaults, k) if v is None else v for k, v in sizes.items()}
        if sizes["n_embd"] % sizes["n_head"]:  # check_args saw only given flags
            raise UserError(f"width {sizes['n_embd']} must be divisible by {sizes['n_head']} heads")
        return mdlm.ModelConfig(seq_len=args.seq_len, causal=args.objective == "ar", dropout=args.dropout,
                                **sizes)
    cfg = mdlm.ModelConfig.from_dict(ckpt["config"])
    for k, v in sizes.items():
        if v is not None and v != getattr(cfg, k):
            raise UserError(f"--{k.replace('_', '-')} {v} differs from the checkpoint's {getattr(cfg, k)}")
    if args.seq_len > cfg.seq_len:  # the rotary tables stop at cfg.seq_len
        raise UserError(f"--seq-len {args.seq_len} is longer than the model's seq_len {cfg.seq_len}")
    if cfg.causal != (args.objective == "ar"):
        kind = "an AR" if cfg.causal else "an MDLM"
        raise UserError(f"the checkpoint is {kind} model; --objective disagrees")
    # a vocabulary of ids 0..SLACK-1 has no embedding row (and no logit) for SLACK
    if (args.loss != "ce" or args.slack_rate > 0 or args.sft) and cfg.vocab_size <= SLACK:
        raise UserError("the checkpoint's vocabulary has no SLACK token; it cannot learn slack")
    cfg.dropout = args.dropout  # a training choice, not part of the model
    return cfg


def lr_at(step, args):
    """Linear warmup, then cosine decay from lr to lr * min_lr_ratio (as nanoGPT). A pure function
    of the step, so a resumed run needs no scheduler state."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup  # step 0 trains at lr / warmup, not 0
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)  # 0 -> 1
    # lr * (m + (1 - m) * (1 + cos(pi * progress)) / 2): lr at progress 0, lr * m at progress 1
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, args):
    """AdamW; weight decay on matrices only (not on biases and norms). beta2 = 0.95, as in GPT-style
    training, lets the second-moment estimate follow the large swings of a 1/t-weighted loss."""
    params = [p for p in model.parameters() if p.requires_grad]  # frozen ones get no state
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))  # lr: overwritten every step


@torch.no_grad()
def ema_update(ema, model, step, decay):
    """ema <- d * ema + (1 - d) * model, with d ramped up early so the EMA does not lag at the start.
    The NELBO's gradient is noisy (one t and one mask per sequence), so the average of recent
    weights samples and validates better than the last ones (MDLM uses an EMA of 0.9999)."""
    d = min(decay, (1 + step) / (10 + step))  # 0.1 at step 0, then up to decay
    # parameters(), not state_dict(): the tied embedding / output matrix must be updated once
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(d).add_(p.detach(), alpha=1 - d)  # in place: no copy of the weights


def run_meta(args, init_meta):
    """What decoding needs to know: was slack trained, and which collapse map defines the output.
    A model that never saw SLACK must never sample it (its SLACK logit is untrained), and the
    collapse map of training is the one that turns its canvas into text."""
    uses_slack = args.slack_rate > 0 or args.loss != "ce" or bool(args.sft)
    slack = uses_slack or bool(init_meta.get("slack"))  # a fine-tune keeps what its init knew
    collapse = args.collapse if uses_slack else init_meta.get("collapse", args.collapse)
    return {"objective": args.objective, "schedule": args.schedule, "loss": args.loss,
            "slack": slack, "collapse": collapse}


# ----------------------------------------------------------------------------------------------
# Validation and samples, both on the EMA weights, with fixed seeds.


@torch.no_grad()
def validate(model, val, args, device, ctx):
    """Validation losses in bits per position: "val_bits", the training objective (pretraining: the
    NELBO in bits per byte, an upper bound; AR: the exact bits per byte). A run with slack also
    scores the SAME held-out examples and noise under CE with tail slack and under CTC with tail and
    with random slack, so that the learning curves of different arms are directly comparable."""
    jobs = [("val_bits", args.loss, args.slack_placement)]
    if args.objective == "mdlm" and (args.slack_rate > 0 or args.sft):
        jobs += [("val_ce_tail", "ce", "tail"), ("val_ctc_tail", "ctc", "tail"),
                 ("val_ctc_random", "ctc", "random")]
    out = {}
    for key, loss, placement in jobs:
        gen = torch.Generator().manual_seed(args.seed + 1)  # the same batches at every evaluation
        total = 0.0
        for _ in range(args.eval_batches):
            b = get_batch(val, args, gen, {"truncated": 0}, model, n=args.batch_size, placement=placement)
            b = {k: v.to(device) for k, v in b.items()}  # whole, not sliced: only rank 0 validates
            with ctx:
                per = compute_loss(model, b, args) if args.objective == "ar" else \
                    loss_terms(model(b["z_t"]), b, loss, args)  # (B,)
            total += per.mean().item()
        out[key] = total / args.eval_batches / math.log(2)  # nats -> bits
    return out


@torch.no_grad()
def sample_text(model, val, args, meta, device):
    """A short continuation of the start of the held-out text (or of the first held-out prompt)."""
    gen = torch.Generator().manual_seed(args.seed)
    P = args.prompt_len if args.prompt_len else min(32, args.seq_len // 4)  # pretraining: a short prompt
    ids = val[0][0][-P:] if isinstance(val, list) else data.windows(val, [0], P)[0].tolist()
    prompt = torch.tensor([ids], dtype=torch.long, device=device)  # (1, P)
    L = args.seq_len - prompt.shape[1]  # fill the rest of the canvas
    if meta["objective"] == "ar":
        out = mdlm.generate_ar(model, prompt, L, generator=gen)
    else:
        out = mdlm.generate(model, prompt, L, steps=L, schedule=args.schedule, generator=gen,
                            allow_slack=meta["slack"])  # steps = L: one position per step
    cont = mdlm.output_ids(out["canvas"][0].tolist(), prompt.shape[1], meta["collapse"], meta["slack"])
    return mdlm.to_text(ids) + " |> " + mdlm.to_text(cont)


# ----------------------------------------------------------------------------------------------
# The training loop: data, model, then one flat loop of batch -> loss -> step -> EMA -> log.


def load_splits(args):
    """(train, val): SFT records (every 20th one held out at the end), or the bytes of a corpus,
    memory-mapped (two numpy views of one file: nothing is read until a batch needs it)."""
    if args.sft:
        return data.split_sft(data.read_sft(args.sft))
    train_ids, val_ids = data.load_corpus(args.data)
    need = args.seq_len + 1  # an AR window reads T bytes and predicts T
    if len(train_ids) < need or len(val_ids) < need:
        raise UserError(f"the corpus ({len(train_ids) + len(val_ids)} bytes) is too short for "
                        f"--seq-len {args.seq_len}: both splits need at least {need} bytes")
    return train_ids, val_ids


def build(args, device, ckpt_path):
    """Model, EMA copy, optimizer, data RNG, first step and meta: a fresh run, a fine-tune of
    --init-from (its EMA weights, a new optimizer) or a --resume (everything as it was saved)."""
    src = ckpt_path if args.resume else args.init_from
    ckpt = mdlm.load_checkpoint(src) if src else None
    cfg = model_config(args, ckpt)
    # both constructors draw initial weights from torch's RNG (seeded in train): model first, then ema
    model = mdlm.Transformer(cfg).to(device)
    ema = mdlm.Transformer(cfg).to(device).eval()
    opt = make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed)  # draws every batch and all the noise
    if ckpt is None:
        ema.load_state_dict(model.state_dict())  # the EMA starts at the initial weights
        return cfg, model, ema, opt, gen, 0, run_meta(args, {})
    # a fine-tune starts from the EMA weights (those that validated), if the checkpoint has them
    weights = ckpt["model"] if args.resume else (ckpt.get("ema") or ckpt["model"])
    try:
        model.load_state_dict(weights)
        ema.load_state_dict((ckpt.get("ema") or ckpt["model"]) if args.resume else weights)
    except RuntimeError as e:
        raise UserError(f"checkpoint {src} does not fit this model: {str(e).splitlines()[0]}")
    if not args.resume:
        return cfg, model, ema, opt, gen, 0, run_meta(args, ckpt.get("meta", {}))
    opt.load_state_dict(ckpt["optimizer"])  # Adam's moments and step count
    gen.set_state(ckpt["rng"]["data"])  # the batches continue exactly where they stopped
    torch.set_rng_state(ckpt["rng"]["torch"])  # dropout draws from it
    return cfg, model, ema, opt, gen, ckpt["step"], ckpt["meta"]


def train_step(fwd, model, batch, args, rank, world, device, ctx, step):
    """One optimizer step over grad_accum micro-batches. Each micro-batch loss is divided by
    grad_accum, so the summed gradient is the mean over the whole effective batch: exactly the
    gradient of one step on the big batch (a test). Under DDP only the last micro-batch syncs."""
    B, B_local, total = args.batch_size, args.batch_size // world, 0.0
    for m in range(args.grad_accum):
        lo = m * B + rank * B_local  # micro-batch m, this rank's slice of it
        b = {k: v[lo:lo + B_local].to(device) for k, v in batch.items()}  # (B_local, ...)
        sync = world == 1 or m == args.grad_accum - 1  # one all-reduce per step
        with ctx, (contextlib.nullcontext() if sync else fwd.no_sync()):
            loss = compute_loss(fwd, b, args).mean() / args.grad_accum
            if not torch.isfinite(loss):  # stop before the bad update reaches the weights
                raise FloatingPointError(f"loss is {loss.item() * args.grad_accum} at step {step}")
            loss.backward()  # adds to .grad (locally under no_sync)
        total += loss.item()  # the step's mean loss
    # clipping matters more here than for an AR model: w(t) = 1/t makes a batch whose stratified
    # times start near eps weigh its few masked tokens up to 1000x
    if args.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    return total


def train(args):
    """Check, build (or restore), then loop; returns (model, ema). The order matters: the flags are
    refused before any file is touched, and torch's seed is set after DDP setup and before the model
    is built, so a seed gives the same initial weights on every rank and in every run."""
    check_args(args)
    rank, world, device = setup_device(args.device)
    master = rank == 0
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} must be divisible by the {world} DDP ranks")
    torch.manual_seed(args.seed)  # the initial weights
    ckpt_path, log_path = os.path.join(args.out_dir, "ckpt.pt"), os.path.join(args.out_dir, "log.jsonl")
    train_split, val_split = load_splits(args)
    cfg, model, ema, opt, gen, step, meta = build(args, device, ckpt_path)
    if step >= args.steps:  # a resume of a finished run
        print(f"{ckpt_path} is already at step {step} >= --steps {args.steps}: nothing to do")
        return model, ema
    fwd = torch.compile(model) if args.compile else model  # fwd runs; model is saved (plain state_dict keys)
    if world > 1:  # gradients are averaged over ranks inside backward()
        fwd = torch.nn.parallel.DistributedDataParallel(
            fwd, device_ids=[device] if "cuda" in device else None)  # gloo (CPU) takes no device ids
    # bf16 autocast on GPU: matmuls in bf16, losses in fp32 (they call .float()), no loss scaling needed
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if "cuda" in device else contextlib.nullcontext()

    def save(step):  # atomic (mdlm.save_checkpoint): a crash mid-write leaves the previous one intact
        rng = {"data": gen.get_state(), "torch": torch.get_rng_state()}  # a resume continues both streams
        mdlm.save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict(), "ema": ema.state_dict(),
                              "optimizer": opt.state_dict(), "step": step, "rng": rng, "meta": meta,
                              "args": vars(args)}, ckpt_path)

    log = None  # only rank 0 writes a log
    if master:
        os.makedirs(args.out_dir, exist_ok=True)
        print(f"{cfg.n_layer} layers, width {cfg.n_embd}: {model.num_params() / 1e6:.2f}M parameters on "
              f"{device}{f' x {world}' if world > 1 else ''}; {len(train_split)} training examples/bytes; "
              f"batch {args.grad_accum} x {args.batch_size}")
        log = open(log_path, "a")  # append: a resume continues the log
        if args.init_from and step == 0:  # where every fine-tune starts: the curves' first point
            log.write(json.dumps({"step": 0, **validate(ema, val_split, args, device, ctx)}) + "\n")
    # saved_step: the last checkpoint known good (a resume starts at one); start_step: for tokens/s
    stats, saved_step, start_step = {"truncated": 0}, (step if args.resume else None), step
    tokens_per_step = args.batch_size * args.grad_accum * args.seq_len  # all ranks together
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps,
               disable=not master or args.no_progress)  # rank 0 alone draws it
    t0 = time.time()
    try:
        for step in bar:
            # one global batch of grad_accum x batch_size examples, drawn identically on every rank
            # (same generator); each rank trains on its slice of each micro-batch, so N ranks
            # compute exactly what one process computes on the whole batch
            batch = get_batch(train_split, args, gen, stats, model)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, args)  # set every step, from the step alone
            opt.zero_grad(set_to_none=True)  # the first backward writes .grad
            loss = train_step(fwd, model, batch, args, rank, world, device, ctx, step)
            opt.step()
            ema_update(ema, model, step, args.ema)

            done = step + 1  # steps completed: what is logged and saved
            if not master:  # other ranks only train
                continue
            tok_s = (done - start_step) * tokens_per_step / (time.time() - t0)  # since this run (re)started
            rec = {"step": done, "loss": loss, "lr": lr_at(step, args), "tok_per_s": tok_s,
                   "time": time.time() - t0, "truncated": stats["truncated"]}
            mfu = model.estimate_mfu(tok_s, device)  # None off CUDA or on an unknown card
            if mfu is not None:
                rec["mfu"] = mfu
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:.0f}",
                            **({"mfu": f"{mfu:.1%}"} if mfu else {}))
            if done % args.eval_interval == 0 or done == args.steps:  # and at the end
                rec.update(validate(ema, val_split, args, device, ctx))
                bar.write(f"step {done}: train {loss / math.log(2):.4f}, "  # nats / ln 2 = bits
                          f"val {rec['val_bits']:.4f} bits/position")
            if args.sample_interval and (done % args.sample_interval == 0 or done == args.steps):
                bar.write(f"sample: {sample_text(ema, val_split, args, meta, device)!r}")
            log.write(json.dumps(rec) + "\n"), log.flush()  # flushed: a crash keeps every line
            if done % args.ckpt_interval == 0 or done == args.steps:
                save(done)
                saved_step = done  # the new last good checkpoint
    except (KeyboardInterrupt, FloatingPointError) as e:  # the latter: a non-finite loss
        where = f"{ckpt_path} (step {saved_step})" if saved_step is not None else "none written"
        what = f"interrupted at step {step}" if isinstance(e, KeyboardInterrupt) else \
            f"{e}; stopped without saving"
        raise UserError(f"{what}; last good checkpoint: {where}")
    finally:
        bar.close()
        if log:
            log.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return model, ema


def main(argv=None):
    """Train; any error the user can fix ends in one line on stderr and exit status 1."""
    args = get_args(argv)
    try:
        train(args)
    except (UserError, mdlm.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
