"""
Everything the scripts read as data. One shared module, imported by objective.py and the entry
points; it has no command line of its own.

- Vocabularies. Bytes by default (256 ordinary ids, any UTF-8 text), or the n ids of a token file
  written by any tokenizer (prepare.py); EOS, SLACK and MASK follow the ordinary ids.
- Corpora of any size, memory-mapped as nanoGPT maps its .bin files: a UTF-8 text file already
  *is* its byte stream, and a token file is a flat uint16/uint32 array. Memory use is flat in the
  file size; the checks for bad files read bounded samples, never the whole file.
- SFT records. {"prompt": str, "response": str} (or "prompt_ids"/"response_ids" lists) per line,
  read into (prompt ids, response ids + EOS); the last ~5% is held out.

References: Karpathy, nanoGPT (github.com/karpathy/nanoGPT): the memory-mapped token file and
random windows.
"""

import ast
import functools
import json
import os
import re
import sys
import sysconfig
from dataclasses import dataclass

import numpy as np
import torch

import mdlm
from common import UserError


# ----------------------------------------------------------------------------------------------
# Vocabularies. A model's ordinary ids are bytes (the default) or the n ids of a token file that
# some tokenizer wrote; mdlm.special_ids puts EOS, SLACK and MASK right after them, so bytes give
# the familiar 256, 257, 258. Text goes in and out through the tokenizer a vocabulary names, and
# only where that tokenizer loads: tiktoken and transformers are optional, never required.

TOKENIZERS = "bytes, words, tiktoken:NAME, hf:NAME_OR_PATH or none"
WORD_PIECES = re.compile(r"\w+|\s+|[^\w\s]")  # every character is in one piece: pieces join back


@functools.lru_cache(maxsize=None)
def codec(tokenizer, words):
    """(encode, decode) between text and ids for a tokenizer name, or None where it cannot be
    loaded here (not installed, or its files are not on this machine: nothing is downloaded)."""
    if tokenizer == "bytes":
        return mdlm.encode, lambda ids: bytes(ids).decode("utf-8", errors="replace")
    if tokenizer == "words":  # the toy tokenizer of prepare.py: words, runs of space, symbols
        index = {w: i for i, w in enumerate(words)}
        return (lambda text: [index.get(w, -1) for w in WORD_PIECES.findall(text)],
                lambda ids: "".join(words[i] for i in ids))
    kind, _, name = tokenizer.partition(":")
    try:
        if kind == "tiktoken":
            import tiktoken
            enc = tiktoken.get_encoding(name)
            return lambda text: enc.encode(text, allowed_special="all"), enc.decode
        if kind == "hf":
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(name)
            return lambda text: tok.encode(text, add_special_tokens=False), tok.decode
    except Exception:  # ImportError, or the tokenizer's files are not here (no network)
        return None
    return None


@dataclass(frozen=True)
class Vocab:
    """The ordinary ids of a model and the tokenizer that maps text to them."""
    n_tokens: int = 256  # ordinary ids 0 .. n_tokens - 1
    tokenizer: str = "bytes"  # one of TOKENIZERS; "none": ids only
    words: tuple = ()  # the "words" tokenizer's pieces, id = position

    @property
    def size(self):
        """V: the ordinary ids and the three special ones (mdlm.ModelConfig.vocab_size)."""
        return self.n_tokens + 3

    @property
    def specials(self):
        """(EOS, SLACK, MASK)."""
        return mdlm.special_ids(self.size)

    def record(self):
        """Plain values for a checkpoint or a metadata file (with the special ids, for readers)."""
        eos, slack, mask = self.specials
        return {"n_tokens": self.n_tokens, "tokenizer": self.tokenizer, "words": list(self.words),
                "eos": eos, "slack": slack, "mask": mask}

    @classmethod
    def from_record(cls, rec):
        return cls(int(rec["n_tokens"]), rec.get("tokenizer", "none"), tuple(rec.get("words", ())))

    def has_text(self):
        """Whether text can be encoded and decoded here."""
        return codec(self.tokenizer, self.words) is not None

    def encode(self, text, what="text"):
        """Text -> ordinary ids; UserError when the tokenizer is not available or the text holds
        a piece outside the vocabulary. The empty text is no ids, with or without a tokenizer."""
        if text == "":
            return []
        pair = codec(self.tokenizer, self.words)
        if pair is None:
            raise UserError(f"{what}: this vocabulary's tokenizer {self.tokenizer!r} is not "
                            f"available here; give token ids instead (see --help)")
        ids = pair[0](text)
        bad = [i for i in ids if not 0 <= i < self.n_tokens]
        if bad:
            raise UserError(f"{what}: {text!r} has pieces outside the {self.n_tokens}-id "
                            f"vocabulary")
        return ids

    def decode(self, ids):
        """Ordinary ids -> text, or None when the tokenizer is not available here."""
        pair = codec(self.tokenizer, self.words)
        return None if pair is None else pair[1]([int(i) for i in ids])


def vocab_of(ckpt):
    """The vocabulary a checkpoint records; bytes for a byte model saved without the record."""
    rec = (ckpt.get("meta") or {}).get("vocab")
    if rec is not None:
        return Vocab.from_record(rec)
    n = int(ckpt["config"].get("vocab_size", mdlm.BYTE_VOCAB_SIZE)) - 3
    return Vocab(n, "bytes" if n == 256 else "none")


# ----------------------------------------------------------------------------------------------
# The default corpus: documentation every CPython install carries, so nothing is downloaded. The
# help topics of pydoc_data plus the docstrings of the standard library, read with `ast` (never
# imported), in sorted file order, capped at ~1.5 MB, cached to .cache/ next to the scripts.

CORPUS_BYTES = 1_500_000  # enough for a 1M-parameter model to learn English-like text on a CPU
# the last 5% of a corpus is held out (after the rest, not mixed in: no near-duplicates)
VAL_FRACTION = 0.05


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
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
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
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, ".cache", f"pydoc-{v[0]}.{v[1]}.txt")


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
    if size <= WHOLE_BYTES:
        offsets = [0]
    else:
        offsets = [0, size // 2 - SAMPLE_BYTES // 2, size - SAMPLE_BYTES]
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
#
# A token file is nanoGPT's format: a flat array of ids, uint16 (vocabularies up to 65536 ids) or
# uint32, no header. Its vocabulary comes from the JSON file beside it (corpus.bin ->
# corpus.json: {"n_tokens": 50257, "dtype": "uint16", "tokenizer": "tiktoken:gpt2"}, as
# prepare.py writes it) or, without one, from --vocab-size (then uint16 up to 65536 ids).

TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def token_file_vocab(path, n_tokens=None):
    """(Vocab, numpy dtype) of the token file at path, from its metadata or from n_tokens."""
    meta_path = os.path.splitext(path)[0] + ".json"
    if os.path.isfile(meta_path):
        try:
            meta = json.load(open(meta_path, encoding="utf-8"))
            vocab = Vocab(int(meta["n_tokens"]), str(meta.get("tokenizer", "none")),
                          tuple(meta.get("words", ())))
            dtype = meta.get("dtype", "uint16")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{meta_path}: need a JSON object with an integer 'n_tokens' and a "
                            f"'dtype' ({type(e).__name__}: {e})")
        if n_tokens is not None and n_tokens != vocab.n_tokens:
            raise UserError(f"--vocab-size {n_tokens} contradicts {meta_path} ({vocab.n_tokens})")
    elif n_tokens is not None:
        vocab, dtype = Vocab(n_tokens, "none"), "uint16" if n_tokens <= 1 << 16 else "uint32"
    else:
        raise UserError(f"token file {path!r} needs its vocabulary: write {meta_path} "
                        f"(see prepare.py) or pass --vocab-size")
    if dtype not in TOKEN_DTYPES:
        raise UserError(f"{path}: dtype {dtype!r} is not one of {sorted(TOKEN_DTYPES)}")
    if not 1 <= vocab.n_tokens <= np.iinfo(TOKEN_DTYPES[dtype]).max + 1:
        raise UserError(f"{path}: {vocab.n_tokens} ids do not fit the file's dtype {dtype}")
    return vocab, np.dtype(TOKEN_DTYPES[dtype])


def check_ids(ids, vocab, where):
    """Refuse ids outside the ordinary vocabulary: they would be read as EOS, SLACK or MASK, or
    index past the embedding. ids: a numpy array or tensor."""
    top = int(ids.max()) if len(ids) else 0
    if top >= vocab.n_tokens:
        raise UserError(f"{where}: id {top} is outside the vocabulary of {vocab.n_tokens} ids "
                        f"(its special ids are {vocab.specials}); a wrong --vocab-size or dtype?")


def load_corpus(path=None, val_fraction=VAL_FRACTION, n_tokens=None):
    """-> (train, val, vocab): 1-D views of one np.memmap of the whole file; train = the first
    (1 - val_fraction) of the tokens, val = the rest (at least one). path=None: the default corpus,
    built and cached on first use. A .bin path is a token file, anything else UTF-8 text."""
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
    if path.endswith(".bin"):
        vocab, dtype = token_file_vocab(path, n_tokens)
        ids = _token_map(path, dtype)
        # ids are checked whole in small files, in three samples of a large one (as text is),
        # and every batch is checked again as it is read
        chunk = SAMPLE_BYTES // dtype.itemsize
        for lo in [0] if len(ids) <= 3 * chunk else [0, len(ids) // 2, len(ids) - chunk]:
            check_ids(np.asarray(ids[lo:lo + (chunk if len(ids) > 3 * chunk else len(ids))]), vocab,
                      f"token file {path!r} (ids {lo}..)")
    else:
        if n_tokens is not None:
            raise UserError("--vocab-size is for token files (.bin); a text file is bytes")
        size = check_text_file(path)
        vocab, ids = Vocab(), np.memmap(path, dtype=np.uint8, mode="r", shape=(size,))
    # split by position, not documents: the held-out tail never overlaps the training text
    n_val = max(1, int(len(ids) * val_fraction))
    return ids[:len(ids) - n_val], ids[len(ids) - n_val:], vocab


def _token_map(path, dtype):
    """np.memmap of a token file, after checking its size and a bounded sample of its ids."""
    if not os.path.isfile(path):
        raise UserError(f"token file {path!r} does not exist or is not a file")
    size = os.path.getsize(path)
    if size == 0 or size % dtype.itemsize:
        raise UserError(f"token file {path!r} has {size} bytes, not a positive multiple of "
                        f"{dtype.itemsize} ({dtype.name}): truncated, or another dtype")
    return np.memmap(path, dtype=dtype, mode="r")


def _file_span(split):
    """(file name, byte offset in the file) of a 1-D memmap view, or None for an array. A slice
    keeps its root map's .filename and .offset, so its own start is found from the data
    pointers: the root's first element sits at file offset root.offset."""
    if not isinstance(split, np.memmap) or split.filename is None:
        return None
    root = split
    while isinstance(root.base, np.memmap):
        root = root.base
    if split.ndim != 1 or not split.flags.c_contiguous:
        return None
    return split.filename, root.offset + split.ctypes.data - root.ctypes.data


def windows(split, offsets, n):
    """(B, n) int64 tensor: the n ids starting at each offset of a 1-D array or memmap. One fancy
    index, offsets[:, None] + arange(n), touches only the pages those ids live on."""
    if isinstance(offsets, torch.Tensor):
        offsets = offsets.cpu().numpy()
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    if len(offsets) == 0 or n == 0:
        return torch.zeros(len(offsets), n, dtype=torch.int64)
    # a negative index would wrap around silently, so both ends are checked, not only the right
    if offsets.min() < 0 or offsets.max() + n > len(split):
        raise ValueError(f"windows of {n} ids at offsets {offsets.min()}..{offsets.max()} "
                         f"do not fit a split of {len(split)} ids")
    # row b of idx is offsets[b], offsets[b] + 1, ..., offsets[b] + n - 1: one gather, no loop
    idx = offsets[:, None] + np.arange(n, dtype=np.int64)
    span = _file_span(split)
    if span is None:
        return torch.from_numpy(np.asarray(split[idx], dtype=np.int64))
    # A fresh map per batch, closed when this call returns (as nanoGPT does). Every page a batch
    # faults in stays mapped, and counted in the process's resident memory, for as long as its
    # map lives; the kernel may map a whole large folio (up to MBs) around each touched byte. With
    # one long-lived map the resident size would creep up to the file size over training.
    fresh = np.memmap(span[0], dtype=split.dtype, mode="r", offset=span[1], shape=(len(split),))
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


def read_sft(path, vocab=Vocab()):
    """JSON lines -> list of (prompt ids, response ids + EOS). A line is {"prompt": str,
    "response": str}, encoded by the vocabulary's tokenizer, or {"prompt_ids": [...],
    "response_ids": [...]}, ordinary ids of the vocabulary."""
    records, eos = [], vocab.specials[0]
    for n, rec in _json_lines(path, "SFT file"):
        where = f"{path}:{n}"
        if not isinstance(rec, dict):
            rec = {}  # refused below, with the same message as a dict without the keys
        if all(isinstance(rec.get(k), str) for k in ("prompt", "response")):
            ids = [vocab.encode(rec[k], where) for k in ("prompt", "response")]
        elif all(isinstance(rec.get(k), list) and all(type(i) is int for i in rec[k])
                 for k in ("prompt_ids", "response_ids")):
            ids = [rec["prompt_ids"], rec["response_ids"]]
            check_ids(np.array(ids[0] + ids[1] + [0]), vocab, where)
        else:
            raise UserError(f"{where}: need string keys 'prompt' and 'response', or integer lists "
                            f"'prompt_ids' and 'response_ids'")
        records.append((ids[0], ids[1] + [eos]))  # EOS closes the response: where it stops
    if not records:
        raise UserError(f"SFT file {path!r} has no records")
    return records


def with_start(ids, bos, vocab):
    """A prompt's ids as a model trained with train.py --bos sees them (bos true): after EOS, the
    start token. Rotary positions are relative only, so without a prompt a canvas of MASK looks
    the same at every position; the start token anchors it. Read by training and decoding alike."""
    return [vocab.specials[0], *ids] if bos else list(ids)


def split_sft(records):
    """(train, val): the last max(1, n // 20) records are held out, the rest train. A single
    record is used for both, so a one-line smoke test still has something to validate on."""
    if not records:
        raise ValueError("no records to split")
    if len(records) == 1:
        return records[:], records[:]
    n_val = max(1, len(records) // 20)
    return records[:-n_val], records[-n_val:]
