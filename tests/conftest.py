"""Shared by the tests: the top-level scripts made importable (the project is flat, not a
package), the one test model, and the experiment scripts' toy runs."""
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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
        b["t"], b["z_t"] = mdlm.forward_process(b["z0"], obj.schedule, mask_id=obj.mask_id,
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
# test_runs.py and test_report.py. They are most of the suite's time, so they start in the
# background as soon as collection shows a test that needs them, as two chains of one CPU thread
# each (the study reads the grammar run's outputs; the copy script also runs a second time, two
# jobs at once, for the test that its tables repeat), and the tests that read them run last:
# the other tests run meanwhile. No test may change these folders.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CHAINS = (  # (script, output folder under the toy root, extra environment), run in order
    (("grammar", "exp/grammar", ""), ("study", "exp/study", "")),
    (("copy", "exp/copy", ""), ("copy", "rerun/copy", "JOBS=2"), ("text", "exp/text", ""),
     ("bench", "exp/bench", ""), ("grammar", "exp/long", "TEXTS=long")),
)
_toy = {}  # "root": the toy runs' folder, "chains": their running shells


def run_script(name, out):
    """bash runs/NAME.sh --tiny OUT, one CPU thread: the CompletedProcess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", os.path.join(ROOT, "runs", f"{name}.sh"), "--tiny", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


def toy_log(root, out):
    """Where the toy run into root/out writes its output."""
    return Path(root) / "logs" / (out.replace("/", "-") + ".log")


def start_toy_runs():
    root = Path(tempfile.mkdtemp(prefix="tiny-exp-"))
    (root / "logs").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    chains = []
    for chain in TOY_CHAINS:
        command = " && ".join(f"{extra} bash runs/{name}.sh --tiny {shlex.quote(str(root / out))}"
                              f" > {shlex.quote(str(toy_log(root, out)))} 2>&1"
                              for name, out, extra in chain)
        chains.append(subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env,
                                       start_new_session=True))
    _toy.update(root=root, chains=chains)


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected
def pytest_collection_modifyitems(session, config, items):
    toy = [item for item in items if "tiny_exp" in getattr(item, "fixturenames", ())]
    if toy and not config.option.collectonly:
        items[:] = [item for item in items if item not in toy] + toy
        start_toy_runs()


def pytest_sessionfinish(session, exitstatus):
    for p in _toy.get("chains", []):
        if p.poll() is None:  # interrupted: stop the chain's scripts too
            os.killpg(p.pid, signal.SIGTERM)
            p.wait()
    if "root" in _toy:
        shutil.rmtree(_toy["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_exp():
    """A folder holding grammar/, copy/, text/, study/, bench/ and long/ (grammar.sh on long
    texts), each runs/*.sh --tiny (and, beside it, rerun/copy: copy.sh again with JOBS=2)."""
    if not _toy:
        start_toy_runs()
    for p, chain in zip(_toy["chains"], TOY_CHAINS):
        p.wait(timeout=1200)
        if p.returncode:
            logs = [toy_log(_toy["root"], out) for _, out, _ in chain]
            last = [log for log in logs if log.exists()][-1]
            pytest.fail(f"{last.name} (runs/*.sh --tiny) failed:\n{last.read_text()[-3000:]}")
    return _toy["root"] / "exp"
