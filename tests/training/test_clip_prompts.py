"""Mask crops for CLIP image prompts (App. D.5): geometry on hand-made masks, zeroing,
random factors, and the embeddings of a tiny CLIP."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from sam_lightning.training.clip_prompts import mask_crops

H, W = 48, 64
# Crop values are exact up to float32 rounding of grid_sample's normalised coordinates.
PIXEL = {"atol": 1e-3, "rtol": 0}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(seed: int = 0) -> torch.Tensor:
    """A ``1×3×H×W`` image with values in 1..255 (no zeros, so zeroed pixels show)."""
    return torch.randint(1, 256, (1, 3, H, W), generator=_gen(seed)).float()


def _rectangle(top: int, left: int, height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    mask[0, top : top + height, left : left + width] = True
    return mask


def _crops(images, masks, size, factor, zero, index=None):
    index = torch.zeros(len(masks), dtype=torch.long) if index is None else index
    return mask_crops(
        images,
        index,
        masks,
        size,
        expand_range=(factor, factor),
        zero_outside_probability=zero,
    )


def test_factor_one_is_the_square_around_the_box():
    image, mask = _image(), _rectangle(20, 16, 8, 16)  # rows 20..27, columns 16..31
    crops, crop_masks = _crops(image, mask, 16, 1.0, 0.0)
    # A 16-px square centred on the box: rows 16..31, columns 16..31, sampled 1:1.
    torch.testing.assert_close(crops[0], image[0, :, 16:32, 16:32], **PIXEL)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[4:12] = True
    assert torch.equal(crop_masks[0], expected)

    zeroed, zeroed_masks = _crops(image, mask, 16, 1.0, 1.0)
    assert torch.equal(zeroed_masks, crop_masks)
    torch.testing.assert_close(zeroed[0], crops[0] * expected, **PIXEL)


def test_factor_two_halves_the_mask():
    image, mask = _image(1), _rectangle(20, 16, 8, 16)
    crops, crop_masks = _crops(image, mask, 16, 2.0, 0.0)
    # A 32-px square (rows 8..39, columns 8..39) at half scale: each crop pixel is the
    # bilinear sample at the centre of a 2×2 block, i.e. its mean.
    torch.testing.assert_close(crops[0], F.avg_pool2d(image[0, :, 8:40, 8:40], 2), **PIXEL)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[6:10, 4:12] = True
    assert torch.equal(crop_masks[0], expected)


def test_upscaled_crop():
    image, mask = _image(2), _rectangle(20, 16, 8, 16)
    crops, crop_masks = _crops(image, mask, 32, 1.0, 0.0)
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[8:24] = True
    assert torch.equal(crop_masks[0], expected)
    reference = F.interpolate(image[:, :, 16:32, 16:32], size=32, mode="bilinear")
    # Inside the square the crop is the plain 2× bilinear resize (which clamps at the
    # border where the crop blends with the pixels around it).
    torch.testing.assert_close(crops[0, :, 1:-1, 1:-1], reference[0, :, 1:-1, 1:-1], **PIXEL)


def test_outside_the_image_is_zero():
    image, mask = _image(3), _rectangle(0, 0, 8, 16)  # the top-left corner
    crops, crop_masks = _crops(image, mask, 16, 2.0, 0.0)
    # The 32-px square spans rows -12..19 and columns -8..23 of the image.
    assert (crops[0, :, :6] == 0).all() and (crops[0, :, :, :4] == 0).all()
    assert (crops[0, :, 6:, 4:] > 0).all()
    torch.testing.assert_close(crops[0, :, 6:, 4:], F.avg_pool2d(image[0, :, :20, :24], 2), **PIXEL)
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[6:10, 4:12] = True
    assert torch.equal(crop_masks[0], expected)


def test_zeroing_keeps_only_mask_pixels():
    image = _image(4)
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    mask[0, 10:30, 20:26] = True
    mask[0, 24:30, 20:44] = True  # an L: the box holds pixels outside the mask
    kept, kept_masks = _crops(image, mask, 24, 1.0, 0.0)
    zeroed, zeroed_masks = _crops(image, mask, 24, 1.0, 1.0)
    assert torch.equal(kept_masks, zeroed_masks)
    inside = zeroed_masks[:, None].expand_as(zeroed)
    assert (zeroed[~inside] == 0).all()
    assert torch.equal(zeroed[inside], kept[inside]) and (kept[~inside] > 0).any()


def test_several_images_and_masks():
    images = torch.cat([_image(5), _image(6)])
    masks = torch.cat([_rectangle(20, 16, 8, 16), _rectangle(0, 0, 8, 16), _rectangle(4, 40, 8, 8)])
    index = torch.tensor([1, 0, 1])
    crops, crop_masks = _crops(images, masks, 16, 2.0, 0.0, index)
    for p in range(3):
        alone, alone_mask = _crops(images[index[p] : index[p] + 1], masks[p : p + 1], 16, 2.0, 0.0)
        torch.testing.assert_close(crops[p], alone[0])
        assert torch.equal(crop_masks[p], alone_mask[0])
    empty, empty_masks = _crops(images, masks[:0], 16, 2.0, 0.0, index[:0])
    assert empty.shape == (0, 3, 16, 16) and empty_masks.shape == (0, 16, 16)


def test_thin_mask_keeps_the_pixels_it_crosses():
    """A 1-px line downsampled 5×: bilinear samples miss it, the pixels it crosses remain."""
    mask = _rectangle(20, 10, 1, 40)
    _, crop_masks = _crops(_image(), mask, 8, 1.0, 0.0)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[4] = True
    assert torch.equal(crop_masks[0], expected)


def test_random_factor_and_determinism():
    count, size = 64, 32
    masks = torch.zeros(count, H, W, dtype=torch.bool)
    masks[:, 16:32, 24:40] = True  # a 16-px square: its crop mask side is size / factor
    images, index = _image(7), torch.zeros(count, dtype=torch.long)
    crops, crop_masks = mask_crops(images, index, masks, size, generator=_gen(0))
    again, again_masks = mask_crops(images, index, masks, size, generator=_gen(0))
    other, _ = mask_crops(images, index, masks, size, generator=_gen(1))
    assert torch.equal(crops, again) and torch.equal(crop_masks, again_masks)
    assert not torch.equal(crops, other)
    side = crop_masks.any(dim=1).sum(dim=1).float()
    assert ((side >= size / 2 - 1) & (side <= size + 1)).all()
    assert side.max() - side.min() > size / 4  # the factors spread over [1, 2]
    zeroed = ((crops == 0).flatten(1).sum(dim=1) > 0).float().mean()
    assert 0.25 < zeroed < 0.75  # zero_outside_probability 0.5


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"masks": torch.zeros(1, H, W, dtype=torch.bool)}, r"masks \[0\] are empty"),
        ({"masks": torch.ones(1, H, W)}, "boolean"),
        ({"image_index": torch.tensor([1])}, "image_index must lie"),
        ({"image_index": torch.tensor([0, 0])}, "one entry per mask"),
        ({"expand_range": (0.5, 2.0)}, "expand_range"),
        ({"zero_outside_probability": 1.5}, "zero_outside_probability"),
    ],
)
def test_errors(change, match):
    arguments = {
        "images": _image(),
        "image_index": torch.tensor([0]),
        "masks": _rectangle(20, 16, 8, 16),
        "size": 16,
    }
    with pytest.raises(ValueError, match=match):
        mask_crops(**{**arguments, **change})


def test_clip_image_prompts():
    pytest.importorskip("transformers")
    from sam_lightning.modeling.text_encoder import ClipEncoder, tiny_clip_config
    from sam_lightning.training.clip_prompts import clip_image_prompts

    clip = ClipEncoder.from_config(tiny_clip_config(), seed=0).requires_grad_(True)
    images = torch.cat([_image(8), _image(9)])
    masks = torch.cat([_rectangle(20, 16, 8, 16), _rectangle(0, 0, 8, 16), _rectangle(4, 40, 9, 3)])
    index = torch.tensor([0, 1, 1])
    embeddings = clip_image_prompts(clip, images, index, masks, generator=_gen(0))
    assert embeddings.shape == (3, clip.embed_dim) and not embeddings.requires_grad
    crops, crop_masks = mask_crops(images, index, masks, clip.image_size, generator=_gen(0))
    with torch.no_grad():
        torch.testing.assert_close(embeddings, clip.encode_image(crops, crop_masks))


def test_importing_needs_no_transformers():
    code = (
        "import sys; import sam_lightning, sam_lightning.modeling, "
        "sam_lightning.training.clip_prompts; assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
