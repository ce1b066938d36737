"""SamDataModule: dataset specs, batch structure, reproducible order, skipped items, Lightning."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import lightning
import pytest
import torch

from sam_lightning.data.datamodule import SamDataModule, build_dataset
from sam_lightning.data.sa1b import SA1BDataset
from sam_lightning.data.synthetic import SyntheticShapes, write_sa1b


def make_datamodule(train: dict | None = None, val: dict | None = None, **kwargs) -> SamDataModule:
    """A small module: 6 (train) and 3 (val) synthetic 48 x 64 images, model input 32."""
    train = train or {"kind": "synthetic", "num_images": 6, "image_size": [48, 64]}
    val = val or {"kind": "synthetic", "num_images": 3, "image_size": [48, 64]}
    args = {"image_size": 32, "max_masks": 3, "batch_size": 2, "seed": 5, "lsj": True}
    return SamDataModule(train=train, val=val, **{**args, **kwargs})


def batches(loader) -> list[dict]:
    return list(loader)


def assert_same_batches(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a["sources"] == b["sources"]
        for key in ("images", "masks", "image_index", "annotation_ids", "input_size"):
            assert torch.equal(a[key], b[key]), key
        assert a["num_skipped"] == b["num_skipped"]


def sources(loader) -> list[str]:
    return [source for batch in loader for source in batch["sources"]]


# ------------------------------------------------------------------------- build_dataset


def test_build_dataset_kinds(tmp_path):
    dataset = build_dataset("synthetic", num_images=4, image_size=[40, 50], seed=3)
    assert isinstance(dataset, SyntheticShapes)
    assert (len(dataset), dataset.image_size, dataset.seed) == (4, (40, 50), 3)
    write_sa1b(SyntheticShapes(2, 32), tmp_path)
    assert len(build_dataset("sa1b", roots=[str(tmp_path)])) == 2
    assert isinstance(build_dataset("sa1b", roots=str(tmp_path)), SA1BDataset)


@pytest.mark.parametrize(
    ("kind", "kwargs", "message"),
    [
        ("bogus", {}, "'bogus'"),
        ("synthetic", {"image_size": 32}, r"'synthetic' needs argument\(s\) \['num_images'\]"),
        ("sa1b", {}, r"\['roots'\]"),
        ("synthetic", {"num_images": 2, "colour": 1}, r"unknown argument\(s\) \['colour'\]"),
    ],
)
def test_build_dataset_errors(kind, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_dataset(kind, **kwargs)


def test_bad_kind_in_spec_raises_naming_it():
    module = make_datamodule(train={"kind": "coco", "num_images": 2})
    with pytest.raises(ValueError, match="'coco'"):
        module.train_loader()
    with pytest.raises(ValueError, match="needs a 'kind'"):
        make_datamodule(val={"num_images": 2}).val_loader()


# ------------------------------------------------------------------------------ batches


def test_train_batches_have_collate_structure():
    module = make_datamodule()
    loader = module.train_loader()
    assert len(loader) == 3
    for batch in loader:
        images, masks, image_index = batch["images"], batch["masks"], batch["image_index"]
        assert images.shape == (2, 3, 32, 32) and images.dtype == torch.uint8
        assert masks.dtype == torch.bool and masks.shape[1:] == (32, 32)
        assert 0 < len(masks) <= 2 * 3  # max_masks per image
        assert image_index.shape == (len(masks),) and set(image_index.tolist()) <= {0, 1}
        assert masks.flatten(1).any(1).all()
        assert batch["num_skipped"] == 0
    assert module.skipped == 0


def test_drop_last_applies_to_training_only():
    module = make_datamodule(val={"kind": "synthetic", "num_images": 5, "image_size": 40})
    module.train_spec["num_images"] = 5
    assert len(module.train_loader()) == 2
    assert [len(batch["images"]) for batch in module.val_loader()] == [2, 2, 1]
    assert len(make_datamodule(drop_last=False, train=dict(module.train_spec)).train_loader()) == 3


def test_train_order_and_augmentation_reproducible_per_epoch():
    epoch0 = batches(make_datamodule().train_loader(epoch=0))
    assert_same_batches(epoch0, batches(make_datamodule().train_loader(epoch=0)))
    loader = make_datamodule().train_loader(epoch=0)
    assert_same_batches(batches(loader), batches(loader))  # iter() twice: the same epoch

    epoch1 = batches(make_datamodule().train_loader(epoch=1))
    order0 = [s for b in epoch0 for s in b["sources"]]
    order1 = [s for b in epoch1 for s in b["sources"]]
    assert sorted(order0) == sorted(order1) and order0 != order1
    assert len(set(order0)) == 6
    # The same image is augmented differently in another epoch (LSJ is on).
    images0 = {s: img for b in epoch0 for s, img in zip(b["sources"], b["images"])}
    images1 = {s: img for b in epoch1 for s, img in zip(b["sources"], b["images"])}
    assert any(not torch.equal(images0[s], images1[s]) for s in images0)
    # Another seed, another order.
    assert sources(make_datamodule(seed=6).train_loader(epoch=0)) != order0


def test_sampler_set_epoch_moves_order_and_augmentation():
    """Lightning calls ``set_epoch`` on the sampler at each epoch start."""
    loader = make_datamodule().train_loader(epoch=0)
    loader.sampler.set_epoch(2)
    assert_same_batches(batches(loader), batches(make_datamodule().train_loader(epoch=2)))


def test_train_dataloader_starts_at_the_trainers_epoch():
    module = make_datamodule()
    module.trainer = SimpleNamespace(current_epoch=3)
    assert_same_batches(
        batches(module.train_dataloader()), batches(make_datamodule().train_loader(epoch=3))
    )


def test_val_is_deterministic_unshuffled_and_unlike_train():
    module = make_datamodule()
    first = batches(module.val_dataloader())
    assert_same_batches(first, batches(make_datamodule().val_dataloader()))
    assert [s for b in first for s in b["sources"]] == [f"synthetic(seed=1)[{i}]" for i in range(3)]
    assert sources(module.train_loader())[0].startswith("synthetic(seed=0)")
    # No jitter: the image fills the top of the 32 x 32 frame (48 x 64 -> 24 x 32).
    assert first[0]["input_size"].tolist() == [[24, 32], [24, 32]]
    explicit = make_datamodule(val={"kind": "synthetic", "num_images": 3, "seed": 9})
    assert sources(explicit.val_loader())[0] == "synthetic(seed=9)[0]"


def test_sa1b_kind_reads_written_directory(tmp_path):
    write_sa1b(SyntheticShapes(3, (48, 64), seed=1), tmp_path)
    synthetic = make_datamodule()
    sa1b = make_datamodule(val={"kind": "sa1b", "roots": [str(tmp_path)]})
    from_files, generated = batches(sa1b.val_loader()), batches(synthetic.val_loader())
    assert len(from_files) == 2
    assert from_files[0]["sources"][0].endswith(".json")
    for a, b in zip(from_files, generated):
        for key in ("images", "masks", "image_index", "annotation_ids"):
            assert torch.equal(a[key], b[key]), key


def corrupt_directory(tmp_path, count: int = 4, bad: int = 1):
    """An SA-1B directory of ``count`` images whose image ``bad`` is not a PNG any more."""
    paths = write_sa1b(SyntheticShapes(count, 40, seed=2), tmp_path)
    paths[bad].with_suffix(".png").write_bytes(b"not a png")
    return paths


def test_corrupt_file_is_skipped_counted_and_logged(tmp_path, caplog):
    paths = corrupt_directory(tmp_path)
    module = make_datamodule(val={"kind": "sa1b", "roots": str(tmp_path)})
    with caplog.at_level(logging.WARNING):
        loaded = batches(module.val_loader())
    assert sum(batch["num_skipped"] for batch in loaded) == 1
    assert module.skipped == 1
    assert str(paths[1]) in caplog.text
    # Item 1 is replaced by item 2: every batch is still complete.
    names = [s for b in loaded for s in b["sources"]]
    assert names == [str(paths[i]) for i in (0, 2, 2, 3)]


def test_workers_give_the_same_batches_and_count_skips(tmp_path):
    corrupt_directory(tmp_path, count=6, bad=3)
    train = {"kind": "sa1b", "roots": str(tmp_path)}
    single = batches(make_datamodule(train=train).train_loader(epoch=1))
    module = make_datamodule(train=train, num_workers=2)
    loader = module.train_loader(epoch=0)
    loader.sampler.set_epoch(1)  # before the workers start, as Lightning does
    workers = batches(loader)
    assert_same_batches(single, workers)
    assert sum(batch["num_skipped"] for batch in workers) == 1
    assert module.skipped == 0  # the workers counted it


# ---------------------------------------------------------------------------- Lightning


class RecordBatches(lightning.LightningModule):
    """Records the sources and image sums of every training batch, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: dict[int, list[tuple[str, int]]] = {}

    def training_step(self, batch, batch_idx):
        sums = batch["images"].flatten(1).sum(1).tolist()
        self.seen.setdefault(self.current_epoch, []).extend(zip(batch["sources"], sums))
        return self.weight * batch["images"].float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader` but have no")
@pytest.mark.parametrize("reload", [0, 1])
def test_trainer_sees_each_epochs_batches(tmp_path, reload):
    module = make_datamodule(num_workers=1 if reload else 0)
    model = RecordBatches()
    trainer = lightning.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        reload_dataloaders_every_n_epochs=reload,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=module)
    assert sorted(model.seen) == [0, 1, 2]
    for epoch, seen in model.seen.items():
        expected = [
            (source, int(image.sum()))
            for batch in make_datamodule().train_loader(epoch)
            for source, image in zip(batch["sources"], batch["images"])
        ]
        assert seen == expected, epoch


def test_distributed_sampler_injection_keeps_the_epoch_order():
    """What Lightning does to the loader under DDP (``use_distributed_sampler=True``): wrap the
    sampler, rebuild the DataLoader, call ``set_epoch`` on the wrapper at each epoch start."""
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled, _update_dataloader

    per_rank = []
    for rank in range(2):
        loader = make_datamodule(drop_last=False).train_loader(epoch=0)
        shuffle = _is_dataloader_shuffled(loader)
        sampler = _get_distributed_sampler(
            loader, shuffle, overfit_batches=0, num_replicas=2, rank=rank
        )
        loader = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
        _set_sampler_epoch(loader, 1)
        per_rank.append(batches(loader))
    epoch1 = [
        s for b in make_datamodule(drop_last=False).train_loader(epoch=1) for s in b["sources"]
    ]
    assert [s for b in per_rank[0] for s in b["sources"]] == epoch1[0::2]
    assert [s for b in per_rank[1] for s in b["sources"]] == epoch1[1::2]
    # Augmentations follow the epoch too.
    single = {
        s: image
        for b in make_datamodule(drop_last=False).train_loader(epoch=1)
        for s, image in zip(b["sources"], b["images"])
    }
    for b in per_rank[0] + per_rank[1]:
        for s, image in zip(b["sources"], b["images"]):
            assert torch.equal(image, single[s])
