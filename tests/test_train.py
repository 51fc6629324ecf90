"""train.py: data, resume, DDP, and every bad input ending in one clear message."""
import json
import os
import subprocess
import sys

import pytest
import torch

import common
import conftest
import mdlm
import objective
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--seq-len", "32", "--batch-size", "4",
        "--eval-interval", "2", "--eval-batches", "1", "--sample-interval", "0", "--no-progress",
        # fp32: these tests compare runs exactly (bf16 against fp32: test_gpu_path.py)
        "--device", "cpu", "--warmup", "2", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("Masked diffusion reads the whole canvas at once. " * 200 + "Ünïcödé ✓\n",
                    encoding="utf-8")
    return str(path)


def run_train(*args, capsys):
    """train.py's main as a user runs it, in this process: (exit code, stderr)."""
    return conftest.run_main(train.main, args, capsys)


def test_a_bad_flag_in_a_fresh_process_is_one_line():
    """The command line itself, once, in its own interpreter: one error line, no traceback."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--steps", "0"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 1 and p.stderr.strip() == "error: --steps must be at least 1", p.stderr


def weights(path, key="model"):
    return common.load_checkpoint(path)[key]


def test_resume_is_bit_identical(tmp_path, corpus):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert train.main(["--data", corpus, "--out-dir", a, "--steps", "6", *TINY]) is None
    train.main(["--data", corpus, "--out-dir", b, "--steps", "3", *TINY])
    assert common.load_checkpoint(os.path.join(b, "ckpt.pt"))["step"] == 3
    train.main(["--data", corpus, "--out-dir", b, "--steps", "6", "--resume", *TINY])
    wa, wb = weights(os.path.join(a, "ckpt.pt")), weights(os.path.join(b, "ckpt.pt"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    ea, eb = weights(os.path.join(a, "ckpt.pt"), "ema"), weights(os.path.join(b, "ckpt.pt"), "ema")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    # and the weights did move
    w0 = mdlm.Transformer(mdlm.ModelConfig.from_dict(
        common.load_checkpoint(os.path.join(a, "ckpt.pt"))["config"]))
    assert not torch.equal(w0.state_dict()["blocks.0.attn.qkv.weight"],
                           wa["blocks.0.attn.qkv.weight"])


def test_ddp_two_processes_match_one(tmp_path, corpus):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    train.main(["--data", corpus, "--out-dir", one, "--steps", "3", *TINY])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29533", os.path.join(ROOT, "train.py"), "--data", corpus,
           "--out-dir", two, "--steps", "3", *TINY]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    w1, w2 = weights(os.path.join(one, "ckpt.pt")), weights(os.path.join(two, "ckpt.pt"))
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-4), k


def test_log_and_checkpoint_contents(tmp_path, corpus):
    out = str(tmp_path / "o")
    train.main(["--data", corpus, "--out-dir", out, "--steps", "4", *TINY])
    lines = [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]
    assert [l["step"] for l in lines] == [1, 2, 3, 4]
    assert all(l["tok_per_s"] > 0 for l in lines) and "val_bits" in lines[-1]
    ckpt = common.load_checkpoint(os.path.join(out, "ckpt.pt"))
    vocab = {"n_tokens": 256, "tokenizer": "bytes", "words": [], "eos": 256, "slack": 257,
             "mask": 258}
    assert ckpt["meta"] == {"objective": "mdlm", "schedule": "linear", "loss": "ce", "slack": False,
                            "collapse": "surface", "vocab": vocab, "bos": False}
    assert ckpt["config"]["seq_len"] == 32 and ckpt["step"] == 4


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"), (b"", "is empty"), (b"\x00\x01binary\x00", "binary"),
    (b"\xff\xfe\xfa not utf8", "not UTF-8"), (b"too short", "too short"), ("dir", "directory"),
])
def test_bad_data(tmp_path, content, message, capsys):
    path = tmp_path / "data.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    code, err = run_train("--data", str(path), "--out-dir", str(tmp_path / "o"), "--steps", "2",
                          *TINY, capsys=capsys)
    assert code == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "ckpt.pt").exists()


def test_bad_checkpoints_and_settings_leave_the_checkpoint_intact(tmp_path, corpus, capsys):
    out = str(tmp_path / "o")
    train.main(["--data", corpus, "--out-dir", out, "--steps", "2", *TINY])
    ckpt = os.path.join(out, "ckpt.pt")
    before = open(ckpt, "rb").read()
    cases = [
        (["--out-dir", out, "--steps", "4"], "exists; pass --resume"),
        (["--out-dir", out, "--steps", "4", "--resume", "--n-layer", "3"],
         "differs from the checkpoint"),
        (["--out-dir", str(tmp_path / "f"), "--init-from", ckpt, "--seq-len", "64"],
         "longer than the model"),
        (["--out-dir", str(tmp_path / "f"), "--init-from", ckpt, "--prompt-len", "40"],
         "--prompt-len"),
        (["--out-dir", str(tmp_path / "f"), "--init-from", ckpt, "--slack-rate", "1.0"],
         "--slack-rate"),
        (["--out-dir", str(tmp_path / "f"), "--init-from", str(tmp_path / "nope.pt")],
         "does not exist"),
    ]
    for extra, message in cases:
        args = ["--data", corpus, "--steps", "2", *TINY]
        code, err = run_train(*args, *extra, capsys=capsys)
        assert code == 1 and message in err and "Traceback" not in err, (extra, err)
    trunc = str(tmp_path / "trunc.pt")
    open(trunc, "wb").write(before[: len(before) // 3])
    code, err = run_train("--data", corpus, "--out-dir", str(tmp_path / "g"), "--init-from", trunc,
                          *TINY, capsys=capsys)
    assert code == 1 and "corrupted" in err
    assert open(ckpt, "rb").read() == before
    assert not os.path.exists(str(tmp_path / "f" / "ckpt.pt"))


def interrupting(exc, at_step):
    """An objective.loss that raises `exc` (or returns NaN) at the given training step (calls
    under no_grad, validation's, are not counted)."""
    real, calls = objective.loss, [0]

    def fake(logits, b, obj, kind=None):
        calls[0] += torch.is_grad_enabled()
        if calls[0] == at_step and torch.is_grad_enabled():
            if exc == "nan":
                return real(logits, b, obj, kind) * float("nan")
            raise exc
        return real(logits, b, obj, kind)
    return fake


@pytest.mark.parametrize("exc,message", [(KeyboardInterrupt(), "interrupted at step"),
                                         ("nan", "loss is nan")])
def test_ctrl_c_and_nan_keep_last_checkpoint(tmp_path, corpus, monkeypatch, capsys, exc, message):
    out = str(tmp_path / "o")
    monkeypatch.setattr(objective, "loss", interrupting(exc, at_step=5))
    with pytest.raises(SystemExit) as e:
        train.main(["--data", corpus, "--out-dir", out, "--steps", "10", "--ckpt-interval", "2",
                    *TINY])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert message in err and "last good checkpoint" in err, err
    ckpt = common.load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ckpt["step"] == 4 and f"step {ckpt['step']}" in err
    assert not os.path.exists(os.path.join(out, "ckpt.pt.tmp"))


def test_ema_update_is_an_exponential_average_once_per_parameter():
    torch.manual_seed(0)
    cfg = mdlm.ModelConfig(vocab_size=mdlm.BYTE_VOCAB_SIZE, seq_len=8, n_layer=1, n_head=2,
                           n_embd=8)
    model, ema = mdlm.Transformer(cfg), mdlm.Transformer(cfg)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    step, decay = 1000, 0.9
    objective.ema_update(ema, model, step, decay)
    d = min(decay, (1 + step) / (10 + step))
    for k, v in ema.state_dict().items():  # the tied embedding/head included
        expect = (d * before[k] + (1 - d) * model.state_dict()[k] if v.dtype.is_floating_point
                  else before[k])
        assert torch.allclose(v, expect, atol=1e-7), k


@pytest.mark.parametrize("flags,message", [
    (["--steps", "-5"], "--steps must be at least 1"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--grad-accum", "0"], "--grad-accum must be at least 1"),
    (["--seq-len", "1"], "--seq-len must be at least 2"),
    (["--lr", "0"], "--lr > 0"),
    (["--lr=-1e-3"], "--lr > 0"),
    (["--warmup", "-1"], "--warmup >= 0"),
    (["--ema", "1.5"], "--ema < 1"),
    (["--eval-interval", "0"], "--eval-interval must be at least 1"),
    (["--n-head", "3"], "divisible by --n-head"),
    (["--n-layer", "0"], "--n-layer must be at least 1"),
    (["--ctc-weight", "-1"], "--ctc-weight"),
    (["--device", "cuda" if not torch.cuda.is_available() else "tpu"], "device"),
    (["--resume"], "no "),
    (["--out-dir", os.path.abspath(__file__)], "is a file"),
])
def test_every_impossible_flag_is_one_message(tmp_path, corpus, flags, message, capsys):
    code, err = run_train("--data", corpus, "--out-dir", str(tmp_path / "o"), *TINY, "--steps", "2",
                          *flags, capsys=capsys)
    assert code == 1 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o" / "ckpt.pt").exists()


def test_resume_of_a_finished_run_does_nothing(tmp_path, corpus, capsys):
    out = str(tmp_path / "o")
    train.main(["--data", corpus, "--out-dir", out, "--steps", "2", *TINY])
    before = open(os.path.join(out, "ckpt.pt"), "rb").read()
    train.main(["--data", corpus, "--out-dir", out, "--steps", "2", "--resume", *TINY])
    assert "nothing to do" in capsys.readouterr().out
    assert open(os.path.join(out, "ckpt.pt"), "rb").read() == before


def test_every_optimisation_flag_changes_the_run(tmp_path, corpus):
    """--dropout, --min-lr-ratio, --weight-decay and --grad-clip appear in no experiment: each is
    kept for users scaling up, and each really reaches the step (other weights than the
    default's after a few steps)."""
    def weights_after(*flags):
        out = str(tmp_path / "-".join(flags or ("base",)))
        train.main(["--data", corpus, "--out-dir", out, "--steps", "6", "--lr", "3e-2", *TINY,
                    *flags])
        return weights(os.path.join(out, "ckpt.pt"))
    base = weights_after()
    for flags in (["--dropout", "0.2"], ["--min-lr-ratio", "0.9"], ["--weight-decay", "0.5"],
                  ["--grad-clip", "0.01"]):
        other = weights_after(*flags)
        assert any(not torch.equal(base[k], other[k]) for k in base), flags
