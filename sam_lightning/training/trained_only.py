"""Checkpoints that hold only what a run trains, not a copy of its frozen base.

A run that starts from a base checkpoint (``model.checkpoint``) and leaves some of it frozen
(``training.frozen``, or LoRA's frozen base weights) writes only its trainable parameters
and their optimiser state; ``hyper_parameters`` record the base's path (``checkpoint``) and
the SHA-256 of its bytes (``base_sha256``), with ``trained_only: True``. Resume rebuilds the
model from the base and loads the rest; :mod:`sam_lightning.export` does the same to write
the whole model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from sam_lightning.modeling.checkpoint import TRAINED_ONLY_KEY

__all__ = [
    "TRAINED_ONLY_KEY",
    "TrainedOnly",
    "keeps_trained_only",
    "refuse_trained_only",
    "trainable_names",
    "trained_state_names",
]


def trainable_names(model: nn.Module) -> list[str]:
    """The names of the parameters that get gradients."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def trained_state_names(model: nn.Module, parts: Iterable[str]) -> list[str]:
    """The state-dict entries a run changes: its trainable parameters and the buffers of
    every part in ``parts`` (e.g. ``image_encoder``) that has one (a part that trains runs
    in train mode, so its BatchNorm statistics move even where a LoRA base is frozen)."""
    parameters = {name for name, _ in model.named_parameters()}
    training = tuple(
        f"{part}."
        for part in parts
        if any(p.requires_grad for p in getattr(model, part).parameters())
    )
    buffers = [
        name for name in model.state_dict() if name not in parameters and name.startswith(training)
    ]
    return trainable_names(model) + buffers


def keeps_trained_only(base_path: str | None, lora: bool, frozen: Iterable[str]) -> bool:
    """Whether a run's checkpoints hold only what it trains: LoRA runs (their base is
    frozen), and runs that freeze parts of a base checkpoint (without a base, frozen random
    weights are kept, there being nothing to rebuild them from)."""
    return lora or (base_path is not None and any(True for _ in frozen))


@dataclass
class TrainedOnly:
    """What a run's checkpoints hold: the ``trainable`` state-dict entries (``prefix`` +
    name, see :func:`trained_state_names`) of a model whose other weights come from the base
    at ``base_path`` (SHA-256 ``base_sha256``; both None for random base weights).
    ``base_setting`` names the setting that gives the base, and the ``hyper_parameters``
    entry that records its path."""

    base_path: str | None
    base_sha256: str | None
    trainable: list[str]
    prefix: str = "model."
    base_setting: str = "model.checkpoint"

    @property
    def _recorded_path_key(self) -> str:
        return self.base_setting.rpartition(".")[2]

    def trim(self, checkpoint: dict[str, Any]) -> None:
        """Keeps only the trained parameters in a checkpoint's ``state_dict``."""
        keep = {self.prefix + name for name in self.trainable}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def check(self, checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> None:
        """Raises ValueError when a checkpoint to resume from does not fit this run: trained
        on another base, or holding other trained parameters. A checkpoint of the whole
        model (from a run that kept everything) fits when it holds every trained
        parameter."""
        hparams = checkpoint.get("hyper_parameters") or {}
        found = set(checkpoint.get("state_dict", {}))
        expected = {self.prefix + name for name in self.trainable}
        if not hparams.get(TRAINED_ONLY_KEY):
            if missing := sorted(expected - found):
                raise ValueError(f"{source} lacks trained parameters of this run: {missing[:5]}")
            return
        if hparams.get("base_sha256") != self.base_sha256:
            raise ValueError(
                f"{source} was trained on the base checkpoint "
                f"{hparams.get(self._recorded_path_key)} (sha256 "
                f"{str(hparams.get('base_sha256'))[:12]}…), but {self.base_setting} is "
                f"{self.base_path} (sha256 {str(self.base_sha256)[:12]}…): give the base it "
                "was trained on"
            )
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        if missing or unexpected:
            raise ValueError(
                f"{source} holds other trained parameters than this run (model.lora.*, "
                f"training.frozen differ?): missing {missing[:5]}, unexpected {unexpected[:5]}"
            )


def refuse_trained_only(checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> None:
    """Raises ValueError when a run that keeps the whole model would resume from a
    checkpoint holding only the trained parameters of another run's settings."""
    hparams = checkpoint.get("hyper_parameters") or {}
    if hparams.get(TRAINED_ONLY_KEY):
        raise ValueError(
            f"{source} holds only the parameters its run trained (training.frozen="
            f"{list(hparams.get('frozen') or [])}, model.lora="
            f"{'on' if hparams.get('lora') else 'off'}, base {hparams.get('checkpoint')}): "
            "resume with that run's settings and base"
        )
