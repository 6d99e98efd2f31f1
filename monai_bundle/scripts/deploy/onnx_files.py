"""The ONNX form of a model file: where its two graphs live, what they record, and opening them (no torch here).

A model file ``model_int8.pt`` has two ONNX graphs beside it (or, where that folder is read-only, in
``$ADAQAT_CACHE``, default ``~/.cache/adaqat/onnx``, prefixed with the model's hash):
``model_int8.encoder-256.onnx`` (image ``1 x 3 x S x S``, SAM-normalised -> embedding) and
``model_int8.decoder-256.onnx`` (embedding, box ``1 x 4`` in SAM input pixels -> low-resolution logits and SAM's
IoU prediction). Each records the SHA-256 of the model file it was made from, so a graph of another version is
never used. ``scripts.quantization.runtime_onnx`` writes them (with torch); everything here runs without torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .threads import worker_threads

PARTS = ("encoder", "decoder")
META_SOURCE = "adaqat.source_sha256"
META_IMAGE_SIZE = "adaqat.image_size"
META_LAYOUT = "adaqat.onnx_layout_version"
META_PREPROCESSING = "adaqat.pixel_mean_std"  # encoder: SAM's normalisation, JSON [[mean x3], [std x3]]
META_SEGMENTER = "adaqat.segmenter"  # decoder: JSON {"prompt_mode", "refine_margin"} of the model
LAYOUT_VERSION = "3"  # 2: 7-bit activations; 3: the decoder graph and its metadata


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_folder() -> Path:
    return Path(os.environ.get("ADAQAT_CACHE") or Path.home() / ".cache" / "adaqat") / "onnx"


def candidates(model_path: str | os.PathLike, part: str, image_size: int, source_sha256: str) -> list[Path]:
    """Where one graph of ``model_path`` may live: beside the model, then the user cache (keyed by the hash)."""
    model_path = Path(model_path)
    name = f"{model_path.stem}.{part}-{image_size}.onnx"
    return [model_path.with_name(name), cache_folder() / f"{source_sha256[:16]}-{name}"]


def open_session(path: str | os.PathLike, threads: int | None = None, profile_prefix: str | None = None) -> Any:
    """An onnxruntime CPU session with every graph optimisation, ``threads`` intra-op threads (default: all cores,
    or this worker's share of them under ``torchrun``: ``threads.worker_threads``).

    No memory arena and no memory pattern: with them, a ViT-B encoder at 1024 px kept every run's largest
    buffers and grew from 3.5 to 6.7 GB resident over three runs (measured ad hoc, issue 14); without them it stays at the one
    run's peak, at the same speed.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = threads or worker_threads()
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    if profile_prefix:  # onnxruntime's per-kernel profiler (adaqat.op_profile)
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(os.fspath(path), sess_options=options, providers=["CPUExecutionProvider"])


def metadata(session: Any) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def is_current(session: Any, source_sha256: str, image_size: int | None = None) -> bool:
    """Whether an opened graph was made from the model whose hash is ``source_sha256`` by this layout version."""
    meta = metadata(session)
    return (meta.get(META_SOURCE) == source_sha256 and meta.get(META_LAYOUT) == LAYOUT_VERSION
            and (image_size is None or meta.get(META_IMAGE_SIZE) == str(image_size)))


def find_current(model_path: str | os.PathLike, part: str, threads: int | None = None,
                 image_size: int | None = None, source_sha256: str | None = None) -> tuple[Any, Path] | None:
    """The session and path of a current graph ``part`` of ``model_path`` (any image size unless one is given)."""
    source = source_sha256 or file_sha256(model_path)
    model_path = Path(model_path)
    pattern = f"{model_path.stem}.{part}-{image_size if image_size else '*'}.onnx"
    found = sorted(model_path.parent.glob(pattern)) + sorted(cache_folder().glob(f"{source[:16]}-{pattern}"))
    for path in found:
        try:
            session = open_session(path, threads)
        except Exception:  # a damaged file is skipped; the caller rebuilds or reports
            continue
        if is_current(session, source, image_size):
            return session, path
    return None


def json_meta(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


__all__ = ["LAYOUT_VERSION", "META_IMAGE_SIZE", "META_LAYOUT", "META_PREPROCESSING", "META_SEGMENTER", "META_SOURCE",
           "PARTS", "cache_folder", "candidates", "file_sha256", "find_current", "is_current", "json_meta", "metadata",
           "open_session"]
