"""
The verdict and the sentences of the results pages that state a direction, a comparison, a trend
or a share, each built from the result files, so that a number that changes changes its sentence
(the template's own prose states none: it names what is compared, these say how it came out).
runs/report.py registers the placeholders defined here (p_*); the phrase builders above them take
plain values and are tested alone (tests/test_report.py).

A reading is stats.direction's: +1 the interval says the slack arm is better (or degrades less),
-1 worse, 0 the interval holds or touches zero (no difference), None no interval.
"""

import fnmatch
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tasks  # noqa: E402  (the project root is on the path only from here on)
from stats import direction  # noqa: E402
from tables import arm_of, num, table  # noqa: E402

LOWER_IS_BETTER = {m for m, why in tasks.BETTER.items() if why == tasks.LOWER}
MARK = {1: " ▲", -1: " ▼", 0: "", None: ""}  # the slack arm better / CE better / no difference
# the convergence check: continuing a fine-tune at its peak learning rate may lower its own
# validation objective by less than this share of its value, and raise its validation primary
# metric (shift 0, the good direction) by less than this amount, for the arm to meet it
OBJECTIVE_MARGIN, PRIMARY_MARGIN = 0.02, 0.02
LENGTH_TOLERANCE = 0.05  # a mean length within 5% of the data's reads as the data's


class ReportError(Exception):
    """A missing input, a bad template or a claim the numbers contradict: reported as one
    error: line, exit status 1."""


# each family's reading in words, after "is" / "are"
WORDS = {
    "differences": {1: "ahead", -1: "behind", 0: "level", None: "not compared"},
    "diff_in_diff": {1: "less degraded", -1: "more degraded", 0: "degraded alike",
                     None: "not compared"},
}


# ----------------------------------------------------------------------------------------------
# Numbers as the pages show them.


def sample_sd(values):
    """The seeds' standard deviation (n - 1 in the denominator, as the score files' seed_sd)."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def measure(cell, metric):
    """(mean, sd over seeds) of a metric of a cell: a per-prompt metric of its summary, or a
    measure of the whole output (cell["whole"]: length_tv, coverage, distinct_valid), whose
    seeds are in whole_by_seed; (None, None) if the cell has neither."""
    if cell is None:
        return None, None
    if metric not in cell["summary"] and metric in (cell.get("whole") or {}):
        return cell["whole"][metric], sample_sd(cell.get("whole_by_seed", {}).get(metric, []))
    return cell["summary"].get(metric), cell.get("seed_sd", {}).get(metric)


def mean_sd(cell, metric, with_n=False):
    """"mean", or "mean ± sd" ("mean ± sd (n)" with_n) when the arm has several seeds."""
    if cell is None:
        return "n/a"
    mean, sd = measure(cell, metric)
    text = num(mean)
    n = len(cell.get("seeds", []))
    if n > 1:
        text += f" ± {num(sd)}" + (f" ({n})" if with_n else "")
    return text


def interval(entry):
    """+0.012 [-0.030, +0.050]: a comparison entry's mean difference and 95% interval."""
    if entry is None:
        return "n/a"
    return (f"{num(entry['mean_diff'], sign=True)} "
            f"[{num(entry['lo'], sign=True)}, {num(entry['hi'], sign=True)}]")


def percent(x):
    return "n/a" if num(x) == "n/a" else f"{100 * x:.0f}%"


# ----------------------------------------------------------------------------------------------
# Phrases: readings and values in, words out.


def rate_label(rate):
    """"shift 0", "1%", "0.5%"."""
    r = float(rate)
    return "shift 0" if r == 0 else f"{r * 100:g}%"


def and_list(items):
    """"a", "a and b", "a, b and c"."""
    items = list(items)
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def code(name):
    return f"`{name}`"


def rates_phrase(readings, rates, family="differences"):
    """"behind at shift 0 and 1%, level at 5% and 10%": readings[i] is the reading at rates[i];
    the rates are grouped by reading in the order the readings first appear. One reading at
    every rate of several: "level at every rate shown"."""
    groups = {}
    for reading, rate in zip(readings, rates):
        groups.setdefault(reading, []).append(rate_label(rate))
    if len(groups) == 1 and len(rates) > 2:
        return f"{WORDS[family][readings[0]]} at every rate shown"
    return ", ".join(f"{WORDS[family][r]} at {and_list(labels)}" for r, labels in groups.items())


def standing(cells, rates, family="differences"):
    """cells: {arm: {task: [reading per rate]}} in the order to tell. Arms whose readings agree
    on every task share a sentence, and so do tasks within an arm: "`a` and `b` are behind at
    shift 0, level at 1% on copy and grammar. `c` is level at 1% on copy; ahead at 1% on x."."""
    told = {}  # {the arm's phrase: [arms]}
    for arm, by_task in cells.items():
        parts = {}  # {rates phrase: [tasks]}
        for task, readings in by_task.items():
            parts.setdefault(rates_phrase(readings, rates, family), []).append(task)
        phrase = "; ".join(f"{p} on {and_list(tasks)}" for p, tasks in parts.items())
        told.setdefault(phrase, []).append(arm)
    return " ".join(f"{and_list(map(code, arms))} {'are' if len(arms) > 1 else 'is'} {phrase}."
                    for phrase, arms in told.items())


def ahead_anywhere(found, n, baselines):
    """found: [(task, metric, arm, rate)] where a slack arm is ahead of its baseline, in order,
    out of n comparisons. One clause per task and metric: "copy, cer: `ctc-random` at 5%"."""
    head = (f"Over every metric with a better direction at these rates ({n} comparisons, "
            f"exploratory, intervals unadjusted), a slack arm is ahead of {baselines} in ")
    if not found:
        return head + "none."
    by_metric = {}  # {(task, metric): {arm: [rates]}}
    for task, metric, arm, rate in found:
        by_metric.setdefault((task, metric), {}).setdefault(arm, []).append(rate_label(rate))
    clauses = []
    for (task, metric), arms in by_metric.items():
        by_rates = {}  # arms ahead at the same rates are named together
        for arm, labels in arms.items():
            by_rates.setdefault(tuple(labels), []).append(code(arm))
        clauses.append(f"{task}, {metric}: " + ", ".join(
            f"{and_list(names)} at {and_list(labels)}" for labels, names in by_rates.items()))
    return head + f"{len(found)}: " + "; ".join(clauses) + "."


def trend(before, after, digits):
    """"rose", "fell" or "was unchanged" from before to after, as the table shows them (rounded to
    digits: a change the table cannot show is no change); None if either is missing."""
    if before is None or after is None:
        return None
    b, a = round(before, digits), round(after, digits)
    return "rose" if a > b else "fell" if a < b else "was unchanged"


def trends(changes):
    """changes: {arm: "rose" | "fell" | "was unchanged" | None} -> "rose for `a` and `b`, fell for
    `c`", or "rose for every arm" when all agree."""
    groups = {}
    for arm, word in changes.items():
        groups.setdefault(word or "not measured", []).append(code(arm))
    if len(groups) == 1 and len(changes) > 1:
        return f"{next(iter(groups))} for every arm"
    return ", ".join(f"{word} for {and_list(arms)}" for word, arms in groups.items())


def converged_sentence(met):
    """met: {arm: {task: bool}} -> which arms met the convergence check on which tasks."""
    yes, no = {}, {}  # {tasks phrase: [arms]}
    for arm, by_task in met.items():
        for flag, into in ((True, yes), (False, no)):
            tasks = [t for t, m in by_task.items() if m is flag]
            if tasks:
                into.setdefault(and_list(tasks), []).append(code(arm))

    def told(groups):
        return " and ".join(f"by {and_list(arms)} on {tasks}" for tasks, arms in groups.items())
    out = []
    if yes:
        out.append(f"met {told(yes)}")
    if no:
        out.append(f"not met {told(no)}")
    return "; ".join(out) if out else "not measured"


def relative_lengths(values, reference, within):
    """values: {arm: mean length}; -> "`a` 28% shorter, `b` within 5% (+3%)" against the
    reference's mean; within is the tolerance (0.05) under which a length reads as the data's."""
    parts = []
    for arm, v in values.items():
        if v is None or not reference:
            parts.append(f"{code(arm)} n/a")
            continue
        rel = v / reference - 1
        if abs(rel) < within:
            parts.append(f"{code(arm)} within {within * 100:g}% ({rel * 100:+.0f}%)")
        else:
            parts.append(f"{code(arm)} {abs(rel) * 100:.0f}% {'shorter' if rel < 0 else 'longer'}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------
# Readings from the collected files. rs is report.py's Results (load, score, rate, cell, entry,
# warn); a SPECS argument is a glob over EXP/SCORE ("*/score-test", "study-*/score").


def specs(rs, pattern):
    """The EXP/SCORE names matching pattern whose file exists, sorted; none is an error."""
    if pattern.count("/") != 1:
        raise ReportError(f"{pattern!r}: expected EXP/SCORE, globs allowed (*/score-test)")
    exp_glob, score = pattern.split("/")
    found = [f"{e}/{score}" for e in sorted(os.listdir(rs.root))
             if fnmatch.fnmatchcase(e, exp_glob)
             and os.path.isfile(os.path.join(rs.root, e, score + ".json"))]
    if not found:
        raise ReportError(f"{rs.root}: no file matches {pattern}.json")
    return found


# the score files other than a task's test and a variant's score, as the sentences name them
SCORE_LABELS = {"score-test-old": "earlier test prompts"}


def task_label(spec):
    """copy/score-test -> copy; a study variant study-pad/score -> `pad`; the second set of
    test prompts grammar/score-test-old -> "grammar, earlier test prompts"."""
    exp, score = spec.split("/")
    label = code(exp[len("study-"):]) if exp.startswith("study-") else exp
    return label if score in ("score-test", "score") else \
        f"{label}, {SCORE_LABELS.get(score, score)}"


def verdict_arms(res):
    return [a for a in res["arms"] if a not in (res["baseline"], "pretrained")]


def directional(metric):
    """A metric with a better direction (higher, or lower is better), not a length or a count."""
    return metric not in tasks.BETTER or tasks.BETTER[metric] == tasks.LOWER


def find(res, family, name, rate, metric):
    """The comparison entry, or None, without a warning (for scans over every metric)."""
    for e in res.get(family, []):
        if (e["name"], e["rate"], e["metric"]) == (name, rate, metric):
            return e
    return None


def reading(rs, res, spec, family, arm, rate, metric):
    e = rs.entry(res, family, arm, rate, metric, spec)
    return direction(e, metric in LOWER_IS_BETTER)


def marked(rs, res, spec, arm, rate, metric):
    """The mark of arm - baseline at rate, after checking that the interval's difference is the
    difference of the two means the table shows: the means come from the arms' summaries, the
    mark from the comparisons, and a file in which they disagree must not print."""
    e = rs.entry(res, "differences", arm, rate, metric, spec)
    means = [(res["arms"][a].get(rate) or {}).get("summary", {}).get(metric)
             for a in (arm, res["baseline"])]
    if e is not None and None not in means and not math.isclose(
            means[0] - means[1], e["mean_diff"], rel_tol=1e-9, abs_tol=1e-9):
        raise ReportError(f"{spec}: {arm} at {rate}, {metric}: the means differ by "
                          f"{means[0] - means[1]:+.6f} but the interval's difference is "
                          f"{e['mean_diff']:+.6f}: the file's arms and differences disagree")
    return MARK[direction(e, metric in LOWER_IS_BETTER)]


def baselines(results):
    return and_list(dict.fromkeys(code(res["baseline"]) for res in results))


def metric_phrase(pairs):
    """[(task, metric)] -> "exact" if one metric, else "each task's primary metric (copy: exact;
    grammar: parses)"."""
    if len({m for _, m in pairs}) == 1:
        return pairs[0][1]
    return "each task's primary metric (" + "; ".join(f"{t}: {m}" for t, m in pairs) + ")"


# ----------------------------------------------------------------------------------------------
# The verdict tables.


def p_summary(rs, *rates):
    """The first screen's table: per experiment with score-test.json, its primary metric's mean
    per arm at shift 0 and the rates, each slack arm marked by its interval against the
    baseline (▲ ▼ or nothing), the primary comparison by †."""
    rows = []
    for spec in specs(rs, "*/score-test"):
        res = rs.score(spec)
        metric, base = res["primary"], res["baseline"]
        found = [rs.rate(res, r, spec) for r in ["0", *rates]]
        if None in found:
            continue
        better = "lower" if metric in LOWER_IS_BETTER else "higher"
        p = res.get("primary_comparison") or {}
        rows.append([f"**{task_label(spec)}**: {metric} ({better} is better)"] + [""] * len(found))
        rows.append([code(base)] + [num((res["arms"][base].get(r) or {}).get("summary", {})
                                        .get(metric)) for r in found])
        for arm in verdict_arms(res):
            cells = []
            for r in found:
                mean = (res["arms"][arm].get(r) or {}).get("summary", {}).get(metric)
                dagger = " †" if (p.get("arm"), p.get("rate")) == (arm, r) else ""
                cells.append(num(mean) + marked(rs, res, spec, arm, r, metric) + dagger)
            rows.append([code(arm)] + cells)
    head = ["arm", "shift 0"] + [rate_label(r) + (" (the paper's)" if float(r) == 0.01 else "")
                                 for r in rates]
    return table(head, rows)


def verdict_cell(rs, res, spec, arm, rate):
    metric = res["primary"]
    diff = rs.entry(res, "differences", arm, rate, metric, spec)
    mark = marked(rs, res, spec, arm, rate, metric)
    primary = res.get("primary_comparison") or {}
    dagger = " †" if (primary.get("arm"), primary.get("rate")) == (arm, rate) else ""
    text = f"Δ {interval(diff)}{mark}{dagger}"
    if float(rate) == 0:
        return f"{mean_sd(res['arms'][arm].get(rate), metric)}; {text}"
    kept = rs.entry(res, "retained", arm, rate, metric, spec)
    return f"{text}; keeps {percent(kept and kept['mean_diff'])}"


def verdict_rows(rs, spec, rates):
    res = rs.score(spec)
    metric, base, arms = res["primary"], res["baseline"], res["arms"]
    found = [rs.rate(res, r, spec) for r in ["0", *rates]]
    if None in found:
        return []
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    rows = [[f"**{task_label(spec)}**: {metric} ({better} is better)"] + [""] * len(found)]
    kept = [rs.entry(res, "retained", base, r, metric, spec) for r in found[1:]]
    rows.append([code(base), mean_sd(arms[base].get(found[0]), metric)]
                + [f"{mean_sd(arms[base].get(r), metric)}; keeps {percent(k and k['mean_diff'])}"
                   for r, k in zip(found[1:], kept)])
    rows += [[code(arm)] + [verdict_cell(rs, res, spec, arm, r) for r in found]
             for arm in verdict_arms(res)]
    return rows


def p_verdict(rs, *rates):
    """The verdict with its intervals: per experiment with score-test.json, its arms x shift 0
    and the rates, each slack arm against the baseline: Δ with its interval, the mark, and the
    share of its own shift-0 score it keeps."""
    head = ["arm", "shift 0"] + [rate_label(r) + (" (the paper's)" if float(r) == 0.01 else "")
                                 for r in rates]
    return table(head, [row for s in specs(rs, "*/score-test")
                        for row in verdict_rows(rs, s, rates)])


def p_ncomp(rs, exp, *rates):
    res = rs.score(f"{exp}/score-test")
    return str(len(verdict_arms(res)) * (1 + len(rates)))


def p_primary(rs, exp, score="score-test"):
    spec = f"{exp}/{score}"
    res = rs.score(spec)
    p = res.get("primary_comparison")
    if not p:
        rs.warn(f"{spec}: no primary comparison declared")
        return "n/a"
    metric = res["primary"]
    e = rs.entry(res, "differences", p["arm"], p["rate"], metric, spec)
    word = {1: f"`{p['arm']}` better", -1: f"`{res['baseline']}` better", 0: "no difference",
            None: "n/a"}[direction(e, metric in LOWER_IS_BETTER)]
    return (f"`{p['arm']}` - `{res['baseline']}`, {metric} at {rate_label(p['rate'])}: "
            f"{interval(e)} ({word})")


# ----------------------------------------------------------------------------------------------
# Sentences from the intervals.


def p_primaries(rs, pattern="*/score-test"):
    """"The pre-declared primary comparison favours `ce-ft` on copy (...) and grammar (...)."."""
    told = {}  # {what it says: [task (comparison)]}
    for spec in specs(rs, pattern):
        res = rs.score(spec)
        p = res.get("primary_comparison")
        if not p:
            told.setdefault("is not declared", []).append(task_label(spec))
            continue
        r = rs.rate(res, p["rate"], spec)
        word = {1: f"favours {code(p['arm'])}", -1: f"favours {code(res['baseline'])}",
                0: "shows no difference", None: "has no interval"}[
            reading(rs, res, spec, "differences", p["arm"], r, res["primary"])]
        told.setdefault(word, []).append(
            f"{task_label(spec)} ({code(p['arm'])} - {code(res['baseline'])}, {res['primary']} "
            f"at {rate_label(p['rate'])})")
    return "The pre-declared primary comparison " + "; it ".join(
        f"{word} on {and_list(where)}" for word, where in told.items()) + "."


def standing_text(rs, pattern, metric, rates, family):
    cells, pairs, results = {}, [], []
    for spec in specs(rs, pattern):
        res = rs.score(spec)
        results.append(res)
        m = res["primary"] if metric == "primary" else metric
        pairs.append((task_label(spec), m))
        found = [rs.rate(res, r, spec) for r in rates]
        for arm in verdict_arms(res):
            cells.setdefault(arm, {})[task_label(spec)] = [
                None if r is None else reading(rs, res, spec, family, arm, r, m) for r in found]
    what = "on" if family == "differences" else "in the difference in degradation on"
    return (f"Against {baselines(results)} {what} {metric_phrase(pairs)}: "
            f"{standing(cells, rates, family)}")


def p_standing(rs, pattern, metric, *rates):
    """Each slack arm ahead, level or behind its baseline on METRIC ("primary": each file's own)
    at each rate, grouped: "Against `ce-ft` (exact): `ctc-random` is behind at ..."."""
    return standing_text(rs, pattern, metric, rates, "differences")


def p_degraded(rs, pattern, metric, *rates):
    """The same reading of the difference in degradation: "less degraded", "degraded alike"."""
    return standing_text(rs, pattern, metric, rates, "diff_in_diff")


def p_ahead(rs, pattern, *rates):
    """Every cell, over every metric with a better direction, where a slack arm is ahead."""
    found, n, results = [], 0, []
    for spec in specs(rs, pattern):
        res = rs.score(spec)
        results.append(res)
        for m in filter(directional, res["metrics"]):
            for arm in verdict_arms(res):
                for rate in rates:
                    r = next((x for x in res["rates"] if float(x) == float(rate)), None)
                    e = None if r is None else find(res, "differences", arm, r, m)
                    n += e is not None
                    if direction(e, m in LOWER_IS_BETTER) == 1:
                        found.append((task_label(spec), m, arm, r))
    return ahead_anywhere(found, n, baselines(results))


def p_declared(rs, pattern="*/score-test"):
    """When each primary comparison was declared, from the setup's recorded fact
    (primary_declared_before_test, and test_prompts_earlier_use when it was not)."""
    told = {}  # {sentence part: [tasks]}
    for spec in specs(rs, pattern):
        s = rs.load(f"{spec.split('/')[0]}/setup.json")
        before = s.get("primary_declared_before_test")
        if before is True:
            part = "declared before the test prompts were first decoded"
        elif before is False:
            part = (f"declared after the test prompts had been decoded and scored for "
                    f"{s.get('test_prompts_earlier_use', 'earlier work')}: those prompts were "
                    f"not unseen when it was chosen")
        else:
            part = ("declared in the script; the setup does not record whether before the test "
                    "prompts were first decoded")
        told.setdefault(part, []).append(task_label(spec))
    return " ".join(f"On {and_list(tasks)} the primary comparison was {part}."
                    for part, tasks in told.items())


def p_lengthvs(rs, spec, metric, rate):
    """Each arm's mean METRIC (a length) against the true responses' at RATE."""
    res = rs.score(spec)
    ref = (res.get("reference") or {}).get("summary", {}).get(metric)
    r = rs.rate(res, rate, spec)
    values = {a: (by.get(r) or {}).get("summary", {}).get(metric) for a, by in res["arms"].items()}
    return (f"Against the true responses' mean {metric} ({num(ref, 1)}), at {rate_label(rate)}: "
            f"{relative_lengths(values, ref, LENGTH_TOLERANCE)}.")


# what an arm's whole output is against the baseline's, by measure: (the phrase when the arm's
# mean is lower, when it is higher)
WHOLE_PHRASES = {
    "length_tv": ("length histogram is nearer the data's", "length histogram is further from "
                  "the data's"),
    "distinct_valid": ("share of distinct valid outputs is lower",
                       "share of distinct valid outputs is higher"),
    "sentences": ("texts hold fewer sentences", "texts hold more sentences"),
}


def seed_values(cell, key):
    """The per-seed values of a per-prompt metric or a whole-output measure of a cell."""
    if key not in cell["summary"]:
        return (cell.get("whole_by_seed") or {}).get(key, [])
    return cell.get("by_seed", {}).get(key, [])


def whole_clause(arm_cell, base_cell, key):
    """"length histogram is further from the data's (0.488 against 0.201; in every seed)":
    the direction of the means, and whether every seed of the arm lies past every seed of the
    baseline that way (the whole-output measures have no interval: their seeds are the
    evidence)."""
    (a, _), (b, _) = measure(arm_cell, key), measure(base_cell, key)
    if a is None or b is None:
        return None
    lower, higher = WHOLE_PHRASES[key]
    if a == b:
        return f"{key} is the baseline's ({num(a)})"
    xs, ys = seed_values(arm_cell, key), seed_values(base_cell, key)
    apart = bool(xs and ys) and (max(xs) < min(ys) if a < b else min(xs) > max(ys))
    return (f"{lower if a < b else higher} ({key} {num(a)} against {num(b)}; "
            f"{'in every seed' if apart else 'not in every seed'})")


def p_wholevs(rs, specs_glob, rate, *keys):
    """Each slack arm's whole output at RATE against the baseline's, per task, one clause per
    KEY (a measure of WHOLE_PHRASES)."""
    unknown = [k for k in keys if k not in WHOLE_PHRASES]
    if unknown or not keys:
        raise ReportError(f"{{{{wholevs}}}}: KEY must be among {', '.join(WHOLE_PHRASES)}, "
                          f"not {' '.join(unknown) or 'nothing'}")
    parts = []
    for spec in specs(rs, specs_glob):
        res = rs.score(spec)
        base = rs.cell(res, res["baseline"], rate, spec)
        clauses = []
        for arm in verdict_arms(res):
            cell = rs.cell(res, arm, rate, spec)
            said = [c for c in (whole_clause(cell, base, k) for k in keys) if c] \
                if cell and base else []
            if said:
                clauses.append(f"{code(arm)}'s {and_list(said)}")
        if clauses:
            parts.append(f"on {task_label(spec)} against {code(res['baseline'])}'s: "
                         + "; ".join(clauses))
    if not parts:
        return f"No score has the measures {' '.join(keys)} at {rate_label(rate)}."
    return f"The whole output at {rate_label(rate)}, " + ". Then ".join(parts) + "."


# ----------------------------------------------------------------------------------------------
# Convergence: each fine-tune continued at its peak learning rate (curves-more, val-score-more).


def last_points(curves, key):
    """{arm: [last value of each seed]} of a curves file's key."""
    out = {}
    for run, points in curves["curves"].get(key, {}).items():
        values = [v for _, v in points if v is not None]
        if values:
            out.setdefault(arm_of(run), []).append(values[-1])
    return out


def sd_text(values):
    mean, sd = sum(values) / len(values), sample_sd(values)
    return num(mean, 4) if sd is None else f"{num(mean, 4)} ± {num(sd, 4)}"


def continuation(rs, exp, rate):
    """{arm: {"objective": (before, after), "0": (before, after), RATE: (before, after)}}: the
    means over seeds at the end of the fine-tune and after its continuation, and the metric."""
    end = last_points(rs.load(f"{exp}/curves.json"), "val_bits")
    more = last_points(rs.load(f"{exp}/curves-more.json"), "val_bits")
    val, after = rs.score(f"{exp}/val-score"), rs.score(f"{exp}/val-score-more")
    setting, metric = rs.load(f"{exp}/choice.json")["setting"], val["primary"]

    def mean(values):
        return sum(values) / len(values) if values else None
    out = {}
    for arm in after["arms"]:
        row = {"objective": (mean(end.get(arm, [])), mean(more.get(arm, [])))}
        for r in ("0", rate):
            b = rs.cell(val, f"{arm}:{setting}", r, f"{exp}/val-score")
            a = rs.cell(after, arm, r, f"{exp}/val-score-more")
            row[r] = tuple(c and c["summary"].get(metric) for c in (b, a))
        out[arm] = row
    return out, metric


def check_of(row, metric):
    """(met, why) by the stated criterion (OBJECTIVE_MARGIN, PRIMARY_MARGIN)."""
    (ob, oa), (pb, pa) = row["objective"], row["0"]
    if None in (ob, oa, pb, pa):
        return None, "n/a"
    # as the table shows them: a change it cannot show (a 0.0000 objective) is no change
    ob, oa, pb, pa = round(ob, 4), round(oa, 4), round(pb, 3), round(pa, 3)
    fall = (ob - oa) / ob if ob > 0 else 0.0
    gain = (pb - pa) if metric in LOWER_IS_BETTER else (pa - pb)
    why = []
    if fall >= OBJECTIVE_MARGIN:
        why.append(f"objective {-100 * fall:+.0f}%")
    if gain >= PRIMARY_MARGIN:
        why.append(f"{metric} {num(pa - pb, sign=True)}")
    return not why, "met" if not why else "not met: " + ", ".join(why)


def p_converge(rs, exp, rate):
    """Per arm: its own validation objective (bits per response position) at the end of its
    fine-tune and after the continuation, and the primary metric on validation prompts, at shift
    0 and RATE, with the chosen decoder, at both points, each as mean ± sd over seeds; then the
    convergence check."""
    end = last_points(rs.load(f"{exp}/curves.json"), "val_bits")
    more = last_points(rs.load(f"{exp}/curves-more.json"), "val_bits")
    val, after = rs.score(f"{exp}/val-score"), rs.score(f"{exp}/val-score-more")
    setting, metric = rs.load(f"{exp}/choice.json")["setting"], val["primary"]
    rows, checks = [], continuation(rs, exp, rate)[0]
    for arm in after["arms"]:
        cells = [f"{sd_text(end[arm])} → {sd_text(more[arm])}" if arm in end and arm in more
                 else "n/a"]
        for r in ("0", rate):
            before = rs.cell(val, f"{arm}:{setting}", r, f"{exp}/val-score")
            cells.append(f"{mean_sd(before, metric)} → "
                         f"{mean_sd(rs.cell(after, arm, r, f'{exp}/val-score-more'), metric)}")
        rows.append([code(arm), *cells, check_of(checks[arm], metric)[1]])
    return table(["arm", "validation objective", f"{metric}, shift 0", f"{metric}, "
                  f"{rate_label(rate)}", "check"], rows)


def p_convrule(rs):
    return (f"continuing it at its peak learning rate lowers its own validation objective by "
            f"less than {OBJECTIVE_MARGIN:.0%} of its value and raises its validation primary "
            f"metric at shift 0 by less than {PRIMARY_MARGIN:g}")


def p_converged(rs, pattern="*"):
    """Which arms met the convergence check on which experiments (those with curves-more)."""
    met = {}
    exps = [e for e in sorted(os.listdir(rs.root)) if fnmatch.fnmatchcase(e, pattern)
            and os.path.isfile(os.path.join(rs.root, e, "curves-more.json"))]
    if not exps:
        raise ReportError(f"{rs.root}: no {pattern}/curves-more.json for {{{{converged}}}}")
    for exp in exps:
        rows, metric = continuation(rs, exp, "0")
        for arm, row in rows.items():
            met.setdefault(arm, {})[exp] = check_of(row, metric)[0]
    return converged_sentence(met)


def p_continued(rs, exp, rate):
    """What the continuation did to each arm's means: rose, fell or unchanged as the table shows
    them (no interval: a change within the seeds' spread may be noise)."""
    rows, metric = continuation(rs, exp, rate)
    parts = [f"the validation objective "
             + trends({a: trend(*r["objective"], 4) for a, r in rows.items()})]
    for r in ("0", rate):
        parts.append(f"{metric} at {rate_label(r)} "
                     + trends({a: trend(*row[r], 3) for a, row in rows.items()}))
    return "After the continuation, in the means over seeds: " + "; ".join(parts) + "."


# ----------------------------------------------------------------------------------------------
# What the files hold, in words: the arms, the primary metric, the decoder's rule, the pairing.

# what each arm is; an arm that a file holds and this does not define stops the report
ARM_DEFS = {
    "pretrained": "the CE-pretrained model itself, not fine-tuned",
    "ce-ft": "CE with the slack at the tail (as LLaDA pads with EOS)",
    "ctc-random": "the slack CTC, slack at random places",
    "ctc-model": "the slack CTC, slack where the model's alignment puts it",
    "ctc+ce-random": "both losses, slack at random places",
    "ctc+ce-model": "both losses, slack where the model's alignment puts it",
}
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve")


def fine_tuned(res):
    """The file's arms but pretrained, in its order."""
    return [a for a in res["arms"] if a != "pretrained"]


def p_arms(rs, exp, score="score-test"):
    """"three arms: `ce-ft`, `ctc-random` and `ctc+ce-random`": EXP/SCORE's fine-tunes."""
    arms = fine_tuned(rs.score(f"{exp}/{score}"))
    n = NUMBER_WORDS[len(arms)] if len(arms) < len(NUMBER_WORDS) else str(len(arms))
    return f"{n} arm{'s' * (len(arms) != 1)}: {and_list(map(code, arms))}"


def arm_definition(arm):
    if arm not in ARM_DEFS:
        raise ReportError(f"arm {arm!r} has no definition (runs/words.py ARM_DEFS)")
    return ARM_DEFS[arm]


def p_armdefs(rs, pattern="*/score-test"):
    """Each fine-tuned arm of the files matching pattern defined, the baseline named, then which
    task trains which when they differ: only arms that some file holds are defined."""
    by_task, base = {}, {}
    for spec in specs(rs, pattern):
        res = rs.score(spec)
        by_task[task_label(spec)] = fine_tuned(res)
        base[res["baseline"]] = True
    arms = list(dict.fromkeys(a for arms in by_task.values() for a in arms))
    defs = {a: arm_definition(a) for a in arms}
    arms.sort(key=lambda a: (a not in base, list(ARM_DEFS).index(a)))  # the baseline first
    text = "; ".join(f"{code(a)}, {defs[a]}" + (", the baseline" * (a in base)) for a in arms)
    if any(set(a) != set(arms) for a in by_task.values()):  # which task trains which
        text += " (" + "; ".join(f"{task}: " + (f"all {NUMBER_WORDS[len(a)]}" if set(a) == set(arms)
                                                else and_list(map(code, a)))
                                 for task, a in by_task.items()) + ")"
    return text


def p_standardised(rs, spec):
    """The standardised metric in words, from the score file's own note on it."""
    res = rs.score(spec)
    std = res.get("standardised") or {}
    metric = std.get("metric")
    note = next((n for n in res.get("notes", []) if metric and n.startswith(f"{metric}: ")), None)
    if note is None:
        rs.warn(f"{spec}: no standardised metric, or no note on it")
        return "n/a"
    role = "the primary metric" if res["primary"] == metric else \
        f"beside the primary metric {res['primary']}"
    return f"{code(metric)}, {role}, is {note[len(metric) + 2:]}"


def p_note(rs, spec, *prefix):
    """The score file's note that begins with PREFIX ("Length bins:"), as the file words it."""
    res, head = rs.score(spec), " ".join(prefix)
    note = next((n for n in res.get("notes", []) if n.startswith(head)), None)
    if note is None:
        rs.warn(f"{spec}: no note beginning {head!r}")
    return note or "n/a"


def p_chosenby(rs, exp):
    """The rule that chose the decoder, from choice.json: "the best mean parses_std over the
    fine-tunes (`pretrained` left out) at shift 0 and 5%"."""
    c = rs.load(f"{exp}/choice.json")
    metric = c.get("metric") or rs.score(f"{exp}/val-score")["primary"]
    left = c.get("excluded") or []
    return (f"the best mean {metric} over the fine-tunes"
            + (f" ({and_list(map(code, left))} left out)" if left else "")
            + (f" at {and_list(map(rate_label, c['rates']))}" if c.get("rates") else ""))


def paired_reading(e, lower):
    """The reading of an entry's paired interval, None where it has none (no shared seed)."""
    ends = [e.get("paired_lo"), e.get("paired_hi")]
    if not all(isinstance(v, (int, float)) and not math.isnan(v) for v in ends):
        return None
    return direction({"lo": ends[0], "hi": ends[1]}, lower)


def p_paired(rs, pattern, *rates):
    """Whether the paired intervals (seeds drawn jointly with the baseline's) read as the
    published ones on the primary metric at the rates; those that do not are named."""
    parts = []
    for spec in specs(rs, pattern):
        res = rs.score(spec)
        metric, lower = res["primary"], res["primary"] in LOWER_IS_BETTER
        found = [r for r in res["rates"] if any(float(r) == float(x) for x in rates)]
        n, differ = 0, []
        for family in ("differences", "diff_in_diff"):
            for arm in verdict_arms(res):
                for r in found:
                    e = find(res, family, arm, r, metric)
                    paired = None if e is None else paired_reading(e, lower)
                    if paired is None:
                        continue
                    n += 1
                    published = direction(e, lower)
                    if paired != published:
                        differ.append(f"{code(arm)} at {rate_label(r)} ({WORDS[family][published]}"
                                      f" published, {WORDS[family][paired]} paired)")
        if not n:
            parts.append(f"on {task_label(spec)} the file holds no paired interval")
        else:
            parts.append(f"on {task_label(spec)}, {metric}, the paired intervals read as the "
                         f"published ones in {n - len(differ)} of {n} comparisons"
                         + (": not for " + and_list(differ) if differ else ""))
    text = "; ".join(parts) + "."
    return text[:1].upper() + text[1:]


def p_examples(rs, pattern="*/score-test*"):
    """Which published scores (EXP/SCORE matching pattern, with a primary comparison) have their
    per-prompt values committed beside them (SCORE-examples.json), from which stats.recompute
    redoes every interval of the file."""
    exp_glob, score_glob = pattern.split("/")
    have, lack = [], []
    for e in sorted(os.listdir(rs.root)):
        if not fnmatch.fnmatchcase(e, exp_glob) or not os.path.isdir(os.path.join(rs.root, e)):
            continue
        for f in sorted(os.listdir(os.path.join(rs.root, e))):
            name = f[:-len(".json")]
            if (f.endswith(".json") and not name.endswith("-examples")
                    and fnmatch.fnmatchcase(name, score_glob)
                    and rs.score(f"{e}/{name}").get("primary_comparison")):
                ok = os.path.isfile(os.path.join(rs.root, e, f"{name}-examples.json"))
                (have if ok else lack).append(code(f"{e}/{name}.json"))
    several = len(have) > 1, len(lack) > 1
    return " ".join(([f"The per-prompt values behind every interval of {and_list(have)} are "
                      f"committed beside {'them' if several[0] else 'it'} (the same name ending "
                      f"`-examples.json`), and `stats.recompute` gives every interval of the "
                      f"file again from them (`tests/test_evaluate.py` checks that it does)."]
                     if have else [])
                    + ([f"{and_list(lack)} {'were' if several[1] else 'was'} collected before "
                        f"per-prompt values were kept: {'their' if several[1] else 'its'} "
                        f"intervals cannot be recomputed from the repository."] if lack else []))
