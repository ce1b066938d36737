"""What the entry points share: where their configs are, the checks of a command line
before anything is built, one Hydra main, device resolution and one model builder.

No entry point imports another; each composes these. Hydra and OmegaConf are imported only
inside the functions that need them, so :func:`build_model` and :func:`resolve_device` serve
the argparse entry points (``segment``, ``export``) too.

Configs live in ``conf/`` at the root of the repository. Wheels ship a copy inside the
package as ``sam_lightning/conf/`` (see ``setup.py``), so :func:`config_dir` looks there
first and then for the checkout's ``conf/`` next to the package (a source tree or an
editable install). Entry points pass the result to ``hydra.main(config_path=...)``.

An experiment cannot make a setting required with ``???`` when a config group already gives
it a value (OmegaConf keeps the value: ``model.checkpoint: ???`` over the model group's
``null`` stays ``null``). Experiments write ``${sam_required:model.checkpoint}`` instead; the
entry points call :func:`register_resolvers`, and resolving it raises
:class:`RequiredSettingError` naming the key, unless the command line sets it;
:func:`unset_settings` lists both kinds of unset values without resolving anything.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sam_lightning.modeling.sam import Sam

log = logging.getLogger("sam_lightning")

#: The official SAM checkpoints, named when a model runs with random weights.
OFFICIAL_CHECKPOINTS = "sam_vit_b_01ec64.pth, sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth"
_PACKAGE_DIR = Path(__file__).resolve().parent


def find_config_dir(package_dir: Path) -> Path:
    """The config directory for the ``sam_lightning`` package at ``package_dir``:
    ``package_dir/conf`` (installed) or ``package_dir/../conf`` when ``package_dir/..`` is
    a source checkout (has ``pyproject.toml``). Raises FileNotFoundError otherwise."""
    packaged = package_dir / "conf"
    if packaged.is_dir():
        return packaged
    root = package_dir.parent
    if (root / "conf").is_dir() and (root / "pyproject.toml").is_file():
        return root / "conf"
    raise FileNotFoundError(
        f"sam_lightning's Hydra configs are missing: neither {packaged} (installed package) "
        f"nor {root / 'conf'} (source checkout) exists; reinstall the package"
    )


def config_dir() -> Path:
    """The directory holding ``amg.yaml`` and the other top-level configs."""
    return find_config_dir(_PACKAGE_DIR)


class RequiredSettingError(ValueError):
    """A setting that the chosen experiment requires was not given."""


def _required(key: str) -> None:
    raise RequiredSettingError(
        f"{key} is required by this experiment: set {key}=... on the command line"
    )


def unset_settings(config: Any) -> list[str]:
    """Dotted keys of an (unresolved) OmegaConf config that must still be given: values
    ``???`` and ``${sam_required:...}``; nothing is resolved."""
    from omegaconf import OmegaConf

    unset: list[str] = []

    def visit(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                visit(value, f"{prefix}{key}.")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                visit(value, f"{prefix}{index}.")
        elif node == "???" or (isinstance(node, str) and node.startswith("${sam_required:")):
            unset.append(prefix[:-1])

    visit(OmegaConf.to_container(config, resolve=False), "")
    return sorted(unset)


def register_resolvers() -> None:
    """Registers the OmegaConf resolvers ``sam_required`` (see the module docstring) and
    ``sam_bf16_on_gpu`` (:func:`bf16_on_gpu`)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("sam_required"):
        OmegaConf.register_new_resolver("sam_required", _required)
    if not OmegaConf.has_resolver("sam_bf16_on_gpu"):
        OmegaConf.register_new_resolver("sam_bf16_on_gpu", bf16_on_gpu)


def bf16_on_gpu(accelerator: str) -> str:
    """``trainer.precision`` of the fine-tuning recipes, ``${sam_bf16_on_gpu:
    ${trainer.accelerator}}``: ``bf16-mixed`` on a GPU (``gpu``/``cuda``, or ``auto`` with
    CUDA available), ``32-true`` on a CPU, where bf16 autocast runs about 10 times slower
    than fp32 on CPUs without bf16 instructions (measured on the 2-core AVX2 machine)."""
    import torch

    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if gpu else "32-true"


# ------------------------------------------------------------------------ devices, models


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; other names are checked
    (ValueError for an invalid one)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"invalid device {device!r}: {error}") from None
    return device


def build_model(
    model_type: str,
    checkpoint: str | os.PathLike[str] | None = None,
    image_size: int = 1024,
    device: str = "cpu",
    text_embed_dim: int | None = None,
    seed: int = 0,
    checkpoint_flag: str = "model.checkpoint=PATH",
    lora_weights: str | os.PathLike[str] | None = None,
) -> Sam:
    """SAM of ``model_type`` from ``checkpoint`` for ``image_size`` inputs (with a text
    projection of ``text_embed_dim``), on ``device`` in eval mode. Without a checkpoint the
    weights are random, seeded with ``seed``, and a warning says how to pass the official
    ones (``checkpoint_flag``: the option of the calling command). ``lora_weights``: an
    adapter file (``export --adapter-only``) trained on ``checkpoint``, merged into the
    weights (:func:`~sam_lightning.modeling.adapters.apply_adapter_file`).

    Raises:
        FileNotFoundError: no such checkpoint.
        CheckpointError: (:mod:`sam_lightning.modeling.checkpoint`, a ValueError) the file
            is empty, truncated, corrupt, no checkpoint or unsafe: one line, for the commands
            to print as it is.
        ValueError: the weights do not fit ``model_type`` at ``image_size``, or the adapter
            does not fit them (model type, input size, base checkpoint).
    """
    import torch

    from sam_lightning.modeling.build import build_sam

    if checkpoint is None:
        log.warning(
            "no checkpoint given: %s has random weights and the masks are meaningless; "
            "download %s and pass %s",
            model_type,
            OFFICIAL_CHECKPOINTS,
            checkpoint_flag,
        )
        torch.manual_seed(seed)
    model = build_sam(
        model_type,
        checkpoint=None if checkpoint is None else str(checkpoint),
        image_size=int(image_size),
        text_embed_dim=None if text_embed_dim is None else int(text_embed_dim),
    )
    if lora_weights is not None:
        from sam_lightning.file_io import sha256_file
        from sam_lightning.modeling.adapters import apply_adapter_file

        if checkpoint is None:
            raise ValueError(
                f"the adapter {lora_weights} needs its base checkpoint: pass {checkpoint_flag}"
            )
        apply_adapter_file(
            model,
            lora_weights,
            model_type=model_type,
            image_size=int(image_size),
            base_sha256=sha256_file(checkpoint),
        )
    return model.to(resolve_device(device)).eval()


# ---------------------------------------------------------------------- jobs of many ranks


def multirun_spawn_problem(devices: int) -> str | None:
    """Why a Hydra job cannot start ``devices`` processes itself, or None: in a multirun on
    Hydra's basic launcher, Lightning's launcher would re-run the whole sweep (``-m``
    included) in every child process; launch such sweeps through submitit."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if devices <= 1 or not HydraConfig.initialized():
        return None
    config = HydraConfig.get()
    if config.mode != RunMode.MULTIRUN:
        return None
    if "submitit" in str(config.launcher.get("_target_", "")):
        return None
    return (
        f"devices={devices} in a multirun would make every child process re-run the whole "
        "sweep: launch the sweep with hydra/launcher=submitit_slurm (tasks_per_node="
        f"{devices}) or submitit_local, or run each job on its own"
    )


def log_per_rank(name: str, rank: int, world_size: int) -> None:
    """Gives every rank but 0 its own log file, ``<run dir>/<name>.rank<r>.log``, in place of
    the file Hydra opened for it (rank 0 keeps ``<name>.log``; a file of another name, such
    as the one Lightning's launcher names for a child process, becomes the rank's file)."""
    from hydra.core.hydra_config import HydraConfig

    if world_size == 1 or rank == 0 or not HydraConfig.initialized():
        return
    target = Path(HydraConfig.get().runtime.output_dir) / f"{name}.rank{rank}.log"
    root = logging.getLogger()
    formatter = None
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        formatter = handler.formatter
        root.removeHandler(handler)
        handler.close()
        opened = Path(handler.baseFilename)
        if opened.name != f"{name}.log" and opened.is_file() and not target.exists():
            opened.rename(target)
    handler = logging.FileHandler(target)
    if formatter is not None:
        handler.setFormatter(formatter)
    root.addHandler(handler)


# ------------------------------------------------------------------- checks and Hydra main

Check = Callable[[Mapping[str, Any]], list[str]]


def checkable(config: Any) -> Any:
    """An OmegaConf config as plain containers for :mod:`sam_lightning.settings` checks:
    interpolations resolved where they can be, and values still to be given (``???``,
    ``${sam_required:...}``) or not resolvable yet (``${hydra:...}``) marked
    :data:`~sam_lightning.settings.schema.UNCHECKED`."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from sam_lightning.settings.schema import UNCHECKED

    def value(node: Any, key: Any) -> Any:
        if OmegaConf.is_missing(node, key):
            return UNCHECKED
        try:
            return visit(node[key])
        except Exception:  # an interpolation that cannot be resolved before the run
            return UNCHECKED

    def visit(node: Any) -> Any:
        if isinstance(node, DictConfig):
            return {key: value(node, key) for key in node.keys()}
        if isinstance(node, ListConfig):
            return [value(node, index) for index in range(len(node))]
        return node

    return visit(config)


def _config_groups() -> set[str]:
    """The config groups (directories of ``conf/``): overrides of them select a file."""
    return {path.name for path in config_dir().iterdir() if path.is_dir()}


def _override_problems(overrides: Sequence[str], declaration: type) -> list[str]:
    """Unknown keys among the ``key=value`` overrides (not group choices), with the closest
    declared names; dict-valued settings are left to the composed config's check."""
    import dataclasses

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from sam_lightning.settings.schema import closest, declared_fields

    groups, problems = _config_groups(), []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key in groups or key.startswith("hydra") or override.is_delete():
            continue
        cls, prefix = declaration, ""
        for name in key.split("."):
            fields = declared_fields(cls) if dataclasses.is_dataclass(cls) else None
            if fields is None:
                break
            if name not in fields:
                hint = [f"{prefix}{h}" for h in closest(name, fields)]
                suggestion = f"; did you mean {' or '.join(hint)}?" if hint else ""
                problems.append(f"{key}: unknown setting{suggestion}")
                break
            cls, prefix = _field_class(fields[name]), f"{prefix}{name}."
    return problems


def _field_class(hint: Any) -> Any:
    """The dataclass a field holds (also inside ``X | None``), else None."""
    import dataclasses
    import types
    import typing

    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        classes = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return classes[0] if len(classes) == 1 else None
    return None


def check_command_line(
    config_name: str,
    overrides: Sequence[str],
    declaration: type,
    check: Check,
    required: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """Everything wrong with running ``config_name`` with ``overrides``, found before Hydra
    starts: unknown keys and wrong values (named, with the closest valid names), a config
    that does not compose, and ``required`` keys left ``???``; [] when all is well. Also
    returns the overrides to run with: ``key=value`` of a key that the composed config lacks
    becomes ``+key=value`` (a declared setting that a dataset spec inherits, say, so that
    ``data.val.image_size=64`` works like ``data.train.image_size=64``)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    problems = _override_problems(overrides, declaration)
    if problems:
        return problems, overrides
    while True:
        try:
            with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
                cfg = compose(config_name, overrides=overrides)
            break
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            # A key that the composed config lacks: add it; the check below says whether
            # the declaration knows it (else it names the closest valid names).
            unknown = re.match(r"Could not override '([^']+)'", str(error))
            index = next(
                (i for i, o in enumerate(overrides) if unknown and o.startswith(f"{unknown[1]}=")),
                None,
            )
            if index is None:
                message = " ".join(str(error).split()).partition(" Config search path")[0]
                return [message or repr(error)], overrides
            overrides[index] = f"+{overrides[index]}"
    problems = check(checkable(cfg))
    missing = [f"{key}: required" for key in required if OmegaConf.is_missing(cfg, key)]
    return problems + missing, overrides


def hydra_main(
    config_name: str,
    run: Callable[[Any], int],
    declaration: type,
    check: Check,
    required: Sequence[str] = (),
    example: str = "",
) -> int:
    """The ``main`` of every Hydra entry point: checks the command line first
    (:func:`check_command_line`; on problems it prints them, with ``example`` when
    ``required`` keys are missing, and returns 2, with no traceback), then runs Hydra and
    returns ``run(cfg)``'s status. Jobs of a multirun are checked as they start (the same
    checks, status 2 for a bad job)."""
    import hydra

    register_resolvers()
    overrides = sys.argv[1:]
    multirun = any(arg in ("-m", "--multirun") for arg in overrides)
    if not any(arg.startswith("-") for arg in overrides):  # not --help, --cfg, -m ...
        problems, overrides = check_command_line(
            config_name, overrides, declaration, check, required
        )
        if problems:
            _report(config_name, problems, example)
            return 2
        sys.argv[1:] = overrides
    status = 0

    @hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")
    def _main(cfg: Any) -> None:
        nonlocal status
        problems = check(checkable(cfg)) if multirun else []
        if unset := unset_settings(cfg):
            problems += [f"{key}: required" for key in unset]
        if problems:
            _report(config_name, problems, example)
            status = 2
            return
        status = max(status, run(cfg))

    _main()
    return status


def _report(config_name: str, problems: Sequence[str], example: str) -> None:
    """Prints the problems: the wrong settings, then the settings still to be given."""
    unset = [problem.removesuffix(": required") for problem in problems if _is_unset(problem)]
    wrong = [problem for problem in problems if not _is_unset(problem)]
    if wrong:
        lines = "\n".join(f"  {problem}" for problem in wrong)
        print(f"error: invalid settings for {config_name}:\n{lines}", file=sys.stderr)
    if unset:
        keys = ", ".join(f"{key}=..." for key in unset)
        print(f"error: set {keys}" + (f", e.g.\n  {example}" if example else ""), file=sys.stderr)


def _is_unset(problem: str) -> bool:
    return problem.endswith(": required")
