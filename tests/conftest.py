"""Make the top-level scripts importable from the tests (the project is flat, not a package)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import torch  # noqa: E402

import mdlm  # noqa: E402


def tiny_model(causal=False, seed=0, seq_len=32, *, n_layer=1, n_embd=16,
               vocab_size=mdlm.VOCAB_SIZE, sharp=False):
    """A random Transformer of the given size, in eval mode, seeded: the one test model, which
    each test file sizes with functools.partial. sharp: unit-variance weights, so its predictions
    depend strongly on the canvas (at the usual 0.02 init they are almost uniform
    whatever the input)."""
    torch.manual_seed(seed)
    cfg = mdlm.ModelConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=2,
                           n_embd=n_embd, causal=causal)
    model = mdlm.Transformer(cfg).eval()
    if sharp:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_()
    return model
