"""
Train a masked diffusion language model, or its autoregressive twin; fine-tune it with
position-wise cross-entropy (CE), with the slack CTC, or with both.

    python train.py                                    # pretrain an MDLM on CPython's docs (CPU)
    python train.py --objective ar --out-dir out-ar    # the AR twin: baseline and judge
    python train.py --init-from out/ckpt.pt --out-dir out-ctc \\
        --loss ctc --slack-rate 0.1 --prompt-len 64 --steps 500   # slack CTC fine-tune
    python train.py --init-from out/ckpt.pt --out-dir out-ce \\
        --loss ce --slack-rate 0.1 --prompt-len 64 --steps 500    # the matched CE fine-tune
    python train.py --data big.txt --grad-accum 8 ...  # any file size (memory-mapped), batch 8 x B
    python train.py --data corpus.bin ...              # token ids of any tokenizer (prepare.py)
    torchrun --nproc_per_node 2 train.py ...           # data parallel (nccl on GPU, gloo on CPU)

The method lives in the two leaves, mdlm.py (masking, the model, the NELBO) and ctc_slack.py (slack
placement, canvases, the slack CTC); objective.py builds the batches and losses from them. This
file holds the settings, the setup and one flat loop, which shows the method: the batch, the
forward process (mdlm.forward_process), the model and the loss (objective.loss).

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
from dataclasses import dataclass

import torch
from tqdm import tqdm

import common
import ctc_slack
import data
import mdlm
import objective
import sampling
from common import UserError

# ----------------------------------------------------------------------------------------------
# Settings


def get_args(argv=None):
    """The command line. Model sizes default to None, not to their values: "not given" (take the
    checkpoint's) must differ from "given" (must agree with the checkpoint); see model_config."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    # data and output
    a("--data", default=None, help="UTF-8 text file, or token file (.bin, see prepare.py), any "
      "size, memory-mapped (default: CPython's docs)")
    a("--vocab-size", type=int, default=None,
      help="ordinary ids of a .bin token file that has no .json metadata beside it")
    a("--sft", default=None, help="JSON lines {'prompt': ..., 'response': ...} (or 'prompt_ids', "
      "'response_ids') for conditional training")
    a("--bos", action="store_true",
      help="with --sft: begin every canvas with EOS as a start token (recorded in the checkpoint; "
      "its fine-tunes and decode.py add it too). Positions are rotary, so relative only: without "
      "a prompt, a MASK-only canvas looks the same at every position and the model cannot tell "
      "where the text begins; the start token is that anchor")
    a("--out-dir", default="out", help="where ckpt.pt and log.jsonl go (default: out)")
    a("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint")
    a("--init-from", default=None,
      help="start from this checkpoint's weights (fine-tuning), fresh optimizer")
    # objective
    a("--objective", choices=["mdlm", "ar"], default="mdlm",
      help="masked diffusion or left-to-right AR (default: mdlm)")
    a("--schedule", choices=mdlm.SCHEDULES, default="linear",
      help="noise schedule: linear alpha = 1 - t, or cosine alpha = cos(pi t / 2) "
           "(default: linear)")
    a("--loss", choices=objective.LOSSES, default="ce",
      help="position-wise CE (the NELBO), slack CTC, or ctc_weight*CTC + ce_weight*CE "
           "(default: ce)")
    a("--ctc-weight", type=float, default=1.0, help="weight of the CTC term in ctc+ce (default: 1)")
    a("--ce-weight", type=float, default=1.0, help="weight of the CE term in ctc+ce (default: 1)")
    a("--slack-rate", type=float, default=0.0,
      help="K = round(rate * R) slacks per response canvas of R positions (default: 0)")
    a("--slack-placement", choices=objective.PLACEMENTS, default=None,
      help="where the reference canvas puts slack: random positions, the tail, the model's "
           "Viterbi alignment, or mix (per row random with prob. --mix-random, else model) "
           "(default: tail for --loss ce, random otherwise; the README says why)")
    a("--mix-random", type=float, default=0.5,
      help="with --slack-placement mix: the share of rows placed at random (default: 0.5)")
    a("--collapse", choices=["surface", "standard"], default="surface",
      help="CTC collapse map: delete slack (surface), or merge repeats then delete slack "
           "(standard) (default: surface)")
    a("--prompt-len", type=int, default=0,
      help="P visible, unscored prompt tokens at the start of each window of a corpus (default: 0)")
    # model (default: new model of these sizes; with --init-from / --resume, the checkpoint's)
    a("--seq-len", type=int, default=256, help="canvas length T in tokens (default: 256)")
    a("--n-layer", type=int, default=None, help="Transformer blocks (default: 4)")
    a("--n-head", type=int, default=None, help="attention heads (default: 4)")
    a("--n-embd", type=int, default=None, help="model width (default: 128)")
    a("--dropout", type=float, default=0.0,
      help="dropout rate, for a large model on a small SFT set (default: 0)")
    # optimisation
    a("--steps", type=int, default=1500, help="optimizer steps in total (default: 1500)")
    a("--batch-size", type=int, default=32,
      help="examples per micro-batch, split across DDP ranks (default: 32)")
    a("--grad-accum", type=int, default=1,
      help="micro-batches per optimizer step: the effective batch is grad_accum x batch_size "
           "(default: 1)")
    a("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    a("--min-lr-ratio", type=float, default=0.1, help="cosine decays to lr * this (default: 0.1)")
    a("--warmup", type=int, default=100, help="linear warmup steps (default: 100)")
    a("--weight-decay", type=float, default=0.1,
      help="AdamW weight decay on matrices (default: 0.1)")
    a("--grad-clip", type=float, default=1.0,
      help="clip the gradient norm to this; 0: off (default: 1)")
    a("--ema", type=float, default=0.999,
      help="EMA decay of the weights used for eval, sampling and fine-tuning (default: 0.999)")
    # bookkeeping
    a("--eval-interval", type=int, default=250, help="validate every N steps (default: 250)")
    a("--eval-batches", type=int, default=8, help="validation batches, fixed seeds (default: 8)")
    a("--sample-interval", type=int, default=500,
      help="print a short sample every N steps; 0: never (default: 500)")
    a("--ckpt-interval", type=int, default=250,
      help="write the checkpoint every N steps, and at the end (default: 250)")
    a("--seed", type=int, default=1337,
      help="seed for init, data and noise: CPU runs repeat exactly (default: 1337)")
    a("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default: auto)")
    a("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
      help="bf16: autocast the matmuls to bf16 (fp32 weights; losses and the CTC in fp32/fp64); "
           "auto: bf16 on CUDA and on CPUs with bf16 units (AVX512-BF16, AMX), else fp32 "
           "(default: auto)")
    a("--compile", action="store_true", help="torch.compile the model")
    a("--no-progress", action="store_true", help="no tqdm bar (logs still go to log.jsonl)")
    return p.parse_args(argv)


def check_args(args):
    """Refuse bad settings up front, so a mistake never overwrites a good checkpoint: every value
    that cannot work (zero, negative, too large, inconsistent) is one message here."""
    # --seq-len enters as seq_len - 1, so "at least 1" means T >= 2 for it (the message says 2)
    positive = {"--steps": args.steps, "--batch-size": args.batch_size,
                "--grad-accum": args.grad_accum, "--seq-len": args.seq_len - 1,
                "--eval-interval": args.eval_interval, "--eval-batches": args.eval_batches,
                "--ckpt-interval": args.ckpt_interval}
    for flag, v in positive.items():
        if v < 1:
            raise UserError(f"{flag} must be at least {2 if flag == '--seq-len' else 1}")
    sizes = {"--n-layer": args.n_layer, "--n-head": args.n_head, "--n-embd": args.n_embd,
             "--vocab-size": args.vocab_size}
    for flag, v in sizes.items():
        if v is not None and v < 1:
            raise UserError(f"{flag} must be at least 1, got {v}")
    if args.n_embd is not None and args.n_head is not None and args.n_embd % args.n_head:
        raise UserError(f"--n-embd ({args.n_embd}) must be divisible by --n-head ({args.n_head})")
    if not (args.lr > 0 and args.warmup >= 0 and args.sample_interval >= 0
            and 0 <= args.min_lr_ratio <= 1):
        raise UserError("need --lr > 0, --warmup >= 0, --sample-interval >= 0, "
                        "0 <= --min-lr-ratio <= 1")
    if not (0 <= args.ema < 1 and 0 <= args.dropout < 1 and args.grad_clip >= 0
            and args.weight_decay >= 0):
        raise UserError("need 0 <= --ema < 1, 0 <= --dropout < 1, --grad-clip >= 0, "
                        "--weight-decay >= 0")
    if args.ctc_weight < 0 or args.ce_weight < 0 or not 0 <= args.mix_random <= 1:
        raise UserError("--ctc-weight and --ce-weight must be >= 0 and --mix-random in [0, 1]")
    if not 0.0 <= args.slack_rate < 1.0:
        raise UserError(f"--slack-rate must be in [0, 1), got {args.slack_rate}")
    if not 0 <= args.prompt_len < args.seq_len:
        raise UserError(f"--prompt-len ({args.prompt_len}) must be >= 0 and < --seq-len "
                        f"({args.seq_len})")
    if args.objective == "ar" and (args.loss != "ce" or args.slack_rate > 0 or args.prompt_len
                                   or args.sft):
        raise UserError("--objective ar trains plain next-token prediction: "
                        "no --loss ctc, slack, prompt or SFT")
    if args.data and args.sft:
        raise UserError("give --data (a corpus) or --sft (prompt/response pairs), not both")
    if args.bos and not args.sft:
        raise UserError("--bos is for --sft records (a corpus window starts mid-text)")
    if args.resume and args.init_from:
        raise UserError("give --resume (continue a run) or --init-from (fine-tune), not both")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UserError(f"--out-dir {args.out_dir!r} is a file, not a folder")
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    if os.path.exists(ckpt_path) and not args.resume:  # never overwrite a run by accident
        raise UserError(f"{ckpt_path} exists; pass --resume to continue it or choose another "
                        f"--out-dir")
    if args.resume and not os.path.exists(ckpt_path):
        raise UserError(f"--resume: there is no {ckpt_path} to continue")
    # the default placement: the matched CE baseline pads at the tail (as LLaDA pads with EOS),
    # the CTC losses place slack at random; resolved here, so that the checkpoint records it
    args.slack_placement = args.slack_placement or ("tail" if args.loss == "ce" else "random")
    # model alignment is a Viterbi path under the surface map: the loss must use that map too
    if args.slack_placement in ("model", "mix") and args.collapse != "surface":
        raise UserError(f"--slack-placement {args.slack_placement} needs --collapse surface")
    # Graves' map merges equal neighbours, so z0 must hold a slack between every repeat; the
    # canvases built here (EOS padding, slack placed without regard to repeats) do not
    if args.loss != "ce" and args.collapse == "standard":
        raise UserError("--collapse standard cannot train here: its canvases would need a slack "
                        "between equal neighbours (EOS padding repeats EOS); train with surface "
                        "(ctc_slack.ctc_slack_loss computes standard for canvases that have one)")


def objective_of(args, vocab):
    """The training objective that the flags describe, over the vocabulary's ids."""
    return objective.Objective(
        seq_len=args.seq_len, vocab_size=vocab.size, ar=args.objective == "ar", loss=args.loss,
        schedule=args.schedule, slack_rate=args.slack_rate, placement=args.slack_placement,
        mix_random=args.mix_random, prompt_len=args.prompt_len, collapse=args.collapse,
        ctc_weight=args.ctc_weight, ce_weight=args.ce_weight)


# ----------------------------------------------------------------------------------------------
# Setup: devices, data, model, optimizer.


def setup_device(name):
    """(rank, world size, device). torchrun sets RANK and WORLD_SIZE; a plain run is rank 0 of 1.
    GPUs talk through NCCL, CPU processes through gloo (so DDP is testable on a laptop)."""
    try:
        device = common.pick_device(name)
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


def load_splits(args, ckpt):
    """(train, val, vocab): SFT records (every 20th one held out at the end), or the ids of a
    corpus, memory-mapped (two numpy views of one file: nothing is read until a batch needs it).
    A checkpoint fixes the vocabulary: the data must use the same ids."""
    vocab = data.vocab_of(ckpt) if ckpt else data.Vocab()
    if args.sft:
        if args.vocab_size is not None and not ckpt:  # SFT ids of a tokenizer not named here
            vocab = data.Vocab(args.vocab_size, "none")
        records = data.read_sft(args.sft, vocab)
        bos = args.bos or bool(ckpt and common.checkpoint_meta(ckpt)["bos"])
        records = [(data.with_start(p, bos, vocab), r) for p, r in records]
        train_ids, val_ids = data.split_sft(records)
        return train_ids, val_ids, vocab
    n = args.vocab_size
    if n is None and ckpt and args.data and args.data.endswith(".bin") and not os.path.isfile(
            os.path.splitext(args.data)[0] + ".json"):
        n = vocab.n_tokens  # a token file without metadata: the checkpoint's vocabulary reads it
    train_ids, val_ids, corpus_vocab = data.load_corpus(args.data, n_tokens=n)
    if ckpt and corpus_vocab.n_tokens != vocab.n_tokens:
        raise UserError(f"the corpus has {corpus_vocab.n_tokens} ordinary ids, the checkpoint's "
                        f"model {vocab.n_tokens}: train on data of the model's vocabulary")
    need = args.seq_len + 1  # an AR window reads T tokens and predicts T
    if len(train_ids) < need or len(val_ids) < need:
        raise UserError(f"the corpus ({len(train_ids) + len(val_ids)} tokens) is too short for "
                        f"--seq-len {args.seq_len}: both splits need at least {need} tokens")
    return train_ids, val_ids, vocab if ckpt else corpus_vocab


def model_config(args, ckpt, vocab):
    """The model's config: from the checkpoint when there is one (flags must then agree), else
    flags. Size flags default to None so that "not given" and "given, equal to the default"
    differ: a fine-tune needs no size flags, and a size flag that contradicts the checkpoint is
    an error."""
    sizes = {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd}
    if ckpt is None:
        defaults = mdlm.ModelConfig(vocab_size=vocab.size)
        sizes = {k: getattr(defaults, k) if v is None else v for k, v in sizes.items()}
        if sizes["n_embd"] % sizes["n_head"]:  # check_args saw only given flags
            raise UserError(f"width {sizes['n_embd']} must be divisible by {sizes['n_head']} heads")
        return mdlm.ModelConfig(vocab_size=vocab.size, seq_len=args.seq_len,
                                causal=args.objective == "ar", dropout=args.dropout, **sizes)
    cfg = mdlm.ModelConfig.from_dict(ckpt["config"])
    for k, v in sizes.items():
        if v is not None and v != getattr(cfg, k):
            raise UserError(f"--{k.replace('_', '-')} {v} differs from the checkpoint's "
                            f"{getattr(cfg, k)}")
    if args.seq_len > cfg.seq_len:  # the rotary tables stop at cfg.seq_len
        raise UserError(f"--seq-len {args.seq_len} is longer than the model's seq_len "
                        f"{cfg.seq_len}")
    if cfg.causal != (args.objective == "ar"):
        kind = "an AR" if cfg.causal else "an MDLM"
        raise UserError(f"the checkpoint is {kind} model; --objective disagrees")
    cfg.dropout = args.dropout  # a training choice, not part of the model
    return cfg


@dataclass(frozen=True)
class Schedule:
    """The learning rate over the run: linear warmup, then a cosine decay to lr * min_lr_ratio."""
    lr: float
    warmup: int
    steps: int
    min_lr_ratio: float

    def at(self, step):
        """The rate of step `step` (as nanoGPT): a pure function of the step, so a resumed run
        needs no scheduler state."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup  # step 0 trains at lr / warmup, not 0
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)  # 0 -> 1
        # lr * (m + (1 - m) * (1 + cos(pi * progress)) / 2): lr at progress 0, lr * m at 1
        m = self.min_lr_ratio
        return self.lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * progress)))


def run_meta(args, init_meta, vocab):
    """What decoding needs to know: was slack trained, which collapse map defines the output, the
    vocabulary, and whether prompts begin with a start token. A model that never saw SLACK must
    never sample it (its SLACK logit is untrained), and the collapse map of training is the one
    that turns its canvas into text."""
    uses_slack = args.slack_rate > 0 or args.loss != "ce" or bool(args.sft)
    slack = uses_slack or bool(init_meta.get("slack"))  # a fine-tune keeps what its init knew
    collapse = args.collapse if uses_slack else init_meta.get("collapse", args.collapse)
    return {"objective": args.objective, "schedule": args.schedule, "loss": args.loss,
            "slack": slack, "collapse": collapse, "vocab": vocab.record(),
            "bos": args.bos or bool(init_meta.get("bos"))}  # prompts begin with EOS (--bos)


@dataclass
class Run:
    """Everything a training run holds: built fresh, from --init-from, or restored by --resume."""
    cfg: mdlm.ModelConfig
    model: torch.nn.Module  # the weights being trained
    ema: torch.nn.Module  # their moving average: validated, sampled and saved for decoding
    opt: torch.optim.Optimizer
    gen: torch.Generator  # draws every batch and all the noise
    step: int  # optimizer steps done
    meta: dict  # run_meta


def build(args, device, ckpt, vocab):
    """The Run of a fresh start, a fine-tune of --init-from (its EMA weights, a new optimizer) or
    a --resume (everything as it was saved)."""
    cfg = model_config(args, ckpt, vocab)
    # both constructors draw initial weights from torch's RNG (seeded in train): model, then ema
    model = mdlm.Transformer(cfg).to(device)
    ema = mdlm.Transformer(cfg).to(device).eval()
    opt = objective.make_optimizer(model, args.lr, args.weight_decay)  # lr: set every step
    run = Run(cfg, model, ema, opt, torch.Generator().manual_seed(args.seed), 0,
              run_meta(args, ckpt.get("meta", {}) if ckpt else {}, vocab))
    if ckpt is None:
        ema.load_state_dict(model.state_dict())  # the EMA starts at the initial weights
        return run
    # a fine-tune starts from the EMA weights (those that validated), if the checkpoint has them
    weights = ckpt["model"] if args.resume else (ckpt.get("ema") or ckpt["model"])
    try:
        model.load_state_dict(weights)
        ema.load_state_dict((ckpt.get("ema") or ckpt["model"]) if args.resume else weights)
    except RuntimeError as e:
        raise UserError(f"the checkpoint does not fit this model: {str(e).splitlines()[0]}")
    if args.resume:
        run.opt.load_state_dict(ckpt["optimizer"])  # Adam's moments and step count
        run.gen.set_state(ckpt["rng"]["data"])  # the batches continue exactly where they stopped
        torch.set_rng_state(ckpt["rng"]["torch"])  # dropout draws from it
        run.step, run.meta = ckpt["step"], ckpt["meta"]
    return run


def save(run, args, path):
    """The checkpoint: written atomically (common.save_checkpoint), so a crash mid-write leaves the
    previous one intact; both random streams are saved, so a resume continues them exactly."""
    rng = {"data": run.gen.get_state(), "torch": torch.get_rng_state()}
    common.save_checkpoint({"config": run.cfg.to_dict(), "model": run.model.state_dict(),
                          "ema": run.ema.state_dict(), "optimizer": run.opt.state_dict(),
                          "step": run.step, "rng": rng, "meta": run.meta, "args": vars(args)}, path)


# ----------------------------------------------------------------------------------------------
# Validation and samples, both on the EMA weights, with fixed seeds.


@dataclass(frozen=True)
class Checks:
    """What the run checks as it goes, and how often (steps)."""
    eval_interval: int
    eval_batches: int
    batch_size: int
    sample_interval: int
    ckpt_interval: int
    seed: int  # validation draws from seed + 1, samples from seed


@torch.no_grad()
def validate(model, val, obj, checks, device, ctx):
    """Validation losses in bits per position: "val_bits", the training objective (pretraining:
    the NELBO in bits per token, an upper bound; AR: the exact bits per token). A run with slack
    also scores the SAME held-out examples and noise under CE with tail slack and under CTC with
    tail and with random slack, so that the learning curves of different arms compare directly."""
    jobs = [("val_bits", obj.loss, obj.placement)]
    if not obj.ar and (obj.slack_rate > 0 or isinstance(val, list)):
        jobs += [("val_ce_tail", "ce", "tail"), ("val_ctc_tail", "ctc", "tail"),
                 ("val_ctc_random", "ctc", "random")]
    n, out = checks.batch_size, {}
    for key, kind, placement in jobs:
        gen = torch.Generator().manual_seed(checks.seed + 1)  # the same batches every time
        total = 0.0
        for _ in range(checks.eval_batches):
            b = objective.get_batch(val, obj, n, gen, {"truncated": 0}, model, placement,
                                    align_batch=n)
            if not obj.ar:  # the forward process, as in training
                b["t"], b["z_t"] = mdlm.forward_process(b["z0"], obj.schedule, mask_id=obj.mask_id,
                                                        generator=gen, is_prompt=b["is_prompt"])
            b = {k: v.to(device) for k, v in b.items()}  # whole, not sliced: only rank 0 validates
            with ctx:
                logits = model(b["x"][:, :-1] if obj.ar else b["z_t"])
                total += objective.loss(logits, b, obj, kind).mean().item()
        out[key] = total / checks.eval_batches / math.log(2)  # nats -> bits
    return out


@torch.no_grad()
def sample_text(model, val, meta, prompt_len, seed, device):
    """A short continuation of the start of the held-out text (or of the first held-out prompt)."""
    gen = torch.Generator().manual_seed(seed)
    T = model.cfg.seq_len
    P = prompt_len or min(32, T // 4)  # pretraining: a short prompt
    start = []  # the start token (--bos), kept in front of the prompt's last P tokens
    if isinstance(val, list):
        start = val[0][0][:1] if meta.get("bos") else []
        ids = start + val[0][0][len(start):][-P:]
    else:
        ids = data.windows(val, [0], P)[0].tolist()
    prompt = torch.tensor([ids], dtype=torch.long, device=device)  # (1, P)
    L = T - prompt.shape[1]  # fill the rest of the canvas
    if meta["objective"] == "ar":
        out = sampling.generate_ar(model, prompt, L, generator=gen)
    else:  # steps = L: one position per step
        out = sampling.generate(model, prompt, L, steps=L, schedule=meta["schedule"],
                                generator=gen, allow_slack=meta["slack"])
    # read out as decode.py reads it: only a slack-trained model's canvas through its collapse
    # map (the surface map deletes slack alone, and a model that never samples slack has none)
    eos, slack, mask = mdlm.special_ids(model.cfg.vocab_size)
    collapse = meta["collapse"] if meta["slack"] else "surface"
    cont = ctc_slack.read_outputs(out["canvas"], prompt_lengths=len(ids), slack_id=slack,
                                  eos_id=eos, mask_id=mask, collapse=collapse)[0]
    vocab = data.Vocab.from_record(meta["vocab"])
    shown = ids[len(start):]
    if not vocab.has_text():  # ids, where the tokenizer is not at hand
        return f"{shown} |> {cont}"
    return vocab.decode(shown) + " |> " + vocab.decode(cont)


# ----------------------------------------------------------------------------------------------
# Setup: check the flags, then build (or restore) the run.


@dataclass
class Setup:
    """What the loop needs: the run, the module that runs it (compiled or DDP-wrapped), the
    splits, the objective, this process's place among the ranks, the autocast context."""
    run: Run
    fwd: torch.nn.Module
    train: object  # SFT records (a list) or the ids of a corpus (a memmap)
    val: object
    obj: objective.Objective
    rank: int
    world: int
    device: str
    ctx: object
    steps: int  # --steps, the end of the run
    grad_accum: int
    saved: object = None  # the step of the last good checkpoint, None before the first


def setup(args):
    """The order matters: the flags are refused before any file is touched, and torch's seed is
    set after DDP setup and before the model is built, so a seed gives the same initial weights
    on every rank and in every run."""
    check_args(args)
    rank, world, device = setup_device(args.device)
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} must be divisible by the {world} ranks")
    torch.manual_seed(args.seed)  # the initial weights
    src = os.path.join(args.out_dir, "ckpt.pt") if args.resume else args.init_from
    ckpt = common.load_checkpoint(src) if src else None
    train_split, val_split, vocab = load_splits(args, ckpt)
    run = build(args, device, ckpt, vocab)
    fwd = torch.compile(run.model) if args.compile else run.model  # saved: model's plain keys
    if world > 1:  # gradients are averaged over ranks inside backward()
        fwd = torch.nn.parallel.DistributedDataParallel(
            fwd, device_ids=[device] if "cuda" in device else None)  # gloo takes no device ids
    # bf16 autocast: matmuls in bf16, the losses in fp32 (they call .float()) and the band CTC in
    # fp64; fp32 weights, so no loss scaling is needed. A CPU without bf16 units would emulate it,
    # slower than fp32, so auto takes it only where the hardware has it
    bf16 = args.dtype == "bf16" or (args.dtype == "auto" and common.has_bf16(device))
    ctx = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else None
    return Setup(run, fwd, train_split, val_split, objective_of(args, vocab), rank, world, device,
                 ctx or contextlib.nullcontext(), args.steps, args.grad_accum,
                 run.step if args.resume else None)


# ----------------------------------------------------------------------------------------------
# The training loop: batch -> forward process -> model -> loss -> step -> EMA -> log.


def loop(s, args, log, bar):
    """Train from s.run.step to --steps. Each step draws one global batch of grad_accum x
    batch_size examples, identically on every rank (the same generator); each rank trains on its
    slice of each micro-batch, so N ranks compute exactly what one process computes on the whole
    batch. s.saved follows the last good checkpoint."""
    run, obj, n = s.run, s.obj, args.batch_size * args.grad_accum
    local = args.batch_size // s.world  # this rank's examples per micro-batch
    schedule = Schedule(args.lr, args.warmup, args.steps, args.min_lr_ratio)
    checks = Checks(args.eval_interval, args.eval_batches, args.batch_size, args.sample_interval,
                    args.ckpt_interval, args.seed)
    t0, start, stats = time.time(), run.step, {"truncated": 0}
    for step in bar:
        # the clean canvases z0: prompt, then the response with its slack placed (and y)
        b = objective.get_batch(s.train, obj, n, run.gen, stats, run.model,
                                align_batch=args.batch_size)
        if not obj.ar:  # the forward process: t ~ U[eps, 1] stratified, z_t ~ q(z_t | z0), each
            # response position masked w.p. 1 - alpha(t): (n,) and (n, T)
            b["t"], b["z_t"] = mdlm.forward_process(b["z0"], obj.schedule, mask_id=obj.mask_id,
                                                    generator=run.gen, is_prompt=b["is_prompt"])
        for group in run.opt.param_groups:
            group["lr"] = schedule.at(step)  # set every step, from the step alone
        run.opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for m in range(args.grad_accum):  # micro-batch m; this rank's slice of it
            lo = m * args.batch_size + s.rank * local
            mb = {k: v[lo:lo + local].to(s.device) for k, v in b.items()}
            last = s.world == 1 or m == args.grad_accum - 1  # one all-reduce per step
            with s.ctx, contextlib.nullcontext() if last else s.fwd.no_sync():
                logits = s.fwd(mb["x"][:, :-1] if obj.ar else mb["z_t"])  # (local, T, V)
                loss = objective.loss(logits, mb, obj).mean() / args.grad_accum  # nats/position
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item() * args.grad_accum} at step "
                                             f"{run.step}")
                loss.backward()  # each micro-batch / grad_accum: the mean over the whole batch
            loss_sum += loss.item()
        # clipping matters more here than for an AR model: w(t) = 1/t makes a batch whose
        # stratified times start near eps weigh its few masked tokens up to 1000x
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), args.grad_clip)
        run.opt.step()
        objective.ema_update(run.ema, run.model, run.step, args.ema)
        run.step += 1
        if s.rank == 0:  # only rank 0 validates, logs and saves
            rec = {"step": run.step, "loss": loss_sum, "lr": schedule.at(run.step - 1),
                   "time": time.time() - t0, "truncated": stats["truncated"]}
            log_step(s, rec, run.step - start, checks, (log, bar))
            if run.step % checks.ckpt_interval == 0 or run.step == args.steps:
                save(run, args, os.path.join(args.out_dir, "ckpt.pt"))
                s.saved = run.step  # the new last good checkpoint


def log_step(s, rec, done_here, checks, out):
    """One line of log.jsonl per step: rec (step, loss, lr, seconds since this process started,
    truncated examples) with tokens/s over the done_here steps of this process, MFU on CUDA;
    validation every eval_interval steps and at the end; a sample every sample_interval steps;
    out = (the log file, the progress bar). The line is flushed at once, so a crash keeps it."""
    run, done, (log, bar), loss = s.run, s.run.step, out, rec["loss"]
    tok_s = done_here * checks.batch_size * s.grad_accum * s.obj.seq_len / rec["time"]
    rec = {**rec, "tok_per_s": tok_s}
    mfu = common.estimate_mfu(run.model, tok_s, s.device)  # None off CUDA or on an unknown card
    if mfu is not None:
        rec["mfu"] = mfu
    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tok_s:.0f}",
                    **({"mfu": f"{mfu:.1%}"} if mfu else {}))
    if done % checks.eval_interval == 0 or done == s.steps:
        rec.update(validate(run.ema, s.val, s.obj, checks, s.device, s.ctx))
        bar.write(f"step {done}: train {loss / math.log(2):.4f}, "  # nats / ln 2 = bits
                  f"val {rec['val_bits']:.4f} bits/position")
    if checks.sample_interval and (done % checks.sample_interval == 0 or done == s.steps):
        sample = sample_text(run.ema, s.val, run.meta, s.obj.prompt_len, checks.seed, s.device)
        bar.write(f"sample: {sample!r}")
    log.write(json.dumps(rec) + "\n")
    log.flush()


def train(args):
    """Set up, then loop; returns (model, ema). Ctrl-C or a non-finite loss ends in one message
    naming the last good checkpoint."""
    s = setup(args)
    run = s.run
    if run.step >= args.steps:  # a resume of a finished run
        print(f"{args.out_dir}/ckpt.pt is already at step {run.step} >= --steps {args.steps}: "
              f"nothing to do")
        return run.model, run.ema
    ckpt_path, log = os.path.join(args.out_dir, "ckpt.pt"), None
    if s.rank == 0:
        os.makedirs(args.out_dir, exist_ok=True)
        print(f"{run.cfg.n_layer} layers, width {run.cfg.n_embd}: "
              f"{run.model.num_params() / 1e6:.2f}M parameters on {s.device}"
              f"{f' x {s.world}' if s.world > 1 else ''}; {len(s.train)} training "
              f"examples/tokens; batch {args.grad_accum} x {args.batch_size}")
        log = open(os.path.join(args.out_dir, "log.jsonl"), "a")  # a resume continues the log
        if args.init_from and run.step == 0:  # where a fine-tune starts: its curves' first point
            checks = Checks(args.eval_interval, args.eval_batches, args.batch_size,
                            args.sample_interval, args.ckpt_interval, args.seed)
            first = validate(run.ema, s.val, s.obj, checks, s.device, s.ctx)
            log.write(json.dumps({"step": 0, **first}) + "\n")
    bar = tqdm(range(run.step, args.steps), initial=run.step, total=args.steps,
               disable=s.rank != 0 or args.no_progress)
    try:
        loop(s, args, log, bar)
    except (KeyboardInterrupt, FloatingPointError) as e:  # the latter: a non-finite loss
        where = f"{ckpt_path} (step {s.saved})" if s.saved is not None else "none written"
        what = (f"interrupted at step {run.step}" if isinstance(e, KeyboardInterrupt)
                else f"{e}; stopped without saving")
        raise UserError(f"{what}; last good checkpoint: {where}")
    finally:
        bar.close()
        if log:
            log.close()
    if s.world > 1:
        # the ranks leave together: one that tears its process group down while rank 0 still
        # validates and saves can abort in gloo's teardown
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return run.model, run.ema


def main(argv=None):
    """Train; any error the user can fix ends in one line on stderr and exit status 1."""
    args = get_args(argv)
    try:
        train(args)
    except (UserError, common.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
