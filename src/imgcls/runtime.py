"""Device choice, mixed precision, seeding, logging and progress bars."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from imgcls.errors import UserError

log = logging.getLogger("imgcls")


class MissingExtra(UserError, ImportError):
    """An optional package is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, what: str | None = None):
    """Import ``module`` (an optional dependency) or raise :class:`MissingExtra`, one line
    naming the extra to install: ``tracking needs the 'track' extra: pip install 'imgcls[track]'``.

    Every import of a package that only an extra installs goes through here, so a missing
    one never surfaces as a bare ModuleNotFoundError from deep inside a run."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        missing = getattr(err, "name", None) or module
        raise MissingExtra(f"{what or module} needs the '{extra}' extra: pip install 'imgcls[{extra}]' "
                           f"({missing} is not installed)") from None


# On CPU a forward pass over a few images at a time keeps the activations in cache:
# efficientnet_lite0 at 224 ran 80 img/s in chunks of 8 against 40 at batch 32 (2 cores).
CPU_INFERENCE_CHUNK = 8


def infer(model, images: torch.Tensor, **kwargs):
    """``model(images)`` for inference, in chunks on CPU (same outputs: eval mode has no
    batch statistics); outputs may be a tensor or a tuple of tensors."""
    small = len(images) <= CPU_INFERENCE_CHUNK
    if images.device.type != "cpu" or small or not getattr(model, "chunked_inference", True):
        return model(images, **kwargs)
    outputs = [model(part, **kwargs) for part in images.split(CPU_INFERENCE_CHUNK)]
    if isinstance(outputs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outputs))
    return torch.cat(outputs)


def memory_format_for(device: torch.device, enabled: bool = True) -> torch.memory_format:
    """channels_last wherever convolutions run faster in it: on CUDA (tensor cores) and on
    CPU too, where oneDNN's NHWC kernels trained efficientnet_lite0 1.9x and resnet18 1.2x
    faster than NCHW on 2 cores (see docs/performance.md)."""
    return torch.channels_last if enabled and device.type in ("cuda", "cpu") else torch.contiguous_format


def select_device(name: str = "auto") -> torch.device:
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def configure_cuda() -> None:
    """TF32 matmuls/convolutions and cuDNN autotuning: free speed for fixed-size training."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it (no loss scaling needed), else fp16; none on CPU/MPS,
    where autocast is slower than fp32 on most machines."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_logging(log_file: Path | None = None, verbose: bool = True) -> None:
    log.setLevel(logging.INFO)
    for handler in list(log.handlers):
        if getattr(handler, "_imgcls", False):
            log.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)] if verbose else []
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
        handlers[-1].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    for handler in handlers:
        handler._imgcls = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.propagate = False


def progress(iterable, desc: str, total: int | None = None):
    """A progress bar on a terminal, or a notebook widget in Jupyter (``tqdm.auto``); silent
    otherwise, e.g. in a log file or CI (epoch summaries are logged as lines)."""
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=not (sys.stderr.isatty() or in_notebook()))


def in_notebook() -> bool:
    """Is this a Jupyter kernel (where ``tqdm.auto`` draws widgets)? Looked up without
    importing IPython: only a running kernel has it loaded."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux MemAvailable; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
