"""Model files say what they are in their header, and one loader builds the right network from each kind."""

from __future__ import annotations

import pytest
import torch
from scripts.model.sam import CheckpointError
from scripts.model.segmenter import SamSegmenter
from scripts.model.unet import ResizingUNet
from scripts.model_files import header
from scripts.model_files.export import export_fp32, export_int8, export_unet
from scripts.model_files.load import load_model
from scripts.quantization.fake_quant import apply_fake_quant
from scripts.quantization.runtime_eager import Int8Linear


@pytest.fixture(scope="module")
def network() -> SamSegmenter:
    torch.manual_seed(0)
    return SamSegmenter("small", image_size=64, prompt_mode="whole").eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    image = torch.rand(1, 1, 80, 72, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(image)


def test_each_kind_is_written_with_its_header_and_loaded_by_the_one_loader(network, tmp_path):
    fp32 = export_fp32(network, None, tmp_path / "model.pt")
    stage2 = SamSegmenter(network.arch, prompt_mode="whole").eval()
    stage2.load_state_dict(network.state_dict())
    stage2.quantized_layers = apply_fake_quant(stage2, keep_float=["*qkv*"])
    int8 = export_int8(stage2, None, tmp_path / "model_int8.pt")
    unet = export_unet(ResizingUNet(image_size=64, channels=(4, 8), strides=(2,)), None, tmp_path / "unet.pt")
    assert [header.model_kind(p) for p in (fp32, int8, unet)] == [header.SAM_FP32, header.SAM_INT8, header.UNET]
    content = torch.load(fp32, weights_only=True)
    assert content["arch"]["image_size"] == 64 and set(content["model"]) == set(network.state_dict())

    loaded = load_model(fp32, runtime="eager")
    assert isinstance(loaded, SamSegmenter) and loaded.arch == network.arch and loaded.prompt_mode == "whole"
    torch.testing.assert_close(_logits(loaded), _logits(network))
    quantized = load_model(int8, runtime="eager")
    assert any(isinstance(m, Int8Linear) for m in quantized.modules())
    assert not isinstance(quantized.sam.image_encoder.blocks[0].attn.qkv, Int8Linear)  # kept float, as exported
    assert isinstance(load_model(unet), ResizingUNet)


def test_files_without_a_header_still_load(network, tmp_path):
    """Earlier versions wrote the FP32 model as a bare ``sam.``-prefixed state dict; official checkpoints have no
    prefix. Both are SAM state dicts to the loader, sized from their shapes."""
    legacy = tmp_path / "legacy_model.pt"
    torch.save({k: v.clone() for k, v in network.state_dict().items()}, legacy)
    official = tmp_path / "sam_official.pth"
    torch.save({k.removeprefix("sam."): v.clone() for k, v in network.state_dict().items()}, official)
    for path in (legacy, official):
        assert header.model_kind(path) == header.SAM_STATE_DICT
        loaded = load_model(path, prompt_mode="whole", runtime="eager")
        assert loaded.arch == network.arch
        torch.testing.assert_close(_logits(loaded), _logits(network))


def test_an_unknown_header_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "future.pt"
    torch.save({"format": "adaqat-sam-fp64", "model": {}}, path)
    with pytest.raises(CheckpointError, match=r"future\.pt: unknown model file format 'adaqat-sam-fp64'"):
        load_model(path)
    with pytest.raises(CheckpointError, match="model file not found"):
        load_model(tmp_path / "missing.pt")
