"""TinyViT image encoder of MobileSAM (``vit_t``): convolutional first stage, windowed
attention with learned relative-position biases, and SAM's conv neck."""

from sam_lightning.modeling.tiny_vit.encoder import TinyViT

__all__ = ["TinyViT"]
