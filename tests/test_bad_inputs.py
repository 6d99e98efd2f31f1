"""The bad-input contract on every entry point: a correct result, or a clear error naming the file.

Entry points: the reader checks, the CLI (`adaqat infer`, `adaqat evaluate`), the bundle's inference
config run through MONAI's ConfigWorkflow, and the training data loading of `configs/train.json`.
In a batch, a bad file is reported and skipped, the others are processed, the run exits non-zero
and a summary lists the failures; users see no traceback unless they ask with `--debug`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_input_corpus import ENTRY_NAMES, HUGE_SIDE, Entry, build_corpus, write_manifest
from PIL import Image
from scripts.data.cxr_io import CXRInputError, read_mask
from scripts.data.input_screen import InputFailuresError, check_item, failures_path
from scripts.data.mask_write import default_mask_name

from adaqat.bundle_runner import root_cause, run_bundle

ADAQAT = Path(sys.executable).with_name("adaqat")
SOURCE = "JPCLN003"


@pytest.fixture(scope="module")
def corpus(jsrt_dir, tmp_path_factory) -> tuple[Path, list[Entry]]:
    folder = tmp_path_factory.mktemp("bad_inputs")
    entries = build_corpus(folder, jsrt_dir / "images" / f"{SOURCE}.png", jsrt_dir / "masks" / f"{SOURCE}.png")
    write_manifest(folder, entries)
    return folder, entries


def _ok(entries: list[Entry], masks_read: bool) -> list[Entry]:
    return [e for e in entries if e.expect == "ok" or (e.mask_problem and not masks_read)]


def _bad(entries: list[Entry], masks_read: bool) -> list[Entry]:
    return [e for e in entries if e not in _ok(entries, masks_read)]


def _assert_reported(text: str, bad: list[Entry]) -> None:
    """Each bad file is named on a line that also says what is wrong with it."""
    for entry in bad:
        lines = [ln for ln in text.splitlines() if str(entry.bad_file) in ln]
        assert lines, f"{entry.name}: {entry.bad_file} not named in\n{text}"
        assert any(re.search(entry.expect, ln) for ln in lines), f"{entry.name}: no line matches {entry.expect!r}"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(1, a.sum() + b.sum())


def _predicted(out_dir: Path, entry: Entry) -> np.ndarray:
    return read_mask(out_dir / default_mask_name(entry.image))


def _check_masks(out_dir: Path, entries: list[Entry]) -> None:
    """Every good input has its mask, in its own size; other encodings of the same radiograph give the same lungs."""
    by_name = {e.name: e for e in entries}
    reference = _predicted(out_dir, by_name["good"])
    assert 0.15 < reference.mean() < 0.6, "the trained model should find lungs in a real radiograph"
    for entry in _ok(entries, masks_read=False):
        mask = _predicted(out_dir, entry)
        if entry.name == "huge_8000":
            assert mask.shape == (HUGE_SIDE, HUGE_SIDE)
            mask = np.asarray(Image.fromarray(mask * 255).resize(reference.shape[::-1], Image.NEAREST)) > 0
            assert _dice(mask, reference) > 0.95, entry.name
        else:
            assert mask.shape == reference.shape, entry.name
            assert _dice(mask, reference) > 0.97, entry.name
    failed = json.loads(failures_path(out_dir, "inputs").read_text())
    assert sorted(f["path"] for f in failed["failures"]) == sorted(str(e.image) for e in _bad(entries, False))


@pytest.mark.parametrize("name", ENTRY_NAMES)
def test_reader_checks_give_the_expected_outcome(corpus, name):
    entry = next(e for e in corpus[1] if e.name == name)
    if entry.expect == "ok":
        check_item({"image": str(entry.image), "label": str(entry.mask)})
    else:
        with pytest.raises(CXRInputError) as info:
            check_item({"image": str(entry.image), "label": str(entry.mask)})
        assert str(entry.bad_file) in str(info.value) and re.search(entry.expect, str(info.value))


def test_corpus_holds_every_entry_once_with_distinct_files(corpus):
    _, entries = corpus
    assert tuple(e.name for e in entries) == ENTRY_NAMES
    assert len({e.bad_file for e in entries}) == len(entries) and all(e.bad_file.is_file() for e in entries)


@pytest.mark.e2e
def test_cli_infer_skips_bad_files_processes_the_rest_and_exits_non_zero(corpus, shipped_models, tmp_path):
    folder, entries = corpus
    out = tmp_path / "masks"
    result = subprocess.run([str(ADAQAT), "infer", str(folder / "images"), "-o", str(out), "--model", str(shipped_models["fp32"])],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    bad = _bad(entries, masks_read=False)
    assert f"{len(bad)} of {len(entries)} inputs failed and were skipped" in result.stderr
    _assert_reported(result.stderr, bad)
    _check_masks(out, entries)


@pytest.mark.e2e
def test_cli_debug_shows_the_traceback(corpus, shipped_models, tmp_path):
    folder, entries = corpus
    zero = next(e for e in entries if e.name == "zero_byte")
    result = subprocess.run([str(ADAQAT), "--debug", "infer", str(zero.image), "-o", str(tmp_path), "--model", str(shipped_models["fp32"])],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode != 0 and "Traceback" in result.stderr and "zero_byte.png" in result.stderr


@pytest.mark.e2e
def test_bundle_inference_config_processes_good_files_then_raises_with_the_summary(corpus, shipped_models, tmp_path):
    folder, entries = corpus
    out = tmp_path / "bundle_masks"
    with pytest.raises(Exception) as info:
        run_bundle(["inference"], {"dataset_dir": str(folder / "images"), "output_dir": str(out),
                                   "model_path": str(shipped_models["int8"]), "device": "$torch.device('cpu')"},
                   workflow_type="infer")
    error = root_cause(info.value)
    assert isinstance(error, InputFailuresError)
    _assert_reported(str(error), _bad(entries, masks_read=False))
    _check_masks(out, entries)


@pytest.mark.e2e
def test_cli_evaluate_scores_good_pairs_and_lists_bad_images_and_masks(corpus, shipped_models, tmp_path):
    folder, entries = corpus
    out = tmp_path / "eval"
    result = subprocess.run([str(ADAQAT), "evaluate", "--data", str(folder), "--split", "all", "--model", str(shipped_models["fp32"]),
                             "-o", str(out)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    bad = _bad(entries, masks_read=True)
    assert f"{len(bad)} of {len(entries)} eval failed and were skipped" in result.stderr
    _assert_reported(result.stderr, bad)
    rows = (out / "metrics.csv").read_text().strip().splitlines()[1:]
    good = _ok(entries, masks_read=True)
    assert len(rows) == len(good)
    dice = {row.split(",")[0]: float(row.split(",")[1]) for row in rows}
    assert min(dice.values()) > 0.85, dice  # every encoding of the real radiograph is segmented well


def test_training_data_loading_skips_bad_pairs_and_loads_the_rest(corpus, tmp_path):
    from monai.bundle import ConfigWorkflow

    from adaqat.bundle_runner import BUNDLE_ROOT, CONFIG_DIR

    folder, entries = corpus
    workflow = ConfigWorkflow(config_file=str(CONFIG_DIR / "train.json"), workflow_type="train", bundle_root=str(BUNDLE_ROOT),
                              dataset_dir=str(folder), run_dir=str(tmp_path), **{"split#fractions": [1.0, 0.0, 0.0], "split#by": "image"})
    workflow.initialize()
    dataset = workflow.parser.get_parsed_content("train#dataset")
    good, bad = _ok(entries, masks_read=True), _bad(entries, masks_read=True)
    assert len(dataset) == len(good)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(good))))
    assert batch["image"].shape == (len(good), 1, 256, 256) and batch["label"].sum() > 0
    report = json.loads(failures_path(tmp_path, "train").read_text())
    assert report["n_inputs"] == len(entries) and report["n_usable"] == len(good)
    _assert_reported("\n".join(f["problem"] for f in report["failures"]), bad)


def test_a_batch_where_every_file_is_bad_stops_before_loading_a_model(corpus, tmp_path):
    folder, entries = corpus
    bad = [str(e.image) for e in entries if e.name in ("zero_byte", "all_black")]
    with pytest.raises(Exception) as info:
        run_bundle(["inference"], {"dataset_dir": bad, "output_dir": str(tmp_path), "model_path": str(tmp_path / "absent.pt")},
                   workflow_type="infer")
    error = root_cause(info.value)
    assert isinstance(error, InputFailuresError) and "none of the 2 inputs can be used" in str(error)
