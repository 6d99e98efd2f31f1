"""The segmenter without PyTorch: the two ONNX graphs of a model file in onnxruntime, everything around them numpy.

It computes what ``scripts.model.segmenter.SamSegmenter`` and the inference config's post-processing compute:
the image resized to SAM's input (bilinear, antialiased) and normalised; the encoder; the decoder with a box in
SAM pixels (the whole image, a box given in image pixels, and for ``two_pass`` a second box around the two
largest components of the first mask, pushed out by ``refine_margin``); logits upsampled to the image
(bilinear); mask = logits >= 0 (sigmoid >= 0.5), the two largest 8-connected components, holes filled.

    python -m scripts.deploy.predictor IMAGE... -o OUTDIR --model models/model_int8.pt [--prompt two_pass|whole|box]
    [--box X0 Y0 X1 Y1] [--threads N]

(from the bundle folder, or with it on ``PYTHONPATH``) writes ``<stem>_mask.<ext>`` in each input's format and
geometry, as ``adaqat infer`` does; the 3D Slicer module runs it when PyTorch is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import imaging
from .quality import load_quality_model, prompt_passes, write_report, write_summary
from .onnx_files import META_PREPROCESSING, META_SEGMENTER, file_sha256, find_current, metadata

PROMPT_MODES = ("two_pass", "whole", "box")


class OnnxModelMissing(FileNotFoundError):
    """The model file has no current ONNX form (it is built, once, by the torch route)."""


class OnnxSegmenter:
    """One model's ONNX graphs; :meth:`logits` and :meth:`mask` take a 2-D image in [0, 1] of any size."""

    def __init__(self, model_path: str | os.PathLike, threads: int | None = None) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"{self.model_path}: model file not found")
        source = file_sha256(self.model_path)
        found = {part: find_current(self.model_path, part, threads, source_sha256=source) for part in ("encoder", "decoder")}
        missing = [part for part, hit in found.items() if hit is None]
        if missing:
            raise OnnxModelMissing(
                f"{self.model_path}: no current ONNX {' and '.join(missing)} beside it (files "
                f"{self.model_path.stem}.<encoder|decoder>-<size>.onnx made from this exact file); build them once "
                f"with PyTorch: adaqat export-onnx {self.model_path}")
        (self.encoder, self.encoder_path), (self.decoder, self.decoder_path) = found["encoder"], found["decoder"]
        encoder_meta, decoder_meta = metadata(self.encoder), metadata(self.decoder)
        self.image_size = int(self.encoder.get_inputs()[0].shape[-1])
        mean, std = json.loads(encoder_meta[META_PREPROCESSING])
        self.pixel_mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.pixel_std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        segmenter = json.loads(decoder_meta[META_SEGMENTER])
        self.prompt_mode = segmenter.get("prompt_mode", "two_pass")
        self.refine_margin = float(segmenter.get("refine_margin", 10.0))

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """``H x W`` in [0, 1] -> ``1 x 3 x S x S`` SAM-normalised (the gray level in each RGB channel)."""
        size = self.image_size
        resized = image if image.shape == (size, size) else imaging.resize(image, size, size, antialias=True)
        rgb = np.broadcast_to(resized.astype(np.float32), (3, size, size))
        return ((rgb * 255.0 - self.pixel_mean) / self.pixel_std)[None].astype(np.float32)

    def _decode(self, embedding: np.ndarray, box_sam: np.ndarray) -> tuple[np.ndarray, float]:
        low, iou = self.decoder.run(None, {"embedding": embedding, "box": box_sam.reshape(1, 4).astype(np.float32)})
        return low[0, 0], float(np.asarray(iou).reshape(-1)[0])

    def low_res_logits(self, image: np.ndarray, box: Sequence[float] | None = None,
                       prompt_mode: str | None = None) -> tuple[np.ndarray, float]:
        """SAM's ``S/4 x S/4`` logits and its IoU prediction for the final prompt."""
        low, iou, _ = self.passes(image, box, prompt_mode, with_evidence=False)
        return low, iou

    def passes(self, image: np.ndarray, box: Sequence[float] | None = None, prompt_mode: str | None = None,
               with_evidence: bool = True) -> tuple[np.ndarray, float, dict | None]:
        """Final low-res logits, IoU prediction and the quality evidence (``quality.prompt_passes``)."""
        mode = prompt_mode or self.prompt_mode
        if mode not in PROMPT_MODES:
            raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {mode!r}")
        if mode == "box" and box is None:
            raise ValueError("prompt_mode 'box' needs a box (x0 y0 x1 y1 in image pixels)")
        height, width = image.shape
        size = self.image_size
        to_sam = np.array([size / width, size / height, size / width, size / height], dtype=np.float32)
        box_sam = (np.asarray(box, dtype=np.float32) if box is not None
                   else np.array([0, 0, width, height], dtype=np.float32)) * to_sam
        embedding = self.encoder.run(None, {"image": self.preprocess(image)})[0]
        return prompt_passes(lambda b: self._decode(embedding, b), box_sam, size, (height, width), self.refine_margin,
                             mode == "two_pass", with_evidence)

    def logits(self, image: np.ndarray, box: Sequence[float] | None = None, prompt_mode: str | None = None) -> np.ndarray:
        """Lung logits at the image's size (SAM's low-resolution logits, bilinearly upsampled)."""
        low, _ = self.low_res_logits(image, box, prompt_mode)
        return imaging.resize(low, *image.shape)

    def mask(self, image: np.ndarray, box: Sequence[float] | None = None, prompt_mode: str | None = None,
             keep_components: int = 2) -> np.ndarray:
        """The binary lung mask (uint8 0/1) the inference config writes for this image."""
        return self.mask_and_evidence(image, box, prompt_mode, keep_components, with_evidence=False)[0]

    def mask_and_evidence(self, image: np.ndarray, box: Sequence[float] | None = None, prompt_mode: str | None = None,
                          keep_components: int = 2, with_evidence: bool = True) -> tuple[np.ndarray, dict | None]:
        """The mask and its quality evidence (``quality.evidence``; None without ``with_evidence``)."""
        low, _, found = self.passes(image, box, prompt_mode, with_evidence)
        mask = imaging.resize(low, *image.shape) >= 0
        if keep_components:
            mask = imaging.keep_largest(mask, keep_components)
        return imaging.fill_holes(mask).astype(np.uint8), found


def main(argv: Sequence[str] | None = None) -> int:
    """Segment files; one ``error: ...`` line (exit 1) names each file that could not be used."""
    parser = argparse.ArgumentParser(description="Lung masks with the ONNX form of a model, no PyTorch needed")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--model", required=True, help="the model file whose ONNX form lies beside it (model_int8.pt)")
    parser.add_argument("--prompt", choices=PROMPT_MODES)
    parser.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"))
    parser.add_argument("--threads", type=int)
    parser.add_argument("--threshold", type=float, help="predicted Dice under which a mask is marked review "
                        "(default: the calibration's own)")
    args = parser.parse_args(argv)
    from ..data.cxr_io import CXRInputError, read_cxr
    from ..data.input_screen import check_image
    from ..data.mask_write import default_mask_name, write_mask_like

    try:
        segmenter = OnnxSegmenter(args.model, threads=args.threads)
        scorer, unavailable = load_quality_model(args.model)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if scorer is None:
        print(f"quality score off: {unavailable}", flush=True)
    failures, rows = [], []
    for i, path in enumerate(args.inputs, start=1):
        start = time.perf_counter()
        try:
            image, _ = read_cxr(path)
            check_image(image, path)
            mask, found = segmenter.mask_and_evidence(image, args.box, args.prompt, with_evidence=scorer is not None)
            written = write_mask_like(mask, path, Path(args.output) / default_mask_name(path))
        except (CXRInputError, ValueError) as exc:
            failures.append(str(exc))
            rows.append({"file": str(path), "status": "error", "error": str(exc)})
            print(f"skipped: {exc}", flush=True)
            continue
        seconds = time.perf_counter() - start
        row = {"file": str(path), "status": "ok", "seconds": round(seconds, 4), "mask": str(written)}
        note = ""
        if scorer is not None and found is not None:
            assessment = scorer.assess(found, args.threshold)
            row.update(predicted_dice=assessment["predicted_dice"], review=assessment["review"])
            note = f", predicted Dice {assessment['predicted_dice']:.3f}{' REVIEW' if assessment['review'] else ''}"
        else:
            assessment = {"predicted_dice": None, "review": None, "unavailable": unavailable}
        write_report(written, {"source": str(path), "seconds": round(seconds, 4), **assessment})
        rows.append(row)
        print(f"[{i}/{len(args.inputs)}] {written} ({seconds:.2f} s{note})", flush=True)
    write_summary(Path(args.output) / "summary.csv", rows)
    if len(args.inputs) == 1 and failures:
        print(f"error: {failures[0]}", file=sys.stderr, flush=True)
        return 1
    if failures:
        print(f"error: {len(failures)} of {len(args.inputs)} inputs failed and were skipped:\n  " + "\n  ".join(failures),
              file=sys.stderr, flush=True)
        return 1
    print("masks written to", Path(args.output).resolve(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
