"""The README's commands, run as written at tiny sizes (later flags override earlier ones), each
through its script's main() in this process (as a user runs it, minus the interpreter start)."""
import importlib
import os
import re
import shlex

import pytest

import conftest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--device", "cpu"]
TINY = {
    "train.py": ["--steps", "2", "--seq-len", "96", "--batch-size", "4", "--eval-interval", "2",
                 "--warmup", "1", "--eval-batches", "1", "--sample-interval", "2",
                 "--no-progress"],
    "train.py scratch": ["--n-layer", "1", "--n-head", "2", "--n-embd", "32"],
    "decode.py": ["--length", "16", "--steps", "4", "--no-progress"],
    "evaluate.py bpb": ["--max-batches", "1", "--t-samples", "1", "--eval-batch-size", "2"],
    "evaluate.py task": ["--n-test", "2", "--prompt-len", "8", "--length", "16"],
    "evaluate.py score": ["--n-boot", "50"],
    "evaluate.py curves": [],
    "prepare.py": [],
}
NO_DEVICE_FLAG = {"evaluate.py task", "evaluate.py curves", "prepare.py"}
# the text prepare.py tokenizes: enough words for a 96-token window in both splits
CORPUS = "The list type is a mutable sequence; a tuple is not. " * 400


def readme_blocks():
    """Each ```bash block of the README as a list of python commands (argv lists)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        cmds = []
        for line in block.replace("\\\n", " ").splitlines():  # continued lines join
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv[:1] == ["python"] and argv[1:2] != ["-m"]:
                    cmds.append(argv[1:])
        blocks.append(cmds)
    return blocks


def tiny(argv):
    """The command's arguments at toy sizes: the script's TINY flags after the README's."""
    script = argv[0]
    key = f"{script} {argv[1]}" if script == "evaluate.py" else script
    extra = list(TINY.get(key, []))
    if script == "train.py" and "--init-from" not in argv:
        extra += TINY["train.py scratch"]
    if key not in NO_DEVICE_FLAG:
        extra += SMALL
    return [*argv[1:], *extra]


def test_readme_has_the_commands():
    blocks = readme_blocks()
    scripts = {c[0] for b in blocks for c in b}
    assert {"train.py", "decode.py", "evaluate.py", "prepare.py"} <= scripts
    assert blocks[0][0] == ["train.py"]  # the quickstart's main job: the default run


@pytest.mark.parametrize("block", range(len(readme_blocks())))
def test_readme_block_runs(block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the commands' relative paths land here
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    for argv in readme_blocks()[block]:
        main = importlib.import_module(argv[0][:-3]).main  # the script's own entry point
        code, err = conftest.run_main(main, tiny(argv), capsys)
        assert code == 0, f"{' '.join(argv)}\n{err[-3000:]}"
