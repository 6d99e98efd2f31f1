"""datasets: datalists from folders and manifests, and leak-free deterministic splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scripts.data.cxr_io import CXRInputError
from scripts.data.datasets import (
    datalist_from_folder,
    datalist_from_manifest,
    load_datalist,
    select_split,
    split_datalist,
)


def touch_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    return path


def test_folder_matches_by_stem(tmp_path):
    for name in ("a.png", "b.png", "c.dcm", "d.nii.gz"):
        (tmp_path / "images" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "images" / name).write_bytes(b"x")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    for name in ("a.png", "b_mask.png", "c.png", "d_mask.nii.gz"):  # only names matter here
        (tmp_path / "masks" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "masks" / name).write_bytes(b"x")
    dl = datalist_from_folder(tmp_path / "images", tmp_path / "masks")
    assert [(Path(d["image"]).name, Path(d["label"]).name) for d in dl] == [
        ("a.png", "a.png"), ("b.png", "b_mask.png"), ("c.dcm", "c.png"), ("d.nii.gz", "d_mask.nii.gz"),
    ]
    assert all(Path(d["image"]).is_absolute() for d in dl)
    assert [Path(d["image"]).name for d in datalist_from_folder(tmp_path / "images")] == ["a.png", "b.png", "c.dcm", "d.nii.gz"]


def test_folder_errors(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        touch_png(tmp_path / "images" / name)
    touch_png(tmp_path / "masks" / "a.png")
    touch_png(tmp_path / "masks" / "a_mask.png")
    touch_png(tmp_path / "masks" / "b.png")
    with pytest.raises(CXRInputError, match=r"no mask.*c\.png"):
        datalist_from_folder(tmp_path / "images", tmp_path / "masks")
    touch_png(tmp_path / "masks" / "c.png")
    with pytest.raises(CXRInputError, match=r"more than one mask.*a\.png"):
        datalist_from_folder(tmp_path / "images", tmp_path / "masks")


def test_masks_beside_images(tmp_path):
    touch_png(tmp_path / "x.png")
    touch_png(tmp_path / "x_mask.png")
    dl = datalist_from_folder(tmp_path, tmp_path)
    assert [(Path(d["image"]).name, Path(d["label"]).name) for d in dl] == [("x.png", "x_mask.png")]


def write_manifest(root: Path, rows: list[str], header: str = "image,mask,PatientID") -> Path:
    path = root / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_manifest_resolves_paths_and_patient(tmp_path):
    touch_png(tmp_path / "images" / "a.png")
    touch_png(tmp_path / "masks" / "a.png")
    touch_png(tmp_path / "images" / "b.png")
    csv_path = write_manifest(tmp_path, ["images/a.png,masks/a.png,p1", f"{tmp_path}/images/b.png,,"])
    dl = datalist_from_manifest(csv_path)
    assert dl[0] == {"image": str(tmp_path / "images/a.png"), "label": str(tmp_path / "masks/a.png"), "patient": "p1"}
    assert dl[1] == {"image": str(tmp_path / "images/b.png")}  # absolute inside the folder is fine


@pytest.mark.parametrize("bad", ["../outside.png", "images/../../outside.png", "/etc/passwd"])
def test_manifest_refuses_paths_outside_its_folder(tmp_path, bad):
    root = tmp_path / "ds"
    touch_png(root / "images" / "a.png")
    touch_png(tmp_path / "outside.png")
    csv_path = write_manifest(root, [f"images/a.png,{bad},p1"])
    with pytest.raises(CXRInputError, match=r"manifest\.csv.*row 2.*outside"):
        datalist_from_manifest(csv_path)


def test_manifest_errors(tmp_path):
    with pytest.raises(CXRInputError, match=r"no 'image' column"):
        datalist_from_manifest(write_manifest(tmp_path, ["a.png"], header="picture"))
    with pytest.raises(CXRInputError, match=r"do not exist.*missing\.png"):
        datalist_from_manifest(write_manifest(tmp_path, ["missing.png,,"]))


def test_load_datalist(tmp_path, jsrt_dir):
    dl = load_datalist(jsrt_dir)
    assert len(dl) == 247 and all(Path(d["label"]).is_file() for d in dl[:5])
    touch_png(tmp_path / "images" / "a.png")
    touch_png(tmp_path / "masks" / "a_mask.png")
    assert Path(load_datalist(tmp_path)[0]["label"]).name == "a_mask.png"
    with pytest.raises(CXRInputError, match="no manifest.csv"):
        load_datalist(tmp_path / "images")


def test_sample_split_keeps_patients_together(sample_dir):
    dl = load_datalist(sample_dir)
    assert all("patient" in d for d in dl)
    splits = split_datalist(dl, seed=42)
    assert set(splits) == {"train", "val", "test"} and all(splits.values())
    patients = {name: {d["patient"] for d in items} for name, items in splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sorted(d["image"] for items in splits.values() for d in items) == sorted(d["image"] for d in dl)
    shuffled = split_datalist(list(reversed(dl)), seed=42)  # groups are sorted: input order does not matter
    assert all({d["image"] for d in shuffled[k]} == {d["image"] for d in splits[k]} for k in splits)
    assert split_datalist(dl, seed=42) == splits  # deterministic
    assert split_datalist(dl, seed=1) != splits


def test_split_by_image_and_small_lists(jsrt_dir):
    dl = load_datalist(jsrt_dir)
    splits = split_datalist(dl, fractions=(0.8, 0.1, 0.1), seed=0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [197, 25, 25]
    for n in (3, 4, 5):
        small = split_datalist(dl[:n])
        assert all(small[k] for k in ("train", "val", "test")), n
        assert sum(len(v) for v in small.values()) == n
    two = split_datalist(dl[:2])
    assert sum(len(v) for v in two.values()) == 2
    with pytest.raises(ValueError, match="by must be"):
        split_datalist(dl, by="site")


def test_select_split(jsrt_dir):
    val = select_split(jsrt_dir, "val", limit=4)
    assert len(val) == 4 and val == split_datalist(load_datalist(jsrt_dir))["val"][:4]
    assert len(select_split(jsrt_dir, "all")) == 247
    with pytest.raises(ValueError, match="split must be"):
        select_split(jsrt_dir, "training")


def test_inference_datalist_attaches_a_valid_user_box(tmp_path):
    from scripts.data.datasets import inference_datalist

    image = tmp_path / "a.png"
    image.write_bytes(b"")
    items = inference_datalist([str(image)], box=[1, 2, 30, 40])
    assert items[0]["box"].tolist() == [1.0, 2.0, 30.0, 40.0]
    with pytest.raises(ValueError, match="x0 < x1"):
        inference_datalist([str(image)], box=[30, 2, 1, 40])
