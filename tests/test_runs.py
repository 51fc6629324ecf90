"""The experiment scripts of runs/, end to end at toy sizes (--tiny): every stage runs, the
results files hold every arm, seed and rate, the decoder is chosen on validation prompts before
the test prompts are decoded, a second run skips every finished stage, a rerun from scratch (two
jobs at once) reproduces the tables exactly, and the size and device presets are checked."""
import json
import os
import subprocess

import pytest

import common
from conftest import ROOT, run_script, toy_log

ARMS = {  # the arms each script scores on its test prompts (seeds pooled), pretrained included
    "grammar": {"pretrained", "ce-ft", "ctc-random", "ctc-model", "ctc+ce-model",
                "ctc+ce-random"},
    "copy": {"pretrained", "ce-ft", "ctc-random", "ctc-model", "ctc+ce-model", "ctc+ce-random"},
    "text": {"pretrained", "ce-ft", "ctc-random", "ctc-model"},
}
SEEDS = {"grammar": 2, "copy": 1, "text": 1}  # at --tiny
VARIANTS = ("base", "uncond", "pad", "spread")


@pytest.mark.parametrize("task", sorted(ARMS))
def test_script_makes_every_result(tiny_exp, task):
    out = tiny_exp / task
    res = json.load(open(out / "score-test" / "results.json"))
    assert set(res["arms"]) == ARMS[task] and len(res["rates"]) == 5
    for arm, by_rate in res["arms"].items():  # every fine-tuned arm with every seed
        seeds = 1 if arm == "pretrained" else SEEDS[task]
        assert all(len(cell["seeds"]) == seeds for cell in by_rate.values()), arm
    assert os.path.exists(out / "score-test" / f"{res['primary']}.svg")
    assert os.path.exists(out / "curves" / "curves.md")
    setup = json.load(open(out / "setup.json"))
    assert setup["size"] == "tiny" and setup["device"] == "cpu" and setup["threads"] == 1
    if task == "text":
        return
    # the protocol: a primary metric and comparison declared, the decoder chosen on validation
    # prompts with that metric and used for the fresh test prompts, the earlier test prompts
    # scored as a second set, every fine-tune continued and decoded on validation again
    assert res["primary_comparison"] == {"arm": "ctc-random", "rate": "0.01"}
    assert res["primary"] == {"grammar": "parses_std", "copy": "exact"}[task]
    old = json.load(open(out / "score-test-old" / "results.json"))
    assert set(old["arms"]) == ARMS[task] and old["rates"] == ["0", "0.01"]
    assert old["primary"] == res["primary"] and old["primary_comparison"] == res[
        "primary_comparison"]
    fresh, earlier = ({r["prompt"] + r["response"] for r in map(json.loads, open(
        out / "task" / f"{name}.jsonl"))} for name in ("test", "test-old"))
    assert fresh and earlier and not fresh & earlier
    task_json = json.load(open(out / "task" / "task.json"))
    assert task_json["n_test"] == len(fresh) and task_json["n_test_old"] == len(earlier)
    cell = res["arms"]["ce-ft"]["0"]  # the whole output, per arm and rate
    assert {"length_tv", "length_shares", "coverage", "distinct_valid"} <= set(cell["whole"])
    val = json.load(open(out / "val-score" / "results.json"))
    settings = {name.split(":")[1] for name in val["arms"]}
    assert settings == {f"{rule}/{n}/{b}" for rule in ("plain", "last", "threshold", "first")
                        for n in (1, 2) for b in (("16",) if task == "grammar" else
                                                  ("8", "16"))}
    choice = json.load(open(out / "choice" / "choice.json"))
    assert choice["setting"] in settings and choice["metric"] == res["primary"]
    rule, per_step, block = choice["setting"].split("/")
    for line in open(out / "test-gens" / "ce-ft@1.jsonl"):
        rec = json.loads(line)
        assert (rec["slack_rule"], str(rec["per_step"]), str(rec["block_length"])) == (
            rule, per_step, block)
    more = json.load(open(out / "val-score-more" / "results.json"))
    assert set(more["arms"]) == ARMS[task] - {"pretrained"}
    assert os.path.exists(out / "curves-more" / "curves.md")
    if task == "grammar":
        assert os.path.exists(out / "lengths" / "lengths.json")


def test_the_study_varies_one_property_at_a_time(tiny_exp):
    """runs/study.sh, after runs/grammar.sh: each variant's task, its pretrained model through
    the competence gate, its arms with every seed, decoded with the decoder chosen on its own
    validation prompts; every variant trains on the base's batch of texts; the base is the
    grammar run itself."""
    base = common.load_checkpoint(str(tiny_exp / "grammar" / "ce-ft@1" / "ckpt.pt"))["args"]
    for v in VARIANTS:
        res = json.load(open(tiny_exp / "study" / v / "score" / "results.json"))
        assert set(res["arms"]) == {"pretrained", "ce-ft", "ctc-random"}, v
        assert res["primary"] == "parses_std", v
        assert res["primary_comparison"] == {"arm": "ctc-random", "rate": "0.01"}, v
        assert json.load(open(tiny_exp / "study" / v / "setup.json"))["variant"] == v
        if v == "base":
            continue
        assert res["rates"] == ["0", "0.01", "0.05", "0.1"], (v, res["rates"])
        gate = json.load(open(tiny_exp / "study" / v / "gate.json"))
        assert gate["passed"] and gate["checkpoint"] in ("pretrain-1", "pretrain-2")
        assert gate["parses_std"] >= gate["base"] - gate["margin"]
        choice = json.load(open(tiny_exp / "study" / v / "choice" / "choice.json"))
        val = json.load(open(tiny_exp / "study" / v / "val-score" / "results.json"))
        assert choice["scores"].endswith(f"study/{v}/val-score/results.json")
        assert {n.split(":")[1] for n in val["arms"]} == set(choice["candidates"])
        rec = json.loads(open(tiny_exp / "study" / v / "test-gens" / "ce-ft@1.jsonl").readline())
        assert "/".join(str(rec[k]) for k in ("slack_rule", "per_step", "block_length")) == \
            choice["setting"]
        for run in ("pretrained", "ce-ft@1", "ctc-random@1"):  # the base's batch, in texts
            ckpt = common.load_checkpoint(str(tiny_exp / "study" / v / run / "ckpt.pt"))
            assert ckpt["args"]["batch_size"] == base["batch_size"], (v, run)
            # the prompt-free texts begin with a start token, kept by the fine-tunes
            assert common.checkpoint_meta(ckpt)["bos"] is (v == "uncond"), (v, run)
    tasks = {v: [json.loads(line) for line in open(tiny_exp / "study" / v / "task" /
                                                   "test.jsonl")] for v in VARIANTS[1:]}
    assert all(r["prompt"] == "" for r in tasks["uncond"])
    assert all(24 <= len(r["prompt"] + r["response"]) <= 30 for r in tasks["spread"])
    assert json.load(open(tiny_exp / "study" / "pad" / "setup.json"))["seq_len"] == 96


@pytest.mark.parametrize("task", sorted(ARMS))
def test_a_second_run_skips_finished_stages(tiny_exp, task):
    again = run_script(task, tiny_exp / task)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "python train.py" not in again.stdout and "python decode.py" not in again.stdout
    assert again.stdout.count("done already") >= 5


def test_a_rerun_reproduces_the_tables(tiny_exp):
    """The same script from scratch into another folder, its fine-tunes and decodes two at a
    time (JOBS=2, each checkpoint decoded in a process of its own; conftest.py runs it): every
    table is the same, byte for byte (the same seeds, threads and code give the same checkpoints
    and outputs, whatever runs beside them and however the decoding is split)."""
    rerun = tiny_exp.parent / "rerun" / "copy"
    log = toy_log(tiny_exp.parent, "rerun/copy").read_text()
    assert log.count("== in the background") >= 20  # fine-tunes, continuations, decodes
    for score in ("score-test", "val-score", "val-score-more"):
        a = (tiny_exp / "copy" / score / "results.md").read_text()
        b = (rerun / score / "results.md").read_text()
        assert a == b, score
    for curves in ("curves", "curves-more"):
        a, b = [(d / curves / "curves.md").read_text() for d in (tiny_exp / "copy", rerun)]
        assert a == b, curves


def test_unknown_option_and_size_are_refused():
    p = subprocess.run(["bash", os.path.join(ROOT, "runs", "copy.sh"), "--fast"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown option --fast" in p.stderr
    p = subprocess.run(["bash", os.path.join(ROOT, "runs", "copy.sh")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env={**os.environ,
                                                                         "SIZE": "huge"})
    assert p.returncode == 2 and "SIZE must be tiny, cpu or gpu" in p.stderr
    p = subprocess.run(["bash", os.path.join(ROOT, "runs", "study.sh"), "--tiny", "/nowhere/s"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "run runs/grammar.sh first" in p.stderr


def test_long_texts_are_refused_a_folder_of_short_ones(tmp_path):
    """TEXTS=long runs grammar.sh on long texts; its finished stages must never be mixed with a
    folder's of the short texts (a folder whose setup names no texts holds short ones)."""
    script = os.path.join(ROOT, "runs", "grammar.sh")
    p = subprocess.run(["bash", script, "--tiny", str(tmp_path / "g")], cwd=ROOT, timeout=60,
                       capture_output=True, text=True, env={**os.environ, "TEXTS": "medium"})
    assert p.returncode == 2 and "TEXTS must be short or long, not medium" in p.stderr
    (tmp_path / "g" / "task").mkdir(parents=True)
    (tmp_path / "g" / "task" / "DONE").write_text("1")
    (tmp_path / "g" / "setup.json").write_text('{"size": "tiny"}')
    p = subprocess.run(["bash", script, "--tiny", str(tmp_path / "g")], cwd=ROOT, timeout=60,
                       capture_output=True, text=True, env={**os.environ, "TEXTS": "long"})
    assert p.returncode == 2 and "other texts than TEXTS=long" in p.stderr


@pytest.mark.parametrize("task", sorted(ARMS) + ["study"])
def test_every_size_preset_is_complete(task):
    """Each script defines the same settings for every size, so SIZE=gpu (not runnable here)
    is at least complete: every variable the cpu preset sets, the gpu preset sets too."""
    text = open(os.path.join(ROOT, "runs", f"{task}.sh")).read()
    blocks = {size: text.split(f"\n{size})")[1].split(";;")[0] for size in ("tiny", "cpu", "gpu")}
    names = {size: {w.split("=")[0].split()[-1] for w in b.replace(";", "\n").split("\n")
                    if "=" in w and not w.strip().startswith("#")} for size, b in blocks.items()}
    assert names["gpu"] == names["cpu"] == names["tiny"], names
