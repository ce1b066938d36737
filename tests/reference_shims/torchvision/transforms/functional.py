"""``resize`` and ``to_pil_image`` with torchvision's behaviour on PIL images."""

import numpy as np
from PIL import Image


def to_pil_image(pic: np.ndarray) -> Image.Image:
    if not isinstance(pic, np.ndarray) or pic.dtype != np.uint8 or pic.ndim not in (2, 3):
        raise TypeError("stand-in to_pil_image only supports uint8 HW or HWC numpy arrays")
    return Image.fromarray(pic)


def resize(img: Image.Image, size: list[int]) -> Image.Image:
    height, width = size
    return img.resize((width, height), Image.BILINEAR)
