"""
The training objective: what one example is (a prompt, then a response canvas with slack), how it
is noised, how it is scored (CE, the slack CTC, or both), and one optimizer step on it. One shared
module, so that train.py and bench.py run exactly the same code; no command line.

    obj = objective.Objective(seq_len=48, vocab_size=V, loss="ctc", slack_rate=0.1,
                              placement="random")
    b = objective.get_batch(records, obj, 64, gen, stats)        # dict of (B, ...) CPU tensors
    loss = objective.compute_loss(model, b, obj).mean()          # nats per response position
    objective.train_step(model, model, opt, b, obj, micro_batch=64)  # one optimizer step

Papers: MDLM (Sahoo et al. 2024, arXiv 2406.07524) for the NELBO; LLaDA (Nie et al. 2025, arXiv
2502.09992) for conditional training with EOS padding; the slack CTC (arXiv 2601.22947) with
Imputer-style marginalisation over masked positions (Chan et al. 2020, arXiv 2002.08926).
"""

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

import ctc_slack
import data
import mdlm


# ----------------------------------------------------------------------------------------------
# Training examples. Every example is a prompt (visible, never masked or scored) followed by a
# response canvas of R = T - P positions holding the U target tokens y and K = R - U slacks, K
# from the slack rate (ctc_slack.slack_count). Pretraining is the special case P = 0, K = 0: the
# canvas is just a window of text.
#
#     z0:   T h e _ l i s t | t y p e · i s _ a · m u t a b l e     (· = SLACK, here K = 2)
#           prompt, P = 8     response canvas, R = 22, y = "type is a mutable", U = 20
#     z_t:  T h e _ l i s t | t ? p ? · ? ? _ ? ? m ? t ? ? l ?     (? = MASK, prob. 1 - alpha(t))
#
# CE scores each masked position against z0 (SLACK included, at the place z0 put it); the slack
# CTC scores the masked positions against y under every alignment that agrees with the visible
# ones. Every draw comes from one torch generator, so a run repeats exactly.

PLACEMENTS = ("random", "tail", "model", "mix")
LOSSES = ("ce", "ctc", "ctc+ce")


@dataclass
class Objective:
    """What one training example is and how it is scored; train.py and bench.py share it."""
    seq_len: int  # T, the canvas
    vocab_size: int  # V; the special ids are its last three (mdlm.special_ids)
    ar: bool = False  # next-token prediction with a causal model instead of masked diffusion
    loss: str = "ce"  # one of LOSSES
    schedule: str = "linear"  # one of mdlm.SCHEDULES
    slack_rate: float = 0.0  # K = round(rate * R) slacks per response canvas
    placement: str = "tail"  # where z0 puts them: one of PLACEMENTS
    mix_random: float = 0.5  # "mix": the share of rows placed at random, the others by the model
    prompt_len: int = 0  # P of a window of text (SFT records bring their own prompts)
    collapse: str = "surface"  # the CTC collapse map
    ctc_weight: float = 1.0  # ctc+ce: ctc_weight * L_CTC + ce_weight * L_CE
    ce_weight: float = 1.0


def text_batch(ids, B, T, P, rate, gen):
    """Random windows of a token stream (a memory-mapped file): P prompt ids, then U = R - K
    target ids. -> prompt (B, P), P (B,), y (B, U), U (B,); all rows have the same sizes here."""
    U = T - P - int(ctc_slack.slack_count(T - P, rate))
    offs = torch.randint(0, len(ids) - (P + U) + 1, (B,), generator=gen)
    win = data.windows(ids, offs, P + U)  # (B, P + U) int64, read from the file's pages
    full = lambda n: torch.full((B,), n, dtype=torch.long)  # noqa: E731
    return win[:, :P], full(P), win[:, P:], full(U)


def sft_batch(records, B, T, rate, gen, stats, eos):
    """Random SFT records as prompt + target y of U_b = R_b - K_b tokens: the response and its EOS,
    padded with more EOS (as LLaDA pads its SFT responses), so that every canvas holds exactly
    K_b = round(rate * R_b) slacks. A response too long for that is truncated (and counted in
    stats). Rows differ in P and U, so both are padded (with EOS, never read)."""
    picks = torch.randint(0, len(records), (B,), generator=gen).tolist()
    prompts, ys = [], []
    for i in picks:
        prompt, y = records[i]
        prompt = prompt[-(T - 1):]  # keep at least one response position
        U = T - len(prompt) - int(ctc_slack.slack_count(T - len(prompt), rate))
        stats["truncated"] += len(y) > U
        prompts.append(prompt), ys.append((y + [eos] * U)[:U])
    P, U = torch.tensor([len(s) for s in prompts]), torch.tensor([len(s) for s in ys])
    pad = lambda seqs, n: torch.tensor([s + [eos] * (n - len(s)) for s in seqs])  # noqa: E731
    return pad(prompts, int(P.max())), P, pad(ys, max(int(U.max()), 1)), U


@torch.no_grad()
def model_alignment(model, prompt, P, y, U, obj):
    """"model" placement: the most probable alignment of y under the current model, given the
    prompt and an all-MASK response (as the Imputer does), as a (B, R_max) reference canvas
    padded with SLACK. Costs one forward pass."""
    _, slack, mask = mdlm.special_ids(obj.vocab_size)
    device, T, R = next(model.parameters()).device, obj.seq_len, obj.seq_len - P  # R (B,)
    r = int(R.max())  # the longest response
    # blank (B, T): the prompt, then MASK to the end; log_p (B, r, V): the response positions only
    blank, _ = ctc_slack.build_canvas(prompt, torch.full((len(P), r), mask), prompt_lengths=P,
                                      canvas_length=T)
    logits = mdlm.ban_logits(model(blank.to(device)))  # SUBS: MASK is never a prediction
    log_p = ctc_slack.response_log_probs(logits, r, prompt_lengths=P.to(device), mask_id=mask)
    return ctc_slack.align_slack(log_p, y.to(device), target_lengths=U.to(device),
                                 canvas_lengths=R.to(device), slack_id=slack).cpu()


def reference_canvas(y, U, R, prompt, P, obj, gen, model, placement, align_batch):
    """The response canvas z0 (B, R_max) with slack placed as asked: random, tail, model (the
    current model's alignment; the tail while no model is at hand) or mix (per row, random with
    probability mix_random, else model). The random draws are made for every placement, so runs
    that differ only in placement see identical masking noise afterwards."""
    slack = mdlm.special_ids(obj.vocab_size)[1]
    simple = "random" if placement in ("random", "mix") else "tail"  # model's fallback: tail
    resp = ctc_slack.place_slack(y, simple, target_lengths=U, canvas_lengths=R, slack_id=slack,
                                 generator=gen)  # (B, R_max)
    pick_random = torch.rand(len(U), generator=gen) < obj.mix_random  # (B,) used by "mix" only
    if placement in ("random", "tail") or model is None:
        return resp
    # the alignment pass in micro-batches: its memory stays that of one training forward pass
    parts = [model_alignment(model, prompt[s:s + align_batch], P[s:s + align_batch],
                             y[s:s + align_batch], U[s:s + align_batch], obj)
             for s in range(0, len(U), align_batch)]
    aligned = torch.cat([torch.nn.functional.pad(a, (0, resp.shape[1] - a.shape[1]), value=slack)
                         for a in parts])  # (B, R_max)
    return aligned if placement == "model" else torch.where(pick_random[:, None], resp, aligned)


def _checked(ids, obj):
    """ids of a corpus, checked: a token file with ids past its vocabulary would otherwise train on
    EOS, SLACK or MASK, or index past the embedding (its first, middle and last MiB were checked
    when it was opened; this checks every batch as it is read)."""
    data.check_ids(ids.flatten(), data.Vocab(obj.vocab_size - 3), "a batch of the corpus")
    return ids


def get_batch(split, obj, n, gen, stats, model=None, placement=None, align_batch=64):
    """n examples as a dict of CPU tensors: SFT records (a list) or windows of a token stream.
    placement overrides obj.placement (validation scores the same examples under several)."""
    T = obj.seq_len
    eos, _, mask = mdlm.special_ids(obj.vocab_size)
    if obj.ar:  # windows of T + 1 ids: read T, predict the next T
        offs = torch.randint(0, len(split) - T - 1 + 1, (n,), generator=gen)  # last: len - T - 1
        return {"x": _checked(data.windows(split, offs, T + 1), obj)}  # (n, T + 1)
    if isinstance(split, list):
        prompt, P, y, U = sft_batch(split, n, T, obj.slack_rate, gen, stats, eos)
    else:
        prompt, P, y, U = text_batch(split, n, T, obj.prompt_len, obj.slack_rate, gen)
        _checked(torch.cat([prompt, y], 1), obj)
    resp = reference_canvas(y, U, T - P, prompt, P, obj, gen, model, placement or obj.placement,
                            align_batch)
    z0, keep = ctc_slack.build_canvas(prompt, resp, prompt_lengths=P, canvas_length=T)  # (n, T)
    # the forward process: stratified t, then mask each response position with prob. 1 - alpha(t)
    t = mdlm.sample_t(n, generator=gen)  # (n,)
    z_t = mdlm.forward_mask(z0, t, obj.schedule, mask_id=mask, generator=gen, keep=keep)
    return {"z0": z0, "z_t": z_t, "t": t, "keep": keep, "P": P, "y": y, "U": U}


# ----------------------------------------------------------------------------------------------
# The objective, one value per example (nats per scored position), then averaged over the batch.
# Both terms carry the NELBO weight w(t) and divide by the response length R, so that with K = 0
# and the surface collapse (one alignment) CTC and CE are equal (a test).


def loss_terms(logits, b, obj, loss=None):
    """L_CE, L_CTC or ctc_weight * L_CTC + ce_weight * L_CE (loss, default obj.loss) per example,
    from the model's logits (B, T, V) on the batch b (tensors on the logits' device)."""
    loss = loss or obj.loss
    _, slack, mask = mdlm.special_ids(obj.vocab_size)
    w = mdlm.w_t(b["t"], obj.schedule)  # (B,) w(t) = -alpha'(t) / (1 - alpha(t)), 1/t if linear
    terms = {}
    if loss != "ctc":  # the masked CE against z0 (SLACK included where z0 put it)
        terms["ce"] = mdlm.mdlm_loss(logits, b["z0"], b["z_t"], b["t"], obj.schedule,
                                     scored=~b["keep"])
    if loss != "ce":  # -log P(y | z_t): every completion of the masked positions that gives y
        terms["ctc"] = ctc_slack.slack_ctc_term(
            mdlm.ban_logits(logits), b["z_t"], b["y"], prompt_lengths=b["P"],
            target_lengths=b["U"], weight=w, slack_id=slack, mask_id=mask, collapse=obj.collapse)
    if loss != "ctc+ce":
        return terms[loss]
    return obj.ctc_weight * terms["ctc"] + obj.ce_weight * terms["ce"]  # same logits, same w(t)


def compute_loss(model, b, obj):
    """Per-example loss (B,) of the objective on batch b: one forward pass serves both terms."""
    if obj.ar:
        return mdlm.ar_loss(model(b["x"][:, :-1]), b["x"])  # reads x_<T, predicts x_1..x_T
    return loss_terms(model(b["z_t"]), b, obj)


# ----------------------------------------------------------------------------------------------
# One optimizer step: AdamW on the mean loss of the effective batch, then the EMA of the weights.


def make_optimizer(model, lr, weight_decay):
    """AdamW; weight decay on matrices only (not on biases and norms). beta2 = 0.95, as in
    GPT-style training, lets the second-moment estimate follow the large swings of a
    1/t-weighted loss."""
    params = [p for p in model.parameters() if p.requires_grad]  # frozen ones get no state
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def train_step(fwd, model, opt, batch, obj, *, micro_batch, grad_accum=1, grad_clip=1.0, rank=0,
               world=1, device="cpu", ctx=contextlib.nullcontext()):
    """One optimizer step over grad_accum micro-batches of micro_batch examples of batch (CPU
    tensors); fwd is the module that runs (compiled, or wrapped in DDP), model its parameters.
    Each micro-batch loss is divided by grad_accum, so the summed gradient is the mean over the
    whole effective batch: exactly the gradient of one step on the big batch (a test). Each of
    `world` DDP ranks takes its slice of every micro-batch, and only the last micro-batch
    synchronises. Returns the step's mean loss; a non-finite one raises FloatingPointError before
    it reaches the weights."""
    local = micro_batch // world  # this rank's examples per micro-batch
    opt.zero_grad(set_to_none=True)  # the first backward writes .grad
    total = 0.0
    for m in range(grad_accum):
        lo = m * micro_batch + rank * local  # micro-batch m, this rank's slice of it
        b = {k: v[lo:lo + local].to(device) for k, v in batch.items()}  # (local, ...)
        sync = world == 1 or m == grad_accum - 1  # one all-reduce per step
        with ctx, (contextlib.nullcontext() if sync else fwd.no_sync()):
            loss = compute_loss(fwd, b, obj).mean() / grad_accum
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item() * grad_accum}")
            loss.backward()  # adds to .grad (locally under no_sync)
        total += loss.item()
    # clipping matters more here than for an AR model: w(t) = 1/t makes a batch whose stratified
    # times start near eps weigh its few masked tokens up to 1000x
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return total


@torch.no_grad()
def ema_update(ema, model, step, decay):
    """ema <- d * ema + (1 - d) * model, with d ramped up early so the EMA does not lag at the
    start. The NELBO's gradient is noisy (one t and one mask per sequence), so the average of
    recent weights samples and validates better than the last ones (MDLM uses 0.9999)."""
    d = min(decay, (1 + step) / (10 + step))  # 0.1 at step 0, then up to decay
    # parameters(), not state_dict(): the tied embedding / output matrix must be updated once
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(d).add_(p.detach(), alpha=1 - d)  # in place: no copy of the weights


# ----------------------------------------------------------------------------------------------
# Held-out likelihood: the same losses, averaged over every window of a held-out split.


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
            t = mdlm.sample_t(len(x), generator=gen, device=device)  # (B,)
            z_t = mdlm.forward_mask(x, t, schedule, mask_id=mask, generator=gen)  # (B, T)
            losses.append(mdlm.mdlm_loss(model(z_t), x, z_t, t, schedule))  # (B,) nats per byte
        values += torch.cat(losses).double().tolist()
    # nats -> bits: log2 p = ln p / ln 2. For MDLM this bounds -log2 p(x) from above
    v = np.asarray(values) / math.log(2)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
