"""The README's "Use the slack CTC in your own MDLM" snippet, run as a porter would: ctc_slack.py
copied alone into an empty folder, the snippet run there with a stand-in model, and its loss
checked against train.py's loss on the same batch."""
import os
import re
import shutil
import subprocess
import sys

import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a porter's code would have before the snippet: a batch of LLaDA-style SFT examples (prompt
# ids, responses padded with EOS) and some model that maps (B, T) ids to (B, T, V) logits.
PRELUDE = '''
import torch
torch.manual_seed(0)
B, T, V, EOS = 6, 24, 259, 256
model = torch.nn.Sequential(torch.nn.Embedding(V, 16), torch.nn.Linear(16, V))
gen = torch.Generator().manual_seed(1)
prompt_lengths = torch.tensor([3, 5, 4, 3, 6, 5])
prompt = torch.randint(0, 256, (B, 6), generator=gen)
responses = [torch.randint(0, 256, (n,), generator=gen).tolist() for n in (5, 12, 18, 1, 9, 14)]
R = T - prompt_lengths                      # response canvas lengths
U = R - (0.1 * R).round().long()            # target lengths: K = round(0.1 R) slacks per canvas
targets = torch.tensor([(r + [EOS] * T)[:int(U.max())] for r in responses])  # response, EOS, EOS...
'''

EPILOGUE = '''
torch.save({"z0": z0, "z_t": z_t, "t": t, "is_prompt": is_prompt, "loss": loss.detach(),
            "targets": targets, "U": U, "P": prompt_lengths, "state": model.state_dict()}, "out.pt")
'''


def readme_snippet():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Use the slack CTC in your own MDLM", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_snippet_is_short_and_uses_only_ctc_slack():
    code = readme_snippet()
    lines = [line for line in code.splitlines() if line.strip()]
    assert 10 <= len(lines) <= 25, len(lines)
    imports = {m for m in re.findall(r"^\s*(?:from|import) (\w+)", code, re.M)}
    assert imports <= {"torch", "ctc_slack"}, imports


def test_snippet_alone_equals_train_loss(tmp_path):
    shutil.copy(os.path.join(ROOT, "ctc_slack.py"), tmp_path / "ctc_slack.py")
    assert sorted(os.listdir(tmp_path)) == ["ctc_slack.py"]
    (tmp_path / "port.py").write_text(PRELUDE + readme_snippet() + EPILOGUE)
    # -E -s: no PYTHONPATH, no user site; the folder holds ctc_slack.py and nothing else of this project
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-E", "-s", "port.py"], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    model = torch.nn.Sequential(torch.nn.Embedding(259, 16), torch.nn.Linear(16, 259))
    model.load_state_dict(out["state"])
    b = {"z0": out["z0"], "z_t": out["z_t"], "t": out["t"], "keep": out["is_prompt"], "P": out["P"],
         "y": out["targets"], "U": out["U"]}
    assert (b["z_t"] == 258).any() and (b["z0"] == 257).any()  # masked, and slack in the canvas
    args = train.get_args(["--loss", "ctc", "--slack-rate", "0.1", "--seq-len", "24"])
    expect = train.compute_loss(model, b, args).mean()
    assert torch.allclose(out["loss"], expect, rtol=1e-5, atol=1e-6), (out["loss"], expect)
