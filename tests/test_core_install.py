"""The light core install: with only torch, numpy, pillow and safetensors, the model, predictor,
automatic generator, operators, checkpoints and ``segment`` work; the commands that need an
extra exit with status 2 and print its ``pip install`` line. The extras' modules are made
unimportable in a subprocess (the import graph is what is checked: a module-level import of
any of them in the core fails the test)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sam_lightning.extras import EXTRAS, install_hint, missing_modules

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
#: Everything an extra brings (and what those pull in, e.g. fsspec/aiohttp via lightning).
NOT_IN_CORE = (
    "lightning", "lightning_fabric", "pytorch_lightning", "hydra", "omegaconf", "wandb",
    "aiohttp", "transformers", "tqdm", "torchmetrics", "scipy", "cv2", "pycocotools",
    "matplotlib", "skimage", "faster_coco_eval", "onnx", "onnxruntime", "submitit",
    "hydra_plugins", "fsspec", "yaml",
)  # fmt: skip
BLOCK = textwrap.dedent(
    f"""
    import importlib.abc, sys
    BLOCKED = set({list(NOT_IN_CORE)!r})

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (not installed)")

    sys.meta_path.insert(0, NotInstalled())
    """
)


def run_without_extras(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "core.py"
    script.write_text(BLOCK + textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


def test_the_core_dependencies_are_torch_numpy_pillow_safetensors():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0] for dep in project["dependencies"]}
    assert names == {"torch", "numpy", "pillow", "safetensors"}
    extras = project["optional-dependencies"]
    assert {"cli", "train", "eval", "annotate", "text", "onnx", "all"} <= set(extras)
    assert set(EXTRAS) <= set(extras)


def test_predictor_generator_ops_checkpoints_and_segment_without_extras(tmp_path):
    result = run_without_extras(
        """
        import numpy as np, torch
        from PIL import Image
        from safetensors.torch import save_file
        from sam_lightning import SamAutomaticMaskGenerator, SamPredictor, build_sam
        from sam_lightning.modeling.checkpoint import load_checkpoint
        from sam_lightning.ops import rle_encode

        model = build_sam("vit_tiny", image_size=256).eval()
        save_file(model.state_dict(), "tiny.safetensors")
        torch.save(model.state_dict(), "tiny.pth")
        image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
        predictor = SamPredictor(model)
        predictor.set_image(image)
        masks, scores, _ = predictor.predict(np.array([[60.0, 40.0]]), np.array([1]))
        assert masks.shape == (3, 90, 120), masks.shape
        records = SamAutomaticMaskGenerator(
            model, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0
        ).generate(image)
        assert len(records) > 0
        assert rle_encode(torch.as_tensor(masks))[0]["size"] == [90, 120]
        for path in ("tiny.safetensors", "tiny.pth"):
            loaded = build_sam("vit_tiny", image_size=256)
            load_checkpoint(loaded, path)
            assert all(torch.equal(a, b) for a, b in zip(
                loaded.state_dict().values(), model.state_dict().values()))
        Image.fromarray(image).save("image.png")
        from sam_lightning.segment import main
        status = main(["image.png", "--model-type", "vit_tiny", "--image-size", "256",
                       "--checkpoint", "tiny.pth", "--point", "60,40", "--output", "out"])
        assert status in (0, None), status
        for name in sys.modules:
            assert name.split(".")[0] not in BLOCKED, name
        print("core ok")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "core ok" in result.stdout
    assert (tmp_path / "out").is_dir() and list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("module", "args", "extra"),
    [
        ("sam_lightning.amg", ["input=x", "output=y"], "cli"),
        ("sam_lightning.train", ["+exp=demo"], "train"),
        ("sam_lightning.evaluate", ["+eval=points_coco"], "eval"),
        ("sam_lightning.annotate", ["images=x", "output=y"], "annotate"),
    ],
)
def test_a_command_without_its_extra_says_what_to_install(module, args, extra, tmp_path):
    result = run_without_extras(
        f"""
        import runpy
        sys.argv = ["{module}", *{args!r}]
        runpy.run_module("{module}", run_name="__main__")
        """,
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert install_hint(extra) in result.stderr and "Traceback" not in result.stderr


def test_the_extras_are_installed_here():
    """The test environment has every extra (what `make test` installs)."""
    assert {extra: missing_modules(extra) for extra in EXTRAS} == {extra: [] for extra in EXTRAS}
