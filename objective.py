"""
The training objective: what one example is (a prompt, then a response canvas with slack) and how
it is scored (CE, the slack CTC, or both). The forward process between the two is the training
loop's own line (mdlm.forward_process), where a reader sees it. Shared by train.py and bench.py; no
command line.

    obj = objective.Objective(seq_len=48, vocab_size=V, loss="ctc", slack_rate=0.1,
                              placement="random")
    b = objective.get_batch(records, obj, 64, gen, stats)  # z0, is_prompt, y, ... (B, ...) on CPU
    b["t"], b["z_t"] = mdlm.forward_process(b["z0"], obj.schedule, mask_id=obj.mask_id,
                                            generator=gen, is_prompt=b["is_prompt"])
    loss = objective.loss(model(b["z_t"]), b, obj).mean()  # nats per response position

Papers: MDLM (Sahoo et al. 2024, arXiv 2406.07524) for the NELBO; LLaDA (Nie et al. 2025, arXiv
2502.09992) for conditional training with EOS padding; the slack CTC (arXiv 2601.22947) with
Imputer-style marginalisation over masked positions (Chan et al. 2020, arXiv 2002.08926).
"""

from dataclasses import dataclass

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

    @property
    def eos_id(self):
        return mdlm.special_ids(self.vocab_size)[0]

    @property
    def slack_id(self):
        return mdlm.special_ids(self.vocab_size)[1]

    @property
    def mask_id(self):
        return mdlm.special_ids(self.vocab_size)[2]


def text_batch(ids, B, T, P, rate, gen):
    """Random windows of a token stream (a memory-mapped file): P prompt ids, then U = R - K
    target ids. -> prompt (B, P), P (B,), y (B, U), U (B,); all rows have the same sizes here."""
    U = T - P - int(ctc_slack.slack_count(T - P, rate))
    offs = torch.randint(0, len(ids) - (P + U) + 1, (B,), generator=gen)
    win = data.windows(ids, offs, P + U)  # (B, P + U) int64, read from the file's pages
    return win[:, :P], torch.full((B,), P), win[:, P:], torch.full((B,), U)


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
        prompts.append(prompt)
        ys.append((y + [eos] * U)[:U])
    P, U = torch.tensor([len(s) for s in prompts]), torch.tensor([len(s) for s in ys])
    return _padded(prompts, int(P.max()), eos), P, _padded(ys, max(int(U.max()), 1), eos), U


def _padded(seqs, n, eos):
    """Lists of ids as one (B, n) tensor, each padded with EOS (never read: lengths say where)."""
    return torch.tensor([s + [eos] * (n - len(s)) for s in seqs], dtype=torch.long)


@torch.no_grad()
def model_alignment(model, ex, obj):
    """"model" placement: the most probable alignment of y under the current model, given the
    prompt and an all-MASK response (as the Imputer does), as a (B, R_max) reference canvas
    padded with SLACK. ex: the examples {prompt, P, y, U}. Costs one forward pass."""
    prompt, P, y, U = ex["prompt"], ex["P"], ex["y"], ex["U"]
    slack, mask = obj.slack_id, obj.mask_id
    device, T, R = next(model.parameters()).device, obj.seq_len, obj.seq_len - P  # R (B,)
    r = int(R.max())  # the longest response
    # blank (B, T): the prompt, then MASK to the end; log_p (B, r, V): the response positions only
    blank, _ = ctc_slack.build_canvas(prompt, torch.full((len(P), r), mask), prompt_lengths=P,
                                      canvas_length=T)
    logits = mdlm.ban_logits(model(blank.to(device)), allow_slack=True)  # SUBS: never MASK
    log_p = ctc_slack.response_log_probs(logits, r, prompt_lengths=P.to(device), mask_id=mask)
    return ctc_slack.align_slack(log_p, y.to(device), target_lengths=U.to(device),
                                 canvas_lengths=R.to(device), slack_id=slack).cpu()


def reference_canvas(ex, obj, gen, model, placement, align_batch):
    """The response canvas z0 (B, R_max) of the examples ex {prompt, P, y, U} with slack placed as
    asked: random, tail, model (the current model's alignment; the tail while no model is at
    hand) or mix (per row, random with probability mix_random, else model). The random draws are
    made for every placement, so runs that differ only in placement see identical masking noise
    afterwards."""
    y, U, R, slack = ex["y"], ex["U"], obj.seq_len - ex["P"], obj.slack_id
    simple = "random" if placement in ("random", "mix") else "tail"  # model's fallback: tail
    resp = ctc_slack.place_slack(y, simple, target_lengths=U, canvas_lengths=R, slack_id=slack,
                                 generator=gen)  # (B, R_max)
    pick_random = torch.rand(len(U), generator=gen) < obj.mix_random  # (B,) used by "mix" only
    if placement in ("random", "tail") or model is None:
        return resp
    # the alignment pass in micro-batches: its memory stays that of one training forward pass
    parts = [model_alignment(model, {k: v[s:s + align_batch] for k, v in ex.items()}, obj)
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
    MDLM: z0 (n, T) the clean canvas, is_prompt (n, T), P (n,), y (n, U_max), U (n,): the forward
    process that noises z0 comes next, in the caller's loop. AR: x (n, T + 1). placement
    overrides obj.placement (validation scores the same examples under several)."""
    T = obj.seq_len
    if obj.ar:  # windows of T + 1 ids: read T, predict the next T
        offs = torch.randint(0, len(split) - T - 1 + 1, (n,), generator=gen)  # last: len - T - 1
        return {"x": _checked(data.windows(split, offs, T + 1), obj)}  # (n, T + 1)
    if isinstance(split, list):
        prompt, P, y, U = sft_batch(split, n, T, obj.slack_rate, gen, stats, obj.eos_id)
    else:
        prompt, P, y, U = text_batch(split, n, T, obj.prompt_len, obj.slack_rate, gen)
        _checked(torch.cat([prompt, y], 1), obj)
    ex = {"prompt": prompt, "P": P, "y": y, "U": U}
    resp = reference_canvas(ex, obj, gen, model, placement or obj.placement, align_batch)
    z0, is_prompt = ctc_slack.build_canvas(prompt, resp, prompt_lengths=P, canvas_length=T)
    return {"z0": z0, "is_prompt": is_prompt, "P": P, "y": y, "U": U}  # z0, is_prompt: (n, T)


# ----------------------------------------------------------------------------------------------
# The objective, one value per example (nats per scored position), then averaged over the batch.
# Both terms carry the NELBO weight w(t) and divide by the response length R, so that with K = 0
# and the surface collapse (one alignment) CTC and CE are equal (a test).


def loss(logits, b, obj, kind=None):
    """Per-example loss (B,) from the model's logits (B, T, V) on the batch b (tensors on the
    logits' device, z_t and t included): AR, the next-token CE; MDLM, L_CE, L_CTC or
    ctc_weight * L_CTC + ce_weight * L_CE (kind, default obj.loss). One forward pass serves both
    terms."""
    if obj.ar:
        return mdlm.ar_loss(logits, b["x"])  # logits read x_<T and predict x_1..x_T
    kind = kind or obj.loss
    w = mdlm.w_t(b["t"], obj.schedule)  # (B,) w(t) = -alpha'(t) / (1 - alpha(t)), 1/t if linear
    terms = {}
    if kind != "ctc":  # the masked CE against z0 (SLACK included where z0 put it); SUBS inside
        terms["ce"] = mdlm.mdlm_loss(logits, b["z0"], b["z_t"], b["t"], obj.schedule,
                                     is_prompt=b["is_prompt"])
    if kind != "ce":  # -log P(y | z_t): every completion of the masked positions that gives y
        subs = mdlm.ban_logits(logits, allow_slack=True)  # SUBS: MASK is never a prediction
        terms["ctc"] = ctc_slack.slack_ctc_term(
            subs, b["z_t"], b["y"], prompt_lengths=b["P"], target_lengths=b["U"], weight=w,
            slack_id=obj.slack_id, mask_id=obj.mask_id, collapse=obj.collapse)
    if kind != "ctc+ce":
        return terms[kind]
    return obj.ctc_weight * terms["ctc"] + obj.ce_weight * terms["ce"]  # same logits, same w(t)


# ----------------------------------------------------------------------------------------------
# Optimizer and EMA: what one optimizer step uses besides the loss.


def make_optimizer(model, lr, weight_decay):
    """AdamW; weight decay on matrices only (not on biases and norms). beta2 = 0.95, as in
    GPT-style training, lets the second-moment estimate follow the large swings of a
    1/t-weighted loss."""
    params = [p for p in model.parameters() if p.requires_grad]  # frozen ones get no state
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


@torch.no_grad()
def ema_update(ema, model, step, decay):
    """ema <- d * ema + (1 - d) * model, with d ramped up early so the EMA does not lag at the
    start. The NELBO's gradient is noisy (one t and one mask per sequence), so the average of
    recent weights samples and validates better than the last ones (MDLM uses 0.9999)."""
    d = min(decay, (1 + step) / (10 + step))  # 0.1 at step 0, then up to decay
    # parameters(), not state_dict(): the tied embedding / output matrix must be updated once
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(d).add_(p.detach(), alpha=1 - d)  # in place: no copy of the weights
