#!/usr/bin/env python
"""Package the bundle the way the MONAI model zoo distributes it, and run the zoo's checks offline.

Why: model users fetch bundles with ``python -m monai.bundle download``, which expects a release asset
``<name>_v<version>.zip`` holding one top-level ``<name>/`` folder. The zip must be self-contained
(configs, the bundle's own ``scripts/``, docs, licence and the weights: the FP32 and INT8 models, and where
present the foundation and the INT8 model's ONNX form), with every weight listed in ``large_files.yml`` with
its sha256 and release URL, and the version in ``configs/metadata.json`` present in its changelog. With
``--without-weights`` the zip lists the weights but leaves them out; ``python -m monai.bundle
download_large_files --bundle_path <bundle>`` then fetches them from their URLs and checks each hash.

Usage (from the repository root, in the core ``.venv``)::

    .venv/bin/python scripts/package_bundle.py -o dist                      # the shipped models/
    .venv/bin/python scripts/package_bundle.py --models runs/sample/models -o dist
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "monai_bundle"
SCHEMA = REPO / "scripts" / "resources" / "meta_schema_20240725.json"
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"
NAME = "adaqat_cxr_lung"
WEIGHTS = ("model.pt", "model_int8.pt")  # required
# shipped beside them when the models folder has them: the stage-0 foundation and the INT8 model's ONNX graphs
OPTIONAL_WEIGHTS = ("foundation.pt", "model_int8.encoder-*.onnx", "model_int8.decoder-*.onnx")
HASH_TYPE = "sha256"
DEFAULT_URL = "https://github.com/adaqat/adaqat-cxr/releases/download/v{version}/{file}"  # as large_files.yml
# what the zoo's CI requires of every bundle (model-zoo ci/verify_bundle.py) plus what ours ships
REQUIRED_FILES = ("LICENSE", "configs/metadata.json", "configs/inference.json", "configs/train.json",
                  "configs/evaluate.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt",
                  "large_files.yml", "scripts/__init__.py")
# run outputs and caches a working bundle folder may hold; never shipped
EXCLUDED = ("runs", "eval", "predictions", "__pycache__", ".pytest_cache")
TRAIN_PROPERTIES_CONFIG = "configs/train.json"
INFER_PROPERTIES_CONFIG = "configs/inference.json"


class PackageError(RuntimeError):
    """The bundle cannot be packaged or fails a zoo check; the message says which."""


def file_hash(path: Path, hash_type: str = HASH_TYPE) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, hash_type).hexdigest()


def weight_files(models: Path) -> list[Path]:
    """The weights a package carries from ``models``: the required two (a clear error when absent) and the optional."""
    files = []
    for name in WEIGHTS:
        if not (models / name).is_file():
            raise PackageError(f"{models / name}: weight file missing (train or export the model first)")
        files.append(models / name)
    for pattern in OPTIONAL_WEIGHTS:
        files += sorted(p for p in models.glob(pattern) if p.is_file())
    return files


def read_metadata(bundle: Path) -> dict[str, Any]:
    """metadata.json, with the version/changelog consistency the zoo checks."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    version = meta.get("version")
    if not version or version not in meta.get("changelog", {}):
        raise PackageError(f"metadata.json: version {version!r} has no entry in its changelog")
    return meta


_ENGINE_NAME = re.compile(r"\bscripts(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _module_file(scripts_dir: Path, dotted: str) -> Path | None:
    """The file of engine module ``scripts.a.b`` (a module or a package's ``__init__``), None if absent."""
    parts = dotted.split(".")[1:]
    base = scripts_dir.joinpath(*parts) if parts else scripts_dir
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports_of(path: Path, scripts_dir: Path) -> set[str]:
    """Engine modules a file imports (absolute ``scripts.*`` or relative), lazy imports inside functions included."""
    module = "scripts." + ".".join(path.relative_to(scripts_dir).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "scripts" or a.name.startswith("scripts.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "scripts" or node.module.startswith("scripts.")):
                target = node.module
            else:
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # ``from pkg import module``
    return found


def reached_modules(bundle: Path) -> set[Path]:
    """Every file of ``scripts/`` the configs reach: named in a config, or imported (transitively) by one that is.

    Package ``__init__`` files on the way are reached too (importing ``scripts.a.b`` runs them).
    """
    scripts_dir = bundle / "scripts"
    todo = {"scripts"}
    for config in sorted((bundle / "configs").glob("*.json")):
        todo |= set(_ENGINE_NAME.findall(config.read_text()))
    reached: set[Path] = set()
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))}  # parent packages
        path = _module_file(scripts_dir, name)
        if path is None or path in reached:
            continue
        reached.add(path)
        todo |= _imports_of(path, scripts_dir)
    return reached


def check_engine_reached(bundle: Path) -> None:
    """Refuse a bundle whose ``scripts/`` holds a module no config reaches: tools belong in the ``adaqat`` package."""
    scripts_dir = bundle / "scripts"
    stray = sorted(str(p.relative_to(bundle)) for p in scripts_dir.rglob("*.py")
                   if "__pycache__" not in p.parts and p not in reached_modules(bundle))
    if stray:
        raise PackageError(f"{bundle}: modules no config imports would ship in the zoo package: {stray}; "
                           "move tools to the adaqat package or import them from the configs")


def _copy_tree(bundle: Path, dest: Path) -> None:
    shutil.copytree(bundle, dest, ignore=lambda _d, names: [n for n in names if n in EXCLUDED or n.endswith(".pyc")])
    models = dest / "models"
    models.mkdir(exist_ok=True)
    for stale in models.iterdir():  # weights come only from --models, never from leftovers
        if stale.is_file():
            stale.unlink()


def large_files_yaml(entries: list[dict[str, str]]) -> str:
    """``large_files.yml`` text in the zoo's layout (path, url, hash_val, hash_type per file)."""
    import yaml  # imported here: PyYAML comes with monai's bundle tools, not the standard library

    return yaml.safe_dump({"large_files": entries}, sort_keys=False)


def stage_bundle(bundle: Path, models: Path, dest: Path, name: str, url: str, with_weights: bool = True) -> dict[str, Any]:
    """Copy the bundle into ``dest/<name>`` with the weights from ``models`` (or only their listing); returns the metadata."""
    meta = read_metadata(bundle)
    check_engine_reached(bundle)
    root = dest / name
    _copy_tree(bundle, root)
    entries = []
    for src in weight_files(models):
        if with_weights:
            shutil.copy2(src, root / "models" / src.name)
        entries.append({"path": f"models/{src.name}", "url": url.format(name=name, version=meta["version"], file=src.name),
                        "hash_val": file_hash(src), "hash_type": HASH_TYPE})
    import yaml

    shipped = {e["path"] for e in entries}
    # other entries (the official SAM checkpoint for --arch vit_b) stay listed as the repo has them
    others = [e for e in yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"] if e["path"] not in shipped]
    (root / "large_files.yml").write_text(large_files_yaml(entries + others))
    return meta


def check_required_files(root: Path) -> None:
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if missing:
        raise PackageError(f"{root}: required bundle files missing: {missing}")


def check_large_files(root: Path) -> None:
    """Every weight shipped is listed with the hash of the shipped bytes."""
    import yaml

    listed = {e["path"]: e for e in yaml.safe_load((root / "large_files.yml").read_text())["large_files"]}
    for weight in sorted(p for p in (root / "models").iterdir() if p.name != ".gitkeep"):
        entry = listed.get(f"models/{weight.name}")
        if entry is None or entry.get("hash_type") != HASH_TYPE or entry.get("hash_val") != file_hash(weight):
            raise PackageError(f"large_files.yml: models/{weight.name} not listed with its {HASH_TYPE}")


def check_metadata_schema(root: Path) -> None:
    """``verify_metadata`` against the repo's schema copy (no download: the file exists)."""
    from monai.bundle import verify_metadata

    try:
        verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(SCHEMA), hash_val=SCHEMA_MD5)
    except Exception as exc:  # monai raises ValueError for a schema violation
        raise PackageError(f"metadata.json does not match the zoo schema: {exc}") from exc


def check_net_in_out(root: Path) -> None:
    """``verify_net_in_out``: network_def on a B x C x H x W input gives B x K x H x W (metadata shapes)."""
    from monai.bundle import verify_net_in_out

    with _on_path(root):
        verify_net_in_out(net_id="network_def", meta_file=str(root / "configs" / "metadata.json"),
                          config_file=str(root / INFER_PROPERTIES_CONFIG), device="cpu", n=1,
                          bundle_root=str(root))


def _probe_dataset(folder: Path) -> Path:
    """Three synthetic image/mask pairs: what the configs' screened datalists need to instantiate offline."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(3):
        image = rng.integers(0, 255, (64, 64), dtype=np.uint8)
        mask = np.zeros((64, 64), np.uint8)
        mask[16:48, 8 + i : 28 + i] = 255
        Image.fromarray(image).save(folder / "images" / f"probe{i}.png")
        Image.fromarray(mask).save(folder / "masks" / f"probe{i}.png")
    return folder


def check_properties(root: Path) -> None:
    """``ConfigWorkflow.check_properties`` for train and inference: the config ids the zoo requires exist
    and instantiate (on a synthetic probe dataset, outputs to a temporary folder)."""
    from monai.bundle import ConfigWorkflow

    with _on_path(root), tempfile.TemporaryDirectory(prefix="adaqat-probe-") as tmp:
        data = _probe_dataset(Path(tmp) / "data")
        # the structure is checked, not weights: adapters on a random encoder are asked for explicitly
        runs = {"train": {"dataset_dir": str(data), "run_dir": f"{tmp}/run", "device": "cpu", "allow_random_encoder": True},
                "infer": {"dataset_dir": str(data / "images"), "output_dir": f"{tmp}/pred", "device": "cpu"}}
        for config, kind in ((TRAIN_PROPERTIES_CONFIG, "train"), (INFER_PROPERTIES_CONFIG, "infer")):
            workflow = ConfigWorkflow(config_file=str(root / config), meta_file=str(root / "configs" / "metadata.json"),
                                      workflow_type=kind, bundle_root=str(root), **runs[kind])
            workflow.initialize()
            missing = workflow.check_properties()
            if missing:
                raise PackageError(f"{config}: missing required {kind} properties {missing}")


class _on_path:
    """The bundle root first on ``sys.path`` (as its configs arrange), and its ``scripts`` modules forgotten after."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)

    def __enter__(self) -> None:
        sys.path.insert(0, self.root)

    def __exit__(self, *exc: object) -> None:
        sys.path.remove(self.root)
        for mod in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[mod]


def run_zoo_checks(root: Path) -> None:
    """The model zoo's offline checks on a staged bundle folder; raises PackageError on the first failure."""
    check_required_files(root)
    check_large_files(root)
    check_metadata_schema(root)
    check_net_in_out(root)
    check_properties(root)


def zip_bundle(staging: Path, name: str, version: str, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_v{version}.zip"
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((staging / name).rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(staging).as_posix())
    tmp.replace(target)
    return target


def package(models: Path, out_dir: Path, bundle: Path = BUNDLE, name: str = NAME, url: str = DEFAULT_URL,
            checks: bool = True, with_weights: bool = True) -> Path:
    """Stage, check and zip the bundle; returns ``out_dir/<name>_v<version>.zip``."""
    with tempfile.TemporaryDirectory(prefix="adaqat-package-") as tmp:
        staging = Path(tmp)
        meta = stage_bundle(Path(bundle), Path(models), staging, name, url, with_weights)
        if checks and with_weights:  # the zoo's checks run the network: they need the weights
            run_zoo_checks(staging / name)
        return zip_bundle(staging, name, meta["version"], Path(out_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=BUNDLE / "models",
                        help="folder holding model.pt and model_int8.pt (+ foundation.pt, model_int8.*.onnx; default: the bundle's models/)")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    parser.add_argument("--name", default=NAME, help=f"bundle name in the zip (default: {NAME})")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="download URL template of each weight for large_files.yml ({name}, {version}, {file})")
    parser.add_argument("--skip-checks", action="store_true", help="do not run the zoo checks")
    parser.add_argument("--without-weights", action="store_true",
                        help="list the weights in large_files.yml (hash + URL) but leave them out of the zip")
    args = parser.parse_args(argv)
    try:
        target = package(args.models, args.out, name=args.name, url=args.url, checks=not args.skip_checks,
                         with_weights=not args.without_weights)
    except PackageError as exc:
        print(f"package_bundle: {exc}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
