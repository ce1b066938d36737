"""Every invalid input to SamPredictor raises with a message naming the offending value."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from sam_lightning.inference import SamPredictor

H, W = 300, 451  # chelsea
POINT = {"point_coords": np.array([[10.0, 20.0]]), "point_labels": np.array([1])}


@pytest.fixture(scope="module")
def chelsea_predictor(models, images) -> SamPredictor:
    predictor = SamPredictor(models[1])
    predictor.set_image(images["chelsea"])
    return predictor


@pytest.mark.parametrize(
    ("image", "image_format", "fragment"),
    [
        (np.zeros((H, W, 3)), "RGB", "dtype float64 and shape (300, 451, 3)"),
        (np.zeros((H, W), np.uint8), "RGB", "shape (300, 451)"),
        (np.zeros((H, W, 4), np.uint8), "RGB", "shape (300, 451, 4)"),
        (np.zeros((0, W, 3), np.uint8), "RGB", "shape (0, 451, 3)"),
        ([[0, 0, 0]], "RGB", "got list"),
        (np.zeros((H, W, 3), np.uint8), "RGBA",
         "image_format must be one of ('RGB', 'BGR'), got 'RGBA'"),
    ],
)
def test_set_image_rejects(models, image, image_format, fragment):
    predictor = SamPredictor(models[1])
    with pytest.raises(ValueError, match=re.escape(fragment)):
        predictor.set_image(image, image_format)
    assert not predictor.is_image_set


def test_predict_before_set_image(models):
    predictor = SamPredictor(models[1])
    with pytest.raises(RuntimeError, match="call set_image first"):
        predictor.predict(**POINT)
    with pytest.raises(RuntimeError, match="call set_image first"):
        predictor.predict_torch(None, None, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"point_coords": np.array([[1.0, 2.0]])}, "point_labels must be supplied"),
        ({"point_labels": np.array([1])}, "point_labels were given without point_coords"),
        ({"point_coords": np.array([1.0, 2.0]), "point_labels": np.array([1])},
         "point_coords must have shape Nx2, got (2,)"),
        ({"point_coords": np.zeros((2, 3)), "point_labels": np.array([1, 1])},
         "point_coords must have shape Nx2, got (2, 3)"),
        ({"point_coords": np.zeros((2, 2)), "point_labels": np.array([1])},
         "point_labels must have shape (2,) to match point_coords (2, 2), got (1,)"),
        ({"point_coords": np.zeros((2, 2)), "point_labels": np.array([1, 5])},
         "got 5 at point_labels[1]"),
        ({"point_coords": np.array([[10.0, 20.0], [452.0, 10.0]]),
          "point_labels": np.array([1, 1])},
         "point_coords[1] = (452.0, 10.0) is outside the image of size W x H = 451 x 300"),
        ({"point_coords": np.array([[10.0, -0.5]]), "point_labels": np.array([0])},
         "point_coords[0] = (10.0, -0.5) is outside the image"),
        ({"point_coords": np.array([[np.nan, 1.0]]), "point_labels": np.array([1])},
         "point_coords must be finite, got nan"),
        ({"point_coords": np.array([[1.0, np.inf]]), "point_labels": np.array([1])},
         "point_coords must be finite, got inf"),
        ({"point_coords": [["a", "b"]], "point_labels": [1]},
         "point_coords must be a numeric array"),
        ({"box": np.zeros(5)}, "box must have shape 4 (or 1x4) in XYXY format, got (5,)"),
        ({"box": np.zeros((2, 4))}, "got (2, 4)"),
        ({"box": np.array([50.0, 10.0, 40.0, 20.0])},
         "box[0] = [50.0, 10.0, 40.0, 20.0] must satisfy x0 <= x1"),
        ({"box": np.array([10.0, 30.0, 40.0, 20.0])}, "y0 <= y1"),
        ({"box": np.array([0.0, 0.0, np.nan, 5.0])}, "box must be finite"),
        # boxes follow the points' rule: no overlap with [0, W] x [0, H] is refused
        ({"box": np.array([460.0, 10.0, 500.0, 20.0])},
         "box[0] = [460.0, 10.0, 500.0, 20.0] is outside the image of size W x H = 451 x 300: "
         "a box must overlap [0, 451] x [0, 300]"),
        ({"box": np.array([-50.0, 10.0, -0.5, 20.0])},
         "box[0] = [-50.0, 10.0, -0.5, 20.0] is outside"),
        ({"box": np.array([10.0, -40.0, 20.0, -1.0])},
         "is outside the image of size W x H = 451 x 300"),
        ({"box": np.array([[10, 301, 20, 400]])}, "box[0] = [10.0, 301.0, 20.0, 400.0] is outside"),
        ({"box": np.array([452.0, 301.0, 460.0, 310.0])}, "is outside the image"),
        ({"box": np.array([-1e39, 0.0, 1e39, 10.0])},
         "box[0] = [-1e+39, 0.0, 1e+39, 10.0] is too large: its corners overflow float32"),
        ({"mask_input": np.zeros((3, 64, 64))},
         "mask_input must have shape (1, 64, 64), got (3, 64, 64)"),
        ({"mask_input": np.zeros((64, 64))}, "low_res_logits[[i]]"),
        ({"mask_input": np.full((1, 64, 64), np.nan)}, "mask_input must be finite"),
    ],
)
def test_predict_rejects(chelsea_predictor, kwargs, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        chelsea_predictor.predict(**kwargs)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((torch.zeros(3, 2), torch.ones(3)), "point_coords must have shape BxNx2, got (3, 2)"),
        ((torch.zeros(2, 3, 2), torch.ones(2, 2)), "point_labels must have shape (2, 3)"),
        ((torch.full((1, 1, 2), 300.0), torch.ones(1, 1)),
         "is outside the resized input frame of size W x H = 256 x 170"),
        ((None, None, torch.zeros(4)), "box must have shape Bx4"),
        ((None, None, torch.tensor([[0.0, 0.0, 10.0, 10.0], [257.0, 0.0, 300.0, 10.0]])),
         "box[1] = [257.0, 0.0, 300.0, 10.0] is outside the resized input frame of size "
         "W x H = 256 x 170"),
        ((None, None, torch.tensor([[0.0, -20.0, 10.0, -0.01]])), "is outside the resized input"),
        ((torch.zeros(2, 1, 2), torch.ones(2, 1), torch.tensor([[0.0, 0.0, 1.0, 1.0]])),
         "prompt batch sizes differ: {'point_coords': 2, 'boxes': 1}"),
        ((None, None, None, torch.zeros(2, 64, 64)), "mask_input must have shape (2, 1, 64, 64)"),
    ],
)
def test_predict_torch_rejects(chelsea_predictor, args, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        chelsea_predictor.predict_torch(*args)


def test_set_torch_image_rejects_wrong_size(models):
    fragment = "1x3xHxW image with long side 256, got (1, 3, 100, 200)"
    with pytest.raises(ValueError, match=re.escape(fragment)):
        SamPredictor(models[1]).set_torch_image(torch.zeros(1, 3, 100, 200), (100, 200))


@pytest.fixture(scope="module")
def batch_predictor(models, images) -> SamPredictor:
    predictor = SamPredictor(models[1])
    predictor.set_image_batch([images["chelsea"], images["coffee"]])
    return predictor


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"boxes": [np.zeros((1, 4))]}, "boxes must have one entry per image (2), got 1"),
        ({"boxes": [np.zeros((1, 4)), None]}, "boxes has a None entry"),
        ({}, "predict_batch needs point_coords, boxes or mask_input"),
        ({"point_coords": [np.zeros((1, 2, 2)), np.zeros((1, 3, 2))],
          "point_labels": [np.ones((1, 2)), np.ones((1, 3))]},
         "the same number of points per prompt"),
        ({"point_coords": [np.zeros((1, 1, 2)), np.full((1, 1, 2), 500.0)],
          "point_labels": [np.ones((1, 1)), np.ones((1, 1))]},
         "(500.0, 500.0) is outside the image of size W x H = 600 x 400"),
        ({"boxes": [np.zeros((1, 4)), np.zeros((4,))]},
         "box must have shape Bx4 in XYXY format, got (4,)"),
        ({"boxes": [np.array([[0.0, 0.0, 10.0, 10.0]]),
                    np.array([[0.0, 0.0, 10.0, 10.0], [0.0, 401.0, 10.0, 410.0]])]},
         "box[1] = [0.0, 401.0, 10.0, 410.0] is outside the image of size W x H = 600 x 400"),
    ],
)
def test_predict_batch_rejects(batch_predictor, kwargs, fragment):
    with pytest.raises(ValueError, match=re.escape(fragment)):
        batch_predictor.predict_batch(**kwargs)


def test_single_image_methods_reject_a_batch(batch_predictor):
    fragment = "2 images are set with set_image_batch; use predict_batch"
    with pytest.raises(RuntimeError, match=fragment):
        batch_predictor.predict(**POINT)


def test_set_image_batch_rejects(models, images):
    predictor = SamPredictor(models[1])
    with pytest.raises(ValueError, match="at least one image"):
        predictor.set_image_batch([])
    with pytest.raises(ValueError, match=re.escape("images[1] must be a uint8 HxWx3 array")):
        predictor.set_image_batch([images["chelsea"], images["chelsea"][..., 0]])


@pytest.mark.parametrize(
    "box",
    [
        [-40.0, -30.0, 100.0, 80.0],  # partly outside, top left
        [400.0, 250.0, 700.0, 500.0],  # partly outside, bottom right
        [-1000.0, -1000.0, 2000.0, 2000.0],  # around the whole image
        [451.0, 0.0, 470.0, 20.0],  # touching the right edge, as a point at x = W may
        [0.0, 300.0, 20.0, 320.0],  # touching the bottom edge
        [0.0, 0.0, 0.0, 0.0],  # a point-sized box at a corner
    ],
)
def test_predict_accepts_boxes_that_overlap_the_image(chelsea_predictor, box):
    masks, scores, _ = chelsea_predictor.predict(box=np.array(box), multimask_output=False)
    assert masks.shape == (1, H, W) and np.isfinite(scores).all()


def test_boxes_follow_the_rule_of_points(chelsea_predictor):
    """A point and a box just outside the image are both refused; on the edge, both taken."""
    for x in (W + 0.5, -0.5):
        with pytest.raises(ValueError, match="outside the image of size W x H = 451 x 300"):
            chelsea_predictor.predict(np.array([[x, 10.0]]), np.array([1]))
        with pytest.raises(ValueError, match="outside the image of size W x H = 451 x 300"):
            chelsea_predictor.predict(box=np.array([x, 10.0, x, 20.0]))
    for x in (float(W), 0.0):
        chelsea_predictor.predict(np.array([[x, 10.0]]), np.array([1]))
        chelsea_predictor.predict(box=np.array([x, 10.0, x, 20.0]))
