"""Training and validation data for SAM as a :class:`lightning.LightningDataModule`.

Datasets are given as plain specs (``{"kind": "synthetic" | "sa1b" | "coco" | "lvis" |
"images", ...}``)
so that Hydra can instantiate :class:`SamDataModule` from a config; :func:`build_dataset` turns
a spec into a dataset.

The training stream. Training data is one continuous stream of samples: pass ``e`` over the
dataset is a permutation drawn from ``(seed, e)``, and the sample of dataset item ``i`` in pass
``e`` is augmented with ``sample_rng(seed, e, i)``. Per-device batch ``g`` of rank ``r`` (of
``W``) holds stream positions ``(g W + r) B ... (g W + r) B + B - 1``. So every batch is a
pure function of ``(seed, g, r, W, B)``, whatever the number of DataLoader workers, and a run
can continue from any batch: :class:`TrainStream` starts at the *position*, the number of
batches already consumed, which :class:`~sam_lightning.training.module.SamTrainingModule`
counts and keeps in its checkpoints (``batches_seen``). This is what makes ``resume`` exact
mid-epoch: Lightning keeps no data position of its own for a plain DataLoader.

A Lightning *epoch* is a window of ``num_batches`` batches of the stream: with
``trainer.max_steps`` set (iteration-based training, as in the paper) the whole run
(``max_steps x accumulate_grad_batches`` batches) is one window; with ``max_steps=-1`` a window
is ``len(dataset) // (B W)`` batches. Each ``iter()`` of the loader yields from the current
position to the end of its window.

Ranks. :class:`TrainStream` and :class:`RankSlice` split the data across ranks themselves, so
the Trainer must run with ``use_distributed_sampler=False`` (:func:`sam_lightning.train.train`
sets it; :meth:`SamDataModule.train_dataloader` refuses a distributed run without it).
Validation gives rank ``r`` the items ``r, r + W, ...`` in order, without padding.

Skipped items. An item that fails to load (an unreadable image, a malformed annotation file) is
logged with its path and replaced by the next index (:class:`SkipBadSamples`). Every batch
carries ``num_skipped``, the number of items replaced while building it, counted in whichever
process (main or worker) built it: sum it to log the total. :attr:`SamDataModule.skipped` only
sees what the main process loaded (all of it when ``num_workers=0``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning
import numpy as np
from torch.utils.data import DataLoader, Sampler

from sam_lightning.data.coco import CocoDataset, LvisDataset
from sam_lightning.data.image_folder import ImageFolderDataset
from sam_lightning.data.sa1b_dataset import SA1BDataset
from sam_lightning.data.samples import (
    Sample,
    SampleKey,
    SampleTransform,
    SkipBadSamples,
    TransformedDataset,
    collate,
)
from sam_lightning.data.synthetic import SyntheticShapes

log = logging.getLogger(__name__)

#: Dataset kinds of a spec and the classes they build.
DATASET_KINDS: dict[str, type] = {
    "synthetic": SyntheticShapes,
    "sa1b": SA1BDataset,
    "coco": CocoDataset,
    "lvis": LvisDataset,
    "images": ImageFolderDataset,
}
#: The path arguments of the dataset kinds: a ``"file"``, a ``"dir"`` or either (``"path"``).
DATASET_PATHS: dict[str, dict[str, str]] = {
    "sa1b": {"roots": "path", "image_root": "dir"},
    "coco": {"annotations": "file", "images": "dir"},
    "lvis": {"annotations": "file", "images": "dir"},
    "images": {"root": "path"},
}
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
            ``min_area``), ``"sa1b"`` (:class:`SA1BDataset`: ``roots``, a path or a list
            of paths, optional ``image_root``, ``recursive``), ``"coco"`` or ``"lvis"``
            (:class:`CocoDataset`, :class:`LvisDataset`: ``annotations``, ``images``,
            optional ``skip_crowd``, ``min_area``, ``category_ids``), ``"images"``
            (:class:`ImageFolderDataset`: a plain folder ``root``, optional ``recursive``;
            no masks, for distillation).
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


def validation_spec(train: Mapping[str, Any], val: Mapping[str, Any]) -> dict[str, Any]:
    """The validation spec: ``val`` over the ``train`` spec's settings when it has the same
    ``kind`` or none (so a config states only what differs), else ``val`` alone. A synthetic
    one without its own ``seed`` gets the training seed + 1, so its images differ."""
    val = dict(val)
    inherits = val.get("kind", train.get("kind")) == train.get("kind")
    seed_given = "seed" in val
    if inherits:
        val = {**train, **val}
    if val.get("kind") == "synthetic" and not seed_given:
        val["seed"] = (train.get("seed", 0) if train.get("kind") == "synthetic" else 0) + 1
    return val


def missing_paths(
    train: Mapping[str, Any] | None, val: Mapping[str, Any] | None, prefix: str = "data"
) -> list[str]:
    """A line for each path of the dataset specs (as :class:`SamDataModule` takes them) that
    does not exist or is not of its kind, named by its key, e.g. ``data.train.images=/coco/
    train2017: no such directory``; [] when all are there. Nothing is read or built. A path
    that the ``val`` spec inherits is named once, as the ``train`` spec's."""
    specs: list[tuple[str, dict[str, Any], set[str]]] = []
    train_spec = _plain(train) if train is not None else _default_spec(64)
    specs.append(("train", train_spec, set(train_spec)))
    if val is not None:
        own = _plain(val)
        specs.append(("val", validation_spec(train_spec, own), set(own)))
    problems: list[str] = []
    seen: set[str] = set()
    for split, spec, own in specs:
        for name, kind in DATASET_PATHS.get(spec.get("kind"), {}).items():
            value = spec.get(name)
            if value is None:
                continue
            key = f"{prefix}.{split if name in own else 'train'}.{name}"
            listed = isinstance(value, list)
            for index, path in enumerate(value if listed else [value]):
                where = f"{key}[{index}]" if listed else key
                problem = _path_problem(Path(str(path)), kind)
                if problem and where not in seen:
                    seen.add(where)
                    problems.append(f"{where}={path}: {problem}")
    return problems


def _path_problem(path: Path, kind: str) -> str | None:
    if not path.exists():
        return {"file": "no such file", "dir": "no such directory"}.get(kind, "does not exist")
    if kind == "file" and not path.is_file():
        return "not a file"
    if kind == "dir" and not path.is_dir():
        return "not a directory"
    return None


def _build_from_spec(spec: Mapping[str, Any], split: str) -> Any:
    spec = _plain(spec)
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"the {split} dataset spec needs a 'kind', got {spec!r}")
    return build_dataset(**spec)


class TrainStream(Sampler[tuple[int, int]]):
    """The keys ``(item index, pass)`` of training batches ``position ... end of its window``
    for one rank (see the module docstring).

    Args:
        size: items in the dataset.
        seed: the seed of the permutations.
        batch_size: B, items per batch (per rank).
        num_batches: batches per window (a Lightning epoch); ``len(self)`` is
            ``num_batches * batch_size`` whatever the position, as Lightning expects.
        rank, world_size: this rank and the number of ranks.
        position: the number of batches this rank has consumed, or a callable returning it,
            read at every ``iter()`` (so a resumed run continues where it stopped).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        batch_size: int,
        num_batches: int,
        rank: int = 0,
        world_size: int = 1,
        position: int | Callable[[], int] = 0,
    ) -> None:
        if size < 1 or batch_size < 1 or num_batches < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"TrainStream needs size, batch_size, num_batches >= 1 and 0 <= rank < "
                f"world_size, got {size}, {batch_size}, {num_batches}, {rank}, {world_size}"
            )
        self.size, self.seed, self.batch_size = size, seed, batch_size
        self.num_batches, self.rank, self.world_size = num_batches, rank, world_size
        self.position = position
        self._cached: tuple[int, np.ndarray] | None = None  # (pass, its permutation)

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def current_position(self) -> int:
        """Batches consumed so far (where the next ``iter()`` starts)."""
        return int(self.position() if callable(self.position) else self.position)

    def batch_keys(self, batch: int) -> list[tuple[int, int]]:
        """The ``(index, pass)`` keys of this rank's batch ``batch`` of the stream."""
        first = (batch * self.world_size + self.rank) * self.batch_size
        keys = []
        for stream_index in range(first, first + self.batch_size):
            pass_index, offset = divmod(stream_index, self.size)
            keys.append((int(self._permutation(pass_index)[offset]), pass_index))
        return keys

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start = self.current_position()
        end = (start // self.num_batches + 1) * self.num_batches
        for batch in range(start, end):
            yield from self.batch_keys(batch)

    def _permutation(self, pass_index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != pass_index:
            rng = np.random.default_rng([_ORDER_STREAM, self.seed, pass_index])
            self._cached = (pass_index, rng.permutation(self.size))
        return self._cached[1]


class RankSlice(Sampler[int]):
    """Items ``rank, rank + world_size, ...`` of ``range(size)``, in order (validation)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))


class CountSkips:
    """Wraps a :class:`SkipBadSamples`: key ``k`` gives ``(sample, number of items skipped to
    produce it)``, so the count survives DataLoader workers (see :func:`collate_counting`)."""

    def __init__(self, skipping: SkipBadSamples) -> None:
        self.skipping = skipping

    def __len__(self) -> int:
        return len(self.skipping)

    def __getitem__(self, key: SampleKey) -> tuple[Sample, int]:
        before = self.skipping.skipped
        sample = self.skipping[key]
        return sample, self.skipping.skipped - before


def collate_counting(items: Sequence[tuple[Sample, int]]) -> dict[str, Any]:
    """:func:`collate` of the samples, plus ``num_skipped`` (int): the items skipped for them."""
    batch = collate([sample for sample, _ in items])
    batch["num_skipped"] = sum(count for _, count in items)
    return batch


class SamDataModule(lightning.LightningDataModule):
    """Training and validation loaders of :func:`collate` batches (see the module docstring
    for the training stream, ranks and skipped items).

    Args:
        train, val: dataset specs, ``{"kind": ..., **arguments}`` (see :func:`build_dataset`).
            Default: 64 (train) and 16 (val) synthetic 256 x 256 images. ``val`` takes the
            ``train`` spec's settings it does not give when its ``kind`` is the same or
            missing (:func:`validation_spec`).
        image_size: S, the side of the model input (SAM: 1024).
        max_masks: masks per image, at most (64 in the SAM paper, Appendix A).
        max_mask_fraction: drop masks covering more of the image than this (paper: 0.9).
        lsj: large-scale jitter on training images (never on validation images).
        scale_range: LSJ scale range.
        batch_size: images per batch (per device).
        num_workers: DataLoader worker processes.
        seed: the seed of the training stream, and of validation samples.
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
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.train_spec = _plain(train) if train is not None else _default_spec(64)
        self.val_spec = validation_spec(
            self.train_spec, _plain(val) if val is not None else _default_spec(16)
        )
        if batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}"
            )
        low, high = scale_range
        transform_args = {"image_size": image_size, "max_masks": max_masks}
        transform_args["max_mask_fraction"] = max_mask_fraction
        self.train_transform = SampleTransform(
            **transform_args, lsj=lsj, scale_range=(float(low), float(high))
        )
        self.val_transform = SampleTransform(**transform_args, lsj=False)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.pin_memory = pin_memory
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

    def train_loader(
        self,
        position: int | Callable[[], int] = 0,
        num_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> DataLoader:
        """The training loader of one rank from batch ``position`` of the stream (an int or a
        callable read at each ``iter()``), in windows of ``num_batches`` batches (default: one
        pass over the dataset, ``len(dataset) // (batch_size * world_size)``)."""
        samples = TransformedDataset(self.train_dataset, self.train_transform, self.seed)
        if num_batches is None:
            num_batches = max(1, len(samples) // (self.batch_size * world_size))
        sampler = TrainStream(
            len(samples), self.seed, self.batch_size, num_batches, rank, world_size, position
        )
        return self._loader(samples, sampler)

    def val_loader(self, rank: int = 0, world_size: int = 1) -> DataLoader:
        """The validation loader of one rank: items ``rank, rank + world_size, ...`` in order,
        item ``i`` drawn with ``sample_rng(seed, 0, i)``, no jitter."""
        samples = TransformedDataset(self.val_dataset, self.val_transform, self.seed)
        return self._loader(samples, RankSlice(len(samples), rank, world_size))

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is None:
            return self.train_loader()
        rank, world_size = _check_ranks(trainer)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            num_batches = trainer.max_steps * trainer.accumulate_grad_batches
        else:
            num_batches = max(1, len(self.train_dataset) // (self.batch_size * world_size))
        position = _ConsumedBatches(trainer, num_batches)
        return self.train_loader(position, num_batches, rank, world_size)

    def val_dataloader(self) -> DataLoader:
        if self.trainer is None:
            return self.val_loader()
        return self.val_loader(*_check_ranks(self.trainer))

    def _loader(self, samples: TransformedDataset, sampler: Sampler) -> DataLoader:
        skipper = SkipBadSamples(samples)
        self._skippers.append(skipper)
        return DataLoader(
            CountSkips(skipper),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_counting,
            pin_memory=self.pin_memory,
            drop_last=False,  # the stream's batches are always full; validation keeps all
        )


class _ConsumedBatches:
    """The training position of a Trainer: the LightningModule's ``batches_seen`` when it
    counts them (:class:`~sam_lightning.training.module.SamTrainingModule` does, and keeps
    the count in checkpoints), else the start of Lightning's current epoch."""

    def __init__(self, trainer: Any, batches_per_epoch: int) -> None:
        self.trainer, self.batches_per_epoch = trainer, batches_per_epoch

    def __call__(self) -> int:
        module = getattr(self.trainer, "lightning_module", None)
        seen = getattr(module, "batches_seen", None)
        if seen is not None:
            return int(seen)
        return int(self.trainer.current_epoch) * self.batches_per_epoch


def _check_ranks(trainer: Any) -> tuple[int, int]:
    """``(global_rank, world_size)`` of a Trainer; refuses Lightning's own sampler injection,
    which would split the already-split data again."""
    rank, world_size = int(trainer.global_rank), int(trainer.world_size)
    connector = getattr(trainer, "_accelerator_connector", None)
    if world_size > 1 and getattr(connector, "use_distributed_sampler", False):
        raise ValueError(
            "SamDataModule splits the data across ranks itself: create the Trainer with "
            "use_distributed_sampler=False"
        )
    return rank, world_size


def _default_spec(num_images: int) -> dict[str, Any]:
    return {"kind": "synthetic", "num_images": num_images, "image_size": 256}
