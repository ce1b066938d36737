"""Training of SAM in plain PyTorch (paper §3 and App. A), called by the LightningModule.

:mod:`~sam_lightning.training.losses`: focal, dice and IoU losses with the minimum over
the ambiguity masks. :mod:`~sam_lightning.training.prompts`: simulated first prompts,
corrective clicks and the 11-round schedule. :mod:`~sam_lightning.training.interactive`:
the simulated interactive session that produces the loss.
:mod:`~sam_lightning.training.optim`: freezing, parameter groups and the schedule.
:mod:`~sam_lightning.training.validation`: validation prompts and mIoU (1 point, box,
corrective clicks). :mod:`~sam_lightning.training.overlays`: mask panels for the loggers.
:mod:`~sam_lightning.training.checkpointing`: atomic checkpoints and ``last.ckpt``.
:mod:`~sam_lightning.training.module`: the LightningModule.
"""

from sam_lightning.training.interactive import simulate_interactive
from sam_lightning.training.losses import dice_loss, mask_iou, sam_loss, sigmoid_focal_loss
from sam_lightning.training.prompts import (
    FirstPrompts,
    corrective_points,
    first_prompts,
    jitter_boxes,
    mask_boxes,
    num_rounds,
    round_schedule,
    sample_points,
)

__all__ = [
    "FirstPrompts",
    "corrective_points",
    "dice_loss",
    "first_prompts",
    "jitter_boxes",
    "mask_boxes",
    "mask_iou",
    "num_rounds",
    "round_schedule",
    "sam_loss",
    "sample_points",
    "sigmoid_focal_loss",
    "simulate_interactive",
]
