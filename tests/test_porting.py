"""The README's two porting snippets, run as a porter would: ctc_slack.py copied alone into an
empty folder, each snippet run there by itself as it stands (no prelude), the training loss
checked against the loss train.py computes on the same batch, and the decoded outputs checked to
be each canvas read from its own prompt through the collapse map, and to equal each prompt
decoded alone."""
import functools
import os
import re
import shutil
import subprocess
import sys

import torch

import mdlm

BEOS, BSLACK, BMASK = mdlm.special_ids(mdlm.BYTE_VOCAB_SIZE)  # the byte vocabulary
import objective
import sampling

# the output of a canvas row of the byte vocabulary
byte_output_ids = functools.partial(sampling.output_ids, vocab_size=mdlm.BYTE_VOCAB_SIZE)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SAVE = '''
torch.save({"z0": z0, "z_t": z_t, "t": t, "is_prompt": is_prompt, "loss": loss.detach(),
            "targets": targets, "U": U, "P": prompt_lengths, "state": model.state_dict()},
           "train.pt")
'''
SAVE_DECODE = '''
torch.save({"canvas": canvas, "outputs": outputs, "P": P}, "decode.pt")
'''


def readme_snippets():
    """The ```python blocks of the README's porting section: (training, decoding)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## Use the slack CTC in your own MDLM", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2, len(blocks)
    return blocks


def run_alone(tmp_path, code):
    """Run code in a folder that holds ctc_slack.py and nothing else of this project."""
    shutil.copy(os.path.join(ROOT, "ctc_slack.py"), tmp_path / "ctc_slack.py")
    (tmp_path / "port.py").write_text(code)
    # -E -s: no PYTHONPATH, no user site: only torch and the copied file can be imported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-E", "-s", "port.py"], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr


def test_snippets_are_short_and_use_only_torch_and_ctc_slack():
    for code in readme_snippets():
        lines = [line for line in code.splitlines() if line.strip()]
        assert 10 <= len(lines) <= 35, len(lines)
        imports = set(re.findall(r"^\s*(?:from|import) (\w+)", code, re.M))
        assert imports <= {"torch", "ctc_slack"}, imports


def test_training_snippet_alone_equals_the_training_loss(tmp_path):
    train_code, _ = readme_snippets()
    run_alone(tmp_path, train_code + SAVE)
    out = torch.load(tmp_path / "train.pt", weights_only=True)
    V = mdlm.BYTE_VOCAB_SIZE
    model = torch.nn.Sequential(torch.nn.Embedding(V, 32), torch.nn.Linear(32, V))
    model.load_state_dict(out["state"])
    b = {"z0": out["z0"], "z_t": out["z_t"], "t": out["t"], "is_prompt": out["is_prompt"],
         "P": out["P"], "y": out["targets"], "U": out["U"]}
    assert (b["z_t"] == BMASK).any() and (b["z0"] == BSLACK).any()  # masked, and slack
    obj = objective.Objective(seq_len=b["z0"].shape[1], vocab_size=mdlm.BYTE_VOCAB_SIZE, loss="ctc",
                              slack_rate=0.1)
    expect = objective.loss(model(b["z_t"]), b, obj).mean()
    assert torch.allclose(out["loss"], expect, rtol=1e-5, atol=1e-6), (out["loss"], expect)


def test_decoding_snippet_alone_reads_each_response_from_its_own_prompt(tmp_path):
    """The decoding block alone: every position filled, each output its row read from its own
    P_b through the collapse map and cut at EOS; and a batch of prompts of different lengths
    decodes each prompt as a batch of that prompt alone does (the padding of a short prompt is
    never read as prompt)."""
    _, decode_code = readme_snippets()
    run_alone(tmp_path, decode_code + SAVE_DECODE)
    out = torch.load(tmp_path / "decode.pt", weights_only=True)
    canvas, P = out["canvas"], out["P"]
    assert not (canvas == BMASK).any() and len(set(P.tolist())) > 1  # filled; ragged prompts
    for row, p, got in zip(canvas.tolist(), P.tolist(), out["outputs"]):
        want = byte_output_ids(row, p, collapse="surface", slack=True)  # the map, again
        assert got == want and BSLACK not in got and BMASK not in got
    prompts = re.search(r"^prompts = (\[.*?\])  #", decode_code, re.M).group(1)
    for k, prompt in enumerate(eval(prompts)):  # each prompt alone, the same code otherwise
        alone = tmp_path / f"alone{k}"
        alone.mkdir()
        run_alone(alone, decode_code.replace(prompts, repr([prompt])) + SAVE_DECODE)
        single = torch.load(alone / "decode.pt", weights_only=True)
        assert single["outputs"][0] == out["outputs"][k], k
        assert torch.equal(single["canvas"][0], canvas[k])
