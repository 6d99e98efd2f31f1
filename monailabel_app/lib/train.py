"""Fine-tuning on the studies annotators labelled, through the bundle's own ``configs/train.json``.

Why a subclass: ``BundleTrainTask`` feeds the datastore's labelled studies to ``train#dataset#data``
and loads ``models/model.pt`` into ``network`` with a ``CheckpointLoader``. Our train config builds
an AdaLoRA network (adapter keys the served FP32 model does not have) and sizes its schedule from
``train#datalist``, so the studies go to ``train#datalist`` / ``validate#datalist`` and the served
model is the SAM the adapters start from (``sam_checkpoint``; the bundle reads its shapes from the file). Stage 1
ends with the config's own export, which replaces ``models/model.pt`` atomically; then stage 2 (``train.json`` +
``train_qat.json``: INT8 QAT from stage 1's best checkpoint, ``qat_epochs`` epochs) replaces
``models/model_int8.pt`` the same way, so both served models are refreshed; each infer task reloads its file on
its next request. After each stage the model's quality score is fitted again on the validation studies
(``adaqat.quality.calibrate_file``), since a calibration holds only for the model file it was fitted on.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from monailabel.tasks.train.bundle import BundleTrainTask

logger = logging.getLogger(__name__)
DEFAULT_EPOCHS = 5
DEFAULT_QAT_EPOCHS = 2


class AdaQATTrainTask(BundleTrainTask):
    """Both stages on the labelled studies: AdaLoRA + decoder from the served FP32 model, then INT8 QAT of the result."""

    def __init__(self, bundle_path: str, conf: dict[str, str]) -> None:
        super().__init__(bundle_path, conf, load_strict=True)
        self._start_from: str | None = None

    def config(self) -> dict[str, Any]:
        options = super().config()
        options.update({"max_epochs": DEFAULT_EPOCHS, "qat_epochs": DEFAULT_QAT_EPOCHS, "val_split": 0.2, "multi_gpu": False,
                        "batch_size": 4})
        options.pop("model_filename", None)  # always fine-tunes (and replaces) models/model.pt
        return options

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        # no CheckpointLoader: the served model seeds the SAM under the adapters (see _update_overrides)
        self._start_from = model_pytorch if pretrained and os.path.isfile(model_pytorch) else None

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
        if self._start_from:  # the bundle reads the SAM's architecture and input size from the file
            overrides["sam_checkpoint"] = self._start_from
        return overrides

    def run_single_gpu(self, request: dict[str, Any], overrides: dict[str, Any]) -> None:
        """Stage 1 (MONAI Label's run of ``train.json``), then stage 2 from its best checkpoint (0 QAT epochs: skip)."""
        super().run_single_gpu(request, overrides)
        self._calibrate(overrides["export_path"], overrides["validate#datalist"])
        qat_epochs = int(request.get("qat_epochs", DEFAULT_QAT_EPOCHS))
        if qat_epochs <= 0:
            return
        import monai.bundle

        configs = os.path.join(self.bundle_path, "configs")
        stage2 = {k: v for k, v in overrides.items() if k not in ("sam_checkpoint", self.const.key_train_handlers())}
        stage2.update({
            "stage1_checkpoint": os.path.join(overrides["run_dir"], "model.pt"),
            "run_dir": overrides["run_dir"] + "_qat",
            "export_path": os.path.join(self.bundle_path, "models", "model_int8.pt"),
            "num_epochs": qat_epochs,
            self.const.key_train_trainer_max_epochs(): qat_epochs,
        })
        monai.bundle.run(run_id=request.get("run_id", "run"), init_id=None, final_id=None, meta_file=self.bundle_metadata_path,
                         config_file=[os.path.join(configs, "train.json"), os.path.join(configs, "train_qat.json")],
                         **stage2)
        self._calibrate(stage2["export_path"], overrides["validate#datalist"])

    @staticmethod
    def _calibrate(model_path: str, studies: list[dict[str, Any]]) -> None:
        """The new model's quality score; if it cannot be fitted, the old calibration stays and is refused for the
        new file (its sha256 differs), so results say the score is unavailable rather than give a wrong one."""
        from adaqat.quality import calibrate_file

        try:
            summary = calibrate_file(model_path, studies)
            logger.info("quality score of %s refitted on %d studies (%s)", model_path, len(studies), summary["candidate"])
        except Exception as exc:  # noqa: BLE001 - training succeeded; only the score is missing
            logger.warning("%s: quality score not refitted (%s: %s)", model_path, type(exc).__name__, exc)

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        self._request = request
        return super().__call__(request, datastore)


__all__ = ["AdaQATTrainTask"]
