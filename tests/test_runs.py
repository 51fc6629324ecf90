"""The experiment scripts of runs/, end to end at toy sizes (--tiny): every stage runs, the
results files hold every arm, seed and rate, a second run skips every finished stage, a rerun
from scratch reproduces the tables exactly, and the size and device presets are checked."""
import json
import os
import subprocess

import pytest

from conftest import ROOT, run_script

ARMS = {  # the arms each script scores in score-auto (seeds pooled), pretrained included
    "grammar": {"pretrained", "ce-ft", "ctc-random", "ctc-model", "ctc+ce-model"},
    "copy": {"pretrained", "ce-ft", "ctc-random", "ctc-model", "ctc+ce-model"},
    "text": {"pretrained", "ce-ft", "ctc-random", "ctc-model"},
}
SEEDS = {"grammar": 2, "copy": 2, "text": 1}  # at --tiny


@pytest.mark.parametrize("task", sorted(ARMS))
def test_script_makes_every_result(tiny_exp, task):
    out = tiny_exp / task
    res = json.load(open(out / "score-auto" / "results.json"))
    assert set(res["arms"]) == ARMS[task] and len(res["rates"]) == 5
    for arm, by_rate in res["arms"].items():  # every fine-tuned arm with every seed
        seeds = 1 if arm == "pretrained" else SEEDS[task]
        assert all(len(cell["seeds"]) == seeds for cell in by_rate.values()), arm
    assert os.path.exists(out / "score-auto" / f"{res['primary']}.svg")
    assert os.path.exists(out / "curves" / "curves.md")
    setup = json.load(open(out / "setup.json"))
    assert setup["size"] == "tiny" and setup["device"] == "cpu" and setup["threads"] == 1
    if task == "grammar":  # the decoder sweep, the slack rates, the end-of-text probe
        val = json.load(open(out / "val-score" / "results.json"))
        settings = {name.split(":")[1] for name in val["arms"]}
        assert settings >= {f"{rule}/{n}" for rule in ("plain", "last", "threshold", "first")
                            for n in (1, 2)}
        rates = json.load(open(out / "score-rates" / "results.json"))
        assert {"ctc-random-0.05", "ctc-random", "ctc-random-0.2"} <= set(rates["arms"])
        assert os.path.exists(out / "lengths" / "lengths.json")


@pytest.mark.parametrize("task", sorted(ARMS))
def test_a_second_run_skips_finished_stages(tiny_exp, task):
    again = run_script(task, tiny_exp / task)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "python train.py" not in again.stdout and "python decode.py" not in again.stdout
    assert again.stdout.count("done already") >= 5


def test_a_rerun_reproduces_the_tables(tiny_exp, tmp_path):
    """The same script from scratch into another folder, its fine-tunes two at a time (JOBS=2):
    every table is the same, byte for byte (the same seeds, threads and code give the same
    checkpoints and outputs, whatever runs beside them)."""
    p = run_script("copy", tmp_path / "copy", {"JOBS": "2"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("== in the background") == 10  # 4 arms and CTC+CE random, 2 seeds
    for score in ("score-auto", "score-rules", "score-term"):
        a = (tiny_exp / "copy" / score / "results.md").read_text()
        b = (tmp_path / "copy" / score / "results.md").read_text()
        assert a == b, score
    curves = [(d / "curves" / "curves.md").read_text() for d in (tiny_exp / "copy",
                                                                 tmp_path / "copy")]
    assert curves[0] == curves[1]


def test_unknown_option_and_size_are_refused():
    p = subprocess.run(["bash", os.path.join(ROOT, "runs", "copy.sh"), "--fast"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown option --fast" in p.stderr
    p = subprocess.run(["bash", os.path.join(ROOT, "runs", "copy.sh")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                         "SIZE": "huge"})
    assert p.returncode == 2 and "SIZE must be tiny, cpu or gpu" in p.stderr


@pytest.mark.parametrize("task", sorted(ARMS))
def test_every_size_preset_is_complete(task):
    """Each script defines the same settings for every size, so SIZE=gpu (not runnable here)
    is at least complete: every variable the cpu preset sets, the gpu preset sets too."""
    text = open(os.path.join(ROOT, "runs", f"{task}.sh")).read()
    blocks = {size: text.split(f"\n{size})")[1].split(";;")[0] for size in ("tiny", "cpu", "gpu")}
    names = {size: {w.split("=")[0].split()[-1] for w in b.replace(";", "\n").split("\n")
                    if "=" in w and not w.strip().startswith("#")} for size, b in blocks.items()}
    assert names["gpu"] == names["cpu"] == names["tiny"], names
