"""A LoRA run's merged export of ViT-B loads strictly into the official ``segment_anything``
builder and computes what the unmerged model computes (slow: ViT-B at 1024, twice)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sam_lightning.export import export_checkpoint
from sam_lightning.training.module import SamTrainingModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "modeling"))
from official_sam import import_official  # noqa: E402
from sam_test_models import randomize_  # noqa: E402

pytestmark = pytest.mark.slow


def test_merged_vit_b_export_loads_into_the_official_builder(tmp_path):
    official = import_official()
    torch.manual_seed(0)
    base = randomize_(official.sam_model_registry["vit_b"](), seed=0)
    base_path = tmp_path / "sam_vit_b_random.pth"
    torch.save(base.state_dict(), base_path)

    module = SamTrainingModule(
        model_type="vit_b",
        checkpoint=str(base_path),
        lora={"rank": 4, "qkv": "qv"},
        frozen=["prompt_encoder"],
    )
    with torch.no_grad():  # trained adapters and decoder: not the identity
        for parameter in module.model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.02)
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
    }
    module.trained_only.trim(checkpoint)
    ckpt = tmp_path / "lora.ckpt"
    torch.save(checkpoint, ckpt)
    merged = export_checkpoint(ckpt, tmp_path / "merged.pth")

    loaded = official.sam_model_registry["vit_b"](checkpoint=str(merged)).eval()  # strict
    module.eval()
    torch.manual_seed(1)
    image = torch.rand(1, 3, 1024, 1024) * 255
    points = (torch.tensor([[[300.0, 500.0]]]), torch.tensor([[1]]))
    with torch.no_grad():
        ours = module.model.image_encoder(module.model.preprocess(image))
        theirs = loaded.image_encoder(loaded.preprocess(image))
        assert (ours - theirs).abs().max() < 1e-4
        sparse, dense = loaded.prompt_encoder(points=points, boxes=None, masks=None)
        their_masks, their_iou = loaded.mask_decoder(
            image_embeddings=theirs,
            image_pe=loaded.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        our_masks, our_iou = module.model.decode(
            ours, point_coords=points[0], point_labels=points[1], multimask_output=True
        )
    assert (our_masks - their_masks).abs().max() < 1e-4
    assert (our_iou - their_iou).abs().max() < 1e-4
    plain = official.sam_model_registry["vit_b"](checkpoint=str(base_path)).eval()
    with torch.no_grad():
        assert (plain.image_encoder(plain.preprocess(image)) - theirs).abs().max() > 1e-3
