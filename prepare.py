"""
Write a token file from UTF-8 text with a tokenizer of your choice, in nanoGPT's format: a flat
array of ids (uint16 for vocabularies of at most 65536 ids, else uint32), and beside it a JSON file
that names the vocabulary, so that train.py --data FILE.bin needs no other flag and the checkpoint
records the vocabulary for decode.py and evaluate.py.

    python prepare.py corpus.txt data/corpus.bin --tokenizer tiktoken:gpt2   # pip install tiktoken
    python prepare.py corpus.txt data/corpus.bin --tokenizer hf:gpt2         # or a local folder
    python prepare.py corpus.txt data/corpus.bin --tokenizer words           # no dependency
    python prepare.py --sft task/train.jsonl data/train.jsonl --vocab data/corpus.bin  # SFT -> ids

Tokenizers: `tiktoken:NAME` and `hf:NAME_OR_PATH` load through tiktoken or transformers when
they are installed and their files are on this machine (this project downloads nothing); `words`
is a toy word-level tokenizer built from the text itself (words, runs of whitespace and single
symbols, most frequent first), enough to try the token path end to end without any package. The
special ids EOS, SLACK and MASK are not in the file: the model appends them after the n ordinary
ids (mdlm.special_ids), so the ids here are exactly the tokenizer's.

The text is read and tokenized line by line in chunks of about --chunk-mb MB, so memory stays
bounded for any file size (a chunk always ends at a line end, where no tokenizer merges).
"""

import argparse
import collections
import json
import os
import sys

import numpy as np
from tqdm import tqdm

import common
import data

# ----------------------------------------------------------------------------------------------
# Settings


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("input", help="UTF-8 text to tokenize (with --sft: a JSON-lines file of prompt/response)")
    a("output", help="the token file to write, NAME.bin (its vocabulary goes to NAME.json); with "
      "--sft, the JSON-lines file of prompt_ids/response_ids to write")
    a("--tokenizer", default="words",
      help=f"one of {data.TOKENIZERS} (default: words, the dependency-free toy)")
    a("--sft", action="store_true",
      help="turn SFT text records into id records with the vocabulary of --vocab")
    a("--vocab", default=None, help="with --sft: the token file (.bin) whose vocabulary to use")
    a("--chunk-mb", type=float, default=8.0,
      help="tokenize the text in chunks of about this many MB (default: 8)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# Tokenizing


def text_chunks(path, chunk_bytes):
    """The file's text in chunks of whole lines, about chunk_bytes each."""
    data.check_text_file(path, "input")
    with open(path, encoding="utf-8", newline="") as f:
        lines, size = [], 0
        for line in f:
            lines.append(line)
            size += len(line)
            if size >= chunk_bytes:
                yield "".join(lines)
                lines, size = [], 0
        if lines:
            yield "".join(lines)


def words_vocab(path, chunk_bytes):
    """The toy tokenizer's pieces, most frequent first (ties in text order), from one pass."""
    counts = collections.Counter()
    for chunk in text_chunks(path, chunk_bytes):
        counts.update(data.WORD_PIECES.findall(chunk))
    return tuple(w for w, _ in counts.most_common())


def vocab_for(name, path, chunk_bytes):
    """The Vocab of a tokenizer name; "words" is built from the text, the others are loaded."""
    if name == "words":
        words = words_vocab(path, chunk_bytes)
        return data.Vocab(len(words), "words", words)
    if name == "bytes":
        return data.Vocab()
    kind, _, model = name.partition(":")
    if kind not in ("tiktoken", "hf") or not model:
        raise common.UserError(f"unknown tokenizer {name!r}; use one of {data.TOKENIZERS}")
    if data.codec(name, ()) is None:
        package = "tiktoken" if kind == "tiktoken" else "transformers"
        raise common.UserError(f"tokenizer {name!r} cannot be loaded here: install {package}, and "
                             f"have its files on this machine (nothing is downloaded)")
    # the vocabulary's size: the largest id the tokenizer can emit, plus one
    if kind == "tiktoken":
        import tiktoken
        n = tiktoken.get_encoding(model).n_vocab
    else:
        from transformers import AutoTokenizer
        n = len(AutoTokenizer.from_pretrained(model))
    return data.Vocab(n, name)


def write_token_file(args):
    """Tokenize args.input into args.output (.bin) and its vocabulary into the .json beside it."""
    if not args.output.endswith(".bin"):
        raise common.UserError(f"the token file must be named NAME.bin, got {args.output!r}")
    chunk = int(args.chunk_mb * 2**20)
    vocab = vocab_for(args.tokenizer, args.input, chunk)
    dtype = "uint16" if vocab.n_tokens <= 1 << 16 else "uint32"
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp, n = f"{args.output}.tmp", 0
    with open(tmp, "wb") as f:  # written whole, then renamed: a crash leaves no half file
        for text in tqdm(text_chunks(args.input, chunk), desc="tokenize", unit="chunk"):
            ids = np.asarray(vocab.encode(text, args.input), dtype=dtype)
            ids.tofile(f)
            n += len(ids)
    os.replace(tmp, args.output)
    meta = {**vocab.record(), "dtype": dtype, "n_ids": n, "source": os.path.basename(args.input)}
    with open(os.path.splitext(args.output)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    print(f"{args.output}: {n} ids of a {vocab.n_tokens}-id vocabulary ({args.tokenizer}), {dtype}")


def write_sft_ids(args):
    """SFT text records -> {"prompt_ids", "response_ids"} records of the --vocab token file."""
    if not args.vocab:
        raise common.UserError("--sft needs --vocab: the token file whose vocabulary to use")
    vocab, _ = data.token_file_vocab(args.vocab)
    recs = data.read_jsonl(args.input)
    out = []
    for n, r in enumerate(recs, 1):
        if not all(isinstance(r.get(k), str) for k in ("prompt", "response")):
            raise common.UserError(f"{args.input}:{n}: need string keys 'prompt' and 'response'")
        out.append({"prompt_ids": vocab.encode(r["prompt"], f"{args.input}:{n}"),
                    "response_ids": vocab.encode(r["response"], f"{args.input}:{n}")})
    data.write_jsonl(args.output, out)
    print(f"{args.output}: {len(out)} records in the ids of {args.vocab}")


def main(argv=None):
    args = parse_args(argv)
    try:
        write_sft_ids(args) if args.sft else write_token_file(args)
    except (common.UserError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
