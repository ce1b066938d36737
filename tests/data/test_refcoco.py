"""The RefCOCO/+/g reader on a generated refer-toolkit layout: refs and masks against the
fixture read with pycocotools, splits, JSON refs, the restricted unpickler (a pickle that
would run ``os.system`` is refused without running it) and errors naming file and field."""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_api
from pycocotools.coco import COCO

from sam_lightning.data.refcoco import DEFAULT_SPLIT_BY, RefCocoDataset, load_refs, refer_paths
from sam_lightning.file_io import RefCocoFormatError

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluation"))
from text_fixtures import REFCOCO_SCENES, malicious_refs, write_refcoco  # noqa: E402

# pycocotools 2.0.x's decode passes copy=False to NumPy 2's __array__: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
IMAGES = Path("images", "mscoco", "images", "train2014")


@pytest.fixture
def layout(tmp_path) -> Path:
    return write_refcoco(tmp_path / "refer")


def open_split(root: Path, split: str | None = "val") -> RefCocoDataset:
    refs, instances = refer_paths(root, "refcoco")
    return RefCocoDataset(refs, instances, root / IMAGES, split=split)


def test_paths_follow_the_toolkit_layout(tmp_path):
    assert refer_paths(tmp_path, "refcocog") == (
        tmp_path / "refcocog" / "refs(umd).p",
        tmp_path / "refcocog" / "instances.json",
    )
    assert refer_paths(tmp_path, "refcoco+")[0].name == "refs(unc).p"
    assert refer_paths(tmp_path, "refcocog", "google")[0].name == "refs(google).p"
    assert DEFAULT_SPLIT_BY == {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
    with pytest.raises(ValueError, match="no default splitBy for dataset 'refclef'"):
        refer_paths(tmp_path, "refclef")


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_items_hold_the_splits_refs_and_their_masks(tmp_path, protocol):
    root = write_refcoco(tmp_path, protocol=protocol)
    dataset = open_split(root)
    coco = COCO(str(root / "refcoco" / "instances.json"))
    expected = [
        (image_id, [ref for ref in refs if ref[1] == "val"]) for image_id, refs in REFCOCO_SCENES
    ]
    expected = [(image_id, refs) for image_id, refs in expected if refs]
    assert len(dataset) == 2 and dataset.num_refs == 4
    for index, (image_id, refs) in enumerate(expected):
        item = dataset[index]
        info = coco.imgs[image_id]
        assert item["image_info"] == {
            "image_id": image_id,
            "width": info["width"],
            "height": info["height"],
            "file_name": info["file_name"],
        }
        assert item["image"].shape == (info["height"], info["width"], 3)
        assert [ref["ref_id"] for ref in item["refs"]] == [ref[0] for ref in refs]
        for ref, (ref_id, _, _, sentences) in zip(item["refs"], refs):
            ann = coco.anns[1000 + ref_id]
            assert ref["ann_id"] == ann["id"] and ref["category_id"] == ann["category_id"]
            assert ref["split"] == "val" and ref["image_id"] == image_id
            assert [s["sent"] for s in ref["sentences"]] == sentences
            assert all(isinstance(s["sent_id"], int) for s in ref["sentences"])
            assert isinstance(ref["segmentation"]["counts"], str)
            np.testing.assert_array_equal(mask_api.decode(ref["segmentation"]), coco.annToMask(ann))
    assert open_split(root, None).num_refs == 7
    assert open_split(root, "testA").num_refs == 1
    with pytest.raises(
        ValueError, match=r"no refs of split 'test'.*\['testA', 'testB', 'train', 'val'\]"
    ):
        open_split(root, "test")


def test_refs_as_json_read_the_same(layout):
    refs_file, instances = refer_paths(layout, "refcoco")
    json_file = refs_file.with_suffix(".json")
    json_file.write_text(json.dumps(pickle.loads(refs_file.read_bytes())))
    assert load_refs(json_file) == load_refs(refs_file)
    dataset = RefCocoDataset(json_file, instances, layout / IMAGES, split="val")
    assert [r["refs"] for r in dataset] == [r["refs"] for r in open_split(layout)]


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    sentinel = tmp_path / "ran"
    path = tmp_path / "refs(unc).p"
    path.write_bytes(malicious_refs(sentinel))
    with pytest.raises(RefCocoFormatError, match=r"refuses to load (posix|os)\.system") as error:
        load_refs(path)
    assert error.value.file == str(path) and not sentinel.exists()
    pickle.loads(path.read_bytes())  # the plain unpickler runs it: the file is a real exploit
    assert sentinel.exists()


def test_a_pickle_of_other_objects_is_refused(tmp_path):
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps([{"ref_id": np.int64(1)}]))
    with pytest.raises(RefCocoFormatError, match="refuses to load numpy"):
        load_refs(path)
    path.write_bytes(pickle.dumps({1, 2}, protocol=2))  # a set needs builtins.set
    with pytest.raises(RefCocoFormatError, match=r"refuses to load (__builtin__|builtins)\.set"):
        load_refs(path)


def ref(**changes):
    base = {
        "ref_id": 0,
        "ann_id": 1000,
        "image_id": 1,
        "split": "val",
        "sentences": [{"sent": "the red box", "sent_id": 0}],
    }
    return {**base, **changes}


@pytest.mark.parametrize(
    "refs, field, problem",
    [
        ({"refs": []}, "", "expected a list of refs"),
        (["x"], "refs[0]", "expected an object"),
        ([{"ann_id": 1}], "refs[0].ref_id", "missing"),
        ([ref(ann_id="7")], "refs[0].ann_id", "expected an int"),
        ([ref(split=3)], "refs[0].split", "expected a split name"),
        ([ref(sentences=[])], "refs[0].sentences", "non-empty list"),
        ([ref(sentences=[{"raw": "x"}])], "refs[0].sentences[0].sent", "expected a"),
        ([ref(sentences=[{"sent": "x", "sent_id": 1.5}])], "refs[0].sentences[0].sent_id", "int"),
        ([ref(), ref(ann_id=1001)], "refs[1].ref_id", "0 repeats the ref_id of refs[0]"),
    ],
)
def test_malformed_refs_name_the_field(tmp_path, refs, field, problem):
    for path in (tmp_path / "refs.p", tmp_path / "refs.json"):
        data = json.dumps(refs).encode() if path.suffix == ".json" else pickle.dumps(refs)
        path.write_bytes(data)
        with pytest.raises(RefCocoFormatError, match=re.escape(problem)) as error:
            load_refs(path)
        assert (error.value.file, error.value.field) == (str(path), field)


def test_unreadable_refs_files(tmp_path):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([ref()])[:-5])
    with pytest.raises(RefCocoFormatError, match="not a refs pickle") as error:
        load_refs(path)
    assert error.value.file == str(path)
    path = tmp_path / "refs.json"
    path.write_text("[{")
    with pytest.raises(RefCocoFormatError, match="not valid JSON"):
        load_refs(path)
    with pytest.raises(FileNotFoundError, match="refs file not found"):
        load_refs(tmp_path / "absent.p")


def write_refs(layout: Path, refs: list) -> Path:
    path = layout / "refcoco" / "refs(unc).p"
    path.write_bytes(pickle.dumps(refs, protocol=2))
    return path


@pytest.mark.parametrize(
    "change, field, problem",
    [
        ({"ann_id": 77}, "refs[0].ann_id", "has no annotation 77"),
        ({"image_id": 2}, "refs[0].image_id", "annotation 1000 of .* is of image 1"),
    ],
)
def test_refs_that_do_not_match_the_instances_name_the_ref(layout, change, field, problem):
    path = write_refs(layout, [ref(**change)])
    with pytest.raises(RefCocoFormatError, match=problem) as error:
        open_split(layout)
    assert (error.value.file, error.value.field) == (str(path), field)


def test_malformed_instances_name_the_field(layout):
    instances = layout / "refcoco" / "instances.json"
    document = json.loads(instances.read_text())
    for broken, field in [
        ({**document, "images": None}, "images"),
        ({"annotations": []}, "images"),
        ({**document, "images": [{"id": 1, "width": 80, "height": 64}]}, "images[0].file_name"),
        ({**document, "images": [{"id": 1, "width": "80"}]}, "images[0].width"),
    ]:
        instances.write_text(json.dumps(broken))
        with pytest.raises(RefCocoFormatError) as error:
            open_split(layout)
        assert (error.value.file, error.value.field) == (str(instances), field)
    instances.write_text('{"images": [')
    with pytest.raises(RefCocoFormatError, match="not valid JSON") as error:
        open_split(layout)
    assert (error.value.file, error.value.field) == (str(instances), "")
    document["annotations"][0]["segmentation"] = [[1, 2, 3]]
    instances.write_text(json.dumps(document))
    dataset = open_split(layout)
    with pytest.raises(RefCocoFormatError, match="odd number of coordinates") as error:
        dataset[0]
    assert error.value.field == "annotations[0] (id 1000).segmentation[0]"


def test_missing_or_wrongly_sized_images(layout):
    dataset = open_split(layout)
    path = layout / IMAGES / dataset.image_info(0)["file_name"]
    path.unlink()
    with pytest.raises(FileNotFoundError, match="of image_id 1 in"):
        dataset[0]
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(path)
    with pytest.raises(RefCocoFormatError, match=r"\[64, 80\] but the image .* is 10 x 12"):
        dataset[0]
    assert len(dataset.read_refs(0)) == 2  # the refs need no image
    with pytest.raises(FileNotFoundError, match="image directory not found"):
        RefCocoDataset(*refer_paths(layout, "refcoco"), layout / "nowhere")
    with pytest.raises(FileNotFoundError, match="instances file not found"):
        RefCocoDataset(refer_paths(layout, "refcoco")[0], layout / "x.json", layout / IMAGES)
    with pytest.raises(IndexError, match="out of range"):
        dataset[2]
