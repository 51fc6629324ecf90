"""Every entry point on every kind of vocabulary: bytes, the `words` tokenizer, a uint16 token
file of 5000 ids with no tokenizer, and a uint32 file of 70000 ids (more than uint16 holds).
Each gets pretraining (the MDLM and its AR judge), a CE and a CTC fine-tune, decode.py with and
without a prompt, evaluate.py bpb and score on the checkpoint's own corpus, and bench.py. Bits
per token are checked against the exact NELBO of a tiny case and against training's own
validation figure. Special ids come from the vocabulary, never from the byte vocabulary's."""
import json
import math

import numpy as np
import pytest
import torch

import bench
import common
import conftest
import data
import decode
import evaluate
import mdlm
import objective
import prepare
import train

TEXT = "the cat sees the ox. the ox sees a cat.\nmany mice hide. the cat runs!\n" * 60
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--seq-len", "16", "--batch-size", "4",
        "--eval-interval", "2", "--eval-batches", "1", "--sample-interval", "0", "--no-progress",
        "--device", "cpu", "--warmup", "1", "--steps", "2"]
VOCABS = ("bytes", "words", "uint16-5000", "uint32-70000")


def call(main, argv, capsys):
    """main(argv) in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main(list(argv)) or 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def token_stream(n_tokens, length, seed):
    """A learnable stream of ids over the whole vocabulary: short runs of steps modulo n."""
    rng = np.random.default_rng(seed)
    steps = rng.choice([1, 2, 3, n_tokens // 3], size=length)
    return np.cumsum(steps) % n_tokens


def make_corpus(kind, d):
    """(the --data flags of the corpus, its ordinary ids, a prompt as flags for decode.py)."""
    if kind == "bytes":
        (d / "text.txt").write_text(TEXT, encoding="utf-8")
        return ["--data", str(d / "text.txt")], 256, ["--prompt", "the cat"]
    if kind == "words":
        (d / "text.txt").write_text(TEXT, encoding="utf-8")
        assert prepare.main([str(d / "text.txt"), str(d / "c.bin"), "--tokenizer", "words"]) == 0
        n = json.loads((d / "c.json").read_text())["n_tokens"]
        return ["--data", str(d / "c.bin")], n, ["--prompt", "the cat"]
    n = 5000 if kind == "uint16-5000" else 70000
    ids = token_stream(n, 4000, seed=n)
    dtype = np.uint16 if n <= 1 << 16 else np.uint32
    ids.astype(dtype).tofile(d / "c.bin")
    if dtype == np.uint32:  # the metadata file names the vocabulary; the uint16 one has none
        (d / "c.json").write_text(json.dumps({"n_tokens": n, "dtype": "uint32"}))
        return ["--data", str(d / "c.bin")], n, ["--prompt-ids", "3", str(n - 1)]
    return ["--data", str(d / "c.bin"), "--vocab-size", str(n)], n, ["--prompt-ids", "7", "4999"]


@pytest.fixture(scope="module", params=VOCABS)
def run(request, tmp_path_factory):
    """The whole pipeline on one vocabulary: {name: path} of its checkpoints and files."""
    d = tmp_path_factory.mktemp(request.param)
    data_flags, n, prompt = make_corpus(request.param, d)
    ck = {k: d / k / "ckpt.pt" for k in ("pre", "ar", "ce", "ctc")}
    train.main([*TINY, *data_flags, "--out-dir", str(d / "pre")])
    train.main([*TINY, *data_flags, "--out-dir", str(d / "ar"), "--objective", "ar"])
    # a fine-tune reads the corpus with the checkpoint's vocabulary: no --vocab-size again
    fine = [*TINY, "--data", data_flags[1], "--init-from", str(ck["pre"]), "--prompt-len", "4",
            "--slack-rate", "0.2"]
    train.main([*fine, "--out-dir", str(d / "ce"), "--loss", "ce"])
    train.main([*fine, "--out-dir", str(d / "ctc"), "--loss", "ctc"])
    return {"dir": d, "n": n, "prompt": prompt, "data": data_flags, **ck}


def test_checkpoints_record_the_vocabulary_and_its_special_ids(run):
    for k in ("pre", "ar", "ce", "ctc"):
        ckpt = common.load_checkpoint(str(run[k]))
        assert ckpt["config"]["vocab_size"] == run["n"] + 3
        rec = ckpt["meta"]["vocab"]
        assert (rec["n_tokens"], rec["eos"], rec["slack"], rec["mask"]) == (
            run["n"], run["n"], run["n"] + 1, run["n"] + 2)
    assert common.load_checkpoint(str(run["ctc"]))["meta"]["slack"]


def test_decode_with_and_without_a_prompt(run, capsys):
    """Sampling needs no tokenizer: without one the output is ids, and they are ordinary ids."""
    for prompt in ([], run["prompt"]):
        code, out, err = call(decode.main, ["--ckpt", str(run["ctc"]), "--length", "8",
                                            "--steps", "8", "--json", *prompt], capsys)
        assert code == 0, err
        ids = json.loads(out)["ids"]
        assert all(0 <= i < run["n"] for i in ids)


def test_bpb_reads_the_checkpoints_own_corpus(run, capsys):
    """No --data, no --vocab-size: each checkpoint is scored on the corpus it trained on, in
    its own vocabulary; the MDLM's figure is its NELBO (far from 0 for a barely trained model,
    and no lower than the AR's exact bits by more than noise allows)."""
    code, out, err = call(evaluate.main, ["bpb", "--ckpts", str(run["pre"]), str(run["ar"]),
                                          "--device", "cpu"], capsys)
    assert code == 0, err
    figures = [float(line.split(": ")[1].split()[0]) for line in out.splitlines()]
    unit = "byte" if run["n"] == 256 else "token"
    assert len(figures) == 2 and f"bits per {unit}" in out
    assert all(f > 0.5 * math.log2(run["n"]) for f in figures), figures


def test_bpb_agrees_with_trainings_validation(tmp_path):
    """evaluate.py bpb and train.py's validation estimate the same NELBO on the same held-out
    split (of a 5000-id token file), with the same model (the EMA weights), from different draws:
    their figures agree within four standard errors of the difference (the 1/t weight makes one
    draw noisy). Training's error is bpb's per-sample spread over training's number of samples
    (128 batches of 4 windows, one draw of t each)."""
    data_flags, n, _ = make_corpus("uint16-5000", tmp_path)
    train.main([*TINY, *data_flags, "--out-dir", str(tmp_path / "pre"), "--eval-batches", "128"])
    log = [json.loads(line) for line in open(tmp_path / "pre" / "log.jsonl")]
    val_bits = [r["val_bits"] for r in log if "val_bits" in r][-1]
    ckpt = common.load_checkpoint(str(tmp_path / "pre" / "ckpt.pt"))
    _, val, _ = data.load_corpus(data_flags[1], n_tokens=n)
    bpb, se = evaluate.bits_per_token(common.model_from_checkpoint(ckpt),
                                       common.checkpoint_meta(ckpt), val, 16, 32, t_samples=64)
    se_val = se * math.sqrt((len(val) // 16) * 64 / (128 * 4))  # bpb: windows x draws
    assert abs(bpb - val_bits) < 4 * math.hypot(se, se_val), (bpb, val_bits, se, se_val)
    assert 4 * math.hypot(se, se_val) < 0.25 * bpb  # tight enough to see a wrong mask id


def test_score_and_bench(run, capsys):
    d, n = run["dir"], run["n"]
    extra = ["--vocab-size", str(n)] if "--vocab-size" in run["data"] else []
    code, err = conftest.run_main(evaluate.main, [
        "task", "text", "--data", run["data"][1], *extra, "--out-dir", str(d / "task"),
        "--n-test", "4", "--prompt-len", "4", "--length", "8"], capsys)
    assert code == 0, err
    for arm in ("ce", "ctc"):
        code, err = conftest.run_main(decode.main, [
            "--ckpt", str(run[arm]), "--prompts", str(d / "task" / "test.jsonl"),
            "--out", str(d / "gens" / f"{arm}.jsonl"), "--length", "8", "--steps", "8",
            "--no-progress"], capsys)
        assert code == 0, err
    code, err = conftest.run_main(evaluate.main, [
        "score", "--task", "text", "--refs", str(d / "task" / "test.jsonl"), "--gens",
        f"ce={d / 'gens' / 'ce.jsonl'}", f"ctc={d / 'gens' / 'ctc.jsonl'}", "--judge",
        str(run["ar"]), "--n-boot", "20", "--device", "cpu", "--out-dir", str(d / "eval")],
        capsys)
    assert code == 0, err
    res = json.loads((d / "eval" / "results.json").read_text())
    assert set(res["arms"]) == {"ce", "ctc"}
    assert math.isfinite(res["arms"]["ctc"]["0"]["summary"]["judge_nll"])
    for argv in (["train", "--tiny", "--vocab-size", str(n)],
                 ["ctc", "--tiny", "--vocab-size", str(n)],
                 ["cache", "--tiny", "--ckpt", str(run["ctc"]),
                  *(run["prompt"] if run["prompt"][0] == "--prompt" else [])]):
        code, out, err = call(bench.main, [*argv, "--device", "cpu"], capsys)
        assert code == 0, err
    assert "identical canvases: True" in out


def exact_nelbo_bits(model, x):
    """The NELBO of the linear schedule in bits per token, exactly, for a short window x (T,):
    with w(t) = 1/t and each position masked with probability t,
        E_t[w(t) E_M sum_{i in M} -log p(x_i | x with M masked)] / T
        = sum_{M nonempty} B(|M|, T - |M| + 1) L(M) / T,
    as int_0^1 t^(m-1) (1 - t)^(T-m) dt = B(m, T - m + 1), the Beta function; every one of the
    2^T masks is scored."""
    T, mask = len(x), mdlm.special_ids(model.cfg.vocab_size)[2]
    total = 0.0
    with torch.no_grad():
        for bits in range(1, 2 ** T):
            M = torch.tensor([(bits >> i) & 1 for i in range(T)], dtype=torch.bool)
            z = torch.where(M, mask, x)[None]
            logp = mdlm.subs_log_probs(model(z), z, allow_slack=False)[0]  # (T, V)
            loss = -logp[M.nonzero()[:, 0], x[M]].sum().item()
            m = int(M.sum())
            total += math.exp(math.lgamma(m) + math.lgamma(T - m + 1) - math.lgamma(T + 1)) * loss
    return total / T / math.log(2)


def test_bpb_is_the_exact_nelbo_of_a_token_model():
    """A 5000-id model whose predictions depend on the canvas (unit-variance weights): the
    Monte-Carlo bits per token of evaluate.py bpb equal the NELBO computed over every mask."""
    n, T = 5000, 6
    model = conftest.tiny_model(seq_len=T, vocab_size=n + 3, sharp=True)
    windows = token_stream(n, 2 * T, seed=1).reshape(2, T)
    exact = np.mean([exact_nelbo_bits(model, torch.from_numpy(w)) for w in windows])
    val = np.tile(windows.reshape(-1), 256)  # each window 256 times: many draws in few calls
    meta = {"objective": "mdlm", "schedule": "linear"}
    mc, se = evaluate.bits_per_token(model, meta, val, T, batch_size=512, t_samples=8, seed=0)
    assert abs(mc - exact) < 4 * se and se < 0.02 * exact, (mc, exact, se)
    assert exact > 1.0  # far from the 0.0 a MASK id of the byte vocabulary would give
