"""Draws a deterministic synthetic scene (coloured shapes on a gradient) for the demo.

    python tools/make_demo_image.py demo/scene.png [--height 480 --width 640]

The scene needs no download and is identical on every run. Shapes, in pixels of the
default 480x640 image: red disc centred (160, 160) r=90, blue rectangle (330, 80)-(580, 230),
yellow triangle (120, 440)-(300, 260)-(360, 440), green ellipse (400, 290)-(600, 430).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def draw_scene(height: int = 480, width: int = 640) -> Image.Image:
    """The demo scene at ``height`` x ``width`` (shapes scale with the size)."""
    ys = np.linspace(0.0, 1.0, height)[:, None]
    xs = np.linspace(0.0, 1.0, width)[None, :]
    background = np.stack(
        [170 + 40 * xs + 0 * ys, 180 + 30 * ys + 0 * xs, 200 - 30 * xs * ys], axis=-1
    )
    image = Image.fromarray(background.round().astype(np.uint8))
    draw = ImageDraw.Draw(image)
    sx, sy = width / 640, height / 480

    def scaled(*xy: float) -> list[float]:
        return [v * (sx if i % 2 == 0 else sy) for i, v in enumerate(xy)]

    draw.ellipse(scaled(70, 70, 250, 250), fill=(200, 40, 40))
    draw.rectangle(scaled(330, 80, 580, 230), fill=(40, 70, 190))
    draw.polygon(scaled(120, 440, 300, 260, 360, 440), fill=(235, 200, 40))
    draw.ellipse(scaled(400, 290, 600, 430), fill=(40, 160, 70))
    return image


def main(argv: Sequence[str] | None = None) -> int:
    """Writes the scene to the given PNG path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="PNG file to write")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args(argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    draw_scene(args.height, args.width).save(args.output, format="PNG")
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
