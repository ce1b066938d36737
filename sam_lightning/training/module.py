"""The LightningModule of SAM training: the image encoder once per image, then the
simulated interactive session (:func:`simulate_interactive`) on the cached embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from sam_lightning.modeling.build import build_sam
from sam_lightning.training.evaluation import single_prompt_ious
from sam_lightning.training.interactive import simulate_interactive
from sam_lightning.training.optim import build_optimizer, freeze


class SamTrainingModule(L.LightningModule):
    """Trains (or fine-tunes) SAM with the paper's recipe (§3, App. A).

    Args:
        model_type: registry name (``vit_b``, ``vit_l``, ``vit_h``, ``vit_tiny``).
        checkpoint: official ``.pth`` (or safetensors) to start from; None: random init.
        image_size: encoder input side (1024 for the official checkpoints).
        frozen: parts without gradients (``image_encoder``, ``prompt_encoder``,
            ``mask_decoder``).
        lr, weight_decay, betas, layer_decay, warmup_steps, milestones, decay_factor:
            AdamW, layer-wise decay of the ViT and the warm-up + step schedule (per step).
        num_point_rounds, box_probability, focal_weight, dice_weight, iou_weight:
            the simulated interactive session.
        seed: base seed of the prompt sampling (combined with the step and the rank, so
            a resumed run samples what the uninterrupted one would have).
    """

    def __init__(
        self,
        model_type: str = "vit_b",
        checkpoint: str | None = None,
        image_size: int = 1024,
        frozen: Sequence[str] = (),
        lr: float = 8e-4,
        weight_decay: float = 0.1,
        betas: Sequence[float] = (0.9, 0.999),
        layer_decay: float = 1.0,
        warmup_steps: int = 250,
        milestones: Sequence[int] = (),
        decay_factor: float = 0.1,
        num_point_rounds: int = 8,
        box_probability: float = 0.5,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        # Plain containers only: checkpoints are read back with weights_only=True.
        self.save_hyperparameters(
            {
                "model_type": model_type,
                "checkpoint": checkpoint,
                "image_size": int(image_size),
                "frozen": list(frozen),
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "betas": [float(b) for b in betas],
                "layer_decay": float(layer_decay),
                "warmup_steps": int(warmup_steps),
                "milestones": [int(m) for m in milestones],
                "decay_factor": float(decay_factor),
                "num_point_rounds": int(num_point_rounds),
                "box_probability": float(box_probability),
                "focal_weight": float(focal_weight),
                "dice_weight": float(dice_weight),
                "iou_weight": float(iou_weight),
                "seed": int(seed),
            }
        )
        self.model = build_sam(model_type, checkpoint=checkpoint, image_size=image_size).train()
        freeze(self.model, frozen)

    def _embeddings(self, batch: dict[str, Any]) -> Tensor:
        """Image embeddings of the batch: the unpadded images are normalised and padded by
        the model itself (padding after normalisation, as at inference)."""
        images = [
            image[:, : int(h), : int(w)]
            for image, (h, w) in zip(batch["images"], batch["input_size"].tolist())
        ]
        if not any(p.requires_grad for p in self.model.image_encoder.parameters()):
            with torch.no_grad():
                return self.model.encode_images(images)
        return self.model.encode_images(images)

    def _generator(self) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        seed = (self.hparams.seed * 1_000_003 + self.global_step) * 4099 + self.global_rank
        return generator.manual_seed(seed % (2**63))

    def training_step(self, batch: dict[str, Any], batch_index: int) -> Tensor | None:
        if len(batch["masks"]) == 0:
            return None  # no usable mask in these images: skip the step
        embeddings = self._embeddings(batch)
        hp = self.hparams
        out = simulate_interactive(
            self.model,
            embeddings,
            batch["masks"],
            batch["image_index"],
            generator=self._generator(),
            num_point_rounds=hp.num_point_rounds,
            box_probability=hp.box_probability,
            focal_weight=hp.focal_weight,
            dice_weight=hp.dice_weight,
            iou_weight=hp.iou_weight,
        )
        size = len(batch["masks"])
        values = {
            "train/loss": out["loss"].detach(),
            "train/focal": out["focal"],
            "train/dice": out["dice"],
            "train/iou_mse": out["iou_mse"],
            "train/final_iou": out["final_iou"].mean(),
        }
        self.log_dict(values, prog_bar=False, batch_size=size)
        self.log("loss", out["loss"].detach(), prog_bar=True, logger=False, batch_size=size)
        # Bad samples the loader skipped (counted in the process that built the batch).
        skipped = float(batch.get("num_skipped", 0))
        self.log("train/skipped_samples", skipped, reduce_fx="sum", batch_size=size)
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        if len(batch["masks"]) == 0:
            return
        ious = single_prompt_ious(
            self.model, self._embeddings(batch), batch["masks"], batch["image_index"]
        )
        size = len(batch["masks"])
        self.log("val/miou_1pt", ious["1pt"].mean(), prog_bar=True, batch_size=size, sync_dist=True)
        self.log("val/miou_box", ious["box"].mean(), prog_bar=True, batch_size=size, sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer, scheduler = build_optimizer(
            self.model,
            lr=hp.lr,
            weight_decay=hp.weight_decay,
            betas=tuple(hp.betas),
            layer_decay=hp.layer_decay,
            warmup_steps=hp.warmup_steps,
            milestones=hp.milestones,
            decay_factor=hp.decay_factor,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
