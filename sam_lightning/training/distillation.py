"""Decoupled distillation of SAM's image encoder (MobileSAM, Zhang et al. 2023): a student
encoder learns to reproduce a teacher's image embeddings (MSE), with no masks needed.

The stage-1 model is the student encoder with the teacher's frozen prompt encoder and mask
decoder; its validation masks come from that combination (see
:mod:`~sam_lightning.training.distill_validation`). Its checkpoints hold the student encoder
only (all of its state, BatchNorm statistics included), with the teacher's path and SHA-256:
resume and :mod:`sam_lightning.export` rebuild the rest from the teacher. The export is a
whole SAM of the student's type, which the interactive training fine-tunes further (stage
2, e.g. ``+exp=finetune_frozen_encoder``).

BatchNorm (TinyViT's convolutions) is not synchronised across ranks by default: each layer
normalises over batch × height × width positions (at 1024 px at least 32 × 32 per image),
so per-rank statistics are well estimated, DDP broadcasts rank 0's running statistics at
every step, and ``torch.nn.SyncBatchNorm`` runs on GPUs only. ``trainer.sync_batchnorm=true``
turns it on for GPU runs.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from sam_lightning.data.samples import unpadded_images
from sam_lightning.file_io import sha256_file
from sam_lightning.modeling.build import build_sam
from sam_lightning.modeling.checkpoint import DISTILLED_KEY
from sam_lightning.modeling.sam import Sam
from sam_lightning.training.checkpointing import POSITION_KEY
from sam_lightning.training.distill_validation import distill_prompts, student_teacher_ious
from sam_lightning.training.embedding_cache import DTYPES, EmbeddingCache, open_model_cache
from sam_lightning.training.optim import freeze, lightning_optimizers, optim_hparams
from sam_lightning.training.trained_only import TRAINED_ONLY_KEY, TrainedOnly
from sam_lightning.training.validation import single_prompt_ious

_STUDENT = "image_encoder."


def stage_one_model(student: Sam, teacher: Sam) -> Sam:
    """The student's encoder with the teacher's (shared, frozen) prompt encoder and mask
    decoder. Raises ValueError when their embeddings differ in shape."""
    mine, theirs = student.prompt_encoder, teacher.prompt_encoder
    if (mine.embed_dim, mine.image_embedding_size) != (
        theirs.embed_dim,
        theirs.image_embedding_size,
    ):
        raise ValueError(
            "the student's image embedding must have the teacher's shape: student "
            f"{mine.embed_dim}×{tuple(mine.image_embedding_size)}, teacher "
            f"{theirs.embed_dim}×{tuple(theirs.image_embedding_size)} (choose a student of "
            "the teacher's embedding width and patch size, at the same model.image_size)"
        )
    model = Sam(
        student.image_encoder,
        teacher.prompt_encoder,
        teacher.mask_decoder,
        pixel_mean=teacher.pixel_mean.flatten().tolist(),
        pixel_std=teacher.pixel_std.flatten().tolist(),
    )
    freeze(model, ["prompt_encoder", "mask_decoder"])
    return model


class DistillationModule(L.LightningModule):
    """Trains a student image encoder on a frozen teacher's image embeddings.

    Args:
        model_type, checkpoint: the student (a registry name; its starting weights, None:
            random).
        teacher_type, teacher_checkpoint: the teacher (any model type and its weights).
        image_size: the input side of both.
        teacher_cache: directory of cached teacher embeddings (None: computed every step);
            keyed by the teacher's weights, the precision and each transformed image, see
            :mod:`~sam_lightning.training.embedding_cache`.
        teacher_cache_dtype: ``float32``, ``float16`` or ``bfloat16``.
        val_grid: points per side of the validation grid on images without masks.
        drop_path_rate, activation_checkpointing: the student encoder's.
        lr, weight_decay, betas, layer_decay, warmup_steps, milestones, decay_factor: AdamW
            and its schedule (:func:`~sam_lightning.training.optim.build_optimizer`).
        seed: recorded; the data stream's seed.
    """

    def __init__(
        self,
        model_type: str,
        teacher_type: str,
        teacher_checkpoint: str,
        checkpoint: str | None = None,
        image_size: int = 1024,
        teacher_cache: str | None = None,
        teacher_cache_dtype: str = "float32",
        val_grid: int = 4,
        drop_path_rate: float = 0.0,
        activation_checkpointing: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: float = 1.0,
        warmup_steps: int = 250,
        milestones: tuple[int, ...] = (),
        decay_factor: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if teacher_cache_dtype not in DTYPES:
            raise ValueError(
                f"distill.teacher_cache_dtype must be one of {sorted(DTYPES)}, got "
                f"{teacher_cache_dtype!r}"
            )
        teacher_sha256 = sha256_file(teacher_checkpoint)
        self.save_hyperparameters(
            {
                "model_type": model_type,
                "checkpoint": checkpoint,
                "image_size": int(image_size),
                "teacher_type": teacher_type,
                "teacher_checkpoint": str(teacher_checkpoint),
                "base_sha256": teacher_sha256,
                TRAINED_ONLY_KEY: True,
                DISTILLED_KEY: teacher_type,
                "teacher_cache": None if teacher_cache is None else str(teacher_cache),
                "teacher_cache_dtype": str(teacher_cache_dtype),
                "val_grid": int(val_grid),
                "drop_path_rate": float(drop_path_rate),
                "activation_checkpointing": bool(activation_checkpointing),
                **optim_hparams(
                    lr, weight_decay, betas, layer_decay, warmup_steps, milestones, decay_factor
                ),
                "seed": int(seed),
            }
        )
        teacher = build_sam(teacher_type, checkpoint=teacher_checkpoint, image_size=image_size)
        teacher.requires_grad_(False)
        student = build_sam(
            model_type,
            checkpoint=checkpoint,
            image_size=image_size,
            drop_path_rate=drop_path_rate,
            activation_checkpointing=activation_checkpointing,
        )
        self.model = stage_one_model(student, teacher).train()
        # Not a submodule: the teacher's encoder stays out of checkpoints, optimiser and DDP.
        self._teacher = (teacher.eval(),)
        kept = [name for name in self.model.state_dict() if name.startswith(_STUDENT)]
        self.trained_only = TrainedOnly(
            str(teacher_checkpoint),
            teacher_sha256,
            kept,
            base_setting="distill.teacher_checkpoint",
        )
        self.strict_loading = False  # the teacher's parts come from the teacher
        self._cache: EmbeddingCache | None = None
        self.batches_seen = 0
        self.validated_at_step: int | None = None
        names = ["embedding_mse", "student_teacher_miou", "miou_1pt", "miou_box"]
        names += ["teacher_miou_1pt", "teacher_miou_box"]
        self.val_ious = torch.nn.ModuleDict({name: MeanMetric() for name in names})

    @property
    def teacher(self) -> Sam:
        """The frozen teacher, in eval mode, on this module's device."""
        return self._teacher[0].to(self.device).eval()

    def train(self, mode: bool = True) -> DistillationModule:
        """Training mode for the student; the teacher's parts stay in eval mode."""
        super().train(mode)
        self.model.prompt_encoder.eval()
        self.model.mask_decoder.eval()
        return self

    def teacher_embeddings(self, batch: dict[str, Any]) -> Tensor:
        """The teacher's embeddings of a batch: from the cache when there is one."""
        teacher = self.teacher
        if self.hparams.teacher_cache is not None:
            return self.teacher_cache.embed(
                teacher.encode_images, batch["images"], batch["input_size"]
            )
        with torch.no_grad():
            return teacher.encode_images(unpadded_images(batch))

    @property
    def teacher_cache(self) -> EmbeddingCache:
        """The teacher's embedding cache, opened on first use (keyed by its weights and the
        trainer's precision)."""
        if self._cache is None:
            self._cache = open_model_cache(
                self.teacher,
                self.hparams.teacher_cache,
                self.hparams.teacher_cache_dtype,
                precision=str(self.trainer.precision) if self._trainer else "32-true",
                description={
                    "model_type": self.hparams.teacher_type,
                    "image_size": self.hparams.image_size,
                    "teacher_checkpoint": self.hparams.teacher_checkpoint,
                },
            )
        return self._cache

    def on_train_batch_start(self, batch: Any, batch_index: int) -> None:
        self.batches_seen += 1  # counted at the start: a checkpoint at the end includes it
        self.train()  # Lightning restores the modes it saw before validation

    def training_step(self, batch: dict[str, Any], batch_index: int) -> Tensor:
        teacher = self.teacher_embeddings(batch)
        student = self.model.encode_images(unpadded_images(batch))
        loss = F.mse_loss(student.float(), teacher.float())
        size = len(batch["images"])
        self.log("train/embedding_mse", loss.detach(), batch_size=size)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        teacher = self.teacher_embeddings(batch)
        student = self.model.encode_images(unpadded_images(batch))
        values = {"embedding_mse": F.mse_loss(student.float(), teacher.float())[None]}
        prompts = distill_prompts(self.model, batch, teacher, self.hparams.val_grid)
        pair = student_teacher_ious(
            self.model, student, teacher, prompts, batch["images"].shape[-2:]
        )
        if pair:
            values["student_teacher_miou"] = torch.cat(list(pair.values()))
        if len(batch["masks"]):
            masks, index = batch["masks"], batch["image_index"]
            for who, embeddings in (("", student), ("teacher_", teacher)):
                ious = single_prompt_ious(self.model, embeddings, masks, index)
                values.update({f"{who}miou_{name}": iou for name, iou in ious.items()})
        for name, value in values.items():
            metric = self.val_ious[name]
            metric.update(value.float())
            shown = name in ("student_teacher_miou", "embedding_mse")
            self.log(f"val/{name}", metric, prog_bar=shown, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated_at_step = self.global_step

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[POSITION_KEY] = self.batches_seen
        self.trained_only.trim(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if POSITION_KEY not in checkpoint:
            raise KeyError(f"checkpoint has no {POSITION_KEY!r}: it was not written by training")
        if not (checkpoint.get("hyper_parameters") or {}).get(DISTILLED_KEY):
            raise ValueError(
                "the checkpoint is not from a distillation run (no hyper_parameters"
                f"[{DISTILLED_KEY!r}]): resume it without distill.*"
            )
        self.trained_only.check(checkpoint)
        self.batches_seen = int(checkpoint[POSITION_KEY])

    def configure_optimizers(self) -> dict[str, Any]:
        return lightning_optimizers(self.model, self.hparams)

