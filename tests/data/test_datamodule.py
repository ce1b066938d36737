"""SamDataModule: dataset specs, batch structure, reproducible order, skipped items, Lightning."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import lightning
import pytest
import torch

from sam_lightning.data.datamodule import SamDataModule, build_dataset
from sam_lightning.data.sa1b_dataset import SA1BDataset
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
    module = make_datamodule(train={"kind": "cityscapes", "num_images": 2})
    with pytest.raises(ValueError, match="'cityscapes'"):
        module.train_loader()
    with pytest.raises(ValueError, match="needs a 'kind'"):
        make_datamodule(train={"num_images": 2}).train_loader()


def test_val_spec_inherits_the_train_spec_of_its_kind():
    train = {"kind": "synthetic", "num_images": 6, "image_size": 48, "seed": 4}
    module = make_datamodule(train=train, val={"num_images": 2})
    assert module.val_spec == {**train, "num_images": 2, "seed": 5}  # other images: seed + 1
    module = make_datamodule(train=train, val={"kind": "synthetic", "num_images": 2, "seed": 9})
    assert module.val_spec == {**train, "num_images": 2, "seed": 9}
    other = {"kind": "sa1b", "roots": "/nowhere"}
    assert make_datamodule(train=train, val=other).val_spec == other  # another kind: alone


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


def test_train_batches_are_full_and_val_keeps_every_item():
    module = make_datamodule(val={"kind": "synthetic", "num_images": 5, "image_size": 40})
    module.train_spec["num_images"] = 5
    loader = module.train_loader()
    assert len(loader) == 2  # a window is one pass: 5 // 2 batches
    assert [len(batch["images"]) for batch in loader] == [2, 2]
    assert [len(batch["images"]) for batch in module.val_loader()] == [2, 2, 1]


def test_stream_passes_are_permutations_with_fresh_augmentation():
    """Batches 0-2 are pass 0 over the 6 images, batches 3-5 pass 1: the same images in
    another order, augmented differently (LSJ is on); everything reproducible."""
    pass0 = batches(make_datamodule().train_loader(position=0))
    assert_same_batches(pass0, batches(make_datamodule().train_loader(position=0)))
    loader = make_datamodule().train_loader(position=0)
    assert_same_batches(batches(loader), batches(loader))  # iter() twice: the same window
    pass1 = batches(make_datamodule().train_loader(position=3))
    order0 = [s for b in pass0 for s in b["sources"]]
    order1 = [s for b in pass1 for s in b["sources"]]
    assert sorted(order0) == sorted(order1) and order0 != order1
    assert len(set(order0)) == 6
    images0 = {s: img for b in pass0 for s, img in zip(b["sources"], b["images"])}
    images1 = {s: img for b in pass1 for s, img in zip(b["sources"], b["images"])}
    assert any(not torch.equal(images0[s], images1[s]) for s in images0)
    assert sources(make_datamodule(seed=6).train_loader(position=0)) != order0


def test_a_window_starts_at_the_position_read_at_each_iter():
    """A window may span passes; ``iter()`` reads the position afresh and yields from it to
    the end of its window, so a resumed run continues with the next unseen batch."""
    whole = batches(make_datamodule().train_loader(position=0, num_batches=5))
    assert len(whole) == 5  # batches 3 and 4 come from pass 1
    consumed = [2]
    loader = make_datamodule().train_loader(position=lambda: consumed[0], num_batches=5)
    assert len(loader) == 5  # Lightning's batch count is the whole window's
    assert_same_batches(batches(loader), whole[2:])
    consumed[0] = 6  # window 1: batches 6..9
    later = batches(make_datamodule().train_loader(position=0, num_batches=10))[6:]
    assert_same_batches(batches(loader), later)


def trainer_stub(**kwargs) -> SimpleNamespace:
    fields = {"max_steps": -1, "accumulate_grad_batches": 1, "global_rank": 0, "world_size": 1}
    fields["current_epoch"] = 0
    return SimpleNamespace(**{**fields, **kwargs})


def test_train_dataloader_starts_at_the_modules_position():
    module = make_datamodule()
    module.trainer = trainer_stub(lightning_module=SimpleNamespace(batches_seen=4))
    loader = module.train_dataloader()
    assert len(loader) == 3
    reference = batches(make_datamodule().train_loader(position=0, num_batches=6))
    assert_same_batches(batches(loader), reference[4:6])
    # Iteration-based training: the whole run (max_steps x accumulation) is one window.
    module.trainer = trainer_stub(
        lightning_module=SimpleNamespace(batches_seen=1), max_steps=4, accumulate_grad_batches=2
    )
    loader = module.train_dataloader()
    assert len(loader) == 8
    reference = batches(make_datamodule().train_loader(position=0, num_batches=8))
    assert_same_batches(batches(loader), reference[1:])
    # A LightningModule that does not count batches: the start of the trainer's epoch.
    module.trainer = trainer_stub(lightning_module=object(), current_epoch=1)
    assert_same_batches(batches(module.train_dataloader()), reference[3:6])


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
    single = batches(make_datamodule(train=train).train_loader(position=3))
    module = make_datamodule(train=train, num_workers=2)
    workers = batches(module.train_loader(position=3))
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
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=module)
    assert sorted(model.seen) == [0, 1, 2]
    for epoch, seen in model.seen.items():
        expected = [
            (source, int(image.sum()))
            for batch in make_datamodule().train_loader(position=3 * epoch)
            for source, image in zip(batch["sources"], batch["images"])
        ]
        assert seen == expected, epoch


def test_ranks_split_the_stream_and_the_validation_items():
    """Rank r of W takes global batches r, r + W, ...; validation items r, r + W, ...; the
    module refuses Lightning's sampler injection on top of its own split."""
    single = batches(make_datamodule(batch_size=1).train_loader(position=0, num_batches=6))
    for rank in range(2):
        split = batches(
            make_datamodule(batch_size=1).train_loader(position=0, rank=rank, world_size=2)
        )
        assert len(split) == 3
        assert_same_batches(split, single[rank::2])
    val = make_datamodule(val={"kind": "synthetic", "num_images": 5, "image_size": 40})
    names = [sources(val.val_loader(rank=rank, world_size=2)) for rank in range(2)]
    everything = sources(val.val_loader())
    assert names == [everything[0::2], everything[1::2]]
    module = make_datamodule()
    module.trainer = trainer_stub(
        world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True)
    )
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        module.train_dataloader()
