"""Reading and writing SAM weights safely.

Readable: official ``.pth`` files (a plain state dict), training checkpoints (a dict with a
``"state_dict"`` entry whose keys carry a module prefix such as ``"model."``, e.g. Lightning
checkpoints) and ``.safetensors`` files. Pickles are always read with
``torch.load(weights_only=True)``: files holding other pickled objects are refused.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sam_lightning.file_io import atomic_path

_SAM_MODULES = ("image_encoder", "prompt_encoder", "mask_decoder")
_FORMATS = ("torch", "safetensors")


class UnsafeCheckpointError(ValueError):
    """The file holds pickled objects other than tensors and plain containers."""


def load_state_dict_file(path: str | PathLike[str], prefix: str | None = None) -> dict[str, Tensor]:
    """Reads a state dict of SAM weights onto the CPU.

    Args:
        path: ``.safetensors`` file, or a ``torch.save`` file holding a state dict or a
            checkpoint dict with a ``"state_dict"`` entry.
        prefix: key prefix of the SAM weights inside a checkpoint's ``"state_dict"``
            (e.g. ``"model."``); by default the prefix in front of the SAM module names,
            which must be unique. Entries outside the prefix are ignored.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle holds callables or other non-tensor objects.
        ValueError: the file holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(path, device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise ValueError(f"{path} is not a readable torch checkpoint: {err}") from None
        culprit = re.search(r"GLOBAL (\S+)", str(err))
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors "
            "(callables or class instances), which could run code when unpickled"
            + (f"; first found: {culprit[1]}" if culprit else "")
        ) from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if isinstance(obj.get("state_dict"), Mapping):
        obj = _select_prefix(obj["state_dict"], prefix, path)
    not_tensors = [key for key, value in obj.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise ValueError(f"{path} is not a state dict: non-tensor entries {not_tensors}")
    return dict(obj)


def load_checkpoint(
    model: nn.Module,
    path: str | PathLike[str],
    strict: bool = True,
    prefix: str | None = None,
    may_be_missing: Sequence[str] = (),
) -> Any:
    """Loads weights from ``path`` (see :func:`load_state_dict_file`) into ``model``.

    Args:
        may_be_missing: key prefixes of the model that the file need not hold, even when
            ``strict`` (e.g. ``"prompt_encoder.text_projection."``: an official checkpoint
            loaded into a model with a text prompt); those weights keep their values.

    Raises:
        ValueError: listing missing and unexpected keys (when ``strict``) and keys whose
            shape differs (always), by name and shape.

    Returns:
        ``model.load_state_dict``'s result (missing and unexpected keys when not strict or
        when optional keys were missing).
    """
    state_dict = load_state_dict_file(path, prefix=prefix)
    expected = model.state_dict()
    optional = tuple(may_be_missing)
    _check_keys(
        {k: v for k, v in expected.items() if k in state_dict or not k.startswith(optional)},
        state_dict,
        strict,
        path,
    )
    skipped = any(k not in state_dict and k.startswith(optional) for k in expected)
    # Checked above: with ``strict``, the only missing keys are the optional ones.
    return model.load_state_dict(state_dict, strict=strict and not skipped)


def save_checkpoint(
    model_or_state_dict: nn.Module | Mapping[str, Tensor],
    path: str | PathLike[str],
    format: str | None = None,
) -> Path:
    """Writes a plain state dict atomically (temporary file in the same folder, then
    ``os.replace``): ``format="torch"`` is the official ``.pth`` format, ``"safetensors"``
    the safetensors format; by default safetensors iff the suffix is ``.safetensors``.

    Returns:
        The path written.
    """
    path = Path(path)
    format = format or ("safetensors" if path.suffix == ".safetensors" else "torch")
    if format not in _FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; choose one of {_FORMATS}")
    state_dict = (
        model_or_state_dict.state_dict()
        if isinstance(model_or_state_dict, nn.Module)
        else model_or_state_dict
    )
    not_tensors = [key for key, value in state_dict.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise TypeError(f"state dict entries are not tensors: {not_tensors}")
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}

    with atomic_path(path) as tmp:
        if format == "torch":
            with open(tmp, "xb") as f:
                torch.save(tensors, f)
        else:
            save_file(tensors, tmp)
    return path


def _select_prefix(
    state_dict: Mapping[str, Any], prefix: str | None, path: Path
) -> dict[str, Any]:
    """Entries of a training checkpoint's state dict under ``prefix`` (default: the unique
    prefix in front of the SAM module names), with the prefix removed."""
    if prefix is None:
        prefixes = {p for p in map(_sam_prefix, state_dict) if p is not None}
        if len(prefixes) != 1:
            found = f"several prefixes {sorted(prefixes)}" if prefixes else "no SAM weights"
            raise ValueError(f"{path}: {found} in 'state_dict'; pass prefix=")
        (prefix,) = prefixes
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _sam_prefix(key: str) -> str | None:
    """The part of ``key`` before the first SAM module name (``"model."`` for
    ``"model.image_encoder.pos_embed"``), ``None`` if it names no SAM module."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part in _SAM_MODULES:
            return "".join(f"{p}." for p in parts[:i])
    return None


def _check_keys(
    expected: Mapping[str, Tensor], found: Mapping[str, Tensor], strict: bool, path: Path | str
) -> None:
    """Raises a ValueError naming missing/unexpected (if ``strict``) and misshapen keys."""
    problems = []
    if strict:
        missing = [key for key in expected if key not in found]
        unexpected = [key for key in found if key not in expected]
        if missing:
            problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
    misshapen = [
        f"{key} (checkpoint {tuple(found[key].shape)}, model {tuple(expected[key].shape)})"
        for key in found
        if key in expected and found[key].shape != expected[key].shape
    ]
    if misshapen:
        problems.append(f"wrong shapes ({len(misshapen)}): " + ", ".join(misshapen))
    if problems:
        raise ValueError(f"checkpoint {path} does not match the model:\n  " + "\n  ".join(problems))
