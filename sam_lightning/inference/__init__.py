"""Inference: :class:`SamPredictor` for interactive, prompt-based mask prediction and
:class:`SamAutomaticMaskGenerator` for whole-image automatic masks (the data engine)."""

from sam_lightning.inference.automatic import SamAutomaticMaskGenerator
from sam_lightning.inference.predictor import SamPredictor

__all__ = ["SamAutomaticMaskGenerator", "SamPredictor"]
