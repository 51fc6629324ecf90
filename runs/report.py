"""
Turn experiment outputs into the project's results pages, so that no figure is typed by hand.

    python runs/report.py --collect exp   # copy exp/*/ (slimmed) into results/*/, then render
    python runs/report.py                 # render results/README.md and README.md's verdict block
    python runs/report.py --results R --template T --readme README.md   # other paths (the tests)

--collect DIR: runs/collect.py says what it copies. Rendering then reads only results/ and the
template, never exp/: the committed pages can be rebuilt (and checked for staleness) on a machine
that never ran an experiment.

The template (runs/report.md) is markdown with placeholders {{NAME ARGS}}; its prose holds no
number of its own (a test checks it), and no sentence that states a direction, a comparison, a
trend or a share: those are placeholders, written from the numbers. EXP is a folder of results/
(grammar), EXP/SCORE a collected score file (grammar/score-test), RATE a shift rate as in the
file ("0", "0.01"), RUN a trained run (ce-ft@1, more/ce-ft@1). Numbers have 3 decimals unless
said; a missing value shows as n/a (and a warning names it); an unknown placeholder or a missing
file stops with an error.
Every interval is the 95% two-level bootstrap over training seeds and prompts (stats.py).
A METRIC is a per-prompt metric of the score or a measure of the whole output (the file's
"whole": length_tv, coverage, distinct_valid), whose seeds are in "whole_by_seed".
    {{value EXP/SCORE ARM RATE METRIC}}     the arm's mean over its seeds, 0.812
    {{valuesd EXP/SCORE ARM RATE METRIC}}   the same, " ± SD" of the seeds added if it has several
    {{ref EXP/SCORE METRIC}}                the true responses' value
    {{shift EXP/SCORE ARM RATE}}            the fraction of tokens the probe really moved (4 dec.)
    {{ci EXP/SCORE FAMILY ARM RATE METRIC}} an interval, +0.012 [-0.030, +0.050]; FAMILY:
                                            robustness, differences, diff_in_diff or retained
    {{kept EXP/SCORE ARM RATE METRIC}}      the share of its shift-0 score an arm keeps, 94%
    {{table EXP/SCORE METRIC}}              arms x rates, "mean ± sd (n seeds)", the true
                                            responses, the baseline's realised shift (4 decimals)
    {{settings EXP/SCORE METRIC [RATE]}}    for names ARM:SETTING (val-score): base arms x settings,
                                            "mean ± sd" at RATE (default 0); METRIC "primary":
                                            the file's own
    {{whole EXP/SCORE RATE... KEY...}}      the whole output against the data: the true
                                            responses, then each arm at each RATE, the mean over
                                            seeds of each KEY (a METRIC)
    {{diffs EXP/SCORE METRIC RATE...}}      arm - baseline intervals at those rates, then (bold
                                            title) the difference in degradation at the nonzero ones
    {{curves EXP KEY [FILE]}}               arms (ARM@SEED pooled) x steps: mean over seeds, 4 dec.,
                                            of FILE.json (default: curves; curves-more)
    {{lengths EXP}}                         P(end) after a first sentence of L bytes: the data's
                                            and each arm's P(EOS) (seeds pooled), per L
    {{setup EXP}}                           commit, threads, torch, Python, machine, device, dtype
    {{time EXP}}, {{time EXP GLOB}}         wall time of all stages / of those matching the glob
                                            (fnmatch: "ce-ft@*"), "73 min" (seconds under 1 min)
    {{count EXP KEY}}                       a value of task.json (n_test) or setup.json (seq_len)
    {{arg EXP RUN KEY}}                     a training setting of a run (steps, lr, batch_size)
    {{params EXP RUN}}                      the run's model: "0.83M parameters (4 layers of 128)"
    {{choice EXP}}                          the decoder chosen on validation prompts, in words
    {{chosenby EXP}}                        the rule that chose it (choice.json), in words
    {{arms EXP [SCORE]}}                    "three arms: `ce-ft`, ...": the file's fine-tunes
    {{armdefs [SPECS]}}                     each arm that the files hold, defined (words.ARM_DEFS),
                                            and which task trains which where they differ
    {{standardised EXP/SCORE}}              the standardised metric in words, from the file's note
    {{note EXP/SCORE PREFIX}}               the file's note that begins with PREFIX
    {{json FILE KEY[.KEY...] [DIGITS]}}     a number from results/FILE by its dotted path
    {{summary RATE...}}                     the first screen: per results/EXP with score-test.json,
                                            its primary metric's means (arms x shift 0 and the
                                            RATEs), each slack arm marked by its interval against
                                            the baseline (stats.direction), † the primary one
    {{verdict RATE...}}                     the same with each Δ, its interval and *keeps*
    {{primary EXP [SCORE]}}                 the pre-declared primary comparison and its reading
    {{ncomp EXP RATE...}}                   the number of comparisons the verdict makes for EXP
    {{converge EXP RATE}}                   each arm before and after its continuation, and the
                                            convergence check ({{convrule}}: the rule in words)
  Sentences, each built from the numbers by runs/words.py (SPECS: a glob over EXP/SCORE, e.g.
  */score-test or study-*/score; METRIC "primary": each file's own):
    {{primaries [SPECS]}}                   what each pre-declared primary comparison favours
    {{standing SPECS METRIC RATE...}}       each slack arm ahead, level or behind the baseline
    {{degraded SPECS METRIC RATE...}}       the same for the difference in degradation
    {{ahead SPECS RATE...}}                 every comparison, over every metric with a better
                                            direction, where a slack arm is ahead, and their count
    {{converged [EXP-GLOB]}}                which arms met the convergence check, on which tasks
    {{continued EXP RATE}}                  what the continuation did to each arm's means
    {{declared [SPECS]}}                    whether the primary comparison was declared before the
                                            test prompts were first decoded (setup.json's
                                            primary_declared_before_test, test_prompts_earlier_use)
    {{lengthvs EXP/SCORE METRIC RATE}}      each arm's mean length against the true responses'
    {{wholevs SPECS RATE KEY...}}           each slack arm's whole output against the baseline's
                                            (KEY: length_tv, distinct_valid, sentences), and
                                            whether every seed agrees
    {{paired SPECS RATE...}}                whether the paired intervals (paired_lo, paired_hi)
                                            read as the published ones, the primary metric
    {{examples [EXP-GLOB/SCORE-GLOB]}}      which published scores have their per-prompt values
                                            committed (SCORE-examples.json), from which
                                            stats.recompute redoes their intervals
    {{study RATE...}}                       the study's variants: what each changes, and each
                                            slack arm against CE on it
    {{bench EXP KIND}}                      a benchmark's table (KIND: ctc, train or cache)
The lines between <!-- readme:start --> and <!-- readme:end --> are left out of
results/README.md; rendered, they replace the lines between <!-- verdict:start --> and
<!-- verdict:end --> of the top-level README.md (a README without those markers is left alone).
The lines between <!-- if EXP --> and <!-- end if --> are shown only once results/EXP has been
collected; an optional <!-- else --> part is shown until then.
"""

import argparse
import fnmatch
import json
import os
import re
import sys

# the tables are the scorer's own; words.py puts the project root on the path, and holds the
# verdict and every sentence that states a direction (the statistics' reading rule, stats.py)
import words  # noqa: E402
from collect import CollectError, collect  # noqa: E402
from tables import arm_of, num, table  # noqa: E402
from words import ReportError, interval, mean_sd, measure, percent, rate_label  # noqa: E402
from words import verdict_arms, verdict_cell  # noqa: E402

VERDICT = ("<!-- verdict:start -->", "<!-- verdict:end -->")
README_PART = ("<!-- readme:start -->", "<!-- readme:end -->")
PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
# a section for an experiment that may not have been collected yet: the lines between
# "<!-- if EXP -->" and "<!-- else -->" (or "<!-- end if -->") when results/EXP/setup.json
# exists, else those between "<!-- else -->" and "<!-- end if -->"
SECTION = re.compile(r"<!-- if (\S+) -->\n(.*?)(?:<!-- else -->\n(.*?))?<!-- end if -->\n", re.S)
GENERATED = ("<!-- generated by python runs/report.py from runs/report.md and the files of "
             "results/: edit those, not this page -->\n\n")


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def write_text(path, text):
    # "\n" everywhere: the pages must come out byte-identical on every platform
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


FAMILIES = ("robustness", "differences", "diff_in_diff", "retained")


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
            raise ReportError(f"{spec!r}: expected EXP/SCORE, e.g. grammar/score-test")
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
        if family not in FAMILIES:
            raise ReportError(f"{where}: FAMILY must be one of {', '.join(FAMILIES)}, not "
                              f"{family!r}")
        r = self.rate(res, rate, where)
        for e in res.get(family, []):
            if (e["name"], e["rate"], e["metric"]) == (name, r, metric):
                return e
        self.warn(f"{where}: {family} has no entry for {name} at rate {rate}, {metric}")
        return None

    def experiments(self):
        """The experiments with a verdict: those with a score of the test prompts."""
        return [n for n in sorted(os.listdir(self.root))
                if os.path.isfile(os.path.join(self.root, n, "score-test.json"))]

    def variants(self):
        """The study's variants, the base first."""
        names = [n for n in sorted(os.listdir(self.root)) if n.startswith("study-")]
        return sorted(names, key=lambda n: n != "study-base")


# ----------------------------------------------------------------------------------------------
# The placeholders: each takes the Results and its arguments, returns markdown.


def p_valuesd(rs, spec, arm, rate, metric):
    return p_value(rs, spec, arm, rate, metric, sd=True)


def p_value(rs, spec, arm, rate, metric, sd=False):
    res = rs.score(spec)
    cell = rs.cell(res, arm, rate, spec)
    if cell is not None and measure(cell, metric)[0] is None:
        rs.warn(f"{spec}: no metric {metric!r}")
    return mean_sd(cell, metric) if sd else num(measure(cell, metric)[0])


def p_shift(rs, spec, arm, rate):
    cell = rs.cell(rs.score(spec), arm, rate, spec)
    return num(cell and cell.get("realised_shift"), 4)


def reference(res):
    """The true responses' values: their per-prompt metrics and their whole-output measures."""
    ref = res.get("reference") or {}
    return {**ref.get("summary", {}), **(ref.get("whole") or {})}


def p_ref(rs, spec, metric):
    return num(reference(rs.score(spec)).get(metric))


def p_ci(rs, spec, family, arm, rate, metric):
    return interval(rs.entry(rs.score(spec), family, arm, rate, metric, spec))


def p_table(rs, spec, metric):
    res = rs.score(spec)
    arms, rates, base = res["arms"], res["rates"], res["baseline"]
    rows = [[arm] + [mean_sd(arms[arm].get(r), metric, with_n=True) for r in rates]
            for arm in arms]
    ref = reference(res)
    if metric in ref:
        rows.append(["true responses"] + [num(ref[metric])] * len(rates))
    # the probe's nominal rate is not what it does: a vacated slot refilled is a commit too
    rows.append([f"realised shift ({base})"]
                + [num(arms.get(base, {}).get(r, {}).get("realised_shift"), 4) for r in rates])
    return table([f"{metric} \\ rate"] + [rate_label(r) for r in rates], rows)


def p_settings(rs, spec, metric, rate="0"):
    res = rs.score(spec)
    metric = res["primary"] if metric == "primary" else metric
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
    """arm - baseline at the rates, then the difference in degradation at the nonzero ones, the
    primary comparison marked; a line says how many comparisons the two tables make."""
    if not rates:
        raise ReportError(f"{spec}: {{{{diffs}}}} needs at least one RATE")
    res = rs.score(spec)
    base = res["baseline"]
    others = [a for a in res["arms"] if a != base]
    nonzero = [r for r in rates if float(r) != 0]
    p = res.get("primary_comparison") or {}

    def cell(family, a, r):
        e = rs.entry(res, family, a, r, metric, spec)
        primary = (family, metric, a, r) == ("differences", res["primary"], p.get("arm"),
                                             rs.rate(res, p.get("rate", "0"), spec))
        return interval(e) + (" †" if primary else "")

    def grid(family, cols):
        rows = [[f"{a} - {base}"] + [cell(family, a, r) for r in cols] for a in others]
        return table([metric] + [rate_label(r) for r in cols], rows)
    out = grid("differences", rates)
    if nonzero:
        # (arm_r - arm_0) - (base_r - base_0): each arm's own quality at 0 cancels prompt by prompt
        out += "\n\n**difference in degradation**\n\n" + grid("diff_in_diff", nonzero)
    n = len(others) * (len(rates) + len(nonzero))
    shown = bool(p) and metric == res["primary"] and p["arm"] in others and any(
        float(r) == float(p["rate"]) for r in rates)
    return out + f"\n\n({n} comparisons, exploratory{', but the primary one, †' * shown})"


# the whole-output table's columns as its header names them
WHOLE_NAMES = {"length": "mean length", "sentence_words": "words per sentence",
               "word_bytes": "bytes per word", "distinct_valid": "distinct valid"}


def p_whole(rs, spec, *args):
    """The whole output against the data's: the true responses' row, then each arm at each RATE
    (the arguments that are numbers), the mean over seeds of each KEY (the others: a metric or
    a whole-output measure, as {{table}} reads them)."""
    rates = [a for a in args if re.fullmatch(r"[0-9.]+", a)]
    keys = [a for a in args if a not in rates]
    if not rates or not keys:
        raise ReportError(f"{spec}: {{{{whole}}}} needs at least one RATE and one KEY")
    res = rs.score(spec)
    ref = reference(res)
    rows = [["the data", ""] + [num(ref.get(k)) for k in keys]]
    for rate in rates:
        for arm in res["arms"]:
            cell = rs.cell(res, arm, rate, spec)
            if cell is not None:
                for k in keys:
                    if measure(cell, k)[0] is None:
                        rs.warn(f"{spec}: no {k!r} for {arm} at {rate}")
            rows.append([arm, rate_label(rate)] + [num(measure(cell, k)[0]) for k in keys])
    return table(["", "rate"] + [WHOLE_NAMES.get(k, k) for k in keys], rows)


def p_curves(rs, exp, key, name="curves"):
    curves = rs.load(f"{exp}/{name}.json")["curves"]
    if key not in curves:
        raise ReportError(f"{exp}/{name}.json: no key {key!r} (the keys are "
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
    first = s.get("first_commit", s.get("commit"))
    commit = s.get("commit") + (f" (its first run: commit {first})" if first != s.get("commit")
                                else "")
    return (f"commit {commit}, {threads} thread{'s' * (threads != 1)} per process, "
            f"{jobs} job{'s' * (jobs != 1)} at once, "
            f"torch {s.get('torch')}, Python {s.get('python')}, {s.get('machine')}"
            + (f" ({s['cpu']}, {s['cores']} cores)" if s.get("cpu") else "")
            + f", device {device}, dtype {s.get('dtype')}")


def p_time(rs, exp, pattern="*"):
    times = rs.load(f"{exp}/times.json")
    picked = [t for stage, t in times.items() if fnmatch.fnmatchcase(stage, pattern)]
    if not picked:
        rs.warn(f"{exp}/times.json: no stage matches {pattern!r}")
        return "n/a"
    total = sum(picked)
    return f"{total} s" if total < 60 else f"{int(total / 60 + 0.5)} min"


def p_count(rs, exp, key):
    """A value of task.json or setup.json, as written (a float in its shortest form)."""
    task = {**rs.load(f"{exp}/setup.json"), **rs.load(f"{exp}/task.json")}
    if key not in task:
        rs.warn(f"{exp}/task.json or setup.json: no key {key!r}")
    value = task.get(key)
    return f"{value:g}" if isinstance(value, float) else "n/a" if value is None else str(value)


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


def p_confidence(rs):
    """The level of every interval on the pages (stats.py's percentiles)."""
    return "95%"


def p_kept(rs, spec, arm, rate, metric):
    e = rs.entry(rs.score(spec), "retained", arm, rate, metric, spec)
    if e is None:
        return "n/a"
    return f"{percent(e['mean_diff'])} [{percent(e['lo'])}, {percent(e['hi'])}]"


def p_arg(rs, exp, run, key):
    runs = rs.load(f"{exp}/runs.json")
    if run not in runs or key not in runs[run]:
        rs.warn(f"{exp}/runs.json: no {key!r} for {run!r}")
        return "n/a"
    value = runs[run][key]
    return f"{value:g}" if isinstance(value, float) else str(value)


def p_params(rs, exp, run):
    r = rs.load(f"{exp}/runs.json").get(run)
    if r is None:
        rs.warn(f"{exp}/runs.json: no run {run!r}")
        return "n/a"
    return f"{r['params'] / 1e6:.2f}M parameters ({r['n_layer']} layers of width {r['n_embd']})"


def p_choice(rs, exp):
    c = rs.load(f"{exp}/choice.json")
    rule, per_step, block = c["setting"].split("/")
    blocks = "one block" if block == "all" else f"blocks of {block}"
    return (f"the `{rule}` slack rule, {per_step} position{'s' * (per_step != '1')} per step, "
            f"{blocks}")


# ----------------------------------------------------------------------------------------------
# The study and the benchmarks.


def variant_properties(rs, exp):
    """[what it generates, response bytes, canvas, the EOS padding's share of the canvas]."""
    task, setup = rs.load(f"{exp}/task.json"), rs.load(f"{exp}/setup.json")
    T, rate = setup["seq_len"], setup["slack_rate"]
    R = T - task["prompt_bytes_mean"]  # the response canvas
    U = R - round(rate * R)  # its targets: the response, its EOS, EOS padding
    padding = (U - task["response_bytes_mean"] - 1) / R
    prompt = "nothing" if task["prompt_bytes_mean"] == 0 else "the first word"
    return [prompt, f"{task['response_bytes_mean']:.0f} ± {task['response_bytes_sd']:.0f}",
            str(T), percent(padding)]


def gate_text(rs, exp):
    """The variant's pretrained model against the competence gate (study.sh), in words."""
    if not os.path.isfile(os.path.join(rs.root, exp, "gate.json")):
        return "the base" if exp == "study-base" else "n/a"
    g = rs.load(f"{exp}/gate.json")
    steps = "twice the steps" if g["checkpoint"] == "pretrain-2" else "the base's steps"
    return (f"{num(g['parses_std'])} against {num(g['base'])}: "
            + (f"passed, after {steps}" if g["passed"] else "short of it after twice the steps"))


def p_study(rs, *rates):
    """The study's variants: what each generates, its pretrained model against the competence
    gate, then each slack arm against the baseline on every variant with test scores, and the
    reading in words; a sentence saying so where no variant has been collected."""
    names = [n for n in rs.variants() if os.path.isfile(os.path.join(rs.root, n, "setup.json"))
             and n != "study-base"]
    if not names:
        return ("No variant of the study has been collected yet: `bash runs/study.sh` runs them "
                "(after `bash runs/grammar.sh`), `python runs/report.py --collect exp` brings "
                "them here.")
    names = ["study-base"] * os.path.isfile(os.path.join(rs.root, "study-base",
                                                         "score.json")) + names
    props = [[f"`{n[len('study-'):]}`", *variant_properties(rs, n), gate_text(rs, n)]
             for n in names]
    out = [table(["variant", "prompt", "response bytes", "canvas", "EOS padding",
                  "pretrained parses_std on validation (gate)"], props)]
    scored = [n for n in names if os.path.isfile(os.path.join(rs.root, n, "score.json"))]
    if not scored:
        return out[0]
    res0 = rs.score(f"{scored[0]}/score")
    for arm in verdict_arms(res0):
        rows = []
        for n in scored:
            res, spec = rs.score(f"{n}/score"), f"{n}/score"
            base = mean_sd(res["arms"][res["baseline"]].get("0"), res["primary"])
            rows.append([f"`{n[len('study-'):]}`", base]
                        + [verdict_cell(rs, res, spec, arm, r) if rs.rate(res, r, spec)
                           else "n/a" for r in ["0", *rates]])
        out.append(f"`{arm}` against `{res0['baseline']}`, {res0['primary']}:\n\n" + table(
            ["variant", f"`{res0['baseline']}`, shift 0", "shift 0"] + [rate_label(r)
                                                                         for r in rates], rows))
    out.append("What the variants say (exploratory: one property changed at a time, intervals "
               "unadjusted): " + words.p_standing(rs, "study-*/score", "primary", "0", *rates))
    return "\n\n".join(out)


# bench.py train's comparisons: what each ratio divides, and the two medians it divides
TRAIN_BENCH = {
    "mdlm-vs-ar": ("MDLM pretraining step ÷ AR step, time", "mdlm_step_s", "ar_step_s"),
    "encoder": ("`mdlm.Transformer` ÷ `nn.TransformerEncoder`, throughput", "ours_tok_s",
                "encoder_tok_s"),
    "ctc-vs-ce": ("slack-CTC fine-tune step ÷ CE step, time", "ctc_step_s", "ce_step_s"),
}


def median_text(key, value):
    """A bench.py median as the page shows it: throughputs (KEY_tok_s) in tokens per second,
    times (KEY_s, in seconds) in milliseconds."""
    return f"{value:,.0f} tokens/s" if key.endswith("tok_s") else f"{1000 * value:.1f} ms"


def p_bench(rs, exp, kind):
    b = rs.load(f"{exp}/bench-{kind}.json")
    where = f"{b.get('device')}, torch {b.get('torch')}, {b.get('threads')} threads"
    if kind == "ctc":
        rows = [[f"{r['B']} x {r['T']} x {r['V']}", percent(r["slack"]), r["collapse"],
                 "half" if r["visible"] else "none",
                 f"{num(r['time_ratio'], 2)} / {num(r['mem_ratio'], 2)}"] for r in b["rows"]]
        out = table(["B x T x V", "slack", "collapse", "visible",
                     "time / memory, ours ÷ F.ctc_loss"], rows)
        uneven = [[f"{r['B']} x {r['T']} x {r['V']}", ", ".join(map(str, r["target_lengths"])),
                   f"{num(r['time_ratio'], 2)} / {num(r['mem_ratio'], 2)}",
                   f"{num(r['even_time_ratio'], 2)} / {num(r['even_mem_ratio'], 2)}"]
                  for r in b.get("uneven", [])]
        if uneven:  # one short target among long ones: the band per group of similar rows
            out += ("\n\nUneven batches, surface collapse, no visible position (one short target "
                    "among long ones, the others at 10% slack):\n\n"
                    + table(["B x T x V", "target lengths", "time / memory, ours ÷ F.ctc_loss",
                             "time / memory, this batch ÷ an even one (ours)"], uneven))
        return out + f"\n\n({where})"
    if kind == "train":
        rows = []
        for name, r in b.items():
            if not (isinstance(r, dict) and "ratio" in r):
                continue
            what, a, z = TRAIN_BENCH.get(name, (name, None, None))
            if a in r and z in r:
                medians = f"{median_text(a, r[a])} ÷ {median_text(z, r[z])}"
            else:  # bench.py wrote a comparison this page does not know: its ratio alone
                rs.warn(f"{exp}/bench-train.json: {name} has no medians this page can name")
                medians = "n/a"
            rows.append([what, medians, num(r["ratio"], 2)])
        return table(["what is divided", "medians", "ratio"], rows) + f"\n\n({where})"
    same = "the same canvases" if b["identical"] else "DIFFERENT canvases (a bug)"
    return (f"{b['calls_uncached']} model calls without the cache, {b['calls_cached']} with it, "
            f"{same}: {num(b['ratio'], 2)} times as fast ({where})")


PLACEHOLDERS = {  # name: (function, least and most arguments, usage)
    "value": (p_value, 4, 4, "EXP/SCORE ARM RATE METRIC"),
    "valuesd": (p_valuesd, 4, 4, "EXP/SCORE ARM RATE METRIC"),
    "ref": (p_ref, 2, 2, "EXP/SCORE METRIC"),
    "shift": (p_shift, 3, 3, "EXP/SCORE ARM RATE"),
    "ci": (p_ci, 5, 5, "EXP/SCORE FAMILY ARM RATE METRIC"),
    "kept": (p_kept, 4, 4, "EXP/SCORE ARM RATE METRIC"),
    "table": (p_table, 2, 2, "EXP/SCORE METRIC"),
    "settings": (p_settings, 2, 3, "EXP/SCORE METRIC [RATE]"),
    "diffs": (p_diffs, 3, 99, "EXP/SCORE METRIC RATE..."),
    "whole": (p_whole, 2, 99, "EXP/SCORE RATE... KEY..."),
    "curves": (p_curves, 2, 3, "EXP KEY [FILE]"),
    "lengths": (p_lengths, 1, 1, "EXP"),
    "setup": (p_setup, 1, 1, "EXP"),
    "time": (p_time, 1, 2, "EXP [STAGE-GLOB]"),
    "count": (p_count, 2, 2, "EXP KEY"),
    "arg": (p_arg, 3, 3, "EXP RUN KEY"),
    "params": (p_params, 2, 2, "EXP RUN"),
    "choice": (p_choice, 1, 1, "EXP"),
    "json": (p_json, 2, 3, "FILE KEY[.KEY...] [DIGITS]"),
    "summary": (words.p_summary, 1, 9, "RATE..."),
    "verdict": (words.p_verdict, 1, 9, "RATE..."),
    "primary": (words.p_primary, 1, 2, "EXP [SCORE]"),
    "ncomp": (words.p_ncomp, 2, 9, "EXP RATE..."),
    "converge": (words.p_converge, 2, 2, "EXP RATE"),
    "convrule": (words.p_convrule, 0, 0, ""),
    "converged": (words.p_converged, 0, 1, "[EXP-GLOB]"),
    "continued": (words.p_continued, 2, 2, "EXP RATE"),
    "primaries": (words.p_primaries, 0, 1, "[SPECS]"),
    "standing": (words.p_standing, 3, 9, "SPECS METRIC RATE..."),
    "degraded": (words.p_degraded, 3, 9, "SPECS METRIC RATE..."),
    "ahead": (words.p_ahead, 2, 9, "SPECS RATE..."),
    "declared": (words.p_declared, 0, 1, "[SPECS]"),
    "lengthvs": (words.p_lengthvs, 3, 3, "EXP/SCORE METRIC RATE"),
    "wholevs": (words.p_wholevs, 3, 9, "SPECS RATE KEY..."),
    "arms": (words.p_arms, 1, 2, "EXP [SCORE]"),
    "armdefs": (words.p_armdefs, 0, 1, "[SPECS]"),
    "standardised": (words.p_standardised, 1, 1, "EXP/SCORE"),
    "note": (words.p_note, 2, 9, "EXP/SCORE PREFIX"),
    "chosenby": (words.p_chosenby, 1, 1, "EXP"),
    "paired": (words.p_paired, 2, 9, "SPECS RATE..."),
    "examples": (words.p_examples, 0, 1, "[EXP-GLOB/SCORE-GLOB]"),
    "study": (p_study, 1, 9, "RATE..."),
    "bench": (p_bench, 2, 2, "EXP KIND"),
    "confidence": (p_confidence, 0, 0, ""),
}


# ----------------------------------------------------------------------------------------------
# Rendering.


GONE = "\x01\n"  # a line left out by sections(), removed after rendering


def sections(text, rs):
    """text with each conditional section resolved (SECTION); a placeholder inside a section
    left out is never read, so it needs no file. Every line left out, the markers' too, becomes
    GONE, so that an error still names the template's line."""
    def keep(m):
        here = os.path.isfile(os.path.join(rs.root, m.group(1), "setup.json"))
        yes, no = m.group(2), m.group(3) or ""
        gone = GONE * (1 + (m.group(3) is not None) + (no if here else yes).count("\n"))
        return GONE + yes + gone if here else gone + no + GONE
    return SECTION.sub(keep, text)


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
    page = render(sections(text, rs), rs, template).replace(GONE, "")
    page, part = split_readme_part(page, template)
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
                        "e.g. exp/grammar, or a variant exp/study/long) into RESULTS/NAME/, "
                        "slimmed (runs/collect.py); RESULTS/NAME/ is replaced. Without it, only "
                        "render from RESULTS")
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
    except (ReportError, CollectError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
