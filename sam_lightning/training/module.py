"""The LightningModule of SAM training: the image encoder once per image, then the
simulated interactive session (:func:`simulate_interactive`) on the cached embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from sam_lightning.data.samples import unpadded_images
from sam_lightning.file_io import sha256_file
from sam_lightning.modeling.adapters import adapted_parts
from sam_lightning.modeling.build import build_sam
from sam_lightning.training import clip_prompts
from sam_lightning.training.checkpointing import POSITION_KEY
from sam_lightning.training.embedding_cache import (
    DTYPES,
    EmbeddingCache,
    cache_problems,
    open_model_cache,
)
from sam_lightning.training.interactive import simulate_interactive
from sam_lightning.training.lora import LoraTraining, lora_hparams, lora_spec
from sam_lightning.training.optim import PARTS, freeze, lightning_optimizers, optim_hparams
from sam_lightning.training.trained_only import (
    TRAINED_ONLY_KEY,
    TrainedOnly,
    keeps_trained_only,
    refuse_trained_only,
    trained_state_names,
)
from sam_lightning.training.validation import (
    corrective_click_ious,
    example_panels,
    single_prompt_ious,
    text_prompt_ious,
)

if TYPE_CHECKING:
    from sam_lightning.modeling.text_encoder import ClipEncoder



class SamTrainingModule(L.LightningModule):
    """Trains (or fine-tunes) SAM with the paper's recipe (§3, App. A). The arguments and
    their defaults are those declared in :mod:`sam_lightning.settings.train`.

    Args:
        model_type: registry name (``vit_b``, ``vit_l``, ``vit_h``, ``vit_tiny``).
        checkpoint: official ``.pth`` (or safetensors) to start from; None: random init.
        image_size: encoder input side (1024 for the official checkpoints).
        frozen: parts without gradients (``image_encoder``, ``prompt_encoder``,
            ``mask_decoder``). Frozen parts of a ``checkpoint`` stay out of the run's
            checkpoints (:mod:`~sam_lightning.training.trained_only`).
        drop_path_rate: stochastic depth of the encoder's last block (linear over depth; App.
            A uses 0.4).
        activation_checkpointing: recompute encoder blocks in the backward pass (less memory).
        lr, weight_decay, betas, layer_decay, warmup_steps, milestones, decay_factor:
            AdamW, layer-wise decay of the ViT and the warm-up + step schedule (per step).
        num_point_rounds, box_probability, focal_weight, dice_weight, iou_weight:
            the simulated interactive session.
        val_clicks: validation also logs the mIoU after 2 .. ``val_clicks`` clicks
            (``val/miou_<k>clicks``: each next click at the deepest error pixel, App. D.1).
        val_images: validation images shown with their masks (ground truth beside the 1-point
            prediction) to loggers that take images (W&B), at every validation.
        text: CLIP prompts (App. D.5), None for none; keys of
            :data:`~sam_lightning.training.clip_prompts.TEXT_DEFAULTS`. The model gets a
            text token (``text_embed_dim`` = the CLIP's width); masks of at least
            ``min_mask_area`` pixels (of the original image) are first prompted, with
            ``probability``, by the frozen CLIP's image embedding of a square crop around
            them (box expanded by a random factor in ``expand_range``, pixels outside the
            mask zeroed with ``zero_outside_probability``, the last attention layer
            restricted to the mask), then get the corrective clicks. Validation adds
            ``val/miou_clip``: the mask from that embedding alone (middle expansion, nothing
            zeroed).
        seed: base seed of the prompt sampling (combined with the batch position and the
            rank, so a resumed run samples what the uninterrupted one would have).
        lora: ``model.lora`` settings (:class:`~sam_lightning.settings.model.LoraSettings`):
            with a rank, peft's LoRA adapters are added to ``checkpoint``'s weights; the
            parts holding adapters keep their base frozen, the others train unless
            ``frozen``, and checkpoints hold only what trains (and the base's SHA-256).
        embedding_cache: directory where the frozen encoder's embeddings are kept
            (:class:`~sam_lightning.training.embedding_cache.EmbeddingCache`, entries in
            ``embedding_cache_dtype``): computed once per image, then read, skipping the
            encoder. Refused (ValueError) with a trained encoder, LoRA on it or drop path.

    Attributes:
        batches_seen: training batches this rank has started, kept in checkpoints: the data
            position of :class:`~sam_lightning.data.datamodule.SamDataModule` and the seed of
            each batch's prompt sampling.
        validated_at_step: the optimiser step of the last validation (not the sanity check),
            None before the first.
    """

    def __init__(
        self,
        model_type: str = "vit_b",
        checkpoint: str | None = None,
        image_size: int = 1024,
        frozen: Sequence[str] = (),
        drop_path_rate: float = 0.0,
        activation_checkpointing: bool = False,
        lr: float = 8e-4,
        weight_decay: float = 0.1,
        betas: Sequence[float] = (0.9, 0.999),
        layer_decay: float = 0.8,
        warmup_steps: int = 250,
        milestones: Sequence[int] = (60000, 86666),
        decay_factor: float = 0.1,
        num_point_rounds: int = 8,
        box_probability: float = 0.5,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        val_clicks: int = 5,
        val_images: int = 4,
        seed: int = 0,
        text: Mapping[str, Any] | None = None,
        lora: Mapping[str, Any] | None = None,
        embedding_cache: str | None = None,
        embedding_cache_dtype: str = "float32",
    ) -> None:
        super().__init__()
        text_settings = clip_prompts.text_settings(text)
        spec = lora_spec(lora)
        # Checkpoints of runs with a frozen base hold only what trains; the base's
        # identity is recorded for resume and export.
        trained_only = keeps_trained_only(checkpoint, spec is not None, frozen)
        base_sha256 = sha256_file(checkpoint) if trained_only and checkpoint else None
        # Plain containers only: checkpoints are read back with weights_only=True.
        self.save_hyperparameters(
            {
                "model_type": model_type,
                "checkpoint": checkpoint,
                "image_size": int(image_size),
                "frozen": list(frozen),
                "drop_path_rate": float(drop_path_rate),
                "activation_checkpointing": bool(activation_checkpointing),
                **optim_hparams(
                    lr, weight_decay, betas, layer_decay, warmup_steps, milestones, decay_factor
                ),
                "num_point_rounds": int(num_point_rounds),
                "box_probability": float(box_probability),
                "focal_weight": float(focal_weight),
                "dice_weight": float(dice_weight),
                "iou_weight": float(iou_weight),
                "val_clicks": int(val_clicks),
                "val_images": int(val_images),
                "seed": int(seed),
                "text": text_settings,
                "lora": None if spec is None else lora_hparams(spec, lora.get("weights")),
                TRAINED_ONLY_KEY: trained_only,
                "base_sha256": base_sha256,
                "embedding_cache": None if embedding_cache is None else str(embedding_cache),
                "embedding_cache_dtype": str(embedding_cache_dtype),
            }
        )
        # Frozen and not a submodule: its weights stay out of checkpoints and the optimiser.
        self._clip = None if text_settings is None else (clip_prompts.build_clip(text_settings),)
        self.model = build_sam(
            model_type,
            checkpoint=checkpoint,
            image_size=image_size,
            drop_path_rate=drop_path_rate,
            activation_checkpointing=activation_checkpointing,
            text_embed_dim=None if self.clip is None else self.clip.embed_dim,
        ).train()
        freeze(self.model, frozen)
        self.lora: LoraTraining | None = None
        if spec is not None:
            self.lora = LoraTraining.setup(
                self.model,
                spec,
                frozen=frozen,
                base_sha256=base_sha256,
                model_type=model_type,
                image_size=int(image_size),
                weights=lora.get("weights"),
            )
        self.trained_only: TrainedOnly | None = None
        if trained_only:
            self.trained_only = TrainedOnly(
                checkpoint, base_sha256, trained_state_names(self.model, PARTS)
            )
            # The base comes from model.checkpoint; TrainedOnly.check names any mismatch.
            self.strict_loading = False
        self._cache: EmbeddingCache | None = None
        if embedding_cache is not None:
            adapted = [] if self.lora is None else adapted_parts(self.lora.modules)
            problems = cache_problems(
                frozen=frozen,
                drop_path_rate=drop_path_rate,
                lora_on_encoder="image_encoder" in adapted,
            )
            if problems:
                raise ValueError("training.embedding_cache: " + "; ".join(problems))
            if embedding_cache_dtype not in DTYPES:
                raise ValueError(
                    f"training.embedding_cache_dtype must be one of {sorted(DTYPES)}, got "
                    f"{embedding_cache_dtype!r}"
                )
        self.batches_seen = 0
        self.validated_at_step: int | None = None
        names = ["1pt", "box", *[f"{k}clicks" for k in range(2, int(val_clicks) + 1)]]
        names += [] if self.clip is None else ["clip"]
        self.val_ious = torch.nn.ModuleDict({name: MeanMetric() for name in names})

    @property
    def clip(self) -> ClipEncoder | None:
        """The frozen CLIP encoder of the text prompts (on this module's device), or None."""
        if self._clip is None:
            return None
        return self._clip[0].to(self.device)

    def _clip_prompts(
        self, batch: dict[str, Any], generator: torch.Generator | None, validation: bool
    ) -> tuple[Tensor, Tensor]:
        """CLIP image embeddings ``P×D`` of the batch's masks and the ``P`` flags of the
        masks that take them (large enough, and drawn with ``probability`` in training;
        rows not flagged are zeros)."""
        settings, masks = self.hparams.text, batch["masks"]
        # Areas in pixels of the original images, as the paper counts them.
        scale = batch["original_size"][:, 0].float() / batch["input_size"][:, 0].float()
        area = masks.flatten(1).sum(1) * scale.to(masks.device)[batch["image_index"]].square()
        use = area >= settings["min_mask_area"]
        if not validation:
            draws = torch.rand(len(masks), generator=generator, device=generator.device)
            use &= draws.to(use.device) < settings["probability"]
        clip = self.clip
        embeddings = masks.new_zeros((len(masks), clip.embed_dim), dtype=torch.float)
        if use.any():
            low, high = settings["expand_range"]
            middle = (low + high) / 2
            embeddings[use] = clip_prompts.clip_image_prompts(
                clip,
                batch["images"].float(),
                batch["image_index"][use],
                masks[use],
                generator=None if validation else generator,
                expand_range=(middle, middle) if validation else (low, high),
                zero_outside_probability=0.0
                if validation
                else settings["zero_outside_probability"],
            ).float()
        return embeddings, use

    def on_train_batch_start(self, batch: Any, batch_index: int) -> None:
        # Counted at the start: a checkpoint written at this batch's end includes it.
        self.batches_seen += 1
        self._frozen_parts_to_eval()  # Lightning restores the modes it saw before validation

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[POSITION_KEY] = self.batches_seen
        if self.trained_only is not None:
            self.trained_only.trim(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if POSITION_KEY not in checkpoint:
            raise KeyError(
                f"checkpoint has no {POSITION_KEY!r}: it was not written by SamTrainingModule"
            )
        self.batches_seen = int(checkpoint[POSITION_KEY])
        recorded_lora = (checkpoint.get("hyper_parameters") or {}).get("lora")
        if self.lora is None and recorded_lora:
            raise ValueError(
                "the checkpoint holds LoRA adapters (model.lora): resume with the run's "
                "model.lora settings"
            )
        if self.lora is not None and not recorded_lora:
            raise ValueError(
                "the checkpoint was not written by a LoRA run (no hyper_parameters['lora']): "
                "resume it without model.lora.rank"
            )
        if self.trained_only is None:
            refuse_trained_only(checkpoint)
        else:
            self.trained_only.check(checkpoint)

    def train(self, mode: bool = True) -> SamTrainingModule:
        """Training mode, except for the parts that get no gradients at all: a frozen part
        runs in eval mode (no drop path), so its outputs do not change from step to step."""
        super().train(mode)
        if mode:
            self._frozen_parts_to_eval()
        return self

    def _frozen_parts_to_eval(self) -> None:
        for part in PARTS:
            module = getattr(self.model, part)
            if module.training and not any(p.requires_grad for p in module.parameters()):
                module.eval()

    def _embeddings(self, batch: dict[str, Any]) -> Tensor:
        """Image embeddings of the batch: the unpadded images are normalised and padded by
        the model itself (padding after normalisation, as at inference)."""
        images = unpadded_images(batch)
        if not any(p.requires_grad for p in self.model.image_encoder.parameters()):
            if self.hparams.embedding_cache is not None:
                return self.embedding_cache.embed(
                    self.model.encode_images, batch["images"], batch["input_size"]
                )
            with torch.no_grad():
                return self.model.encode_images(images)
        return self.model.encode_images(images)

    @property
    def embedding_cache(self) -> EmbeddingCache:
        """The cache of ``embedding_cache``, opened on first use (its key includes the
        trainer's precision: autocast changes the embeddings)."""
        if self._cache is None:
            self._cache = open_model_cache(
                self.model,
                self.hparams.embedding_cache,
                self.hparams.embedding_cache_dtype,
                precision=str(self.trainer.precision) if self._trainer else "32-true",
                description={
                    "model_type": self.hparams.model_type,
                    "image_size": self.hparams.image_size,
                },
            )
        return self._cache

    def _generator(self) -> torch.Generator:
        """The prompt sampler of the current batch (``batches_seen - 1``) on this rank."""
        generator = torch.Generator(device=self.device)
        batch = self.batches_seen - 1
        seed = (self.hparams.seed * 1_000_003 + batch) * 4099 + self.global_rank
        return generator.manual_seed(seed % (2**63))

    def _zero_for(self, parameters: Any) -> Tensor:
        """0 connected to every trainable parameter given (their gradients become 0, not None),
        so that DDP, which needs every rank to reduce the same parameters, never waits for
        a gradient that one rank did not produce."""
        total = torch.zeros((), device=self.device)
        for parameter in parameters:
            if parameter.requires_grad:
                total = total + parameter.sum() * 0.0
        return total

    def training_step(self, batch: dict[str, Any], batch_index: int) -> Tensor:
        if len(batch["masks"]) == 0:  # no usable mask in these images: zero gradients (AdamW
            return self._zero_for(self.model.parameters())  # still decays), ranks in step
        embeddings = self._embeddings(batch)
        hp = self.hparams
        generator = self._generator()
        text = use_text = None
        if self.clip is not None:
            text, use_text = self._clip_prompts(batch, generator, validation=False)
        out = simulate_interactive(
            self.model,
            embeddings,
            batch["masks"],
            batch["image_index"],
            generator=generator,
            text_embeddings=text,
            use_text=use_text,
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
        # A batch without box prompts (or without clicks) leaves some prompt embeddings unused.
        return out["loss"] + self._zero_for(self.model.prompt_encoder.parameters())

    def validation_step(self, batch: dict[str, Any], batch_index: int) -> None:
        if len(batch["masks"]) == 0:
            return
        embeddings = self._embeddings(batch)
        masks, image_index = batch["masks"], batch["image_index"]
        ious = single_prompt_ious(self.model, embeddings, masks, image_index)
        if self.hparams.val_clicks > 1:
            clicks = corrective_click_ious(
                self.model, embeddings, masks, image_index, self.hparams.val_clicks
            )
            ious.update({f"{k}clicks": clicks[:, k - 1] for k in range(2, clicks.shape[1] + 1)})
        if self.clip is not None:
            text, use = self._clip_prompts(batch, None, validation=True)
            if use.any():
                ious["clip"] = text_prompt_ious(
                    self.model, embeddings, masks[use], image_index[use], text[use]
                )
        for name, values in ious.items():
            metric = self.val_ious[name]
            metric.update(values.float())
            # A metric object: Lightning syncs it across ranks weighted by the mask counts.
            self.log(f"val/miou_{name}", metric, prog_bar=name != "box", on_epoch=True)
        if batch_index == 0 and not self.trainer.sanity_checking:
            self._log_examples(batch, embeddings)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated_at_step = self.global_step

    def _log_examples(self, batch: dict[str, Any], embeddings: Tensor) -> None:
        """Ground truth beside the 1-point predictions (click drawn) for the first
        ``val_images`` images of the batch, to every logger with ``log_image`` (W&B)."""
        loggers = [lg for lg in self.loggers if hasattr(lg, "log_image")]
        count = min(self.hparams.val_images, len(batch["images"]))
        if not loggers or count <= 0 or self.global_rank != 0:
            return
        panels = example_panels(self.model, batch, embeddings, count)
        for logger in loggers:
            logger.log_image(key="val/examples", images=panels, step=self.global_step)

    def configure_optimizers(self) -> dict[str, Any]:
        return lightning_optimizers(self.model, self.hparams)
