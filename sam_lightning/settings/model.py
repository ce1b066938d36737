"""``model``: which SAM to build and from which weights (the ``model`` config group)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from sam_lightning.settings.schema import Choices

#: The names of ``model.type``: the model registry's keys.
MODEL_TYPES = Choices("sam_lightning.modeling.build:sam_model_registry")


@dataclass
class ModelSettings:
    """``type``: a registry name; ``checkpoint``: official ``.pth``, safetensors or training
    checkpoint (None: random weights); ``image_size``: the encoder's input side (1024 for
    the official weights)."""

    type: Annotated[str, MODEL_TYPES]
    checkpoint: str | None = None
    image_size: int = 1024


@dataclass
class TextModelSettings(ModelSettings):
    """:class:`ModelSettings` plus ``text_embed_dim``: the width of the CLIP embeddings that
    the prompt encoder's text projection takes (App. D.5); None: no text prompts."""

    text_embed_dim: int | None = None
