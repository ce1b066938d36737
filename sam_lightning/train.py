"""Training and fine-tuning of SAM: ``python -m sam_lightning.train +exp=<name> [overrides]``.

Configs are ``conf/train.yaml`` and its groups (``model/``, ``data/``, ``trainer/``,
``logger/``, ``optim/``, ``exp/``). Hydra lives only in :func:`main`; :func:`train` takes the
resolved config as a plain mapping and the run directory, so it can be called as a library.
The run directory (``hydra.run.dir``, by default ``outputs/train/<run_name>``) holds the
resolved config, ``checkpoints/`` (``last.ckpt`` and the best by ``val/miou_1pt``), the
logs and, at the end of ``fit``, ``metrics.json`` with the final metrics.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("sam_lightning.train")


def build_loggers(settings: Mapping[str, Any], run_dir: Path, config: Mapping[str, Any]) -> list:
    """Lightning loggers for ``logger.kind`` ``csv`` or ``wandb`` (which also logs the
    resolved config; ``WANDB_MODE=offline``/``disabled`` is honoured by wandb itself)."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    kind = settings.get("kind", "csv")
    if kind == "csv":
        return [CSVLogger(run_dir, name="csv")]
    if kind == "wandb":
        logger = WandbLogger(
            project=settings.get("project", "sam_lightning"),
            group=settings.get("group"),
            name=settings.get("name"),
            save_dir=str(run_dir),
        )
        logger.log_hyperparams(dict(config))
        return [logger]
    raise ValueError(f"logger.kind must be 'csv' or 'wandb', got {kind!r}")


def build_strategy(spec: Any) -> Any:
    """``trainer.strategy``: a Lightning strategy name as is, or ``{"name": "fsdp",
    "sharding_strategy": ...}``, which wraps every encoder and decoder block as one FSDP unit
    (with the original parameters, so the layer-decay parameter groups stay valid)."""
    if not isinstance(spec, Mapping):
        return spec
    settings = dict(spec)
    name = settings.pop("name", None)
    if name != "fsdp":
        raise ValueError(f"trainer.strategy mapping needs name: fsdp, got {name!r}")
    from lightning.pytorch.strategies import FSDPStrategy

    from sam_lightning.modeling.image_encoder import Block
    from sam_lightning.modeling.transformer import TwoWayAttentionBlock

    return FSDPStrategy(
        auto_wrap_policy={Block, TwoWayAttentionBlock},
        state_dict_type="full",
        use_orig_params=True,
        **settings,
    )


def _resume_path(config: Mapping[str, Any], checkpoints: Path) -> str | None:
    from sam_lightning.training.checkpointing import LAST_CHECKPOINT

    if config.get("ckpt_path"):
        return str(config["ckpt_path"])
    last = checkpoints / LAST_CHECKPOINT
    if config.get("resume") and last.is_file():
        return str(last)
    return None


def train(config: Mapping[str, Any], run_dir: str | Path) -> dict[str, float]:
    """Trains with the resolved ``config`` (the layout of ``conf/train.yaml``), writing
    everything under ``run_dir``; returns the final metrics (also in ``metrics.json``)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sam_lightning.data.datamodule import SamDataModule
    from sam_lightning.file_io import write_atomic
    from sam_lightning.training.checkpointing import AtomicCheckpointIO, SaveLast
    from sam_lightning.training.module import SamTrainingModule

    run_dir = Path(run_dir)
    model, optim, training = config["model"], config["optim"], config["training"]
    L.seed_everything(int(config["seed"]), workers=True)
    datamodule = SamDataModule(
        **config["data"], image_size=int(model["image_size"]), seed=int(config["seed"])
    )
    module = SamTrainingModule(
        model_type=model["type"],
        checkpoint=model["checkpoint"],
        image_size=int(model["image_size"]),
        seed=int(config["seed"]),
        **optim,
        **training,
    )
    checkpoints = run_dir / "checkpoints"
    best = ModelCheckpoint(
        dirpath=checkpoints, filename="best-{step}", monitor="val/miou_1pt", mode="max"
    )
    last = SaveLast(checkpoints, every_n_steps=int(config["checkpoint"]["every_n_steps"]))
    loggers = build_loggers(config["logger"], run_dir, config)
    trainer = L.Trainer(
        default_root_dir=run_dir,
        logger=loggers,
        callbacks=[best, last],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # SamDataModule splits the data across ranks itself
        **{**config["trainer"], "strategy": build_strategy(config["trainer"]["strategy"])},
    )
    trainer.fit(
        module,
        datamodule=datamodule,
        ckpt_path=_resume_path(config, checkpoints),
        weights_only=True,  # AtomicCheckpointIO loads with weights_only=True in any case
    )
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if module.validated_at_step != trainer.global_step and trainer.limit_val_batches != 0:
        # The last steps came after the last validation: validate the final weights, so
        # that metrics.json describes the model the run ends with.
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics.update((name, float(value)) for name, value in trainer.callback_metrics.items())
    metrics["step"] = trainer.global_step
    for logger in loggers:  # one W&B run per job, also in a Hydra multirun
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
    if trainer.is_global_zero:
        write_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
        log.info("final metrics in %s: %s", run_dir / "metrics.json", metrics)
    return metrics


def main() -> int:
    """``python -m sam_lightning.train +exp=<name> [key=value ...]``; the exit status is 2
    when a setting is unknown or has a wrong value, or a required setting (``???`` or an
    experiment's ``${sam_required:...}``, e.g. ``model.checkpoint`` or ``data.train.roots``)
    is not given."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, OmegaConf

    from sam_lightning.entry_points import hydra_main
    from sam_lightning.settings import train as settings

    def run(cfg: DictConfig) -> int:
        train(OmegaConf.to_container(cfg, resolve=True), HydraConfig.get().runtime.output_dir)
        return 0

    return hydra_main("train", run, settings.TrainSettings, settings.check)


if __name__ == "__main__":
    sys.exit(main())
