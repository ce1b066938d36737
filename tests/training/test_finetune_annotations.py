"""The data engine's retraining step (+exp=finetune_annotations): SA1BDataset reads the
annotation tool's output (SA-1B JSONs with the tool's extra keys, the images in another
folder), and the experiment trains on it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sam_lightning import ops
from sam_lightning.data import SA1BDataset
from sam_lightning.data.sa1b import annotation_id, sa1b_image_id
from sam_lightning.data.sa1b_dataset import decode_masks
from sam_lightning.data.synthetic import SyntheticShapes
from sam_lightning.file_io import write_atomic
from sam_lightning.modeling.build import build_sam
from sam_lightning.modeling.checkpoint import save_checkpoint
from sam_lightning.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_experiments import SHRINK, SMALL_MODEL, compose_experiment  # noqa: E402

SIZE = (64, 80)


def annotate_folder(images: Path, output: Path, num_images: int, seed: int) -> dict:
    """Writes ``num_images`` synthetic images to ``images`` and, for all but the last (left
    unannotated), ``<output>/<stem>.json`` as the annotation tool stores them: SA-1B fields
    id/segmentation/bbox/area only, the tool's keys per annotation, its "annotate" state. The
    first image is marked done without a mask. Returns the masks written, by stem."""
    shapes = SyntheticShapes(num_images, SIZE, seed=seed)
    images.mkdir(parents=True)
    output.mkdir(parents=True)
    (output / ".embeddings").mkdir()  # the tool's embedding cache
    (output / ".embeddings" / "photo_1.png.pt").write_bytes(b"not an annotation")
    written = {}
    for index in range(num_images):
        stem = f"photo_{index}"
        image, masks = shapes.render(index)
        Image.fromarray(image).save(images / f"{stem}.png")
        if index == num_images - 1:
            continue
        if index == 0:
            masks = masks[:0]
        image_id = sa1b_image_id(stem)
        rles = ops.rle_encode(masks) if len(masks) else []
        areas = ops.rle_area(rles).tolist() if rles else []
        boxes = ops.rle_to_bbox(rles).tolist() if rles else []
        annotations = []
        for i, rle in enumerate(rles):
            by_person = i % 2 == 0
            x, y, w, h = boxes[i]
            annotations.append({
                "id": annotation_id(image_id, i),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "area": int(areas[i]),
                "bbox": [float(v) for v in boxes[i]],
                "source": "person" if by_person else "model",
                "prompts": {
                    "points": [[x + w / 2, y + h / 2, 1]] if by_person else [],
                    "box": [x, y, x + w, y + h] if i % 4 == 0 else None,
                },
                "seconds": 4.5 + i if by_person else None,
                "annotator": "alice",
                "session": "2025-01-31T14-05-09",
                "created": "2025-01-31T14:06:00+00:00",
            })
        document = {
            "image": {"image_id": image_id, "width": SIZE[1], "height": SIZE[0],
                      "file_name": f"{stem}.png"},
            "annotations": annotations,
            "annotate": {"done": True, "next_index": len(annotations), "prefill": None},
        }
        write_atomic(output / f"{stem}.json", json.dumps(document).encode())
        written[stem] = masks
    return written


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("engine")
    result = {}
    for split, count, seed in (("train", 5, 0), ("val", 3, 1)):
        images, output = root / f"photos_{split}", root / f"ann_{split}"
        result[split] = {"images": images, "output": output,
                         "masks": annotate_folder(images, output, count, seed)}
    model = build_sam("vit_tiny", image_size=64)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    result["checkpoint"] = root / "sam_round_0.pth"
    save_checkpoint(model, result["checkpoint"], format="torch")
    result["state"] = model.state_dict()
    return result


def test_dataset_reads_the_annotation_folder(folders):
    train = folders["train"]
    dataset = SA1BDataset(train["output"], image_root=train["images"])
    assert len(dataset) == len(train["masks"])  # one per JSON: not the unannotated image
    for index in range(len(dataset)):
        sample = dataset[index]
        stem = Path(sample["image_info"]["file_name"]).stem
        with Image.open(train["images"] / f"{stem}.png") as image:
            assert np.array_equal(sample["image"], np.array(image))
        masks = decode_masks(sample["annotations"], size=SIZE)
        assert torch.equal(masks, torch.from_numpy(train["masks"][stem]))
        assert {a["source"] for a in sample["annotations"]} <= {"person", "model"}
    assert len(dataset[0]["annotations"]) == 0  # done, no mask
    assert {a["source"] for a in dataset[1]["annotations"]} == {"person", "model"}


def test_images_live_elsewhere(folders):
    """Without image_root the images are looked for next to the JSON files."""
    with pytest.raises(FileNotFoundError, match="image.file_name"):
        SA1BDataset(folders["train"]["output"])[1]


def test_retraining_trains_two_steps(folders, tmp_path):
    config = compose_experiment(
        "finetune_annotations",
        *SHRINK,
        *SMALL_MODEL,
        f"model.checkpoint={folders['checkpoint']}",
        f"data.train.roots={folders['train']['output']}",
        f"data.train.image_root={folders['train']['images']}",
        f"data.val.roots={folders['val']['output']}",
        f"+data.val.image_root={folders['val']['images']}",
    )
    assert config["model"]["type"] == "vit_tiny" and config["data"]["train"]["kind"] == "sa1b"
    metrics = train(config, tmp_path)
    assert metrics["step"] == 2 and np.isfinite(metrics["train/loss"])
    assert 0.0 <= metrics["val/miou_1pt"] <= 1.0
    trained = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    name = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    assert torch.equal(trained[f"model.{name}"], folders["state"][name])  # from the checkpoint

