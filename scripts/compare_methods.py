#!/usr/bin/env python
"""Method comparison study: ``python scripts/compare_methods.py --out runs/compare`` = ``adaqat compare --out runs/compare``.

A thin wrapper so the study runs from a checkout without installing; the logic is ``adaqat.study.runner``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the adaqat tools package of this checkout

import shlex  # noqa: E402

from adaqat.cli import main  # noqa: E402

if __name__ == "__main__":
    command = "python scripts/compare_methods.py " + shlex.join(sys.argv[1:])
    sys.exit(main(["compare", *sys.argv[1:], "--command-line", command]))
