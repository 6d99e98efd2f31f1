"""Inference of one bundle model (FP32 or INT8) for MONAI Label, on 2-D chest X-rays.

Why a subclass: ``BundleInferTask`` reads labels, dimension and transforms from the bundle, but it
loads ``models/model.pt`` into ``network_def`` with an unrestricted ``torch.load`` and writes results
with MONAI's 3-D writer. Here the model file (FP32 or the INT8 artefact) is built by the engine's own
loader (``weights_only``), the bundle's ``LoadCXRd`` reads PNG/JPEG and squeezes the single-slice
NIfTI Slicer uploads, and the writer puts the label back in the input's geometry.

Every result also says how far to trust the mask: the result params carry ``quality`` = ``{"predicted_dice",
"review", "threshold"}`` from the model's quality calibration (``<model stem>.quality.json`` beside the model,
``scripts.deploy.quality``; review = predicted Dice under the threshold, the calibration's own unless the request
sets ``quality_threshold``), or ``quality_unavailable`` with the reason (no calibration, one fitted for another
model file after training replaced it, a network without evidence).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from typing import Any, Callable, Sequence

from monai.transforms import SqueezeDimd
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.class_utils import unload_module

from .errors import BadRequestParameter, InputTooLarge
from .writer import write_label

# post-processing steps of inference.json the server replaces (it writes results itself)
_SERVER_WRITES = ("SaveCXRMaskd",)
_QUALITY_KEY = "adaqat_quality"  # the request's quality result, from the inferer to the writer
_NO_EVIDENCE = "this network gives no quality evidence (not a SAM segmenter)"


def quality_threshold(value: Any) -> float | None:
    """The request's ``quality_threshold`` (a predicted Dice in [0, 1]; None/absent: the calibration's own)."""
    if value is None or value == "":
        return None
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = math.nan
    if not 0.0 <= threshold <= 1.0:
        raise BadRequestParameter(f"quality_threshold {value!r} is not a Dice between 0 and 1")
    return threshold


def declared_size(path: str) -> tuple[int, ...] | None:
    """The size an image file's header declares (x, y[, z...]), read without decoding any pixel; None when the
    header cannot be read (the engine's reader then says what is wrong with the file)."""
    from scripts.data.cxr_io import detect_format

    try:
        if detect_format(path) == "dicom":
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows), int(ds.get("NumberOfFrames", 1) or 1)
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        return tuple(int(n) for n in reader.GetSize())
    except Exception:  # noqa: BLE001 - not this screen's business: the reader reports a bad file with its own message
        return None


def screen_size(path: Any) -> None:
    """Refuse an image declaring more pixels (all slices counted) than the engine accepts, before it is decoded.

    Why: the engine's ``MAX_PIXELS`` check runs on a decoded image, and the server path never calls it; a 200 KB PNG
    of 15000 x 15000 zeros decodes to ~4 GB of float copies (measured 3.8 GB peak for the read alone), and a
    gzipped NIfTI volume of zeros to any size, so one small upload could exhaust the server's memory.
    """
    if not isinstance(path, str) or not os.path.isfile(path):
        return
    size = declared_size(path)
    if not size:
        return
    from scripts.data.input_screen import MAX_PIXELS

    pixels = math.prod(size)
    if pixels > MAX_PIXELS:
        raise InputTooLarge(f"{path}: image is {' x '.join(map(str, size))} px ({pixels:,} pixels), over the limit of "
                            f"{MAX_PIXELS:,} pixels")


def labels_from_metadata(metadata: dict[str, Any]) -> dict[str, int]:
    """Label name -> value in the result, from the output ``channel_def`` of the bundle's metadata.

    A sigmoid output without a background channel (ours: {"0": "lung"}) gives channel k the value
    k + 1, since 0 is background in the label map; with a background channel, channel k is value k.
    """
    channels = metadata["network_data_format"]["outputs"]["pred"].get("channel_def", {})
    has_background = any(v.lower() == "background" for v in channels.values())
    offset = 0 if has_background else 1
    return {v.lower(): int(k) + offset for k, v in channels.items() if v.lower() != "background"}


class AdaQATInferTask(BundleInferTask):
    """One model file of the bundle (``models/model.pt`` or ``models/model_int8.pt``) as a MONAI Label model."""

    def __init__(self, bundle_path: str, model_file: str, conf: dict[str, str], labels: dict[str, int],
                 description: str = "") -> None:
        self._scorers: dict[Any, tuple[Any, str]] = {}  # device -> (quality model or None, reason)
        # one inference at a time per task: a network keeps its last forward's evidence (``last_evidence``)
        self._infer_lock = threading.Lock()
        super().__init__(bundle_path, conf, add_post_restore=False, load_strict=True, type="segmentation")
        if not self.valid:  # no inference config or no models/model.pt: BundleInferTask logged why
            return
        model_path = os.path.join(bundle_path, "models", model_file)
        self.path = [model_path]
        self.labels = labels
        if description:
            self.description = description
        # one model per task: the bundle-wide model picker would let a request swap FP32 and INT8
        self._config.pop("model_filename", None)

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> Any:
        screen_size(request.get("image"))  # before any decoding (see screen_size)
        return super().__call__(request, callbacks)

    def is_valid(self) -> bool:
        return self.valid and all(os.path.isfile(p) for p in self.path)

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        post = [t for t in super().post_transforms(data) if type(t).__name__ not in _SERVER_WRITES]
        # (1, H, W) -> (H, W): a 2-D label, not a one-slice volume
        return [*post, SqueezeDimd(keys="pred", dim=0)]

    def _get_network(self, device: Any, data: Any) -> Any:
        """The engine's loader (FP32 or INT8 by content, ``weights_only``), cached until the file changes."""
        path = self.get_path()
        if not path:
            raise MONAILabelException(MONAILabelError.INFERENCE_ERROR, f"model file {self.path} does not exist")
        mtime = os.stat(path).st_mtime
        cached = self._networks.get(device)
        if cached and cached[1] == mtime:
            return cached[0]
        sys.path.insert(0, self.bundle_path)
        try:
            unload_module("scripts")
            from scripts.deploy.quality import load_quality_model
            from scripts.model_files.load import load_model

            network = load_model(path, device=device)
            try:
                scorer, reason = load_quality_model(path)  # None if absent or fitted for another model file
            except (OSError, ValueError) as exc:
                scorer, reason = None, str(exc)
        finally:
            sys.path.remove(self.bundle_path)
        if scorer is not None and not hasattr(network, "record_evidence"):
            scorer, reason = None, _NO_EVIDENCE
        if scorer is not None:
            network.record_evidence = True
        self._networks[device] = (network, mtime)
        self._scorers[device] = (scorer, reason)
        return network

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        """The network's forward, then the quality of its mask from the evidence it kept (see the module doc)."""
        threshold = quality_threshold(data.get("quality_threshold"))
        with self._infer_lock:
            data = super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)
            network = (self._networks.get(device) or (None, None))[0]
            scorer, reason = self._scorers.get(device, (None, _NO_EVIDENCE))
            evidence = list(getattr(network, "last_evidence", None) or [])
        if scorer is not None and evidence and evidence[0]:
            assessment = scorer.assess(evidence[0], threshold)
            data[_QUALITY_KEY] = {"quality": {k: assessment[k] for k in ("predicted_dice", "review", "threshold")}}
        else:
            data[_QUALITY_KEY] = {"quality_unavailable": reason or "the network kept no quality evidence"}
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: str | None = None) -> tuple[str, dict]:
        path = write_label(data[self.output_label_key], data["image_path"], extension or data.get("result_extension"),
                           dtype or data.get("result_dtype"), label_value=max(self.labels.values()))
        params = {"label_names": self.labels, "model_file": os.path.basename(self.get_path() or "")}
        params.update(data.get(_QUALITY_KEY) or {"quality_unavailable": "no quality result for this request"})
        return path, params


__all__ = ["AdaQATInferTask", "declared_size", "screen_size", "labels_from_metadata", "quality_threshold"]
