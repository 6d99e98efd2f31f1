"""The augmentation for other scanners (configs/augment_scanners.json) and its burned-in text transform."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from scripts.data.transforms import RandTextOverlayd

from adaqat.bundle_runner import load_workflow


def _sample(size: int = 128) -> dict:
    ramp = torch.linspace(0.1, 0.8, size)[None, :, None].expand(1, size, size).clone()  # darker than its peak almost everywhere
    image = MetaTensor(ramp, meta={"filename_or_obj": "x.png"})
    label = torch.zeros((1, size, size))
    label[:, 30:100, 20:60] = 1
    return {"image": image, "label": label}


def test_text_is_burned_into_the_image_only_near_the_border_and_reproducibly():
    burn = RandTextOverlayd(keys="image", prob=1.0).set_random_state(3)
    data = _sample()
    out = burn(data)
    changed = (out["image"] != data["image"]).numpy()[0]
    assert changed.any() and isinstance(out["image"], MetaTensor) and out["image"].meta["filename_or_obj"] == "x.png"
    assert torch.equal(out["label"], data["label"])  # the lungs did not move
    assert float(out["image"].max()) == float(data["image"].max())  # drawn in the image's brightest value
    centre = changed[32:96, 32:96]
    assert changed.sum() > 0 and centre.mean() < changed.mean()  # the words sit near an edge
    again = RandTextOverlayd(keys="image", prob=1.0).set_random_state(3)(_sample())
    assert torch.equal(again["image"], out["image"])
    assert torch.equal(RandTextOverlayd(keys="image", prob=0.0)(data)["image"], data["image"])


def test_augment_scanners_merges_onto_train_and_keeps_image_label_and_box_consistent(jsrt_dir):
    workflow = load_workflow(["train", "augment_scanners"], {"dataset_dir": str(jsrt_dir), "split#by": "image",
                                                             "limit": 4, "allow_random_encoder": True})
    parse = workflow.parser.get_parsed_content
    names = [type(t).__name__ for t in parse("train#augmentation").transforms]
    assert {"RandAffined", "RandAdjustContrastd", "RandGaussianNoised", "RandTextOverlayd"} <= set(names)
    dataset = parse("train#dataset")
    size = parse("input_size")
    for i in range(len(dataset)):
        item = dataset[i]
        image, label, box = item["image"], item["label"], item["box"]
        assert image.shape == label.shape == (1, size, size)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert set(np.unique(label.numpy())) <= {0.0, 1.0}
        assert box.shape == (4,) and 0 <= float(box[0]) < float(box[2]) <= size and 0 <= float(box[1]) < float(box[3]) <= size
