"""The data engine's annotation tool (paper Sec. 4): assisted-manual (stage 1) and
semi-automatic (stage 2) annotation in the browser.

``python -m sam_lightning.annotate images=<dir> output=<dir> ...`` serves a local page on
which annotators click points and drag boxes, SAM decodes the prompts against a cached image
embedding, and accepted masks land in one SA-1B JSON per image, readable by
:class:`~sam_lightning.data.SA1BDataset` for retraining. Modules:

- :mod:`~sam_lightning.annotate.cli`: the command (Hydra, ``conf/annotate.yaml``),
  :func:`build_tool`, :func:`run_annotate`;
- :mod:`~sam_lightning.annotate.server`: the aiohttp server and its JSON API;
- :mod:`~sam_lightning.annotate.tool`: :class:`AnnotationTool`, the API's operations;
- :mod:`~sam_lightning.annotate.engine`: embedding cache and prompt decoding;
- :mod:`~sam_lightning.annotate.store`: the image folder and the annotation files;
- :mod:`~sam_lightning.annotate.semi`: confident masks for ``mode=semi``;
- :mod:`~sam_lightning.annotate.stats`: statistics and COCO export
  (``python -m sam_lightning.annotate.stats <output>``).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AnnotationTool": "sam_lightning.annotate.tool",
    "ServerThread": "sam_lightning.annotate.server",
    "create_app": "sam_lightning.annotate.server",
    "serve": "sam_lightning.annotate.server",
    "build_tool": "sam_lightning.annotate.cli",
    "run_annotate": "sam_lightning.annotate.cli",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
