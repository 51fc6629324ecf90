"""
Decoding a masked diffusion model: MDLM's ancestral sampler and LLaDA's low-confidence remasking
(with the slack rules of a slack-trained model), the shift probe of arXiv 2601.22947, the
autoregressive twin's left-to-right sampler. The start canvas, the slack rule and the read-out
are ctc_slack's own, the functions its porters call (masked_canvas, slack_last, read_outputs);
the model and its SUBS are mdlm's. Every sampler here decodes every position (see generate).

    EOS, SLACK, MASK = mdlm.special_ids(V)
    out = sampling.generate(model, prompt, 64, steps=64, sampler="confidence", block_length=16)
    ids = ctc_slack.read_outputs(out["canvas"], prompt_lengths=prompt.shape[1], slack_id=SLACK,
                                 eos_id=EOS, mask_id=MASK)  # B lists of output ids

Papers: Sahoo et al. 2024, MDLM (arXiv 2406.07524): ancestral sampling and its cache; Nie et al.
2025, LLaDA (arXiv 2502.09992): low-confidence remasking and semi-autoregressive blocks; Zheng et
al. 2024 (arXiv 2409.02908): why Gumbel noise must be float64; Ye et al. 2026 (arXiv 2601.22947):
the shift probe (a committed token moved by one position), the collapse map of the output.
"""

import math

import torch

import ctc_slack
import mdlm

SAMPLERS = ("ancestral", "confidence")
SLACK_RULES = ("plain", "last", "threshold", "first")  # see confidence_commit


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


def confidence_commit(log_p, region, steps_left, temperature, generator, slack_rule="plain",
                      slack_threshold=0.9):
    """LLaDA low-confidence remasking: propose a token everywhere, keep the k most confident.

    k = ceil(masked in block / steps left in block): the block's masks are split evenly over its
    steps, earlier steps taking the remainder (the split LLaDA's get_num_transfer_tokens makes).
    Confidence is the model probability of the proposed token; its log ranks positions the same way.

    slack_rule decides when a slack proposal may be committed (this project's choice; it changes
    only the order of commits, never the proposals or k):
      plain      slack is a token like any other (LLaDA's rule);
      last       a slack proposal ranks below every real proposal of the block, so slack fills only
                 what the step's k cannot fill with real tokens;
      threshold  as last, except for slack proposed with probability >= slack_threshold;
      first      a slack proposal ranks above every real one: the canvas gets its slack early.
    Why they differ: a slack-trained model is often split at a position between "this token
    here" and "the same token one slot later". A slack committed there early fixes the split
    before the neighbours are known (a letter may be lost); a real token committed first lets
    the model re-place the slack, but leaves the text denser than any canvas seen in training.
    """
    x = sample_tokens(log_p, temperature, generator)  # (B, T)
    conf = log_p.gather(-1, x[..., None]).squeeze(-1)  # (B, T) log p(x_i | z_t)
    slack = mdlm.special_ids(log_p.shape[-1])[1]
    if slack_rule in ("last", "threshold"):  # ctc_slack's rule, on this log scale (log threshold)
        threshold = math.log(slack_threshold) if slack_rule == "threshold" else None
        key = ctc_slack.slack_last(conf, x, slack_id=slack, masked=region, threshold=threshold)
    else:  # plain: the region by confidence; first: its slack proposals before its real ones
        later = (x != slack) & region if slack_rule == "first" else torch.zeros_like(region)
        # outside the region last, or those positions would take commits away
        key = ctc_slack.rank_in_groups(conf, later.long() + 2 * (~region).long())
    rank = key.argsort(dim=1, descending=True).argsort(dim=1)  # (B, T) 0 = committed first
    k = (region.sum(1) + steps_left - 1) // steps_left  # (B,) ceil division
    return x, region & (rank < k[:, None])


# ----------------------------------------------------------------------------------------------
# The shift probe (arXiv 2601.22947): after a step, each token committed in it moves with
# probability `rate` by one position into a still-masked neighbour; its old slot becomes MASK and
# is decoded again later. A fixed-position decoder never revisits a token, so this imitates one
# early placement error and shows how much the rest of the text depends on exact positions.


def shift_probe(canvas, committed_now, rate, generator=None, gen_start=0, gen_end=None, *,
                mask_id):
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
            if gen_start <= j < gen_end and row[j] == mask_id:
                row[j], row[i] = row[i], mask_id
                moved[b] += 1
                break
    return torch.tensor(rows, dtype=canvas.dtype, device=canvas.device), moved


# ----------------------------------------------------------------------------------------------
# Masked diffusion decoding.


def check_request(prompt_len, length, steps, sampler, block_length, seq_len, temperature=1.0,
                  slack_rule="plain", slack_threshold=0.9):
    """Raise ValueError with a readable message for a request the samplers cannot serve.
    Returns (number of blocks, block length, steps per block)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    if slack_rule not in SLACK_RULES or not 0 < slack_threshold <= 1:
        raise ValueError(f"slack rule must be one of {SLACK_RULES} and its threshold in (0, 1], "
                         f"got {slack_rule!r} and {slack_threshold}")
    if length < 1 or steps < 1:
        raise ValueError(f"length ({length}) and steps ({steps}) must be at least 1")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if prompt_len + length > seq_len:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + length ({length}) = {prompt_len + length} exceeds the "
            f"model's canvas of {seq_len} positions; shorten the prompt or lower --length"
        )
    block_length = length if block_length is None else min(block_length, length)
    if block_length < 1:
        raise ValueError(f"block length must be at least 1, got {block_length}")
    n_blocks = -(-length // block_length)  # ceil: the last block may be shorter
    if steps % n_blocks:
        raise ValueError(f"steps {steps} must be divisible by the number of blocks {n_blocks}")
    return n_blocks, block_length, steps // n_blocks


@torch.no_grad()
def generate(model, prompt, length, *, steps, sampler="ancestral", block_length=None,
             temperature=1.0, schedule="linear", allow_slack=False, slack_rule="plain",
             slack_threshold=0.9, shift_rate=0.0, generator=None, record_steps=False,
             use_cache=True):
    """Fill `length` MASK positions after `prompt` (B, P) with a bidirectional model.

    Blocks (block_length) are decoded left to right, steps // n_blocks steps each; without
    block_length the whole region is one block. Committed tokens and the prompt never change
    (only the shift probe moves a token, once, right after it is committed). No MASK is left:
    each block's last step commits all its remaining masks (ancestral: P(unmask) = 1;
    confidence: k = every mask), and a probe move needs a masked neighbour inside the block.
    Returns {"canvas" (B, P + length), "model_calls", "n_committed" (B,), "n_shifted" (B,)} and
    "history" (canvas after each step, on CPU) when record_steps. A move fills one mask and frees
    another, so n_committed is always `length` and n_shifted / n_committed is the realised rate.
    """
    B, P = prompt.shape
    n_blocks, block_len, steps_per_block = check_request(
        P, length, steps, sampler, block_length, model.cfg.seq_len, temperature, slack_rule,
        slack_threshold)
    device, mask = next(model.parameters()).device, mdlm.special_ids(model.cfg.vocab_size)[2]
    canvas, _ = ctc_slack.masked_canvas(prompt.to(device), prompt_lengths=P,
                                        canvas_length=P + length, mask_id=mask)  # (B, P + length)
    # the probe draws from its own stream (seeded from the main one, which is always advanced), so
    # a run with the probe differs from one without only through the moves themselves
    probe_seed = int(torch.randint(2**62, (1,), generator=generator,
                                   device=generator.device if generator is not None else "cpu"))
    probe_gen = torch.Generator().manual_seed(probe_seed)
    n_committed, n_shifted = torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.long)
    calls, log_p, history = 0, None, []
    for step in range(steps):
        blk, j = divmod(step, steps_per_block)
        lo, hi = P + blk * block_len, min(P + (blk + 1) * block_len, P + length)  # this block
        # MDLM's cache: the network is a function of the canvas only (no time input), so while
        # the canvas is unchanged its output is too and the call can be skipped
        if log_p is None or not use_cache:
            log_p = mdlm.subs_log_probs(model(canvas), canvas, allow_slack=allow_slack)
            calls += 1
        in_block = torch.zeros_like(canvas, dtype=torch.bool)
        in_block[:, lo:hi] = True
        region = (canvas == mask) & in_block  # (B, T) positions this step may fill
        if sampler == "ancestral":
            x, commit = ancestral_commit(log_p, region, j, steps_per_block, temperature, schedule,
                                         generator)
        else:
            x, commit = confidence_commit(log_p, region, steps_per_block - j, temperature,
                                          generator, slack_rule, slack_threshold)
        new = torch.where(commit, x, canvas)  # (B, T)
        n_committed += commit.sum(1).cpu()
        new, moved = shift_probe(new, commit, shift_rate, probe_gen, lo, hi, mask_id=mask)
        n_shifted += moved
        if not torch.equal(new, canvas):
            log_p = None  # the canvas changed: the next step needs a fresh network call
        canvas = new
        if record_steps:
            history.append(canvas.cpu().clone())
    out = {"canvas": canvas, "model_calls": calls, "n_committed": n_committed,
           "n_shifted": n_shifted}
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
    device, eos = next(model.parameters()).device, mdlm.special_ids(model.cfg.vocab_size)[0]
    start = prompt.to(device) if P > 0 else torch.full((B, 1), eos, device=device)
    seq, calls = start, 0  # (B, P or 1)
    for _ in range(length):
        logits = mdlm.ban_logits(model(seq)[:, -1:], allow_slack=False)  # (B, 1, V)
        x = sample_tokens(logits.log_softmax(-1), temperature, generator)  # (B, 1)
        seq, calls = torch.cat([seq, x], 1), calls + 1
        if (seq[:, start.shape[1]:] == eos).any(1).all():
            break
    gen = seq[:, start.shape[1]:]  # (B, <= length)
    pad = torch.full((B, length - gen.shape[1]), eos, dtype=gen.dtype, device=device)
    return {"canvas": torch.cat([prompt.to(device), gen, pad], 1), "model_calls": calls}
