"""Write predicted masks next to nothing but their source: same format and geometry as the input image."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from .cxr_io import default_mask_name, write_mask_like


def reference_path(item: Mapping[Hashable, Any], ref_key: str = "image") -> str:
    """The source file of a decollated item (``meta["filename_or_obj"]`` of its image)."""
    meta = getattr(item.get(ref_key), "meta", None) or {}
    path = meta.get("filename_or_obj")
    if not path:
        raise ValueError(f"cannot tell which file {ref_key!r} came from: no filename_or_obj in its metadata")
    return str(path)


class SaveCXRMaskd(MapTransform):
    """Post-processing step that writes each binary ``pred`` with ``cxr_io.write_mask_like``.

    Why not MONAI's ``SaveImaged``: it writes NIfTI/PNG from the tensor's affine, while a CXR mask must
    come back in the input's own container (DICOM, NRRD, PNG...) and geometry, read from the source file.
    The written path is stored in ``data["pred_path"]``.
    """

    def __init__(self, keys: KeysCollection = "pred", output_dir: str = "./predictions", ref_key: str = "image",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        source = reference_path(d, self.ref_key)
        for key in self.key_iterator(d):
            mask = d[key]
            mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            out = self.output_dir / default_mask_name(source)
            d[f"{key}_path"] = str(write_mask_like((mask.reshape(mask.shape[-2:]) > 0).astype(np.uint8), source, out))
        return d


__all__ = ["SaveCXRMaskd", "reference_path"]
