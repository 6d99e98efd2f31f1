"""MONAI Label app serving the AdaQAT bundle: FP32 and INT8 lung segmentation, and fine-tuning.

Start it with ``scripts/monailabel_server.sh`` (binds 127.0.0.1, works offline). The bundle is the
repository's ``monai_bundle/`` unless ``--conf bundle_path <folder>`` names another copy (an unzipped
zoo package, say); its ``models/`` folder holds the served ``model.pt`` and ``model_int8.pt``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from lib.errors import bad_extension, input_error, unknown_image, unknown_model
from lib.infer import AdaQATInferTask, labels_from_metadata
from lib.train import AdaQATTrainTask

logger = logging.getLogger(__name__)

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "monai_bundle"
# model name -> (file in the bundle's models/, description)
MODELS = {
    "adaqat_fp32": ("model.pt", "AdaLoRA-adapted SAM, merged FP32 weights"),
    "adaqat_int8": ("model_int8.pt", "AdaLoRA-QAT SAM, real INT8 weights (CPU integer kernels)"),
}


class AdaQATApp(MONAILabelApp):
    """Models ``adaqat_fp32`` / ``adaqat_int8`` and trainer ``adaqat_fp32``; labels and dimension from the bundle."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.adaqat_bundle = str(Path(conf.get("bundle_path", DEFAULT_BUNDLE)).resolve())
        if self.adaqat_bundle not in sys.path:  # the engine (scripts.*), as the bundle's configs import it
            sys.path.insert(0, self.adaqat_bundle)
        from scripts.data import cxr_io

        # what the engine reads; uploads of other types are refused with 400
        self.image_suffixes, self.suffix = cxr_io.SUPPORTED_SUFFIXES, cxr_io.suffix
        metadata = json.loads((Path(self.adaqat_bundle) / "configs" / "metadata.json").read_text())
        self.bundle_labels = labels_from_metadata(metadata)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="AdaQAT lung segmentation",
            description=f"{metadata['name']}: {metadata['task']}. {metadata['intended_use']}",
            version=metadata["version"],
            labels=self.bundle_labels,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, (file, description) in MODELS.items():
            if not (Path(self.adaqat_bundle) / "models" / file).is_file():
                logger.warning("model %s not served: %s/models/%s is missing", name, self.adaqat_bundle, file)
                continue
            task = AdaQATInferTask(self.adaqat_bundle, file, self.conf, self.bundle_labels, description)
            if task.is_valid():
                infers[name] = task
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        task = AdaQATTrainTask(self.adaqat_bundle, self.conf)
        return {"adaqat_fp32": task} if task.is_valid() else {}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's infer, with bad requests answered 4xx (see lib/errors.py) instead of 500."""
        model = request.get("model")
        if model not in self._infers:
            raise unknown_model(model, list(self._infers))
        image = request.get("image")
        upload = None
        if isinstance(image, str):
            if os.path.isfile(image) and self._served_file(image):
                upload = image  # an upload (a server temp file named with the client's suffix) or a session's image
            elif image not in (datastore or self.datastore()).list_images():
                raise unknown_image(image)
        try:
            if upload and self.suffix(upload) not in self.image_suffixes:
                raise bad_extension(self.suffix(upload) or "(none)", self.image_suffixes)
            return super().infer(request, datastore)
        except Exception as exc:
            # MONAI Label deletes an upload only after a successful answer: a refused one would stay in the temp
            # folder, and any client could fill the disk with them (found by tests/test_monailabel_load.py).
            if upload and self._is_temp_upload(upload):
                with contextlib.suppress(OSError):
                    os.remove(upload)
            mapped = input_error(exc, upload)
            if mapped is None:
                raise
            raise mapped from exc

    @staticmethod
    def _is_temp_upload(path: str) -> bool:
        """MONAI Label stores an upload as tempfile.NamedTemporaryFile(suffix=<client's suffix>): tmpXXXX<suffix>."""
        real = os.path.realpath(path)
        return os.path.dirname(real) == os.path.realpath(tempfile.gettempdir()) and os.path.basename(real).startswith("tmp")

    def _served_file(self, path: str) -> bool:
        """Whether a server-side path may be read: uploads (temp folder), studies, sessions only.

        MONAI Label reads any existing path given as ``image``; a client must not make it read other files.
        """
        real = os.path.realpath(path)
        if self._is_temp_upload(path):
            return True
        roots = [os.path.realpath(r) for r in (self.studies, getattr(self._sessions, "store_path", None)) if r]
        return any(os.path.commonpath([real, root]) == root for root in roots)
