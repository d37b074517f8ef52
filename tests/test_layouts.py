"""Layout matching on file lists, and patient ids parsed from chest X-ray file names."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

from medimg.data.errors import FetchError
from medimg.data.layouts import LayoutEntry, match_layout, numbered_name, patient_id

XRAY = ["NORMAL", "PNEUMONIA"]
MRI = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
REAL_XRAY_ZIP = Path("/work/shared/datasets/chest_xray_224.zip")


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("person1_bacteria_1.jpeg", "person1"),
        ("person1946_virus_3380.jpeg", "person1946"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        # Variants present in the real release (see REAL_XRAY_ZIP):
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0011-0001-0002.jpeg", "IM-0011"),
        ("NORMAL2-IM-0173-0001-0001.jpeg", "NORMAL2-IM-0173"),
        # Re-encoded copies may change the extension or its case.
        ("IM-0115-0001.JPG", "IM-0115"),
        ("person3_bacteria_10.png", "person3"),
    ],
)
def test_patient_id(filename, expected):
    assert patient_id(filename) == expected


@pytest.mark.parametrize(
    "filename",
    ["scan_0001.jpeg", "person_bacteria_1.jpeg", "IM-0115.jpeg", "IM-0115-0001.txt", "person1"],
)
def test_unparseable_names_are_errors_naming_the_file(filename):
    with pytest.raises(ValueError, match=re.escape(repr(filename))):
        patient_id(filename)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        # The MRI release's names (datasets README): one series per class folder and prefix.
        ("gg (542).jpg", ("gg (#).jpg", 542)),
        ("m2 (143).jpg", ("m2 (#).jpg", 143)),
        ("m1(28).jpg", ("m1(#).jpg", 28)),
        ("image(66).jpg", ("image(#).jpg", 66)),
        ("image (5).jpg", ("image (#).jpg", 5)),  # another series than image(5).jpg
        ("12.jpg", ("#.jpg", 12)),
        # The last number counts; leading zeros do not make another number.
        ("IM-0115-0009.jpeg", ("IM-0115-#.jpeg", 9)),
        ("scan_0010.png", ("scan_#.png", 10)),
        # A digit in the extension is not the image's number.
        ("slice7.jp2", ("slice#.jp2", 7)),
        ("folder/p (3).JPG", ("p (#).JPG", 3)),
        ("image.jpg", None),
    ],
)
def test_numbered_name(filename, expected):
    assert numbered_name(filename) == expected


@pytest.mark.skipif(not REAL_XRAY_ZIP.is_file(), reason="the shared dataset archive is absent")
def test_every_real_file_name_parses_to_the_start_of_its_name():
    with zipfile.ZipFile(REAL_XRAY_ZIP) as zf:
        names = [Path(n).name for n in zf.namelist() if not n.endswith("/")]
    assert len(names) == 5840  # datasets/README.md
    for name in names:
        group = patient_id(name)
        # The patient is the name's prefix up to the image number, never the whole name.
        assert name.startswith(group) and name[len(group)] in "-_"


def test_chest_xray_ignores_macos_metadata_and_the_nested_duplicate():
    files = [
        "chest_xray/train/NORMAL/IM-0001-0001.jpeg",
        "chest_xray/train/PNEUMONIA/person1_virus_6.jpeg",
        "chest_xray/train/NORMAL/.DS_Store",
        "chest_xray/train/NORMAL/._IM-0001-0001.jpeg",
        "chest_xray/train/NORMAL/._person1_virus_6.jpeg",
        "chest_xray/test/NORMAL/IM-0003-0001.jpeg",
        "chest_xray/chest_xray/train/NORMAL/IM-0001-0001.jpeg",
        "chest_xray/chest_xray/test/NORMAL/IM-0003-0001.jpeg",
        "chest_xray/__MACOSX/train/NORMAL/._IM-0001-0001.jpeg",
        "__MACOSX/chest_xray/._train",
    ]
    match = match_layout(files, "chest_xray", XRAY)
    assert match.root == "chest_xray"
    assert match.entries == [
        LayoutEntry("chest_xray/test/NORMAL/IM-0003-0001.jpeg", "test", "NORMAL"),
        LayoutEntry("chest_xray/train/NORMAL/IM-0001-0001.jpeg", "train", "NORMAL"),
        LayoutEntry("chest_xray/train/PNEUMONIA/person1_virus_6.jpeg", "train", "PNEUMONIA"),
    ]
    assert match.misplaced == []
    ignored = {item["path"]: item["files"] for item in match.ignored}
    assert ignored == {
        "__MACOSX": 1,
        "chest_xray/__MACOSX": 1,
        "chest_xray/chest_xray": 2,
        "chest_xray/train/NORMAL/.DS_Store": 1,
        "chest_xray/train/NORMAL/._*": 2,
    }


def test_the_root_may_be_the_top_of_the_tree_and_val_is_mapped():
    files = ["train/NORMAL/a.jpeg", "val/PNEUMONIA/b.jpeg", "test/NORMAL/c.jpeg"]
    match = match_layout(files, "chest_xray", XRAY)
    assert match.root == ""
    assert {(e.source_split, e.label) for e in match.entries} == {
        ("train", "NORMAL"),
        ("val", "PNEUMONIA"),
        ("test", "NORMAL"),
    }
    assert match.entries[0].target == "images/test/NORMAL/c.jpeg"


def test_mri_folders_map_to_train_and_test():
    files = [
        "Brain-Tumor-Classification-DataSet-master/Training/no_tumor/1.jpg",
        "Brain-Tumor-Classification-DataSet-master/Testing/glioma_tumor/image(1).jpg",
        "Brain-Tumor-Classification-DataSet-master/README.md",
    ]
    match = match_layout(files, "mri", MRI)
    assert [(e.source_split, e.label, e.filename) for e in match.entries] == [
        ("test", "glioma_tumor", "image(1).jpg"),
        ("train", "no_tumor", "1.jpg"),
    ]
    assert match.ignored == [
        {
            "path": "Brain-Tumor-Classification-DataSet-master/README.md",
            "files": 1,
            "reason": "outside the layout's split folders",
        }
    ]


def test_files_outside_class_folders_are_misplaced():
    files = ["d/train/NORMAL/a.jpeg", "d/train/notes.txt", "d/test/NORMAL/x/deep.jpeg"]
    match = match_layout(files, "chest_xray", XRAY)
    assert [path for path, _ in match.misplaced] == [
        "d/test/NORMAL/x/deep.jpeg",
        "d/train/notes.txt",
    ]


def test_unknown_layout_lists_what_was_found_and_what_was_expected():
    files = ["data/images/NORMAL/a.jpeg", "data/labels.csv"]
    with pytest.raises(FetchError) as err:
        match_layout(files, "chest_xray", XRAY)
    message = str(err.value)
    assert "data/images/NORMAL/" in message  # found
    assert "['test', 'train']" in message  # expected


def test_a_folder_that_is_not_a_configured_class_is_an_error():
    files = ["train/NORMAL/a.jpeg", "train/COVID/b.jpeg", "test/NORMAL/c.jpeg"]
    with pytest.raises(FetchError, match=r"train/COVID/.*\['NORMAL', 'PNEUMONIA'\]"):
        match_layout(files, "chest_xray", XRAY)


def test_two_roots_at_the_same_depth_are_ambiguous():
    files = ["a/train/NORMAL/1.jpeg", "a/test/NORMAL/2.jpeg", "b/train/NORMAL/1.jpeg"]
    files.append("b/test/NORMAL/2.jpeg")
    with pytest.raises(FetchError, match=r"ambiguous.*\['a', 'b'\]"):
        match_layout(files, "chest_xray", XRAY)
