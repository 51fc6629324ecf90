"""Make the top-level scripts importable from the tests (the project is flat, not a package)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import torch  # noqa: E402

import mdlm  # noqa: E402


def tiny_model(causal=False, seed=0, seq_len=32, *, n_layer=1, n_embd=16,
               vocab_size=mdlm.BYTE_VOCAB_SIZE, sharp=False):
    """A random Transformer of the given size, in eval mode, seeded: the one test model, which
    each test file sizes with functools.partial. sharp: unit-variance weights, so its predictions
    depend strongly on the canvas (at the usual 0.02 init they are almost uniform
    whatever the input)."""
    torch.manual_seed(seed)
    cfg = mdlm.ModelConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=2,
                           n_embd=n_embd, causal=causal)
    model = mdlm.Transformer(cfg).eval()
    if sharp:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
    return model



def noised(b, obj, gen):
    """A batch of objective.get_batch noised as train.py's loop noises it: t, then z_t."""
    if not obj.ar:
        b["t"] = mdlm.sample_t(len(b["z0"]), generator=gen)
        b["z_t"] = mdlm.forward_mask(b["z0"], b["t"], obj.schedule, mask_id=obj.mask_id,
                                     generator=gen, is_prompt=b["is_prompt"])
    return b


def run_main(main, argv, capsys):
    """A script's main(argv) as a user runs it, in this process (no interpreter start): (exit
    status, stderr). train.py's main returns nothing and exits only on errors."""
    capsys.readouterr()  # drop what came before
    try:
        code = main(list(argv)) or 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err

# ----------------------------------------------------------------------------------------------
# The experiment scripts at toy sizes, run once per test session and shared (read only) by
# test_runs.py and test_report.py: each script takes about half a minute, so running them once
# keeps the suite within its time. No test may change these folders.

import subprocess  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(name, out, env_extra=None):
    """bash runs/NAME.sh --tiny OUT, one CPU thread: the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(["bash", os.path.join(ROOT, "runs", f"{name}.sh"), "--tiny", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="session")
def tiny_exp(tmp_path_factory):
    """A folder holding grammar/, copy/, text/, study/ and bench/: each runs/*.sh --tiny, two at
    a time (the machine has two cores); the study after the grammar run it builds on."""
    out = tmp_path_factory.mktemp("tiny-exp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = {}
    for batch in (("grammar", "copy"), ("study", "text", "bench")):
        procs = {name: subprocess.Popen(["bash", os.path.join(ROOT, "runs", f"{name}.sh"),
                                         "--tiny", str(out / name)], cwd=ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for name in batch}
        for name, p in procs.items():
            logs[name] = p.communicate(timeout=900)[0]
            assert p.returncode == 0, f"runs/{name}.sh --tiny failed:\n{logs[name][-3000:]}"
    return out
