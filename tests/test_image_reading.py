"""The shared image reader (:mod:`sam_lightning.file_io`): 16-bit images read as OpenCV
reads them, 32-bit and float images refused, and the decompression-bomb pixel limit, per call."""

from __future__ import annotations

import threading
import warnings

import cv2
import numpy as np
import pytest
from image_fixtures import opencv_rgb, png_header, sixteen_bit
from PIL import Image

from sam_lightning import file_io
from sam_lightning.data.image_folder import ImageJob, ImageReader
from sam_lightning.file_io import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageTooLargeError,
    UnreadableImageError,
    decode_image,
    read_image,
)
from sam_lightning.settings import amg as amg_settings

# --------------------------------------------------------------------------- bit depths


def test_pillow_reads_16_bit_grey_as_i16(tmp_path):
    """The modes the reader has to handle, as this Pillow gives them."""
    values = sixteen_bit((6, 5))
    assert Image.fromarray(values).mode == "I;16"
    Image.fromarray(values).save(tmp_path / "grey.png")
    with Image.open(tmp_path / "grey.png") as image:
        assert image.mode == "I;16"
        assert np.array(image.convert("RGB")).min() == 0  # what convert("RGB") did: clipping
        assert (np.array(image.convert("RGB"))[..., 0] == 255).mean() > 0.9


@pytest.mark.parametrize("writer", ["pillow", "opencv"])
def test_16_bit_grey_png_is_shifted_down_8_bits_as_opencv_reads_it(tmp_path, writer):
    values = sixteen_bit((7, 9))
    path = tmp_path / "grey16.png"
    if writer == "pillow":
        Image.fromarray(values).save(path)
    else:
        assert cv2.imwrite(str(path), values)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (7, 9, 3)
    np.testing.assert_array_equal(image, opencv_rgb(path))
    np.testing.assert_array_equal(image, np.repeat((values >> 8)[..., None], 3, axis=2))
    assert image.reshape(-1, 3)[:6, 0].tolist() == [0, 0, 1, 127, 128, 255]


def test_16_bit_big_endian_tiff(tmp_path):
    values = sixteen_bit((5, 8), seed=1)
    path = tmp_path / "grey16b.tif"
    Image.frombytes("I;16B", (8, 5), values.astype(">u2").tobytes()).save(path)
    with Image.open(path) as image:
        assert image.mode in ("I;16B", "I;16")
    image = read_image(path)
    np.testing.assert_array_equal(image[..., 0], values >> 8)
    np.testing.assert_array_equal(image, opencv_rgb(path))


@pytest.mark.parametrize("channels", [3, 4])
def test_16_bit_rgb_and_rgba_png_match_opencv(tmp_path, channels):
    bgr = sixteen_bit((6, 7, channels), seed=channels)
    path = tmp_path / f"colour16_{channels}.png"
    assert cv2.imwrite(str(path), bgr)
    image = read_image(path)
    assert image.shape == (6, 7, 3)
    np.testing.assert_array_equal(image, opencv_rgb(path))
    np.testing.assert_array_equal(image, bgr[..., 2::-1] >> 8)  # alpha dropped


def test_16_bit_grey_with_exif_orientation(tmp_path):
    values = sixteen_bit((4, 6), seed=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated16.png"
    Image.fromarray(values).save(path, exif=exif)
    image = read_image(path)
    assert image.shape == (6, 4, 3)
    np.testing.assert_array_equal(image[..., 0], np.rot90(values >> 8, k=-1))


def test_16_bit_png_given_as_mode_i_by_older_pillow():
    """Pillow before 11 gives 16-bit grey PNGs mode ``I``: the same shift."""
    values = sixteen_bit((3, 4)).astype(np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    image.format = "PNG"
    np.testing.assert_array_equal(file_io._to_rgb(image)[..., 1], values >> 8)


@pytest.mark.parametrize(
    ("array", "mode", "kind"),
    [
        (np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5), "F", "floating-point"),
        (np.arange(20, dtype=np.int32).reshape(4, 5) * 100_000, "I", "integer"),
    ],
)
def test_32_bit_images_are_refused_naming_file_and_mode(tmp_path, array, mode, kind):
    path = tmp_path / f"deep_{mode}.tif"
    Image.fromarray(array).save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    with pytest.raises(UnreadableImageError) as error:
        read_image(path)
    assert error.value.source == str(path)
    message = str(error.value)
    assert message.startswith(f"cannot read image {path}: 32-bit {kind} samples")
    assert f"(Pillow mode {mode})" in message and "convert the image to 8 or 16 bits" in message


def test_8_bit_images_are_unchanged(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    grey = read_image(tmp_path / "grey.png")
    np.testing.assert_array_equal(grey, np.repeat(rgb[..., :1], 3, axis=2))
    for name in ("rgb.png", "grey.png", "rgba.png"):
        np.testing.assert_array_equal(read_image(tmp_path / name), opencv_rgb(tmp_path / name))


# ------------------------------------------------------------------------ the pixel limit


def test_the_default_limit_is_pillows():
    assert DEFAULT_MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS == 89_478_485
    assert amg_settings.AmgSettings.__dataclass_fields__["max_image_pixels"].default == (
        DEFAULT_MAX_IMAGE_PIXELS
    )


def test_an_image_over_the_limit_is_refused_naming_file_pixels_and_limit(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path)
    assert read_image(path, max_image_pixels=200).shape == (10, 20, 3)  # at the limit
    with pytest.raises(ImageTooLargeError) as error:
        read_image(path, max_image_pixels=199)
    assert isinstance(error.value, UnreadableImageError)
    assert (error.value.pixels, error.value.limit, error.value.source) == (200, 199, str(path))
    message = str(error.value)
    assert message.startswith(f"cannot read image {path}: 200 pixels, more than the limit of 199")
    assert "max_image_pixels" in message and "--max-image-pixels" in message


@pytest.mark.parametrize(
    ("width", "height"),
    [(10_000, 10_000), (20_000, 20_000)],  # over Pillow's warning, over its error (2x)
)
def test_a_decompression_bomb_is_an_unreadable_image_without_warnings(width, height):
    data = png_header(width, height)
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageTooLargeError) as error:
            decode_image(data, "bomb.png")
    assert (error.value.pixels, error.value.limit) == (width * height, DEFAULT_MAX_IMAGE_PIXELS)
    assert f"bomb.png: {width * height} pixels, more than the limit of 89478485" in str(error.value)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == before


@pytest.mark.parametrize("limit", [None, 500_000_000])
def test_a_higher_limit_or_none_lets_pillow_open_the_image(limit):
    """Past the size check, the file is decoded (and, here, found truncated), not refused as
    too large by Pillow's process-wide limit; that limit is as it was afterwards."""
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnreadableImageError) as error:
            decode_image(png_header(20_000, 20_000), "big.png", max_image_pixels=limit)
    assert not isinstance(error.value, ImageTooLargeError)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == before


def test_the_limit_is_per_call_not_pillows_global(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    rgb = np.random.default_rng(4).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # someone's strict global limit
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        np.testing.assert_array_equal(read_image(path, max_image_pixels=None), rgb)
        np.testing.assert_array_equal(read_image(path, max_image_pixels=1000), rgb)
    assert Image.MAX_IMAGE_PIXELS == 50
    with pytest.raises(ImageTooLargeError, match="more than the limit of 100"):
        read_image(path, max_image_pixels=100)


def test_concurrent_readers_leave_pillows_limit_as_it_was(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path)
    errors: list[BaseException] = []

    def read(limit):
        try:
            for _ in range(30):
                try:
                    assert read_image(path, max_image_pixels=limit).shape == (10, 20, 3)
                except ImageTooLargeError:
                    assert limit == 100
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=read, args=(lim,)) for lim in (None, 100, 10**9, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_an_invalid_limit_is_a_value_error(bad):
    with pytest.raises(ValueError, match="max_image_pixels must be a number of pixels >= 1"):
        decode_image(b"", "x.png", max_image_pixels=bad)


def test_image_reader_reports_an_image_over_its_limit(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(path)
    job = ImageJob(path, "a", "a.png")
    index, image, reason = ImageReader([job], max_image_pixels=199)[0]
    assert (index, image) == (0, None) and "200 pixels, more than the limit of 199" in reason
    assert ImageReader([job])[0][1].shape == (10, 20, 3)
