"""Our SamPredictor on our model against the official predictor on the official model, with
the same random weights, on real non-square photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam_lightning.inference import SamPredictor
from sam_lightning.inference import predictor as predictor_module

ATOL = 1e-4


def assert_predictions_match(reference, ours, return_logits: bool) -> None:
    """Masks, scores and low-res logits agree; binary masks may differ only where the
    official logit is within ATOL of the threshold."""
    ref_masks, ref_scores, ref_low = (np.asarray(x) for x in reference)
    masks, scores, low = (np.asarray(x) for x in ours)
    assert masks.shape == ref_masks.shape and masks.dtype == ref_masks.dtype
    np.testing.assert_allclose(scores, ref_scores, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(low, ref_low, atol=ATOL, rtol=ATOL)
    if return_logits:
        np.testing.assert_allclose(masks, ref_masks, atol=ATOL, rtol=ATOL)
    else:
        assert (masks != ref_masks).mean() < 1e-5


def predict_both(pair, **kwargs):
    reference, ours = pair
    return reference.predict(**kwargs), ours.predict(**kwargs)


def image_prompts(predictor) -> dict:
    """Points (one background) and a box in the original frame of the set image."""
    h, w = predictor.original_size
    return {
        "point_coords": np.array([[0.4 * w, 0.5 * h], [0.7 * w, 0.2 * h], [w, h]]),
        "point_labels": np.array([1, 0, 1]),
        "box": np.array([0.1 * w, 0.2 * h, 0.8 * w, 0.9 * h]),
    }


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_features_match_official(models, images, official, image_format):
    for image in images.values():
        if image_format == "BGR":
            image = np.ascontiguousarray(image[..., ::-1])
        reference, ours = official.SamPredictor(models[0]), SamPredictor(models[1])
        reference.set_image(image, image_format)
        ours.set_image(image, image_format)
        assert ours.is_image_set and ours.features.shape == (1, 256, 16, 16)
        torch.testing.assert_close(
            ours.get_image_embedding(), reference.features, atol=ATOL, rtol=ATOL
        )
        assert ours.original_size == image.shape[:2]
        assert ours.input_size == reference.input_size


def test_bgr_equals_rgb(models, images, predictor_pairs):
    ours = SamPredictor(models[1])
    ours.set_image(np.ascontiguousarray(images["coffee"][..., ::-1]), "BGR")
    torch.testing.assert_close(ours.features, predictor_pairs["coffee"][1].features)


@pytest.mark.parametrize("prompt", ["points", "box", "box+points", "one point"])
@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("return_logits", [True, False])
def test_predict_matches_official(pair, prompt, multimask_output, return_logits):
    prompts = image_prompts(pair[1])
    kwargs = {"multimask_output": multimask_output, "return_logits": return_logits}
    if "points" in prompt:
        kwargs.update(point_coords=prompts["point_coords"], point_labels=prompts["point_labels"])
    if prompt == "one point":
        kwargs.update(point_coords=prompts["point_coords"][:1], point_labels=np.array([1]))
    if "box" in prompt:
        kwargs["box"] = prompts["box"]
    reference, ours = predict_both(pair, **kwargs)
    assert ours[0].shape == (3 if multimask_output else 1, *pair[1].original_size)
    assert ours[0].dtype == (np.float32 if return_logits else bool)
    assert_predictions_match(reference, ours, return_logits)


@pytest.mark.parametrize(
    "fractions",
    [(-0.3, -0.2, 0.5, 0.6), (0.6, 0.5, 1.4, 1.3), (-1.0, -1.0, 2.0, 2.0)],
)
def test_box_partly_outside_matches_official(pair, fractions):
    """A box that overlaps the image but extends beyond it is taken as the official SAM
    takes it (only boxes with no overlap are refused)."""
    h, w = pair[1].original_size
    box = np.array(fractions) * [w, h, w, h]
    reference, ours = predict_both(pair, box=box, multimask_output=True, return_logits=True)
    assert_predictions_match(reference, ours, return_logits=True)


def test_mask_feedback_matches_official(pair):
    prompts = image_prompts(pair[1])
    points = {"point_coords": prompts["point_coords"], "point_labels": prompts["point_labels"]}
    _, first = predict_both(pair, **points)
    best = int(np.argmax(first[1]))
    reference, ours = predict_both(
        pair, **points, mask_input=first[2][[best]], multimask_output=False, return_logits=True
    )
    assert_predictions_match(reference, ours, return_logits=True)


@pytest.mark.parametrize("chunk_elements", [None, 1])
def test_predict_torch_batch_of_boxes(pair, monkeypatch, chunk_elements):
    if chunk_elements is not None:  # upscale one prompt at a time
        monkeypatch.setattr(predictor_module, "POSTPROCESS_CHUNK_ELEMENTS", chunk_elements)
    reference, ours = pair
    h, w = ours.original_size
    generator = torch.Generator().manual_seed(1)
    corners = torch.rand(8, 2, 2, generator=generator) * torch.tensor([w, h])
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
    boxes = ours.transform.apply_boxes_torch(boxes, ours.original_size)
    for multimask_output in (True, False):
        expected = reference.predict_torch(None, None, boxes, multimask_output=multimask_output)
        actual = ours.predict_torch(None, None, boxes, multimask_output=multimask_output)
        assert actual[0].shape == (8, 3 if multimask_output else 1, h, w)
        assert_predictions_match(expected, actual, return_logits=False)


def test_predict_torch_batch_of_points_with_masks(pair):
    reference, ours = pair
    h, w = ours.original_size
    generator = torch.Generator().manual_seed(2)
    points = torch.rand(5, 3, 2, generator=generator) * torch.tensor([w, h])
    points = ours.transform.apply_coords_torch(points, ours.original_size)
    labels = torch.randint(0, 2, (5, 3), generator=generator)
    masks = torch.randn(5, 1, 64, 64, generator=generator)
    expected = reference.predict_torch(points, labels, mask_input=masks, return_logits=True)
    actual = ours.predict_torch(points, labels, mask_input=masks, return_logits=True)
    assert_predictions_match(expected, actual, return_logits=True)


def test_batch_path_equals_single_image_path(models, images, predictor_pairs):
    ours = SamPredictor(models[1])
    names = sorted(images)
    ours.set_image_batch([images[name] for name in names])
    assert ours.features.shape[0] == 2
    assert ours.original_sizes == [images[name].shape[:2] for name in names]
    generator = np.random.default_rng(3)
    points, labels, boxes = [], [], []
    for name, count in zip(names, (4, 2)):
        h, w = images[name].shape[:2]
        points.append(generator.uniform(0, 1, (count, 2, 2)) * [w, h])
        labels.append(generator.integers(0, 2, (count, 2)))
        x0y0 = generator.uniform(0, 0.5, (count, 2)) * [w, h]
        boxes.append(np.concatenate([x0y0, x0y0 + [0.3 * w, 0.4 * h]], axis=1))
    results = ours.predict_batch(points, labels, boxes, multimask_output=True)
    assert len(results) == 2
    for name, result, pts, lbl, bxs in zip(names, results, points, labels, boxes):
        single = predictor_pairs[name][1]
        torch.testing.assert_close(
            ours.features[names.index(name)], single.features[0], atol=ATOL, rtol=ATOL
        )
        transform, size = single.transform, single.original_size
        expected = single.predict_torch(
            torch.as_tensor(transform.apply_coords(pts, size), dtype=torch.float),
            torch.as_tensor(lbl, dtype=torch.int),
            torch.as_tensor(transform.apply_boxes(bxs, size), dtype=torch.float),
        )
        assert result[0].shape == (len(pts), 3, *size)
        assert_predictions_match(expected, result, return_logits=False)


def test_predict_batch_mask_input_and_empty_image(models, images, predictor_pairs):
    ours = SamPredictor(models[1])
    ours.set_image_batch([images["chelsea"], images["coffee"]])
    masks = [np.random.default_rng(4).normal(size=(2, 1, 64, 64)), np.zeros((0, 1, 64, 64))]
    results = ours.predict_batch(mask_input=masks, multimask_output=False, return_logits=True)
    assert results[1][0].shape == (0, 1, 400, 600)
    single = predictor_pairs["chelsea"][1]
    expected = single.predict_torch(
        None, None, mask_input=torch.as_tensor(masks[0], dtype=torch.float),
        multimask_output=False, return_logits=True,
    )
    assert_predictions_match(expected, results[0], return_logits=True)


def test_reset_image(models, images):
    ours = SamPredictor(models[1])
    ours.set_image(images["chelsea"])
    ours.reset_image()
    assert not ours.is_image_set and ours.features is None
    with pytest.raises(RuntimeError, match="call set_image first"):
        ours.get_image_embedding()
