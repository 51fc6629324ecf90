"""
Train a masked diffusion language model on bytes, or its autoregressive twin; fine-tune it with
position-wise cross-entropy (CE), with the slack CTC, or with both.

    python train.py                                    # pretrain an MDLM on CPython's docs (CPU, ~15 min)
    python train.py --objective ar --out-dir out-ar    # the AR twin: baseline and judge
    python train.py --init-from out/ckpt.pt --out-dir out-ctc \\
        --loss ctc --slack-rate 0.1 --prompt-len 64 --steps 500   # slack CTC fine-tune
    python train.py --init-from out/ckpt.pt --out-dir out-ce \\
        --loss ce --slack-rate 0.1 --prompt-len 64 --steps 500    # the matched CE fine-tune
    torchrun --nproc_per_node 2 train.py ...           # data parallel (nccl on GPU, gloo on CPU)

Papers: MDLM (Sahoo et al. 2024, arXiv 2406.07524) for the NELBO; LLaDA (Nie et al. 2025,
arXiv 2502.09992) for conditional training; the slack CTC (arXiv 2601.22947) with Imputer-style
marginalisation over masked positions (Chan et al. 2020, arXiv 2002.08926).
"""

import argparse
import ast
import contextlib
import json
import math
import os
import sys
import sysconfig
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import mdlm
from ctc_slack import ctc_slack_align, ctc_slack_loss
from mdlm import EOS, MASK, SLACK


class UserError(Exception):
    """Bad input: printed as one line, exit code 1, nothing written over."""


# ----------------------------------------------------------------------------------------------
# Settings


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    # data and output
    a("--data", default=None, help="UTF-8 text file to train on (default: CPython's own documentation)")
    a("--sft", default=None, help="JSON lines {'prompt': ..., 'response': ...} for conditional fine-tuning")
    a("--out-dir", default="out", help="where ckpt.pt and log.jsonl go (default: out)")
    a("--resume", action="store_true", help="continue the run in --out-dir from its checkpoint")
    a("--init-from", default=None, help="start from this checkpoint's weights (fine-tuning), fresh optimizer")
    # objective
    a("--objective", choices=["mdlm", "ar"], default="mdlm", help="masked diffusion or left-to-right AR")
    a("--schedule", choices=mdlm.SCHEDULES, default="linear", help="noise schedule alpha(t) (default: linear)")
    a("--loss", choices=["ce", "ctc", "ctc+ce"], default="ce",
      help="MDLM loss: position-wise CE (NELBO), slack CTC, or ctc_weight*CTC + ce_weight*CE (default: ce)")
    a("--ctc-weight", type=float, default=1.0, help="weight of the CTC term in ctc+ce (default: 1)")
    a("--ce-weight", type=float, default=1.0, help="weight of the CE term in ctc+ce (default: 1)")
    a("--slack-rate", type=float, default=0.0,
      help="K = round(rate * R) slacks per response canvas of R positions (default: 0)")
    a("--slack-placement", choices=["random", "tail", "model"], default=None,
      help="where the reference canvas puts slack: random positions, the tail, or the model's Viterbi "
           "alignment (default: tail for --loss ce, random otherwise)")
    a("--collapse", choices=["surface", "standard"], default="surface",
      help="CTC collapse map: delete slack (surface) or merge repeats then delete slack (standard)")
    a("--prompt-len", type=int, default=0, help="P visible, unscored prompt bytes at the start of each canvas")
    # model (default: new model of these sizes; with --init-from / --resume they come from the checkpoint)
    a("--seq-len", type=int, default=256, help="canvas length T in tokens (default: 256)")
    a("--n-layer", type=int, default=None, help="Transformer blocks (default: 4)")
    a("--n-head", type=int, default=None, help="attention heads (default: 4)")
    a("--n-embd", type=int, default=None, help="model width (default: 128)")
    a("--dropout", type=float, default=0.0, help="dropout rate (default: 0)")
    # optimisation
    a("--steps", type=int, default=1500, help="optimizer steps in total (default: 1500)")
    a("--batch-size", type=int, default=32, help="global batch size, split across DDP ranks (default: 32)")
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


# ----------------------------------------------------------------------------------------------
# Data. The default corpus is documentation every CPython install carries, so nothing is
# downloaded: the help topics of pydoc_data plus the docstrings of the standard library, read with
# `ast` (never imported), in sorted file order, capped at ~1.5 MB, cached to .cache/.

CORPUS_BYTES = 1_500_000  # enough for a 1M-parameter model to learn English-like text on a CPU
VAL_FRACTION = 0.05  # the last 5% of the bytes is held out (after, not mixed in: no near-duplicates)


def build_default_corpus():
    """Assemble the default corpus deterministically from this Python's standard library."""
    stdlib = sysconfig.get_paths()["stdlib"]
    parts = []
    topics_src = open(os.path.join(stdlib, "pydoc_data", "topics.py"), encoding="utf-8").read()
    for node in ast.parse(topics_src).body:  # `topics = {name: text, ...}`
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            topics = ast.literal_eval(node.value)
            parts += [topics[k].strip() for k in sorted(topics)]
    size = sum(len(s.encode()) for s in parts)
    for root, dirs, files in sorted(os.walk(stdlib)):
        dirs[:] = sorted(d for d in dirs if d not in ("test", "tests", "site-packages", "idlelib"))
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                tree = ast.parse(open(os.path.join(root, name), encoding="utf-8").read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 200:  # skip one-liners: they teach little
                        parts.append(doc)
                        size += len(doc.encode()) + 2
            if size >= CORPUS_BYTES:
                return "\n\n".join(parts)
    return "\n\n".join(parts)


def default_corpus_path():
    v = sys.version_info
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", f"pydoc-{v[0]}.{v[1]}.txt")


def read_text(path):
    """Read a UTF-8 text file, refusing missing, empty and binary files with a clear message."""
    if not os.path.isfile(path):
        raise UserError(f"data file {path!r} does not exist")
    raw = open(path, "rb").read()
    if not raw.strip():
        raise UserError(f"data file {path!r} is empty")
    if b"\x00" in raw:
        raise UserError(f"data file {path!r} looks binary (it contains NUL bytes); give a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path!r} is not UTF-8 text ({e})")


def load_corpus(data=None):
    """-> (train_ids, val_ids): 1-D uint8 tensors of bytes; the last 5% is held out."""
    if data is None:
        path = default_corpus_path()
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write(build_default_corpus())
            os.replace(path + ".tmp", path)
        data = path
    # bytes are the tokens (mdlm.encode); uint8 keeps the corpus small, batches are cast to long
    ids = torch.tensor(list(read_text(data).encode("utf-8")), dtype=torch.uint8)
    n_val = max(1, int(len(ids) * VAL_FRACTION))
    return ids[:-n_val], ids[-n_val:]


def read_sft(path):
    """JSON lines {"prompt": str, "response": str} -> list of (prompt ids, response ids + EOS)."""
    if not os.path.isfile(path):
        raise UserError(f"SFT file {path!r} does not exist")
    records = []
    with open(path, encoding="utf-8", errors="strict") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})")
            if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("prompt", "response")):
                raise UserError(f"{path}:{n}: need an object with string keys 'prompt' and 'response'")
            records.append((mdlm.encode(rec["prompt"]), mdlm.encode(rec["response"]) + [EOS]))
    if not records:
        raise UserError(f"SFT file {path!r} has no records")
    return records


# ----------------------------------------------------------------------------------------------
# Examples and canvases. Every example is a prompt (visible, never masked or scored) followed by a
# response canvas of R = T - P positions holding the U target tokens y and K = R - U slacks.
# Pretraining is the special case P = 0, K = 0: the canvas is just a window of text.
#
#     z0:   T h e _ l i s t | t y p e · i s _ a · m u t a b l e     (· = SLACK, here K = 2)
#           prompt, P = 8     response canvas, R = 22, y = "type is a mutable", U = 20
#     z_t:  T h e _ l i s t | t ? p ? · ? ? _ ? ? m ? t ? ? l ?       (? = MASK, prob. 1 - alpha(t))
#
# CE scores each masked position against z0 (SLACK included, at the place z0 put it); CTC scores
# the masked positions against y under every alignment that agrees with the visible ones.


def text_examples(ids, B, T, P, rate, gen):
    """Random windows of the byte stream: P prompt bytes, then U = R - K target bytes.
    -> prompt (B, P), P (B,), y (B, U), U (B,); every row has the same sizes here."""
    R = T - P
    U = R - round(rate * R)  # K = round(rate * R) positions of the canvas are left for slack
    offs = torch.randint(0, len(ids) - (P + U) + 1, (B,), generator=gen)
    win = torch.stack([ids[o:o + P + U] for o in offs.tolist()]).long()  # (B, P + U)
    full = lambda n: torch.full((B,), n, dtype=torch.long)
    return win[:, :P], full(P), win[:, P:], full(U)


def sft_examples(records, B, T, rate, gen, stats):
    """Random SFT records as prompt + target y of U_b = R_b - round(rate * R_b) tokens: the response
    and its EOS, padded with more EOS (as LLaDA pads its SFT responses), so that every canvas holds
    exactly K_b = round(rate * R_b) slacks. A response too long for that is truncated (and counted).
    Rows differ in P and U, so both are padded (with SLACK, never read)."""
    picks = torch.randint(0, len(records), (B,), generator=gen).tolist()
    prompts, ys = [], []
    for i in picks:
        prompt, y = records[i]
        prompt = prompt[-(T - 1):]  # keep at least one response position
        R = T - len(prompt)
        U = R - round(rate * R)
        stats["truncated"] += len(y) > U
        prompts.append(prompt), ys.append((y + [EOS] * U)[:U])
    pad = lambda seqs, n: torch.tensor([s + [SLACK] * (n - len(s)) for s in seqs], dtype=torch.long)
    P = torch.tensor([len(s) for s in prompts])
    U = torch.tensor([len(s) for s in ys])
    return pad(prompts, int(P.max())), P, pad(ys, max(int(U.max()), 1)), U


def place_slack(y, U, R, placement, gen):
    """Reference response canvas (B, R_max): y in order, slack at K_b = R_b - U_b positions.
    random: K_b positions uniformly at random; tail: all slack after the targets."""
    B, R_max = len(R), int(R.max())
    pos = torch.arange(R_max)[None, :]  # (1, R_max)
    # drawn for every placement, so that runs differing only in placement see the same noise after it
    scores = torch.rand(B, R_max, generator=gen).masked_fill(pos >= R[:, None], 2.0)
    if placement == "tail":
        is_slack = pos >= U[:, None]
    else:
        # rank uniform scores; the K_b lowest-ranked real positions of row b become slack
        rank = scores.argsort(1).argsort(1)  # (B, R_max)
        is_slack = rank < (R - U)[:, None]
    is_slack |= pos >= R[:, None]  # beyond the canvas: padding
    tok_idx = ((~is_slack).cumsum(1) - 1).clamp(min=0, max=max(y.shape[1] - 1, 0))  # y index at each position
    return torch.where(is_slack, torch.full_like(is_slack, SLACK, dtype=torch.long), y.gather(1, tok_idx))


def response_index(P, R_max, T):
    """(B, R_max) canvas positions of the response region (P_b + j), clamped inside the canvas."""
    return (P[:, None] + torch.arange(R_max, device=P.device)[None, :]).clamp(max=T - 1)


def assemble(prompt, P, resp, T):
    """Prompt + response canvas -> z0 (B, T), keep (B, T) = prompt positions."""
    pos = torch.arange(T)[None, :]  # (1, T)
    keep = pos < P[:, None]
    from_prompt = prompt.gather(1, pos.clamp(max=max(prompt.shape[1] - 1, 0)).expand(len(P), -1)) \
        if prompt.shape[1] else torch.zeros(len(P), T, dtype=torch.long)
    from_resp = resp.gather(1, (pos - P[:, None]).clamp(0, resp.shape[1] - 1))
    return torch.where(keep, from_prompt, from_resp), keep


def get_batch(split, args, gen, stats, model=None):
    """One global batch as a dict of CPU tensors (all ranks draw the same one, then take a slice)."""
    T, B = args.seq_len, args.batch_size
    if args.objective == "ar":  # windows of T + 1 bytes: read T, predict the next T
        offs = torch.randint(0, len(split) - T - 1 + 1, (B,), generator=gen)
        return {"x": torch.stack([split[o:o + T + 1] for o in offs.tolist()]).long()}
    if isinstance(split, list):
        prompt, P, y, U = sft_examples(split, B, T, args.slack_rate, gen, stats)
    else:
        prompt, P, y, U = text_examples(split, B, T, args.prompt_len, args.slack_rate, gen)
    R = T - P  # (B,) response canvas lengths
    placement = slack_placement(args)
    if placement == "model" and model is not None:
        resp = model_alignment(model, prompt, P, y, U, R, args)
    else:  # with no model at hand, "model" falls back to the tail
        resp = place_slack(y, U, R, "tail" if placement == "model" else placement, gen)
    z0, keep = assemble(prompt, P, resp, T)  # (B, T) clean canvas, (B, T) prompt positions
    # the forward process: stratified t, then mask each response position with prob. 1 - alpha(t)
    t = mdlm.sample_t(B, generator=gen)  # (B,)
    z_t = mdlm.forward_mask(z0, t, args.schedule, generator=gen, keep=keep)  # (B, T)
    return {"z0": z0, "z_t": z_t, "t": t, "keep": keep, "P": P, "y": y, "U": U, "R": R}


def slack_placement(args):
    """--slack-placement, or its default: the tail for --loss ce (the matched CE baseline pads at
    the tail, as LLaDA pads with EOS), random positions for the CTC losses."""
    return args.slack_placement or ("tail" if args.loss == "ce" else "random")


@torch.no_grad()
def model_alignment(model, prompt, P, y, U, R, args):
    """--slack-placement model: the most probable alignment of y under the current model, given the
    prompt and an all-MASK response (as the Imputer does). Costs one extra forward pass."""
    device = next(model.parameters()).device
    blank, _ = assemble(prompt, P, torch.full((len(P), int(R.max())), MASK), args.seq_len)
    log_p = response_log_probs(model(blank.to(device)), P.to(device), int(R.max()))
    return ctc_slack_align(log_p, y.to(device), R.to(device), U.to(device), slack_id=SLACK,
                           collapse=args.collapse).cpu()


# ----------------------------------------------------------------------------------------------
# Losses, one value per example (nats per scored position), then averaged over the batch.


def response_log_probs(logits, P, R_max):
    """log p over real tokens, EOS and SLACK (MASK is -inf: SUBS) at the response positions,
    left-aligned (B, R_max, V) so that the CTC sees each response canvas as its own sequence.
    Visible positions need no carry-over here: the CTC reads their token from the canvas."""
    logits = logits.float().index_fill(-1, torch.tensor([MASK], device=logits.device), float("-inf"))
    idx = response_index(P, R_max, logits.shape[1])  # (B, R_max)
    return logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1])).log_softmax(-1)  # (B, R_max, V)


def ctc_term(logits, b, schedule, collapse):
    """L_CTC = w(t) / R * -log sum_{alignments a: B(a) = y, a agrees with z_t} prod_i p_i(a_i)
    (METHOD.md section 6). The same weight w(t) and the same 1/R as the CE term, so that with K = 0
    and the surface collapse (a single alignment) the two are equal."""
    R_max = int(b["R"].max())
    log_p = response_log_probs(logits, b["P"], R_max)  # (B, R_max, V)
    canvas = b["z_t"].gather(1, response_index(b["P"], R_max, b["z_t"].shape[1]))  # (B, R_max)
    # -log P(y | z_t): the marginal over completions of the masked positions (ctc_slack.py). z_t is
    # a masking of a canvas that collapses to y, so at least one alignment exists: never +inf.
    nll = ctc_slack_loss(log_p, b["y"], b["R"], b["U"], slack_id=SLACK, canvas=canvas, mask_id=MASK,
                         collapse=collapse, reduction="none")  # (B,)
    return mdlm.w_t(b["t"], schedule) * nll / b["R"]


def compute_loss(model, b, args):
    """Per-example loss (B,) of the configured objective on batch b (tensors on the device)."""
    if args.objective == "ar":
        return mdlm.ar_loss(model(b["x"][:, :-1]), b["x"])
    logits = model(b["z_t"])  # (B, T, V): one forward pass serves both terms of ctc+ce
    ce = lambda: mdlm.mdlm_loss(logits, b["z0"], b["z_t"], b["t"], args.schedule, scored=~b["keep"])
    if args.loss == "ce":
        return ce()
    if args.loss == "ctc":
        return ctc_term(logits, b, args.schedule, args.collapse)
    return args.ctc_weight * ctc_term(logits, b, args.schedule, args.collapse) + args.ce_weight * ce()


# ----------------------------------------------------------------------------------------------
# Setup: arguments checked before anything is written, devices, model, optimizer.


def check_args(args):
    """Refuse bad settings up front, so a mistake never overwrites a good checkpoint."""
    if not 0.0 <= args.slack_rate < 1.0:
        raise UserError(f"--slack-rate must be in [0, 1), got {args.slack_rate}")
    if not 0 <= args.prompt_len < args.seq_len:
        raise UserError(f"--prompt-len ({args.prompt_len}) must be >= 0 and < --seq-len ({args.seq_len})")
    if args.objective == "ar" and (args.loss != "ce" or args.slack_rate > 0 or args.prompt_len or args.sft):
        raise UserError("--objective ar trains plain next-byte prediction: no --loss ctc, slack, prompt or SFT")
    if args.resume and args.init_from:
        raise UserError("give --resume (continue a run) or --init-from (fine-tune), not both")
    ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
    if os.path.exists(ckpt_path) and not args.resume:
        raise UserError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out-dir")
    args.slack_placement = slack_placement(args)  # resolved, so the checkpoint records it
    if args.slack_placement == "model" and args.collapse != "surface":
        raise UserError("--slack-placement model needs --collapse surface")


def setup_device(name):
    """(rank, world size, device). torchrun sets RANK and WORLD_SIZE; a plain run is rank 0 of 1.
    GPUs talk through NCCL, CPU processes through gloo (so DDP is testable on a laptop)."""
    device = mdlm.pick_device(name)
    if "RANK" not in os.environ:
        return 0, 1, device
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
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
        return mdlm.ModelConfig(seq_len=args.seq_len, causal=args.objective == "ar", dropout=args.dropout,
                                **sizes)
    cfg = mdlm.ModelConfig.from_dict(ckpt["config"])
    for k, v in sizes.items():
        if v is not None and v != getattr(cfg, k):
            raise UserError(f"--{k.replace('_', '-')} {v} differs from the checkpoint's {getattr(cfg, k)}")
    if args.seq_len > cfg.seq_len:
        raise UserError(f"--seq-len {args.seq_len} is longer than the model's seq_len {cfg.seq_len}")
    if cfg.causal != (args.objective == "ar"):
        kind = "an AR" if cfg.causal else "an MDLM"
        raise UserError(f"the checkpoint is {kind} model; --objective disagrees")
    if args.loss != "ce" or args.slack_rate > 0 or args.sft:
        if cfg.vocab_size <= SLACK:
            raise UserError("the checkpoint's vocabulary has no SLACK token; it cannot learn slack")
    cfg.dropout = args.dropout
    return cfg


def lr_at(step, args):
    """Linear warmup, then cosine decay from lr to lr * min_lr_ratio (as nanoGPT). A pure function
    of the step, so a resumed run needs no scheduler state."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, args):
    """AdamW; weight decay on matrices only (not on biases and norms). beta2 = 0.95, as in GPT-style
    training, lets the second-moment estimate follow the large swings of a 1/t-weighted loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95))


@torch.no_grad()
def ema_update(ema, model, step, decay):
    """ema <- d * ema + (1 - d) * model, with d ramped up early so the EMA does not lag at the start.
    The NELBO's gradient is noisy (one t and one mask per sequence), so the average of recent
    weights samples and validates better than the last ones (MDLM uses an EMA of 0.9999)."""
    d = min(decay, (1 + step) / (10 + step))
    # parameters(), not state_dict(): the tied embedding / output matrix must be updated once
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(d).add_(p.detach(), alpha=1 - d)


def run_meta(args, init_meta):
    """What decoding needs to know: was slack trained, and which collapse map defines the output.
    A model that never saw SLACK must never sample it (its SLACK logit is untrained), and the
    collapse map of training is the one that turns its canvas into text."""
    uses_slack = args.slack_rate > 0 or args.loss != "ce" or bool(args.sft)
    slack = uses_slack or bool(init_meta.get("slack"))
    collapse = args.collapse if uses_slack else init_meta.get("collapse", args.collapse)
    return {"objective": args.objective, "schedule": args.schedule, "loss": args.loss,
            "slack": slack, "collapse": collapse}


# ----------------------------------------------------------------------------------------------
# Validation and samples, both on the EMA weights, with fixed seeds.


@torch.no_grad()
def validate(model, val, args, device, ctx):
    """Mean validation loss in bits per position (for pretraining: the NELBO in bits per byte, an
    upper bound on the true bits per byte; for AR: the exact bits per byte). Fixed batches and
    noise, so curves are comparable across evaluations and runs. evaluate.py averages more t."""
    gen = torch.Generator().manual_seed(args.seed + 1)  # the same batches at every evaluation
    total = 0.0
    for _ in range(args.eval_batches):
        b = {k: v.to(device) for k, v in get_batch(val, args, gen, {"truncated": 0}, model).items()}
        with ctx:
            total += compute_loss(model, b, args).mean().item()
    return total / args.eval_batches / math.log(2)


@torch.no_grad()
def sample_text(model, val, args, meta, device):
    """A short continuation of the start of the held-out text."""
    import decode  # only for this printout

    gen = torch.Generator(device=device).manual_seed(args.seed)
    P = args.prompt_len if args.prompt_len else min(32, args.seq_len // 4)
    prompt = (torch.tensor(val[0][0][-P:]) if isinstance(val, list) else val[:P].long())[None].to(device)
    L = args.seq_len - prompt.shape[1]
    if meta["objective"] == "ar":
        out = decode.generate_ar(model, prompt, L, generator=gen)
    else:
        out = decode.generate(model, prompt, L, steps=L, schedule=args.schedule, generator=gen,
                              allow_slack=meta["slack"])
    ids = decode.finish(out["canvas"][0].tolist(), prompt.shape[1], meta["collapse"], meta["slack"])
    return mdlm.decode(prompt[0].tolist()) + " |> " + mdlm.decode(ids)


# ----------------------------------------------------------------------------------------------
# The training loop: data, model, then one flat loop of batch -> loss -> step -> EMA -> log.


def load_splits(args):
    """(train, val): SFT records (every 20th one held out at the end), or the bytes of a corpus."""
    if args.sft:
        records = read_sft(args.sft)
        n_val = max(1, len(records) // 20) if len(records) > 1 else 0
        return records[:len(records) - n_val], records[len(records) - n_val:] or records
    train_ids, val_ids = load_corpus(args.data)
    need = args.seq_len + 1
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
    model = mdlm.Transformer(cfg).to(device)
    ema = mdlm.Transformer(cfg).to(device).eval()
    opt = make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed)  # draws every batch and all the noise
    if ckpt is None:
        ema.load_state_dict(model.state_dict())
        return cfg, model, ema, opt, gen, 0, run_meta(args, {})
    weights = ckpt["model"] if args.resume else (ckpt.get("ema") or ckpt["model"])
    try:
        model.load_state_dict(weights)
        ema.load_state_dict((ckpt.get("ema") or ckpt["model"]) if args.resume else weights)
    except RuntimeError as e:
        raise UserError(f"checkpoint {src} does not fit this model: {e}")
    if not args.resume:
        return cfg, model, ema, opt, gen, 0, run_meta(args, ckpt.get("meta", {}))
    opt.load_state_dict(ckpt["optimizer"])
    gen.set_state(ckpt["rng"]["data"])  # the batches continue exactly where they stopped
    torch.set_rng_state(ckpt["rng"]["torch"])
    return cfg, model, ema, opt, gen, ckpt["step"], ckpt["meta"]


def train(args):
    check_args(args)
    rank, world, device = setup_device(args.device)
    master = rank == 0
    if args.batch_size % world:
        raise UserError(f"--batch-size {args.batch_size} must be divisible by the {world} DDP ranks")
    torch.manual_seed(args.seed)  # the initial weights
    ckpt_path, log_path = os.path.join(args.out_dir, "ckpt.pt"), os.path.join(args.out_dir, "log.jsonl")
    train_split, val_split = load_splits(args)
    cfg, model, ema, opt, gen, step, meta = build(args, device, ckpt_path)
    fwd = torch.compile(model) if args.compile else model
    if world > 1:  # gradients are averaged over ranks inside backward()
        fwd = torch.nn.parallel.DistributedDataParallel(fwd, device_ids=[device] if "cuda" in device else None)
    # bf16 autocast on GPU: matmuls in bf16, losses in fp32 (they call .float()), no loss scaling needed
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if "cuda" in device else contextlib.nullcontext()

    def save(step):  # atomic (mdlm.save_checkpoint): a crash mid-write leaves the previous one intact
        rng = {"data": gen.get_state(), "torch": torch.get_rng_state()}
        mdlm.save_checkpoint({"config": cfg.to_dict(), "model": model.state_dict(), "ema": ema.state_dict(),
                              "optimizer": opt.state_dict(), "step": step, "rng": rng, "meta": meta,
                              "args": vars(args)}, ckpt_path)

    if master:
        os.makedirs(args.out_dir, exist_ok=True)
        print(f"{cfg.n_layer} layers, width {cfg.n_embd}: {model.num_params() / 1e6:.2f}M parameters on {device}"
              f"{f' x {world}' if world > 1 else ''}; {len(train_split)} training examples/bytes")
    log = open(log_path, "a") if master else None
    stats, saved_step, start_step = {"truncated": 0}, (step if args.resume else None), step
    B_local = args.batch_size // world
    bar = tqdm(range(step, args.steps), initial=step, total=args.steps, disable=not master or args.no_progress)
    t0 = time.time()
    try:
        for step in bar:
            # one global batch, drawn identically on every rank (same generator); each trains on
            # its slice, so N ranks compute exactly what one process computes on the whole batch
            batch = get_batch(train_split, args, gen, stats, model)
            b = {k: v[rank * B_local:(rank + 1) * B_local].to(device) for k, v in batch.items()}
            for group in opt.param_groups:
                group["lr"] = lr_at(step, args)
            with ctx:
                loss = compute_loss(fwd, b, args).mean()
            if not torch.isfinite(loss):  # stop before the bad update reaches the weights
                last = f"step {saved_step}" if saved_step is not None else "none"
                raise UserError(f"loss is {loss.item()} at step {step}; stopped without saving "
                                f"(last good checkpoint: {last})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # clipping matters more here than for an AR model: w(t) = 1/t makes a batch whose
            # stratified times start near eps weigh its few masked tokens up to 1000x
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            opt.step()
            ema_update(ema, model, step, args.ema)

            done = step + 1
            if not master:
                continue
            tok_s = (done - start_step) * args.batch_size * args.seq_len / (time.time() - t0)
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tok_s:.0f}")
            rec = {"step": done, "loss": loss.item(), "lr": lr_at(step, args), "tok_per_s": tok_s,
                   "time": time.time() - t0, "truncated": stats["truncated"]}
            if done % args.eval_interval == 0 or done == args.steps:
                rec["val_bits"] = validate(ema, val_split, args, device, ctx)
                bar.write(f"step {done}: train {loss.item() / math.log(2):.4f}, "
                          f"val {rec['val_bits']:.4f} bits/position")
            if args.sample_interval and (done % args.sample_interval == 0 or done == args.steps):
                bar.write(f"sample: {sample_text(ema, val_split, args, meta, device)!r}")
            log.write(json.dumps(rec) + "\n"), log.flush()
            if done % args.ckpt_interval == 0 or done == args.steps:
                save(done)
                saved_step = done
    except KeyboardInterrupt:
        where = f"{ckpt_path} (step {saved_step})" if saved_step is not None else "none written"
        raise UserError(f"interrupted at step {step}; last good checkpoint: {where}")
    finally:
        bar.close()
        if log:
            log.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return model, ema


def main(argv=None):
    args = get_args(argv)
    try:
        train(args)
    except (UserError, mdlm.CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
