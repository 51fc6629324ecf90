"""
Collect experiment folders into results/: the slim copy of what the results pages are rendered
from (runs/report.py --collect calls this; rendering then reads results/ alone, never exp/).

An experiment is a folder with a setup.json (runs/lib.sh writes one), EXP/ or EXP/VARIANT/ under
the folder collected (a variant is collected as EXP-VARIANT); each replaces results/NAME/ with:
    SCORE.json      each SCORE/results.json (val-score, score-test, ...), without the per-prompt
                    values (most of the bytes; every interval that needs them is in the file)
    SCORE-examples.json   for a score with a primary comparison (the ones whose intervals the
                    pages publish): every run's per-prompt values at every rate, compact and
                    exact (stats.examples_of), from which stats.recompute redoes every interval
    SCORE.svg       the plot of its primary metric
    choice.json     the decoder chosen on validation prompts (evaluate.py choose)
    CURVES.json, CURVES-KEY.svg   the learning curves (curves/, curves-more/)
    lengths.json    evaluate.py lengths' output, where the experiment has one
    gate.json       a study variant's pretrained model against the competence gate
    runs.json       every trained run's settings and size, read from its checkpoint
    bench-*.json    bench.py's results (runs/bench.sh)
    setup.json, task.json, times.json ({stage: seconds} from every DONE file, nested ones too)
"""

import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import common  # noqa: E402  (the project root is on the path only from here on)
import stats  # noqa: E402

BULKY = ("per_example", "per_seed", "prompt_indices")
RUN_ARGS = ("steps", "lr", "warmup", "min_lr_ratio", "batch_size", "seq_len", "slack_rate",
            "loss", "slack_placement", "ema", "seed")


class CollectError(Exception):
    """A missing or malformed experiment folder: one error line, exit status 1."""


def slim(x):
    """x without the BULKY keys at any depth."""
    if isinstance(x, dict):
        return {k: slim(v) for k, v in x.items() if k not in BULKY}
    if isinstance(x, list):
        return [slim(v) for v in x]
    return x


def write_json(path, obj):
    """Indented JSON with "\\n" line ends: the pages must come out byte-identical everywhere."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def write_examples(path, res):
    """The compact per-prompt values of a score: one line per run and rate (a diff shows which
    changed), the prompt indices and the true responses' values first."""
    ex = stats.examples_of(res)
    lines = [f'{{"prompt_indices": {json.dumps(ex["prompt_indices"])},',
             f' "reference": {json.dumps(ex["reference"])},', ' "runs": {']
    items = [(name, r, codes) for name, by_rate in ex["runs"].items()
             for r, codes in by_rate.items()]
    for k, (name, r, codes) in enumerate(items):
        first = k == 0 or items[k - 1][0] != name
        last = k + 1 == len(items) or items[k + 1][0] != name
        lines.append(("  " + json.dumps(name) + ": {" if first else "   ")
                     + f"{json.dumps(r)}: {json.dumps(codes)}" + ("}" if last else "")
                     + ("," if k + 1 < len(items) else ""))
    lines.append(" }}")
    text = "\n".join(lines) + "\n"
    if json.loads(text) != ex:  # the hand-made layout must read back as the same object
        raise CollectError(f"{path}: the compact per-prompt values do not read back")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def stage_seconds(src):
    """{stage: seconds} from every DONE file under src (runs/lib.sh writes one integer there),
    the stage named by its folder's path relative to src (test-gens/ce-ft@1)."""
    times = {}
    for root, dirs, files in sorted(os.walk(src)):
        dirs.sort()
        if "DONE" in files and root != src:
            text = open(os.path.join(root, "DONE"), encoding="utf-8").read().strip()
            if not text.isdigit():
                raise CollectError(f"{root}/DONE: expected the stage's seconds, found {text!r}")
            times[os.path.relpath(root, src)] = int(text)
    return dict(sorted(times.items()))


def run_settings(src):
    """{run: {its training flags (RUN_ARGS), params}} of every checkpoint one or two folders
    below src (ARM@SEED/ckpt.pt, more/ARM@SEED/ckpt.pt)."""
    runs = {}
    for root, dirs, files in sorted(os.walk(src)):
        dirs.sort()
        depth = os.path.relpath(root, src).count(os.sep)
        if "ckpt.pt" not in files or depth > 1 or root == src:
            continue
        ckpt = common.load_checkpoint(os.path.join(root, "ckpt.pt"))
        args = ckpt.get("args") or {}
        model = common.model_from_checkpoint(ckpt)
        runs[os.path.relpath(root, src)] = {
            **{k: args.get(k) for k in RUN_ARGS}, "params": model.num_params(),
            "n_layer": model.cfg.n_layer, "n_embd": model.cfg.n_embd, "step": ckpt.get("step")}
    return runs


def copy_curves(src, dest, folder):
    """folder/curves.json -> FOLDER.json, folder/KEY.svg -> FOLDER-KEY.svg."""
    path = os.path.join(src, folder)
    if not os.path.isfile(os.path.join(path, "curves.json")):
        return
    shutil.copyfile(os.path.join(path, "curves.json"), os.path.join(dest, f"{folder}.json"))
    for f in sorted(os.listdir(path)):
        if f.endswith(".svg"):
            shutil.copyfile(os.path.join(path, f), os.path.join(dest, f"{folder}-{f}"))


def collect_experiment(src, dest):
    """Replace dest with the slim copy of the experiment folder src; returns the files written."""
    if os.path.isdir(dest):  # a generated folder: clearing it drops files of stages now gone
        shutil.rmtree(dest)
    os.makedirs(dest)
    shutil.copyfile(os.path.join(src, "setup.json"), os.path.join(dest, "setup.json"))
    for sub, name in (("task", "task.json"), ("choice", "choice.json"),
                      ("lengths", "lengths.json"), ("", "gate.json")):
        if os.path.isfile(os.path.join(src, sub, name)):
            shutil.copyfile(os.path.join(src, sub, name), os.path.join(dest, name))
    for name in sorted(os.listdir(src)):
        res_path = os.path.join(src, name, "results.json")
        if os.path.isfile(res_path):
            with open(res_path, encoding="utf-8") as f:
                res = json.load(f)
            write_json(os.path.join(dest, f"{name}.json"), slim(res))
            if res.get("primary_comparison"):
                write_examples(os.path.join(dest, f"{name}-examples.json"), res)
            svg = os.path.join(src, name, f"{res.get('primary')}.svg")
            if os.path.isfile(svg):
                shutil.copyfile(svg, os.path.join(dest, f"{name}.svg"))
        elif name.startswith("bench-") and name.endswith(".json"):
            shutil.copyfile(os.path.join(src, name), os.path.join(dest, name))
    for folder in ("curves", "curves-more"):
        copy_curves(src, dest, folder)
    runs = run_settings(src)
    if runs:
        write_json(os.path.join(dest, "runs.json"), runs)
    write_json(os.path.join(dest, "times.json"), stage_seconds(src))
    return sorted(os.listdir(dest))


def experiments(exp_root):
    """[(source folder, results name)]: every folder with a setup.json, EXP or EXP/VARIANT."""
    found = []
    for name in sorted(os.listdir(exp_root)):
        path = os.path.join(exp_root, name)
        if os.path.isfile(os.path.join(path, "setup.json")):
            found.append((path, name))
        elif os.path.isdir(path):
            found += [(os.path.join(path, v), f"{name}-{v}") for v in sorted(os.listdir(path))
                      if os.path.isfile(os.path.join(path, v, "setup.json"))]
    return found


def collect(exp_root, results):
    """Collect every experiment under exp_root into results/."""
    if not os.path.isdir(exp_root):
        raise CollectError(f"{exp_root}: no such folder (run an experiment script first)")
    found = experiments(exp_root)
    if not found:
        raise CollectError(f"{exp_root}: no experiment folder with a setup.json in it")
    for src, name in found:
        files = collect_experiment(src, os.path.join(results, name))
        print(f"collected {src} -> {os.path.join(results, name)}: {len(files)} files")
