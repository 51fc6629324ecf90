"""
Training-speed benchmarks, each against a baseline measured in the same process, interleaved so
that a noisy shared machine slows both alike. Prints medians and ratios; asserts nothing.

    python bench.py                 # all comparisons at the default training sizes, on CPU
    python bench.py --device cuda   # the same on a GPU (bf16 autocast)
    python bench.py --only encoder  # one comparison: mdlm-vs-ar, encoder, ctc-vs-ce

Comparisons:
- mdlm-vs-ar: one MDLM training step (mask, bidirectional forward, NELBO) over one AR step (causal
  forward, next-byte loss) with the same backbone and batch.
- encoder: training tokens/s of mdlm.Transformer against torch.nn.TransformerEncoder of the same
  size (pre-norm, same width, depth, heads, GELU MLP of 4x width, tied embedding head).
- ctc-vs-ce: a fine-tuning step with the slack CTC over one with position-wise CE, same canvases
  (prompt 64 bytes, slack rate 0.1), through train.py's own batch and loss code.
"""

import argparse
import contextlib
import json
import statistics
import time

import torch
import torch.nn as nn

import mdlm
import train


class EncoderLM(nn.Module):
    """The same network built from torch.nn.TransformerEncoder (learned positions instead of RoPE).
    This is what a reader would otherwise reach for; our model must be at least as fast to train.
    Same width, depth, heads, 4x GELU MLP, pre-norm (norm_first) and tied output head."""

    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.seq_len, cfg.n_embd))
        layer = nn.TransformerEncoderLayer(cfg.n_embd, cfg.n_head, 4 * cfg.n_embd, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb[: idx.shape[1]]
        return self.head(self.ln_f(self.encoder(x)))


def time_steps(step_fns, n, device):
    """Run the step functions round-robin n times each; return each one's list of seconds.
    Round-robin, not one after the other: a burst of load from another process then hits both
    sides of a ratio alike, and the medians stay comparable. On CUDA, synchronize around each step,
    since kernels run asynchronously and the clock would otherwise stop before they finish."""
    times = [[] for _ in step_fns]
    for i in range(n + 2):
        for j, fn in enumerate(step_fns):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= 2:  # the first two rounds warm up allocators and kernels
                times[j].append(time.perf_counter() - t0)
    return times


def make_step(model, loss_fn, ctx):
    """One optimizer step of `model` on the loss that loss_fn() computes."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with ctx:
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def train_args(**kw):
    """train.py's default settings with some overridden, without parsing a command line."""
    args = train.get_args(["--device", "cpu"])
    for k, v in kw.items():
        setattr(args, k.replace("-", "_"), v)
    return args


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["mdlm-vs-ar", "encoder", "ctc-vs-ce"], default=None, help="one comparison")
    p.add_argument("--steps", type=int, default=15, help="timed steps per model (default: 15)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32, train.py's)")
    p.add_argument("--seq-len", type=int, default=256, help="sequence length (default: 256, train.py's)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = p.parse_args()
    device = mdlm.pick_device(a.device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    torch.manual_seed(0)
    B, T = a.batch_size, a.seq_len
    cfg = mdlm.ModelConfig(seq_len=T)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (200_000,), generator=gen, dtype=torch.uint8)
    results = {}

    if a.only in (None, "mdlm-vs-ar"):
        # the same backbone and batch; the ratio shows what masking, the 1/t-weighted loss and
        # bidirectional (instead of causal) attention add to a training step
        m_mdlm = mdlm.Transformer(cfg).to(device)
        m_ar = mdlm.Transformer(mdlm.ModelConfig(seq_len=T, causal=True)).to(device)
        args_m, args_a = train_args(seq_len=T, batch_size=B), train_args(seq_len=T, batch_size=B, objective="ar")
        batch = lambda args, m: {k: v.to(device) for k, v in train.get_batch(ids, args, gen, {}, m).items()}
        fm = make_step(m_mdlm, lambda: train.compute_loss(m_mdlm, batch(args_m, m_mdlm), args_m).mean(), ctx)
        fa = make_step(m_ar, lambda: train.compute_loss(m_ar, batch(args_a, m_ar), args_a).mean(), ctx)
        tm, ta = map(statistics.median, time_steps([fm, fa], a.steps, device))
        results["mdlm-vs-ar"] = {"mdlm_step_s": tm, "ar_step_s": ta, "ratio": tm / ta}
        print(f"MDLM step {tm * 1e3:.1f} ms, AR step {ta * 1e3:.1f} ms: MDLM / AR = {tm / ta:.3f}")

    if a.only in (None, "encoder"):
        ours, ref = mdlm.Transformer(cfg).to(device), EncoderLM(cfg).to(device)
        n_ours, n_ref = sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in ref.parameters())
        x = torch.randint(0, 256, (B, T + 1), device=device)
        # the same batch and loss for both, so that only the network differs
        loss = lambda m: mdlm.ar_loss(m(x[:, :-1]), x).mean()
        fo, fr = make_step(ours, lambda: loss(ours), ctx), make_step(ref, lambda: loss(ref), ctx)
        to, tr = map(statistics.median, time_steps([fo, fr], a.steps, device))
        results["encoder"] = {"ours_tok_s": B * T / to, "encoder_tok_s": B * T / tr, "ratio": tr / to,
                              "ours_params": n_ours, "encoder_params": n_ref}
        print(f"mdlm.Transformer {B * T / to:.0f} tok/s ({n_ours} params), nn.TransformerEncoder "
              f"{B * T / tr:.0f} tok/s ({n_ref} params): ours / encoder = {tr / to:.3f}")

    if a.only in (None, "ctc-vs-ce"):
        # one model, two objectives on canvases of the same shape: the ratio isolates the cost of
        # the slack CTC (gather, band recursion in float64, its backward) over the CE gather
        model = mdlm.Transformer(cfg).to(device)
        common = dict(seq_len=T, batch_size=B, prompt_len=64, slack_rate=0.1)
        args_ce, args_ctc = train_args(loss="ce", **common), train_args(loss="ctc", **common)
        batch = lambda args: {k: v.to(device) for k, v in train.get_batch(ids, args, gen, {}, model).items()}
        fce = make_step(model, lambda: train.compute_loss(model, batch(args_ce), args_ce).mean(), ctx)
        fctc = make_step(model, lambda: train.compute_loss(model, batch(args_ctc), args_ctc).mean(), ctx)
        tce, tctc = map(statistics.median, time_steps([fce, fctc], a.steps, device))
        results["ctc-vs-ce"] = {"ce_step_s": tce, "ctc_step_s": tctc, "ratio": tctc / tce,
                                "ce_tok_s": B * T / tce, "ctc_tok_s": B * T / tctc}
        print(f"fine-tune step: CE {tce * 1e3:.1f} ms ({B * T / tce:.0f} tok/s), CTC {tctc * 1e3:.1f} ms "
              f"({B * T / tctc:.0f} tok/s): CTC / CE = {tctc / tce:.3f}")

    results["device"] = torch.cuda.get_device_name() if device.startswith("cuda") else device
    results["torch"] = torch.__version__
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
