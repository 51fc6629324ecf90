"""runs/report.py: collect the toy outputs of the experiment scripts, render the results pages
from them with the real template, and check the placeholders, determinism, errors, the verdict's
reading rule, that the template's prose holds no number of its own, that its sentences follow
the numbers (runs/words.py's phrases alone, then a number flipped in a copy of the committed
results), and that the committed results/README.md is what its files render to."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "runs"))
import words  # noqa: E402  (runs/ is on the path only from here on)
from tables import num  # noqa: E402
import report as report_module  # noqa: E402  (the template language, rendered in this process)

REPORT = os.path.join(ROOT, "runs", "report.py")
TEMPLATE = os.path.join(ROOT, "runs", "report.md")
START, END = "<!-- verdict:start -->", "<!-- verdict:end -->"
EXPERIMENTS = ("grammar", "copy", "study", "bench", "long")


def report(*args):
    """python runs/report.py ARGS from the project root."""
    return subprocess.run([sys.executable, REPORT, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def exp(tiny_exp, tmp_path_factory):
    """A folder with links to the session's toy runs (conftest.tiny_exp), which no test here
    changes."""
    out = tmp_path_factory.mktemp("exp")
    for name in EXPERIMENTS:
        os.symlink(tiny_exp / name, out / name)
    return out


@pytest.fixture(scope="module")
def collected(exp, tmp_path_factory):
    """The toy runs collected and rendered with the real template: (results, README, stderr)."""
    d = tmp_path_factory.mktemp("rendered")
    results, readme = d / "results", d / "README.md"
    shutil.copyfile(os.path.join(ROOT, "README.md"), readme)
    p = report("--collect", exp, "--results", results, "--template", TEMPLATE, "--readme", readme)
    assert p.returncode == 0, p.stderr
    return results, readme, p.stderr


def outside_block(text):
    """The README without what lies between the verdict markers."""
    return text[:text.index(START)] + text[text.index(END):]


def test_collect_and_render_the_toy_experiments(collected):
    """--collect then render with the real template: every placeholder is filled without a
    warning, the README block is replaced and the rest of the README kept, the collected score
    files hold no per-prompt values, and every stage's time is there, nested ones included."""
    results, readme, stderr = collected
    assert "warning:" not in stderr, stderr  # the template names only what the scripts make
    page = (results / "README.md").read_text(encoding="utf-8")
    assert "{{" not in page and "}}" not in page and "readme:start" not in page
    after = readme.read_text(encoding="utf-8")
    before = Path(ROOT, "README.md").read_text(encoding="utf-8")
    assert outside_block(after) == outside_block(before)
    block = after[after.index(START):after.index(END)]
    assert "{{" not in block and "| arm | shift 0 | 1% (the paper's) | 5% | 10% |" in block
    assert "**copy**: exact (higher is better)" in block and "†" in block
    for name in ("grammar", "copy", "study-base", "study-pad", "bench"):
        files = set(os.listdir(results / name))
        assert {"setup.json", "times.json"} <= files, name
    assert "gate.json" in os.listdir(results / "study-pad")  # the competence gate, collected
    assert "| `pad` | the first word |" in page and "passed, after" in page
    assert "## Long texts" in page and "not yet collected" not in page + block
    assert "**long**: parses_std" in block  # the long texts join the verdict
    assert {"score-test.json", "score-test.svg", "val-score.json", "val-score-more.json",
            "choice.json", "curves.json", "curves-more.json", "runs.json",
            "task.json"} <= set(os.listdir(results / "grammar"))
    for f in (results / "grammar").glob("*.json"):
        text = f.read_text(encoding="utf-8")
        assert '"per_example"' not in text and '"per_seed"' not in text, f
    times = json.loads((results / "grammar" / "times.json").read_text(encoding="utf-8"))
    assert "pretrained" in times and "test-gens" in times and "more/ce-ft@1" in times


def test_placeholders_match_the_experiment_files(exp, tmp_path):
    """value, valuesd, ref, ci, kept, count, time, arg and choice give the numbers of the
    experiment's own files."""
    results, readme, template = tmp_path / "results", tmp_path / "README.md", tmp_path / "t.md"
    readme.write_text("# t\n", encoding="utf-8")
    template.write_text("{{value copy/score-test ctc-random 0.1 cer}}\n"
                        "{{valuesd copy/score-test ctc-random 0.1 cer}}\n"
                        "{{ref copy/score-test cer}}\n"
                        "{{ci copy/score-test differences ctc-random 0.1 cer}}\n"
                        "{{kept copy/score-test ce-ft 0.1 cer}}\n"
                        "{{count copy n_test}}\n{{time copy pretrained}}\n"
                        "{{arg copy ce-ft@1 steps}}\n{{choice copy}}\n", encoding="utf-8")
    p = report("--collect", exp, "--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 0, p.stderr
    lines = (results / "README.md").read_text(encoding="utf-8").strip().splitlines()[-9:]
    res = json.loads((exp / "copy" / "score-test" / "results.json").read_text("utf-8"))
    cell = res["arms"]["ctc-random"]["0.1"]
    mean, sd = cell["summary"]["cer"], cell["seed_sd"]["cer"]
    ci = next(d for d in res["differences"]
              if (d["name"], d["rate"], d["metric"]) == ("ctc-random", "0.1", "cer"))
    kept = next(d for d in res["retained"]
                if (d["name"], d["rate"], d["metric"]) == ("ce-ft", "0.1", "cer"))

    def sign(x):
        return f"{x:+.3f}".replace("-0.000", "+0.000")

    def pct(x):  # a share; JSON's null (0 / 0) shows as n/a
        return "n/a" if x is None else f"{100 * x:.0f}%"
    task = json.loads((exp / "copy" / "task" / "task.json").read_text("utf-8"))
    seconds = int((exp / "copy" / "pretrained" / "DONE").read_text())
    choice = json.loads((exp / "copy" / "choice" / "choice.json").read_text("utf-8"))
    with_sd = f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"  # one seed: no sd
    assert lines[:7] == [f"{mean:.3f}", with_sd,
                         f"{res['reference']['summary']['cer']:.3f}",
                         f"{sign(ci['mean_diff'])} [{sign(ci['lo'])}, {sign(ci['hi'])}]",
                         f"{pct(kept['mean_diff'])} [{pct(kept['lo'])}, {pct(kept['hi'])}]",
                         str(task["n_test"]),
                         f"{seconds} s" if seconds < 60 else f"{int(seconds / 60 + 0.5)} min"]
    assert lines[7] == "6"  # copy.sh's tiny fine-tunes: FT="--steps 6 ..."
    rule, per_step, block = choice["setting"].split("/")
    assert lines[8].startswith(f"the `{rule}` slack rule, {per_step} position")


def test_rendering_is_deterministic_and_reads_only_results(exp, tmp_path):
    """Rendering twice gives byte-identical pages, and so does rendering after the experiment
    folders are deleted: the pages depend on results/ and the template alone."""
    own = tmp_path / "exp"
    shutil.copytree(exp, own, symlinks=False)  # a copy to delete: the module's serve the others
    results, readme = tmp_path / "results", tmp_path / "README.md"
    shutil.copyfile(os.path.join(ROOT, "README.md"), readme)
    assert report("--collect", own, "--results", results, "--readme", readme).returncode == 0
    first = ((results / "README.md").read_bytes(), readme.read_bytes())
    p = report("--results", results, "--readme", readme)
    assert p.returncode == 0 and "up to date" in p.stdout
    assert ((results / "README.md").read_bytes(), readme.read_bytes()) == first
    shutil.rmtree(own)
    assert report("--results", results, "--readme", readme).returncode == 0
    assert ((results / "README.md").read_bytes(), readme.read_bytes()) == first


def fake_score(primary, diff):
    """A minimal score-test.json: ce-ft (baseline) 0.5, ctc-random 0.6, ctc-model 0.4 and
    pretrained 0.9 at rates 0 and 0.01, two seeds each; ctc-random has the interval diff at
    0.01, the primary comparison; every other interval holds 0."""
    def arm(mean, at_1=None):
        def cell(m):
            return {"summary": {primary: m}, "seed_sd": {primary: 0.01},
                    "seeds": ["x@1", "x@2"], "realised_shift": 0.0}
        return {"0": cell(mean), "0.01": cell(mean if at_1 is None else at_1)}

    def entry(name, rate, ci):
        return {"name": name, "baseline": "ce-ft", "rate": rate, "metric": primary,
                **dict(zip(("mean_diff", "lo", "hi"), ci))}
    return {"task": "copy", "primary": primary, "metrics": [primary], "baseline": "ce-ft",
            "rates": ["0", "0.01"], "reference": None,
            "primary_comparison": {"arm": "ctc-random", "rate": "0.01"},
            "arms": {"ce-ft": arm(0.5), "ctc-random": arm(0.6, 0.5 + diff[0]),
                     "ctc-model": arm(0.4), "pretrained": arm(0.9)},
            "differences": [entry("ctc-random", "0.01", diff),
                            entry("ctc-random", "0", (0.1, -1.0, 1.0)),
                            entry("ctc-model", "0", (-0.1, -1.0, 1.0)),
                            entry("ctc-model", "0.01", (-0.1, -1.0, 1.0))],
            "retained": [entry(a, "0.01", (0.9, 0.8, 1.0)) for a in ("ce-ft", "ctc-random",
                                                                    "ctc-model")]}


READINGS = {  # experiment: (primary metric, the interval at 0.01, the mark it gets)
    "a-above": ("exact", (0.1, 0.05, 0.15), "▲"),
    "b-below": ("parses", (-0.1, -0.15, -0.05), "▼"),
    "c-holds-0": ("exact", (0.1, 0.0, 0.2), ""),
    "d-touches-0": ("exact", (-0.1, -0.2, -1.37e-18), ""),  # a floating-point 0 touches 0
    "e-lower-is-better": ("cer", (-0.1, -0.15, -0.05), "▲"),
}


def test_verdict_reading_rule(tmp_path):
    """The mark comes from the interval alone: above 0 (the slack arm better) / below 0 (CE
    better) / holding or touching 0 (no mark), mirrored for a lower-is-better metric; every arm
    but "pretrained" has a row; the primary comparison carries a dagger."""
    results, readme, template = tmp_path / "results", tmp_path / "README.md", tmp_path / "t.md"
    for name, (metric, diff, _) in READINGS.items():
        (results / name).mkdir(parents=True)
        (results / name / "score-test.json").write_text(json.dumps(fake_score(metric, diff)))
    (results / "no-score").mkdir()  # an experiment without score-test.json has no rows
    readme.write_text(f"# t\n\n{START}\n{END}\n\nrest\n", encoding="utf-8")
    template.write_text("# page\n<!-- readme:start -->\n{{verdict 0.01}}\n\n{{summary 0.01}}\n"
                        "<!-- readme:end -->\n")
    p = report("--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 0, p.stderr
    rows = [line.split(" | ") for line in readme.read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and "---" not in line and not line.startswith("| arm ")]
    rows, summary = rows[:len(rows) // 2], rows[len(rows) // 2:]
    assert len(rows) == 4 * len(READINGS)  # a title, the baseline, two slack arms
    for k, name in enumerate(sorted(READINGS)):  # the first screen: means and the same marks
        title, base, rnd, mod = summary[4 * k:4 * k + 4]
        assert title[0] == rows[4 * k][0] and base[1:] == ["0.500", "0.500 |"]
        mark = READINGS[name][2]
        at_1 = num(0.5 + READINGS[name][1][0])  # the mean of the interval's own difference
        assert rnd[1:] == ["0.600", f"{at_1}{' ' + mark if mark else ''} † |"], rnd
        assert mod[1:] == ["0.400", "0.400 |"]
    for k, name in enumerate(sorted(READINGS)):
        title, base, rnd, mod = rows[4 * k:4 * k + 4]
        assert title[0] == f"| **{name}**: {READINGS[name][0]} (" + (
            "lower" if READINGS[name][0] == "cer" else "higher") + " is better)"
        assert base[0] == "| `ce-ft`" and base[1] == "0.500 ± 0.010"
        assert rnd[0] == "| `ctc-random`" and mod[0] == "| `ctc-model`"
        mark = READINGS[name][2]
        assert rnd[2].rstrip(" |").endswith(f"]{' ' + mark if mark else ''} †; keeps 90%"), rnd
        assert "▲" not in mod[2] and "▼" not in mod[2] and "†" not in mod[2]


def test_unknown_placeholder_is_an_error(tmp_path):
    """An unknown placeholder stops the run: exit status 1, one error: line naming it and its
    line, and no page written."""
    results, readme, template = tmp_path / "results", tmp_path / "README.md", tmp_path / "t.md"
    results.mkdir()
    readme.write_text("# t\n", encoding="utf-8")
    template.write_text("# page\n\n{{tabel grammar/score-test parses}}\n", encoding="utf-8")
    p = report("--results", results, "--template", template, "--readme", readme)
    errors = [line for line in p.stderr.splitlines() if "error:" in line]
    assert p.returncode == 1 and len(errors) == 1 and p.stderr.count("\n") == 1, p.stderr
    assert "t.md:3" in errors[0] and "{{tabel" in errors[0] and "unknown placeholder" in errors[0]
    assert not (results / "README.md").exists()


def test_missing_input_is_an_error_and_markers_are_optional(tmp_path):
    """A score file that was never collected is one error: line; a README without the verdict
    markers is left unchanged, and the run says so."""
    results, readme, template = tmp_path / "results", tmp_path / "README.md", tmp_path / "t.md"
    (results / "copy").mkdir(parents=True)
    readme.write_text("# t\n\nno markers\n", encoding="utf-8")
    template.write_text("{{ref copy/score-test exact}}\n", encoding="utf-8")
    p = report("--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1
    assert "score-test.json" in p.stderr
    template.write_text("x\n<!-- readme:start -->\ny\n<!-- readme:end -->\n", encoding="utf-8")
    p = report("--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 0 and "left unchanged" in p.stdout
    assert readme.read_text(encoding="utf-8") == "# t\n\nno markers\n"


def test_a_section_shows_only_once_its_experiment_is_collected(tmp_path):
    """<!-- if EXP --> ... <!-- else --> ... <!-- end if -->: the first part where results/EXP
    was collected, else the second; the placeholders of a part left out are never read, and an
    error still names the template's own line."""
    results, readme, template = tmp_path / "results", tmp_path / "README.md", tmp_path / "t.md"
    (results / "copy").mkdir(parents=True)
    (results / "copy" / "setup.json").write_text("{}", encoding="utf-8")
    readme.write_text("# t\n", encoding="utf-8")
    lines = ["a", "<!-- if copy -->", "here", "<!-- else -->", "not here", "<!-- end if -->",
             "<!-- if long -->", "{{ref long/score-test exact}}", "<!-- else -->", "not yet",
             "<!-- end if -->", "<!-- if long -->", "{{ref long/score-test exact}}",
             "<!-- end if -->", "b"]
    template.write_text("\n".join(lines + ["{{nosuch}}"]) + "\n", encoding="utf-8")
    p = report("--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 1 and f"t.md:{len(lines) + 1}: {{{{nosuch}}}}" in p.stderr, p.stderr
    template.write_text("\n".join(lines) + "\n", encoding="utf-8")
    p = report("--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 0, p.stderr
    page = (results / "README.md").read_text(encoding="utf-8")
    assert page.endswith("\na\nhere\nnot yet\nb\n"), page


def test_the_template_prose_holds_no_number_of_its_own():
    """Every number on the results pages comes from a result file: outside its placeholders the
    template holds no digit (a digit there would be typed, and the next run would leave it
    stale)."""
    text = open(TEMPLATE, encoding="utf-8").read()
    prose = re.sub(r"\{\{.*?\}\}", "", text, flags=re.S)
    prose = re.sub(r"<!--.*?-->", "", prose, flags=re.S)  # the markers of the readme part
    digits = [(n, line) for n, line in enumerate(prose.splitlines(), 1) if re.search(r"\d", line)]
    assert not digits, digits[:5]


def test_committed_results_page_is_current(tmp_path):
    """results/README.md and README.md's verdict block are what the committed results/ and
    runs/report.md render to, byte for byte: a stale page (or a hand edit) fails here."""
    page = os.path.join(ROOT, "results", "README.md")
    if not os.path.exists(page):
        pytest.skip("results/README.md does not exist yet (python runs/report.py --collect exp)")
    results, readme = tmp_path / "results", tmp_path / "README.md"
    shutil.copytree(os.path.join(ROOT, "results"), results)
    shutil.copyfile(os.path.join(ROOT, "README.md"), readme)
    p = report("--results", results, "--template", TEMPLATE, "--readme", readme)
    assert p.returncode == 0, p.stderr
    assert (results / "README.md").read_bytes() == Path(page).read_bytes(), \
        "results/README.md is stale: run python runs/report.py"
    assert readme.read_bytes() == Path(ROOT, "README.md").read_bytes(), \
        "README.md's verdict block is stale: run python runs/report.py"


# ----------------------------------------------------------------------------------------------
# The sentences bound to the numbers: runs/words.py's phrases alone, then the real template on a
# copy of the committed results with one number changed.

RATES = ["0", "0.01", "0.05", "0.1"]


def test_rates_phrase_groups_the_rates_by_reading():
    assert words.rates_phrase([-1, -1, 0, 0], RATES) == \
        "behind at shift 0 and 1%, level at 5% and 10%"
    assert words.rates_phrase([0, 1, 0, 1], RATES) == \
        "level at shift 0 and 5%, ahead at 1% and 10%"
    assert words.rates_phrase([0, 0, 0, 0], RATES) == "level at every rate shown"
    assert words.rates_phrase([1], ["0.1"], "diff_in_diff") == "less degraded at 10%"
    assert words.rates_phrase([None, -1], ["0", "0.005"]) == \
        "not compared at shift 0, behind at 0.5%"


def test_standing_names_each_arm_and_task_by_its_own_readings():
    """Arms that read alike on every task share a sentence; tasks alike within an arm share a
    part; one reading changed moves its arm to a sentence of its own."""
    cells = {"a": {"copy": [-1, 0], "grammar": [-1, 0]}, "b": {"copy": [-1, 0],
                                                               "grammar": [-1, 0]},
             "c": {"copy": [0, 0], "grammar": [0, 1]}}
    rates = ["0", "0.01"]
    assert words.standing(cells, rates) == (
        "`a` and `b` are behind at shift 0, level at 1% on copy and grammar. `c` is level at "
        "shift 0 and 1% on copy; level at shift 0, ahead at 1% on grammar.")
    cells["b"]["grammar"] = [0, 0]
    assert words.standing(cells, rates).startswith(
        "`a` is behind at shift 0, level at 1% on copy and grammar. `b` is behind at shift 0, "
        "level at 1% on copy; level at shift 0 and 1% on grammar.")


def test_ahead_anywhere_lists_every_cell_and_the_count():
    assert words.ahead_anywhere([], 12, "`ce-ft`").endswith("ahead of `ce-ft` in none.")
    found = [("grammar", "lexicon", "x", "0.1"), ("grammar", "lexicon", "y", "0.1"),
             ("copy", "cer", "x", "0.05"), ("copy", "cer", "x", "0.1")]
    text = words.ahead_anywhere(found, 40, "`ce-ft`")
    assert "(40 comparisons," in text and text.endswith(
        "in 4: grammar, lexicon: `x` and `y` at 10%; copy, cer: `x` at 5% and 10%.")


def test_trends_read_the_means_as_the_tables_show_them():
    """A change below the table's last digit is no change (0.8501 -> 0.8504 shows 0.850 twice);
    ce-ft at 5% on grammar went 0.509 -> 0.491: "fell", not "rose for every arm"."""
    assert words.trend(0.8501, 0.8504, 3) == "was unchanged"
    assert words.trend(0.509, 0.491, 3) == "fell" and words.trend(0.3853, 0.3931, 4) == "rose"
    assert words.trend(None, 0.5, 3) is None
    assert words.trends({"a": "rose", "b": "rose"}) == "rose for every arm"
    assert words.trends({"a": "fell", "b": "rose", "c": "rose"}) == \
        "fell for `a`, rose for `b` and `c`"


def test_convergence_check_and_its_sentence():
    """The stated rule: the objective falls by less than OBJECTIVE_MARGIN of its value and the
    primary rises by less than PRIMARY_MARGIN (falls, for a lower-is-better metric)."""
    m = words.OBJECTIVE_MARGIN
    row = {"objective": (0.5, 0.5 * (1 - m / 2)), "0": (0.80, 0.80 + words.PRIMARY_MARGIN / 2)}
    assert words.check_of(row, "parses") == (True, "met")
    row["objective"] = (0.5, 0.5 * (1 - 2 * m))
    assert words.check_of(row, "parses")[0] is False and "objective" in words.check_of(row, "x")[1]
    row = {"objective": (0.0, 0.0), "0": (0.20, 0.20 - 2 * words.PRIMARY_MARGIN)}
    assert words.check_of(row, "parses") == (True, "met")  # a fall of a share is no improvement
    assert words.check_of(row, "cer")[0] is False  # but of an error rate it is
    assert words.converged_sentence({"a": {"copy": True, "grammar": True},
                                     "b": {"copy": False, "grammar": True}}) == \
        "met by `a` on copy and grammar and by `b` on grammar; not met by `b` on copy"


def test_relative_lengths():
    assert words.relative_lengths({"a": 19.8, "b": 28.2}, 27.5, 0.05) == \
        "`a` 28% shorter, `b` within 5% (+3%)"


@pytest.fixture
def committed(tmp_path):
    """A copy of the committed results/, README.md and template, and a function that renders
    them (the README's verdict block and results/README.md) after changing a result file."""
    results, readme = tmp_path / "results", tmp_path / "README.md"
    shutil.copytree(os.path.join(ROOT, "results"), results)
    shutil.copyfile(os.path.join(ROOT, "README.md"), readme)

    def render(rel=None, change=None):
        if rel is not None:
            doc = json.loads((results / rel).read_text(encoding="utf-8"))
            change(doc)
            (results / rel).write_text(json.dumps(doc), encoding="utf-8")
        p = report("--results", results, "--template", TEMPLATE, "--readme", readme)
        assert p.returncode == 0, p.stderr
        text = readme.read_text(encoding="utf-8")
        return (text[text.index(START):text.index(END)],
                (results / "README.md").read_text(encoding="utf-8"))
    return render


def set_interval(family, arm, rate, metric, ci):
    """A change for render: the entry's interval set to ci = (lo, hi); its mean difference stays
    the difference of the means that the tables show (the report checks that they agree)."""
    def change(doc):
        entry = next(e for e in doc[family]
                     if (e["name"], e["rate"], e["metric"]) == (arm, rate, metric))
        entry.update(zip(("lo", "hi"), ci))
    return change


def test_flipping_the_primary_interval_changes_the_words(committed):
    """The grammar primary's interval set below zero, then touching it at +0.001, then above:
    the table's mark and every sentence that reads it follow ("favours `ce-ft`", "shows no
    difference", "favours the arm"); the copy task's words stay."""
    res = json.loads(Path(ROOT, "results", "grammar", "score-test.json").read_text("utf-8"))
    p, metric, base = res["primary_comparison"], res["primary"], res["baseline"]
    arm, rate = p["arm"], p["rate"]
    said = {}
    for name, ci in (("behind", (-0.2, -0.05)), ("level", (-0.2, 0.001)),
                     ("ahead", (0.05, 0.2))):
        said[name] = committed("grammar/score-test.json",
                               set_interval("differences", arm, rate, metric, ci))
    favours = "The pre-declared primary comparison "
    grammar = f"grammar (`{arm}` - `{base}`, {metric} at {words.rate_label(rate)})"

    def clause(block):
        """The clause of the primaries sentence that names grammar's comparison: "favours
        `ce-ft` on copy (...) and grammar (...)" (clauses are joined by "; it ")."""
        line = next(ln for ln in block.splitlines() if favours in ln)
        return next(c for c in line.split(favours)[1].split("; it ") if grammar in c)

    assert clause(said["behind"][0]).startswith(f"favours `{base}` on")
    assert clause(said["level"][0]).startswith("shows no difference on")
    assert clause(said["ahead"][0]).startswith(f"favours `{arm}` on")
    for block, page in said.values():
        assert favours in block and favours in page
    def primary_cell(block):  # the grammar rows follow their title row
        rows = block[block.index("| **grammar**"):].splitlines()
        return next(c for line in rows if line.startswith(f"| `{arm}`")
                    for c in line.split(" | ") if "†" in c).strip(" |")
    marks = [primary_cell(block) for block, _ in said.values()]
    mean = marks[0].split()[0]  # the arm's mean, the same in each: only the mark moves
    assert marks == [f"{mean} ▼ †", f"{mean} †", f"{mean} ▲ †"]
    assert said["behind"][0] != said["level"][0] != said["ahead"][0]


def test_flipping_a_secondary_cell_changes_the_ahead_sentence(committed):
    """A slack arm ahead on a non-primary metric is named in the verdict (no "never past it"),
    and drops out of it when its intervals on that metric hold zero at every rate."""
    res = json.loads(Path(ROOT, "results", "grammar", "score-test.json").read_text("utf-8"))
    arm = words.verdict_arms(res)[0]
    metric = next(m for m in res["metrics"] if words.directional(m) and m != res["primary"])
    ahead, _ = committed("grammar/score-test.json",
                         set_interval("differences", arm, "0.1", metric, (0.05, 0.15)))
    def all_level(doc):  # the arm's interval on the metric holds zero at every rate
        for rate in res["rates"]:
            set_interval("differences", arm, rate, metric, (-0.05, 0.05))(doc)
    level, _ = committed("grammar/score-test.json", all_level)
    clause = next(c for c in ahead.split("; ") if c.startswith(f"grammar, {metric}:")
                  or f"; grammar, {metric}:" in c)
    assert f"`{arm}`" in clause
    assert f"grammar, {metric}: `{arm}` at" not in level and ahead != level


def test_a_mark_whose_difference_is_not_the_means_difference_fails(committed):
    """The first screen shows the arms' means and marks them by the comparisons' intervals: a
    file in which the interval's difference is not the difference of those means stops the
    report (here the primary's mean difference moved by 0.05, its means left alone)."""
    res = json.loads(Path(ROOT, "results", "grammar", "score-test.json").read_text("utf-8"))
    p = res["primary_comparison"]
    def shifted(doc):
        entry = next(e for e in doc["differences"] if (e["name"], e["rate"], e["metric"])
                     == (p["arm"], p["rate"], res["primary"]))
        entry["mean_diff"] += 0.05
    with pytest.raises(AssertionError, match="the file's arms and differences disagree"):
        committed("grammar/score-test.json", shifted)


def test_whole_output_sentence_follows_means_and_seeds(committed):
    """The verdict's sentence on the whole output reads each measure's means and seeds: an arm's
    distinct valid share raised past the baseline's in every seed turns "lower" into "higher ...
    in every seed"; one seed moved back across the baseline's turns it to "not in every seed"."""
    res = json.loads(Path(ROOT, "results", "grammar", "score-test.json").read_text("utf-8"))
    arm, base = "ctc-random", res["baseline"]
    top = max(res["arms"][base]["0"]["whole_by_seed"]["distinct_valid"])
    def set_seeds(values):
        def change(doc):
            cell = doc["arms"][arm]["0"]
            cell["whole_by_seed"]["distinct_valid"] = values
            cell["whole"]["distinct_valid"] = sum(values) / len(values)
        return change
    sentence = f"`{arm}`'s length histogram"
    said = {}
    for name, values in (("apart", [top + 0.05] * 3),
                         ("mixed", [top + 0.2, top + 0.2, top - 0.05])):  # its mean still higher
        block, _ = committed("grammar/score-test.json", set_seeds(values))
        line = next(x for x in block.splitlines() if x.startswith("- The whole output at"))
        said[name] = re.search(r"share of distinct valid outputs is (\w+) \([^)]*; ([a-z ]+)\)",
                               line[line.index(sentence):]).groups()
    assert said == {"apart": ("higher", "in every seed"), "mixed": ("higher", "not in every seed")}


def test_recorded_facts_change_the_words(committed):
    """The declaration's timing comes from setup.json, and the convergence check from the
    continuation's numbers: each changed, its sentence changes."""
    def declared(value):
        def change(doc):
            doc["primary_declared_before_test"] = value
        return change
    before, _ = committed("grammar/setup.json", declared(True))
    after, _ = committed("grammar/setup.json", declared(False))
    assert re.search(r"On [^.]*grammar[^.]* the primary comparison was declared before the test "
                     r"prompts", before)
    assert "declared after the test prompts had been decoded" in after

    def improve(doc):  # every arm's validation primary far better after the continuation
        for arm in doc["arms"].values():
            arm["0"]["summary"][doc["primary"]] += 0.5
    block, page = committed("grammar/val-score-more.json", improve)
    check = block[block.index("The convergence check"):].split("\n")[0]
    met, not_met = check.split("; not met ")
    assert "grammar" not in met and "grammar" in not_met, check
    assert "| met |" not in page[page.index("## The grammar task"):page.index("## The copy task")]


# ----------------------------------------------------------------------------------------------
# The placeholders of the standardised primary, the whole output, the arms, the second set and
# the pairing, on small score files written here: each reads its number from the file, and a
# number changed changes what it writes.


def rendered(results, text):
    """text rendered against the results folder in this process: (page, warnings)."""
    rs = report_module.Results(str(results))
    return report_module.render(text, rs, "t.md"), rs.warnings


def rerun_score(arms=("ce-ft", "ctc-random", "ctc+ce-random", "pretrained")):
    """A score-test.json as the rerun writes it: parses_std the primary, with its note and
    standardised field, the whole output per cell (coverage 0.8 for every arm, its seeds 0.7
    and 0.9), the data's, and paired intervals beside the published ones."""
    res = fake_score("parses_std", (0.1, 0.05, 0.15))
    cells = {a: res["arms"].get(a, res["arms"]["ctc-model"]) for a in arms}
    for a, by_rate in cells.items():
        cell = {**by_rate["0"], "whole": {"coverage": 0.8, "length_tv": 0.2},
                "whole_by_seed": {"coverage": [0.7, 0.9], "length_tv": [0.2, 0.2]}}
        cell["summary"] = {**cell["summary"], "parses": 0.9, "length": 20.0}
        cells[a] = {"0": cell, "0.01": json.loads(json.dumps(cell))}
    res["arms"] = cells
    res["reference"] = {"summary": {"parses_std": 1.0, "parses": 1.0, "length": 27.5},
                        "whole": {"coverage": 1.0, "length_tv": 0.0}}
    res["notes"] = ["Length bins: the data's quintiles.",
                    "parses_std: the share that parses, standardised to the data's lengths."]
    res["standardised"] = {"metric": "parses_std", "of": "parses", "length": "length"}
    res["differences"] = [e for e in res["differences"] if e["name"] in arms]
    for e in res["differences"]:  # the paired interval reads as the published one
        e.update(paired_lo=e["lo"], paired_hi=e["hi"])
    return res


def write_results(root, scores):
    """scores: {EXP/SCORE: score dict}: written as ROOT/EXP/SCORE.json."""
    for spec, res in scores.items():
        (root / spec).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{spec}.json").write_text(json.dumps(res), encoding="utf-8")


def test_whole_output_measures_are_read_from_the_file(tmp_path):
    """{{whole}}, {{table}} and {{value}} read a whole-output measure (cell["whole"], its seeds'
    sd from whole_by_seed) beside the per-prompt metrics, and the data's row from the reference;
    a measure changed in the file changes the page."""
    res = rerun_score()
    write_results(tmp_path, {"grammar/score-test": res})
    text = ("{{whole grammar/score-test 0 0.01 length coverage}}\n\n"
            "{{table grammar/score-test coverage}}\n\n"
            "{{value grammar/score-test ctc-random 0.01 coverage}}")
    page, warnings = rendered(tmp_path, text)
    assert not warnings, warnings
    assert "| the data |  | 27.500 | 1.000 |" in page
    assert "| ctc-random | 1% | 20.000 | 0.800 |" in page
    assert "| ctc-random | 0.800 ± 0.141 (2) |" in page  # the sd of the seeds 0.7 and 0.9
    assert "| true responses | 1.000 | 1.000 |" in page and page.endswith("0.800")
    res["arms"]["ctc-random"]["0.01"]["whole"]["coverage"] = 0.5
    write_results(tmp_path, {"grammar/score-test": res})
    changed, _ = rendered(tmp_path, text)
    assert "| ctc-random | 1% | 20.000 | 0.500 |" in changed and changed.endswith("0.500")
    with pytest.raises(words.ReportError, match="RATE and one KEY"):
        rendered(tmp_path, "{{whole grammar/score-test 0}}")


def test_arms_and_their_definitions_follow_the_files(tmp_path):
    """Only the arms that a file holds are defined, the baseline named; where the tasks train
    different arms, each task's are listed; an arm without a definition stops the report."""
    write_results(tmp_path, {
        "copy/score-test": rerun_score(("ce-ft", "ctc-random", "ctc-model", "pretrained")),
        "grammar/score-test": rerun_score(("ce-ft", "ctc-random", "pretrained"))})
    page, _ = rendered(tmp_path, "{{arms grammar}}. {{arms copy}}. {{armdefs}}")
    assert page.startswith("two arms: `ce-ft` and `ctc-random`. three arms: `ce-ft`, "
                           "`ctc-random` and `ctc-model`. `ce-ft`, CE with the slack at the tail")
    assert "(as LLaDA pads with EOS), the baseline; `ctc-random`, " in page
    assert page.endswith("(copy: all three; grammar: `ce-ft` and `ctc-random`)")
    assert "pretrained" not in page and "ctc+ce" not in page
    write_results(tmp_path, {"copy/score-test": rerun_score(("ce-ft", "ctc-random"))})
    page, _ = rendered(tmp_path, "{{armdefs}}")
    assert "ctc-model" not in page and "(copy" not in page  # the same arms: no list per task
    write_results(tmp_path, {"copy/score-test": rerun_score(("ce-ft", "ctc-new"))})
    with pytest.raises(words.ReportError, match="'ctc-new' has no definition"):
        rendered(tmp_path, "{{armdefs}}")


def test_the_grammar_section_names_no_arm_the_rerun_lacks():
    """The grammar section's prose names no model-placement arm: the CPU preset trains three
    arms, and its tables and sentences list the arms its files hold."""
    text = open(TEMPLATE, encoding="utf-8").read()
    section = text[text.index("## The grammar task"):text.index("## The copy task")]
    assert "ctc-model" not in section and "ctc+ce-model" not in section
    assert "{{arms grammar}}" in section and "{{armdefs}}" in text


def test_standardised_metric_and_the_decoders_rule_in_words(tmp_path):
    """{{standardised}} words the standardised metric from the file's own note and says whether
    it is the primary; {{note}} quotes a note; {{chosenby}} reads choice.json's rule."""
    res = rerun_score()
    write_results(tmp_path, {"grammar/score-test": res})
    (tmp_path / "grammar" / "choice.json").write_text(json.dumps(
        {"setting": "plain/1/16", "metric": "parses_std", "rates": ["0", "0.05"],
         "excluded": ["pretrained"]}), encoding="utf-8")
    text = ("{{standardised grammar/score-test}} {{note grammar/score-test Length bins:}} "
            "{{chosenby grammar}}")
    page, _ = rendered(tmp_path, text)
    assert page == ("`parses_std`, the primary metric, is the share that parses, standardised "
                    "to the data's lengths. Length bins: the data's quintiles. the best mean "
                    "parses_std over the fine-tunes (`pretrained` left out) at shift 0 and 5%")
    res["primary"] = "parses"
    write_results(tmp_path, {"grammar/score-test": res})
    page, _ = rendered(tmp_path, text)
    assert page.startswith("`parses_std`, beside the primary metric parses, is the share")
    res["notes"] = []
    write_results(tmp_path, {"grammar/score-test": res})
    page, warnings = rendered(tmp_path, text)
    assert page.startswith("n/a n/a") and len(warnings) == 2


def test_paired_intervals_and_examples_in_words(tmp_path):
    """{{paired}} counts the comparisons whose paired interval reads as the published one and
    names those that do not; {{examples}} says which scores have their per-prompt values."""
    res = rerun_score()
    write_results(tmp_path, {"grammar/score-test": res, "copy/score-test": fake_score(
        "exact", (0.1, 0.05, 0.15))})
    text = "{{paired */score-test 0 0.01}} {{examples}}"
    page, _ = rendered(tmp_path, text)
    assert page.startswith("On copy the file holds no paired interval; on grammar, parses_std, "
                           "the paired intervals read as the published ones in 2 of 2 "
                           "comparisons.")
    assert "`copy/score-test.json` and `grammar/score-test.json` were collected before" in page
    e = next(e for e in res["differences"] if (e["name"], e["rate"]) == ("ctc-random", "0"))
    e.update(paired_lo=0.01, paired_hi=0.2)  # the published one holds zero, the paired not
    write_results(tmp_path, {"grammar/score-test": res})
    (tmp_path / "grammar" / "score-test-examples.json").write_text("{}", encoding="utf-8")
    page, _ = rendered(tmp_path, text)
    assert ("in 1 of 2 comparisons: not for `ctc-random` at shift 0 (level published, ahead "
            "paired).") in page
    assert "every interval of `grammar/score-test.json` are committed beside it" in page
    assert "`copy/score-test.json` was collected before" in page


def test_second_set_and_declaration_in_words(tmp_path):
    """The second set of test prompts is named as such in the sentences; {{declared}} follows
    setup.json's primary_declared_before_test, true for one task and false for the other."""
    assert words.task_label("grammar/score-test-old") == "grammar, earlier test prompts"
    assert words.task_label("grammar/score-test") == "grammar"
    write_results(tmp_path, {"grammar/score-test": rerun_score(), "copy/score-test": rerun_score(),
                             "grammar/score-test-old": rerun_score()})
    (tmp_path / "grammar" / "setup.json").write_text(
        json.dumps({"primary_declared_before_test": True}), encoding="utf-8")
    (tmp_path / "copy" / "setup.json").write_text(json.dumps(
        {"primary_declared_before_test": False, "test_prompts_earlier_use": "the sweeps"}),
        encoding="utf-8")
    page, _ = rendered(tmp_path, "{{primaries grammar/score-test-old}} {{declared}} "
                                 "{{primary grammar score-test-old}}")
    assert page.startswith("The pre-declared primary comparison favours `ctc-random` on "
                           "grammar, earlier test prompts (`ctc-random` - `ce-ft`, parses_std")
    assert ("On copy the primary comparison was declared after the test prompts had been decoded "
            "and scored for the sweeps: those prompts were not unseen when it was chosen. On "
            "grammar the primary comparison was declared before the test prompts were first "
            "decoded.") in page
    assert page.endswith("parses_std at 1%: +0.100 [+0.050, +0.150] (`ctc-random` better)")
