"""Reports the environment: versions, whether ``sam_lightning._C`` loaded, and its kernels.

Usage: ``python tools/collect_env.py [--json]``. Paste its output into bug reports.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
import warnings
from typing import Any

PACKAGES = (
    "torch",
    "numpy",
    "pillow",
    "safetensors",
    "lightning",
    "hydra-core",
    "wandb",
    "pycocotools",
    "segment-anything",
    "scikit-image",
    "ninja",
)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict[str, Any]:
    """Returns the environment report as a JSON-serialisable dict."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report states the load error itself
        from sam_lightning.ops import _extension

    operators = _extension.registered_operators()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "sam_lightning": _version("sam_lightning"),
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch_threads": torch.get_num_threads(),
        "extension_loaded": _extension.HAS_EXTENSION,
        "extension_error": _extension.LOAD_ERROR,
        "extension_built_with_cuda": _extension.built_with_cuda(),
        "kernels": {name: _extension.kernel_backends(name) for name in operators},
    }


def _format(report: dict[str, Any]) -> str:
    lines = [
        f"Python:               {report['python']}",
        f"Platform:             {report['platform']}",
        f"sam_lightning:        {report['sam_lightning']}",
    ]
    for name, version in report["packages"].items():
        lines.append(f"{name + ':':<22}{version or 'not installed'}")
    lines += [
        f"torch CUDA build:     {report['torch_cuda_build']}",
        f"CUDA available:       {report['cuda_available']} {report['cuda_devices'] or ''}".rstrip(),
        f"torch threads:        {report['torch_threads']}",
        f"sam_lightning._C:     {'loaded' if report['extension_loaded'] else 'NOT loaded'}",
    ]
    if report["extension_error"]:
        lines.append(f"  why not:            {report['extension_error']}")
    lines.append(f"  CUDA kernels built: {report['extension_built_with_cuda']}")
    for name, keys in report["kernels"].items():
        lines.append(f"  {name:<20}{', '.join(keys) or 'no kernels'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = collect()
    print(json.dumps(report, indent=2) if args.json else _format(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
