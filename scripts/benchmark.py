#!/usr/bin/env python
"""CPU benchmark of every inference route (thin wrapper of ``adaqat benchmark``; logic in adaqat/benchmark.py).

    .venv/bin/python scripts/benchmark.py --arch vit_b small --threads 2 --repeats 5 --out runs/bench/benchmark.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the adaqat tools package of this checkout

from adaqat.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
