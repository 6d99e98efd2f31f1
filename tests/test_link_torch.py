"""scripts/link_torch.py: the other environments share .venv's torch files instead of a second 5.5 GB copy."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LINK = [sys.executable, str(REPO / "scripts" / "link_torch.py")]


@pytest.fixture(scope="module")
def linked_venv():  # noqa: ANN201 (a generator fixture)
    # beside .venv, as the real targets are: hard links cannot cross file systems, and /tmp may be another
    venv = Path(tempfile.mkdtemp(prefix=".venv-link-test-", dir=REPO)) / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        out = subprocess.run(LINK + [str(venv)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "torch==" in out.stderr and "torchvision==" in out.stderr
        yield venv
    finally:
        shutil.rmtree(venv.parent)


def test_the_closure_follows_torch_and_stops_at_torchvisions_own_deps():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from link_torch import closure
    finally:
        sys.path.remove(str(REPO / "scripts"))
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    names = set(closure())
    assert {"torch", "torchvision", "sympy", "filelock"} <= names
    # every requirement of torch that applies here (markers true, no extra asked) is followed...
    direct = [Requirement(r) for r in requires("torch")]
    assert {r.name.lower() for r in direct if r.marker is None or r.marker.evaluate({"extra": ""})} <= names
    # ...and so is what only an extra brings (torch asks for cuda-toolkit[cublas,...] on Linux)
    if "cuda-toolkit" in names:
        assert "nvidia-cublas" in names
    assert "numpy" not in names and "pillow" not in names  # the target's own pins decide those


def test_linked_files_share_the_source_inodes_and_torch_imports(linked_venv):
    src = Path(torch.__file__)
    rel = src.relative_to(src.parents[1])
    dst = next(linked_venv.glob(f"lib/python3*/site-packages/{rel}"))
    assert dst.stat().st_ino == src.stat().st_ino
    assert any(linked_venv.glob("lib/python3*/site-packages/torchvision-*.dist-info/RECORD"))
    # torchvision imports numpy, which the target's own install brings; torch alone runs as linked
    code = "import torch; print(torch.__version__, float(torch.ones(3).sum()))"
    out = subprocess.run([str(linked_venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [torch.__version__, "3.0"]


def test_a_target_that_has_torch_is_left_alone(linked_venv):
    before = sorted(p.name for p in next(linked_venv.glob("lib/python3*/site-packages")).iterdir())
    out = subprocess.run(LINK + [str(linked_venv)], capture_output=True, text=True)
    assert out.returncode != 0 and "already has torch" in out.stderr
    assert sorted(p.name for p in next(linked_venv.glob("lib/python3*/site-packages")).iterdir()) == before
