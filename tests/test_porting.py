"""The README's two porting snippets, run as a porter would: ctc_slack.py copied alone into an
empty folder, each snippet run there by itself as it stands (no prelude), the training loss
checked against the loss train.py computes on the same batch, and the decoded outputs checked to
be each canvas read from its own prompt through the collapse map, and to equal each prompt
decoded alone."""
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import mdlm

BEOS, BSLACK, BMASK = mdlm.special_ids(mdlm.BYTE_VOCAB_SIZE)  # the byte vocabulary
import ctc_slack
import objective

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
        want = ctc_slack.collapse_tokens(row[p:], BSLACK)  # the map, again, cut at EOS
        want = want[:want.index(BEOS)] if BEOS in want else want
        assert got == want and BSLACK not in got and BMASK not in got
    prompts = re.search(r"^prompts = (\[.*?\])  #", decode_code, re.M).group(1)
    for k, prompt in enumerate(eval(prompts)):  # each prompt alone, the same code otherwise
        alone = tmp_path / f"alone{k}"
        alone.mkdir()
        run_alone(alone, decode_code.replace(prompts, repr([prompt])) + SAVE_DECODE)
        single = torch.load(alone / "decode.pt", weights_only=True)
        assert single["outputs"][0] == out["outputs"][k], k
        assert torch.equal(single["canvas"][0], canvas[k])


# ----------------------------------------------------------------------------------------------
# The README's recipe ported onto a batch as LLaDA's SFT builds it


def llada_batch(seed=0, L=32):
    """An SFT batch in LLaDA's layout: rows of prompt, answer (ending in EOS) and EOS padding to
    L, the last answer filling its row; prompt_index (B, L) bool; p_mask (B, L), one t per row
    (LLaDA's forward process: p_mask = (1 - eps) t + eps); the noised rows; SUBS logits."""
    V, EOS, SLACK, MASK, eps = 40, 37, 38, 39, 1e-3
    gen = torch.Generator().manual_seed(seed)
    P, A = [4, 7, 3], [10, 20, 28]  # prompt and answer lengths: 3 + 28 + EOS = L
    ids = torch.full((3, L), EOS)
    for b, n in enumerate(p + a for p, a in zip(P, A)):
        ids[b, :n] = torch.randint(0, EOS, (n,), generator=gen)
    prompt_index = torch.arange(L) < torch.tensor(P)[:, None]
    t = torch.rand(3, generator=gen)
    p_mask = ((1 - eps) * t + eps)[:, None].expand(3, L)
    noisy = torch.where((torch.rand(3, L, generator=gen) < p_mask) & ~prompt_index, MASK, ids)
    logits = torch.randn(3, L, V, generator=gen, dtype=torch.float64)
    logits[..., MASK] = -math.inf  # SUBS on LLaDA's side: its CE would normalise over MASK too
    return dict(ids=ids, prompt_index=prompt_index, p_mask=p_mask, noisy=noisy, logits=logits,
                ids_=(EOS, SLACK, MASK))


def test_sft_layout_keeps_every_token_of_a_llada_row():
    """With K slacks the canvas grows past L instead of cutting the row's end: every token after
    the prompt (the answer, its EOS, the padding) is a target and sits in z0 in order, and each
    row holds K_b = slack_count(R_b, rate) slacks."""
    b = llada_batch()
    EOS, SLACK, MASK = b["ids_"]
    L = b["ids"].shape[1]
    P = b["prompt_index"].sum(1)
    for rate in (0.1, 0.25, 0.5):
        targets, U, T = ctc_slack.sft_layout(b["ids"], prompt_lengths=b["prompt_index"],
                                             rate=rate, eos_id=EOS)
        R = T - P
        assert T > L and torch.equal(U, R - ctc_slack.slack_count(R, rate))
        R1 = R - 1  # one position less: some row would lose a token, so T is the smallest
        assert (R1 - ctc_slack.slack_count(R1, rate) < L - P).any()
        resp = ctc_slack.place_slack(targets, target_lengths=U, canvas_lengths=R, slack_id=SLACK,
                                     generator=torch.Generator().manual_seed(0))
        z0, _ = ctc_slack.build_canvas(b["ids"], resp, prompt_lengths=P, canvas_length=T)
        for i in range(3):
            row = b["ids"][i, int(P[i]):].tolist()  # everything after the prompt, kept whole
            y = ctc_slack.collapse_tokens(z0[i, int(P[i]):], SLACK)
            assert y[:len(row)] == row and set(y[len(row):]) <= {EOS} and len(y) == int(U[i])
            assert z0[i, :int(P[i])].tolist() == b["ids"][i, :int(P[i])].tolist()


def test_at_k0_the_slack_ctc_is_llada_sft_ce():
    """At rate 0 the layout is LLaDA's rows themselves, and slack_ctc_term with
    weight = 1 / p_mask[:, 0] equals LLaDA's SFT loss computed by hand: the masked CE (SUBS),
    each divided by p_mask and by the row's answer length, summed and divided by B."""
    b = llada_batch()
    EOS, SLACK, MASK = b["ids_"]
    ids, noisy, logits, p_mask = b["ids"], b["noisy"], b["logits"], b["p_mask"]
    targets, U, T = ctc_slack.sft_layout(ids, prompt_lengths=b["prompt_index"], rate=0.0,
                                         eos_id=EOS)
    assert T == ids.shape[1]
    masked = noisy == MASK
    answer_lengths = (~b["prompt_index"]).sum(1, keepdim=True).expand_as(ids)  # (B, L)
    ce = torch.nn.functional.cross_entropy(logits[masked], ids[masked], reduction="none")
    want = (ce / p_mask[masked] / answer_lengths[masked]).sum() / len(ids)
    got = ctc_slack.slack_ctc_term(logits, noisy, targets, prompt_lengths=b["prompt_index"],
                                   target_lengths=U, weight=1 / p_mask[:, 0], slack_id=SLACK,
                                   mask_id=MASK, reduction="mean")
    torch.testing.assert_close(got, want)  # float64 logits: both in float64
    with pytest.raises(ValueError, match=r"1 / p_mask\[:, 0\]"):  # LLaDA's p_mask as is
        ctc_slack.slack_ctc_term(logits, noisy, targets, prompt_lengths=b["prompt_index"],
                                 target_lengths=U, weight=p_mask, slack_id=SLACK, mask_id=MASK)
