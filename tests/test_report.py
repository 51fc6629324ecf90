"""runs/report.py: collect the toy outputs of the experiment scripts, render the results pages
from them with the real template, and check the placeholders, determinism, errors, the verdict's
reading rule, that the template's prose holds no number of its own, and that the committed
results/README.md is what its files render to."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "runs", "report.py")
TEMPLATE = os.path.join(ROOT, "runs", "report.md")
START, END = "<!-- verdict:start -->", "<!-- verdict:end -->"
EXPERIMENTS = ("grammar", "copy", "study", "bench")


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
    for name in ("grammar", "copy", "study-base", "study-long", "bench"):
        files = set(os.listdir(results / name))
        assert {"setup.json", "times.json"} <= files, name
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
    def arm(mean):
        cell = {"summary": {primary: mean}, "seed_sd": {primary: 0.01},
                "seeds": ["x@1", "x@2"], "realised_shift": 0.0}
        return {"0": cell, "0.01": cell}

    def entry(name, rate, ci):
        return {"name": name, "baseline": "ce-ft", "rate": rate, "metric": primary,
                **dict(zip(("mean_diff", "lo", "hi"), ci))}
    wide = (0.0, -1.0, 1.0)
    return {"task": "copy", "primary": primary, "metrics": [primary], "baseline": "ce-ft",
            "rates": ["0", "0.01"], "reference": None,
            "primary_comparison": {"arm": "ctc-random", "rate": "0.01"},
            "arms": {"ce-ft": arm(0.5), "ctc-random": arm(0.6), "ctc-model": arm(0.4),
                     "pretrained": arm(0.9)},
            "differences": [entry("ctc-random", "0.01", diff), entry("ctc-random", "0", wide),
                            entry("ctc-model", "0", wide), entry("ctc-model", "0.01", wide)],
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
    template.write_text("# page\n<!-- readme:start -->\n{{verdict 0.01}}\n<!-- readme:end -->\n")
    p = report("--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 0, p.stderr
    rows = [line.split(" | ") for line in readme.read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 4 * len(READINGS)  # a title, the baseline, two slack arms
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
