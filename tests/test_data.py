"""Tests of data.py: memory-mapped corpora and their checks, JSON lines and SFT records, the copy
task, and the grammar task's generator and exact recognizer (against an independent one written
from the finite set of sentence patterns). CPU, a few seconds."""
import itertools
import os
import re
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
from data import UserError
from mdlm import EOS

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
    train, val = data.load_corpus(str(path))
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
            "before = rss(); tr, va = data.load_corpus(sys.argv[1]); g = np.random.default_rng(0)\n"
            "for _ in range(50): data.windows(tr, g.integers(0, len(tr) - 256, 8), 256)\n"
            "print(rss() - before)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True)
    assert float(out.stdout) < 32, out.stdout  # MB; reading the file would add 64


def test_small_corpus_split_and_windows(tmp_path):
    path = write(tmp_path / "c.txt", bytes(range(32, 127)) * 3)  # 285 bytes
    train, val = data.load_corpus(path, val_fraction=0.1)
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
    tr, va = data.load_corpus(write(tmp_path / "one.txt", b"x"))
    assert len(tr) == 0 and bytes(va) == b"x"  # at least one byte of validation
    with pytest.raises(ValueError):
        data.load_corpus(path, val_fraction=1.0)


def test_default_corpus_is_built_once_and_cached(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "pydoc.txt"
    calls = []
    monkeypatch.setattr(data, "default_corpus_path", lambda: str(path))
    monkeypatch.setattr(data, "build_default_corpus", lambda: calls.append(1) or "héllo docs\n" * 50)
    for _ in range(2):
        train, val = data.load_corpus()
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
    text = ("a€𝔘é" * 40).encode()  # 1-, 3-, 4- and 2-byte characters: every cut position occurs
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
            inside = "".join(ch for k, ch in enumerate(text) if i <= starts[k] and starts[k + 1] <= j)
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
    (b'{"prompt": "p"}\n', r":1: need an object with string keys"),
    (b'{"prompt": "p", "response": 3}\n', r":1: need an object with string keys"),
    (b'["p", "r"]\n', r":1: need an object"),
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


# ----------------------------------------------------------------------------------------------
# The copy task


def test_copy_examples_match_the_original_generator():
    """The same seed gives the same strings as before the move (values recorded from it)."""
    got = [r["prompt"] for r in data.copy_examples(4, 3, 9, 1337)]
    assert got == ["rwlssxf=", "kmuzljmwg=", "vldnumcqw=", "lmmzxzjv="]
    assert [r["response"] for r in data.copy_examples(3, 8, 8, 0)] == ["ynbiqpmz", "plsgqeje", "tzirwzte"]
    recs = data.copy_examples(500, 2, 4, 7)
    assert len({r["response"] for r in recs}) == 500
    assert all(r["prompt"] == r["response"] + "=" and 2 <= len(r["response"]) <= 4 for r in recs)
    with pytest.raises(ValueError):
        data.copy_examples(27, 1, 1, 0)  # only 26 one-letter strings
    with pytest.raises(ValueError):
        data.copy_examples(1, 3, 2, 0)


def test_levenshtein():
    assert data.levenshtein("abcdef", "abdef") == 1 and data.levenshtein("abcdef", "abccdef") == 1
    assert data.levenshtein("kitten", "sitting") == 3 and data.levenshtein("", "abc") == 3
    assert data.levenshtein([1, 2, 3], [1, 2, 3]) == 0 and data.levenshtein("ab", "ba") == 2


# ----------------------------------------------------------------------------------------------
# The grammar task


def oracle(words):
    """An independent recognizer: every word's possible (category, number) tags, matched against
    the finite list of category patterns of a sentence under both subject and object numbers."""
    tags = {}
    for cat, pairs in (("N", data.NOUNS), ("Vt", data.TRANSITIVE), ("Vi", data.INTRANSITIVE)):
        for sg, pl in pairs:
            tags.setdefault(sg, set()).add((cat, "sg"))
            tags.setdefault(pl, set()).add((cat, "pl"))
    for d, nums in data.DETERMINERS.items():
        tags.setdefault(d, set()).update(("Det", n) for n in nums)
    for a in data.ADJECTIVES:
        tags.setdefault(a, set()).add(("Adj", None))  # adjectives do not inflect
    nps = [["Det", "N"], ["Det", "Adj", "N"]]
    for subj, verb, obj in itertools.product(nps, ["Vi", "Vt"], [[]] + nps):
        pat = subj + [verb] + obj
        if (verb == "Vi" and obj) or len(pat) != len(words):
            continue
        for num, onum in itertools.product(("sg", "pl"), repeat=2):
            need = [num] * (len(subj) + 1) + [onum] * len(obj)
            if all((c, None if c == "Adj" else n) in tags.get(w, ()) for w, c, n in zip(words, pat, need)):
                # a before a consonant letter, an before a vowel letter
                if all((w == "an") == (words[k + 1][0] in "aeiou")
                       for k, w in enumerate(words) if w in ("a", "an")):
                    return True
    return False


def test_every_generated_text_parses():
    texts = [r["prompt"] + r["response"] for s in range(3) for r in data.grammar_examples(700, s)]
    seen, n_sent = set(), set()
    for t in texts:
        c = data.grammar_check(t)
        assert c["parses"] and c["sentences"] == c["valid_sentences"], t
        assert c["words"] == c["lexicon_words"] == len(t.split(" "))
        seen.update(w.rstrip(".") for w in t.split(" "))
        n_sent.add(c["sentences"])
    assert seen == data.GRAMMAR_LEXICON and n_sent == {1, 2, 3}  # every word form and length


def test_grammar_examples_prompts_determinism_and_max_bytes():
    a = data.grammar_examples(200, 5, prompt_words=2)
    assert a == data.grammar_examples(200, 5, prompt_words=2)  # the same seed, the same texts
    assert a != data.grammar_examples(200, 6, prompt_words=2)
    for r in a:
        assert r["prompt"].endswith(" ") and len(r["prompt"].split()) == 2 and r["response"]
        assert not r["response"].startswith(" ") and r["response"].endswith(".")
    short = data.grammar_examples(300, 1, max_bytes=24)
    assert all(len((r["prompt"] + r["response"]).encode()) <= 24 for r in short)
    assert max(len(r["prompt"] + r["response"]) for r in data.grammar_examples(300, 1)) > 24
    with pytest.raises(ValueError):
        data.grammar_examples(1, 0, max_bytes=8)  # no sentence is that short
    with pytest.raises(ValueError):
        data.grammar_examples(1, 0, prompt_words=0)


def test_lexicon():
    lex = data.GRAMMAR_LEXICON
    assert 40 <= len(lex) <= 70 and all(w.isascii() and w.isalpha() and w.islower() for w in lex)
    assert min(map(len, lex)) <= 2 and max(map(len, lex)) >= 11  # 1..12 bytes: a wide spread
    assert sum(len(w) <= 3 for w in lex) >= 5 and sum(len(w) >= 9 for w in lex) >= 5


@pytest.mark.parametrize("text", [
    "the cat runs.", "an ox runs.", "a red ox runs.", "an old cat sleeps.", "the oxen run.",
    "two hippopotami remember an enormous eel.", "this tortoise sees.", "the mice see the mouse.",
    "some caterpillars chase a hippopotamus. one eel hides. these cats disappear.",
])
def test_grammatical(text):
    c = data.grammar_check(text)
    assert c["parses"] and c["valid_sentences"] == c["sentences"] == text.count(".")


@pytest.mark.parametrize("text", [
    "the cats runs.", "the cat run.", "a cats run.", "two cat runs.", "these ox runs.",  # agreement
    "a ox runs.", "an cat runs.", "a old cat runs.", "an red ox runs.",  # a/an
    "the dog runs.", "The cat runs.", "the cat runs quickly.",  # unknown words
    "the cat runs the ox.", "the cat sees the.", "the cat sees ox.", "the red big cat runs.",
    "cat runs.", "the cat.", "the cat runs", "", " ", ".", "the cat runs..",  # structure
    "the  cat runs.", "the cat runs.  an ox runs.", " the cat runs.", "the cat runs. ",  # spaces
    "the cat runs.an ox runs.", "the cat runs. the", "the cat runs.\n", "the cat runs. xyz.",
])
def test_ungrammatical(text):
    assert not data.grammar_check(text)["parses"]


def test_grammar_counts_on_a_hand_made_text():
    c = data.grammar_check("the cat runs. a cats sleep.  two dog see an ox. one eel hides. the")
    assert c == {"parses": False, "sentences": 5, "valid_sentences": 2, "words": 15,
                 "lexicon_words": 14}  # "dog" is no word of the lexicon
    assert data.grammar_check("") == {"parses": False, "sentences": 0, "valid_sentences": 0,
                                      "words": 0, "lexicon_words": 0}
    assert data.grammar_check("the cat runs . .")["words"] == 3  # a lone "." is no word


def test_recognizer_matches_the_pattern_oracle():
    """Mutants of generated sentences (replace, delete, insert, swap words): the recognizer and
    the independent pattern oracle agree on every one, grammatical or not."""
    rng, lex = random.Random(0), sorted(data.GRAMMAR_LEXICON)
    results = []
    for r in data.grammar_examples(1500, 3):
        words = (r["prompt"] + r["response"]).split(". ")[0].rstrip(".").split(" ")
        for _ in range(rng.randint(0, 2)):
            k, op = rng.randrange(len(words)), rng.randrange(4)
            if op == 0:
                words[k] = rng.choice(lex)
            elif op == 1 and len(words) > 1:
                del words[k]
            elif op == 2:
                words.insert(k, rng.choice(lex))
            elif k + 1 < len(words):
                words[k], words[k + 1] = words[k + 1], words[k]
        got = data.grammar_check(" ".join(words) + ".")["parses"]
        assert got == oracle(words), words
        results.append(got)
    assert 300 < sum(results) < 1200  # both kinds occur often


# ----------------------------------------------------------------------------------------------
# Dropped and doubled


def test_dropped_doubled():
    assert data.dropped_doubled("accd", "abcd") and data.dropped_doubled("aacd", "abcd")
    assert data.dropped_doubled("abdd", "abcd") and data.dropped_doubled("bbcd", "abcd")
    assert data.dropped_doubled([1, 3, 3], [1, 2, 3]) and data.dropped_doubled(b"xyy", b"xyz")
    assert not data.dropped_doubled("abcd", "abcd")  # identical
    assert not data.dropped_doubled("axcd", "abcd")  # a substitution by no neighbour
    assert not data.dropped_doubled("adcd", "abcd")  # d is two slots away, not a neighbour
    assert not data.dropped_doubled("accc", "abcd")  # two changes
    assert not data.dropped_doubled("acd", "abcd") and not data.dropped_doubled("abbcd", "abcd")
    assert not data.dropped_doubled("", "") and not data.dropped_doubled("a", "b")


def test_dropped_doubled_word():
    assert data.dropped_doubled_word("badder")  # badger: g dropped, d doubled
    assert data.dropped_doubled_word("catt") and data.dropped_doubled_word("hippopotamss")
    assert not data.dropped_doubled_word("badger")  # in the lexicon
    assert not data.dropped_doubled_word("bodger") and not data.dropped_doubled_word("bader")
    assert data.dropped_doubled_word("zz", ["xz"]) and not data.dropped_doubled_word("xy", ["xz"])
