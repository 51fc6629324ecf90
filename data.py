"""
Everything the scripts read or make as data: byte corpora of any size (memory-mapped), SFT records
as JSON lines, and two synthetic tasks whose outputs can be scored exactly. One shared module,
imported by train.py, decode.py, evaluate.py and synthetic.py; it has no command line of its own.

- Corpora. Bytes are the tokens (mdlm.encode), so a UTF-8 text file already *is* its token stream:
  it is memory-mapped as uint8 and batches are gathered from it, as nanoGPT memory-maps its .bin
  files. Memory use is flat in the file size; the checks for empty, binary or non-UTF-8 files
  read bounded samples, never the whole file.
- SFT records. {"prompt": str, "response": str} per line, read into (prompt ids, response ids +
  EOS); the last ~5% is held out.
- The copy task (a string, "=", the same string): a one-slot error costs exactly one edit.
- The grammar task: open-ended sentences from a small probabilistic context-free grammar with
  number agreement, whose words range from 1 to 12 bytes. A masked diffusion model that commits a
  byte far to the right must guess how long the words before it will be, so positional
  uncertainty arises by itself, and an exact recognizer scores every output.

Papers and references:
- Ye et al. 2026 (arXiv 2601.22947): the slack CTC fine-tune these tasks are meant to probe.
- Karpathy, nanoGPT (github.com/karpathy/nanoGPT): the memory-mapped token file and random windows.
- Wagner & Fischer 1974, "The String-to-String Correction Problem": the edit-distance recursion.
- Graves et al. 2006, "Connectionist Temporal Classification": per-position outputs read out
  independently, the source of the dropped-and-doubled error pattern measured here.
"""

import ast
import functools
import itertools
import json
import os
import random
import string
import sys
import sysconfig

import numpy as np
import torch

import mdlm
from mdlm import EOS, SLACK


class UserError(Exception):
    """Bad input: printed as one line by the entry points, exit code 1, nothing written over."""


# ----------------------------------------------------------------------------------------------
# The default corpus: documentation every CPython install carries, so nothing is downloaded. The
# help topics of pydoc_data plus the docstrings of the standard library, read with `ast` (never
# imported), in sorted file order, capped at ~1.5 MB, cached to .cache/ next to the scripts.

CORPUS_BYTES = 1_500_000  # enough for a 1M-parameter model to learn English-like text on a CPU
VAL_FRACTION = 0.05  # the last 5% of the bytes is held out (after, not mixed in: no near-duplicates)


def build_default_corpus():
    """Assemble the default corpus deterministically from this Python's standard library."""
    stdlib = sysconfig.get_paths()["stdlib"]
    parts = []
    topics_src = open(os.path.join(stdlib, "pydoc_data", "topics.py"), encoding="utf-8").read()
    for node in ast.parse(topics_src).body:  # `topics = {name: text, ...}`
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            topics = ast.literal_eval(node.value)
            parts += [topics[k].strip() for k in sorted(topics)]
    size = sum(len(s.encode()) for s in parts)
    for root, dirs, files in sorted(os.walk(stdlib)):
        dirs[:] = sorted(d for d in dirs if d not in ("test", "tests", "site-packages", "idlelib"))
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                tree = ast.parse(open(os.path.join(root, name), encoding="utf-8").read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) > 200:  # skip one-liners: they teach little
                        parts.append(doc)
                        size += len(doc.encode()) + 2
            if size >= CORPUS_BYTES:
                return "\n\n".join(parts)
    return "\n\n".join(parts)


def default_corpus_path():
    """.cache/pydoc-X.Y.txt next to the scripts: one cache per Python version (the docs differ)."""
    v = sys.version_info
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", f"pydoc-{v[0]}.{v[1]}.txt")


# ----------------------------------------------------------------------------------------------
# Checking a corpus file without reading it. A file of many GB must not be loaded to be checked,
# so small files are checked whole and large ones through three 1 MiB samples (start, middle,
# end). A sample that starts or ends inside the file may cut a multi-byte UTF-8 character in two;
# those partial characters are trimmed before decoding, or every large file would look broken.

SAMPLE_BYTES = 1 << 20  # one sample of a large file
WHOLE_BYTES = 4 << 20  # files up to this size are checked whole


def _trim_utf8(b, cut_start, cut_end):
    """(i, j) so that b[i:j] drops a character cut by the sample's edges. cut_start: skip the
    continuation bytes (10xxxxxx) of a character that began before the sample, at most 3; cut_end:
    drop a last character whose lead byte promises more bytes than the sample still holds."""
    i, j = 0, len(b)
    while cut_start and i < min(3, len(b)) and b[i] & 0xC0 == 0x80:
        i += 1
    for k in range(1, min(4, j - i) + 1) if cut_end else ():
        c = b[j - k]
        if c & 0xC0 == 0x80:
            continue  # a continuation byte: keep looking back for its lead byte
        # the lead byte's high bits give the character's length; anything else (ASCII, or an
        # invalid byte that the decoder should see and report) counts as complete
        need = 2 if c >> 5 == 0b110 else 3 if c >> 4 == 0b1110 else 4 if c >> 3 == 0b11110 else 1
        if need > k:
            j -= k
        break
    return i, j


def _samples(f, size):
    """[(offset, bytes)]: the whole file if small, else its first, middle and last SAMPLE_BYTES."""
    offsets = [0] if size <= WHOLE_BYTES else [0, size // 2 - SAMPLE_BYTES // 2, size - SAMPLE_BYTES]
    out = []
    for off in offsets:
        f.seek(off)
        out.append((off, f.read(size if size <= WHOLE_BYTES else SAMPLE_BYTES)))
    return out


def check_text_file(path, what="data file"):
    """Refuse a path that is missing, a directory, empty, only whitespace, binary or not UTF-8,
    reading at most ~3 MiB of it; returns its size in bytes. Messages name the file and offset."""
    if not os.path.exists(path):
        raise UserError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a directory; give a text file")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            samples = _samples(f, size)
    except OSError as e:
        raise UserError(f"cannot read {what} {path!r}: {e.strerror or e}")
    if size == 0:
        raise UserError(f"{what} {path!r} is empty")
    if all(not b.strip() for _, b in samples):  # whole file if small, else every sample
        sampled = "" if size <= WHOLE_BYTES else " (in every sampled MiB)"
        raise UserError(f"{what} {path!r} holds only whitespace{sampled}")
    for off, b in samples:
        nul = b.find(b"\x00")
        if nul >= 0:  # text never holds NUL; a binary file (a .bin, a .pt) nearly always does
            raise UserError(f"{what} {path!r} looks binary (a NUL byte at offset {off + nul}); "
                            f"give a UTF-8 text file")
        # the true start and end of the file are not cuts: a broken character there is an error
        i, j = _trim_utf8(b, cut_start=off > 0, cut_end=off + len(b) < size)
        try:
            b[i:j].decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{what} {path!r} is not UTF-8 text (byte 0x{b[i + e.start]:02x} at "
                            f"offset {off + i + e.start}: {e.reason})")
    return size


# ----------------------------------------------------------------------------------------------
# Corpora of any size. np.memmap maps the file into the address space: the OS reads the pages a
# batch touches and may drop them again, so a 50 GB corpus costs what its batches cost. The two
# splits are views (slices) of the one map; nothing is copied until windows() gathers a batch.


def load_corpus(path=None, val_fraction=VAL_FRACTION):
    """-> (train, val): 1-D uint8 views of one np.memmap of the whole file; train = the first
    (1 - val_fraction) of the bytes, val = the rest (at least 1 byte). path=None: the default
    corpus, built and cached on first use."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if path is None:
        path = default_corpus_path()
        if not os.path.isfile(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"  # per process: several DDP ranks may build at once
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(build_default_corpus())
            os.replace(tmp, path)  # atomic: a reader sees no file or the whole file
    n = check_text_file(path)
    ids = np.memmap(path, dtype=np.uint8, mode="r")
    # split by byte ranges, not documents: the held-out tail never overlaps the training text
    n_val = max(1, int(n * val_fraction))
    return ids[:n - n_val], ids[n - n_val:]


def _file_span(split):
    """(file name, byte offset in the file) of a 1-D uint8 memmap view, or None for an array.
    A slice keeps its root map's .filename and .offset, so its own start is found from the data
    pointers: the root's first element sits at file offset root.offset."""
    if not isinstance(split, np.memmap) or split.filename is None or split.dtype != np.uint8:
        return None
    root = split
    while isinstance(root.base, np.memmap):
        root = root.base
    if split.ndim != 1 or not split.flags.c_contiguous:
        return None
    return split.filename, root.offset + split.ctypes.data - root.ctypes.data


def windows(split, offsets, n):
    """(B, n) int64 tensor: the n bytes starting at each offset of a uint8 array or memmap.
    One fancy index, offsets[:, None] + arange(n), touches only the pages those bytes live on."""
    if isinstance(offsets, torch.Tensor):
        offsets = offsets.cpu().numpy()
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    if len(offsets) == 0 or n == 0:
        return torch.zeros(len(offsets), n, dtype=torch.int64)
    # a negative index would wrap around silently, so both ends are checked, not only the right
    if offsets.min() < 0 or offsets.max() + n > len(split):
        raise ValueError(f"windows of {n} bytes at offsets {offsets.min()}..{offsets.max()} "
                         f"do not fit a split of {len(split)} bytes")
    # row b of idx is offsets[b], offsets[b] + 1, ..., offsets[b] + n - 1: one gather, no loop
    idx = offsets[:, None] + np.arange(n, dtype=np.int64)
    span = _file_span(split)
    if span is None:
        return torch.from_numpy(np.asarray(split[idx], dtype=np.int64))
    # A fresh map per batch, closed when this call returns (as nanoGPT does). Every page a batch
    # faults in stays mapped, and counted in the process's resident memory, for as long as its
    # map lives; the kernel may map a whole large folio (up to MBs) around each touched byte. With
    # one long-lived map the resident size would creep up to the file size over training.
    fresh = np.memmap(span[0], dtype=np.uint8, mode="r", offset=span[1], shape=(len(split),))
    out = np.asarray(fresh[idx], dtype=np.int64)  # fancy indexing copies: nothing refers to fresh
    del fresh
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------------------------
# JSON lines: one object per line, blank lines skipped. Read as bytes and decoded line by line,
# so a non-UTF-8 file is reported with its line number instead of a traceback.


def _json_lines(path, what):
    """Yield (line number, parsed JSON value) of each non-blank line; UserError on a bad file."""
    if not os.path.exists(path):
        raise UserError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{what} {path!r} is a directory; give a JSON-lines file")
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:  # utf-8-sig on line 1: editors on Windows may start the file with a BOM
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}:{n}: not UTF-8 text (byte {e.start + 1} of the line)")
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e.msg})")
    except OSError as e:
        raise UserError(f"cannot read {what} {path!r}: {e.strerror or e}")


def read_jsonl(path):
    """-> list of dicts, one per non-blank line."""
    out = []
    for n, rec in _json_lines(path, "JSON-lines file"):
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{n}: need a JSON object, got {type(rec).__name__}")
        out.append(rec)
    return out


def write_jsonl(path, records):
    """Write dicts as JSON lines, atomically: a crash leaves the old file or none, never half."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)


def read_sft(path):
    """JSON lines {"prompt": str, "response": str} -> list of (prompt ids, response ids + EOS)."""
    records = []  # (prompt ids, response ids): bytes, so no tokenizer state can go out of sync
    for n, rec in _json_lines(path, "SFT file"):
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("prompt", "response")):
            raise UserError(f"{path}:{n}: need an object with string keys 'prompt' and 'response'")
        # EOS closes the response: the model learns where the answer stops
        records.append((mdlm.encode(rec["prompt"]), mdlm.encode(rec["response"]) + [EOS]))
    if not records:
        raise UserError(f"SFT file {path!r} has no records")
    return records


def split_sft(records):
    """(train, val): the last max(1, n // 20) records are held out, the rest train. A single
    record is used for both, so a one-line smoke test still has something to validate on."""
    if not records:
        raise ValueError("no records to split")
    if len(records) == 1:
        return records[:], records[:]
    n_val = max(1, len(records) // 20)
    return records[:-n_val], records[-n_val:]


# ----------------------------------------------------------------------------------------------
# Training examples, drawn with a torch generator (so a run repeats exactly). Each is a prompt
# (visible, never masked or scored) and a target y of U tokens for a response canvas of R = T - P
# positions; the other K = R - U positions will hold slack (ctc_slack.place_slack puts them).


def text_batch(ids, B, T, P, rate, gen):
    """Random windows of the byte stream (a memory-mapped file): P prompt bytes, then U = R - K
    target bytes. -> prompt (B, P), P (B,), y (B, U), U (B,); all rows have the same sizes here."""
    R = T - P
    U = R - round(rate * R)  # K = round(rate * R) positions of the canvas are left for slack
    offs = torch.randint(0, len(ids) - (P + U) + 1, (B,), generator=gen)
    win = windows(ids, offs, P + U)  # (B, P + U) int64, read from the file's pages
    full = lambda n: torch.full((B,), n, dtype=torch.long)  # noqa: E731
    return win[:, :P], full(P), win[:, P:], full(U)


def sft_batch(records, B, T, rate, gen, stats):
    """Random SFT records as prompt + target y of U_b = R_b - round(rate * R_b) tokens: the response
    and its EOS, padded with more EOS (as LLaDA pads its SFT responses), so that every canvas holds
    exactly K_b = round(rate * R_b) slacks. A response too long for that is truncated (and counted).
    Rows differ in P and U, so both are padded (with SLACK, never read)."""
    picks = torch.randint(0, len(records), (B,), generator=gen).tolist()
    prompts, ys = [], []
    for i in picks:
        prompt, y = records[i]
        prompt = prompt[-(T - 1):]  # keep at least one response position
        R = T - len(prompt)
        U = R - round(rate * R)
        stats["truncated"] += len(y) > U
        prompts.append(prompt), ys.append((y + [EOS] * U)[:U])
    pad = lambda seqs, n: torch.tensor([s + [SLACK] * (n - len(s)) for s in seqs], dtype=torch.long)  # noqa
    P = torch.tensor([len(s) for s in prompts])
    U = torch.tensor([len(s) for s in ys])
    return pad(prompts, int(P.max())), P, pad(ys, max(int(U.max()), 1)), U


# ----------------------------------------------------------------------------------------------
# The copy task. A string s of n letters, n uniform in [min_len, max_len]; prompt s + "=", answer
# s. The answer is known, so a letter that lands one slot off costs exactly one edit.

ALPHABET = string.ascii_lowercase  # 26 one-byte tokens
SEP = "="  # ends every prompt: "where the copy starts"


def copy_examples(n, min_len, max_len, seed):
    """n examples {"prompt": s + "=", "response": s} with n distinct strings s, fixed by the seed."""
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    # sum of 26^n over the lengths: drawing more distinct strings than exist would never finish
    if n > sum(len(ALPHABET) ** k for k in range(min_len, max_len + 1)):
        raise ValueError(f"there are fewer than {n} strings of {min_len}..{max_len} letters")
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < n:
        s = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(min_len, max_len)))
        if s not in seen:  # distinct, so a test string can never also be a training string
            seen.add(s)
            out.append({"prompt": s + SEP, "response": s})
    return out


def levenshtein(a, b):
    """Fewest insertions, deletions and substitutions that turn sequence a into b (str or list).

        D[i][j] = min(D[i-1][j] + 1, D[i][j-1] + 1, D[i-1][j-1] + [a_i != b_j]),  D[i][0] = i,
        D[0][j] = j  (Wagner & Fischer 1974), kept one row at a time: O(|a| |b|) time, O(|b|) memory.
    """
    prev = list(range(len(b) + 1))  # row i = 0: turning "" into b[:j] takes j insertions
    for i, x in enumerate(a, 1):
        cur = [i]  # column j = 0: deleting all i letters of a[:i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


# ----------------------------------------------------------------------------------------------
# The grammar task. A small probabilistic context-free grammar, n in {sg, pl}:
#
#     Text  -> S | S " " S | S " " S " " S              (1, 2 or 3 sentences, uniform)
#     S     -> NP_n VP_n "."                            (subject and verb agree in number)
#     NP_n  -> Det_n N_n | Det_n Adj N_n                (Adj with probability 0.4)
#     VP_n  -> Vt_n NP_m | Vt_n | Vi_n                  (0.45 / 0.15 / 0.4; object number m free)
#     Det   -> "a" before a consonant letter, "an" before a vowel letter (a, e, i, o, u)
#
# Words run from 1 byte ("a") to 12 ("hippopotamus", "caterpillars"), so where the verb starts
# depends on which noun came first; agreement and a/an make "a valid sentence" much stricter than
# "lexicon words in a row". Categories are disjoint (only "the" has two numbers), so a sentence
# has one parse and the left-to-right recognizer below is exact.

DETERMINERS = {"a": ("sg",), "an": ("sg",), "this": ("sg",), "one": ("sg",), "the": ("sg", "pl"),
               "some": ("pl",), "two": ("pl",), "many": ("pl",), "these": ("pl",)}
NOUNS = [("ox", "oxen"), ("cat", "cats"), ("eel", "eels"), ("mouse", "mice"), ("badger", "badgers"),
         ("tortoise", "tortoises"), ("caterpillar", "caterpillars"), ("hippopotamus", "hippopotami")]
ADJECTIVES = ["red", "old", "tiny", "happy", "striped", "enormous", "invisible", "magnificent"]
TRANSITIVE = [("sees", "see"), ("chases", "chase"), ("likes", "like"), ("follows", "follow"),
              ("tickles", "tickle"), ("remembers", "remember")]
INTRANSITIVE = [("runs", "run"), ("sleeps", "sleep"), ("hides", "hide"), ("disappears", "disappear")]
VOWELS = "aeiou"  # no lexicon word starts with a silent h or a "you" sound, so letters decide a/an
P_ADJ, P_VT_OBJ, P_VT = 0.4, 0.45, 0.15  # P(Vi) = 1 - P_VT_OBJ - P_VT = 0.4
NUMBERS = ("sg", "pl")

# word form -> number, one table per category (sg forms first in each pair above)
_NOUN_NUM = {w: n for pair in NOUNS for n, w in zip(NUMBERS, pair)}
_VT_NUM = {w: n for pair in TRANSITIVE for n, w in zip(NUMBERS, pair)}
_VI_NUM = {w: n for pair in INTRANSITIVE for n, w in zip(NUMBERS, pair)}
GRAMMAR_LEXICON = frozenset([*DETERMINERS, *_NOUN_NUM, *ADJECTIVES, *_VT_NUM, *_VI_NUM])


def _sample_np(rng, num):
    """Det (Adj) N of number num, as a list of words."""
    adj = rng.choice(ADJECTIVES) if rng.random() < P_ADJ else None
    noun = NOUNS[rng.randrange(len(NOUNS))][NUMBERS.index(num)]
    nxt = adj or noun  # the article agrees with the sound of the word right after it
    dets = [d for d, nums in DETERMINERS.items() if num in nums and d not in ("a", "an")]
    if num == "sg":
        dets.append("an" if nxt[0] in VOWELS else "a")
    return [rng.choice(dets)] + ([adj] if adj else []) + [noun]


def _sample_sentence(rng):
    """One sentence S as a string ending in "."."""
    num = rng.choice(NUMBERS)
    words, u, k = _sample_np(rng, num), rng.random(), NUMBERS.index(num)
    if u < P_VT_OBJ:
        words += [rng.choice(TRANSITIVE)[k]] + _sample_np(rng, rng.choice(NUMBERS))
    elif u < P_VT_OBJ + P_VT:
        words.append(rng.choice(TRANSITIVE)[k])
    else:
        words.append(rng.choice(INTRANSITIVE)[k])
    return " ".join(words) + "."


@functools.lru_cache(maxsize=None)
def _shortest_sentence():
    """Bytes of the shortest sentence, Det N V "." (2880 candidates, each checked)."""
    verbs = [*_VT_NUM, *_VI_NUM]
    return min(len(" ".join(w)) + 1 for w in itertools.product(DETERMINERS, _NOUN_NUM, verbs)
               if _is_sentence(list(w)))


def grammar_examples(n, seed, prompt_words=1, max_bytes=None):
    """n examples {"prompt": the first prompt_words words + " ", "response": the rest of a text
    of 1-3 sentences}, fixed by the seed. max_bytes: texts longer than that (in bytes, prompt and
    response together) are drawn again, so every example fits a canvas."""
    if prompt_words < 1 or prompt_words >= 3 * 7:  # 3 sentences of at most 7 words
        raise ValueError(f"prompt_words must lie in 1..20, got {prompt_words}")
    if max_bytes is not None and max_bytes < _shortest_sentence():
        raise ValueError(f"max_bytes {max_bytes} is shorter than the shortest sentence "
                         f"({_shortest_sentence()} bytes)")
    # one generator drives every choice, in a fixed order: the same seed, the same examples
    rng, out, tries = random.Random(seed), [], 0
    while len(out) < n:
        text = " ".join(_sample_sentence(rng) for _ in range(rng.randint(1, 3)))
        words = text.split(" ")
        fits = max_bytes is None or len(text.encode()) <= max_bytes
        if fits and len(words) > prompt_words:  # the response must hold at least one word
            # the prompt keeps its trailing space, so the response starts with a word's first
            # byte and the model never has to guess the separator after the prompt
            out.append({"prompt": " ".join(words[:prompt_words]) + " ",
                        "response": " ".join(words[prompt_words:])})
            tries = 0
            continue
        tries += 1  # rejection sampling; give up when the constraints (nearly) never hold
        if tries > 100_000:
            raise ValueError(f"no text of more than {prompt_words} words fits {max_bytes} bytes")
    return out


def _parse_np(words, i):
    """(end, number) of the noun phrase Det (Adj) N at words[i:], or None."""
    nums = DETERMINERS.get(words[i]) if i < len(words) else None
    if nums is None:
        return None
    j = i + 1 + (i + 1 < len(words) and words[i + 1] in ADJECTIVES)  # the optional adjective
    if j >= len(words) or _NOUN_NUM.get(words[j]) not in nums:
        return None  # no noun, or one whose number the determiner does not allow
    if words[i] in ("a", "an") and (words[i] == "an") != (words[i + 1][0] in VOWELS):
        return None  # "a ox", "an cat"
    return j + 1, _NOUN_NUM[words[j]]


def _is_sentence(words):
    """True when the words (no final ".") are NP_n VP_n exactly."""
    np_ = _parse_np(words, 0)  # the subject fixes the number the verb must agree with
    if np_ is None or np_[0] >= len(words):
        return False
    j, num = np_
    verb, rest = words[j], len(words) - j - 1
    if _VI_NUM.get(verb) == num:
        return rest == 0
    if _VT_NUM.get(verb) == num:  # with no object, or with a whole noun phrase of any number
        return rest == 0 or (_parse_np(words, j + 1) or (0,))[0] == len(words)
    return False


def grammar_words(text):
    """The words of a text as grammar_check counts them: split at whitespace, a final "." cut off,
    a lone "." dropped."""
    return [w for w in (w[:-1] if w.endswith(".") else w for w in text.split()) if w]


def grammar_check(text):
    """Exact counts for a generated text (prompt + continuation):
    - parses: the text is >= 1 grammatical sentences joined by single spaces, nothing else;
    - sentences: non-blank pieces of text.split(".") (a trailing unterminated piece included);
    - valid_sentences: those pieces that end in "." and, stripped of surrounding whitespace, are
      grammatical words separated by single spaces;
    - words: whitespace-separated words, a final "." stripped (a lone "." is no word);
    - lexicon_words: those words that are word forms of GRAMMAR_LEXICON."""
    # "." only ever ends a sentence here (no abbreviations, no numbers), so splitting at it
    # recovers the sentences; a model's garbage between periods becomes one invalid piece
    pieces = text.split(".")
    ended = [p for p in pieces[:-1] if p.strip()]  # each of these was followed by a "."
    tail = [pieces[-1]] if pieces[-1].strip() else []  # text after the last ".", if any
    valid = [p.strip() for p in ended if _is_sentence(p.strip().split(" "))]
    cores = grammar_words(text)
    # strict form: the canonical joining of the valid sentences must give back the text exactly
    canonical = " ".join(s + "." for s in valid)
    return {"parses": bool(valid) and len(valid) == len(ended) + len(tail) and canonical == text,
            "sentences": len(ended) + len(tail), "valid_sentences": len(valid),
            "words": len(cores), "lexicon_words": sum(w in GRAMMAR_LEXICON for w in cores)}


# ----------------------------------------------------------------------------------------------
# The signature of an independent per-position readout. A CTC model predicts every position on
# its own, so when it is unsure where a token goes, two neighbouring positions can both emit the
# same token: one token is dropped and its neighbour doubled, the length unchanged ("abcd" ->
# "accd" or "aacd"). That is exactly one substitution whose new value is the reference's token
# just to the left or right of it.


def dropped_doubled(out, ref):
    """True when out is ref with one token dropped and a neighbour of it doubled (same length).
    Strings, bytes and lists all work: only positions and equality are used."""
    out, ref = list(out), list(ref)
    if len(out) != len(ref):
        return False
    diff = [i for i, (a, b) in enumerate(zip(out, ref)) if a != b]
    if len(diff) != 1:
        return False  # identical (nothing dropped), or more than one change
    i = diff[0]
    return (i > 0 and out[i] == ref[i - 1]) or (i + 1 < len(ref) and out[i] == ref[i + 1])


def dropped_doubled_word(word, lexicon=GRAMMAR_LEXICON):
    """True when word is not in the lexicon but is a lexicon word of the same length with one
    character dropped and a neighbour doubled: "badder" (badger, g dropped, d doubled) is;
    "bader" (another length) and "bodger" (o is no neighbour's letter) are not."""
    if word in lexicon:
        return False
    return any(dropped_doubled(word, w) for w in lexicon if len(w) == len(word))
