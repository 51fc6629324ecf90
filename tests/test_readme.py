"""The README's commands, run as written at tiny sizes (later flags override earlier ones)."""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--device", "cpu"]
TINY = {
    "train.py": ["--steps", "2", "--seq-len", "96", "--batch-size", "4", "--eval-interval", "2", "--warmup", "1",
                 "--eval-batches", "1", "--sample-interval", "2", "--no-progress"],
    "train.py scratch": ["--n-layer", "1", "--n-head", "2", "--n-embd", "32"],
    "decode.py": ["--length", "16", "--steps", "4"],
    "evaluate.py bpb": ["--max-batches", "1", "--t-samples", "1", "--eval-batch-size", "2"],
    "evaluate.py compare": ["--num-prompts", "2", "--prompt-len", "8", "--length", "8", "--steps", "4",
                            "--gen-batch-size", "2", "--n-boot", "50", "--max-batches", "1",
                            "--eval-batch-size", "2", "--t-samples", "1"],
    "evaluate.py reproduce": ["--tiny"],
    "synthetic.py": ["--tiny"],
}


def readme_blocks():
    """Each ```bash block of the README as a list of python commands (argv lists)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        cmds = []
        for line in block.splitlines():
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv[:1] == ["python"] and argv[1:2] != ["-m"]:
                    cmds.append(argv[1:])
        blocks.append(cmds)
    return blocks


def tiny(argv):
    script = argv[0]
    extra = list(TINY.get(script, []))
    if script == "train.py" and "--init-from" not in argv:
        extra += TINY["train.py scratch"]
    if script == "evaluate.py":
        extra += TINY[f"evaluate.py {argv[1]}"]
    return [sys.executable, os.path.join(ROOT, script), *argv[1:], *extra, *SMALL]


def test_readme_has_the_commands():
    blocks = readme_blocks()
    scripts = {c[0] for b in blocks for c in b}
    assert {"train.py", "decode.py", "evaluate.py", "synthetic.py"} <= scripts
    assert blocks[0][0] == ["train.py"]  # the quickstart's main job: the default run


@pytest.mark.parametrize("block", range(len(readme_blocks())))
def test_readme_block_runs(block, tmp_path):
    for argv in readme_blocks()[block]:
        p = subprocess.run(tiny(argv), cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{' '.join(argv)}\n{p.stderr[-3000:]}"
