"""The GPU path, rehearsed on the CPU: everything of it that does not need CUDA. bf16 autocast
through the pretraining and fine-tuning steps (the slack CTC stays float64 inside and matches
float32 within a stated tolerance), torch.compile for a few steps, the MFU arithmetic against a
hand count, and DDP with gradient accumulation. What still needs a GPU (the CUDA kernels, bf16
tensor cores, NCCL, the MFU on a real card) is listed in the README as not measured."""
import contextlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import common
import conftest
import ctc_slack
import mdlm

BV = mdlm.BYTE_VOCAB_SIZE
BEOS, BSLACK, BMASK = mdlm.special_ids(BV)  # the byte vocabulary
import objective
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = np.frombuffer(("the cat sat on the mat; a dog ran. " * 300).encode(), dtype=np.uint8)
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--seq-len", "32", "--batch-size",
        "4", "--eval-batches", "1", "--sample-interval", "0", "--no-progress", "--device", "cpu",
        "--warmup", "1"]

# bf16 keeps 8 bits of mantissa: a loss summed from bf16 matmuls is good to about 1% relative
BF16_RTOL = 2e-2


def model_and_batch(obj, seed=0):
    torch.manual_seed(seed)
    model = mdlm.Transformer(mdlm.ModelConfig(vocab_size=obj.vocab_size, seq_len=obj.seq_len,
                                              n_layer=2, n_head=2,
                                              n_embd=32, causal=obj.ar))
    gen = torch.Generator().manual_seed(seed)
    b = objective.get_batch(IDS, obj, 16, gen, {"truncated": 0}, model)
    return model, conftest.noised(b, obj, gen)


@pytest.mark.parametrize("obj", [
    objective.Objective(32, BV),  # MDLM pretraining (the NELBO)
    objective.Objective(32, BV, ar=True),  # the AR twin
    objective.Objective(32, BV, loss="ce", slack_rate=0.1, prompt_len=8),  # the CE fine-tune
    objective.Objective(32, BV, loss="ctc", slack_rate=0.1, prompt_len=8,
                        placement="random"),
    objective.Objective(32, BV, loss="ctc+ce", slack_rate=0.2, prompt_len=8,
                        placement="model"),
], ids=["mdlm", "ar", "ce-ft", "ctc-ft", "ctc+ce-ft"])
def test_bf16_autocast_steps_match_fp32(obj):
    """The same model, batch and step under bf16 autocast and in fp32: the losses agree within
    BF16_RTOL, and so do the gradients, in direction (cosine > 0.99)."""
    model, b = model_and_batch(obj)
    out = {}
    for name, ctx in (("fp32", contextlib.nullcontext()),
                      ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))):
        model.zero_grad()
        with ctx:
            loss = objective.loss(model(b["x"][:, :-1] if obj.ar else b["z_t"]), b, obj).mean()
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        out[name] = (loss.item(), grad)
    (l32, g32), (l16, g16) = out["fp32"], out["bf16"]
    assert abs(l16 - l32) <= BF16_RTOL * abs(l32), (l16, l32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99


def test_slack_ctc_stays_float64_inside_under_autocast():
    """Under autocast the model's logits are bf16; slack_ctc_term reads them as float32 log-probs
    and the band runs in float64: on those log-probs it equals the float64 loop over time to
    1e-9, and on the whole it matches the float32 model's value within BF16_RTOL."""
    obj = objective.Objective(32, BV, loss="ctc", slack_rate=0.1, prompt_len=8,
                              placement="random")
    model, b = model_and_batch(obj)
    mask = torch.tensor([BMASK])
    with torch.no_grad():
        logits32 = model(b["z_t"]).index_fill(-1, mask, -math.inf)  # SUBS: MASK never predicted
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits16 = model(b["z_t"]).index_fill(-1, mask, -math.inf)
    assert logits16.dtype == torch.bfloat16
    kw = dict(prompt_lengths=b["P"], target_lengths=b["U"], weight=mdlm.w_t(b["t"]),
              slack_id=BSLACK, mask_id=BMASK)
    term16 = ctc_slack.slack_ctc_term(logits16, b["z_t"], b["y"], **kw)
    term32 = ctc_slack.slack_ctc_term(logits32, b["z_t"], b["y"], **kw)
    assert term16.dtype == torch.float32 and torch.isfinite(term16).all()
    torch.testing.assert_close(term16, term32, rtol=BF16_RTOL, atol=1e-3)
    # inside: the float32 log-probs of the bf16 logits, through the band and the float64 loop
    R = obj.seq_len - b["P"]
    log_p = ctc_slack.response_log_probs(logits16, int(R.max()), prompt_lengths=b["P"],
                                         mask_id=BMASK)
    canvas = b["z_t"].gather(1, ctc_slack.response_positions(b["P"], int(R.max()), obj.seq_len))
    nll = {alg: ctc_slack.ctc_slack_loss(log_p, b["y"], R, b["U"], slack_id=BSLACK,
                                         canvas=canvas, mask_id=BMASK, reduction="none",
                                         algorithm=alg) for alg in ("band", "time")}
    torch.testing.assert_close(nll["band"].double(), nll["time"].double(), rtol=1e-9, atol=1e-6)


def test_mfu_is_the_hand_count():
    """6 N + 12 L C T FLOPs per token, N counted by hand for a small config, over a given peak."""
    L, C, T, V = 2, 32, 16, 259
    model = mdlm.Transformer(mdlm.ModelConfig(vocab_size=V, seq_len=T, n_layer=L, n_head=4,
                                              n_embd=C))
    per_block = (2 * C + 3 * C * C + 3 * C + C * C + C  # ln1, qkv, attention projection
                 + 2 * C + 4 * C * C + 4 * C + 4 * C * C + C)  # ln2, MLP in and out
    n = V * C + L * per_block + 2 * C  # tied embedding / head once, blocks, final norm
    assert model.num_params() == n
    assert model.flops_per_token() == 6 * n + 12 * L * C * T
    assert common.estimate_mfu(model, 1000.0, "cpu", peak=1e12) == pytest.approx(
        (6 * n + 12 * L * C * T) * 1000.0 / 1e12)
    assert common.estimate_mfu(model, 1000.0, "cpu") is None  # no peak known off CUDA


def test_ddp_with_gradient_accumulation_matches_one_process(tmp_path):
    """Two gloo processes, each taking half of each of two micro-batches of 4, take the step one
    process takes on the whole 8 examples (fp32: an exact comparison up to reduction order)."""
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(IDS.tobytes())
    flags = ["--data", str(corpus), "--steps", "2", "--eval-interval", "2", "--dtype", "fp32",
              *TINY]
    train.main([*flags, "--out-dir", str(tmp_path / "one"), "--batch-size", "8"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29541", os.path.join(ROOT, "train.py"), *flags,
           "--out-dir", str(tmp_path / "two"), "--batch-size", "4", "--grad-accum", "2"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    # a failing rank's own error comes first in stderr, the launcher's summary last
    assert p.returncode == 0, p.stderr[:3000] + "\n...\n" + p.stderr[-1000:]
    one = common.load_checkpoint(str(tmp_path / "one" / "ckpt.pt"))["model"]
    two = common.load_checkpoint(str(tmp_path / "two" / "ckpt.pt"))["model"]
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), k


def test_compile_trains_as_eager(tmp_path):
    """--compile on the CPU (inductor's C++ backend) for a few steps: the same losses as eager
    within float tolerance (compiled kernels may reorder sums). Slow: about 20 s of compiling."""
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(IDS.tobytes())
    logs = {}
    for flag in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flag else "eager")
        train.main(["--data", str(corpus), "--out-dir", str(out), "--steps", "3",
                    "--eval-interval", "3", "--dtype", "fp32", *TINY, *flag])
        logs[bool(flag)] = [line for line in open(out / "log.jsonl")]
    eager, compiled = ([json.loads(x)["loss"] for x in logs[k]] for k in (False, True))
    assert np.allclose(eager, compiled, rtol=1e-4), (eager, compiled)
