"""The MONAI Label backend tells every client how far to trust a mask (issue 15): the result params carry the
mask's predicted Dice, its review flag and the threshold, or why there is no score. A real server
(monailabel_app/ in .venv-monailabel, the bundle copy as it ships) called over HTTP, as in test_monailabel_server.

A JSRT test-split study scores high (no review); a photograph that is no chest X-ray (scikit-image's ``camera``,
checked by hand with the predictor CLI first: predicted Dice 0.65 INT8/ONNX, 0.44 FP32/bundle, under 0.90) is
marked review.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_monailabel_server import MODELS, SLICER_PARAMS, _read_result, pytestmark, server, studies  # noqa: F401

__all__ = ["pytestmark"]  # the server tests' marks: e2e, skipped without .venv-monailabel unless required


@pytest.fixture(scope="module")
def camera_png(tmp_path_factory) -> Path:
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("non_chest") / "camera.png"
    Image.fromarray(data.camera()).save(path)
    return path


def _params(reply) -> dict:
    assert reply.status == 200, reply.body[:500]
    return reply.json()


@pytest.mark.parametrize("model", MODELS)
def test_jsrt_study_scores_high_without_review(server, studies, model):
    client, _ = server
    params = _params(client.infer(model, image=studies["unlabelled"].stem, params=SLICER_PARAMS, output="json"))
    quality = params["quality"]
    assert set(quality) == {"predicted_dice", "review", "threshold"} and "quality_unavailable" not in params
    assert quality["predicted_dice"] >= 0.9 and quality["review"] is False
    assert quality["threshold"] == pytest.approx(0.9)  # the calibration's own
    assert params["label_names"] == {"lung": 1}


@pytest.mark.parametrize("model", MODELS)
def test_non_chest_upload_is_marked_review(server, camera_png, model):
    client, _ = server
    quality = _params(client.infer(model, file=camera_png, params=SLICER_PARAMS, output="json"))["quality"]
    assert quality["predicted_dice"] < 0.9 and quality["review"] is True
    # the label itself still comes back (the client decides what to do with a mask marked review)
    assert _read_result(client.infer(model, file=camera_png, params=SLICER_PARAMS)).GetSize()[:2] == (512, 512)


def test_request_threshold_is_used_and_checked(server, studies):
    client, _ = server
    study = studies["unlabelled"].stem
    quality = _params(client.infer("adaqat_int8", image=study, params={"quality_threshold": 0.999}, output="json"))["quality"]
    assert quality["threshold"] == pytest.approx(0.999) and quality["review"] is True
    for bad in (1.5, "high"):
        reply = client.infer("adaqat_int8", image=study, params={"quality_threshold": bad})
        assert reply.status == 400 and "quality_threshold" in reply.json()["detail"], reply.body[:300]
    assert client.infer("adaqat_int8", image=study, params=SLICER_PARAMS).status == 200


def test_model_without_calibration_says_why(server, studies):
    """Last here: removes the served INT8 model's calibration (the next load of the model reads it again)."""
    client, bundle = server
    model = bundle / "models" / "model_int8.pt"
    (bundle / "models" / "model_int8.quality.json").unlink()
    os.utime(model)  # the server reloads a model (and its calibration) when the file changes
    params = _params(client.infer("adaqat_int8", image=studies["unlabelled"].stem, params=SLICER_PARAMS, output="json"))
    assert "quality" not in params
    assert "no quality calibration for model_int8.pt" in params["quality_unavailable"]
