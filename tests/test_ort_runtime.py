"""The onnxruntime image-encoder route: same outputs as eager, the artefact's own int8 weights, safe caching."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import optional_module

onnx = optional_module("onnx", "the onnxruntime route needs onnx")
optional_module("onnxruntime", "the onnxruntime route")

from scripts.model.factory import PAPER_KEEP_FLOAT  # noqa: E402
from scripts.model.segmenter import SamSegmenter  # noqa: E402
from scripts.model_files import load as loader  # noqa: E402
from scripts.model_files.load import load_model  # noqa: E402
from scripts.quantization import runtime_onnx as ort_runtime  # noqa: E402
from scripts.quantization.int8_artefact import load_int8_artefact  # noqa: E402
from scripts.quantization.runtime_onnx import OrtImageEncoder  # noqa: E402

from adaqat.benchmark import write_model_files  # noqa: E402


def write_models(network: SamSegmenter, folder: Path) -> dict[str, Path]:
    """The FP32 model file and the INT8 artefact (paper's float-kept qkv) of ``network``."""
    return write_model_files(network, folder, PAPER_KEEP_FLOAT)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    return write_models(SamSegmenter("small", prompt_mode="whole").eval(), tmp_path_factory.mktemp("ort"))


def image(size: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_fp32_encoder_matches_eager_tightly(models: dict[str, Path]) -> None:
    eager = load_model(models["fp32"], runtime="eager")
    ort = load_model(models["fp32"], runtime="ort")
    assert isinstance(ort.sam.image_encoder, OrtImageEncoder)
    x = eager.preprocess(torch.cat([image(seed=1), image(seed=2)]))  # batch of 2: run image by image
    with torch.no_grad():
        a, b = eager.sam.image_encoder(x), ort.sam.image_encoder(x)
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < 1e-4 * a.abs().max().item()
    with torch.no_grad():
        torch.testing.assert_close(ort(image()), eager(image()), atol=1e-3, rtol=1e-3)


def test_int8_onnx_holds_the_artefacts_int8_weights_and_float_kept_layers_stay_float(models: dict[str, Path]) -> None:
    network = load_model(models["int8"], runtime="ort")
    model = onnx.load(network.sam.image_encoder.onnx_path)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    artefact = load_int8_artefact(models["int8"])
    state = artefact["state_dict"]
    encoder_layers = [n for n in artefact["quantized_layers"] if n.startswith("sam.image_encoder.")]
    assert encoder_layers and not any(".attn.qkv" in n for n in encoder_layers)
    integer_nodes = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert len(integer_nodes) == len(encoder_layers)  # exactly the artefact's layers; qkv and attention stay float
    for name in encoder_layers:
        q = state[f"{name}.weight_int8"].numpy().T  # MatMul weights are [K, N]
        scale = state[f"{name}.weight_scale"].numpy()
        matches = [k for k, v in inits.items() if v.dtype == np.int8 and v.shape == q.shape and np.array_equal(v, q)]
        assert len(matches) == 1, name
        stem = matches[0].removesuffix("_quantized")
        np.testing.assert_allclose(inits[f"{stem}_scale"], scale, rtol=1e-6)
        assert not inits[f"{stem}_zero_point"].any()  # symmetric


def test_stale_onnx_is_rebuilt_not_used(models: dict[str, Path], tmp_path: Path, caplog) -> None:
    torch.manual_seed(1)
    files = write_models(SamSegmenter("small", prompt_mode="whole").eval(), tmp_path)
    first = load_model(files["fp32"], runtime="ort").sam.image_encoder.onnx_path
    torch.manual_seed(2)
    write_models(SamSegmenter("small", prompt_mode="whole").eval(), tmp_path)  # the model file changes
    with caplog.at_level(logging.INFO, logger="scripts.quantization.runtime_onnx"):
        ort = load_model(files["fp32"], runtime="ort")
    assert ort.sam.image_encoder.onnx_path == first
    assert "rebuilding" in caplog.text
    eager = load_model(files["fp32"], runtime="eager")
    with torch.no_grad():
        torch.testing.assert_close(ort(image()), eager(image()), atol=1e-3, rtol=1e-3)


def test_read_only_model_folder_caches_elsewhere(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "ro"
    torch.manual_seed(3)
    files = write_models(SamSegmenter("small", prompt_mode="whole").eval(), folder)
    monkeypatch.setenv("ADAQAT_CACHE", str(tmp_path / "cache"))
    real_build = ort_runtime.build_encoder_onnx

    def read_only_beside_model(encoder, image_size, path, *args, **kwargs):
        # Simulated: the tests may run as root, who can write any folder.
        if Path(path).parent == folder:
            raise PermissionError(f"{path}: read-only")
        return real_build(encoder, image_size, path, *args, **kwargs)

    monkeypatch.setattr(ort_runtime, "build_encoder_onnx", read_only_beside_model)
    path = Path(load_model(files["fp32"], runtime="ort").sam.image_encoder.onnx_path)
    assert path.parent == tmp_path / "cache" / "onnx"
    assert not list(folder.glob("*.onnx"))


def test_forced_eager_builds_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    torch.manual_seed(4)
    files = write_models(SamSegmenter("small", prompt_mode="whole").eval(), tmp_path)
    network = load_model(files["int8"], runtime="eager")
    assert not isinstance(network.sam.image_encoder, OrtImageEncoder)
    assert not list(tmp_path.glob("*.onnx"))


def test_auto_runs_small_encoders_eager_and_large_ones_wholly_in_onnxruntime(models: dict[str, Path], monkeypatch) -> None:
    """The fastest routes measured (docs/results/benchmark.md): eager for the small SAM, the whole segmenter in
    onnxruntime for ViT-B; ``ort`` by name still swaps only the encoder."""
    from scripts.model.sam import ARCHS

    small, vit_b = loader.encoder_work(load_model(models["fp32"], runtime="eager").arch), loader.encoder_work(ARCHS["vit_b"])
    assert small < loader.ORT_MIN_ENCODER_WORK <= vit_b
    assert not isinstance(load_model(models["int8"]).sam.image_encoder, OrtImageEncoder)
    monkeypatch.setattr(loader, "ORT_MIN_ENCODER_WORK", small)  # as if the small SAM were big enough
    assert isinstance(load_model(models["int8"]), loader.OnnxSegmenterModule)
    assert isinstance(load_model(models["int8"], runtime="ort").sam.image_encoder, OrtImageEncoder)


def test_auto_falls_back_to_eager_with_one_log_line_when_the_onnx_segmenter_fails(models: dict[str, Path], monkeypatch,
                                                                                   caplog) -> None:
    monkeypatch.setattr(loader, "ORT_MIN_ENCODER_WORK", 0)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(loader, "use_onnx_segmenter", broken)
    with caplog.at_level(logging.WARNING):
        network = load_model(models["int8"])
    assert isinstance(network, SamSegmenter)
    assert [r.getMessage() for r in caplog.records if "disk full" in r.getMessage()] != []


def test_missing_onnxruntime_falls_back_to_eager_with_one_log_line(models: dict[str, Path], monkeypatch, caplog) -> None:
    monkeypatch.setattr(loader, "ORT_MIN_ENCODER_WORK", 0)  # auto would pick onnxruntime for this model
    monkeypatch.setattr(ort_runtime, "available", lambda: False)
    with caplog.at_level(logging.WARNING):
        network = load_model(models["int8"])
    assert not isinstance(network.sam.image_encoder, OrtImageEncoder)
    assert len([r for r in caplog.records if "onnxruntime" in r.getMessage()]) == 1
    assert loader.resolve_runtime("auto", "cpu") == "eager"
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_model(models["int8"], runtime="tensorrt")
    for asked in ("ort", "onnx"):  # asked for by name, a missing onnxruntime is an error that says what to do
        with pytest.raises(ValueError, match=f"runtime '{asked}' needs onnxruntime"):
            load_model(models["int8"], runtime=asked)


@pytest.mark.e2e
def test_int8_masks_agree_between_eager_and_ort_on_a_real_jsrt_image(shipped_models, jsrt_dir) -> None:
    from PIL import Image

    eager = load_model(shipped_models["int8"], runtime="eager")
    ort = load_model(shipped_models["int8"], runtime="ort")
    dices = []
    for name in ("JPCLN001", "JPCNN010"):
        pixels = np.asarray(Image.open(jsrt_dir / "images" / f"{name}.png").convert("L"), dtype=np.float32) / 255.0
        x = torch.from_numpy(pixels)[None, None]
        with torch.no_grad():
            a, b = eager(x) > 0, ort(x) > 0
        assert a.sum() > 0.1 * a.numel()  # the trained model does find lungs
        dices.append(2 * (a & b).sum().item() / (a.sum() + b.sum()).item())
    assert min(dices) > 0.99, dices
