"""bench.py: each subcommand runs end to end at --tiny sizes (a few seconds each, in a subprocess,
as a user runs it), prints its ratios and writes its JSON; and it times the training step that
train.py takes.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_bench.py      # ~15 s on one core
"""

import collections
import json
import os
import subprocess
import sys

import bench
import objective
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(tmp_path, *args):
    """Run `python bench.py ARGS --tiny --threads 1 --json FILE` on the CPU; -> (stdout, results).
    The subprocess sees no GPU, so the same test runs alike on every machine."""
    out_json = tmp_path / "out.json"  # --json: the same figures, for the checks below
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")  # CPU, one thread
    cmd = [sys.executable, "bench.py", *args, "--tiny", "--threads", "1", "--device", "cpu",
           "--json", str(out_json)]
    # timeout in seconds
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]  # the traceback's end says what broke
    return proc.stdout, json.loads(out_json.read_text())


def test_ctc(tmp_path):
    """Four rows per shape (surface and standard, without and with a canvas), each with its time
    and memory ratio against F.ctc_loss measured in the same run; then the uneven batch."""
    out, res = run_bench(tmp_path, "ctc")  # one shape: B 2, T 24, V 7, 10% slack
    rows = [line for line in out.splitlines() if line.strip().startswith("2 ")]  # B = 2 rows
    assert len(rows) == 4 and out.count("standard") == 2 and out.count("surface") == 2, out
    assert "ratio" in out and len(res["rows"]) == 4
    for row in res["rows"]:  # both ratios, positive and finite: both sides really ran
        assert 0 < row["time_ratio"] < float("inf") and 0 < row["mem_ratio"] < float("inf")
        assert row["cudnn"] == "n/a (CPU)"  # cuDNN is reported, and here says why it did not run
    assert res["command"] == "ctc" and res["device"] == "cpu" and res["threads"] == 1
    # the uneven batch (one short target among long ones): against F.ctc_loss on the same batch
    # and against the even batch, both ratios measured in the same run
    assert "uneven batches" in out and len(res["uneven"]) == 1
    row = res["uneven"][0]
    assert sorted(row["target_lengths"]) == [8, 22, 22, 22] and row["T"] == 24
    for k in ("time_ratio", "mem_ratio", "even_time_ratio", "even_mem_ratio"):
        assert 0 < row[k] < float("inf"), row


def test_train(tmp_path):
    """The three step-time ratios: MDLM / AR, ours / nn.TransformerEncoder, CTC / CE."""
    out, res = run_bench(tmp_path, "train")  # a one-layer model, two timed steps per side
    for text in ("MDLM / AR ratio", "ours / encoder throughput ratio", "CTC / CE ratio"):
        assert text in out, out
    assert {"mdlm-vs-ar", "encoder", "ctc-vs-ce"} <= set(res)  # each comparison in the JSON
    assert all(res[k]["ratio"] > 0 for k in ("mdlm-vs-ar", "encoder", "ctc-vs-ce"))


def test_train_bf16(tmp_path):
    """--dtype bf16 (autocast) runs too: the CTC term then reads bf16 logits as float32."""
    out, res = run_bench(tmp_path, "train", "--dtype", "bf16")
    assert "bf16" in out and res["ctc-vs-ce"]["ratio"] > 0


def test_cache(tmp_path):
    """The cached sampler calls the model at most as often, and draws the very same canvas."""
    out, res = run_bench(tmp_path, "cache")  # 8 steps for 8 positions, random model
    assert "speed-up ratio" in out and "identical canvases: True" in out, out
    assert res["identical"] and res["calls_cached"] <= res["calls_uncached"] == res["steps"]


def test_bench_times_the_functions_train_py_calls(monkeypatch, tmp_path):
    """bench.py train and train.py take their steps through the same functions (the batch of
    objective.py, the forward process of mdlm.py, the loss of objective.py), so a change to the
    training path changes what the benchmark times."""
    calls = collections.Counter()
    for name in ("get_batch", "loss"):
        real = getattr(objective, name)

        def counted(*a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(*a, **k)
        monkeypatch.setattr(objective, name, counted)
    bench.main(["train", "--tiny", "--device", "cpu", "--threads", "1"])
    # three comparisons of two contenders, each timed for a warm-up and two steps
    assert calls["loss"] == calls["get_batch"] == 3 * 2 * 3, calls
    calls.clear()
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 100, encoding="utf-8")
    train.main(["--data", str(corpus), "--out-dir", str(tmp_path / "o"), "--steps", "3",
                "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--seq-len", "16",
                "--batch-size", "4", "--eval-interval", "3", "--eval-batches", "1",
                "--sample-interval", "0", "--no-progress", "--device", "cpu"])
    assert calls["loss"] == calls["get_batch"] == 3 + 1, calls  # 3 steps, 1 validation batch
