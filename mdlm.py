"""
Masked diffusion language model (MDLM) in plain PyTorch: the special ids (after bytes or any
tokenizer's ids), the noise schedules, a bidirectional Transformer (causal mode = the
autoregressive twin), the SUBS parameterization and the two training losses, and the samplers
(ancestral and confidence, with its slack rules and the shift probe). This file imports only
torch: copy it alone into another codebase.

    import mdlm
    V = mdlm.BYTE_VOCAB_SIZE                                        # or n ordinary ids + 3
    model = mdlm.Transformer(mdlm.ModelConfig(vocab_size=V, seq_len=256))
    t = mdlm.sample_t(batch_size)                                   # stratified times in [eps, 1]
    z_t = mdlm.forward_mask(z0, t, "linear", mask_id=mdlm.special_ids(V)[2])  # prob. 1 - alpha(t)
    loss = mdlm.mdlm_loss(model(z_t), z0, z_t, t, "linear").mean()  # NELBO, nats per position

Papers:
- Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models" (arXiv 2406.07524):
  SUBS (their section 3.2), the NELBO as a weighted cross-entropy (their eq. 10), the loglinear
  schedule.
- Shi et al. 2024 (arXiv 2406.04329) and Ou et al. 2024 (arXiv 2406.03736): the same bound for any
  schedule, and why masked diffusion needs no time conditioning.
- Nie et al. 2025, LLaDA (arXiv 2502.09992): linear schedule, prompt positions never masked.
- Su et al. 2021, RoFormer (arXiv 2104.09864): rotary position embeddings.
- Nie et al. 2025, LLaDA: low-confidence remasking and semi-autoregressive blocks; Zheng et al.
  2024 (arXiv 2409.02908): why Gumbel noise must be float64.
- Ye et al. 2026 (arXiv 2601.22947): the shift probe (a committed token moved by one position).

    out = mdlm.generate(model, prompt, 64, steps=64, sampler="confidence", block_length=16)
    text = mdlm.to_text(mdlm.output_ids(out["canvas"][0], prompt.shape[1], vocab_size=V))
"""

import contextlib
import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Tokens. The ordinary ids are bytes 0..255 by default, or the n ids of a tokenized corpus; the
# three special ids come right after them, so they are the last three of a vocabulary of V ids:
#     EOS = V - 3    end of text: the canvas after it is not part of the output
#     SLACK = V - 2  the CTC "blank": an empty output, deleted by the collapse map
#     MASK = V - 1   the absorbing state of the forward process
# Functions that see logits (B, T, V) or a model read V from them; every other file takes the
# ids from special_ids, never as numbers.


def special_ids(vocab_size):
    """(EOS, SLACK, MASK) of a vocabulary of vocab_size ids."""
    return vocab_size - 3, vocab_size - 2, vocab_size - 1


BYTE_VOCAB_SIZE = 256 + 3  # the byte vocabulary: EOS, SLACK, MASK = 256, 257, 258


def encode(text):
    """UTF-8 bytes of `text` as a list of ids (any string round-trips through decode)."""
    return list(text.encode("utf-8"))


def to_text(ids):
    """Byte ids back to text: cut at the first EOS, drop SLACK and MASK, invalid UTF-8 -> U+FFFD."""
    eos = special_ids(BYTE_VOCAB_SIZE)[0]
    out = bytearray()
    for i in ids:
        i = int(i)
        if i == eos:
            break
        if i < 256:
            out.append(i)
    return out.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------
# Noise schedules. alpha(t) is the probability that a token is still visible at time t, falling
# from alpha(0) = 1 (clean text) to alpha(1) = 0 (all MASK).

SCHEDULES = ("linear", "cosine")
SAMPLERS = ("ancestral", "confidence")
SLACK_RULES = ("plain", "last", "threshold", "first")  # see confidence_commit


def alpha_t(t, schedule="linear"):
    """Survival probability alpha(t)."""
    if schedule == "linear":  # MDLM's "loglinear" and LLaDA's schedule: alpha = 1 - t
        return 1.0 - t
    if schedule == "cosine":  # alpha = cos(pi t / 2)
        return torch.cos(0.5 * math.pi * t)
    raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")


def w_t(t, schedule="linear"):
    """NELBO weight w(t) = -alpha'(t) / (1 - alpha(t)) (MDLM eq. 10).

    Each masked position pays w(t) * (-log p(x_i | z_t)). For the linear schedule alpha' = -1, so
    w = 1/t: at small t few tokens are masked, so each one must count for more.
    """
    if schedule == "linear":
        return 1.0 / t
    if schedule == "cosine":
        # alpha' = -(pi/2) sin(pi t/2), so w = (pi/2) sin(pi t/2) / (1 - cos(pi t/2))
        half = 0.5 * math.pi * t
        return 0.5 * math.pi * torch.sin(half) / (1.0 - torch.cos(half))
    raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")


def sample_t(batch_size, eps=1e-3, generator=None, device="cpu"):
    """Stratified ("antithetic") times: one uniform offset u, then t_i = (u + i/B) mod 1, mapped to
    [eps, 1]. The batch covers (0, 1] evenly, which lowers the variance of the NELBO estimate
    (MDLM section 3.5). eps keeps w(t) = 1/t finite."""
    u = torch.rand(1, generator=generator, device=device)
    t = (u + torch.arange(batch_size, device=device) / batch_size) % 1.0  # (B,)
    return eps + (1.0 - eps) * t


def forward_mask(z0, t, schedule, *, mask_id, generator=None, keep=None):
    """Sample z_t ~ q(z_t | z0): each position becomes MASK independently with prob. 1 - alpha(t).

    z0 (B, T) ids, t (B,), mask_id: the vocabulary's MASK (special_ids), keep (B, T) bool or None:
    positions that are never masked (a prompt).
    """
    p_mask = (1.0 - alpha_t(t, schedule))[:, None]  # (B, 1)
    masked = torch.rand(z0.shape, generator=generator, device=z0.device) < p_mask  # (B, T)
    if keep is not None:
        masked &= ~keep
    return torch.where(masked, torch.full_like(z0, mask_id), z0)


# ----------------------------------------------------------------------------------------------
# The Transformer: pre-norm blocks, rotary positions, PyTorch's fused attention. Bidirectional by
# default (the denoiser); causal=True gives the autoregressive baseline and judge. There is no time
# input: with SUBS the optimal denoiser does not depend on t (Ou et al. 2024, section 3).


@dataclass
class ModelConfig:
    vocab_size: int  # V: the ordinary ids and the three special ones (special_ids)
    seq_len: int = 256  # longest canvas the rotary tables are built for
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    causal: bool = False  # True: each position sees only itself and the past (AR model)
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, d):
        """Rebuild a config stored in a checkpoint; unknown keys mean another code version."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"checkpoint config has unknown fields {sorted(unknown)}")
        return cls(**d)

    def to_dict(self):
        return asdict(self)


def rope_tables(seq_len, head_dim, base=10000.0):
    """cos/sin tables (T, head_dim/2): pair i of a head rotates by angle t * base^(-2i/head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate (x1, x2) pairs by position-dependent angles; x (B, H, T, D), cos/sin (T, D/2).
    The dot product of two rotated vectors then depends only on their relative offset."""
    x1, x2 = x.float().chunk(2, dim=-1)  # each (B, H, T, D/2)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.causal, self.dropout = cfg.n_head, cfg.causal, cfg.dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, C)
        q, k, v = (a.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for a in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # (B, H, T, D)
        # PyTorch's CPU kernel for this op's backward is several times slower in bf16 than in
        # fp32 (about 6x per call at T = 48, B = 64), so under CPU autocast attention alone runs
        # in fp32 (autocast would cast its inputs back to bf16); CUDA keeps bf16 flash attention
        cpu = x.device.type == "cpu"
        with torch.autocast("cpu", enabled=False) if cpu else contextlib.nullcontext():
            q, k, v = (a.float() for a in (q, k, v)) if cpu else (q, k, v)
            y = F.scaled_dot_product_attention(  # flash / memory-efficient kernels on GPU
                q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
            )  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(cfg.n_embd), nn.LayerNorm(cfg.n_embd)
        self.attn, self.mlp = SelfAttention(cfg), MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin):
        x = x + self.drop(self.attn(self.ln1(x), cos, sin))
        return x + self.drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    """ids (B, T) -> logits (B, T, V). The output head shares the embedding matrix."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying (Press & Wolf 2017)
        cos, sin = rope_tables(cfg.seq_len, cfg.n_embd // cfg.n_head)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived, so not saved
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx):
        T = idx.shape[1]
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of length {T} is longer than the model's seq_len "
                             f"{self.cfg.seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, D/2)
        x = self.tok_emb(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.ln_f(x))  # (B, T, V)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        """Training FLOPs per token: 6 N for the matmuls of forward and backward (2 per weight
        forward, 4 backward), plus 12 * layers * width * T for attention over the whole canvas
        (PaLM, Chowdhery et al. 2022, appendix B; nanoGPT's estimate_mfu)."""
        c = self.cfg
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * c.seq_len

    def estimate_mfu(self, tokens_per_s, device, peak=None):
        """Model FLOPs utilisation: achieved training FLOP/s over the card's peak dense bf16
        FLOP/s (peak, or looked up by the CUDA card's name; None off CUDA or on a card not
        listed)."""
        if peak is None and str(device).startswith("cuda"):
            name = torch.cuda.get_device_name(device)
            peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        return self.flops_per_token() * tokens_per_s / peak if peak else None


# peak dense bf16 tensor-core FLOP/s by GPU name (vendor data sheets, without sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


# ----------------------------------------------------------------------------------------------
# SUBS parameterization (MDLM section 3.2), as log-probabilities over the vocabulary:
#  1. zero masking probability: the MASK logit is -inf, so the denoiser never predicts MASK;
#  2. carry-over unmasking: at a visible position z_t[i] != MASK the clean token *is* z_t[i]
#     (a visible token never changes in the forward process), so p = one-hot(z_t[i]).
# SLACK gets -inf too unless the model was trained with slack.


def ban_logits(logits, allow_slack=True):
    """float32 logits with MASK (rule 1) and, unless allow_slack, SLACK set to -inf. Out of place:
    the caller's tensor is kept. The one place where tokens are banned from predictions."""
    _, slack, mask = special_ids(logits.shape[-1])
    banned = torch.tensor([mask] if allow_slack else [mask, slack], device=logits.device)
    return logits.float().index_fill(-1, banned, float("-inf"))


def subs_log_probs(logits, z_t, allow_slack=False):
    """logits (B, T, V), z_t (B, T) -> log p(x_0 | z_t) (B, T, V) in float32."""
    log_p = ban_logits(logits, allow_slack).log_softmax(dim=-1)  # (B, T, V)
    visible = (z_t != special_ids(logits.shape[-1])[2])[..., None]  # (B, T, 1)
    # one-hot in log space: log 1 = 0 at the visible token, log 0 = -inf elsewhere
    carry = torch.full_like(log_p, float("-inf")).scatter_(-1, z_t[..., None], 0.0)
    return torch.where(visible, carry, log_p)


# ----------------------------------------------------------------------------------------------
# Losses. Both return one value per sequence, in nats per scored position (divide by ln 2 for bits).


def mdlm_loss(logits, z0, z_t, t, schedule="linear", scored=None):
    """MDLM NELBO (Sahoo et al. eq. 10), one Monte-Carlo sample of t per sequence:

        L(z0, z_t) = w(t) * sum_{i : z_t[i] = MASK} -log p(z0[i] | z_t) / n

    n = number of scored positions (T, or the response length when a prompt is present). Visible
    positions cost nothing under SUBS (carry-over is exact), so only masked ones are summed. Its
    expectation over t ~ U(0, 1] is the NELBO per position.

    logits (B, T, V), z0 / z_t (B, T), t (B,), scored (B, T) bool or None -> (B,)
    """
    if scored is None:
        scored = torch.ones_like(z0, dtype=torch.bool)
    # SUBS: MASK is never a prediction (out of place, so the caller's logits are untouched)
    logits = ban_logits(logits)
    nll = F.cross_entropy(logits.transpose(1, 2), z0, reduction="none")  # (B, T)
    hit = (z_t == special_ids(logits.shape[-1])[2]) & scored  # masked, in the scored region
    n = scored.sum(1).clamp(min=1)  # (B,)
    return w_t(t, schedule) * (nll * hit).sum(1) / n


def ar_loss(logits, x):
    """Next-token cross-entropy of a causal model: logits (B, T, V) read x[:, :T], predict
    x[:, 1:T+1].
    x (B, T+1) -> (B,) nats per predicted byte."""
    targets = x[:, 1:]  # (B, T)
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T)
    return nll.mean(1)


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
    a_t, a_s = alpha_t(t, schedule).item(), alpha_t(s, schedule).item()
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
    conf = conf.masked_fill(~region, float("-inf"))
    order = conf.argsort(dim=1, descending=True, stable=True)  # (B, T) most sure first
    if slack_rule != "plain":
        is_slack = (x == special_ids(log_p.shape[-1])[1]) & region  # (B, T) slack proposals
        if slack_rule == "threshold":
            is_slack &= conf < math.log(slack_threshold)  # confident slack keeps its rank
        # a second, stable sort keeps the confidence order inside each group: first the group
        # that goes first (real proposals, or slack under "first"), then the other, then the
        # positions outside the region, which must stay last or they would take commits away
        later = (~is_slack & region) if slack_rule == "first" else is_slack
        group = later.byte() + 2 * (~region).byte()  # (B, T)
        order = order.gather(1, group.gather(1, order).argsort(dim=1, stable=True))
    rank = order.argsort(dim=1)  # (B, T) 0 = committed first
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
    (only the shift probe moves a token, once, right after it is committed).
    Returns {"canvas" (B, P + length), "model_calls", "n_committed" (B,), "n_shifted" (B,)} and
    "history" (canvas after each step, on CPU) when record_steps. A move fills one mask and frees
    another, so n_committed is always `length` and n_shifted / n_committed is the realised rate.
    """
    B, P = prompt.shape
    n_blocks, block_len, steps_per_block = check_request(
        P, length, steps, sampler, block_length, model.cfg.seq_len, temperature, slack_rule,
        slack_threshold)
    device, mask = next(model.parameters()).device, special_ids(model.cfg.vocab_size)[2]
    canvas = torch.cat([prompt.to(device), torch.full((B, length), mask, device=device)], 1)
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
            log_p = subs_log_probs(model(canvas), canvas, allow_slack)  # (B, T, V)
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
    device, eos = next(model.parameters()).device, special_ids(model.cfg.vocab_size)[0]
    start = prompt.to(device) if P > 0 else torch.full((B, 1), eos, device=device)
    seq, calls = start, 0  # (B, P or 1)
    for _ in range(length):
        logits = ban_logits(model(seq)[:, -1:], allow_slack=False)  # (B, 1, V)
        x = sample_tokens(logits.log_softmax(-1), temperature, generator)  # (B, 1)
        seq, calls = torch.cat([seq, x], 1), calls + 1
        if (seq[:, start.shape[1]:] == eos).any(1).all():
            break
    gen = seq[:, start.shape[1]:]  # (B, <= length)
    pad = torch.full((B, length - gen.shape[1]), eos, dtype=gen.dtype, device=device)
    return {"canvas": torch.cat([prompt.to(device), gen, pad], 1), "model_calls": calls}


def output_ids(canvas_row, prompt_len, *, vocab_size, collapse="surface", slack=False):
    """The output ids of one canvas row: the generated part, read through the collapse map the
    model was trained with when it knows slack (surface: drop SLACK; standard: merge runs of equal
    ids, then drop SLACK, as Graves' CTC reads its output), cut at the first EOS, with any MASK
    (and stray SLACK) removed. Text: to_text(ids) for bytes. (ctc_slack.collapse_tokens is the
    same map; this file repeats its two lines so that it stays importable alone.)"""
    eos, slack_id, mask = special_ids(vocab_size)
    ids = [int(i) for i in canvas_row[prompt_len:]]
    if slack and collapse == "standard":
        ids = [x for k, x in enumerate(ids) if k == 0 or x != ids[k - 1]]
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return [i for i in ids if i not in (mask, slack_id)]


# ----------------------------------------------------------------------------------------------
# Checkpoints: a dict of tensors and plain Python values, so it loads with weights_only=True
# (no pickled code runs). Written to a temporary file first, then renamed: a crash or Ctrl-C
# mid-write leaves the previous checkpoint intact.


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, truncated, or made for another config."""


def save_checkpoint(obj, path):
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic on POSIX and Windows


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint dict, turning every failure into one clear CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"checkpoint {path!r} is corrupted or not a checkpoint "
                              f"({type(e).__name__}: {e})")
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path!r} lacks a model config or weights")
    return ckpt


def model_from_checkpoint(ckpt, use_ema=True, device="cpu"):
    """Rebuild the model a checkpoint describes; EMA weights (if stored) by default."""
    try:
        cfg = ModelConfig.from_dict(ckpt["config"])
        model = Transformer(cfg)
        state = ckpt.get("ema") if use_ema and ckpt.get("ema") is not None else ckpt["model"]
        model.load_state_dict(state)
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint does not match this code's model: {e}")
    return model.to(device).eval()


def checkpoint_meta(ckpt):
    """How the checkpoint's model was trained: objective, schedule, whether it knows SLACK, the
    collapse map. A checkpoint without this record is a plain model: AR if its config is causal,
    else an MDLM with the linear schedule that never saw slack."""
    causal = bool(ckpt.get("config", {}).get("causal"))
    return {"objective": "ar" if causal else "mdlm", "schedule": "linear", "slack": False,
            "collapse": "surface", **(ckpt.get("meta") or {})}


def pick_device(name="auto"):
    """'auto' -> cuda, then mps, then cpu (as llm.c does). A device that is named but absent is a
    ValueError with a readable message (torch would fail later, deep inside, with an assertion)."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but this torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use --device cpu or auto")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "mps" and not has_mps:
        raise ValueError("device 'mps' was asked for, but this machine has no usable MPS backend")
    if name not in ("auto", "cpu", "mps") and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if has_mps else "cpu"
