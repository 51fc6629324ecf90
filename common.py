"""
What every script shares beside the method: the error a user can fix, checkpoints (written
atomically, loaded with weights_only=True), the device, and the GPU arithmetic of model FLOPs
utilisation. One small module; no command line.
"""

import os

import torch

import mdlm


class UserError(Exception):
    """Bad input: printed as one line by the entry points, exit code 1, nothing written over."""


# ----------------------------------------------------------------------------------------------
# Checkpoints: a dict of tensors and plain Python values, so it loads with weights_only=True
# (no pickled code runs). Written to a temporary file first, then renamed: a crash or Ctrl-C
# mid-write leaves the previous checkpoint intact.


class CheckpointError(Exception):
    """A checkpoint that cannot be used: missing, truncated, or made for another config."""


def save_checkpoint(obj, path):
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic on POSIX and Windows


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint dict, turning every failure into one clear CheckpointError."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...
        raise CheckpointError(f"checkpoint {path!r} is corrupted or not a checkpoint "
                              f"({type(e).__name__}: {e})")
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"checkpoint {path!r} lacks a model config or weights")
    return ckpt


def model_from_checkpoint(ckpt, use_ema=True, device="cpu"):
    """Rebuild the model a checkpoint describes; EMA weights (if stored) by default."""
    try:
        cfg = mdlm.ModelConfig.from_dict(ckpt["config"])
        model = mdlm.Transformer(cfg)
        state = ckpt.get("ema") if use_ema and ckpt.get("ema") is not None else ckpt["model"]
        model.load_state_dict(state)
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint does not match this code's model: {e}")
    return model.to(device).eval()


def checkpoint_meta(ckpt):
    """How the checkpoint's model was trained: objective, schedule, whether it knows SLACK, the
    collapse map, whether its prompts begin with a start token (bos). A checkpoint without this
    record is a plain model: AR if its config is causal, else an MDLM with the linear schedule
    that never saw slack, nor a start token."""
    causal = bool(ckpt.get("config", {}).get("causal"))
    return {"objective": "ar" if causal else "mdlm", "schedule": "linear", "slack": False,
            "collapse": "surface", "bos": False, **(ckpt.get("meta") or {})}


# ----------------------------------------------------------------------------------------------
# Devices: what runs where, and how fast it could.


def pick_device(name="auto"):
    """'auto' -> cuda, then mps, then cpu (as llm.c does). A device that is named but absent is a
    ValueError with a readable message (torch would fail later, deep inside, with an assertion)."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but this torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use --device cpu or auto")
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "mps" and not has_mps:
        raise ValueError("device 'mps' was asked for, but this machine has no usable MPS backend")
    if name not in ("auto", "cpu", "mps") and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if has_mps else "cpu"


def has_bf16(device):
    """Whether bf16 matmuls run natively: CUDA, or a CPU with AVX512-BF16 or AMX tiles (the
    probes are torch.cpu's; a torch without them reports False)."""
    if device.startswith("cuda"):
        return True
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return device == "cpu" and any(getattr(torch.cpu, p, lambda: False)() for p in probes)


# peak dense bf16 tensor-core FLOP/s by GPU name (vendor data sheets, without sparsity)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def estimate_mfu(model, tokens_per_s, device, peak=None):
    """Model FLOPs utilisation: achieved training FLOP/s (model.flops_per_token() each) over the
    card's peak dense bf16 FLOP/s (peak, or looked up by the CUDA card's name; None off CUDA or
    on a card not listed)."""
    if peak is None and str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return model.flops_per_token() * tokens_per_s / peak if peak else None
