"""The settings of ``python -m sam_lightning.annotate`` (``conf/annotate.yaml``): the
annotation tool's server, embedding cache and semi-automatic pre-filling."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from sam_lightning.settings.amg import GeneratorSettings
from sam_lightning.settings.model import ModelSettings
from sam_lightning.settings.schema import check_settings


@dataclass
class ServerSettings:
    """``server``: where it listens; any host but loopback also needs ``token``."""

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None


@dataclass
class CacheSettings:
    """``cache``: image embeddings kept in memory, and on disk under the output."""

    memory: int = 8
    disk: bool = True


#: Stricter than the generator's defaults (0.88, 0.95): a pre-filled mask should be right as
#: it is (our choice; the paper found confident masks with a detector of stage-1 masks).
SEMI_GENERATOR = GeneratorSettings(
    pred_iou_thresh=0.92,
    stability_score_thresh=0.97,
    min_mask_region_area=100,  # fill holes and remove islands under 100 px
    max_mask_area_fraction=0.95,  # drop masks covering most of the image
)


@dataclass
class SemiSettings:
    """``semi``: where confident masks come from: ``generator`` (with ``generator``'s
    parameters) or a directory of SA-1B JSON files."""

    source: str = "generator"
    generator: GeneratorSettings = field(default_factory=lambda: replace(SEMI_GENERATOR))


@dataclass
class AnnotateSettings:
    """The whole ``conf/annotate.yaml``."""

    images: str
    output: str
    model: ModelSettings
    mode: Literal["manual", "semi"] = "manual"
    annotator: str = "annotator"
    session: str | None = None
    precompute: bool = False
    progress: bool = True
    device: str = "auto"
    server: ServerSettings = field(default_factory=ServerSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    semi: SemiSettings = field(default_factory=SemiSettings)


def check(config: Mapping[str, Any]) -> list[str]:
    """The problems of a composed ``conf/annotate.yaml``."""
    return check_settings(config, AnnotateSettings)
