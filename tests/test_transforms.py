"""transforms: loading into MetaTensors and SAM box prompts in the current image's pixel coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.transforms import Compose, Resized
from PIL import Image
from scripts.data.boxes import box_from_mask, whole_image_box
from scripts.data.cxr_io import CXRInputError
from scripts.data.datasets import datalist_from_manifest
from scripts.data.transforms import BoxFromMaskd, LoadCXRd

H, W = 60, 80
TRUE_BOX = np.array([15, 10, 50, 30], np.float32)  # xyxy, exclusive ends


def rect_label(box=TRUE_BOX, h: int = H, w: int = W) -> torch.Tensor:
    label = torch.zeros(1, h, w)
    x0, y0, x1, y1 = (int(v) for v in box)
    label[0, y0:y1, x0:x1] = 1
    return label


def test_box_from_mask():
    label = rect_label()
    np.testing.assert_array_equal(box_from_mask(label), TRUE_BOX)  # torch (1, H, W) accepted
    np.testing.assert_array_equal(box_from_mask(label[0].numpy(), margin=5), TRUE_BOX + [-5, -5, 5, 5])
    np.testing.assert_array_equal(box_from_mask(label[0].numpy(), margin=100), [0, 0, W, H])  # clipped
    np.testing.assert_array_equal(box_from_mask(np.ones((H, W))), [0, 0, W, H])
    assert box_from_mask(np.zeros((H, W))) is None
    assert box_from_mask(np.full((H, W), 0.3)) is None  # below the 0.5 threshold of a resized mask
    assert box_from_mask(label).dtype == np.float32


def test_jittered_box_stays_within_20px_and_inside_image():
    t = BoxFromMaskd(jitter=(0, 20))
    t.set_random_state(seed=0)
    # one box in the middle and one touching the top-left border, where clipping matters
    for true in (TRUE_BOX, np.array([2, 0, 30, 25], np.float32)):
        label = rect_label(true)
        boxes = np.stack([t({"label": label})["box"].numpy() for _ in range(200)])
        assert boxes.dtype == np.float32 and boxes.shape == (200, 4)
        outward = (boxes - true) * [-1, -1, 1, 1]  # how far each side was pushed out
        limit = np.array([true[0], true[1], W - true[2], H - true[3]])  # room to the image border
        assert (outward >= 0).all() and (outward <= np.minimum(20, limit)).all()
        assert (boxes[:, [0, 1]] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
        free = limit >= 20  # unclipped sides see the whole 0..20 range, independently
        assert outward[:, free].min() == 0 and outward[:, free].max() == 20
        assert len({tuple(b) for b in boxes}) > 100


def test_box_seed_is_deterministic():
    a, b = BoxFromMaskd(), BoxFromMaskd()
    a.set_random_state(seed=7)
    b.set_random_state(seed=7)
    label = rect_label()
    assert all(torch.equal(a({"label": label})["box"], b({"label": label})["box"]) for _ in range(10))


def test_whole_image_box_cases():
    label = rect_label()
    always = BoxFromMaskd(whole_image_prob=1.0)
    assert always({"label": label})["box"].tolist() == [0, 0, W, H]
    empty = BoxFromMaskd()({"label": torch.zeros(1, H, W)})
    assert empty["box"].tolist() == [0, 0, W, H]
    box = whole_image_box(H, W)
    assert box.dtype == torch.float32 and box.tolist() == [0, 0, W, H]
    half = BoxFromMaskd(whole_image_prob=0.5)
    half.set_random_state(seed=1)
    n_whole = sum(half({"label": label})["box"].tolist() == [0, 0, W, H] for _ in range(200))
    assert 60 < n_whole < 140
    assert BoxFromMaskd(allow_missing_keys=True)({"image": 1}) == {"image": 1}
    with pytest.raises(KeyError):
        BoxFromMaskd()({"image": 1})


def test_load_real_jsrt(jsrt_dir):
    item = datalist_from_manifest(jsrt_dir / "manifest.csv")[0]
    d = LoadCXRd()(item)
    img, label = d["image"], d["label"]
    assert isinstance(img, MetaTensor) and isinstance(label, MetaTensor)
    assert img.shape == label.shape == (1, 224, 224)
    assert img.dtype == label.dtype == torch.float32
    assert img.meta["filename_or_obj"] == item["image"] and tuple(img.meta["spatial_shape"]) == (224, 224)
    assert label.meta["filename_or_obj"] == item["label"]
    assert set(torch.unique(label).tolist()) == {0.0, 1.0}
    assert label[0, :, :112].sum() > 500 and label[0, :, 112:].sum() > 500  # a lung in each half


def test_load_without_label_and_size_mismatch(tmp_path):
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(np.zeros((W, H), np.uint8)).save(tmp_path / "mask.png")
    d = LoadCXRd(allow_missing_keys=True)({"image": str(tmp_path / "img.png")})
    assert d["image"].shape == (1, H, W) and "label" not in d
    with pytest.raises(KeyError):
        LoadCXRd()({"image": str(tmp_path / "img.png")})
    with pytest.raises(CXRInputError, match=r"mask\.png.*img\.png"):
        LoadCXRd()({"image": str(tmp_path / "img.png"), "label": str(tmp_path / "mask.png")})


def test_pipeline_on_non_square_sample(sample_dir):
    items = [d for d in datalist_from_manifest(sample_dir / "manifest.csv") if "41182_2020_203_Fig3" in d["image"]]
    assert items, "non-square sample image expected in the manifest"
    pipeline = Compose(
        [
            LoadCXRd(),
            Resized(keys=("image", "label"), spatial_size=(128, 128), mode=("area", "nearest")),
            BoxFromMaskd(jitter=(0, 0)),
        ]
    )
    d = pipeline(items[0])
    assert d["image"].meta["spatial_shape"] == (512, 464)  # (H, W) of the file, before resizing
    np.testing.assert_array_equal(d["box"].numpy(), box_from_mask(d["label"]))  # box in resized coords
    assert d["box"][2] <= 128 and d["box"][3] <= 128
    batch = list_data_collate([d, d])
    assert batch["box"].shape == (2, 4) and batch["image"].shape == (2, 1, 128, 128)
