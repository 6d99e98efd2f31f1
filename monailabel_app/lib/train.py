"""Fine-tuning on the studies annotators labelled, through the bundle's own ``configs/train.json``.

Why a subclass: ``BundleTrainTask`` feeds the datastore's labelled studies to ``train#dataset#data``
and loads ``models/model.pt`` into ``network`` with a ``CheckpointLoader``. Our train config builds
an AdaLoRA network (adapter keys the served FP32 model does not have) and sizes its schedule from
``train#datalist``, so the studies go to ``train#datalist`` / ``validate#datalist`` and the served
model is the SAM the adapters start from (``sam_checkpoint``, shapes read from the file). The run
ends with the config's own export, which replaces ``models/model.pt`` atomically; the FP32 infer
task reloads it on its next request.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.class_utils import unload_module

DEFAULT_EPOCHS = 5


class AdaQATTrainTask(BundleTrainTask):
    """Stage-1 fine-tuning (AdaLoRA + decoder) of the served FP32 model on the labelled studies."""

    def __init__(self, bundle_path: str, conf: dict[str, str]) -> None:
        super().__init__(bundle_path, conf, load_strict=True)
        self._start_from: str | None = None

    def config(self) -> dict[str, Any]:
        options = super().config()
        options.update({"max_epochs": DEFAULT_EPOCHS, "val_split": 0.2, "multi_gpu": False, "batch_size": 4})
        options.pop("model_filename", None)  # always fine-tunes (and replaces) models/model.pt
        return options

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        # no CheckpointLoader: the served model seeds the SAM under the adapters (see _update_overrides)
        self._start_from = model_pytorch if pretrained and os.path.isfile(model_pytorch) else None

    def _model_shape(self, path: str) -> dict[str, Any]:
        """Architecture of the model file (so a vit_b bundle model is fine-tuned as vit_b)."""
        sys.path.insert(0, self.bundle_path)
        try:
            unload_module("scripts")
            from scripts.model.sam import infer_arch, read_state_dict

            state = {k.removeprefix("sam."): v for k, v in read_state_dict(path).items()}
            return infer_arch(state).to_dict()
        finally:
            sys.path.remove(self.bundle_path)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        train = overrides.pop(self.const.key_train_dataset_data())
        val = overrides.pop(self.const.key_validate_dataset_data(), None)
        if not train:
            raise ValueError("no labelled studies in the datastore: label some images first")
        epochs = overrides[self.const.key_train_trainer_max_epochs()]
        overrides.update({
            "train#datalist": train,
            # the best-model selection needs a validation set; with too few studies, score on the training ones
            "validate#datalist": val or train,
            "num_epochs": epochs,
            "batch_size": min(int(self._request.get("batch_size", 4)), len(train)),
            "num_workers": 0,
            "run_dir": os.path.join(self.bundle_path, "runs", "monailabel"),
            "export_path": os.path.join(self.bundle_path, "models", self.const.model_pytorch()),
        })
        if self._start_from:
            arch = self._model_shape(self._start_from)
            overrides.update({"sam_checkpoint": self._start_from, "arch": arch, "image_size": arch["image_size"]})
        return overrides

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        self._request = request
        return super().__call__(request, datastore)


__all__ = ["AdaQATTrainTask"]
