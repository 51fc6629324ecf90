"""Tests of data.py: memory-mapped corpora and their checks, JSON lines and SFT records. CPU, a few
seconds."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import mdlm
from common import UserError

EOS = mdlm.special_ids(mdlm.BYTE_VOCAB_SIZE)[0]  # the byte vocabulary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(path, raw):
    with open(path, "wb") as f:
        f.write(raw)
    return str(path)


# ----------------------------------------------------------------------------------------------
# Corpora


def test_large_corpus_is_memory_mapped(tmp_path):
    """A ~64 MB file: both splits are views of one memmap of the file, sizes by byte ranges."""
    chunk = "The list type — a mutable sequence. Ünïcode 𝔘 text, ".encode() * 997
    path = tmp_path / "big.txt"
    with open(path, "wb") as f:
        for _ in range(64 * 2**20 // len(chunk)):
            f.write(chunk)
    size = os.path.getsize(path)
    train, val, vocab = data.load_corpus(str(path))
    assert vocab == data.Vocab()  # a text file is bytes
    assert isinstance(train, np.memmap) and isinstance(val, np.memmap)
    assert train.dtype == np.uint8 and train.ndim == 1 and train.base is val.base
    assert isinstance(train.base, np.memmap) and train.filename == os.path.abspath(path)
    assert len(val) == int(size * 0.05) and len(train) + len(val) == size
    with open(path, "rb") as f:
        head = f.read(4096)
        f.seek(size - 4096)
        tail = f.read()
    assert bytes(train[:4096]) == head and bytes(val[-4096:]) == tail
    offsets = [0, 12345, len(train) - 100]
    w = data.windows(train, offsets, 100)
    assert w.dtype == torch.int64 and w.shape == (3, 100)
    for row, o in zip(w, offsets):
        assert bytes(row.tolist()) == bytes(train[o:o + 100])
    assert bytes(data.windows(val, torch.tensor([len(val) - 8]), 8)[0].tolist()) == tail[-8:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux")
def test_loading_does_not_read_the_file(tmp_path):
    """Peak memory of a fresh process grows by far less than the 64 MB file it loads and samples
    400 windows from (windows() maps the file afresh per call, so touched pages do not pile up)."""
    path = tmp_path / "big.txt"
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(b"abc def\n" * 2**17)  # 1 MiB
    code = ("import resource, sys, numpy as np, data\n"
            "rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
            "before = rss(); tr, va, _ = data.load_corpus(sys.argv[1]); "
            "g = np.random.default_rng(0)\n"
            "for _ in range(50): data.windows(tr, g.integers(0, len(tr) - 256, 8), 256)\n"
            "print(rss() - before)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    assert float(out.stdout) < 32, out.stdout  # MB; reading the file would add 64


def test_small_corpus_split_and_windows(tmp_path):
    path = write(tmp_path / "c.txt", bytes(range(32, 127)) * 3)  # 285 bytes
    train, val, _ = data.load_corpus(path, val_fraction=0.1)
    assert len(val) == 28 and len(train) == 257
    offsets = np.array([0, 5, 200])
    slow = torch.tensor([[train[o + i] for i in range(50)] for o in offsets], dtype=torch.int64)
    assert torch.equal(data.windows(train, offsets, 50), slow)
    assert data.windows(train, [], 4).shape == (0, 4)
    for bad in ([-1], [len(train) - 49]):  # a negative offset would wrap around silently
        with pytest.raises(ValueError):
            data.windows(train, bad, 50)
    # a map opened at an offset and sliced twice: windows() finds where in the file it starts
    m = np.memmap(path, dtype=np.uint8, mode="r", offset=7)[10:200][3:]
    assert data._file_span(m) == (os.path.abspath(path), 20)
    assert bytes(data.windows(m, [0, 100], 30)[1].tolist()) == bytes(m[100:130])
    assert data._file_span(np.asarray(m)) is None and data._file_span(m[::2]) is None
    tr, va, _ = data.load_corpus(write(tmp_path / "one.txt", b"x"))
    assert len(tr) == 0 and bytes(va) == b"x"  # at least one byte of validation
    with pytest.raises(ValueError):
        data.load_corpus(path, val_fraction=1.0)


def test_default_corpus_is_built_once_and_cached(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "pydoc.txt"
    calls = []
    monkeypatch.setattr(data, "default_corpus_path", lambda: str(path))
    monkeypatch.setattr(data, "build_default_corpus",
                        lambda: calls.append(1) or "héllo docs\n" * 50)
    for _ in range(2):
        train, val, _ = data.load_corpus()
        assert bytes(train) + bytes(val) == ("héllo docs\n" * 50).encode()
    assert calls == [1] and os.listdir(path.parent) == ["pydoc.txt"]  # no temporary left over
    monkeypatch.undo()  # the real path: .cache/ next to the scripts
    assert data.default_corpus_path().startswith(os.path.join(ROOT, ".cache", "pydoc-"))


@pytest.mark.parametrize("raw, message", [
    (b"", "is empty"),
    (b" \n\t \n", "only whitespace"),
    (b"text\x00more", "looks binary (a NUL byte at offset 4)"),
    (b"caf\xc3\xa9 ok \xff bad", "is not UTF-8 text (byte 0xff at offset 9"),
    (b"truncated \xe2\x82", "offset 10"),  # a cut character at the true end of the file is an error
])
def test_corpus_errors(tmp_path, raw, message):
    path = write(tmp_path / "bad.txt", raw)
    with pytest.raises(UserError, match=re.escape(path) + ".*" + re.escape(message)):
        data.load_corpus(path)


def test_corpus_path_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="is a directory"):
        data.load_corpus(str(tmp_path))


def test_large_file_checks_sample_three_chunks(tmp_path, monkeypatch):
    """Sampling, at toy sizes: files over WHOLE_BYTES are checked at their start, middle and end
    only, and a sample that cuts a multi-byte character in two is not an error."""
    monkeypatch.setattr(data, "WHOLE_BYTES", 64)
    monkeypatch.setattr(data, "SAMPLE_BYTES", 16)
    # 1-, 3-, 4- and 2-byte characters: every cut position occurs
    text = ("a€𝔘é" * 40).encode()
    for n in range(65, len(text)):  # every file size, so samples start and end everywhere
        if text[n] & 0xC0 != 0x80:  # whole characters only: the true end is never cut
            assert data.check_text_file(write(tmp_path / "ok.txt", text[:n])) == n
    size = 400
    body = bytearray(b"w" * size)
    body[100] = 0xFF  # outside every sample: accepted, by design (the check is bounded)
    data.check_text_file(write(tmp_path / "unseen.txt", bytes(body)))
    body[size // 2] = 0xFF  # inside the middle sample
    with pytest.raises(UserError, match=f"offset {size // 2}"):
        data.check_text_file(write(tmp_path / "mid.txt", bytes(body)))
    body = bytearray(b"w" * size)
    body[size - 3] = 0
    with pytest.raises(UserError, match=f"NUL byte at offset {size - 3}"):
        data.check_text_file(write(tmp_path / "nul.txt", bytes(body)))
    blank = bytearray(b" " * size)
    blank[100] = ord("x")  # text only between the samples
    with pytest.raises(UserError, match="only whitespace .in every sampled MiB."):
        data.check_text_file(write(tmp_path / "blank.txt", bytes(blank)))


def test_trim_utf8_every_cut():
    """Every slice of a mixed text decodes once trimmed, and no whole character is lost."""
    text = "a€𝔘éz€"
    starts = np.cumsum([0] + [len(ch.encode()) for ch in text])  # byte offset of each character
    raw = text.encode()
    for i in range(len(raw)):
        for j in range(i + 1, len(raw) + 1):
            a, b = data._trim_utf8(raw[i:j], cut_start=i > 0, cut_end=j < len(raw))
            inside = "".join(ch for k, ch in enumerate(text)
                             if i <= starts[k] and starts[k + 1] <= j)
            assert raw[i:j][a:b].decode("utf-8") == inside, (i, j)


# ----------------------------------------------------------------------------------------------
# JSON lines and SFT records


def test_sft_round_trip_and_split(tmp_path):
    recs = [{"prompt": f"q{i} é", "response": f"a{i}"} for i in range(41)]
    path = str(tmp_path / "new" / "dir" / "sft.jsonl")
    data.write_jsonl(path, recs)  # creates the parent folders
    assert os.listdir(os.path.dirname(path)) == ["sft.jsonl"]  # the temporary file is gone
    assert data.read_jsonl(path) == recs
    sft = data.read_sft(path)
    assert sft[0] == (list("q0 é".encode()), list(b"a0") + [EOS])
    train, val = data.split_sft(sft)
    assert len(val) == 2 and train + val == sft
    assert data.split_sft(sft[:1]) == (sft[:1], sft[:1])  # one record: both splits
    assert data.split_sft(sft[:2]) == (sft[:1], sft[1:2])
    assert [len(s) for s in data.split_sft(sft[:19])] == [18, 1]
    with pytest.raises(ValueError):
        data.split_sft([])


def test_jsonl_tolerates_blank_lines_and_a_bom(tmp_path):
    path = write(tmp_path / "b.jsonl", b'\xef\xbb\xbf{"prompt": "p", "response": "r"}\n\n  \n')
    assert data.read_sft(path) == [([ord("p")], [ord("r"), EOS])]


@pytest.mark.parametrize("raw, message", [
    (b'{"prompt": "p", "response": "r"}\n{"prompt": \n', r":2: not valid JSON"),
    (b'{"prompt": "p"}\n', r":1: need string keys"),
    (b'{"prompt": "p", "response": 3}\n', r":1: need string keys"),
    (b'["p", "r"]\n', r":1: need string keys"),
    (b"\n\n", r"has no records"),
    (b'{"prompt": "p", "response": "r"}\n{"prompt": "\xff", "response": "r"}\n', r":2: not UTF-8"),
])
def test_sft_errors(tmp_path, raw, message):
    path = write(tmp_path / "bad.jsonl", raw)
    with pytest.raises(UserError, match=message):
        data.read_sft(path)


def test_jsonl_errors(tmp_path):
    for fn in (data.read_sft, data.read_jsonl):
        with pytest.raises(UserError, match="does not exist"):
            fn(str(tmp_path / "missing.jsonl"))
        with pytest.raises(UserError, match="is a directory"):
            fn(str(tmp_path))
    with pytest.raises(UserError, match=":1: need a JSON object, got list"):
        data.read_jsonl(write(tmp_path / "l.jsonl", b"[1]\n"))
    with pytest.raises(UserError, match=":2: not valid JSON"):
        data.read_jsonl(write(tmp_path / "j.jsonl", b"{}\nnope\n"))
    assert data.read_jsonl(write(tmp_path / "e.jsonl", b"")) == []
