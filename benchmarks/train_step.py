"""Kept for old command lines: the benchmark is `python -m cmim bench` now (cmim.bench).

    python benchmarks/train_step.py --size demo --threads 1    # = python -m cmim bench --size demo --threads 1

It times cmim's training step (Trainer.train_step of the real tasks) beside a stand-alone
reference step, with the matmul ceilings, in one run; see benchmarks/README.md.
"""

from __future__ import annotations

import sys

from cmim.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
