"""Inference helpers: :class:`SamPredictor` for interactive, prompt-based mask prediction."""

from sam_lightning.inference.predictor import SamPredictor

__all__ = ["SamPredictor"]
