"""One declaration per setting (:mod:`sam_lightning.settings`): every shipped config passes
its check, the base config files state the declared defaults, the library's own defaults
are the declared ones, and a bad command line is refused before anything is built."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning
import pytest
import yaml
from hydra import compose, initialize_config_dir

from sam_lightning.amg import generate_folder
from sam_lightning.data.coco import CocoDataset, LvisDataset
from sam_lightning.data.datamodule import SamDataModule
from sam_lightning.data.sa1b_dataset import SA1BDataset
from sam_lightning.data.synthetic import SyntheticShapes
from sam_lightning.distributed import launch_fabric
from sam_lightning.entry_points import check_command_line, checkable, config_dir
from sam_lightning.evaluation.edges import SamEdgeDetector, evaluate_sam_edges
from sam_lightning.evaluation.points import evaluate_points
from sam_lightning.evaluation.text_harness import evaluate_text
from sam_lightning.inference.automatic import SamAutomaticMaskGenerator
from sam_lightning.settings import amg, annotate, evaluate, launch, train
from sam_lightning.settings.schema import defaults
from sam_lightning.training.module import SamTrainingModule

CONF = config_dir()
REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(path.stem for path in (CONF / "exp").glob("*.yaml"))
TASKS = sorted(path.stem for path in (CONF / "eval").glob("*.yaml"))


def composed(config_name: str, overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return checkable(compose(config_name, overrides=overrides))


def plain(value: Any) -> Any:
    """Tuples as lists, so that a signature's ``(0.9, 0.999)`` equals a YAML list."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def yaml_file(relative: str) -> dict[str, Any]:
    return yaml.safe_load((CONF / relative).read_text())


def assert_states_defaults(stated: dict[str, Any], declaration: type, where: str) -> None:
    """Every value a base config file states is the declared default (``???``: required)."""
    declared = defaults(declaration)
    for key, value in stated.items():
        assert key in {f.name for f in dataclasses.fields(declaration)}, f"{where}: {key}"
        if value == "???" or key not in declared:
            continue
        if isinstance(value, dict) and dataclasses.is_dataclass(declared[key]):
            continue
        if isinstance(value, dict) and isinstance(declared[key], dict):
            value = {k: v for k, v in value.items() if v != "???"}
            declared[key] = {k: declared[key][k] for k in value}
        assert plain(value) == plain(declared[key]), f"{where}: {key}"


def assert_signature_defaults(function: Any, declaration: type, skip: tuple[str, ...] = ()) -> None:
    """The parameters of ``function`` named like declared fields have the declared defaults
    (each declared field is a parameter unless in ``skip``)."""
    parameters = inspect.signature(function).parameters
    declared = defaults(declaration)
    names = [f.name for f in dataclasses.fields(declaration) if f.name not in skip]
    missing = [name for name in names if name not in parameters]
    assert not missing, f"{function.__qualname__} lacks {missing}"
    for name in names:
        default = parameters[name].default
        if name in declared:
            assert plain(default) == plain(declared[name]), f"{function.__qualname__}({name})"
        else:
            assert default is inspect.Parameter.empty, f"{function.__qualname__}({name})"


# ------------------------------------------------------------- the shipped configs check


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_passes_the_training_check(name):
    assert train.check(composed("train", [f"+exp={name}"])) == []


def test_the_default_training_config_passes():
    assert train.check(composed("train", [])) == []


@pytest.mark.parametrize("task", TASKS)
def test_every_eval_task_passes_the_evaluation_check(task):
    assert evaluate.check(composed("evaluate", [f"+eval={task}"])) == []


@pytest.mark.parametrize("choice", ["default", "sa1b"])
def test_amg_configs_pass(choice):
    assert amg.check(composed("amg", [f"amg={choice}"])) == []


def test_annotate_config_passes():
    assert annotate.check(composed("annotate", [])) == []


def test_the_check_finds_what_a_config_gets_wrong():
    config = composed("train", ["+exp=demo"])
    config["optim"]["lr"] = "abc"
    config["data"]["train"]["num_imagse"] = 3
    config["trainer"]["devcies"] = 2
    problems = train.check(config)
    assert problems == [
        "data.train.num_imagse: unknown setting; did you mean data.train.num_images?",
        "trainer.devcies: unknown setting; did you mean trainer.devices?",
        "optim.lr=abc: expected a number",
    ]


# -------------------------------------------- the base config files state the declared defaults


def test_base_training_files_state_the_declared_defaults():
    assert_states_defaults(yaml_file("optim/paper.yaml"), train.OptimSettings, "optim")
    assert_states_defaults(yaml_file("trainer/default.yaml"), train.TrainerSettings, "trainer")
    assert_states_defaults(yaml_file("logger/csv.yaml"), train.TrainLoggerSettings, "logger")
    base = yaml_file("train.yaml")
    assert_states_defaults(base["training"], train.TrainingSettings, "training")
    assert_states_defaults(base["checkpoint"], train.CheckpointSettings, "checkpoint")
    top = {k: v for k, v in base.items() if k not in ("defaults", "hydra", "training")}
    assert_states_defaults(top, train.TrainSettings, "train.yaml")
    data = yaml_file("data/synthetic.yaml")  # the default data group
    assert_states_defaults(
        {k: v for k, v in data["train"].items() if k != "kind"}, train.SyntheticSpec, "data.train"
    )
    rest = {k: v for k, v in data.items() if k not in ("train", "val")}
    assert_states_defaults(rest, train.DataSettings, "data")
    for name in ("vit_b", "vit_l", "vit_h"):  # the official models (vit_nano, vit_tiny: 64 px)
        model = yaml_file(f"model/{name}.yaml")
        assert_states_defaults(
            {k: v for k, v in model.items() if k != "type"}, train.ModelSettings, name
        )


@pytest.mark.parametrize("task", TASKS)
def test_eval_task_files_state_the_declared_defaults(task):
    block = yaml_file(f"eval/{task}.yaml")["eval"]
    assert block.pop("task") == task
    assert_states_defaults(block, evaluate.TASKS[task][0], task)


def test_amg_and_annotate_files_state_the_declared_defaults():
    assert_states_defaults(yaml_file("amg/default.yaml"), amg.GeneratorSettings, "amg")
    base = yaml_file("amg.yaml")
    assert_states_defaults(
        {k: v for k, v in base.items() if k not in ("defaults", "hydra")},
        amg.AmgSettings,
        "amg.yaml",
    )
    base = yaml_file("annotate.yaml")
    for group, declaration in [
        ("semi", annotate.SemiSettings),
        ("server", annotate.ServerSettings),
        ("cache", annotate.CacheSettings),
    ]:
        assert_states_defaults(base[group], declaration, group)
    nested = ("defaults", "hydra", "annotator", "semi", "server", "cache")
    top = {k: v for k, v in base.items() if k not in nested}
    assert_states_defaults(top, annotate.AnnotateSettings, "annotate.yaml")


# ------------------------------------------------ the library's defaults are the declared ones


def test_training_module_and_data_module_take_the_declared_defaults():
    assert_signature_defaults(SamTrainingModule, train.OptimSettings)
    assert_signature_defaults(SamTrainingModule, train.TrainingSettings)
    parameters = inspect.signature(SamTrainingModule).parameters
    for name in ("checkpoint", "image_size"):
        assert parameters[name].default == defaults(train.ModelSettings)[name], name
    assert_signature_defaults(SamDataModule, train.DataSettings)


@pytest.mark.parametrize(
    "dataset, spec",
    [
        (SyntheticShapes, train.SyntheticSpec),
        (SA1BDataset, train.SA1BSpec),
        (CocoDataset, train.CocoSpec),
        (LvisDataset, train.CocoSpec),
    ],
)
def test_datasets_take_the_declared_defaults(dataset, spec):
    assert_signature_defaults(dataset, spec)


def test_the_launch_keys_have_one_declaration():
    assert_states_defaults(yaml_file("launch/default.yaml"), launch.LaunchSettings, "launch")
    fabric_only = ("accelerator", "devices", "num_nodes", "strategy", "precision")
    assert_signature_defaults(generate_folder, launch.LaunchSettings, skip=fabric_only)
    assert_signature_defaults(launch_fabric, launch.LaunchSettings, skip=("num_workers",))
    assert composed("amg", ["input=i", "output=o"])["devices"] == 1


def test_generator_edge_detector_and_harnesses_take_the_declared_defaults():
    assert_signature_defaults(SamAutomaticMaskGenerator, amg.GeneratorSettings)
    harness_only = ("thresholds", "max_dist", "edges_from", "max_images")
    assert_signature_defaults(SamEdgeDetector, evaluate.EdgesSettings, skip=harness_only)
    detector_only = tuple(
        f.name
        for f in dataclasses.fields(evaluate.EdgesSettings)
        if f.name not in ("thresholds", "max_dist")
    )
    assert_signature_defaults(evaluate_sam_edges, evaluate.EdgesSettings, skip=detector_only)
    assert_signature_defaults(evaluate_points, evaluate.PointsSettings)
    assert_signature_defaults(evaluate_text, evaluate.TextRefcocoSettings, skip=("clip",))


def test_trainer_settings_are_trainer_arguments_and_our_choices_are_in_the_config():
    """Each declared trainer setting is a ``lightning.Trainer`` argument; where our default
    is not Lightning's (App. A's 90k steps, validation counted in steps, ...), the base
    config states it, so that the choice is seen where it is made."""
    parameters = inspect.signature(lightning.Trainer).parameters
    ours = defaults(train.TrainerSettings)
    assert set(ours) <= set(parameters)
    stated = yaml_file("trainer/default.yaml")
    ours_only = [name for name, value in ours.items() if value != parameters[name].default]
    assert "max_steps" in ours_only
    assert [name for name in ours_only if name not in stated] == []


# ----------------------------------------------- a bad command line is refused before the run


@pytest.mark.parametrize(
    "config_name, overrides, declaration, check, problem",
    [
        (
            "train",
            ["+exp=demo", "trainer.max_steps=abc"],
            train.TrainSettings,
            train.check,
            "trainer.max_steps=abc: expected an int",
        ),
        (
            "train",
            ["+exp=demo", "optim.lr=abc"],
            train.TrainSettings,
            train.check,
            "optim.lr=abc: expected a number",
        ),
        (
            "train",
            ["+exp=demo", "optim.layer_decy=0.5"],
            train.TrainSettings,
            train.check,
            "optim.layer_decy: unknown setting; did you mean optim.layer_decay?",
        ),
        (
            "train",
            ["+exp=demo", "data.train.num_imges=5"],
            train.TrainSettings,
            train.check,
            "data.train.num_imges: unknown setting; did you mean data.train.num_images?",
        ),
        (
            "train",
            ["+exp=demo", "model.type=vit_q"],
            train.TrainSettings,
            train.check,
            "model.type=vit_q: not one of",
        ),
        (
            "evaluate",
            ["+eval=points_coco", "eval.max_images=abc", "data.images=i", "data.annotations=a"],
            evaluate.EvaluateSettings,
            evaluate.check,
            "eval.max_images=abc: expected an int or null",
        ),
        (
            "evaluate",
            ["+eval=edges_bsds", "eval.points_per_sid=8", "data.root=r"],
            evaluate.EvaluateSettings,
            evaluate.check,
            "eval.points_per_sid: unknown setting; did you mean eval.points_per_side",
        ),
        (
            "amg",
            ["input=i", "output=o", "amg.pred_iou_tresh=0.5"],
            amg.AmgSettings,
            amg.check,
            "amg.pred_iou_tresh: unknown setting; did you mean amg.pred_iou_thresh?",
        ),
        (
            "train",
            ["+exp=demo", "model.chekpoint=x.pth"],
            train.TrainSettings,
            train.check,
            "model.chekpoint: unknown setting; did you mean model.checkpoint?",
        ),
        (
            "train",
            ["+exp=demo", "training.frozn=[image_encoder]"],
            train.TrainSettings,
            train.check,
            "training.frozn: unknown setting; did you mean training.frozen?",
        ),
        (
            "train",
            ["+exp=demo", "training.frozen=[image_encodr]"],
            train.TrainSettings,
            train.check,
            "training.frozen[0]=image_encodr: not one of image_encoder, prompt_encoder, "
            "mask_decoder; did you mean image_encoder?",
        ),
        (
            "amg",
            ["input=i", "output=o", "devices=0"],
            amg.AmgSettings,
            amg.check,
            "devices=0: must be at least 1",
        ),
        (
            "amg",
            ["input=i", "output=o", "accelerator=tpu"],
            amg.AmgSettings,
            amg.check,
            "accelerator=tpu: not one of auto, cpu, gpu, cuda, mps",
        ),
        (
            "amg",
            ["input=i", "output=o", "num_node=2"],
            amg.AmgSettings,
            amg.check,
            "num_node: unknown setting; did you mean num_nodes?",
        ),
        (
            "annotate",
            ["images=i", "output=o", "server.prot=1"],
            annotate.AnnotateSettings,
            annotate.check,
            "server.prot: unknown setting; did you mean server.port?",
        ),
        (
            "annotate",
            ["images=i", "output=o", "mode=semiauto"],
            annotate.AnnotateSettings,
            annotate.check,
            "mode=semiauto: not one of manual, semi",
        ),
    ],
)
def test_a_bad_setting_is_named_before_the_run(config_name, overrides, declaration, check, problem):
    problems, _ = check_command_line(config_name, overrides, declaration, check)
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize(
    "module, arguments, expected",
    [
        (
            "train",
            ["+exp=demo", "trainer.max_steps=abc", "optim.lr=x"],
            ["trainer.max_steps=abc: expected an int", "optim.lr=x: expected a number"],
        ),
        (
            "evaluate",
            ["+eval=points_coco", "eval.num_click=[1]"],
            ["eval.num_click: unknown setting; did you mean eval.num_clicks?"],
        ),
    ],
)
def test_the_command_exits_2_with_the_problems_and_no_traceback(
    module, arguments, expected, tmp_path
):
    result = subprocess.run(
        [sys.executable, "-m", f"sam_lightning.{module}", *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert f"error: invalid settings for {module}:" in result.stderr
    for line in expected:
        assert line in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "outputs").exists()  # nothing started


def test_a_declared_setting_that_the_config_lacks_is_added():
    """The demo's val spec inherits ``image_size`` from the train spec, so the composed
    config lacks it: setting it still works, and a misspelt one is still named."""
    overrides = ["+exp=demo", "data.val.image_size=48"]
    problems, run_with = check_command_line("train", overrides, train.TrainSettings, train.check)
    assert problems == [] and run_with == ["+exp=demo", "+data.val.image_size=48"]
    assert composed("train", run_with)["data"]["val"]["image_size"] == 48
    problems, _ = check_command_line(
        "train", ["+exp=demo", "data.val.image_sise=48"], train.TrainSettings, train.check
    )
    assert len(problems) == 1
    assert problems[0].startswith(
        "data.val.image_sise: unknown setting; did you mean data.val.image_size"
    )
