"""Training and validation data for SAM as a :class:`lightning.LightningDataModule`.

Datasets are given as plain specs (``{"kind": "synthetic" | "sa1b", ...arguments}``) so that
Hydra can instantiate :class:`SamDataModule` from a config; :func:`build_dataset` turns a spec
into a dataset.

Epochs, seeds and order. A training batch is a pure function of ``(seed, epoch)``:

- the order is :class:`EpochShuffle`, a permutation drawn from ``(seed, epoch)`` afresh on every
  ``iter()`` (so it does not matter how often Lightning calls ``iter()`` on the loader, which it
  does once or twice per epoch), and
- sample ``i`` is augmented with ``sample_rng(seed, epoch, i)`` (:class:`TrainSamples`).

Lightning calls ``set_epoch`` on a loader's sampler at the start of every training epoch, for
any sampler that has one; :meth:`EpochShuffle.set_epoch` also sets the epoch of the dataset, so
that the workers, started afterwards, augment for the new epoch. This works with or without
``reload_dataloaders_every_n_epochs``. :meth:`SamDataModule.train_dataloader` starts at
``trainer.current_epoch``, so a run resumed from a checkpoint at the start of epoch ``e`` sees
the batches of an uninterrupted run's epoch ``e``. (A run resumed mid-epoch restarts that epoch's
data from its first batch: the loader keeps no position.) Workers are never persistent: they
would keep the epoch they were started with.

With DDP (``use_distributed_sampler=True``, the default) Lightning wraps the sampler in a
``DistributedSamplerWrapper``, which forwards ``set_epoch`` to it and gives rank ``r`` the
items ``r, r + world_size, ...`` of the same global permutation. The validation loader's
sequential sampler becomes a ``DistributedSampler(shuffle=False)``.

Skipped items. An item that fails to load (an unreadable image, a malformed annotation file) is
logged with its path and replaced by the next index (:class:`SkipBadSamples`). Every batch
carries ``num_skipped``, the number of items replaced while building it, counted in whichever
process (main or worker) built it: sum it to log the total. :attr:`SamDataModule.skipped` only
sees what the main process loaded (all of it when ``num_workers=0``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning
import numpy as np
from torch.utils.data import DataLoader, Sampler

from sam_lightning.data.sa1b import SA1BDataset
from sam_lightning.data.synthetic import SyntheticShapes
from sam_lightning.data.train_transforms import (
    SkipBadSamples,
    TrainSample,
    TrainSamples,
    TrainTransform,
    collate,
)

log = logging.getLogger(__name__)

#: Dataset kinds of a spec and the classes they build.
DATASET_KINDS: dict[str, type] = {"synthetic": SyntheticShapes, "sa1b": SA1BDataset}
#: Entropy word that separates the order's random stream from the samples' streams.
_ORDER_STREAM = 0x0DE5


def _plain(value: Any) -> Any:
    """``value`` with mappings and non-string sequences (e.g. OmegaConf containers) turned into
    dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def build_dataset(kind: str, **kwargs: Any) -> Any:
    """The dataset of one spec.

    Args:
        kind: ``"synthetic"`` (:class:`SyntheticShapes`: ``num_images``, optional
            ``image_size`` (of the source images), ``min_shapes``, ``max_shapes``, ``seed``,
            ``min_area``) or ``"sa1b"`` (:class:`SA1BDataset`: ``roots``, a path or a list
            of paths, optional ``image_root``, ``recursive``).
        kwargs: the arguments of that class.

    Raises:
        ValueError: an unknown kind, a missing required argument or an unknown argument.
    """
    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(DATASET_KINDS)}")
    cls = DATASET_KINDS[kind]
    params = list(inspect.signature(cls).parameters.values())
    unknown = sorted(set(kwargs) - {p.name for p in params})
    if unknown:
        raise ValueError(
            f"unknown argument(s) {unknown} for dataset kind {kind!r}; "
            f"expected some of {[p.name for p in params]}"
        )
    missing = [p.name for p in params if p.default is p.empty and p.name not in kwargs]
    if missing:
        raise ValueError(f"dataset kind {kind!r} needs argument(s) {missing}")
    return cls(**{name: _plain(value) for name, value in kwargs.items()})


def _build_from_spec(spec: Mapping[str, Any], split: str) -> Any:
    spec = _plain(spec)
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"the {split} dataset spec needs a 'kind', got {spec!r}")
    return build_dataset(**spec)


class EpochShuffle(Sampler[int]):
    """A permutation of ``range(size)`` that is a pure function of ``(seed, epoch)``.

    :meth:`set_epoch` (which Lightning calls at the start of every training epoch) changes the
    permutation and calls ``set_epoch`` of every object in ``datasets``.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0, datasets: Sequence[Any] = ()) -> None:
        self.size, self.seed, self.datasets = size, seed, list(datasets)
        self.epoch = 0
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for dataset in self.datasets:
            dataset.set_epoch(self.epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([_ORDER_STREAM, self.seed, self.epoch])
        return iter(rng.permutation(self.size).tolist())


class CountSkips:
    """Wraps a :class:`SkipBadSamples`: item ``i`` is ``(sample, number of items skipped to
    produce it)``, so the count survives DataLoader workers (see :func:`collate_counting`)."""

    def __init__(self, skipping: SkipBadSamples) -> None:
        self.skipping = skipping

    def __len__(self) -> int:
        return len(self.skipping)

    def __getitem__(self, index: int) -> tuple[TrainSample, int]:
        before = self.skipping.skipped
        sample = self.skipping[index]
        return sample, self.skipping.skipped - before


def collate_counting(items: Sequence[tuple[TrainSample, int]]) -> dict[str, Any]:
    """:func:`collate` of the samples, plus ``num_skipped`` (int): the items skipped for them."""
    batch = collate([sample for sample, _ in items])
    batch["num_skipped"] = sum(count for _, count in items)
    return batch


class SamDataModule(lightning.LightningDataModule):
    """Training and validation loaders of :func:`collate` batches (see the module docstring
    for epochs, order, DDP and skipped items).

    Args:
        train, val: dataset specs, ``{"kind": ..., **arguments}`` (see :func:`build_dataset`).
            Default: 64 (train) and 16 (val) synthetic 256 x 256 images. A synthetic ``val``
            without a ``seed`` gets the training seed + 1, so its images differ.
        image_size: S, the side of the model input (SAM: 1024).
        max_masks: masks per image, at most (64 in the SAM paper, Appendix A).
        max_mask_fraction: drop masks covering more of the image than this (paper: 0.9).
        lsj: large-scale jitter on training images (never on validation images).
        scale_range: LSJ scale range.
        batch_size: images per batch (per device).
        num_workers: DataLoader worker processes.
        seed: the seed of the training order and augmentations, and of validation samples.
        drop_last: drop the last incomplete training batch (constant batch shapes).
        pin_memory: DataLoader ``pin_memory``.
    """

    def __init__(
        self,
        train: Mapping[str, Any] | None = None,
        val: Mapping[str, Any] | None = None,
        image_size: int = 1024,
        max_masks: int = 64,
        max_mask_fraction: float = 0.9,
        lsj: bool = False,
        scale_range: Sequence[float] = (0.1, 2.0),
        batch_size: int = 2,
        num_workers: int = 0,
        seed: int = 0,
        drop_last: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.train_spec = _plain(train) if train is not None else _default_spec(64)
        self.val_spec = _plain(val) if val is not None else _default_spec(16)
        if self.val_spec.get("kind") == "synthetic" and "seed" not in self.val_spec:
            train_seed = self.train_spec.get("seed", 0)
            self.val_spec["seed"] = (
                train_seed if self.train_spec.get("kind") == "synthetic" else 0
            ) + 1
        if batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
            )
        low, high = scale_range
        transform_args = {"image_size": image_size, "max_masks": max_masks}
        transform_args["max_mask_fraction"] = max_mask_fraction
        self.train_transform = TrainTransform(
            **transform_args, lsj=lsj, scale_range=(float(low), float(high))
        )
        self.val_transform = TrainTransform(**transform_args, lsj=False)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.drop_last, self.pin_memory = drop_last, pin_memory
        self._train_dataset: Any = None
        self._val_dataset: Any = None
        self._skippers: list[SkipBadSamples] = []

    @property
    def train_dataset(self) -> Any:
        """The training dataset of the spec (items before the transform), built once."""
        if self._train_dataset is None:
            self._train_dataset = _build_from_spec(self.train_spec, "train")
        return self._train_dataset

    @property
    def val_dataset(self) -> Any:
        """The validation dataset of the spec, built once."""
        if self._val_dataset is None:
            self._val_dataset = _build_from_spec(self.val_spec, "val")
        return self._val_dataset

    @property
    def skipped(self) -> int:
        """Items skipped as unreadable by the main process, over every loader built (workers
        count in their own copies: use the batches' ``num_skipped``)."""
        return sum(skipper.skipped for skipper in self._skippers)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            _ = self.train_dataset
        if stage in (None, "fit", "validate"):
            _ = self.val_dataset

    def train_loader(self, epoch: int = 0) -> DataLoader:
        """The training loader, starting at ``epoch`` (its sampler's ``set_epoch`` moves it)."""
        samples = TrainSamples(self.train_dataset, self.train_transform, self.seed, epoch)
        sampler = EpochShuffle(len(samples), self.seed, epoch, datasets=[samples])
        return self._loader(samples, sampler=sampler, drop_last=self.drop_last)

    def val_loader(self) -> DataLoader:
        """The validation loader: in index order, sample ``i`` drawn with
        ``sample_rng(seed, 0, i)``, no jitter."""
        samples = TrainSamples(self.val_dataset, self.val_transform, self.seed, epoch=0)
        return self._loader(samples, sampler=None, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        return self.train_loader(trainer.current_epoch if trainer is not None else 0)

    def val_dataloader(self) -> DataLoader:
        return self.val_loader()

    def _loader(
        self, samples: TrainSamples, sampler: Sampler | None, drop_last: bool
    ) -> DataLoader:
        skipper = SkipBadSamples(samples)
        self._skippers.append(skipper)
        return DataLoader(
            CountSkips(skipper),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_counting,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=False,  # workers would keep the epoch they started with
        )


def _default_spec(num_images: int) -> dict[str, Any]:
    return {"kind": "synthetic", "num_images": num_images, "image_size": 256}
