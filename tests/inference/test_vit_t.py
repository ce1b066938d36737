"""MobileSAM (``vit_t``) as a model type: the released layout loads strictly, and with the
same random weights our model, predictor and automatic generator match MobileSAM's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_automatic import assert_same_masks
from test_predictor import assert_predictions_match, image_prompts

from sam_lightning import SamAutomaticMaskGenerator
from sam_lightning.inference import SamPredictor
from sam_lightning.modeling.build import build_sam
from sam_lightning.modeling.checkpoint import save_checkpoint
from sam_lightning.training.optim import freeze, parameter_groups

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mobile_sam_reference import import_mobile_sam, randomize_  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def mobile_sam_pair(tmp_path_factory):
    """(MobileSAM's vit_t with random weights and buffers, the path of its state dict in
    the ``mobile_sam.pt`` layout, ours built from that file)."""
    reference = randomize_(import_mobile_sam().sam_model_registry["vit_t"](), seed=0)
    # MobileSAM's build calls eval() before loading: its attention caches the bias table
    # then, so eval() again after changing the weights.
    reference.eval()
    path = tmp_path_factory.mktemp("mobile_sam") / "mobile_sam.pt"
    torch.save(reference.state_dict(), path)
    return reference, path, build_sam("vit_t", checkpoint=path)


def test_the_released_layout_loads_strictly(mobile_sam_pair):
    reference, _, ours = mobile_sam_pair
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert theirs.keys() == mine.keys()
    assert any(key.startswith("image_encoder.head.") for key in mine)  # kept, never used
    assert all(torch.equal(theirs[key], mine[key]) for key in theirs)
    assert not ours.training and not ours.image_encoder.training


@pytest.fixture(scope="module")
def predictor_pair(mobile_sam_pair, images):
    reference, _, ours = mobile_sam_pair
    pair = import_mobile_sam().SamPredictor(reference), SamPredictor(ours)
    for predictor in pair:
        predictor.set_image(images["chelsea"])
    return pair


def test_image_embedding_matches(predictor_pair):
    reference, ours = predictor_pair
    assert ours.features.shape == (1, 256, 64, 64)
    torch.testing.assert_close(ours.features, reference.features, atol=ATOL, rtol=ATOL)
    assert ours.input_size == reference.input_size


@pytest.mark.parametrize("prompt", ["points", "box", "one point"])
@pytest.mark.parametrize("multimask_output", [True, False])
def test_predictions_match(predictor_pair, prompt, multimask_output):
    prompts = image_prompts(predictor_pair[1])
    kwargs = {"multimask_output": multimask_output, "return_logits": True}
    if prompt == "points":
        kwargs.update(point_coords=prompts["point_coords"], point_labels=prompts["point_labels"])
    elif prompt == "one point":
        kwargs.update(point_coords=prompts["point_coords"][:1], point_labels=np.array([1]))
    else:
        kwargs["box"] = prompts["box"]
    reference, ours = (predictor.predict(**kwargs) for predictor in predictor_pair)
    assert_predictions_match(reference, ours, return_logits=True)


def test_automatic_masks_match(mobile_sam_pair, images):
    reference, _, ours = mobile_sam_pair
    params = {
        "points_per_side": 4,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,  # random weights: many overlapping masks, all kept
    }
    generator = import_mobile_sam().SamAutomaticMaskGenerator(reference, **params)
    theirs = generator.generate(images["coffee"])
    assert len(theirs) > 10
    assert_same_masks(theirs, SamAutomaticMaskGenerator(ours, **params).generate(images["coffee"]))


def test_other_input_sizes_are_refused():
    with pytest.raises(ValueError, match="'vit_t' .*works at image_size 1024 only, got 512"):
        build_sam("vit_t", image_size=512)


def test_a_vit_b_checkpoint_given_as_vit_t_names_the_keys(tmp_path):
    path = save_checkpoint(build_sam("vit_b"), tmp_path / "sam_vit_b.pth")
    with pytest.raises(ValueError, match="does not match the model") as error:
        build_sam("vit_t", checkpoint=path)
    message = str(error.value)
    assert "missing keys" in message and "image_encoder.layers.0." in message
    assert "unexpected keys" in message and "image_encoder.blocks.0." in message


def test_training_leaves_out_the_unused_classifier(mobile_sam_pair):
    model = build_sam("vit_t", checkpoint=mobile_sam_pair[1]).train()
    freeze(model, [])
    trainable = {name for name, p in model.image_encoder.named_parameters() if p.requires_grad}
    assert not any(name.startswith(("head.", "norm_head.")) for name in trainable)
    groups = parameter_groups(model, 1e-4, 0.1)
    decay = {name: group["weight_decay"] for group in groups for name in group["names"]}
    assert "image_encoder.head.weight" not in decay and "image_encoder.neck.0.weight" in decay
    biases = [name for name in decay if name.endswith("attention_biases")]
    assert biases and all(decay[name] == 0.0 for name in biases)  # as TinyViT trains them
    # DDP needs a gradient for every parameter that requires one.
    model.image_encoder(torch.randn(1, 3, 1024, 1024)).square().mean().backward()
    reached = {n for n, p in model.image_encoder.named_parameters() if p.grad is not None}
    assert reached == trainable
