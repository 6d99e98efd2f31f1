"""How well each quality score ranks real masks, on images its calibration never saw.

    .venv/bin/python scripts/benchmark_quality.py --out docs/results

Model: the shipped INT8 model (``--model``), two-pass prompt, eager route (the torch-free predictor computes the
same evidence: ``tests/test_quality.py``). Calibration set: the JSRT validation split as it is and degraded, plus
synthetic non-chest images (``adaqat.quality.calibration_samples``), the same samples ``adaqat calibrate-quality``
fits the shipped score on. Test sets: the JSRT test split, as it is and
with one degradation each (drawn with another seed than the calibration's); the embedded CC BY sample (its masks include the heart
shadow, SCR's do not: a label-convention gap, not a segmentation failure the model could see); the accepted
entries of the bad-input corpus (tests/bad_input_corpus.py) built from a JSRT *test* image; and non-chest images:
scikit-image's bundled sample images (photographs, a page of text, textures, the Shepp-Logan CT phantom; public
domain / CC0 as its data README and docstrings state) plus generated near-blank images that pass the input screen.

Scores compared: SAM's IoU head as trained today (raw), the IoU head trained for it (a fresh head of the same
shape fitted to the real IoU from the decoder's IoU token, on the JSRT training split; not shipped), each
candidate of ``adaqat.quality.CANDIDATES`` fitted on the calibration samples (the shipped one is chosen by
cross-validation there), and Reverse Classification Accuracy (``adaqat.quality.rca_score``, 8 reference images from
the training split). Per set: Spearman (predicted vs real Dice), AUROC for real Dice < 0.90, the fraction marked
review. Writes ``quality.json``, ``quality.md`` and ``quality_calibration.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "monai_bundle"))
sys.path.insert(0, str(REPO / "tests"))  # the bad-input corpus builder

from adaqat import quality  # noqa: E402
from scripts.data.cxr_io import read_cxr, read_mask  # noqa: E402
from scripts.data.datasets import select_split  # noqa: E402
from scripts.data.input_screen import check_image  # noqa: E402
from scripts.deploy.quality import load_quality_model  # noqa: E402
from scripts.model_files.load import load_model  # noqa: E402

JSRT = REPO.parent / "shared" / "data" / "jsrt_scr_224"
SAMPLE = REPO / "sample_data" / "cxr_ccby_512"
SKIMAGE_NAMES = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "horse", "hubble_deep_field",
                 "moon", "page", "rocket", "shepp_logan_phantom", "text", "clock")


def _gray(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 3:
        array = array[..., :3].mean(axis=2)
    lo, hi = array.min(), array.max()
    return ((array - lo) / (hi - lo + 1e-9)).astype(np.float32)


def degrade_each(images: list, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Each image after one degradation drawn at random (``adaqat.quality.DEGRADATIONS``), reference moved with it."""
    rng = np.random.default_rng(seed)
    return [quality.degrade(name, image, reference, str(rng.choice(list(quality.DEGRADATIONS))), rng)
            for name, image, reference in images]


def non_chest_images(seed: int = 7) -> list[tuple[str, np.ndarray, None]]:
    """scikit-image's bundled samples and near-blank images that pass the input screen (checked here)."""
    from skimage import data

    images = [(name, _gray(getattr(data, name)()), None) for name in SKIMAGE_NAMES]
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256] / 256
    for i in range(4):
        blankish = 0.5 + 0.04 * (xx if i % 2 else yy) + rng.normal(0, 0.02, xx.shape)
        images.append((f"blankish_{i}", np.clip(blankish, 0, 1).astype(np.float32), None))
    for name, image, _ in images:
        check_image(image, name)  # each passes the input screen: the score, not the screen, must flag it
    return images


def labelled(items: list[dict]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    return [(Path(i["image"]).stem, read_cxr(i["image"])[0], read_mask(i["label"]) > 0) for i in items]


def corpus_images(folder: Path, image: str, mask: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from bad_input_corpus import build_corpus

    out = []
    for entry in build_corpus(folder, Path(image), Path(mask)):
        if entry.expect == "ok" and not entry.mask_problem:
            out.append((entry.name, read_cxr(entry.image)[0], read_mask(entry.mask) > 0))
    return out


class IouTokenTap:
    """Keeps the input of SAM's IoU head (the decoder's IoU token) at the final pass of each forward."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.calls: list[torch.Tensor] = []
        network.sam.mask_decoder.iou_prediction_head.register_forward_hook(lambda m, args, out: self.calls.append(args[0].detach().clone()))
        self.final_call = 1 if network.prompt_mode == "two_pass" else 0

    def take(self) -> torch.Tensor:
        token, self.calls = self.calls[self.final_call], []
        return token.reshape(-1)


def score_set(network, tap, images, group) -> tuple[list[quality.Sample], list[np.ndarray], list[np.ndarray]]:
    """Samples (evidence, real Dice; 0 without a reference), the IoU tokens and the masks of each image."""
    samples, tokens, masks = [], [], []
    for name, image, reference in images:
        mask, found, seconds = quality.segment_with_evidence(network, image)
        tokens.append(tap.take().numpy())
        real = quality.dice(mask, reference) if reference is not None else 0.0
        samples.append(quality.Sample(name, group, found, real, seconds))
        masks.append(mask)
    return samples, tokens, masks


def real_iou(mask: np.ndarray, reference: np.ndarray | None) -> float:
    if reference is None:
        return 0.0
    union = np.logical_or(mask, reference).sum()
    return float(np.logical_and(mask, reference).sum() / union) if union else 1.0


def plain_seconds(network, images) -> float:
    """Median seconds of the plain forward (no evidence): the base the evidence's added time is measured on."""
    network.record_evidence = False
    times = []
    for _, image, _ in images:
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        start = time.perf_counter()
        with torch.no_grad():
            network(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def train_iou_head(network, tokens: np.ndarray, ious: np.ndarray, seed: int = 0) -> torch.nn.Module:
    """A head of the IoU head's shape (segment-anything's MLP) fitted to the real IoU by MSE."""
    from segment_anything.modeling.mask_decoder import MLP

    torch.manual_seed(seed)
    head = MLP(tokens.shape[1], 256, 1, 3)  # SAM's iou_prediction_head: depth 3, hidden 256
    x, y = torch.from_numpy(tokens).float(), torch.from_numpy(ious).float()[:, None]
    optimiser = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(1500):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(head(x), y)
        loss.backward()
        optimiser.step()
    return head.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "monai_bundle" / "models" / "model_int8.pt"))
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--rca-references", type=int, default=8)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    network = load_model(args.model, prompt_mode="two_pass", runtime="eager")
    tap = IouTokenTap(network)
    shipped, reason = load_quality_model(args.model)
    if shipped is None:
        raise SystemExit(f"{args.model}: {reason}")
    split = lambda name: select_split(JSRT, name, by="image")  # noqa: E731  (the shipped model's split)

    started = time.time()
    calibration = quality.calibration_samples(network, split("val"))
    tap.calls = []
    train_images = labelled(split("train"))
    train_set = train_images + degrade_each(train_images, seed=1)  # the trained IoU head sees failures too
    _, train_tokens, train_masks = score_set(network, tap, train_set, "train")
    train_ious = [real_iou(m, ref) for m, (_, _, ref) in zip(train_masks, train_set)]
    head = train_iou_head(network, np.stack(train_tokens), np.asarray(train_ious))

    with tempfile.TemporaryDirectory() as tmp:
        test_items = split("test")
        jsrt_test = labelled(test_items)
        sets = {
            "jsrt_test": jsrt_test,
            "jsrt_test_degraded": degrade_each(jsrt_test, seed=11),
            "ccby_sample": labelled(select_split(SAMPLE, "all")),
            "bad_input_accepted": corpus_images(Path(tmp), test_items[0]["image"], test_items[0]["label"]),
            "non_chest": non_chest_images(),
        }
        scored = {group: score_set(network, tap, images, group) for group, images in sets.items()}
    base_seconds = plain_seconds(network, sets["jsrt_test"])

    fitted = {name: quality.fit_quality_model(calibration, features) for name, features in quality.CANDIDATES.items()}
    step = max(1, len(train_images) // args.rca_references)
    references = [(image, ref) for _, image, ref in train_images[::step]][: args.rca_references]
    result = {"model": Path(args.model).name, "prompt": "two_pass", "route": "eager",
              "shipped_candidate": shipped.info.get("candidate"), "threshold": shipped.threshold,
              "calibration_samples": len(calibration), "rca_references": len(references),
              "cross_validated_on_calibration": shipped.info.get("cross_validated"),
              "seconds_plain_forward": base_seconds, "sets": {}}
    plot = {}
    for group, (samples, tokens, masks) in scored.items():
        real = [s.real_dice for s in samples]
        with torch.no_grad():
            trained = head(torch.from_numpy(np.stack(tokens)).float())[:, 0].numpy().tolist()
        scores = {"iou_head_as_trained": [s.evidence["iou_final"] for s in samples], "iou_head_trained_for_it": trained}
        scores.update({f"fit_{name}": [m.predict(s.evidence) for s in samples] for name, m in fitted.items()})
        scores["shipped"] = [shipped.predict(s.evidence) for s in samples]
        start = time.perf_counter()
        scores["rca"] = [quality.rca_score(image, mask, references) for (_, image, _), mask in zip(sets[group], masks)]
        rca_seconds = (time.perf_counter() - start) / len(samples)
        entry = {"n": len(samples), "mean_real_dice": float(np.mean(real)),
                 "real_below_0.90": int(sum(r < quality.FAIL_BELOW for r in real)), "scores": {},
                 "seconds_with_evidence": float(np.median([s.seconds for s in samples])), "rca_seconds": rca_seconds}
        for name, values in scores.items():
            entry["scores"][name] = quality.ranking(values, real) if group != "non_chest" else {}
            entry["scores"][name]["flagged_fraction"] = float(np.mean([v < shipped.threshold for v in values]))
        entry["shipped_per_image"] = {s.name: [round(p, 4), round(r, 4)] for s, p, r in zip(samples, scores["shipped"], real)}
        result["sets"][group] = entry
        plot[group] = (scores["shipped"], real)
    result["seconds"] = time.time() - started
    (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "quality.md").write_text(markdown(result))
    quality.calibration_plot(plot, shipped.threshold, out / "quality_calibration.png")
    print((out / "quality.md").read_text())
    return 0


def markdown(result: dict) -> str:
    lines = ["# Quality score: does it rank real masks?", "",
             f"Model `{result['model']}`, {result['prompt']} prompt, {result['route']} route; shipped score: "
             f"`{result['shipped_candidate']}` (chosen by cross-validation on {result['calibration_samples']} calibration "
             f"samples), threshold {result['threshold']}. Spearman: predicted vs real Dice; AUROC: detecting real Dice "
             f"< 0.90; flagged: fraction under the threshold (for raw IoU-head and RCA values the same threshold is "
             f"applied to the raw value). Plain forward {result['seconds_plain_forward'] * 1000:.0f} ms per image "
             f"(median, JSRT test).", ""]
    for group, entry in result["sets"].items():
        lines += [f"## {group} ({entry['n']} images, mean real Dice {entry['mean_real_dice']:.3f}, "
                  f"{entry['real_below_0.90']} below 0.90)", "",
                  f"Forward with evidence {entry['seconds_with_evidence'] * 1000:.0f} ms per image (median); "
                  f"RCA {entry['rca_seconds']:.2f} s per image.", "",
                  "| score | Spearman | AUROC (Dice < 0.90) | flagged |", "|---|---|---|---|"]
        for name, r in entry["scores"].items():
            fmt = lambda v: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"  # noqa: E731
            lines.append(f"| {name} | {fmt(r.get('spearman'))} | {fmt(r.get('auroc'))} | {r['flagged_fraction']:.2f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
