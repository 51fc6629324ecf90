"""
Benchmarks, one entry point. Every figure is a median of repeated runs, and every ratio is taken
against a baseline run in the same process, interleaved with it (round robin), so that a burst of
load on a shared machine slows both sides alike. Nothing is asserted: the numbers are printed.

    python bench.py ctc                       # ctc_slack_loss vs torch.nn.functional.ctc_loss
    python bench.py ctc --quick --threads 1   # T = 256, 512, 1024 at 10% slack only
    python bench.py ctc --device cuda         # on a GPU, plus cuDNN's CTC where it applies
                                              # each also times uneven batches (one short
                                              # target among long ones; --uneven T1,T2)
    python bench.py train                     # training steps: MDLM / AR, ours /
                                              # nn.TransformerEncoder, slack-CTC / CE fine-tuning
    python bench.py train --device cuda --dtype bf16 --compile
    python bench.py cache                     # the MDLM sampler with and without its cache
    python bench.py cache --ckpt out/ckpt.pt --steps 1000 --length 128

Every subcommand takes --device (cpu, cuda, auto), --threads N (CPU threads; on a machine whose
cores are busy, 1 gives steadier timings and often speeds up the band's many small ops), --json
PATH (also write the results) and --tiny (tiny sizes that run in seconds: for the tests).
The training steps are the ones train.py's loop takes, written out again here (entry points
never import each other): objective.get_batch, the forward process, the model, objective.loss,
backward, clipping, AdamW; a test checks that both call the same functions. Like every entry
point, this file imports only the leaves and the shared modules, never another script.
"""

import argparse
import contextlib
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
import ctc_slack
import data
import mdlm
import objective
import sampling

# ----------------------------------------------------------------------------------------------
# Timing: round robin, synchronized on CUDA.


def round_robin(fns, rounds, device, warmup=1):
    """Call each fn once per round, in turn, for warmup + rounds rounds; -> each fn's seconds after
    the warm-up. In turn rather than one fn after the other: a burst of load from another process
    then hits both sides of a ratio alike. The warm-up rounds fill allocators and caches (and
    compile, with --compile). On CUDA, synchronize around each call: kernels run asynchronously,
    and the clock would otherwise stop before they finish."""
    cuda = device.startswith("cuda")
    times = [[] for _ in fns]  # seconds of each fn, one entry per timed round
    for i in range(warmup + rounds):
        for j, fn in enumerate(fns):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times[j].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


# ----------------------------------------------------------------------------------------------
# python bench.py ctc: the loss alone, against torch.nn.functional.ctc_loss on the same shapes.


def ctc_case(B, T, V, rate, visible, device, gen):
    """Random log-probs (a leaf, B x T x V), targets y of U = T - K tokens (K = round(rate * T))
    and, when visible > 0, a canvas that shows that fraction of a reference alignment with the
    slack at random places. The special ids are V's (mdlm.special_ids); y has no two equal
    neighbours, so the reference also collapses to y under the standard collapse (a repeat needs
    a slack between)."""
    K = round(rate * T)
    _, slack, mask = mdlm.special_ids(V)
    # drawn on the CPU from one generator, then moved: the same case on every device; the MASK
    # column at -inf (SUBS: an MDLM never predicts MASK, and the loss refuses a canvas without it)
    raw = torch.randn(B, T, V, generator=gen).index_fill_(2, torch.tensor([mask]), float("-inf"))
    lp = raw.log_softmax(-1).to(device).requires_grad_()
    # steps of 1..n-1 modulo n (n = V - 3 ordinary ids): tokens 0..n-1, never the previous one
    n = V - 3
    y = torch.randint(1, n, (B, T - K), generator=gen).cumsum(1) % n  # (B, U)
    T_b, U_b = torch.full((B,), T), torch.full((B,), T - K)
    z0 = ctc_slack.place_slack(y, "random", target_lengths=U_b, canvas_lengths=T_b, slack_id=slack,
                               generator=gen)  # (B, T)
    # each position visible with probability `visible`, as the forward process would leave it
    canvas = torch.where(torch.rand(B, T, generator=gen) < visible, z0, mask)
    return lp, y.to(device), T_b.to(device), U_b.to(device), canvas.to(device) if visible else None


def ctc_memory(fn, leaf):
    """MB that one forward + backward of fn holds. CUDA: the peak allocated above what was allocated
    before. CPU has no allocator statistics: the bytes of the distinct storages autograd keeps for
    backward, plus the output (the leaf log-probs excluded: both sides share it)."""
    leaf.grad = None  # a gradient left from before would count in the peak
    if leaf.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn().backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    saved = {}  # storage address -> bytes

    # called for every tensor saved for backward; keyed by storage, so a view counts once
    def pack(x):
        st = x.untyped_storage()
        if st.data_ptr() != leaf.untyped_storage().data_ptr():
            saved[st.data_ptr()] = st.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = fn()
    out.backward()
    return (sum(saved.values()) + out.nbytes) / 2**20


def cudnn_call(lp, y, B, T, U):
    """F.ctc_loss in the form that lets it pick cuDNN: float32, blank 0, int32 targets concatenated
    in 1-D on the CPU, lengths as lists, every input length T, target lengths <= 256. Only the
    timing matters here (blank 0 is a token column of lp), so the targets are y + 1, never 0."""
    targets = (y[:, :U] + 1).int().flatten().cpu()  # (B * U,) int32 on the CPU
    # its own contiguous (T, B, V) leaf: cuDNN wants time-major memory, and the copy is made once
    x = lp.detach().transpose(0, 1).contiguous().requires_grad_()

    def call():
        x.grad = None  # from a fresh gradient, as the other contenders
        return F.ctc_loss(x, targets, [T] * B, [U] * B, blank=0, reduction="sum")
    return call


def uses_cudnn(out):
    """Whether cuDNN computed out: its autograd graph then holds a CudnnCtcLoss node."""
    todo, seen = [out.grad_fn], 0  # walk back from the output, a few nodes deep (a sum, the loss)
    while todo and seen < 20:
        fn, seen = todo.pop(), seen + 1
        if fn is not None and "Cudnn" in fn.name():
            return True
        todo += [f for f, _ in (fn.next_functions if fn is not None else ())]
    return False


def ctc_cases(a):
    """The (B, T, V, slack rate) shapes to run: the presets, or --shapes x --rates."""
    if a.tiny:
        return [(2, 24, a.vocab_size + 3 if a.vocab_size else 7, 0.1)]
    if a.shapes:  # e.g. --shapes 8x1024x259 --rates 0.05,0.1
        shapes = [tuple(int(n) for n in s.split("x")) for s in a.shapes.split(",")]
        cases = [(*s, float(r)) for s in shapes for r in a.rates.split(",")]
    elif a.quick:  # T = 512 and 1024, where the standard collapse should stay near F.ctc_loss
        cases = [(8, T, 259, 0.1) for T in (256, 512, 1024)]
    else:  # 259 = the byte vocabulary; 32000 = a subword one (there the gather matters, not the
        # DP). The band's cost grows with K, so slack rates up to 25% show where it stops paying.
        cases = [(8, T, 259, r) for T in (256, 512, 1024, 4096) for r in (0.05, 0.1, 0.25)]
        cases += [(32, 256, 32000, 0.1)]
    return [(B, T, a.vocab_size + 3 if a.vocab_size else V, r) for B, T, V, r in cases]


def ctc_contenders(lp, y, T_b, U_b, canvas, V, cuda):
    """The losses to time on one case, each a function of nothing: F.ctc_loss first (the baseline),
    then ours for each (collapse, canvas) run, then cuDNN's CTC when its rules allow it. Also the
    runs and a word on cuDNN: used, or why not."""
    runs = [(c, v) for v in (0.0, 0.5) for c in ("surface", "standard")]  # (collapse, visible)
    _, slack, mask = mdlm.special_ids(V)
    fns = [lambda: F.ctc_loss(lp.transpose(0, 1), y, T_b, U_b, blank=slack, reduction="sum")]
    for collapse, visible in runs:  # default arguments bind this iteration's values
        fns.append(lambda c=collapse, v=visible: ctc_slack.ctc_slack_loss(
            lp, y, T_b, U_b, slack_id=slack, canvas=canvas if v else None, mask_id=mask,
            collapse=c, reduction="sum"))
    # cuDNN's own rules that a case can break here: a GPU, target length <= 256 (float32 holds).
    B, T, U = lp.shape[0], lp.shape[1], int(U_b[0])
    cudnn = "n/a (CPU)" if not cuda else "n/a (U > 256)" if U > 256 else None
    if cudnn is None:
        fns.append(cudnn_call(lp, y, B, T, U))
        # torch may still decline (cuDNN disabled, or a rule of its version): ask the graph
        cudnn = "used" if uses_cudnn(fns[-1]()) else "not picked by torch"
    return fns, runs, cudnn


def print_ctc_row(row, cuda):
    """One line of the table: the case, then time and memory of ours and F.ctc_loss, and ratios."""
    r = row
    canvas = f"{r['visible']:.0%}" if r["visible"] else "-"
    line = (f"{r['B']:>3} {r['T']:>5} {r['V']:>6} {r['slack']:>5.0%} {canvas:>6} "
            f"{r['collapse']:>8} | "
            f"{r['ours_ms']:>8.2f} {r['ref_ms']:>8.2f} {r['time_ratio']:>6.2f} | "
            f"{r['ours_mb']:>8.2f} {r['ref_mb']:>8.2f} {r['mem_ratio']:>6.2f}")
    if cuda:  # the cuDNN column: what happened, and the ratio when it ran
        line += f" | {r['cudnn']}"
        if "cudnn_ms" in r:
            line += f" {r['cudnn_ms']:.2f} ms, ours / cuDNN ratio {r['ours_over_cudnn']:.2f}"
    print(line, flush=True)


def uneven_case(B, T, V, device, gen):
    """Random log-probs (a leaf, B x T x V) and targets y for two batches on them: uneven, where
    row 1's target has U = 8 tokens (K = T - 8) and the other rows T - K at 10% slack, and even,
    where every row has those T - K. -> lp, y, T_b and the two U_b."""
    U = T - round(0.1 * T)
    _, slack, _ = mdlm.special_ids(V)
    lp = torch.randn(B, T, V, generator=gen).log_softmax(-1).to(device).requires_grad_()
    y = torch.randint(0, V - 3, (B, U), generator=gen).to(device)  # ordinary ids only
    even = torch.full((B,), U, device=device)
    uneven = even.clone()
    uneven[1] = min(8, U)  # one short target: a band padded to the batch is B x (T-8) x U
    return lp, y, torch.full((B,), T, device=device), uneven, even


def bench_uneven(a, device, gen):
    """Batches whose rows differ in shape (one short target among long ones): time and memory of
    ctc_slack_loss (surface, no canvas) on the uneven batch against F.ctc_loss on the same batch,
    and against ctc_slack_loss on the even batch (every row long), all interleaved in one run."""
    Ts = [24] if a.tiny else [int(t) for t in a.uneven.split(",") if t]
    if not Ts:
        return []
    B, V = 4, a.vocab_size + 3 if a.vocab_size else 7 if a.tiny else 259
    _, slack, _ = mdlm.special_ids(V)
    print(f"\nuneven batches: B rows of T positions, row 1's target 8 tokens, the others at 10% "
          f"slack; ratios: ours / F on the same batch, uneven / even (ours on every row at 10%)")
    print(f"{'B':>3} {'T':>5} {'V':>6} | {'ours ms':>8} {'F ms':>8} {'ratio':>6} {'even ms':>8} "
          f"{'ratio':>6} | {'ours MB':>8} {'F MB':>8} {'ratio':>6} {'even MB':>8} {'ratio':>6}")
    rows = []
    for T in Ts:
        lp, y, T_b, U_b, U_even = uneven_case(B, T, V, device, gen)
        fns = [lambda: F.ctc_loss(lp.transpose(0, 1), y, T_b, U_b, blank=slack, reduction="sum")]
        fns += [lambda u=u: ctc_slack.ctc_slack_loss(lp, y, T_b, u, slack_id=slack,
                                                     reduction="sum") for u in (U_b, U_even)]

        def step(fn):  # forward + backward from a fresh gradient
            lp.grad = None
            fn().backward()
        (ref, ours, even) = round_robin([lambda f=f: step(f) for f in fns], a.repeats, device)
        ref_mb, ours_mb, even_mb = (ctc_memory(f, lp) for f in fns)
        r = dict(B=B, T=T, V=V, target_lengths=U_b.tolist(), ours_ms=ours * 1e3, ref_ms=ref * 1e3,
                 even_ms=even * 1e3, ours_mb=ours_mb, ref_mb=ref_mb, even_mb=even_mb,
                 time_ratio=ours / ref, mem_ratio=ours_mb / ref_mb, even_time_ratio=ours / even,
                 even_mem_ratio=ours_mb / even_mb)
        print(f"{B:>3} {T:>5} {V:>6} | {r['ours_ms']:>8.2f} {r['ref_ms']:>8.2f} "
              f"{r['time_ratio']:>6.2f} {r['even_ms']:>8.2f} {r['even_time_ratio']:>6.2f} | "
              f"{ours_mb:>8.2f} {ref_mb:>8.2f} {r['mem_ratio']:>6.2f} {even_mb:>8.2f} "
              f"{r['even_mem_ratio']:>6.2f}", flush=True)
        rows.append(r)
    return rows


def bench_ctc(a, device):
    """Median forward + backward time and memory of ctc_slack_loss (surface and standard, without
    a canvas and with a 50% visible one) against F.ctc_loss without a canvas (it cannot take one),
    same log-probs, reduction 'sum', blank = slack; cuDNN too on CUDA where its rules allow.
    Then the uneven batches (bench_uneven): JSON "rows" and "uneven"."""
    gen = torch.Generator().manual_seed(0)  # the same cases on every run and device
    cuda = device.startswith("cuda")
    print(f"device {device}, threads {torch.get_num_threads()}, median of {a.repeats}; "
          "ratio = ours / F")
    print(f"{'B':>3} {'T':>5} {'V':>6} {'slack':>5} {'canvas':>6} {'collapse':>8} | "
          f"{'ours ms':>8} {'F ms':>8} {'ratio':>6} | {'ours MB':>8} {'F MB':>8} {'ratio':>6}"
          + (" | cuDNN" * cuda))
    rows = []
    for B, T, V, rate in ctc_cases(a):
        lp, y, T_b, U_b, canvas = ctc_case(B, T, V, rate, 0.5, device, gen)
        fns, runs, cudnn = ctc_contenders(lp, y, T_b, U_b, canvas, V, cuda)

        def step(fn):  # forward + backward from a fresh gradient
            lp.grad = None  # else each backward would also pay for accumulating into the last one
            fn().backward()
        times = round_robin([lambda f=f: step(f) for f in fns], a.repeats, device)
        mems = [ctc_memory(f, lp) for f in fns[:5]]  # memory once each, untimed
        for k, (collapse, visible) in enumerate(runs, 1):
            row = dict(B=B, T=T, V=V, slack=rate, visible=visible, collapse=collapse,
                       ours_ms=times[k] * 1e3, ref_ms=times[0] * 1e3, ours_mb=mems[k],
                       ref_mb=mems[0], time_ratio=times[k] / times[0],
                       mem_ratio=mems[k] / mems[0], cudnn=cudnn)
            if len(fns) == 6:  # cuDNN ran
                row.update(cudnn_ms=times[5] * 1e3, ours_over_cudnn=times[k] / times[5])
            rows.append(row)
            print_ctc_row(row, cuda)
    return {"rows": rows, "uneven": bench_uneven(a, device, gen)}


# ----------------------------------------------------------------------------------------------
# python bench.py train: whole training steps, built from the leaves as train.py builds them.


class EncoderLM(nn.Module):
    """The same network built from torch.nn.TransformerEncoder (learned positions instead of RoPE):
    what a reader would otherwise reach for; ours must be at least as fast to train. Same width,
    depth, heads, 4x GELU MLP, pre-norm (norm_first) and tied output head."""

    def __init__(self, cfg):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.seq_len, cfg.n_embd))
        layer = nn.TransformerEncoderLayer(cfg.n_embd, cfg.n_head, 4 * cfg.n_embd, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        # no nested tensors: every sequence has the full length, there is no padding to skip
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied, as in mdlm.Transformer

    def forward(self, idx):
        x = self.tok_emb(idx) + self.pos_emb[: idx.shape[1]]  # (B, T, C)
        # (B, T, V), the mask-free (bidirectional) path
        return self.head(self.ln_f(self.encoder(x)))


def train_stepper(model, obj, ids, B, device, ctx, compile=False):
    """One call = one training step as train.py's loop takes it: objective.get_batch draws a
    fresh batch on the CPU, the forward process masks it, the model and objective.loss score it,
    then backward, clipping and AdamW (the EMA update is left out: it is the same for every
    contender). With compile, the forward runs through torch.compile (the optimizer holds
    model's own parameters, shared with it)."""
    opt = objective.make_optimizer(model, 1e-4, 0.1)
    fwd = torch.compile(model) if compile else model
    gen, stats = torch.Generator().manual_seed(0), {"truncated": 0}

    def step():
        b = objective.get_batch(ids, obj, B, gen, stats, model, align_batch=B)
        if not obj.ar:  # the forward process, as train.py's loop draws it
            b["t"], b["z_t"] = mdlm.forward_process(b["z0"], obj.schedule, mask_id=obj.mask_id,
                                                    generator=gen, is_prompt=b["is_prompt"])
        b = {k: v.to(device) for k, v in b.items()}
        opt.zero_grad(set_to_none=True)
        with ctx:
            logits = fwd(b["x"][:, :-1] if obj.ar else b["z_t"])
            objective.loss(logits, b, obj).mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def bench_train(a, device):
    """Step-time ratios: MDLM step / AR step (same backbone and batch size), mdlm.Transformer /
    nn.TransformerEncoder (same size, same loss), slack-CTC / CE fine-tuning step (same model,
    canvases of the same shape; prompt 64 bytes, slack rate 0.1); with --dtype bf16 also the
    MDLM step under bf16 autocast / in fp32."""
    B, T, P = (2, 32, 8) if a.tiny else (a.batch_size, a.seq_len, min(64, a.seq_len // 2))
    if a.tiny:  # a model of a few thousand parameters: the test checks the plumbing, not speed
        sizes = dict(n_layer=1, n_head=2, n_embd=16)
    else:  # the sizes given on the command line; mdlm.ModelConfig's defaults for the rest
        sizes = {k: getattr(a, k) for k in ("n_layer", "n_head", "n_embd") if getattr(a, k)}
    n = a.vocab_size or 256  # ordinary ids: bytes, or a token vocabulary of that size
    V = n + 3
    cfg = mdlm.ModelConfig(vocab_size=V, seq_len=T, **sizes)
    # bf16: matmuls in bf16 under autocast, losses in float32 (they call .float()), as train.py
    bf16 = torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    ctx = bf16 if a.dtype == "bf16" else contextlib.nullcontext()
    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, n, 200_000, dtype=np.int64)  # a token stream
    # the objectives of pretraining (MDLM, AR) and of the two fine-tunes (slack rate 0.1)
    mdlm_obj, ar_obj = objective.Objective(T, V), objective.Objective(T, V, ar=True)
    ft = dict(vocab_size=V, slack_rate=0.1, prompt_len=P)
    ce_obj = objective.Objective(T, loss="ce", placement="tail", **ft)
    ctc_obj = objective.Objective(T, loss="ctc", placement="random", **ft)
    steps, warmup = (2, 1) if a.tiny else (a.steps, 3 if a.compile else 2)  # compiling takes calls

    def timed(models, objs):  # median seconds per step of each (model, objective), interleaved
        return round_robin([train_stepper(m, o, ids, B, device, ctx, a.compile)
                            for m, o in zip(models, objs)], steps, device, warmup)
    print(f"device {device}, {a.dtype}{', compiled' if a.compile else ''}, B {B}, T {T}, V {V}, "
          f"{cfg.n_layer} layers x {cfg.n_embd}, median of {steps} steps")
    results = {}
    # The same backbone and batch: the ratio is what masking, the 1/t-weighted loss and
    # bidirectional (instead of causal) attention add to a step.
    m_ar = mdlm.Transformer(mdlm.ModelConfig(vocab_size=V, seq_len=T, causal=True,
                                             **sizes)).to(device)
    tm, ta = timed([mdlm.Transformer(cfg).to(device), m_ar], [mdlm_obj, ar_obj])
    results["mdlm-vs-ar"] = {"mdlm_step_s": tm, "ar_step_s": ta, "ratio": tm / ta}
    print(f"MDLM step {tm * 1e3:.1f} ms, AR step {ta * 1e3:.1f} ms: MDLM / AR ratio {tm / ta:.3f}")
    # The same batch and loss for both networks, so that only the network differs.
    to, tr = timed([mdlm.Transformer(cfg).to(device), EncoderLM(cfg).to(device)],
                   [ar_obj, ar_obj])
    results["encoder"] = {"ours_tok_s": B * T / to, "encoder_tok_s": B * T / tr, "ratio": tr / to}
    print(f"mdlm.Transformer {B * T / to:.0f} tok/s, nn.TransformerEncoder {B * T / tr:.0f} tok/s: "
          f"ours / encoder throughput ratio {tr / to:.3f}")
    # One model, two objectives on canvases of the same shape: the ratio isolates the cost of the
    # slack CTC (gather, band recursion in float64 and its backward) over the CE gather.
    model = mdlm.Transformer(cfg).to(device)
    tce, tctc = timed([model, model], [ce_obj, ctc_obj])
    results["ctc-vs-ce"] = {"ce_step_s": tce, "ctc_step_s": tctc, "ratio": tctc / tce}
    print(f"fine-tune step: CE {tce * 1e3:.1f} ms, CTC {tctc * 1e3:.1f} ms: "
          f"CTC / CE ratio {tctc / tce:.3f}")
    if a.dtype == "bf16":  # what autocast buys: the same MDLM step in fp32 and under bf16
        t32, t16 = round_robin([train_stepper(mdlm.Transformer(cfg).to(device), mdlm_obj, ids, B,
                                              device, c, a.compile)
                                for c in (contextlib.nullcontext(), bf16)], steps, device, warmup)
        results["bf16-vs-fp32"] = {"fp32_step_s": t32, "bf16_step_s": t16, "ratio": t16 / t32,
                                   "bf16_tok_s": B * T / t16, "fp32_tok_s": B * T / t32}
        print(f"MDLM step fp32 {t32 * 1e3:.1f} ms ({B * T / t32:.0f} tok/s), bf16 "
              f"{t16 * 1e3:.1f} ms ({B * T / t16:.0f} tok/s): bf16 / fp32 ratio {t16 / t32:.3f}")
    return results


# ----------------------------------------------------------------------------------------------
# python bench.py cache: MDLM's sampler skips the network while the canvas has not changed.


def bench_cache(a, device):
    """Ancestral sampling with and without the cache, same seed: identical canvases, fewer model
    calls. The network has no time input, so while no token was committed its output is the same
    and the call can be skipped. Without --ckpt, a random model of the default size (the call
    counts and times do not depend on the weights much)."""
    steps, length = (8, 8) if a.tiny else (a.steps, a.length)
    ckpt = common.load_checkpoint(a.ckpt) if a.ckpt else None
    vocab = data.vocab_of(ckpt) if ckpt else data.Vocab(a.vocab_size or 256,
                                                        "bytes" if not a.vocab_size else "none")
    # the prompt in the model's own ids: text through its tokenizer, else no prompt at all
    prompt = torch.tensor([vocab.encode(a.prompt, "--prompt") if vocab.has_text() else []],
                          dtype=torch.long)  # (1, P)
    if ckpt:  # a trained model: its EMA weights, its schedule and whether it may sample slack
        model = common.model_from_checkpoint(ckpt, device=device)
        meta = common.checkpoint_meta(ckpt)
        length = min(length, model.cfg.seq_len - prompt.shape[1])
    else:  # a random model, long enough for the prompt and the length asked for
        torch.manual_seed(0)
        sizes = dict(n_layer=1, n_head=2, n_embd=16) if a.tiny else {}
        cfg = mdlm.ModelConfig(vocab_size=vocab.size, seq_len=prompt.shape[1] + length, **sizes)
        model, meta = (mdlm.Transformer(cfg).to(device).eval(),
                       {"schedule": "linear", "slack": False})
    outs = {}

    def run(use_cache):  # each run from the same seed, so both draw the same random numbers
        gen = torch.Generator().manual_seed(a.seed)
        with torch.no_grad():
            outs[use_cache] = sampling.generate(model, prompt, length, steps=steps,
                                            sampler="ancestral", schedule=meta["schedule"],
                                            allow_slack=bool(meta["slack"]),
                                            use_cache=use_cache, generator=gen)
    t_cached, t_plain = round_robin([lambda: run(True), lambda: run(False)],
                                    1 if a.tiny else 3, device)
    # The cache only skips calls whose answer is known: the canvases must be the same,
    # token for token.
    same = torch.equal(outs[True]["canvas"], outs[False]["canvas"])
    calls = {k: v["model_calls"] for k, v in outs.items()}  # at most one per step that committed
    print(f"steps {steps}, length {length}, prompt {prompt.shape[1]} ids, V {vocab.size}, "
          f"device {device}, identical canvases: {same}")
    print(f"uncached: {calls[False]:5d} model calls, median {t_plain:.3f} s")
    print(f"cached:   {calls[True]:5d} model calls, median {t_cached:.3f} s")
    print(f"speed-up ratio: {t_plain / t_cached:.2f}x")
    return {"steps": steps, "length": length, "identical": same, "calls_cached": calls[True],
            "calls_uncached": calls[False], "cached_s": t_cached, "uncached_s": t_plain,
            "ratio": t_plain / t_cached}


# ----------------------------------------------------------------------------------------------
# The command line


def parse_args(argv=None):
    """One subcommand per benchmark; the options every subcommand takes live in a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    common.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    common.add_argument("--json", default="", help="also write the results to this JSON file")
    common.add_argument("--tiny", action="store_true",
                        help="tiny sizes that run in seconds (tests)")
    common.add_argument("--vocab-size", type=int, default=0,
                        help="ordinary ids of the vocabulary (EOS, SLACK and MASK follow them); "
                             "ctc: replaces V of every shape; cache: ignored with --ckpt, which "
                             "brings its own (default: 256, bytes)")
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    # ctc: the loss alone
    c = sub.add_parser("ctc", parents=[common], help="ctc_slack_loss against F.ctc_loss")
    c.add_argument("--quick", action="store_true",
                   help="only T = 256, 512, 1024 at 10%% slack (B 8, V 259)")
    c.add_argument("--repeats", type=int, default=3,
                   help="timed runs per shape after a warm-up (default 3)")
    c.add_argument("--shapes", default="",
                   help="comma-separated BxTxV shapes instead of the presets")
    c.add_argument("--rates", default="0.1", help="comma-separated slack rates K/T for --shapes")
    c.add_argument("--uneven", default="1024,2048",
                   help="comma-separated T of the uneven batches (B 4: one target of 8 tokens, "
                        "three at 10%% slack); '' for none (default 1024,2048)")
    # train: whole optimizer steps; sizes default to train.py's (batch, length) and mdlm's (model)
    t = sub.add_parser("train", parents=[common], help="training-step ratios")
    t.add_argument("--steps", type=int, default=15, help="timed steps per side (default: 15)")
    t.add_argument("--batch-size", type=int, default=32,
                   help="batch size (default: 32, train.py's)")
    t.add_argument("--seq-len", type=int, default=256,
                   help="sequence length (default: 256, train.py's)")
    for k in ("n-layer", "n-head", "n-embd"):
        t.add_argument(f"--{k}", type=int, default=0,
                       help="model size (default: mdlm.ModelConfig's)")
    t.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: autocast (default fp32)")
    t.add_argument("--compile", action="store_true", help="torch.compile the models")
    # cache: the sampler
    k = sub.add_parser("cache", parents=[common], help="the MDLM sampler's cache")
    k.add_argument("--ckpt", default="", help="an MDLM checkpoint (default: a random model)")
    k.add_argument("--steps", type=int, default=1000, help="sampling steps (default: 1000)")
    k.add_argument("--length", type=int, default=128, help="positions to fill (default: 128)")
    k.add_argument("--prompt", default="The ", help="prompt text (default: 'The ')")
    k.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    return p.parse_args(argv)


def main(argv=None):
    """Run one subcommand; its printed table is the result, --json keeps it with the setting."""
    a = parse_args(argv)
    if a.threads:  # before any work: torch reads it per op, but a pool started early keeps its size
        torch.set_num_threads(a.threads)
    try:
        device = common.pick_device(a.device)
        results = {"ctc": bench_ctc, "train": bench_train, "cache": bench_cache}[a.command](a,
                                                                                        device)
    except (common.UserError, common.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    # what a reader of the JSON needs to compare runs: the device by name, torch, the threads
    name = torch.cuda.get_device_name() if device.startswith("cuda") else device
    results.update(command=a.command, device=name, torch=torch.__version__,
                   threads=torch.get_num_threads())
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
