"""LoRA adapters of SAM in plain torch: which modules they adapt, the fused ``qkv`` split
that lets q and v be adapted alone, their file format, and merging them into the base
weights. Training injects them with ``peft`` (:mod:`sam_lightning.training.lora`); nothing
here imports it, so applying a trained adapter at inference needs only the core install.

An adapter of a linear layer ``W`` (``out × in``) is ``A`` (``rank × in``) and ``B``
(``out × rank``): the layer computes ``W x + (alpha / rank) B A x``, and merging adds
``(alpha / rank) B A`` to ``W``. In ``qv`` mode (SAMed, micro-sam) the image encoder's fused
``qkv`` projection is split into ``q``, ``k`` and ``v`` linears and only ``q`` and ``v`` get
adapters (each its own ``A``, ``B``); merging writes their deltas into the q and v rows of the
fused weight. In ``qkv`` mode the fused layer gets one adapter (q, k and v together).

Adapter tensors are named after the adapted module: ``<module>.lora_A.weight`` and
``<module>.lora_B.weight`` (``image_encoder.blocks.0.attn.qkv.q.lora_A.weight`` in ``qv``
mode), as ``peft`` saves them; other trained parameters (e.g. a fully trained mask decoder)
keep their official names. An adapter file is safetensors with :class:`AdapterInfo` as
metadata.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from sam_lightning.modeling.checkpoint import CheckpointError, load_state_dict_file, save_checkpoint
from sam_lightning.modeling.image_encoder import Attention as VitAttention
from sam_lightning.modeling.sam import PARTS

#: Names usable in ``targets`` for the usual module families (regexes otherwise).
TARGET_ALIASES: dict[str, str] = {
    "encoder_attn": r"image_encoder\.blocks\.\d+\.attn\.(qkv|proj)",
    "encoder_mlp": r"image_encoder\.blocks\.\d+\.mlp\.(lin1|lin2)",
    "decoder_attn": (
        r"mask_decoder\.transformer\.(layers\.\d+\.(self_attn|cross_attn_token_to_image|"
        r"cross_attn_image_to_token)|final_attn_token_to_image)\.(q_proj|k_proj|v_proj|out_proj)"
    ),
}
DEFAULT_TARGETS = ("encoder_attn",)
QKV_MODES = ("qv", "qkv")
ADAPTER_FORMAT = "sam_lightning.lora/1"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


@dataclass(frozen=True)
class LoraSpec:
    """What a LoRA adapter adapts and how (``model.lora``).

    Args:
        rank: rank of every adapter (> 0).
        alpha: scale numerator: the delta is ``alpha / rank · B A`` (None: ``rank``, a
            scale of 1, as SAMed and micro-sam have it).
        dropout: dropout on the adapter's input (training only).
        targets: module-name patterns: aliases of :data:`TARGET_ALIASES` or regexes that
            must match the whole module name (as ``re.fullmatch``).
        qkv: ``qv`` adapts only q and v of a fused ``qkv`` projection, ``qkv`` all three.
    """

    rank: int
    alpha: float | None = None
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    qkv: str = "qv"

    def __post_init__(self) -> None:
        if int(self.rank) <= 0:
            raise ValueError(
                f"model.lora.rank must be > 0 (null or 0 turns LoRA off), got {self.rank}"
            )
        if self.alpha is not None and float(self.alpha) <= 0:
            raise ValueError(f"model.lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"model.lora.dropout must be in [0, 1), got {self.dropout}")
        if self.qkv not in QKV_MODES:
            raise ValueError(f"model.lora.qkv must be one of {QKV_MODES}, got {self.qkv!r}")
        if not self.targets:
            raise ValueError("model.lora.targets is empty: name at least one module pattern")
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"model.lora.targets: bad regex {pattern!r}: {err}") from None

    @property
    def scaling(self) -> float:
        """``alpha / rank``."""
        return float(self.rank if self.alpha is None else self.alpha) / int(self.rank)

    @property
    def patterns(self) -> tuple[str, ...]:
        """The targets with aliases replaced by their regexes."""
        return tuple(TARGET_ALIASES.get(target, target) for target in self.targets)


@dataclass(frozen=True)
class AdapterInfo:
    """The metadata of an adapter file: the spec it was trained with, the model and the
    base checkpoint it adapts (path as recorded, SHA-256 of its bytes), and the names of
    the adapted modules and of the fully trained parameters it also holds."""

    rank: int
    alpha: float | None
    targets: tuple[str, ...]
    qkv: str
    model_type: str
    image_size: int
    base_sha256: str | None
    base_path: str | None = None
    modules: tuple[str, ...] = ()
    trained: tuple[str, ...] = field(default=())

    @property
    def spec(self) -> LoraSpec:
        return LoraSpec(rank=self.rank, alpha=self.alpha, targets=self.targets, qkv=self.qkv)

    def metadata(self) -> dict[str, str]:
        """As safetensors metadata (string values)."""
        values = {key: json.dumps(value) for key, value in asdict(self).items()}
        return {"format": ADAPTER_FORMAT, **values}

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, str] | None, path: str | PathLike[str]
    ) -> AdapterInfo:
        if not metadata or metadata.get("format") != ADAPTER_FORMAT:
            raise CheckpointError(
                f"{path} is not a sam_lightning LoRA adapter: its safetensors metadata has no "
                f"format {ADAPTER_FORMAT!r} (write one with python -m sam_lightning.export "
                "CKPT out.safetensors --adapter-only)"
            )
        try:
            values = {key: json.loads(metadata[key]) for key in cls.__dataclass_fields__}
        except (KeyError, ValueError) as err:
            raise CheckpointError(
                f"{path}: adapter metadata field missing or not JSON: {err}"
            ) from None
        for key in ("targets", "modules", "trained"):
            values[key] = tuple(values[key])
        return cls(**values)


class SplitQKV(nn.Module):
    """A fused ``qkv`` linear as three linears ``q``, ``k``, ``v`` whose outputs are
    concatenated (the same layout), so that q and v can be adapted alone."""

    def __init__(self, fused: nn.Linear) -> None:
        super().__init__()
        if fused.out_features % 3:
            raise ValueError(f"a fused qkv linear has 3·d outputs, got {fused.out_features}")
        dim = fused.out_features // 3
        device, dtype = fused.weight.device, fused.weight.dtype
        for index, name in enumerate("qkv"):
            linear = nn.Linear(
                fused.in_features, dim, bias=fused.bias is not None, device=device, dtype=dtype
            )
            rows = slice(index * dim, (index + 1) * dim)
            with torch.no_grad():
                linear.weight.copy_(fused.weight[rows])
                if fused.bias is not None:
                    linear.bias.copy_(fused.bias[rows])
            linear.requires_grad_(fused.weight.requires_grad)
            self.add_module(name, linear)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def adapted_modules(model: nn.Module, spec: LoraSpec) -> list[str]:
    """The names of the linear layers that ``spec`` adapts in ``model`` (before any split:
    a fused ``qkv`` is one name), in module order.

    Raises:
        ValueError: a pattern matches no module, or matches one that is not a linear layer.
    """
    patterns = [re.compile(p) for p in spec.patterns]
    names, not_linear = [], []
    used = [False] * len(patterns)
    for name, module in model.named_modules():
        hits = [i for i, pattern in enumerate(patterns) if pattern.fullmatch(name)]
        if not hits:
            continue
        for i in hits:
            used[i] = True
        (names if isinstance(module, nn.Linear) else not_linear).append(name)
    if not_linear:
        shown = ", ".join(not_linear[:5]) + (" ..." if len(not_linear) > 5 else "")
        raise ValueError(
            f"model.lora.targets match modules that are not linear layers ({shown}); LoRA "
            "adapts nn.Linear only: make the pattern match whole names, e.g. "
            f"{TARGET_ALIASES['encoder_attn']}"
        )
    unused = [t for t, u in zip(spec.targets, used) if not u]
    if unused:
        raise ValueError(
            f"model.lora.targets {unused} match no module of the model (patterns match whole "
            f"names; aliases: {sorted(TARGET_ALIASES)})"
        )
    return names


def is_fused_qkv(model: nn.Module, name: str) -> bool:
    """Whether the module ``name`` of ``model`` is a ViT block's fused q/k/v projection,
    whose output rows are all queries, then all keys, then all values. (TinyViT's ``qkv``
    interleaves them per head: it is adapted as one layer.)"""
    module = model.get_submodule(name)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    return (
        name.endswith(".attn.qkv")
        and isinstance(parent, VitAttention)
        and isinstance(module, nn.Linear)
        and module.out_features % 3 == 0
    )


def split_qkv(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Replaces each named fused ``qkv`` linear by a :class:`SplitQKV`; returns the names of
    the linears to adapt in ``qv`` mode (``<name>.q``, ``<name>.v``)."""
    adapted = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, SplitQKV(getattr(parent, child)))
        adapted += [f"{name}.q", f"{name}.v"]
    return adapted


def lora_module_names(model: nn.Module, spec: LoraSpec) -> tuple[list[str], list[str]]:
    """``(fused qkv layers to split, linear layers that get adapters)`` of ``spec`` in
    ``model`` (unsplit)."""
    to_split, adapted = [], []
    for name in adapted_modules(model, spec):
        if spec.qkv == "qv" and is_fused_qkv(model, name):
            to_split.append(name)
            adapted += [f"{name}.q", f"{name}.v"]
        else:
            adapted.append(name)
    return to_split, adapted


def adapted_parts(modules: Iterable[str]) -> list[str]:
    """The SAM parts (``image_encoder``, ...) holding any of the adapted ``modules``."""
    return [part for part in PARTS if any(m.startswith(f"{part}.") for m in modules)]


def merge_adapter(
    base: Mapping[str, Tensor], adapter: Mapping[str, Tensor], scaling: float
) -> dict[str, Tensor]:
    """The base state dict with the adapter merged: ``scaling · B A`` added to each adapted
    weight (into the q or v rows of a fused ``qkv`` for ``….qkv.q``/``….qkv.v``), computed in
    float32 and cast back to the weight's dtype; every other adapter tensor (a fully trained
    parameter) replaces the base entry of its name.

    Raises:
        ValueError: an ``A`` without its ``B``, or a tensor whose name or shape has no
            counterpart in ``base`` (named with both shapes).
    """
    merged = dict(base)
    problems = []
    for key, tensor in adapter.items():
        found = _LORA_KEY.match(key)
        if found is None:
            if key not in base or base[key].shape != tensor.shape:
                shape = tuple(base[key].shape) if key in base else "absent"
                problems.append(f"{key}: adapter {tuple(tensor.shape)}, base {shape}")
            else:
                merged[key] = tensor.to(base[key].dtype)
            continue
        if found["which"] == "B":
            continue
        module = found["module"]
        other = adapter.get(f"{module}.lora_B.weight")
        if other is None:
            problems.append(f"{key}: no {module}.lora_B.weight")
            continue
        target, rows = _merge_target(module, base)
        if target is None:
            problems.append(f"{key}: the base has no weight {module}.weight to adapt")
            continue
        weight = merged[target]
        part = weight[rows]
        delta = (other.float() @ tensor.float()) * scaling
        if delta.shape != part.shape:
            problems.append(
                f"{module}: B·A is {tuple(delta.shape)}, base weight {target} "
                f"{'rows ' if rows != slice(None) else ''}{tuple(part.shape)}"
            )
            continue
        updated = weight.clone()
        updated[rows] = (part.float() + delta).to(weight.dtype)
        merged[target] = updated
    if problems:
        raise ValueError("the adapter does not fit the base weights:\n  " + "\n  ".join(problems))
    return merged


def _merge_target(module: str, base: Mapping[str, Tensor]) -> tuple[str | None, slice]:
    """The base weight an adapted module writes into and its rows (a split ``qkv``'s q, k or
    v are thirds of the fused weight)."""
    if f"{module}.weight" in base:
        return f"{module}.weight", slice(None)
    parent, _, child = module.rpartition(".")
    fused = f"{parent}.weight"
    if parent.endswith(".qkv") and child in ("q", "k", "v") and fused in base:
        dim = base[fused].shape[0] // 3
        index = "qkv".index(child)
        return fused, slice(index * dim, (index + 1) * dim)
    return None, slice(None)


def save_adapter(
    tensors: Mapping[str, Tensor], info: AdapterInfo, path: str | PathLike[str]
) -> Path:
    """Writes adapter ``tensors`` (see the module docstring) with ``info`` as metadata to a
    ``.safetensors`` file, atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"an adapter file is safetensors: give {path} the suffix .safetensors")
    return save_checkpoint(dict(tensors), path, metadata=info.metadata())


def read_adapter(path: str | PathLike[str]) -> tuple[dict[str, Tensor], AdapterInfo]:
    """The tensors and :class:`AdapterInfo` of an adapter file.

    Raises:
        FileNotFoundError, CheckpointError: no such file, an unreadable one, or a
            safetensors file that is not an adapter.
    """
    tensors = load_state_dict_file(path)  # its errors name the file and the damage
    if Path(path).suffix != ".safetensors":
        raise CheckpointError(f"{path}: an adapter file is safetensors (.safetensors)")
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
    return tensors, AdapterInfo.from_metadata(metadata, path)


def check_adapter(
    info: AdapterInfo,
    path: str | PathLike[str],
    *,
    model_type: str,
    image_size: int,
    base_sha256: str | None,
    spec: LoraSpec | None = None,
) -> None:
    """Raises ValueError naming each way the adapter at ``path`` does not fit: another model
    type, input size or base checkpoint (by content hash), or a ``spec`` (from the settings)
    with another rank, alpha, targets or qkv mode."""
    problems = []
    if info.model_type != model_type:
        problems.append(f"model type: adapter {info.model_type!r}, model {model_type!r}")
    if int(info.image_size) != int(image_size):
        problems.append(f"image size: adapter {info.image_size}, model {image_size}")
    if info.base_sha256 is not None and base_sha256 is not None and info.base_sha256 != base_sha256:
        problems.append(
            f"base checkpoint: the adapter was trained on {info.base_path} (sha256 "
            f"{info.base_sha256[:12]}…), the given base has sha256 {base_sha256[:12]}…"
        )
    if info.base_sha256 is not None and base_sha256 is None:
        problems.append(
            f"base checkpoint: the adapter adapts {info.base_path} (sha256 "
            f"{info.base_sha256[:12]}…), but no base checkpoint was given (model.checkpoint)"
        )
    if spec is not None:
        for name in ("rank", "alpha", "targets", "qkv"):
            mine, theirs = getattr(spec, name), getattr(info, name)
            if name == "alpha":
                mine, theirs = spec.scaling * spec.rank, info.spec.scaling * info.rank
            if mine != theirs:
                problems.append(f"model.lora.{name}: settings {mine!r}, adapter {theirs!r}")
    if problems:
        raise ValueError(f"adapter {path} does not fit:\n  " + "\n  ".join(problems))


def peft_to_adapter(
    state_dict: Mapping[str, Tensor], trainable: Sequence[str]
) -> dict[str, Tensor]:
    """The adapter tensors of a model injected by peft: the ``trainable`` entries of its
    ``state_dict`` with peft's adapter name removed (``….lora_A.default.weight`` →
    ``….lora_A.weight``) and ``….base_layer.`` names of fully trained layers restored."""
    adapter = {}
    for key in trainable:
        name = re.sub(r"\.lora_([AB])\.default\.", r".lora_\1.", key).replace(".base_layer.", ".")
        adapter[name] = state_dict[key]
    return adapter


def apply_adapter_file(
    model: nn.Module,
    path: str | PathLike[str],
    *,
    model_type: str,
    image_size: int,
    base_sha256: str | None,
    spec: LoraSpec | None = None,
) -> AdapterInfo:
    """Merges the adapter file at ``path`` into ``model``'s weights in place (plain torch:
    the model stays a plain SAM), after :func:`check_adapter`; returns its metadata."""
    tensors, info = read_adapter(path)
    check_adapter(
        info, path, model_type=model_type, image_size=image_size, base_sha256=base_sha256, spec=spec
    )
    state = model.state_dict()
    merged = merge_adapter(state, tensors, info.spec.scaling)
    model.load_state_dict({key: merged[key] for key in state})
    return info
