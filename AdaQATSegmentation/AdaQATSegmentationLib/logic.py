"""Apply = check the volume, write it to a file, run the bundle out of process, read the mask into a node.

No Qt and no ``slicer.app`` here: the widget drives ``start``/``poll``/``finish`` from a timer, tests and
scripts call ``run``. Each step lives in its own module (volume_io, bundle_process, segmentation_output,
bundle_paths); this file only orders them and owns the temporary folder.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import bundle_paths, bundle_process, quality, segmentation_output, volume_io

PROMPTS = ("two_pass", "whole")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class SegmentationRequest:
    """What the user chose in the widget (or a script passes)."""

    volume_node: Any
    model: str = "int8"  # "int8", "fp32" or "file"
    model_file: str | None = None
    roi_node: Any = None  # markups ROI: the box prompt
    refine_box: bool = True  # a second pass refines the ROI box (else it is used as is)
    prompt: str = "two_pass"  # without ROI: "two_pass" (whole image, then a refined box) or "whole"
    device: str = "auto"
    route: str = "auto"  # "auto": torch-free (ONNX) for the bundled models, PyTorch for a user's file; "onnx"; "torch"
    quality_threshold: float | None = None  # predicted Dice under which the mask is marked review; None: calibration's


@dataclass
class RunHandle:
    """A started run: the child process and the files that belong to it."""

    request: SegmentationRequest
    process: bundle_process.BundleProcess
    workdir: Path
    image: Path
    output_dir: Path
    box: tuple[float, float, float, float] | None = None
    route: str = "torch"
    quality: quality.QualityResult | None = None  # set by ``finish``: the mask's predicted Dice or why there is none


class RunDiscarded(bundle_process.BundleCancelled):
    """The run's input volume left the scene (deleted, scene closed) before its result could be stored: the result
    was thrown away and no node was touched."""


def node_in_scene(scene: Any, node: Any) -> bool:
    """Whether ``node`` is still a node of ``scene`` (False once deleted or after the scene was closed)."""
    return node is not None and scene is not None and node.GetScene() is not None and bool(scene.IsNodePresent(node))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "cxr"


class AdaQATSegmentationLogic:
    """Segments the lungs of a chest X-ray volume node with the AdaQAT bundle."""

    def __init__(self, scene: Any, bundle_root: str | Path | None = None, python: str | None = None) -> None:
        self.scene = scene
        self._bundle_root = bundle_root
        self.python = python

    @property
    def bundle_root(self) -> Path:
        return bundle_paths.find_bundle(self._bundle_root)

    def model_and_route(self, request: SegmentationRequest) -> tuple[Path, str]:
        """The model file the request picks and the engine that runs it (decides which packages are needed)."""
        model = bundle_paths.resolve_model(request.model, self.bundle_root, request.model_file)
        return model, bundle_paths.resolve_route(request.route, request.model, model)

    def start(self, request: SegmentationRequest) -> RunHandle:
        """Check the inputs, write the volume and start the bundle's inference; errors come before any process."""
        if request.prompt not in PROMPTS:
            raise ValueError(f"unknown prompt {request.prompt!r}: one of {PROMPTS}")
        if request.device not in DEVICES and not request.device.startswith("cuda:"):
            raise ValueError(f"unknown device {request.device!r}: one of {DEVICES}")
        if request.quality_threshold is not None and not 0.0 <= float(request.quality_threshold) <= 1.0:
            raise ValueError(f"quality threshold {request.quality_threshold} is not a Dice between 0 and 1")
        volume_io.check_radiograph_volume(request.volume_node)
        root = self.bundle_root
        model, route = self.model_and_route(request)
        box = volume_io.roi_to_box(request.roi_node, request.volume_node) if request.roi_node is not None else None
        workdir = Path(tempfile.mkdtemp(prefix="adaqat-slicer-"))
        try:
            image = volume_io.write_volume(request.volume_node, workdir / f"{_safe_name(request.volume_node.GetName())}.nrrd")
            output_dir = workdir / "out"
            output_dir.mkdir()
            process = bundle_process.start_infer(
                root, image, output_dir, model=model, box=box, refine_box=request.refine_box,
                prompt=None if box is not None else request.prompt,
                device=None if request.device == "auto" else request.device, python=self.python, route=route,
                quality_threshold=request.quality_threshold)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return RunHandle(request, process, workdir, image, output_dir, box, route)

    def finish(self, handle: RunHandle) -> Any:
        """After the process ended: raise its error, or put the mask into the segmentation node.

        The mask's quality report (beside it) goes onto the node's attributes and its segments' tags and into
        ``handle.quality``; a run without one (a model without calibration) says why instead of failing."""
        try:
            try:
                handle.process.finish()
            except bundle_process.BundleRunError as exc:  # name the volume, not our temporary file
                exc.args = (str(exc).replace(str(handle.image), f"volume '{handle.request.volume_node.GetName()}'"),)
                raise
            volume = handle.request.volume_node
            if not node_in_scene(self.scene, volume):  # deleted or scene closed during the run: write nothing
                raise RunDiscarded(f"volume '{volume.GetName()}' was removed from the scene during the run; "
                                   "its segmentation was discarded", "\n".join(handle.process.lines))
            masks = sorted(handle.output_dir.glob("*_mask.nrrd"))
            if len(masks) != 1:
                raise bundle_process.BundleRunError(
                    f"expected one mask in {handle.output_dir}, found {len(masks)}", "\n".join(handle.process.lines))
            labels = volume_io.read_mask(masks[0], handle.request.volume_node)
            if not labels.any():  # keep the previous result rather than replace it with nothing
                raise ValueError(f"the model found no lung in volume '{handle.request.volume_node.GetName()}'; "
                                 "try a ROI box around the lungs or another model")
            handle.quality = quality.read_report(masks[0], handle.process.lines)
            node = segmentation_output.write_output(self.scene, handle.request.volume_node, labels)
            quality.store_on_node(node, handle.quality, segmentation_output.own_segment_ids(node))
            return node
        finally:
            shutil.rmtree(handle.workdir, ignore_errors=True)

    def cancel(self, handle: RunHandle) -> None:
        """Stop the run: SIGTERM to its whole process group, SIGKILL after a grace time, the child reaped; ``finish``
        then raises BundleCancelled (even if the child had just ended: its result is not used)."""
        handle.process.cancel()

    def discard(self, handle: RunHandle) -> None:
        """Cancel the run (as ``cancel``) and delete its files without touching any node: for a run whose result
        must not land (input deleted, scene closed, Apply again)."""
        try:
            handle.process.cancel()
            handle.process.poll()
        finally:
            shutil.rmtree(handle.workdir, ignore_errors=True)

    def run(self, request: SegmentationRequest, timeout_s: float | None = None) -> Any:
        """Blocking Apply for scripts and tests: start, wait, finish."""
        handle = self.start(request)
        handle.process.wait(timeout_s, raise_errors=False)
        return self.finish(handle)
