"""The BSDS500 reader on files in the official layout: ``groundTruth`` ``.mat`` files written
with scipy in MATLAB's struct layout, JPEG images; malformed files name the file and field."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

from sam_lightning.data.bsds import (
    BSDS500Dataset,
    BSDSFormatError,
    boundaries_from_segmentation,
    read_ground_truth,
    write_ground_truth,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "evaluation"))
from bsds_fixtures import annotator_segmentations, write_bsds_split  # noqa: E402


def matlab_cells(fields: list[dict[str, np.ndarray]]) -> np.ndarray:
    """A 1 x A MATLAB cell array of 1 x 1 structs, as loadmat returns BSDS files."""
    cells = np.empty((1, len(fields)), dtype=object)
    for i, struct_fields in enumerate(fields):
        struct = np.empty((1, 1), dtype=[(name, object) for name in struct_fields])
        for name, value in struct_fields.items():
            struct[0, 0][name] = value
        cells[0, i] = struct
    return cells


def test_seg2bmap_on_a_hand_made_segmentation():
    seg = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3]])
    # Inside: right, lower or lower-right neighbour differs. Last column: lower neighbour
    # only ((1, 3) sees the 3 below it). Last row: right neighbour only. Corner: never.
    expected = np.array([[0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
    assert np.array_equal(boundaries_from_segmentation(seg), expected)
    assert not boundaries_from_segmentation(np.full((3, 4), 7)).any()
    with pytest.raises(ValueError, match="segmentation must be H x W"):
        boundaries_from_segmentation(np.zeros(3))


def test_round_trip_in_the_official_struct_layout(tmp_path):
    rng = np.random.default_rng(0)
    segmentations = annotator_segmentations(rng, 30, 45, annotators=4, regions=6)
    path = tmp_path / "100007.mat"
    write_ground_truth(path, segmentations)
    raw = loadmat(str(path))["groundTruth"]  # what MATLAB would see: 1 x 4 cell of structs
    assert raw.shape == (1, 4) and raw.dtype == object
    assert raw[0, 2].dtype.names == ("Segmentation", "Boundaries")
    assert raw[0, 2]["Segmentation"][0, 0].dtype == np.uint16
    ground_truth = read_ground_truth(path)
    assert np.array_equal(ground_truth.segmentations, segmentations)
    expected = np.stack([boundaries_from_segmentation(s) for s in segmentations])
    assert ground_truth.boundaries.dtype == bool
    assert np.array_equal(ground_truth.boundaries, expected)


def test_reads_structs_written_field_by_field(tmp_path):
    # MATLAB saves logical Boundaries; a double 0/1 map and uint8 must read the same.
    seg = np.array([[1, 2], [1, 2]], dtype=np.uint16)
    bnd = np.array([[1, 0], [1, 0]])
    path = tmp_path / "x.mat"
    fields = [
        {"Segmentation": seg, "Boundaries": bnd.astype(np.uint8)},
        {"Segmentation": seg.astype(np.float64), "Boundaries": bnd.astype(np.float64)},
    ]
    savemat(str(path), {"groundTruth": matlab_cells(fields)})
    ground_truth = read_ground_truth(path)
    assert ground_truth.boundaries.shape == (2, 2, 2)
    assert np.array_equal(ground_truth.boundaries[1], bnd.astype(bool))
    assert np.array_equal(ground_truth.segmentations[1], seg)


MALFORMED = [
    ({"other": np.zeros(3)}, "groundTruth", "missing"),
    ({"groundTruth": np.zeros((1, 2))}, "groundTruth", "must be a cell array of structs"),
    ({"groundTruth": np.empty((1, 0), dtype=object)}, "groundTruth", "has no annotators"),
    (
        {"groundTruth": matlab_cells([{"Segmentation": np.ones((3, 3), np.uint16)}])},
        "groundTruth{1}.Boundaries",
        "missing",
    ),
    (
        {
            "groundTruth": matlab_cells(
                [{"Segmentation": np.ones((3, 3)), "Boundaries": np.ones((3, 3, 2))}]
            )
        },
        "groundTruth{1}.Boundaries",
        "must be a 2-D array",
    ),
    (
        {
            "groundTruth": matlab_cells(
                [{"Segmentation": np.ones((3, 3)), "Boundaries": np.full((3, 3), 2.0)}]
            )
        },
        "groundTruth{1}.Boundaries",
        "must hold only 0 and 1",
    ),
    (
        {
            "groundTruth": matlab_cells(
                [{"Segmentation": np.full((3, 3), 1.5), "Boundaries": np.zeros((3, 3))}]
            )
        },
        "groundTruth{1}.Segmentation",
        "must hold integers",
    ),
    (
        {
            "groundTruth": matlab_cells(
                [
                    {"Segmentation": np.ones((3, 3)), "Boundaries": np.zeros((3, 3))},
                    {"Segmentation": np.ones((3, 4)), "Boundaries": np.zeros((3, 4))},
                ]
            )
        },
        "groundTruth{2}.Segmentation",
        "is 3 x 4 but groundTruth{1}.Segmentation is 3 x 3",
    ),
]


@pytest.mark.parametrize("content, field, problem", MALFORMED)
def test_malformed_files_name_the_file_and_field(tmp_path, content, field, problem):
    path = tmp_path / "bad.mat"
    savemat(str(path), content)
    with pytest.raises(BSDSFormatError) as error:
        read_ground_truth(path)
    assert error.value.file == str(path) and error.value.field == field
    assert problem in error.value.problem and str(path) in str(error.value)


def test_not_a_mat_file_and_missing_file(tmp_path):
    path = tmp_path / "junk.mat"
    path.write_bytes(b"not matlab at all" * 10)
    with pytest.raises(BSDSFormatError, match="not a readable MATLAB .mat file"):
        read_ground_truth(path)
    with pytest.raises(FileNotFoundError, match="nothere.mat"):
        read_ground_truth(tmp_path / "nothere.mat")


@pytest.fixture
def bsds_root(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    write_bsds_split(tmp_path, "test", ["3096", "100007", "2018"], rng, 40, 60, annotators=5)
    write_bsds_split(tmp_path, "val", ["5001"], rng, 60, 40, annotators=4)
    return tmp_path


def test_dataset_reads_the_official_layout(bsds_root):
    dataset = BSDS500Dataset(bsds_root)  # split "test" by default
    assert len(dataset) == 3 and dataset.names == ["100007", "2018", "3096"]
    sample = dataset[1]
    assert sample.name == "2018" and sample.image.shape == (40, 60, 3)
    assert sample.image.dtype == np.uint8
    assert sample.ground_truth.boundaries.shape == (5, 40, 60)
    assert sample.ground_truth.segmentations.min() >= 1
    expected = read_ground_truth(bsds_root / "groundTruth" / "test" / "2018.mat")
    assert np.array_equal(sample.ground_truth.boundaries, expected.boundaries)
    assert dataset[-1].name == "3096"
    val = BSDS500Dataset(bsds_root, "val")
    assert val[0].image.shape == (60, 40, 3) and val.ground_truth(0).boundaries.shape[0] == 4
    assert BSDS500Dataset(bsds_root, limit=2).names == ["100007", "2018"]


def test_dataset_errors(bsds_root):
    with pytest.raises(ValueError, match="split must be one of"):
        BSDS500Dataset(bsds_root, "training")
    with pytest.raises(FileNotFoundError, match="images/train"):
        BSDS500Dataset(bsds_root, "train")
    dataset = BSDS500Dataset(bsds_root)
    with pytest.raises(IndexError):
        dataset[3]
    (bsds_root / "images" / "test" / "2018.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="2018.jpg"):
        dataset[1]
    Image.new("RGB", (61, 40)).save(bsds_root / "images" / "test" / "3096.jpg")
    with pytest.raises(
        BSDSFormatError, match=r"3096.mat: groundTruth\{1\}.Segmentation: is 40 x 60"
    ):
        dataset[2]
