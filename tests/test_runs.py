"""The experiment scripts of runs/, end to end at toy sizes (--tiny): every stage runs, the results
files exist and hold every arm and rate, and a second run skips every finished stage."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARMS = {"copy": 7, "grammar": 6, "text": 5}  # pretrained + the fine-tuned arms of each script


def run(script, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # toy models: threads only add start-up time
    return subprocess.run(["bash", os.path.join(ROOT, "runs", script), "--tiny", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.parametrize("task", sorted(ARMS))
def test_script_runs_and_skips_finished_stages(task, tmp_path):
    out = tmp_path / task
    p = run(f"{task}.sh", out)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    for sampler in ("confidence", "ancestral"):
        res = json.load(open(out / f"score-{sampler}" / "results.json"))
        assert len(res["names"]) == ARMS[task] and res["rates"][0] in ("0", 0, 0.0)
        assert len(res["rates"]) == 5 and set(res["runs"]) == set(res["names"])
        assert os.path.exists(out / f"score-{sampler}" / f"{res['primary']}.svg")
    assert os.path.exists(out / "curves" / "curves.md")
    if task == "copy":  # the ablation builds on the copy run's pretrained checkpoint and arms
        p = run("copy_long.sh", out)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        res = json.load(open(out / "score-long" / "results.json"))
        assert res["names"] == ["ce-ft", "ctc-random", "ctc-random-long", "ctc-mix", "ctc-mix-long"]
    again = run(f"{task}.sh", out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "python train.py" not in again.stdout and "python decode.py" not in again.stdout
    assert again.stdout.count("done already") >= ARMS[task] * 3


def test_unknown_option_is_refused(tmp_path):
    p = subprocess.run(["bash", os.path.join(ROOT, "runs", "copy.sh"), "--fast"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown option --fast" in p.stderr


def test_ablation_needs_the_copy_run(tmp_path):
    p = subprocess.run(["bash", os.path.join(ROOT, "runs", "copy_long.sh"), str(tmp_path / "none")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "run runs/copy.sh" in p.stderr
