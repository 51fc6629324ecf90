"""The house's readability rules, measured: every Python file of the project at most 500 non-blank
lines, at least one comment or docstring line for every two lines of code, lines under 110
characters; the two leaves import only torch; entry points import only the leaves and data.py; no
file cites a document that is not in the repository."""
import ast
import io
import os
import re
import tokenize

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAVES = ("mdlm.py", "ctc_slack.py")
SHARED = ("data.py",)
ENTRY_POINTS = ("train.py", "decode.py", "evaluate.py", "bench.py")
FILES = LEAVES + SHARED + ENTRY_POINTS


def line_kinds(path):
    """(explained lines, code lines) of a Python file; blank lines count as neither. Explained:
    docstring lines (string expression statements), comment lines, and code lines that carry a
    trailing comment. Code: every non-blank line that is not a docstring or a comment line (so a
    line with a trailing comment counts on both sides)."""
    src = open(path, encoding="utf-8").read()
    doc = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            doc.update(range(node.lineno, node.end_lineno + 1))
    toks = [t for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT]
    alone = {t.start[0] for t in toks if t.line.strip().startswith("#")}
    trailing = {t.start[0] for t in toks} - alone
    lines = src.splitlines()
    non_blank = {n for n, line in enumerate(lines, 1) if line.strip()}
    code = non_blank - doc - alone
    return len((doc & non_blank) | alone | trailing), len(code)


@pytest.mark.parametrize("name", FILES)
def test_size_comments_and_line_length(name):
    path = os.path.join(ROOT, name)
    explained, code = line_kinds(path)
    non_blank = sum(1 for line in open(path, encoding="utf-8") if line.strip())
    assert non_blank <= 500, f"{name}: {non_blank} non-blank lines"
    assert explained >= 0.5 * code, f"{name}: {explained} comment/docstring lines for {code} code lines"
    long = [n for n, line in enumerate(open(path, encoding="utf-8"), 1) if len(line.rstrip("\n")) > 110]
    assert not long, f"{name}: lines over 110 characters: {long}"


@pytest.mark.parametrize("name", FILES)
def test_imports_follow_the_house_rule(name):
    tree = ast.parse(open(os.path.join(ROOT, name), encoding="utf-8").read())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    project = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    ours = mods & project
    if name in LEAVES:  # copyable alone: torch and the standard library, nothing of ours
        assert not ours and not mods & {"numpy", "tqdm"}, (name, mods)
    elif name in SHARED:
        assert ours <= {"mdlm"}, (name, ours)
    else:
        assert ours <= {"mdlm", "ctc_slack", "data"}, (name, ours)


def test_nothing_cites_files_outside_the_repo():
    names = [f for f in os.listdir(ROOT) if f.endswith((".py", ".md"))]
    names += [os.path.join("tests", f) for f in os.listdir(os.path.join(ROOT, "tests")) if f.endswith(".py")]
    names += [os.path.join("runs", f) for f in os.listdir(os.path.join(ROOT, "runs"))]
    for name in names:
        text = open(os.path.join(ROOT, name), encoding="utf-8").read()
        assert not re.search(r"METHOD\.md|STYLE\.md|\.\./shared", text), name
