"""The optional parts of the install (``pyproject.toml``'s extras) and the check every command
makes before it imports one: a command whose extra is missing exits with status 2 and prints
the ``pip install`` line, instead of an ImportError traceback.

The core install (torch, numpy, pillow, safetensors) gives the model, the predictor, the
automatic generator, the operators, checkpoint loading, ``segment`` and ``export``.
"""

from __future__ import annotations

import importlib.util
import sys

#: extra -> the top-level modules it provides (what :func:`missing_modules` looks for).
EXTRAS: dict[str, tuple[str, ...]] = {
    "cli": ("hydra", "omegaconf", "lightning", "tqdm"),
    "train": ("hydra", "omegaconf", "lightning", "tqdm", "wandb", "torchmetrics"),
    "eval": ("hydra", "omegaconf", "lightning", "tqdm", "wandb", "pycocotools", "scipy"),
    "annotate": ("hydra", "omegaconf", "lightning", "tqdm", "aiohttp"),
    "text": ("transformers",),
    "onnx": ("onnx", "onnxruntime"),
    "coco": ("pycocotools",),
    "cluster": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
    "peft": ("peft",),
}


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package is missing
            found = False
        if not found:
            missing.append(module)
    return missing


def install_hint(extra: str) -> str:
    """The line that installs ``extra``."""
    return f"pip install 'sam_lightning[{extra}]'"


def require_extra(command: str, extra: str) -> None:
    """Exits with status 2, saying what to install, when ``extra`` is not installed."""
    if missing := missing_modules(extra):
        print(
            f"error: {command} needs the '{extra}' extra ({', '.join(missing)} not installed):"
            f"\n  {install_hint(extra)}",
            file=sys.stderr,
        )
        raise SystemExit(2)
