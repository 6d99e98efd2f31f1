"""Hard-link this environment's torch (and torchvision, and what torch needs) into another venv.

torch's CUDA build fills about 5.5 GB per environment, and the project makes three (.venv, the MONAI Label
backend's .venv-monailabel, the zoo-package check venv): on a CI machine with little free disk the third pip
install failed with ENOSPC. The same pinned wheels unpacked three times are the same bytes, so the other
environments get hard links to this one's files, which is what uv's default link mode does; pip cannot link
installs, and uv does not look for the wheels on this machine's disk, so the ~60 lines are written here.

Run with the source environment's Python: ``.venv/bin/python scripts/link_torch.py TARGET_VENV``. It links
only when both environments share a Python version and the target has no torch yet; the
caller still runs its pinned ``pip install torch==... torchvision==...``, which then finds them installed (or
installs them itself when nothing was linked). pip unlinks a file before it writes one, so a later upgrade or
uninstall in either environment never changes the other's files. Console scripts (bin/torchrun) are not linked.
"""
from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOTS = ("torch", "torchvision")
NOT_FOLLOWED = {"torchvision": {"numpy", "pillow"}}  # torchvision's own deps: the target's other pins decide them


def closure(roots: tuple[str, ...] = ROOTS) -> dict[str, metadata.Distribution]:
    """Installed distributions of ``roots`` and everything torch requires here (extras and markers evaluated)."""
    found: dict[str, metadata.Distribution] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(r), frozenset()) for r in roots]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:  # the same name again with other extras is walked again, never twice alike
            continue
        seen.add((name, extras))
        dist = found.setdefault(name, metadata.distribution(name))
        for line in dist.requires or []:
            req = Requirement(line)
            dep = canonicalize_name(req.name)
            if dep in NOT_FOLLOWED.get(name, ()):
                continue
            envs = [{"extra": e} for e in ("", *extras)]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((dep, frozenset(req.extras)))
    return found


def target_site_packages(venv: Path) -> Path:
    """The target venv's site-packages, refused when its Python is not this one's version."""
    python = venv / "bin" / "python"
    code = "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); print(sysconfig.get_paths()['purelib'])"
    version, site = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                                   check=True).stdout.splitlines()
    if version != "%d.%d" % sys.version_info[:2]:
        raise SystemExit(f"{python}: Python {version}, not this one's ({sys.executable}); nothing linked")
    return Path(site)


def link_into(venv: Path) -> list[str]:
    """Link every file each distribution's RECORD lists under site-packages; returns 'name==version' linked."""
    site = target_site_packages(venv)
    present = {canonicalize_name(p.name[: -len(".dist-info")].rsplit("-", 1)[0]) for p in site.glob("*.dist-info")}
    if present & set(ROOTS):
        raise SystemExit(f"{site} already has {', '.join(sorted(present & set(ROOTS)))}; nothing linked")
    # what the target already has (the venv's own setuptools) stays, and its pip install settles the version
    dists = {name: dist for name, dist in closure().items() if name not in present}
    linked: list[Path] = []
    try:
        for dist in dists.values():
            src_site = Path(dist.locate_file(""))
            for rel in dist.files or []:
                if str(rel).startswith(".."):  # console scripts with the source venv's shebang
                    continue
                src, dst = src_site / rel, site / rel
                if not src.is_file():  # RECORD may list a .pyc that was never written
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
                linked.append(dst)
    except OSError as err:  # another file system, or links refused: leave the target as it was
        for path in linked:
            path.unlink(missing_ok=True)
        raise SystemExit(f"cannot hard-link into {site} ({err}); nothing linked")
    return [f"{d.metadata['Name']}=={d.version}" for d in dists.values()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("venv", type=Path, help="the target virtual environment (made with python -m venv)")
    names = link_into(parser.parse_args(argv).venv)
    print(f"linked {len(names)} distributions from {sys.prefix}: {' '.join(sorted(names))}", file=sys.stderr)


if __name__ == "__main__":
    main()
