"""Token files from any tokenizer (prepare.py, data.py): a tiny tokenized corpus written here, a
model trained on it whose checkpoint records the vocabulary and its special ids, decoding with
and without the tokenizer, SFT records as ids, and one clear message for every bad token file."""
import json
import os

import numpy as np
import pytest
import torch

import common
import data
import decode
import evaluate
import mdlm
import objective
import prepare
import train

TEXT = "the cat sees the ox. the ox sees a cat.\nmany mice hide. the cat runs!\n" * 40
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--seq-len", "16", "--batch-size", "4",
        "--eval-interval", "3", "--eval-batches", "1", "--sample-interval", "3", "--no-progress",
        "--device", "cpu", "--warmup", "1", "--steps", "3"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    (d / "text.txt").write_text(TEXT, encoding="utf-8")
    assert prepare.main([str(d / "text.txt"), str(d / "corpus.bin"), "--tokenizer", "words"]) == 0
    return d


def test_prepare_writes_ids_and_their_vocabulary(corpus):
    meta = json.loads((corpus / "corpus.json").read_text())
    ids = np.fromfile(corpus / "corpus.bin", dtype=np.uint16)
    assert meta["dtype"] == "uint16" and meta["n_ids"] == len(ids) and meta["tokenizer"] == "words"
    n = meta["n_tokens"]
    assert n == len(meta["words"]) == len(set(data.WORD_PIECES.findall(TEXT)))
    assert (meta["eos"], meta["slack"], meta["mask"]) == (n, n + 1, n + 2)  # after the ordinary ids
    assert "".join(meta["words"][i] for i in ids) == TEXT  # the pieces join back to the text
    train_ids, val_ids, vocab = data.load_corpus(str(corpus / "corpus.bin"))
    assert vocab.n_tokens == n and vocab.size == n + 3 and len(train_ids) + len(val_ids) == len(ids)
    assert vocab.decode(vocab.encode("the cat runs!")) == "the cat runs!"


def test_train_decode_and_bpb_on_a_token_file(corpus, tmp_path, capsys):
    out = str(tmp_path / "m")
    train.main(["--data", str(corpus / "corpus.bin"), "--out-dir", out, *TINY])
    ckpt = common.load_checkpoint(os.path.join(out, "ckpt.pt"))
    vocab = data.vocab_of(ckpt)
    assert ckpt["config"]["vocab_size"] == vocab.size and vocab.tokenizer == "words"
    assert ckpt["meta"]["vocab"]["mask"] == vocab.size - 1  # the special ids, on record
    capsys.readouterr()
    # decoding needs no vocabulary flag: text in and out through the recorded tokenizer
    assert decode.main(["--ckpt", os.path.join(out, "ckpt.pt"), "--prompt", "the cat", "--length",
                        "6", "--steps", "6", "--device", "cpu", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert isinstance(rec["text"], str) and all(0 <= i < vocab.n_tokens for i in rec["ids"])
    assert decode.main(["--ckpt", os.path.join(out, "ckpt.pt"), "--prompt-ids", "0", "1",
                        "--length", "4", "--steps", "4", "--device", "cpu"]) == 0
    assert decode.main(["--ckpt", os.path.join(out, "ckpt.pt"), "--prompt", "the zebra",
                        "--device", "cpu"]) == 1  # a word the vocabulary lacks: one message
    assert "outside the" in capsys.readouterr().err


def test_a_token_model_without_its_tokenizer_prints_ids(corpus, tmp_path, capsys):
    """A nanoGPT-style file with no metadata: --vocab-size names the vocabulary, the model is ids
    only, and decoding takes and prints ids."""
    ids = np.fromfile(corpus / "corpus.bin", dtype=np.uint16)
    ids.tofile(tmp_path / "plain.bin")
    n = int(ids.max()) + 1
    out = str(tmp_path / "m")
    train.main(["--data", str(tmp_path / "plain.bin"), "--vocab-size", str(n), "--out-dir", out,
                *TINY])
    vocab = data.vocab_of(common.load_checkpoint(os.path.join(out, "ckpt.pt")))
    assert vocab == data.Vocab(n, "none")
    capsys.readouterr()
    assert decode.main(["--ckpt", os.path.join(out, "ckpt.pt"), "--prompt-ids", "3", "--length",
                        "4", "--steps", "4", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert printed and all(0 <= int(i) < n for i in printed)
    assert decode.main(["--ckpt", os.path.join(out, "ckpt.pt"), "--prompt", "the cat",
                        "--device", "cpu"]) == 1
    assert "give token ids instead" in capsys.readouterr().err


def test_sft_records_as_ids(corpus, tmp_path):
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"prompt": "the cat", "response": " sees the ox."}) + "\n")
    assert prepare.main(["--sft", str(sft), str(tmp_path / "ids.jsonl"), "--vocab",
                         str(corpus / "corpus.bin")]) == 0
    vocab, _ = data.token_file_vocab(str(corpus / "corpus.bin"))
    recs = data.read_sft(str(tmp_path / "ids.jsonl"), vocab)
    assert recs == data.read_sft(str(sft), vocab)  # ids or text: the same examples
    assert recs[0][1][-1] == vocab.specials[0]  # the response ends in this vocabulary's EOS
    (tmp_path / "bad.jsonl").write_text('{"prompt_ids": [1], "response_ids": [99999]}\n')
    with pytest.raises(common.UserError, match="outside the vocabulary"):
        data.read_sft(str(tmp_path / "bad.jsonl"), vocab)


def write(path, ids, dtype, meta=None):
    np.asarray(ids, dtype=dtype).tofile(path)
    if meta is not None:
        (path.parent / (path.stem + ".json")).write_text(json.dumps(meta))
    return str(path)


@pytest.mark.parametrize("case,message", [
    ("out of range", "id 70 is outside the vocabulary of 50"),
    ("odd size", "not a positive multiple of 2"),
    ("no vocabulary", "needs its vocabulary"),
    ("bad meta", "need a JSON object with an integer 'n_tokens'"),
    ("bad dtype", "dtype 'int8' is not one of"),
    ("too big for the dtype", "do not fit the file's dtype uint16"),
    ("contradiction", "contradicts"),
    ("empty", "not a positive multiple"),
])
def test_every_bad_token_file_is_one_message(tmp_path, capsys, case, message):
    f = tmp_path / "t.bin"
    ids, extra = list(range(50)) * 20, []
    if case == "out of range":
        path = write(f, ids + [70], "uint16", {"n_tokens": 50, "dtype": "uint16"})
    elif case == "odd size":
        path = write(f, ids, "uint16", {"n_tokens": 50, "dtype": "uint16"})
        with open(path, "ab") as g:
            g.write(b"\x01")
    elif case == "no vocabulary":
        path = write(f, ids, "uint16")
    elif case == "bad meta":
        path = write(f, ids, "uint16", {"vocab": 50})
    elif case == "bad dtype":
        path = write(f, ids, "uint16", {"n_tokens": 50, "dtype": "int8"})
    elif case == "too big for the dtype":
        path = write(f, ids, "uint16", {"n_tokens": 70000, "dtype": "uint16"})
    elif case == "contradiction":
        path, extra = write(f, ids, "uint16", {"n_tokens": 50, "dtype": "uint16"}), ["--vocab-size",
                                                                                     "60"]
    else:
        path = write(f, [], "uint16", {"n_tokens": 50, "dtype": "uint16"})
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train.main(["--data", path, "--out-dir", str(tmp_path / "o"), *TINY, *extra])
    err = capsys.readouterr().err
    assert e.value.code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o" / "ckpt.pt").exists()


def test_ids_past_the_vocabulary_deep_in_a_large_file_are_caught_by_the_batch_check(tmp_path):
    """The load-time check reads three samples of a large file; a bad id between them is caught
    when a batch reads it."""
    ids = np.zeros(4 << 20, dtype=np.uint16)  # 8 MB: more than three 1 MiB samples
    ids[3 << 20] = 77  # in a gap between the samples
    path = write(tmp_path / "big.bin", ids, "uint16", {"n_tokens": 50, "dtype": "uint16"})
    train_ids, _, vocab = data.load_corpus(path)  # the samples pass
    obj = objective.Objective(seq_len=16, vocab_size=vocab.size)
    with pytest.raises(common.UserError, match="id 77"):
        objective.get_batch(train_ids[(3 << 20) - 8:(3 << 20) + 8], obj, 1,
                            torch.Generator().manual_seed(0), {"truncated": 0})


def test_text_task_of_a_token_file_keeps_ids_and_text(corpus, tmp_path):
    """The text task cuts held-out prompts from the token file itself: ids as the model reads
    them, and their text where the tokenizer is at hand."""
    out = tmp_path / "task"
    assert evaluate.main(["task", "text", "--out-dir", str(out), "--data",
                          str(corpus / "corpus.bin"), "--n-test", "3", "--prompt-len", "4",
                          "--length", "6"]) == 0
    recs = data.read_jsonl(str(out / "test.jsonl"))
    _, val_ids, vocab = data.load_corpus(str(corpus / "corpus.bin"))
    assert len(recs) == 3 and recs[0]["prompt_ids"] == val_ids[:4].tolist()
    for r in recs:
        assert len(r["prompt_ids"]) == 4 and len(r["response_ids"]) == 6
        assert r["prompt"] == vocab.decode(r["prompt_ids"])
