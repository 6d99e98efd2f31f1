"""A real MONAI Label server (monailabel_app/ in .venv-monailabel) on loopback, called over HTTP as Slicer does.

The server serves a copy of the bundle as it ships (its trained FP32 and INT8 models, no training first);
studies are JSRT test-split images (never trained on), four of them labelled for /train.
Latencies seen by the client (and the server's own) go to runs/tests/monailabel_latencies.json.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from monailabel_client import Reply, listening_addresses, dice, running_server

REPO = Path(__file__).resolve().parents[1]
ML_PYTHON = REPO / ".venv-monailabel" / "bin" / "python"
LATENCY_FILE = REPO / "runs" / "tests" / "monailabel_latencies.json"
N_STUDIES, N_LABELLED = 5, 4
SLICER_PARAMS = {"result_extension": ".nrrd", "result_dtype": "uint8"}  # what Slicer's client asks
MODELS = ("adaqat_fp32", "adaqat_int8")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not ML_PYTHON.exists() and not os.environ.get("ADAQAT_REQUIRE_MONAILABEL"),
                       reason="MONAI Label environment missing: run `bash scripts/setup_monailabel_env.sh` "
                       "(CI does, in .ci/run, and sets ADAQAT_REQUIRE_MONAILABEL so that a missing one fails)"),
]

_latencies: dict[str, list[dict]] = {}


def _record(name: str, reply: Reply) -> Reply:
    entry = {"client_s": round(reply.seconds, 3), "status": reply.status}
    _latencies.setdefault(name, []).append(entry)
    return reply


def _read_result(reply: Reply, suffix: str = ".nrrd") -> sitk.Image:
    assert reply.status == 200, reply.body[:500]
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"ml_result_{time.time_ns()}{suffix}"
    path.write_bytes(reply.body)
    try:
        return sitk.ReadImage(str(path))
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def studies(jsrt_dir, tmp_path_factory) -> dict:
    from scripts.data.datasets import select_split

    test_items = select_split(jsrt_dir, "test", by="image")[:N_STUDIES]
    root = tmp_path_factory.mktemp("ml_studies")
    final = root / "labels" / "final"
    final.mkdir(parents=True)
    for i, item in enumerate(test_items):
        shutil.copy(item["image"], root)
        if i < N_LABELLED:
            shutil.copy(item["label"], final / Path(item["image"]).name)
    return {"dir": root, "items": test_items, "unlabelled": Path(test_items[-1]["image"])}


@pytest.fixture(scope="module")
def server(shipped_models, studies, tmp_path_factory):
    """The app serving a copy of the bundle as it ships (its own models, no training); yields (client, bundle folder)."""
    bundle = tmp_path_factory.mktemp("ml_bundle") / "adaqat_cxr_lung"
    shutil.copytree(REPO / "monai_bundle", bundle, ignore=shutil.ignore_patterns("runs", "__pycache__", "eval", "predictions"))
    started = time.perf_counter()
    with running_server(studies["dir"], bundle, tmp_path_factory.mktemp("ml_log") / "server.log") as (client, _, _):
        _latencies["server_start_s"] = [{"client_s": round(time.perf_counter() - started, 1)}]
        yield client, bundle
    LATENCY_FILE.parent.mkdir(parents=True, exist_ok=True)
    LATENCY_FILE.write_text(json.dumps(_latencies, indent=2))


def test_server_binds_loopback_only(server):
    client, _ = server
    port = int(client.base.rsplit(":", 1)[1])
    listening = listening_addresses(port)  # the kernel's own table of listening sockets, as ss reads it
    assert listening and set(listening) == {"0100007F"}, listening  # 127.0.0.1 only, no IPv6 or 0.0.0.0


def test_info_shows_2d_lung_models(server):
    client, _ = server
    info = _record("info", client.info()).json()
    assert info["labels"] == {"lung": 1}
    assert set(MODELS) <= set(info["models"])
    for name in MODELS:
        assert info["models"][name]["dimension"] == 2
        assert info["models"][name]["labels"] == {"lung": 1}
    assert "adaqat_fp32" in info["trainers"]


@pytest.mark.parametrize("model", MODELS)
def test_infer_png_study_nrrd_result(server, studies, model):
    """A datastore PNG study: uint8 .nrrd label of the PNG's size, lungs = 1, close to the reference."""
    from scripts.data.cxr_io import read_mask

    client, _ = server
    image = studies["unlabelled"]
    result = _read_result(_record(f"infer_png_{model}", client.infer(model, image=image.stem, params=SLICER_PARAMS)))
    arr = sitk.GetArrayFromImage(result)
    reference = read_mask(studies["items"][-1]["label"])
    assert result.GetPixelID() == sitk.sitkUInt8
    assert arr.shape == reference.shape
    assert set(np.unique(arr)) <= {0, 1}
    assert dice(arr, reference) > 0.8


@pytest.mark.parametrize("model", MODELS)
def test_infer_single_slice_nifti_restores_geometry(server, studies, tmp_path, model):
    """Slicer's upload: a one-slice NIfTI (asymmetric crop, own spacing/origin) comes back as a one-slice
    label with the same size, spacing and origin, and the lungs where the reference has them."""
    from scripts.data.cxr_io import read_mask

    client, _ = server
    item = studies["items"][-1]
    png = sitk.ReadImage(item["image"])
    crop = sitk.GetArrayFromImage(png)[:, 8:208]  # (224, 200): H != W catches a transposed result
    volume = sitk.GetImageFromArray(crop[None].astype(np.int16))
    volume.SetSpacing((0.7, 0.8, 2.5))
    volume.SetOrigin((-12.0, 30.5, 7.0))
    upload = tmp_path / "study.nii.gz"
    sitk.WriteImage(volume, str(upload))

    result = _read_result(_record(f"infer_nifti_{model}", client.infer(model, file=upload, params=SLICER_PARAMS)))
    assert result.GetSize() == volume.GetSize() == (200, 224, 1)
    assert np.allclose(result.GetSpacing(), volume.GetSpacing())
    assert np.allclose(result.GetOrigin(), volume.GetOrigin())
    assert np.allclose(result.GetDirection(), volume.GetDirection())
    reference = read_mask(item["label"])[:, 8:208]
    assert dice(sitk.GetArrayFromImage(result)[0], reference) > 0.8


def test_infer_dicom_upload(server, studies, tmp_path):
    """A DICOM DX upload is read by the engine in the MONAI Label env too (pydicom < 3 there)."""
    from dicom_writer import make_dicom
    from PIL import Image
    from scripts.data.cxr_io import read_mask

    client, _ = server
    item = studies["items"][-1]
    pixels = np.asarray(Image.open(item["image"]).convert("L")).astype(np.uint16) * 16
    upload = make_dicom(tmp_path / "study.dcm", pixels)
    result = _read_result(_record("infer_dicom_int8", client.infer("adaqat_int8", file=upload, params=SLICER_PARAMS)))
    arr = sitk.GetArrayFromImage(result)
    assert result.GetSize()[:2] == pixels.shape[::-1] and arr.size == pixels.size  # one slice, as ITK reads the DICOM
    assert np.allclose(result.GetSpacing()[:2], (0.25, 0.5))  # PixelSpacing (row, column) -> (x, y)
    assert dice(arr.reshape(pixels.shape), read_mask(item["label"])) > 0.8


def test_infer_dicom_upload_dicom_seg_result(server, studies, tmp_path):
    """``result_extension: ".dcm"`` for a DICOM upload: a DICOM SEG (highdicom 0.22 on pydicom 2 in the server's
    environment) that the core's highdicom reads, referencing the upload, with the lungs as the NRRD answer has them."""
    import highdicom as hd
    import pydicom
    from dicom_writer import make_dicom
    from PIL import Image
    from pydicom.uid import SegmentationStorage
    from scripts.data.cxr_io import read_mask

    client, _ = server
    item = studies["items"][-1]
    pixels = np.asarray(Image.open(item["image"]).convert("L")).astype(np.uint16) * 16
    upload = make_dicom(tmp_path / "study.dcm", pixels)
    reply = _record("infer_dicom_seg_int8", client.infer("adaqat_int8", file=upload, params={"result_extension": ".dcm"}))
    assert reply.status == 200, reply.body[:500]
    path = tmp_path / "result.dcm"
    path.write_bytes(reply.body)
    ds, src = pydicom.dcmread(path), pydicom.dcmread(upload)
    assert ds.SOPClassUID == SegmentationStorage
    assert hd.seg.segread(path).get_source_image_uids() == [(src.StudyInstanceUID, src.SeriesInstanceUID, src.SOPInstanceUID)]
    assert ds.SegmentSequence[0].SegmentLabel == "lung"
    assert np.allclose([float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing],
                       [float(v) for v in src.PixelSpacing])
    assert dice(ds.pixel_array, read_mask(item["label"])) > 0.8


def test_infer_reports_server_latencies(server, studies):
    client, _ = server
    reply = _record("infer_json_int8", client.infer("adaqat_int8", image=studies["unlabelled"].stem, output="json"))
    assert reply.status == 200
    params = reply.json()
    assert params["label_names"] == {"lung": 1}
    assert params["latencies"]["total"] > 0
    _latencies["server_reported_int8"] = [params["latencies"]]


@pytest.mark.parametrize(
    "case, status, words",
    [
        ("unknown_model", 404, "unknown model"),
        ("unknown_study", 404, "no study"),
        ("server_path", 404, "no study"),
        ("corrupt_png", 422, "uploaded image"),
        ("volume_3d", 422, "3-D volume"),
        ("bad_extension", 400, "unsupported image type"),
        ("bad_result_extension", 400, "result_extension"),
        ("dicom_seg_of_png", 400, "needs a DICOM input"),
    ],
)
def test_bad_requests_get_4xx_and_server_stays_healthy(server, studies, tmp_path, case, status, words):
    client, _ = server
    study = studies["unlabelled"].stem
    uploads_before = {f for f in Path(tempfile.gettempdir()).glob("tmp*") if f.is_file()}
    if case == "unknown_model":
        reply = client.infer("no_such_model", image=study)
    elif case == "unknown_study":
        reply = client.infer("adaqat_fp32", image="no_such_study")
    elif case == "server_path":  # MONAI Label would read any existing server file named as the image
        reply = client.infer("adaqat_fp32", image=str(REPO / "README.md"))
    elif case == "corrupt_png":
        reply = client.infer("adaqat_fp32", file=("xray.png", b"\x89PNG\r\n\x1a\n" + os.urandom(300)))
    elif case == "volume_3d":
        vol = tmp_path / "ct.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 255, (6, 64, 64)).astype(np.int16)), str(vol))
        reply = client.infer("adaqat_fp32", file=vol)
    elif case == "bad_extension":
        reply = client.infer("adaqat_fp32", file=("notes.txt", b"hello"))
    elif case == "dicom_seg_of_png":
        reply = client.infer("adaqat_fp32", image=study, params={"result_extension": ".dcm"})
    else:
        reply = client.infer("adaqat_fp32", image=study, params={"result_extension": ".exe"})
    _record(f"bad_{case}", reply)
    assert reply.status == status, reply.body[:500]
    detail = reply.json()["detail"]
    assert words in detail
    if case != "server_path":  # that answer echoes the path the client itself sent (under /tmp in CI's checkout)
        assert "/tmp/" not in detail  # no server temp paths leak to the client
    # a refused upload does not stay in the server's temp folder (any client could fill the disk with them)
    left = {f for f in Path(tempfile.gettempdir()).glob("tmp*") if f.is_file()} - uploads_before
    assert not [f.name for f in left if f.name.endswith((".png", ".nii.gz", ".txt"))]
    assert client.info().status == 200
    assert client.infer("adaqat_int8", image=study, params=SLICER_PARAMS).status == 200


def test_train_one_epoch_then_infer(server, studies):
    """/train on the labelled studies: the bundle's train config runs, replaces models/model.pt, and the
    FP32 model served afterwards is the new file and still segments the unlabelled study."""
    from scripts.data.cxr_io import read_mask

    client, bundle = server
    model_files = [bundle / "models" / name for name in ("model.pt", "model_int8.pt")]
    before = [(f.stat().st_mtime_ns, f.read_bytes()) for f in model_files]
    reply = _record("train_submit", client.train("adaqat_fp32", {"max_epochs": 1, "qat_epochs": 1, "device": "cpu",
                                                                  "val_split": 0.25, "batch_size": 2}))
    assert reply.status == 200, reply.body[:500]
    started = time.perf_counter()
    status = client.wait_train(timeout=900)
    _latencies["train_1_epoch_s"] = [{"client_s": round(time.perf_counter() - started, 1)}]
    assert status["status"] == "DONE", json.dumps(status)[-3000:]
    log = "\n".join(status.get("details", []))
    assert "Training Finished" in log
    for model_file, (mtime, content) in zip(model_files, before):  # both stages ran: FP32 and INT8 are refreshed
        assert model_file.stat().st_mtime_ns != mtime and model_file.read_bytes() != content, model_file.name
    assert (bundle / "runs" / "monailabel" / "checkpoint_final.pt").is_file()
    assert (bundle / "runs" / "monailabel_qat" / "checkpoint_final.pt").is_file()

    for model in MODELS:
        reply = _record(f"infer_after_train_{model}", client.infer(model, image=studies["unlabelled"].stem, params=SLICER_PARAMS))
        arr = sitk.GetArrayFromImage(_read_result(reply))
        assert dice(arr, read_mask(studies["items"][-1]["label"])) > 0.8, model
        # the quality score was refitted for the new files, so results still carry one (not "unavailable")
        params = client.infer(model, image=studies["unlabelled"].stem, params=SLICER_PARAMS, output="json").json()
        assert "quality" in params and 0.0 <= params["quality"]["predicted_dice"] <= 1.0, params
