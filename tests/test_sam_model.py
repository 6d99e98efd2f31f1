"""SAM construction, official-checkpoint loading (local files in the official layout) and the wrapper."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from scripts.model.sam import (ARCHS, CheckpointError, arch_for, build_sam, infer_arch, load_sam_checkpoint,
                               read_state_dict)
from scripts.model.segmenter import SamSegmenter, refine_boxes


@pytest.fixture(scope="module")
def official_vit_b(tmp_path_factory) -> str:
    """A file laid out like sam_vit_b_01ec64.pth: segment-anything's own vit_b state dict, random weights."""
    from segment_anything import build_sam_vit_b

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_01ec64.pth"
    torch.save(build_sam_vit_b().state_dict(), path)
    return str(path)


def test_official_vit_b_checkpoint_loads_into_our_vit_b(official_vit_b):
    reference = torch.load(official_vit_b, weights_only=True)
    net = SamSegmenter("vit_b", checkpoint=official_vit_b)
    assert sum(p.numel() for p in net.sam.parameters()) == 93_735_472
    state = net.sam.state_dict()
    assert set(state) == set(reference)
    for key in ("image_encoder.pos_embed", "image_encoder.blocks.11.attn.qkv.weight", "mask_decoder.iou_token.weight"):
        assert torch.equal(state[key], reference[key])
    assert infer_arch(reference) == ARCHS["vit_b"]


def test_a_checkpoint_gives_its_arch_at_its_native_size_and_other_sizes_warn_once(official_vit_b, caplog):
    """No --arch needed: the file says ViT-B; 1024 px unless asked otherwise; a resample names both sizes."""
    from scripts.model.factory import build_network

    assert arch_for("auto", None, official_vit_b) == ARCHS["vit_b"] and ARCHS["vit_b"].image_size == 1024
    assert arch_for("auto", 512, official_vit_b).image_size == 512
    assert arch_for("auto", None, None) == ARCHS["small"]
    with caplog.at_level("WARNING"):
        net = build_network(sam_checkpoint=official_vit_b, image_size=512, train_encoder=True)
    warnings = [r.getMessage() for r in caplog.records if "resampled" in r.getMessage()]
    assert len(warnings) == 1 and "1024 px" in warnings[0] and "512 px" in warnings[0], warnings
    assert net.arch.embed_dim == 768 and net.image_size == 512
    with pytest.raises(ValueError, match="adapter training needs a pretrained SAM encoder"):
        build_network(adapter={"kind": "adalora", "init_r": 4, "target_r": 2, "total_step": 10})
    assert build_network(adapter={"kind": "adalora", "init_r": 4, "target_r": 2, "total_step": 10},
                         allow_random_encoder=True).image_size == 256  # only when a test asks for it


def test_official_checkpoint_at_another_input_size_resamples_position_embeddings(official_vit_b):
    net = SamSegmenter("vit_b", image_size=512, checkpoint=official_vit_b)
    assert net.sam.image_encoder.pos_embed.shape == (1, 32, 32, 768)
    # global-attention blocks see a 32x32 grid now; windowed blocks keep their 14x14 tables
    assert net.sam.image_encoder.blocks[2].attn.rel_pos_h.shape == (63, 64)
    assert net.sam.image_encoder.blocks[0].attn.rel_pos_h.shape == (27, 64)
    with torch.no_grad():
        out = net.eval()(torch.rand(1, 1, 200, 150))
    assert out.shape == (1, 1, 200, 150) and torch.isfinite(out).all()


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    state = build_sam("small").state_dict()
    del state["mask_decoder.iou_token.weight"]
    state["image_encoder.extra.weight"] = torch.zeros(3)
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(7, 7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_sam_checkpoint(build_sam("small"), path)
    message = str(err.value)
    assert str(path) in message
    assert "mask_decoder.iou_token.weight" in message and "image_encoder.extra.weight" in message
    assert "mask_decoder.mask_tokens.weight" in message and "(7, 7)" in message


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"image_encoder.pos_embed": _Exploit()}, handle)
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_state_dict(path)
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_wrapper_returns_logits_at_input_resolution_for_any_size_and_channels():
    torch.manual_seed(0)
    net = SamSegmenter("small", prompt_mode="whole").eval()
    with torch.no_grad():
        for shape in [(2, 1, 100, 123), (1, 3, 256, 256), (1, 4, 64, 300)]:
            out = net(torch.rand(*shape))
            assert out.shape == (shape[0], 1, shape[2], shape[3])
        boxes = torch.tensor([[10.0, 5.0, 90.0, 80.0], [0.0, 0.0, 123.0, 100.0]])
        with_box = net(torch.rand(2, 1, 100, 123), boxes)
        net.low_res_output = True
        low = net(torch.rand(2, 1, 100, 123))
    assert with_box.shape == (2, 1, 100, 123)
    assert low.shape == (2, 1, 64, 64)


def test_box_prompt_changes_the_prediction():
    torch.manual_seed(0)
    net = SamSegmenter("small", prompt_mode="box").eval()
    image = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        a = net(image, torch.tensor([[0.0, 0.0, 128.0, 128.0]]))
        b = net(image, torch.tensor([[10.0, 10.0, 40.0, 40.0]]))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="needs boxes"):
        net(image)


def test_refine_boxes_keeps_the_two_largest_components():
    logits = torch.full((1, 1, 64, 64), -5.0)
    logits[0, 0, 10:50, 5:25] = 5.0  # left lung
    logits[0, 0, 12:48, 35:58] = 5.0  # right lung
    logits[0, 0, 60:62, 60:62] = 5.0  # speck in the corner: must not widen the box
    box = refine_boxes(logits, margin_px=1.0, fallback=torch.zeros(1, 4))
    assert box.tolist() == [[4.0, 9.0, 59.0, 51.0]]
    empty = refine_boxes(torch.full((1, 1, 64, 64), -5.0), 1.0, torch.tensor([[0.0, 0.0, 64.0, 64.0]]))
    assert empty.tolist() == [[0.0, 0.0, 64.0, 64.0]]


def test_refine_boxes_keeps_components_tied_with_the_second_and_is_mirror_symmetric():
    """A first pass split into pieces of equal size keeps all of them: which one a sort returns first would
    decide the box (the torch and onnxruntime routes once disagreed on exactly that), and a mirrored image gets
    the mirrored box."""
    logits = torch.full((1, 1, 64, 64), -5.0)
    logits[0, 0, 2:30, 20:44] = 5.0  # largest
    logits[0, 0, 40:50, 4:14] = 5.0  # two of 100 pixels each, apart
    logits[0, 0, 40:50, 50:60] = 5.0
    box = refine_boxes(logits, margin_px=0.0, fallback=torch.zeros(1, 4))
    assert box.tolist() == [[4.0, 2.0, 60.0, 50.0]]
    mirrored = refine_boxes(logits.flip(-1), margin_px=0.0, fallback=torch.zeros(1, 4))
    assert mirrored.tolist() == [[64.0 - 60.0, 2.0, 64.0 - 4.0, 50.0]]
