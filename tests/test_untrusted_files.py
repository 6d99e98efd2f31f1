"""Checkpoints from strangers: every way a user hands us a weight file refuses a malicious pickle, and
nothing in it runs. A source scan keeps every ``torch.load`` in the project on ``weights_only=True``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from scripts.model_files.load import load_model

from adaqat.bundle_runner import root_cause, run_bundle

ADAQAT = Path(sys.executable).with_name("adaqat")


class _Payload:
    """Unpickling this calls ``os.makedirs(target)``: a visible side effect if the pickle is ever run."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return os.makedirs, (self.target,)


@pytest.fixture()
def evil(tmp_path: Path) -> tuple[Path, Path]:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"image_encoder.pos_embed": torch.zeros(1)}, "x": _Payload(target)}, path)
    return path, target


def test_the_payload_is_real(evil):
    path, target = evil
    with open(path, "rb"):
        torch.load(path, weights_only=False)  # what an unsafe loader would do
    assert target.is_dir()


def test_load_model_refuses_it(evil):
    path, target = evil
    with pytest.raises(Exception, match="evil.pt"):
        load_model(path)
    assert not target.exists()


def test_cli_infer_refuses_it_in_one_line(evil, jsrt_dir, tmp_path):
    path, target = evil
    result = subprocess.run([str(ADAQAT), "infer", str(jsrt_dir / "images" / "JPCLN001.png"), "-o", str(tmp_path / "out"),
                             "--model", str(path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and "evil.pt" in result.stderr and "Traceback" not in result.stderr
    assert not target.exists()


@pytest.mark.parametrize("override", ["resume_from", "sam_checkpoint", "init_checkpoint"])
def test_training_refuses_it_as_resume_point_or_starting_weights(evil, jsrt_dir, tmp_path, override):
    path, target = evil
    with pytest.raises(Exception) as info:
        run_bundle(["train"], {"dataset_dir": str(jsrt_dir), "limit": 2, "num_epochs": 1, "split#by": "image",
                               "run_dir": str(tmp_path / "run"), "export_path": str(tmp_path / "model.pt"),
                               "allow_random_encoder": True,  # so the refusal is the file's, not the missing encoder's
                               override: str(path)})
    assert "weights_only" in str(root_cause(info.value)) or "evil.pt" in str(root_cause(info.value))
    assert not target.exists()


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node


def test_every_torch_load_in_the_product_is_weights_only():
    """Product code only: tests load payloads unsafely on purpose, to show they are real."""
    skip = {"tests", "build", "runs"}
    sources = [p for p in REPO.rglob("*.py") if not any(part.startswith(".") or part in skip for part in p.relative_to(REPO).parts)]
    unsafe = []
    for path in sources:
        for call in _torch_load_calls(ast.parse(path.read_text(), str(path))):
            flag = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                unsafe.append(f"{path.relative_to(REPO)}:{call.lineno}")
        text = path.read_text()
        if "pickle.load(" in text or "allow_pickle=True" in text:
            unsafe.append(f"{path.relative_to(REPO)}: pickle")
    assert sources and not unsafe, unsafe
