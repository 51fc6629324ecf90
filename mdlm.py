"""
Masked diffusion language model (MDLM) in plain PyTorch: the special ids (after bytes or any
tokenizer's ids), the noise schedules and the forward process, a bidirectional Transformer (causal
mode = the autoregressive twin), the SUBS parameterization and the two training losses. This file
imports only torch: copy it alone into another codebase. The samplers that decode it live in
sampling.py.

    import mdlm
    V = mdlm.BYTE_VOCAB_SIZE                                        # or n ordinary ids + 3
    EOS, SLACK, MASK = mdlm.special_ids(V)
    model = mdlm.Transformer(mdlm.ModelConfig(vocab_size=V, seq_len=256))
    t, z_t = mdlm.forward_process(z0, "linear", mask_id=MASK)       # t ~ U[eps, 1], z_t ~ q(.|z0)
    loss = mdlm.mdlm_loss(model(z_t), z0, z_t, t, "linear").mean()  # NELBO, nats per position

Papers:
- Sahoo et al. 2024, "Simple and Effective Masked Diffusion Language Models" (arXiv 2406.07524):
  SUBS (their section 3.2), the NELBO as a weighted cross-entropy (their eq. 10), the loglinear
  schedule.
- Shi et al. 2024 (arXiv 2406.04329) and Ou et al. 2024 (arXiv 2406.03736): the same bound for any
  schedule, and why masked diffusion needs no time conditioning.
- Nie et al. 2025, LLaDA (arXiv 2502.09992): linear schedule, prompt positions never masked.
- Su et al. 2021, RoFormer (arXiv 2104.09864): rotary position embeddings.
"""

import contextlib
import math
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
    """UTF-8 bytes of `text` as a list of ids (bytes(ids).decode("utf-8") gives the text back)."""
    return list(text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------
# Noise schedules. alpha(t) is the probability that a token is still visible at time t, falling
# from alpha(0) = 1 (clean text) to alpha(1) = 0 (all MASK).


SCHEDULES = ("linear", "cosine")



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


def forward_mask(z0, t, schedule, *, mask_id, generator=None, is_prompt=None):
    """Sample z_t ~ q(z_t | z0): each position becomes MASK independently with prob. 1 - alpha(t).

    z0 (B, T) ids, t (B,), mask_id: the vocabulary's MASK (special_ids), is_prompt (B, T) bool or
    None: the positions that are never masked.
    """
    p_mask = (1.0 - alpha_t(t, schedule))[:, None]  # (B, 1)
    masked = torch.rand(z0.shape, generator=generator, device=z0.device) < p_mask  # (B, T)
    if is_prompt is not None:
        masked &= ~is_prompt
    return torch.where(masked, torch.full_like(z0, mask_id), z0)


def forward_process(z0, schedule, *, mask_id, generator=None, is_prompt=None, eps=1e-3):
    """One draw of the forward process for a batch z0 (B, T): stratified times t ~ U[eps, 1]
    (sample_t), then z_t ~ q(z_t | z0) (forward_mask), the prompt never masked.
    -> (t (B,), z_t (B, T)), every draw from `generator`, on z0's device."""
    t = sample_t(len(z0), eps, generator=generator, device=z0.device)  # (B,)
    z_t = forward_mask(z0, t, schedule, mask_id=mask_id, generator=generator, is_prompt=is_prompt)
    return t, z_t


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

# ----------------------------------------------------------------------------------------------
# SUBS parameterization (MDLM section 3.2), as log-probabilities over the vocabulary:
#  1. zero masking probability: the MASK logit is -inf, so the denoiser never predicts MASK;
#  2. carry-over unmasking: at a visible position z_t[i] != MASK the clean token *is* z_t[i]
#     (a visible token never changes in the forward process), so p = one-hot(z_t[i]).
# SLACK gets -inf too unless the model was trained with slack.


def ban_logits(logits, *, allow_slack):
    """float32 logits with MASK (rule 1) and, unless allow_slack, SLACK set to -inf. Out of place:
    the caller's tensor is kept. The one place where tokens are banned from predictions."""
    _, slack, mask = special_ids(logits.shape[-1])
    banned = torch.tensor([mask] if allow_slack else [mask, slack], device=logits.device)
    return logits.float().index_fill(-1, banned, float("-inf"))


def subs_log_probs(logits, z_t, *, allow_slack):
    """logits (B, T, V), z_t (B, T) -> log p(x_0 | z_t) (B, T, V) in float32."""
    log_p = ban_logits(logits, allow_slack=allow_slack).log_softmax(dim=-1)  # (B, T, V)
    visible = (z_t != special_ids(logits.shape[-1])[2])[..., None]  # (B, T, 1)
    # one-hot in log space: log 1 = 0 at the visible token, log 0 = -inf elsewhere
    carry = torch.full_like(log_p, float("-inf")).scatter_(-1, z_t[..., None], 0.0)
    return torch.where(visible, carry, log_p)


# ----------------------------------------------------------------------------------------------
# Losses. Both return one value per sequence, in nats per scored position (divide by ln 2 for bits).


def mdlm_loss(logits, z0, z_t, t, schedule="linear", is_prompt=None):
    """MDLM NELBO (Sahoo et al. eq. 10), one Monte-Carlo sample of t per sequence:

        L(z0, z_t) = w(t) * sum_{i : z_t[i] = MASK} -log p(z0[i] | z_t) / n

    n = number of scored positions (T, or the response length when a prompt is present). Visible
    positions cost nothing under SUBS (carry-over is exact), so only masked ones are summed. Its
    expectation over t ~ U(0, 1] is the NELBO per position.

    logits (B, T, V), z0 / z_t (B, T), t (B,), is_prompt (B, T) bool or None: positions neither
    masked nor scored -> (B,)
    """
    scored = torch.ones_like(z0, dtype=torch.bool) if is_prompt is None else ~is_prompt
    # SUBS: MASK is never a prediction (out of place, so the caller's logits are untouched)
    logits = ban_logits(logits, allow_slack=True)
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
