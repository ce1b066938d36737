"""SAM model: image encoder, prompt encoder, mask decoder, builders and checkpoints."""

from sam_lightning.modeling.build import build_sam, build_sam_custom, sam_model_registry
from sam_lightning.modeling.checkpoint import (
    UnsafeCheckpointError,
    load_checkpoint,
    load_state_dict_file,
    save_checkpoint,
)
from sam_lightning.modeling.common import MLP, LayerNorm2d, MLPBlock
from sam_lightning.modeling.image_encoder import ImageEncoderViT
from sam_lightning.modeling.mask_decoder import MaskDecoder
from sam_lightning.modeling.prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from sam_lightning.modeling.sam import Sam
from sam_lightning.modeling.transformer import TwoWayTransformer

__all__ = [
    "MLP",
    "ImageEncoderViT",
    "LayerNorm2d",
    "MLPBlock",
    "MaskDecoder",
    "PositionEmbeddingRandom",
    "PromptEncoder",
    "Sam",
    "TwoWayTransformer",
    "UnsafeCheckpointError",
    "build_sam",
    "build_sam_custom",
    "sam_model_registry",
    "load_checkpoint",
    "load_state_dict_file",
    "save_checkpoint",
]
