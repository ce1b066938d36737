"""``model``: which SAM to build and from which weights (the ``model`` config group)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from sam_lightning.settings.schema import Choices

#: The names of ``model.type``: the model registry's keys.
MODEL_TYPES = Choices("sam_lightning.modeling.build:sam_model_registry")


@dataclass
class LoraSettings:
    """``model.lora`` (``conf/lora/default.yaml``): LoRA adapters, see
    :class:`~sam_lightning.modeling.adapters.LoraSpec`; ``rank`` null or 0 turns them off.
    ``weights``: an adapter file (``export --adapter-only``) applied to ``model.checkpoint``
    (its base): merged at inference, the starting adapter in training."""

    rank: int | None = None
    alpha: float | None = None  # None: rank (scale alpha / rank = 1, as SAMed)
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["encoder_attn"])
    qkv: Literal["qv", "qkv"] = "qv"
    weights: str | None = None


@dataclass
class ModelSettings:
    """``type``: a registry name; ``checkpoint``: official ``.pth``, safetensors or training
    checkpoint (None: random weights); ``image_size``: the encoder's input side (1024 for
    the official weights)."""

    type: Annotated[str, MODEL_TYPES]
    checkpoint: str | None = None
    image_size: int = 1024
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class TextModelSettings(ModelSettings):
    """:class:`ModelSettings` plus ``text_embed_dim``: the width of the CLIP embeddings that
    the prompt encoder's text projection takes (App. D.5); None: no text prompts."""

    text_embed_dim: int | None = None
