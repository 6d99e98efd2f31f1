"""Selective-precision sweep: layer groups, one-group quantization, the float-list choice, sizes, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from scripts.model.segmenter import SamSegmenter
from scripts.model_files.export import export_fp32
from scripts.quantization.fake_quant import FakeQuantLinear, fake_quantize_weight

from adaqat.bundle_runner import BUNDLE_ROOT, config_file
from adaqat.cli import build_parser, main, qat_bundle_args
from adaqat.sensitivity import (
    ADAPTER_PATTERN,
    check_keep_float,
    choose_keep_float,
    group_patterns,
    layer_groups,
    quantizable_layers,
    quantized,
    run_sweep,
)

SMALL_GROUPS = (
    [f"encoder.block{i}.{part}" for i in range(4) for part in ("qkv", "proj", "mlp")]
    + [f"decoder.layer{j}.{part}" for j in range(2)
       for part in ("self_attn", "cross_attn_token_to_image", "mlp", "cross_attn_image_to_token")]
    + ["decoder.final_attn"] + [f"decoder.hypernet{k}" for k in range(4)] + ["decoder.iou_head"]
)


@pytest.fixture(scope="module")
def small() -> SamSegmenter:
    torch.manual_seed(0)
    return SamSegmenter("small").eval()


@pytest.fixture(scope="module")
def fp32_file(small, tmp_path_factory) -> Path:
    return export_fp32(small, None, tmp_path_factory.mktemp("fp32") / "model.pt")


def test_every_quantizable_layer_is_in_exactly_one_named_group(small) -> None:
    groups = layer_groups(small)
    assert sorted(groups) == sorted(SMALL_GROUPS)
    layers = [name for members in groups.values() for name in members]
    assert sorted(layers) == sorted(quantizable_layers(small)) and len(layers) == len(set(layers)) == 63
    assert groups["encoder.block1.mlp"] == ["sam.image_encoder.blocks.1.mlp.lin1", "sam.image_encoder.blocks.1.mlp.lin2"]
    assert len(groups["decoder.layer0.self_attn"]) == 4 and len(groups["decoder.hypernet3"]) == 3
    # A group's globs select its own layers and nobody else's.
    import fnmatch

    for name, members in groups.items():
        patterns = group_patterns(members)
        matched = [layer for layer in layers if any(fnmatch.fnmatchcase(layer, p) for p in patterns)]
        assert matched == members, name


def test_quantizing_one_group_changes_only_that_groups_weights(small) -> None:
    before = {k: v.clone() for k, v in small.state_dict().items()}
    group = layer_groups(small)["encoder.block2.mlp"]
    with quantized(small, group):
        changed = []
        for name, module in small.named_modules():
            if isinstance(module, nn.Linear):
                effective = fake_quantize_weight(module.weight) if isinstance(module, FakeQuantLinear) else module.weight
                if not torch.equal(effective, before[f"{name}.weight"]):
                    changed.append(name)
        assert changed == group
    assert not any(isinstance(m, FakeQuantLinear) for m in small.modules())
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())


def _synthetic_sweep() -> dict:
    """FP32 file 100 kB, everything INT8 30 kB; group X saves X_bytes when kept float."""
    spec = {"a": (1.0, 10_000), "b": (0.5, 9_000), "c": (0.2, 2_000), "d": (-0.1, 1_000), "big": (0.8, 30_000)}
    groups = {}
    for name, (drop, saved) in spec.items():
        layer = f"sam.mask_decoder.{name}"
        groups[name] = {"drop": drop, "bytes_saved": saved, "layers": [layer], "layer_bytes_saved": {layer: saved},
                        "patterns": [f"*mask_decoder.{name}", f"*mask_decoder.{name}.*"]}
    return {"fp32_bytes": 100_000, "int8_all_bytes": 30_000, "groups": groups, "per_channel": True}


def test_choose_keep_float_keeps_the_most_harmful_groups_that_fit() -> None:
    sweep = _synthetic_sweep()
    choice = choose_keep_float(sweep, size_ratio=2.24)
    # a (drop 1.0) first: 40 kB; big (0.8) would make 70 kB -> skipped; b would make 49 kB (2.04x) -> skipped;
    # c fits (42 kB, 2.38x); d has no drop.
    assert choice["groups_kept"] == ["a", "c"]
    assert choice["groups_skipped_for_size"] == ["big", "b"]
    assert choice["predicted_bytes"] == 42_000 and choice["predicted_ratio"] >= 2.24
    assert choice["keep_float"][-1] == ADAPTER_PATTERN and "*mask_decoder.a" in choice["keep_float"]
    # A looser target lets the most harmful group in even when it is big.
    assert choose_keep_float(sweep, size_ratio=1.4)["groups_kept"][:2] == ["a", "big"]
    # max_drop: groups losing no more than it are quantized anyway.
    assert choose_keep_float(sweep, size_ratio=1.0, max_drop=0.6)["groups_kept"] == ["a", "big"]
    with pytest.raises(ValueError, match="out of reach"):
        choose_keep_float(sweep, size_ratio=3.5)


@pytest.fixture(scope="module")
def sweep(fp32_file, sample_dir, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("sweep")
    return run_sweep(fp32_file, sample_dir, out, limit=2), out


def test_sweep_records_every_group_and_its_real_bytes(sweep, small) -> None:
    result, out = sweep
    assert sorted(result["groups"]) == sorted(SMALL_GROUPS) and result["n_images"] == 2
    for name, group in result["groups"].items():
        assert group["drop"] == pytest.approx(result["float"]["dice"] - group["dice"])
        assert len(group["per_image"]) == 2
        expected = sum(3 * small.get_submodule(layer).weight.numel() - 4 * small.get_submodule(layer).out_features
                       for layer in group["layers"])
        assert group["bytes_saved"] == expected, name
    on_disk = json.loads((out / "sensitivity.json").read_text())
    assert on_disk["groups"].keys() == result["groups"].keys()
    assert len((out / "sensitivity.csv").read_text().splitlines()) == 3 + len(SMALL_GROUPS)  # header, float, all INT8
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="never on 'test'"):
        run_sweep(out / "unused.pt", out, out, split="test")


def test_measured_artefact_size_matches_the_prediction(sweep, fp32_file, sample_dir) -> None:
    result, out = sweep
    choice = choose_keep_float(result, size_ratio=2.24)
    checks = check_keep_float(fp32_file, sample_dir, out, {"sweep": choice["keep_float"],
                              "mixed": group_patterns(result["groups"]["encoder.block0.qkv"]["layers"]) + [ADAPTER_PATTERN]},
                              result, runtime=False)
    for check in checks.values():
        assert Path(check["artefact"]).is_file()
        assert check["measured_bytes"] == pytest.approx(check["predicted_bytes"], rel=0.01)
    assert checks["sweep"]["measured_ratio"] >= 2.24 * 0.99
    assert checks["sweep"]["predicted_bytes"] == choice["predicted_bytes"]


def test_cli_errors_name_the_missing_or_bad_model(tmp_path, sample_dir, capsys) -> None:
    missing = tmp_path / "no_such_model.pt"
    bad = tmp_path / "garbage_model.pt"
    bad.write_bytes(b"not a checkpoint")
    for path in (missing, bad):
        assert main(["sensitivity", "--model", str(path), "--data", str(sample_dir), "-o", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert path.name in err and "Traceback" not in err


def _stage2_network(overrides: dict, configs: list[str]) -> SamSegmenter:
    """What `adaqat qat` would build, without a stage-1 checkpoint or data (adapters freshly injected)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([config_file(c) for c in configs])
    parser.update({**overrides, "bundle_root": str(BUNDLE_ROOT), "init_checkpoint": None, "total_steps": 10,
                   "allow_random_encoder": True})
    return parser.get_parsed_content("network_def")


def test_keep_float_json_round_trips_into_qat(tmp_path, small) -> None:
    groups = layer_groups(small)
    chosen = ["encoder.block1.qkv", "decoder.layer0.mlp"]
    keep_float = [p for g in chosen for p in group_patterns(groups[g])] + [ADAPTER_PATTERN]
    path = tmp_path / "keep_float.json"
    path.write_text(json.dumps({"keep_float": keep_float, "predicted_ratio": 2.3}))
    args = build_parser().parse_args(["qat", "--stage1", "s1.pt", "-o", str(tmp_path / "q"), "--keep-float-file", str(path)])
    configs, overrides = qat_bundle_args(args)
    assert overrides["qat#keep_float"] == keep_float and "qat#per_channel" not in overrides
    network = _stage2_network(overrides, configs)
    # Adapters on the float-kept qkv stay (merged at export); every other quantizable layer is fake-quantized.
    assert any(".attn.qkv.lora_" in n for n, _ in network.named_parameters())
    expected = sorted(set(quantizable_layers(small)) - {layer for g in chosen for layer in groups[g]})
    assert sorted(network.quantized_layers) == expected
    assert network.qat_config == {"keep_float": keep_float, "per_channel": True, "activations": "dynamic_per_tensor"}

    bad = tmp_path / "bad_keep_float.json"
    bad.write_text(json.dumps({"keep": []}))
    args = build_parser().parse_args(["qat", "--stage1", "s1.pt", "-o", "q", "--keep-float-file", str(bad)])
    with pytest.raises(ValueError, match="bad_keep_float.json"):
        qat_bundle_args(args)


def test_sensitivity_help_lists_its_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sensitivity", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--data", "--size-ratio", "--split", "--prompt", "--split-by", "--seed", "--limit", "--max-drop"):
        assert option in text
    assert "test" not in text.split("--split ")[1].split("}")[0]  # the test split is not offered
