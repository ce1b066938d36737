"""Reading and writing SAM weights safely.

Readable: official ``.pth`` files (a plain state dict), training checkpoints (a dict with a
``"state_dict"`` entry whose keys carry a module prefix such as ``"model."``, e.g. Lightning
checkpoints) and ``.safetensors`` files. Pickles are always read with
``torch.load(weights_only=True)``: files holding other pickled objects are refused.
A file that cannot be read raises :class:`CheckpointError`, one line naming the file and
what is wrong with it (empty, truncated, corrupt, not a checkpoint, unsafe).
"""

from __future__ import annotations

import _compat_pickle
import json
import pickle
import pickletools
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sam_lightning.file_io import atomic_path

_SAM_MODULES = ("image_encoder", "prompt_encoder", "mask_decoder")
_FORMATS = ("torch", "safetensors")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: empty, truncated or corrupt, not a checkpoint
    at all, or no state dict of tensors; the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds pickled objects other than tensors and plain containers."""


#: ``hyper_parameters`` key of a training checkpoint that holds only the parameters its run
#: trained (:mod:`sam_lightning.training.trained_only`); the rest is its base checkpoint.
TRAINED_ONLY_KEY = "trained_only"
#: ``hyper_parameters`` key of a distillation checkpoint (its teacher's model type): it holds
#: the student encoder; the teacher checkpoint gives the rest.
DISTILLED_KEY = "distilled_from"

#: safetensors refuses headers above this size (``MAX_HEADER_SIZE`` of the Rust crate).
_SAFETENSORS_MAX_HEADER = 100_000_000
_INTERRUPTED = "an interrupted download or copy?"


def load_state_dict_file(
    path: str | PathLike[str], prefix: str | None = None, *, trained_only: bool = False
) -> dict[str, Tensor]:
    """Reads a state dict of SAM weights onto the CPU.

    Args:
        path: ``.safetensors`` file, or a ``torch.save`` file holding a state dict or a
            checkpoint dict with a ``"state_dict"`` entry.
        prefix: key prefix of the SAM weights inside a checkpoint's ``"state_dict"``
            (e.g. ``"model."``); by default the prefix in front of the SAM module names,
            which must be unique. Entries outside the prefix are ignored.
        trained_only: accept a training checkpoint that holds only what its run trained
            (``hyper_parameters["trained_only"]``); by default it is refused, naming the
            export that completes it from its base.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the pickle holds callables or other non-tensor objects.
        CheckpointError: the file is empty, truncated or corrupt, is no checkpoint, or holds
            no state dict (one line naming the file and the problem).
        ValueError: no unique SAM prefix in a checkpoint's ``"state_dict"``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror or err}") from err
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): {_INTERRUPTED}")
    if path.suffix == ".safetensors":
        try:
            return load_file(path, device="cpu")
        except Exception as err:  # SafetensorError, OSError...: diagnosed from the file
            raise CheckpointError(_safetensors_problem(path, size, head, err)) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # garbage makes the unpickler fail in many ways
        error = _torch_error(path, size, head, err)
        # torch's own advice for an unsafe file is to load it with weights_only=False
        raise error from None if isinstance(error, UnsafeCheckpointError) else err
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if isinstance(obj.get("state_dict"), Mapping):
        hparams = obj.get("hyper_parameters")
        if not trained_only and isinstance(hparams, Mapping) and hparams.get(TRAINED_ONLY_KEY):
            raise CheckpointError(
                f"{path} holds only the parameters its training run trained; the rest is its "
                f"base checkpoint {hparams.get('checkpoint')}: write the whole model with "
                f"`python -m sam_lightning.export {path} model.pth` and use model.pth"
            )
        obj = _select_prefix(obj["state_dict"], prefix, path)
    not_tensors = [key for key, value in obj.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path} is not a state dict: non-tensor entries {not_tensors}")
    return dict(obj)


def _torch_error(path: Path, size: int, head: bytes, err: Exception) -> CheckpointError:
    """What is wrong with a file that ``torch.load(weights_only=True)`` failed to read,
    judged by its first bytes: a zip archive (the ``torch.save`` format), a pickle (the
    legacy format, or ``pickle.dump``) or neither. A pickle that names a global outside
    torch's allow-list is refused as unsafe (:class:`UnsafeCheckpointError`); pickles are
    only parsed here (``pickletools``), never run."""
    culprit = _refused_global(err)
    if culprit is not None:
        return _unsafe(path, culprit)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return CheckpointError(
                f"checkpoint {path} is a truncated or corrupt zip archive (the torch.save "
                f"format): {size:,} bytes without a readable end of archive ({_INTERRUPTED})"
            )
        try:
            with zipfile.ZipFile(path) as archive:
                pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
                if not pickles:
                    return CheckpointError(
                        f"{path} is a zip archive but not a torch checkpoint (no data.pkl inside)"
                    )
                with archive.open(pickles[0]) as data:
                    culprit, _ = _scan_pickles(data, count=1)
        except Exception as zip_err:  # a corrupt member: CRC, compression...
            return CheckpointError(
                f"checkpoint {path} is a corrupt zip archive (the torch.save format): "
                f"{_reason(zip_err)}"
            )
        if culprit is not None:
            return _unsafe(path, culprit)
        return CheckpointError(
            f"checkpoint {path} is a corrupt zip archive (the torch.save format): {_reason(err)}"
        )
    if head.startswith(b"\x80"):  # PROTO: a pickle of protocol 2 or later
        with open(path, "rb") as f:  # legacy torch.save: 5 pickles, then the tensor data
            culprit, problem = _scan_pickles(f, count=5)
        if culprit is not None:
            return _unsafe(path, culprit)
        if problem is not None:
            return CheckpointError(
                f"checkpoint {path} is a truncated or corrupt pickle (the legacy torch.save "
                f"format, {size:,} bytes): {problem}"
            )
        if head[1] > 2 and "Unsupported operand" in str(err):
            return CheckpointError(
                f"{path} is a pickle of protocol {head[1]}, which torch.load(weights_only=True) "
                "cannot read: save the state dict with torch.save"
            )
        return CheckpointError(
            f"checkpoint {path} is truncated or corrupt (the legacy torch.save format, "
            f"{size:,} bytes): {_reason(err)}"
        )
    with open(path, "rb") as f:  # perhaps a pickle of protocol 0 or 1 (text opcodes)
        culprit, _ = _scan_pickles(f, count=1)
    if culprit is not None:
        return _unsafe(path, culprit)
    hint = ""
    if head[8:9] == b"{":
        hint = "; it looks like a safetensors file: give it the suffix .safetensors"
    return CheckpointError(
        f"{path} is not a torch checkpoint: neither a zip archive (torch.save) nor a pickle "
        f"(it starts with {head[:8]!r}){hint}"
    )


def _unsafe(path: Path, culprit: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refusing to load {path}: it holds pickled objects other than tensors "
        "(callables or class instances), which could run code when unpickled; "
        f"first found: {culprit}"
    )


def _refused_global(err: Exception) -> str | None:
    """The global that ``torch.load(weights_only=True)`` refused to import (``GLOBAL
    posix.system``), or None when ``err`` is no such refusal (garbage that happens to read
    as a GLOBAL instruction names no dotted Python identifier)."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    found = re.search(r"GLOBAL (\S+)", str(err))
    return found[1] if found is not None and _is_dotted_name(found[1]) else None


def _is_dotted_name(name: str) -> bool:
    return all(part.isidentifier() for part in name.split("."))


def _scan_pickles(file: Any, count: int) -> tuple[str | None, str | None]:
    """Parses (never runs) up to ``count`` consecutive pickles from the binary ``file``
    (stopping at its end): the first global outside torch's ``weights_only`` allow-list,
    or else what makes the pickles unreadable (truncated, unknown opcode), or neither."""
    allowed = _allowed_globals()
    for _ in range(count):
        if not file.peek(1):
            break
        pushed: list[Any] = []  # what each opcode pushed: a string, or None
        memo: dict[int, Any] = {}
        try:
            for opcode, arg, _pos in pickletools.genops(file):
                name = opcode.name
                if name in ("GLOBAL", "INST", "STACK_GLOBAL"):
                    if name == "STACK_GLOBAL":
                        parts = pushed[-2:]
                        arg = " ".join(p if isinstance(p, str) else "?" for p in parts)
                    module, _, attr = str(arg).partition(" ")
                    if (module, attr) in _compat_pickle.NAME_MAPPING:
                        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
                    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
                    if not allowed(f"{module}.{attr}"):
                        if name == "STACK_GLOBAL" and "?" in (module, attr):
                            return "a global built on the stack (STACK_GLOBAL)", None
                        if not _is_dotted_name(f"{module}.{attr}"):  # text or garbage
                            return None, f"no Python name in a global: {module} {attr}"[:200]
                        return f"{module}.{attr}", None
                    pushed.append(None)
                elif name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = pushed[-1] if pushed else None
                elif name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(arg))
                elif opcode.stack_after:
                    pushed.append(arg if isinstance(arg, str) else None)
        except ValueError as err:  # pickletools: "pickle exhausted before seeing STOP", ...
            return None, " ".join(str(err).split())[:200]
        except (MemoryError, OverflowError):  # garbage announcing a string of exabytes
            return None, "a string longer than the file"
    return None, None


def _allowed_globals() -> Callable[[str], bool]:
    """Whether ``torch.load(weights_only=True)`` imports a global: torch's own allow-list,
    as :func:`torch.serialization.get_unsafe_globals_in_checkpoint` reads it."""
    try:
        from torch import _weights_only_unpickler as unpickler

        names = set(unpickler._get_allowed_globals()) | set(unpickler._get_user_allowed_globals())
    except (ImportError, AttributeError):  # private: a torch without it
        return lambda name: name.startswith(("torch.", "collections."))
    return names.__contains__


def _reason(err: BaseException) -> str:
    """The library's own words for ``err`` on one line (without torch's advice on
    ``weights_only``), prefixed with the exception type when they say little."""
    text = str(err).rpartition("WeightsUnpickler error:")[2]
    text = text.removeprefix("Error while deserializing header: ")
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [" ".join(line.split()) for line in text.splitlines()]
    text = next((line for line in lines if line), "")
    if len(text) > 200:
        text = text[:197] + "..."
    if not text or not isinstance(err, (RuntimeError, pickle.UnpicklingError, OSError)):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text


def _safetensors_problem(path: Path, size: int, head: bytes, err: Exception) -> str:
    """What is wrong with a ``.safetensors`` file that safetensors failed to read: its
    layout is an 8-byte little-endian header length, the JSON header, then the data."""
    if size < 8:
        return (
            f"safetensors file {path} is truncated: {size} bytes, fewer than the 8 of its "
            f"header length ({_INTERRUPTED})"
        )
    length = int.from_bytes(head[:8], "little")
    if length > _SAFETENSORS_MAX_HEADER or (size > 8 and head[8:9] != b"{"):
        hint = " (it is a zip archive: a torch .pth file?)" if head.startswith(b"PK") else ""
        return (
            f"{path} is not a safetensors file, or its header is corrupt: the header length "
            f"reads {length:,} bytes and the header is no JSON object{hint}"
        )
    if 8 + length > size:
        return (
            f"safetensors file {path} has a truncated header: {length:,} bytes announced, "
            f"{size - 8:,} present ({_INTERRUPTED})"
        )
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(length)
    try:
        header = json.loads(raw)
        ends = [
            int(info["data_offsets"][1]) for key, info in header.items() if key != "__metadata__"
        ]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as json_err:
        return f"safetensors file {path} has a corrupt header: {_reason(json_err)}"
    expected, present = max(ends, default=0), size - 8 - length
    if present < expected:
        return (
            f"safetensors file {path} has truncated data: the header describes {expected:,} "
            f"bytes of tensors, {present:,} are present ({_INTERRUPTED})"
        )
    if present > expected:
        return (
            f"safetensors file {path} has corrupt data: {present:,} bytes of data where the "
            f"header describes {expected:,}"
        )
    return f"safetensors file {path} has corrupt data: {_reason(err)}"


#: A hook of :func:`load_checkpoint`: ``adapt(state_dict, model, path)`` returns the state
#: dict to load (e.g. :func:`~sam_lightning.modeling.image_size.adapt_to_model`).
StateDictAdapter = Callable[[dict[str, Tensor], nn.Module, Path], Mapping[str, Tensor]]


def load_checkpoint(
    model: nn.Module,
    path: str | PathLike[str],
    strict: bool = True,
    prefix: str | None = None,
    may_be_missing: Sequence[str] = (),
    *,
    adapt: StateDictAdapter | None = None,
) -> Any:
    """Loads weights from ``path`` (see :func:`load_state_dict_file`) into ``model``.

    Args:
        may_be_missing: key prefixes of the model that the file need not hold, even when
            ``strict`` (e.g. ``"prompt_encoder.text_projection."``: an official checkpoint
            loaded into a model with a text prompt); those weights keep their values.
        adapt: applied to the file's state dict before the key and shape check, with the
            model and the file's path (for its messages): e.g.
            :func:`~sam_lightning.modeling.image_size.adapt_to_model` interpolates the
            weights that depend on the input size. None: loaded as read.

    Raises:
        ValueError: listing missing and unexpected keys (when ``strict``) and keys whose
            shape differs (always), by name and shape.

    Returns:
        ``model.load_state_dict``'s result (missing and unexpected keys when not strict or
        when optional keys were missing).
    """
    state_dict = load_state_dict_file(path, prefix=prefix)
    if adapt is not None:
        state_dict = dict(adapt(state_dict, model, Path(path)))
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
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Writes a plain state dict atomically (temporary file in the same folder, then
    ``os.replace``): ``format="torch"`` is the official ``.pth`` format, ``"safetensors"``
    the safetensors format; by default safetensors iff the suffix is ``.safetensors``.
    ``metadata``: string entries of a safetensors header (e.g. an adapter's settings).

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
            if metadata:
                raise ValueError("metadata needs the safetensors format")
            with open(tmp, "xb") as f:
                torch.save(tensors, f)
        else:
            save_file(tensors, tmp, metadata=None if metadata is None else dict(metadata))
    return path


def _select_prefix(state_dict: Mapping[str, Any], prefix: str | None, path: Path) -> dict[str, Any]:
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
