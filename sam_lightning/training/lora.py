"""LoRA adapters for training, injected by ``peft``.

``peft.inject_adapter_in_model`` adds the adapters in place, so parameter names stay those
of SAM (``image_encoder.blocks.3.attn.qkv.q.lora_A.default.weight``): the layer-wise
learning-rate decay of :mod:`sam_lightning.training.optim` finds their block, and
checkpoints keep the official names of everything else. (``get_peft_model`` would prefix
every name with ``base_model.model.``.) The base weights must be loaded before injecting:
peft renames an adapted layer's weights ``….base_layer.weight``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from sam_lightning.extras import install_hint, missing_modules
from sam_lightning.modeling.adapters import (
    DEFAULT_TARGETS,
    PARTS,
    LoraSpec,
    adapted_parts,
    check_adapter,
    lora_module_names,
    peft_to_adapter,
    read_adapter,
    split_qkv,
)
from sam_lightning.training.optim import freeze
from sam_lightning.training.trained_only import trained_state_names


def inject_lora(model: nn.Module, spec: LoraSpec, frozen: Iterable[str] = ()) -> list[str]:
    """Adds ``spec``'s adapters to ``model`` in place and sets what trains: the adapters,
    and every parameter of the parts that hold no adapter and are not ``frozen``; the parts
    holding adapters keep their base weights frozen. Returns the adapted module names.

    Raises:
        ValueError: a target that matches nothing or a module that is not linear.
    """
    from peft import LoraConfig, inject_adapter_in_model

    to_split, adapted = lora_module_names(model, spec)
    split_qkv(model, to_split)
    config = LoraConfig(
        r=int(spec.rank),
        lora_alpha=float(spec.rank if spec.alpha is None else spec.alpha),
        lora_dropout=float(spec.dropout),
        target_modules="|".join(re.escape(name) for name in adapted),  # whole names only
        bias="none",
    )
    inject_adapter_in_model(config, model)
    # peft leaves only the adapters trainable; the parts without one train unless frozen.
    frozen_parts = set(frozen) | set(adapted_parts(adapted))
    for part in PARTS:
        if part not in frozen_parts:
            getattr(model, part).requires_grad_(True)
    for name, parameter in model.named_parameters():
        if ".lora_" in name:
            parameter.requires_grad_(True)
    freeze(model, ())  # the parameters forward never uses stay off
    return adapted


def adapter_tensors(model: nn.Module) -> dict[str, Tensor]:
    """What an adapter file holds for an injected ``model``: the adapters and the other
    trained parameters (with the buffers of the parts that train, see
    :func:`trained_state_names`), under the names of :mod:`sam_lightning.modeling.adapters`."""
    state = model.state_dict()
    names = trained_state_names(model, PARTS)
    return {k: v.detach() for k, v in peft_to_adapter(state, names).items()}


def load_adapter_tensors(model: nn.Module, adapter: Mapping[str, Tensor], source: str) -> None:
    """Copies adapter tensors (names of :mod:`sam_lightning.modeling.adapters`) into the
    matching trainable parameters (and buffers of the parts that train) of an injected
    ``model``.

    Raises:
        ValueError: tensors the model has no trainable parameter for, trainable parameters
            the adapter lacks, or shapes that differ (named).
    """
    names = trained_state_names(model, PARTS)
    by_adapter_name = dict(zip(peft_to_adapter(dict.fromkeys(names), names), names))
    parameters = model.state_dict(keep_vars=True)
    missing = [n for n in by_adapter_name if n not in adapter]
    unexpected = [n for n in adapter if n not in by_adapter_name]
    misshapen = [
        f"{n} (adapter {tuple(adapter[n].shape)}, model "
        f"{tuple(parameters[by_adapter_name[n]].shape)})"
        for n in adapter
        if n in by_adapter_name and adapter[n].shape != parameters[by_adapter_name[n]].shape
    ]
    problems = [
        f"{kind} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
        for kind, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shapes", misshapen),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"adapter {source} does not fit the model's LoRA settings and trained parts "
            "(model.lora.*, training.frozen):\n  " + "\n  ".join(problems)
        )
    for name, tensor in adapter.items():
        parameters[by_adapter_name[name]].data.copy_(tensor)


def lora_spec(settings: Mapping[str, Any] | None) -> LoraSpec | None:
    """The :class:`LoraSpec` of ``model.lora`` settings, None when LoRA is off (no
    settings, rank null or 0)."""
    if not settings or not settings.get("rank"):
        return None
    return LoraSpec(
        rank=int(settings["rank"]),
        alpha=None if settings.get("alpha") is None else float(settings["alpha"]),
        dropout=float(settings.get("dropout", 0.0)),
        targets=tuple(settings.get("targets") or DEFAULT_TARGETS),
        qkv=str(settings.get("qkv", "qv")),
    )


@dataclass
class LoraTraining:
    """The adapters of a training run: their settings and the modules they adapt."""

    spec: LoraSpec
    modules: list[str]

    @classmethod
    def setup(
        cls,
        model: nn.Module,
        spec: LoraSpec,
        *,
        frozen: Iterable[str],
        base_sha256: str | None,
        model_type: str,
        image_size: int,
        weights: str | None = None,
    ) -> LoraTraining:
        """Injects ``spec``'s adapters into ``model`` (base weights loaded, from a file whose
        SHA-256 is ``base_sha256``, None for random weights), optionally starting them from the
        adapter file ``weights`` (checked against the base)."""
        if missing := missing_modules("peft"):
            raise ImportError(
                f"model.lora.rank needs peft ({', '.join(missing)} not installed): "
                f"{install_hint('peft')}"
            )
        modules = inject_lora(model, spec, frozen)
        run = cls(spec, modules)
        if weights is not None:
            tensors, info = read_adapter(weights)
            check_adapter(
                info,
                weights,
                model_type=model_type,
                image_size=image_size,
                base_sha256=base_sha256,
                spec=spec,
            )
            load_adapter_tensors(model, tensors, str(weights))
        return run


def lora_hparams(spec: LoraSpec, weights: str | None = None) -> dict[str, Any]:
    """A checkpoint's ``hyper_parameters["lora"]``: ``spec`` and the adapter file the run
    started from, as plain values."""
    return {
        "weights": None if weights is None else str(weights),
        "rank": spec.rank,
        "alpha": spec.alpha,
        "dropout": spec.dropout,
        "targets": list(spec.targets),
        "qkv": spec.qkv,
    }
