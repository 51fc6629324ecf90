"""runs/report.py: collect the toy outputs of runs/grammar.sh and runs/copy.sh, render the results
pages from them with the real template, and check the placeholders, determinism, errors and the
verdict's reading rule; and that the committed results/README.md is what its files render to."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "runs", "report.py")
TEMPLATE = os.path.join(ROOT, "runs", "report.md")
START, END = "<!-- verdict:start -->", "<!-- verdict:end -->"


def report(*args):
    """python runs/report.py ARGS from the project root."""
    return subprocess.run([sys.executable, REPORT, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def exp(tiny_exp, tmp_path_factory):
    """A folder with grammar/ and copy/: links to the session's toy runs of the two scripts
    (conftest.tiny_exp), which no test here changes."""
    out = tmp_path_factory.mktemp("exp")
    for task in ("grammar", "copy"):
        os.symlink(tiny_exp / task, out / task)
    return out


def readme_copy(path):
    """A copy of the project's README at path, given verdict markers if it has none yet; returns
    its text."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    if START not in text:
        head, rest = text.split("\n\n", 1)  # after the title line
        text = f"{head}\n\n{START}\nstale\n{END}\n\n{rest}"
    path.write_text(text, encoding="utf-8")
    return text


def outside_block(text):
    """The README without what lies between the verdict markers."""
    return text[:text.index(START)] + text[text.index(END):]


def test_collect_and_render_the_toy_experiments(exp, tmp_path):
    """--collect then render with the real template: every placeholder is filled without a
    warning, the tables are there, the README block is replaced and the rest of the README kept,
    and the collected score files hold no per-prompt values."""
    results, readme = tmp_path / "results", tmp_path / "README.md"
    before = readme_copy(readme)
    p = report("--collect", exp, "--results", results, "--template", TEMPLATE, "--readme", readme)
    assert p.returncode == 0, p.stderr
    assert "warning:" not in p.stderr, p.stderr  # the template names only what the scripts make
    page = (results / "README.md").read_text(encoding="utf-8")
    assert "{{" not in page and "}}" not in page and "readme:start" not in page
    for header in ("| exact \\ rate | shift 0 | 1% | 2% | 5% | 10% |", "| parses \\ setting |",
                   "| val_bits \\ step | 0 | 3 | 6 |", "**difference in degradation**",
                   "| L | texts | data |",
                   "| realised shift (ce-ft) |", "| true responses |"):
        assert header in page, header
    after = readme.read_text(encoding="utf-8")
    assert outside_block(after) == outside_block(before)
    block = after[after.index(START):after.index(END)]
    assert "{{" not in block and "(results/README.md)" in block and "stale" not in block
    assert "| copy | exact (higher is better) |" in block
    assert "| grammar | parses (higher is better) |" in block
    for task, scores in (("grammar", {"val-score", "val-score-ancestral", "score-auto",
                                      "score-rates"}),
                         ("copy", {"score-auto", "score-rules"})):
        files = set(os.listdir(results / task))
        assert {f"{s}.json" for s in scores} | {f"{s}.svg" for s in scores} <= files
        assert {"setup.json", "task.json", "times.json", "curves.json",
                "curves-val_bits.svg"} <= files
        for s in scores:
            text = (results / task / f"{s}.json").read_text(encoding="utf-8")
            assert "per_example" not in text and "prompt_indices" not in text
        times = json.loads((results / task / "times.json").read_text(encoding="utf-8"))
        stages = {d for d in os.listdir(exp / task) if os.path.isfile(exp / task / d / "DONE")}
        assert set(times) == stages and all(isinstance(t, int) for t in times.values())


def test_placeholders_match_the_experiment_files(exp, tmp_path):
    """value, valuesd, ref, ci, count and time give the numbers of the experiment's own files."""
    results, readme, template = tmp_path / "results", tmp_path / "README.md", tmp_path / "t.md"
    readme_copy(readme)
    template.write_text("{{value copy/score-auto ctc-random 0.1 cer}}\n"
                        "{{valuesd copy/score-auto ctc-random 0.1 cer}}\n"
                        "{{ref copy/score-auto cer}}\n"
                        "{{ci copy/score-auto differences ctc-random 0.1 cer}}\n"
                        "{{count copy n_test}}\n{{time copy pretrained}}\n", encoding="utf-8")
    p = report("--collect", exp, "--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 0, p.stderr
    lines = (results / "README.md").read_text(encoding="utf-8").strip().splitlines()[-6:]
    res = json.loads((exp / "copy" / "score-auto" / "results.json").read_text("utf-8"))
    cell = res["arms"]["ctc-random"]["0.1"]
    mean, sd = cell["summary"]["cer"], cell["seed_sd"]["cer"]
    ci = next(d for d in res["differences"]
              if (d["name"], d["rate"], d["metric"]) == ("ctc-random", "0.1", "cer"))
    sign = lambda x: f"{x:+.3f}".replace("-0.000", "+0.000")  # noqa: E731
    task = json.loads((exp / "copy" / "task" / "task.json").read_text("utf-8"))
    seconds = int((exp / "copy" / "pretrained" / "DONE").read_text())
    assert lines == [f"{mean:.3f}", f"{mean:.3f} ± {sd:.3f}",
                     f"{res['reference']['summary']['cer']:.3f}",
                     f"{sign(ci['mean_diff'])} [{sign(ci['lo'])}, {sign(ci['hi'])}]",
                     str(task["n_test"]),
                     f"{seconds} s" if seconds < 60 else f"{int(seconds / 60 + 0.5)} min"]


def test_rendering_is_deterministic_and_reads_only_results(exp, tmp_path):
    """Rendering twice gives byte-identical pages, and so does rendering after the experiment
    folders are deleted: the pages depend on results/ and the template alone."""
    own = tmp_path / "exp"
    shutil.copytree(exp, own)  # a copy to delete: the module's folders serve the other tests
    results, readme = tmp_path / "results", tmp_path / "README.md"
    readme_copy(readme)
    assert report("--collect", own, "--results", results, "--readme", readme).returncode == 0
    first = ((results / "README.md").read_bytes(), readme.read_bytes())
    p = report("--results", results, "--readme", readme)
    assert p.returncode == 0 and "up to date" in p.stdout
    assert ((results / "README.md").read_bytes(), readme.read_bytes()) == first
    shutil.rmtree(own)
    assert report("--results", results, "--readme", readme).returncode == 0
    assert ((results / "README.md").read_bytes(), readme.read_bytes()) == first


def fake_score(primary, diff, did):
    """A minimal score-auto.json: ce-ft (baseline) 0.5, ctc-random 0.6, ctc-model 0.4 and
    pretrained 0.9 at rates 0 and 0.1, two seeds each. The best arm (ctc-random, or ctc-model for
    the lower-is-better cer) has the intervals diff (at 0) and did (difference in degradation at
    0.1); the other's hold 0."""
    def arm(mean):
        cell = {"summary": {primary: mean}, "seed_sd": {primary: 0.01},
                "seeds": ["x@1", "x@2"], "realised_shift": 0.0}
        return {"0": cell, "0.1": cell}

    def entry(name, rate, ci):
        return {"name": name, "baseline": "ce-ft", "rate": rate, "metric": primary,
                **dict(zip(("mean_diff", "lo", "hi"), ci))}
    best, other = ("ctc-model", "ctc-random") if primary == "cer" else ("ctc-random", "ctc-model")
    wide = (0.0, -1.0, 1.0)
    return {"task": "copy", "primary": primary, "metrics": [primary], "baseline": "ce-ft",
            "rates": ["0", "0.1"], "reference": None,
            "arms": {"ce-ft": arm(0.5), "ctc-random": arm(0.6), "ctc-model": arm(0.4),
                     "pretrained": arm(0.9)},
            "differences": [entry(best, "0", diff), entry(other, "0", wide)],
            "diff_in_diff": [entry(best, "0.1", did), entry(other, "0.1", wide)]}


READINGS = {  # experiment: (primary metric, diff at 0, diff in degradation, the reading)
    "a-above": ("exact", (0.1, 0.05, 0.15), (0.2, 0.1, 0.3),
                "CTC better at shift 0; degrades less under the probe"),
    "b-below": ("parses", (-0.1, -0.15, -0.05), (-0.2, -0.3, -0.1),
                "CE better at shift 0; degrades more under the probe"),
    "c-holds-0": ("exact", (0.1, 0.0, 0.2), (0.0, -0.1, 0.1),
                  "no difference at shift 0; same under the probe"),
    "d-lower-is-better": ("cer", (-0.1, -0.15, -0.05), (0.1, 0.05, 0.15),
                          "CTC better at shift 0; degrades more under the probe"),
}


def test_verdict_reading_rule(tmp_path):
    """The reading comes from the intervals alone: above 0 / below 0 / holding 0 (an end at 0
    holds it), mirrored for a lower-is-better metric; every arm but "pretrained" has a row, the
    best by mean first (for cer the lowest)."""
    results, readme, template = tmp_path / "results", tmp_path / "README.md", tmp_path / "t.md"
    for name, (metric, diff, did, _) in READINGS.items():
        (results / name).mkdir(parents=True)
        (results / name / "score-auto.json").write_text(json.dumps(fake_score(metric, diff, did)))
    (results / "no-score").mkdir()  # an experiment without score-auto.json has no row
    readme.write_text(f"# t\n\n{START}\n{END}\n\nrest\n", encoding="utf-8")
    template.write_text("# page\n<!-- readme:start -->\n{{verdict}}\n<!-- readme:end -->\n")
    p = report("--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 0, p.stderr
    rows = [line.split(" | ") for line in readme.read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and "---" not in line][1:]
    # two rows per experiment: the best arm first, with the task's cells; then the other arm
    assert [r[0][2:] for r in rows] == [x for name in sorted(READINGS) for x in (name, "")]
    for row, other in zip(rows[::2], rows[1::2]):
        metric, diff, _, want = READINGS[row[0][2:]]
        assert row[-1] == want + " |", row
        best, rest = ("ctc-model 0.400", "ctc-random 0.600") if metric == "cer" else (
            "ctc-random 0.600", "ctc-model 0.400")
        assert row[2] == "ce-ft 0.500 ± 0.010" and row[3] == best + " ± 0.010", row
        assert other[1:3] == ["", ""] and other[3] == rest + " ± 0.010", other
        assert other[-1] == "no difference at shift 0; same under the probe |", other
    assert "+0.100 [+0.050, +0.150]" in rows[0][4] and rows[0][5].endswith(" at 10%")
    assert (results / "README.md").read_text(encoding="utf-8").strip().endswith("# page")


def test_unknown_placeholder_is_an_error(tmp_path):
    """An unknown placeholder stops the run: exit status 1, one error: line naming it and its
    line, and no page written."""
    results, readme, template = tmp_path / "results", tmp_path / "README.md", tmp_path / "t.md"
    results.mkdir()
    readme.write_text("# t\n", encoding="utf-8")
    template.write_text("# page\n\n{{tabel grammar/score-auto parses}}\n", encoding="utf-8")
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
    template.write_text("{{ref copy/score-auto exact}}\n", encoding="utf-8")
    p = report("--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1
    assert "score-auto.json" in p.stderr
    template.write_text("x\n<!-- readme:start -->\ny\n<!-- readme:end -->\n", encoding="utf-8")
    p = report("--results", results, "--template", template, "--readme", readme)
    assert p.returncode == 0 and "left unchanged" in p.stdout
    assert readme.read_text(encoding="utf-8") == "# t\n\nno markers\n"


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
