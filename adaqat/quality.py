"""Fitting and measuring the quality score (``scripts.deploy.quality``): calibration samples, candidate scores,
the fit that is stored beside a model, and the Reverse Classification Accuracy baseline.

Why calibration images are degraded: the validation split of a good run holds few failures, and a map onto the
real Dice fitted only on successes cannot say when a mask fails. Each validation image is also scored after one
of a fixed set of degradations a hospital archive really holds (noise, blur, inverted grey levels, rotation, a
crop cutting a lung off, occlusion, flat contrast, a zoomed-out film), its reference mask transformed with it;
synthetic non-chest images (noise, gradients, shapes, stripes) enter with real Dice 0. The images the score is
*measured* on (``scripts/benchmark_quality.py``) are never among these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import ndimage, stats

from scripts.data.cxr_io import read_cxr, read_mask
from scripts.deploy import imaging
from scripts.deploy.onnx_files import file_sha256
from scripts.deploy.quality import DEFAULT_THRESHOLD, FEATURES, QualityModel, dice

FAIL_BELOW = 0.90  # a mask is a failure below this real Dice (the AUROC bar)
SHAPE_FEATURES = ("area", "components", "top2_share", "balance", "centre_offset")
AGREEMENT_FEATURES = ("agree_first", "agree_jitter", "min_jitter")
# Candidate scores compared in docs/results.md: name -> features of its linear model (then isotonic).
CANDIDATES = {
    "iou_head": ("iou_final",),
    "agreement": AGREEMENT_FEATURES,
    "shape": SHAPE_FEATURES,
    "uncertainty": ("uncertain", "confidence"),
    "uncertainty_agreement": ("uncertain", "confidence", *AGREEMENT_FEATURES),
    "combined": FEATURES,
}


def _noise(image, mask, rng):
    return np.clip(image + rng.normal(0, rng.uniform(0.12, 0.3), image.shape), 0, 1), mask


def _blur(image, mask, rng):
    return ndimage.gaussian_filter(image, rng.uniform(3, 8)), mask


def _invert(image, mask, rng):
    return 1.0 - image, mask  # a MONOCHROME1 film read as MONOCHROME2


def _rotate(image, mask, rng):
    k = int(rng.integers(1, 4))
    return np.rot90(image, k).copy(), np.rot90(mask, k).copy()


def _crop(image, mask, rng):
    h, w = image.shape
    if rng.random() < 0.5:
        cut = (slice(None), slice(0, int(w * rng.uniform(0.45, 0.6))))  # one lung (mostly) gone
    else:
        cut = (slice(0, int(h * rng.uniform(0.4, 0.6))), slice(None))  # the bases gone
    return image[cut].copy(), mask[cut].copy()


def _occlude(image, mask, rng):
    h, w = image.shape
    out = image.copy()
    y, x = int(rng.uniform(0.15, 0.5) * h), int(rng.uniform(0.05, 0.5) * w)
    out[y : y + int(0.35 * h), x : x + int(0.4 * w)] = rng.choice([0.0, 1.0])  # a pacemaker box, a lead apron
    return out, mask


def _flat(image, mask, rng):
    return 0.45 + 0.1 * image ** rng.uniform(2.5, 4), mask


def _zoom_out(image, mask, rng):
    h, w = image.shape
    scale = rng.uniform(0.35, 0.55)
    small = imaging.resize(image.astype(np.float32), int(h * scale), int(w * scale), antialias=True)
    small_mask = imaging.resize(mask.astype(np.float32), int(h * scale), int(w * scale)) >= 0.5
    out, out_mask = np.zeros_like(image), np.zeros_like(mask)
    y, x = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[y : y + small.shape[0], x : x + small.shape[1]] = small
    out_mask[y : y + small.shape[0], x : x + small.shape[1]] = small_mask
    return out, out_mask


DEGRADATIONS: dict[str, Callable] = {"noise": _noise, "blur": _blur, "invert": _invert, "rotate": _rotate, "crop": _crop,
                                     "occlude": _occlude, "flat": _flat, "zoom_out": _zoom_out}


def degrade(name: str, image: np.ndarray, reference: np.ndarray, kind: str, rng: np.random.Generator
            ) -> tuple[str, np.ndarray, np.ndarray]:
    """``(name:kind, image after the degradation kind, its reference moved with it)``, grey levels kept in [0, 1]."""
    degraded, mask = DEGRADATIONS[kind](image.astype(np.float32), reference, rng)
    return f"{name}:{kind}", np.clip(degraded, 0, 1).astype(np.float32), mask


def synthetic_non_chest(count: int, size: int = 256, seed: int = 0) -> list[np.ndarray]:
    """Generated images with no chest in them (noise, gradients, discs, stripes, a grid), grey levels in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            image = ndimage.gaussian_filter(rng.random((size, size)), rng.uniform(1, 12))
        elif kind == 1:
            angle = rng.uniform(0, np.pi)
            image = np.cos(angle) * xx + np.sin(angle) * yy
        elif kind == 2:
            image = np.zeros((size, size))
            for _ in range(int(rng.integers(1, 6))):
                cy, cx, r = rng.random(2).tolist() + [rng.uniform(0.05, 0.3)]
                image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0.3, 1)
        elif kind == 3:
            image = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 20) * (xx if rng.random() < 0.5 else yy))
        else:
            image = ((np.floor(xx * rng.integers(2, 9)) + np.floor(yy * rng.integers(2, 9))) % 2).astype(float)
        image = image + rng.normal(0, 0.03, image.shape)
        lo, hi = image.min(), image.max()
        images.append(((image - lo) / (hi - lo + 1e-9)).astype(np.float32))
    return images


@dataclass
class Sample:
    """One scored mask: where it came from, its evidence and its real Dice (None where there is no reference)."""

    name: str
    group: str
    evidence: dict[str, float]
    real_dice: float | None
    seconds: float


def segment_with_evidence(network: torch.nn.Module, image: np.ndarray) -> tuple[np.ndarray, dict[str, float], float]:
    """The mask the inference config writes for ``image`` and its quality evidence (network in evidence mode)."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    network.record_evidence = True
    start = time.perf_counter()
    with torch.no_grad():
        logits = network(x)[0, 0].cpu().numpy()
    seconds = time.perf_counter() - start
    mask = imaging.fill_holes(imaging.keep_largest(logits >= 0, 2))
    return mask, dict(network.last_evidence[0]), seconds


def score_images(network: torch.nn.Module, images: Sequence[tuple[str, np.ndarray, np.ndarray | None]],
                 group: str) -> list[Sample]:
    """Samples of ``(name, image, reference or None)``; a non-chest image (reference None) has real Dice 0."""
    samples = []
    for name, image, reference in images:
        mask, found, seconds = segment_with_evidence(network, image)
        real = dice(mask, reference > 0) if reference is not None else 0.0
        samples.append(Sample(name, group, found, real, seconds))
    return samples


def calibration_samples(network: torch.nn.Module, items: Sequence[dict[str, Any]], degraded_per_image: int = 2,
                        non_chest: int = 30, seed: int = 0) -> list[Sample]:
    """Each item as it is and after ``degraded_per_image`` degradations, plus ``non_chest`` synthetic negatives."""
    rng = np.random.default_rng(seed)
    names = list(DEGRADATIONS)
    images = []
    for item in items:
        image, _ = read_cxr(item["image"])
        reference = read_mask(item["label"]).astype(bool)
        stem = Path(item["image"]).stem
        images.append((stem, image, reference))
        for name in rng.choice(names, size=min(degraded_per_image, len(names)), replace=False):
            images.append(degrade(stem, image, reference, str(name), rng))
    samples = score_images(network, images, "calibration")
    negatives = [(f"synthetic_{i}", image, None) for i, image in enumerate(synthetic_non_chest(non_chest, seed=seed))]
    return samples + score_images(network, negatives, "calibration_non_chest")


def _matrix(samples: Sequence[Sample], features: Sequence[str]) -> np.ndarray:
    return np.nan_to_num(np.array([[s.evidence[f] for f in features] for s in samples], dtype=np.float64))


def fit_quality_model(samples: Sequence[Sample], features: Sequence[str] = FEATURES,
                      threshold: float = DEFAULT_THRESHOLD, info: dict[str, Any] | None = None) -> QualityModel:
    """Standardised ``features`` -> ridge regression onto the real Dice -> isotonic map onto the real Dice."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import Ridge

    x = _matrix(samples, features)
    y = np.array([s.real_dice for s in samples], dtype=np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = (x - mean) / scale
    ridge = Ridge(alpha=1.0).fit(z, y)
    raw = ridge.predict(z)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, y)
    return QualityModel(features=list(features), mean=mean.tolist(), scale=scale.tolist(), coef=ridge.coef_.tolist(),
                        intercept=float(ridge.intercept_), isotonic_x=iso.X_thresholds_.tolist(),
                        isotonic_y=iso.y_thresholds_.tolist(), threshold=float(threshold), info=dict(info or {}))


def ranking(predicted: Sequence[float], real: Sequence[float], fail_below: float = FAIL_BELOW) -> dict[str, Any]:
    """Spearman of predicted vs real Dice, and AUROC of (1 - predicted) for real Dice < ``fail_below``."""
    predicted, real = np.asarray(predicted, float), np.asarray(real, float)
    failures = real < fail_below
    rho = stats.spearmanr(predicted, real).statistic if len(set(real.tolist())) > 1 and len(set(predicted.tolist())) > 1 else float("nan")
    auroc = float("nan")
    if 0 < failures.sum() < len(real):  # a failure is "positive" when its predicted Dice is lower
        from sklearn.metrics import roc_auc_score

        auroc = float(roc_auc_score(failures, -predicted))
    return {"n": int(len(real)), "failures": int(failures.sum()), "spearman": float(rho), "auroc": auroc}


def cross_validated(samples: Sequence[Sample], features: Sequence[str], folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Out-of-fold predictions of :func:`fit_quality_model`, folds grouped by source image; their ranking."""
    groups = np.array([s.name.split(":")[0] for s in samples])
    unique = np.unique(groups)
    fold_of = dict(zip(np.random.default_rng(seed).permutation(unique), np.arange(len(unique)) % folds))
    predicted = np.zeros(len(samples))
    for k in range(folds):
        test = np.array([fold_of[g] == k for g in groups])
        model = fit_quality_model([s for s, t in zip(samples, test) if not t], features)
        predicted[test] = [model.predict(s.evidence) for s, t in zip(samples, test) if t]
    return ranking(predicted, [s.real_dice for s in samples])


def choose_candidate(samples: Sequence[Sample]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The candidate with the best cross-validated AUROC (then Spearman) on the calibration samples."""
    scores = {name: cross_validated(samples, features) for name, features in CANDIDATES.items()}
    best = max(scores, key=lambda n: (np.nan_to_num(scores[n]["auroc"]), np.nan_to_num(scores[n]["spearman"])))
    return best, scores


def calibrate(model_path: str | Path, items: Sequence[dict[str, Any]], network: torch.nn.Module,
              threshold: float = DEFAULT_THRESHOLD, seed: int = 0) -> tuple[QualityModel, dict[str, Any]]:
    """Fit the quality model of ``model_path`` on ``items`` (its validation split): the chosen candidate's fit and
    a summary (cross-validated ranking of every candidate, sample counts, seconds per image)."""
    samples = calibration_samples(network, items, seed=seed)
    best, scores = choose_candidate(samples)
    info = {"model_sha256": file_sha256(model_path), "model_file": Path(model_path).name, "candidate": best,
            "calibration_images": len(items), "calibration_samples": len(samples),
            "prompt_mode": getattr(network, "prompt_mode", None), "fail_below": FAIL_BELOW,
            "cross_validated": scores}
    model = fit_quality_model(samples, CANDIDATES[best], threshold, info)
    return model, {"samples": samples, **info}


def calibrate_file(model_path: str | Path, items: Sequence[dict[str, Any]], threshold: float = DEFAULT_THRESHOLD,
                   prompt_mode: str = "two_pass", output: str | Path | None = None) -> dict[str, Any]:
    """Fit ``model_path``'s quality score on ``items`` and write it (default: ``<model stem>.quality.json`` beside
    the model); the summary without the samples."""
    from scripts.atomic import atomic_write_text
    from scripts.deploy.quality import calibration_path
    from scripts.model_files.load import load_model

    if not items:
        raise ValueError(f"{model_path}: no validation images to calibrate the quality score on")
    network = load_model(model_path, prompt_mode=prompt_mode, runtime="eager")
    fitted, summary = calibrate(model_path, items, network, threshold=threshold)
    written = atomic_write_text(output or calibration_path(model_path), fitted.to_json())
    return {"written": str(written), **{k: v for k, v in summary.items() if k != "samples"}}


def rca_score(image: np.ndarray, mask: np.ndarray, references: Sequence[tuple[np.ndarray, np.ndarray]],
              size: int = 128) -> float:
    """Reverse Classification Accuracy (Valindria et al. 2017; CheXmask's quality index), atlas form: the mask is
    carried onto each reference image by an affine registration of the image to it, and the best Dice with the
    references' own masks estimates the mask's Dice. SimpleITK does the registration; nothing else here does RCA."""
    import SimpleITK as sitk

    def prepared(array: np.ndarray) -> sitk.Image:
        return sitk.GetImageFromArray(imaging.resize(array.astype(np.float32), size, size, antialias=True))

    moving, moving_mask = prepared(image), sitk.GetImageFromArray(
        (imaging.resize(mask.astype(np.float32), size, size) >= 0.5).astype(np.uint8))
    best = 0.0
    for ref_image, ref_mask in references:
        fixed = prepared(ref_image)
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(32)
        reg.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 60)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInterpolator(sitk.sitkLinear)
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(2),
                                                    sitk.CenteredTransformInitializerFilter.GEOMETRY)
        reg.SetInitialTransform(initial, inPlace=False)
        try:
            transform = reg.Execute(fixed, moving)
        except RuntimeError:
            continue
        warped = sitk.GetArrayFromImage(sitk.Resample(moving_mask, fixed, transform, sitk.sitkNearestNeighbor, 0)) > 0
        target = imaging.resize(ref_mask.astype(np.float32), size, size) >= 0.5
        best = max(best, dice(warped, target))
    return best


def calibration_plot(plot: dict[str, tuple[Sequence[float], Sequence[float]]], threshold: float, path: Path) -> None:
    """Predicted vs real Dice per group (``{group: (predicted, real)}``), the diagonal and the review threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for (group, (predicted, real)), marker in zip(plot.items(), "osD^"):
        ax.scatter(real, predicted, s=14, marker=marker, alpha=0.7, label=group)
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.axhline(threshold, color="tab:red", lw=1, ls="--", label=f"review below {threshold}")
    ax.set_xlabel("real Dice")
    ax.set_ylabel("predicted Dice")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



def plot_evaluation(csv_path: Path, threshold: float | None = None) -> Path | None:
    """``<prefix>_quality.png`` beside ``adaqat evaluate``'s ``<prefix>_quality.csv``: predicted vs real Dice."""
    import csv

    try:
        import matplotlib  # noqa: F401  (the "study" extra)
    except ImportError:
        return None
    if not Path(csv_path).is_file():
        return None
    with Path(csv_path).open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("predicted_dice") and r.get("real_dice")]
    if not rows:
        return None
    limit = threshold if threshold is not None else DEFAULT_THRESHOLD
    path = Path(csv_path).with_suffix(".png")
    calibration_plot({"evaluated": ([float(r["predicted_dice"]) for r in rows], [float(r["real_dice"]) for r in rows])},
                     limit, path)
    return path


__all__ = ["CANDIDATES", "calibration_plot", "plot_evaluation", "DEGRADATIONS", "FAIL_BELOW", "Sample", "calibrate", "calibrate_file", "calibration_samples", "choose_candidate",
           "cross_validated", "degrade", "fit_quality_model", "ranking", "rca_score", "score_images", "segment_with_evidence",
           "synthetic_non_chest"]
