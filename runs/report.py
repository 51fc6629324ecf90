"""
Turn experiment outputs into the project's results pages, so that no figure is typed by hand.

    python runs/report.py --collect exp   # copy exp/*/ (slimmed) into results/*/, then render
    python runs/report.py                 # render results/README.md and README.md's verdict block
    python runs/report.py --results R --template T --readme README.md   # other paths (the tests)

--collect DIR takes every folder under DIR that has a setup.json (written by runs/lib.sh) as one
experiment, e.g. exp/grammar, and replaces results/grammar/ with:
    SCORE.json         each SCORE/results.json (val-score, score-auto, ...), per_example and
                       prompt_indices dropped: the per-prompt values are most of the bytes, and
                       every interval that needs them is already in the file
    SCORE.svg          the plot of its primary metric;  curves.json, curves-KEY.svg: the curves
    lengths.json       evaluate.py lengths' output, where the experiment has one
    setup.json, task.json, times.json ({stage folder: seconds} from every DONE file)
Rendering then reads only results/ and the template, never exp/: the committed pages can be
rebuilt (and checked for staleness) on a machine that never ran an experiment.

The template (runs/report.md) is markdown with placeholders {{NAME ARGS}}. EXP is a folder of
results/ (grammar), EXP/SCORE a collected score file (grammar/score-auto), RATE a shift rate as
in the file ("0", "0.01"). Numbers have 3 decimals unless said; a missing value shows as n/a (and
a warning names it); an unknown placeholder or a missing file stops with an error.
    {{value EXP/SCORE ARM RATE METRIC}}     the arm's mean over its seeds, 0.812
    {{valuesd EXP/SCORE ARM RATE METRIC}}   the same, " ± SD" of the seeds added if it has several
    {{ref EXP/SCORE METRIC}}                the true responses' value
    {{shift EXP/SCORE ARM RATE}}            the fraction of tokens the probe really moved (4 dec.)
    {{ci EXP/SCORE FAMILY ARM RATE METRIC}} a 95% paired bootstrap interval, +0.012 [-0.030, +0.050]
                                            FAMILY: robustness, differences or diff_in_diff
    {{table EXP/SCORE METRIC}}              arms x rates, "mean ± sd (n seeds)", the true
                                            responses, the baseline's realised shift (4 decimals)
    {{settings EXP/SCORE METRIC [RATE]}}    for names ARM:SETTING (val-score): base arms x settings,
                                            "mean ± sd" at RATE (default 0)
    {{diffs EXP/SCORE METRIC RATE...}}      arm - baseline intervals at those rates, then (bold
                                            title) the difference in degradation at the nonzero ones
    {{curves EXP KEY}}                      arms (ARM@SEED pooled) x steps: mean over seeds, 4 dec.
    {{lengths EXP}}                         P(end) after a first sentence of L bytes: the data's
                                            and each arm's P(EOS) (seeds pooled), per L
    {{setup EXP}}                           commit, threads, torch, Python, machine, device, dtype
    {{time EXP}}, {{time EXP GLOB}}         wall time of all stages / of those matching the glob
                                            (fnmatch: "ce-ft@*"), "73 min" (seconds under 1 min)
    {{count EXP KEY}}                       a value of task.json (n_test)
    {{json FILE KEY[.KEY...] [DIGITS]}}     a number from results/FILE (a benchmark's --json
                                            output, say), by its dotted path; 2 decimals
    {{verdict}}                             per results/EXP with score-auto.json, one row per
                                            arm but the baseline (CE fine-tune) and
                                            "pretrained", best mean of the primary metric at
                                            shift 0 first: its difference from the baseline at 0
                                            and in degradation at the highest rate, and a
                                            reading of the intervals:
        "CTC better" / "CE better" / "no difference" at shift 0 when the interval of arm - CE lies
        above 0 / below 0 / holds 0, and "degrades less" / "degrades more" / "same" likewise for
        the difference in degradation; for cer, dropped_doubled and judge_nll (lower is better)
        above and below swap.
The lines between <!-- readme:start --> and <!-- readme:end --> are left out of
results/README.md; rendered, they replace the lines between <!-- verdict:start --> and
<!-- verdict:end --> of the top-level README.md (a README without those markers is left alone).
"""

import argparse
import fnmatch
import json
import math
import os
import re
import shutil
import sys

# the tables, the statistics' reading rule and each metric's direction are the scorer's own
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tasks  # noqa: E402  (the project root is on the path only from here on)
from stats import direction  # noqa: E402
from tables import arm_of, num, table  # noqa: E402

LOWER_IS_BETTER = {m for m, why in tasks.BETTER.items() if why == tasks.LOWER}
BULKY = ("per_example", "prompt_indices")
VERDICT = ("<!-- verdict:start -->", "<!-- verdict:end -->")
README_PART = ("<!-- readme:start -->", "<!-- readme:end -->")
PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
GENERATED = ("<!-- generated by python runs/report.py from runs/report.md and the files of "
             "results/: edit those, not this page -->\n\n")


class ReportError(Exception):
    """A missing input or a bad template: reported as one error: line, exit status 1."""


# ----------------------------------------------------------------------------------------------
# --collect: experiment folders -> results/EXP/


def slim(x):
    """x without the BULKY keys at any depth."""
    if isinstance(x, dict):
        return {k: slim(v) for k, v in x.items() if k not in BULKY}
    if isinstance(x, list):
        return [slim(v) for v in x]
    return x


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_text(path, text):
    # "\n" everywhere: the pages must come out byte-identical on every platform
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def stage_seconds(src):
    """{stage folder: seconds} from every SRC/*/DONE (runs/lib.sh writes one integer there)."""
    times = {}
    for name in sorted(os.listdir(src)):
        done = os.path.join(src, name, "DONE")
        if os.path.isfile(done):
            text = read_text(done).strip()
            if not text.isdigit():
                raise ReportError(f"{done}: expected the stage's seconds, found {text!r}")
            times[name] = int(text)
    return times


def collect_experiment(src, dest):
    """Replace dest with the slim copy of the experiment folder src; returns the files written."""
    # dest is a generated folder: clearing it first drops files of score dirs that are gone
    if os.path.isdir(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    shutil.copyfile(os.path.join(src, "setup.json"), os.path.join(dest, "setup.json"))
    if os.path.isfile(os.path.join(src, "task", "task.json")):
        shutil.copyfile(os.path.join(src, "task", "task.json"), os.path.join(dest, "task.json"))
    for name in sorted(os.listdir(src)):
        res_path = os.path.join(src, name, "results.json")
        if not os.path.isfile(res_path):
            continue
        with open(res_path, encoding="utf-8") as f:
            res = json.load(f)
        write_json(os.path.join(dest, f"{name}.json"), slim(res))
        svg = os.path.join(src, name, f"{res.get('primary')}.svg")
        if os.path.isfile(svg):
            shutil.copyfile(svg, os.path.join(dest, f"{name}.svg"))
    curves = os.path.join(src, "curves")
    if os.path.isfile(os.path.join(curves, "curves.json")):
        shutil.copyfile(os.path.join(curves, "curves.json"), os.path.join(dest, "curves.json"))
        for f in sorted(os.listdir(curves)):
            if f.endswith(".svg"):
                shutil.copyfile(os.path.join(curves, f), os.path.join(dest, f"curves-{f}"))
    lengths = os.path.join(src, "lengths", "lengths.json")
    if os.path.isfile(lengths):
        shutil.copyfile(lengths, os.path.join(dest, "lengths.json"))
    write_json(os.path.join(dest, "times.json"), stage_seconds(src))
    return sorted(os.listdir(dest))


def collect(exp_root, results):
    """Collect every experiment folder (one with setup.json) under exp_root into results/."""
    if not os.path.isdir(exp_root):
        raise ReportError(f"{exp_root}: no such folder (run an experiment script first)")
    names = [n for n in sorted(os.listdir(exp_root))
             if os.path.isfile(os.path.join(exp_root, n, "setup.json"))]
    if not names:
        raise ReportError(f"{exp_root}: no experiment folder with a setup.json in it")
    for name in names:
        files = collect_experiment(os.path.join(exp_root, name), os.path.join(results, name))
        print(f"collected {os.path.join(exp_root, name)} -> {os.path.join(results, name)}: "
              f"{len(files)} files")


# ----------------------------------------------------------------------------------------------
# Numbers as the pages show them.


def mean_sd(cell, metric, with_n=False):
    """"mean", or "mean ± sd" ("mean ± sd (n)" with_n) when the arm has several seeds."""
    if cell is None:
        return "n/a"
    text = num(cell["summary"].get(metric))
    n = len(cell.get("seeds", []))
    if n > 1:
        text += f" ± {num(cell['seed_sd'].get(metric))}" + (f" ({n})" if with_n else "")
    return text


def interval(entry):
    """+0.012 [-0.030, +0.050]: a comparison entry's mean difference and 95% interval."""
    if entry is None:
        return "n/a"
    return (f"{num(entry['mean_diff'], sign=True)} "
            f"[{num(entry['lo'], sign=True)}, {num(entry['hi'], sign=True)}]")


def rate_label(rate):
    """A column title: "shift 0", "1%", "0.5%"."""
    r = float(rate)
    return "shift 0" if r == 0 else f"{r * 100:g}%"


# ----------------------------------------------------------------------------------------------
# The collected files, read once each; lookups that find nothing warn and give None (n/a).


class Results:
    def __init__(self, root):
        self.root, self.cache, self.warnings = root, {}, []

    def load(self, rel):
        """results/REL parsed; a missing file is an error (a typo, or nothing collected yet)."""
        if rel not in self.cache:
            path = os.path.join(self.root, rel)
            if not os.path.isfile(path):
                raise ReportError(f"{path}: no such file (collect it with "
                                  f"python runs/report.py --collect exp)")
            with open(path, encoding="utf-8") as f:
                self.cache[rel] = json.load(f)
        return self.cache[rel]

    def score(self, spec):
        if spec.count("/") != 1:
            raise ReportError(f"{spec!r}: expected EXP/SCORE, e.g. grammar/score-auto")
        return self.load(spec + ".json")

    def warn(self, what):
        if what not in self.warnings:
            self.warnings.append(what)

    def rate(self, res, rate, where):
        """The file's spelling of RATE ("0.10" finds "0.1"), or None with a warning."""
        for r in res["rates"]:
            if r == rate or float(r) == float(rate):
                return r
        self.warn(f"{where}: no rate {rate} (the rates are {', '.join(res['rates'])})")
        return None

    def cell(self, res, arm, rate, where):
        """res["arms"][arm][rate] ({summary, seed_sd, seeds, ...}), or None with a warning."""
        if arm not in res["arms"]:
            self.warn(f"{where}: no arm {arm!r} (the arms are {', '.join(res['arms'])})")
            return None
        r = self.rate(res, rate, where)
        return None if r is None else res["arms"][arm].get(r)

    def entry(self, res, family, name, rate, metric, where):
        """The comparison entry of family for (name, rate, metric), or None with a warning."""
        if family not in ("robustness", "differences", "diff_in_diff"):
            raise ReportError(f"{where}: FAMILY must be robustness, differences or "
                              f"diff_in_diff, not {family!r}")
        r = self.rate(res, rate, where)
        for e in res.get(family, []):
            if (e["name"], e["rate"], e["metric"]) == (name, r, metric):
                return e
        self.warn(f"{where}: {family} has no entry for {name} at rate {rate}, {metric}")
        return None

    def experiments(self):
        return [n for n in sorted(os.listdir(self.root))
                if os.path.isfile(os.path.join(self.root, n, "score-auto.json"))]


# ----------------------------------------------------------------------------------------------
# The placeholders: each takes the Results and its arguments, returns markdown.


def p_value(rs, spec, arm, rate, metric, sd=False):
    res = rs.score(spec)
    cell = rs.cell(res, arm, rate, spec)
    if cell is not None and metric not in cell["summary"]:
        rs.warn(f"{spec}: no metric {metric!r}")
    return mean_sd(cell, metric) if sd else num(cell and cell["summary"].get(metric))


def p_shift(rs, spec, arm, rate):
    cell = rs.cell(rs.score(spec), arm, rate, spec)
    return num(cell and cell.get("realised_shift"), 4)


def p_ref(rs, spec, metric):
    ref = rs.score(spec).get("reference") or {}
    return num(ref.get("summary", {}).get(metric))


def p_ci(rs, spec, family, arm, rate, metric):
    return interval(rs.entry(rs.score(spec), family, arm, rate, metric, spec))


def p_table(rs, spec, metric):
    res = rs.score(spec)
    arms, rates, base = res["arms"], res["rates"], res["baseline"]
    rows = [[arm] + [mean_sd(arms[arm].get(r), metric, with_n=True) for r in rates]
            for arm in arms]
    ref = (res.get("reference") or {}).get("summary", {})
    if metric in ref:
        rows.append(["true responses"] + [num(ref[metric])] * len(rates))
    # the probe's nominal rate is not what it does: a vacated slot refilled is a commit too
    rows.append([f"realised shift ({base})"]
                + [num(arms.get(base, {}).get(r, {}).get("realised_shift"), 4) for r in rates])
    return table([f"{metric} \\ rate"] + [rate_label(r) for r in rates], rows)


def p_settings(rs, spec, metric, rate="0"):
    res = rs.score(spec)
    grid = {}  # {base arm: {setting: cell}}, both in order of first appearance
    for name, by_rate in res["arms"].items():
        if ":" not in name:
            raise ReportError(f"{spec}: arm {name!r} carries no setting (ARM:SETTING), so "
                              f"{{{{settings}}}} has nothing to lay out")
        base, setting = name.split(":", 1)
        grid.setdefault(base, {})[setting] = by_rate.get(rs.rate(res, rate, spec))
    settings = list(dict.fromkeys(s for row in grid.values() for s in row))
    rows = [[base] + [mean_sd(row.get(s), metric) for s in settings] for base, row in grid.items()]
    return table([f"{metric} \\ setting"] + settings, rows)


def p_diffs(rs, spec, metric, *rates):
    if not rates:
        raise ReportError(f"{spec}: {{{{diffs}}}} needs at least one RATE")
    res = rs.score(spec)
    base = res["baseline"]
    others = [a for a in res["arms"] if a != base]
    nonzero = [r for r in rates if float(r) != 0]

    def grid(family, cols):
        rows = [[f"{a} - {base}"] + [interval(rs.entry(res, family, a, r, metric, spec))
                                     for r in cols] for a in others]
        return table([metric] + [rate_label(r) for r in cols], rows)
    out = grid("differences", rates)
    if nonzero:
        # (arm_r - arm_0) - (base_r - base_0): each arm's own quality at 0 cancels prompt by prompt
        out += "\n\n**difference in degradation**\n\n" + grid("diff_in_diff", nonzero)
    return out


def p_curves(rs, exp, key):
    curves = rs.load(f"{exp}/curves.json")["curves"]
    if key not in curves:
        raise ReportError(f"{exp}/curves.json: no key {key!r} (the keys are "
                          f"{', '.join(curves)})")
    pooled = {}  # {arm: {step: [value per seed]}}
    for run, points in curves[key].items():
        for step, value in points:
            if value is not None:
                pooled.setdefault(arm_of(run), {}).setdefault(step, []).append(value)
    steps = sorted({s for by_step in pooled.values() for s in by_step})
    rows = [[arm] + [num(sum(v) / len(v), 4) if (v := by_step.get(s)) else "n/a" for s in steps]
            for arm, by_step in pooled.items()]
    return table([f"{key} \\ step"] + [str(s) for s in steps], rows)


def p_lengths(rs, exp):
    doc = rs.load(f"{exp}/lengths.json")
    pooled = {}  # {arm: [{L: [texts, data, model]} per seed]}
    for run, by_length in doc["curves"].items():
        pooled.setdefault(arm_of(run), []).append(by_length)
    first = next(iter(doc["curves"].values()))
    lengths = [L for L, (n, _, _) in first.items() if n >= doc.get("min_count", 1)]
    rows = [[L, first[L][0], num(first[L][1])]
            + [num(sum(c[L][2] for c in cs) / len(cs)) for cs in pooled.values()]
            for L in sorted(lengths, key=int)]
    return table(["L", "texts", "data"] + list(pooled), rows)


def p_setup(rs, exp):
    s = rs.load(f"{exp}/setup.json")
    threads = s.get("threads")
    device = s.get("device") + (f" ({s['cuda']})" if s.get("cuda") else "")
    jobs = s.get("jobs", 1)  # fine-tunes trained side by side (runs/lib.sh JOBS)
    return (f"commit {s.get('commit')}, {threads} thread{'s' * (threads != 1)} per process, "
            f"{jobs} job{'s' * (jobs != 1)} at once, "
            f"torch {s.get('torch')}, Python {s.get('python')}, {s.get('machine')}, "
            f"device {device}, dtype {s.get('dtype')}")


def p_time(rs, exp, pattern="*"):
    times = rs.load(f"{exp}/times.json")
    picked = [t for stage, t in times.items() if fnmatch.fnmatchcase(stage, pattern)]
    if not picked:
        rs.warn(f"{exp}/times.json: no stage matches {pattern!r}")
        return "n/a"
    total = sum(picked)
    return f"{total} s" if total < 60 else f"{int(total / 60 + 0.5)} min"


def p_count(rs, exp, key):
    task = rs.load(f"{exp}/task.json")
    if key not in task:
        rs.warn(f"{exp}/task.json: no key {key!r}")
    value = task.get(key)
    return num(value) if isinstance(value, float) else "n/a" if value is None else str(value)


def p_json(rs, rel, path, digits="2"):
    value = rs.load(rel)
    for key in path.split("."):
        if isinstance(value, list) and key.isdigit():
            value = value[int(key)] if int(key) < len(value) else None
        elif isinstance(value, dict):
            value = value.get(key)
        else:
            value = None
        if value is None:
            rs.warn(f"{rel}: no {path}")
            return "n/a"
    return num(value, int(digits)) if isinstance(value, (int, float)) else str(value)


# ----------------------------------------------------------------------------------------------
# The verdict: per experiment, the CE fine-tune against each other fine-tune, read by rule.


def reading(diff, did, lower_is_better):
    """The verdict's reading column: the difference at shift 0, then the one in degradation."""
    at0 = {1: "CTC better", -1: "CE better", 0: "no difference", None: "n/a"}
    probe = {1: "degrades less", -1: "degrades more", 0: "same", None: "n/a"}
    return (f"{at0[direction(diff, lower_is_better)]} at shift 0; "
            f"{probe[direction(did, lower_is_better)]} under the probe")


def verdict_rows(rs, exp):
    """One row per fine-tune of exp but the baseline and "pretrained", best mean at shift 0
    first; the task, metric and baseline cells only on the first row."""
    spec = f"{exp}/score-auto"
    res = rs.score(spec)
    metric, base, arms = res["primary"], res["baseline"], res["arms"]
    lower = metric in LOWER_IS_BETTER
    zero = rs.rate(res, "0", spec)
    means = {a: arms[a].get(zero, {}).get("summary", {}).get(metric) for a in arms
             if a not in (base, "pretrained")}
    means = {a: m for a, m in means.items() if isinstance(m, (int, float))}
    # a stable sort: arms of equal means keep their order in the file
    order = sorted(means, key=lambda a: means[a] if lower else -means[a])
    top = max(res["rates"], key=float)
    first = [exp, f"{metric} ({'lower' if lower else 'higher'} is better)",
             f"{base} {mean_sd(arms.get(base, {}).get(zero), metric)}"]
    rows = []
    for arm in order:
        diff = rs.entry(res, "differences", arm, zero, metric, spec)
        # a score file of one rate (no probe) has no degradation to compare
        did = rs.entry(res, "diff_in_diff", arm, top, metric, spec) if float(top) else None
        rows.append((first if not rows else ["", "", ""])
                    + [f"{arm} {mean_sd(arms[arm].get(zero), metric)}", interval(diff),
                       f"{interval(did)} at {rate_label(top)}", reading(diff, did, lower)])
    return rows or [first + ["n/a"] * 4]


def p_verdict(rs):
    exps = rs.experiments()
    if not exps:
        raise ReportError(f"{rs.root}: no EXP/score-auto.json for {{{{verdict}}}}")
    head = ["task", "metric", "CE fine-tune, shift 0", "slack fine-tune, shift 0",
            "difference at shift 0", "difference in degradation", "reading"]
    return table(head, [row for e in exps for row in verdict_rows(rs, e)])


PLACEHOLDERS = {  # name: (function, least and most arguments, usage)
    "value": (p_value, 4, 4, "EXP/SCORE ARM RATE METRIC"),
    "valuesd": (lambda rs, *a: p_value(rs, *a, sd=True), 4, 4, "EXP/SCORE ARM RATE METRIC"),
    "ref": (p_ref, 2, 2, "EXP/SCORE METRIC"),
    "shift": (p_shift, 3, 3, "EXP/SCORE ARM RATE"),
    "ci": (p_ci, 5, 5, "EXP/SCORE FAMILY ARM RATE METRIC"),
    "table": (p_table, 2, 2, "EXP/SCORE METRIC"),
    "settings": (p_settings, 2, 3, "EXP/SCORE METRIC [RATE]"),
    "diffs": (p_diffs, 3, 99, "EXP/SCORE METRIC RATE..."),
    "curves": (p_curves, 2, 2, "EXP KEY"),
    "lengths": (p_lengths, 1, 1, "EXP"),
    "setup": (p_setup, 1, 1, "EXP"),
    "time": (p_time, 1, 2, "EXP [STAGE-GLOB]"),
    "count": (p_count, 2, 2, "EXP KEY"),
    "json": (p_json, 2, 3, "FILE KEY[.KEY...] [DIGITS]"),
    "verdict": (p_verdict, 0, 0, ""),
}


# ----------------------------------------------------------------------------------------------
# Rendering.


def render(text, rs, source):
    """text with every placeholder filled; errors name source and the placeholder's line."""
    def fill(m):
        words = m.group(1).split()
        where = f"{source}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        if not words or words[0] not in PLACEHOLDERS:
            raise ReportError(f"{where}: unknown placeholder (known: {', '.join(PLACEHOLDERS)})")
        fn, least, most, usage = PLACEHOLDERS[words[0]]
        if not least <= len(words) - 1 <= most:
            raise ReportError(f"{where}: expected {{{{{words[0]} {usage}}}}}".replace(" }", "}"))
        try:
            return fn(rs, *words[1:])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            # a collected file of an unexpected shape: name the placeholder, not a traceback
            raise ReportError(f"{where}: cannot read it from the collected files ({e!r})")
    return PLACEHOLDER.sub(fill, text)


def split_readme_part(text, source):
    """(the page without the readme part, the readme part or None)."""
    start, end = README_PART
    if start not in text:
        return text, None
    i = text.index(start)
    j = text.find(end, i)
    if j < 0:
        raise ReportError(f"{source}: {start} without {end}")
    part = text[i + len(start):j].strip("\n")
    rest = text[:i] + text[j + len(end):].lstrip("\n")
    return rest, part


def replace_block(readme, block):
    """readme with the lines between the verdict markers replaced by block, or None if the
    markers are missing."""
    start, end = VERDICT
    i = readme.find(start)
    j = readme.find(end, i + len(start)) if i >= 0 else -1
    if j < 0:
        return None
    return readme[:i + len(start)] + "\n" + block + "\n" + readme[j:]


def run_render(results, template, readme):
    for path in (template, readme):
        if not os.path.isfile(path):
            raise ReportError(f"{path}: no such file")
    if not os.path.isdir(results):
        raise ReportError(f"{results}: no such folder (collect with --collect exp first)")
    rs = Results(results)
    text = read_text(template)
    # every placeholder is filled before anything is written: an error leaves no half-made page
    page, part = split_readme_part(render(text, rs, template), template)
    readme_text = read_text(readme)
    new_readme = replace_block(readme_text, part) if part is not None else None
    out = os.path.join(results, "README.md")
    write_text(out, GENERATED + page.rstrip("\n") + "\n")
    print(f"wrote {out}")
    if part is None:
        print(f"note: {template} has no {README_PART[0]} part; {readme} left unchanged")
    elif new_readme is None:
        print(f"note: {readme} has no {VERDICT[0]} ... {VERDICT[1]} block; left unchanged")
    elif new_readme != readme_text:
        write_text(readme, new_readme)
        print(f"updated the verdict block of {readme}")
    else:
        print(f"{readme}: the verdict block is up to date")
    for w in rs.warnings:
        print(f"warning: {w} (shown as n/a)", file=sys.stderr)


def build_parser():
    # the module docstring is the manual: the commands, the collected files, the template language
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collect", metavar="DIR",
                   help="first copy every experiment folder under DIR (one with a setup.json, "
                        "e.g. exp/grammar) into RESULTS/NAME/, slimmed: score files without "
                        "per-prompt values, the plots, curves, setup, task counts, stage times; "
                        "RESULTS/NAME/ is replaced. Without it, only render from RESULTS")
    p.add_argument("--results", default="results", metavar="DIR",
                   help="the collected results, read by rendering; RESULTS/README.md is "
                        "written (default: results)")
    p.add_argument("--template", default="runs/report.md", metavar="PATH",
                   help="the markdown template with {{...}} placeholders (default: "
                        "runs/report.md)")
    p.add_argument("--readme", default="README.md", metavar="PATH",
                   help="the README whose <!-- verdict:start --> ... <!-- verdict:end --> block "
                        "is replaced by the template's readme part (default: README.md)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.collect:
            collect(args.collect, args.results)
        run_render(args.results, args.template, args.readme)
    except (ReportError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
