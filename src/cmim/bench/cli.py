"""The `bench` subcommand's arguments (no heavy imports here: `python -m cmim validate` stays fast)."""

from __future__ import annotations

STEP_NAMES = ("mae", "can", "cmae", "simclr", "finetune", "finetune_recipe")


def add_bench_parser(sub) -> None:
    s = sub.add_parser("bench", help="time cmim's training step beside a stand-alone reference step (+ ceilings)")
    s.add_argument("--size", default="paper", choices=["tiny", "demo", "paper"],
                   help="tiny: seconds on a CPU; demo: config.yaml's model; paper: ViT-B/16 @ 224, batch 256")
    s.add_argument("--steps-to-run", "--only", dest="steps_to_run", nargs="+", choices=STEP_NAMES, default=None,
                   help="which steps (default: mae can cmae simclr finetune; finetune_recipe = MAE's full recipe)")
    s.add_argument("--compile", default="off", choices=["off", "regional", "full"],
                   help="cmim's step only; the reference stays eager, as the official code runs "
                        "(regional = every timm Block compiled)")
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="cmim's precision key; the reference uses the dtype it resolves to")
    s.add_argument("--batch", type=int, default=None,
                   help="images per step (default: the size's; e.g. --size paper --batch 8 on a CPU)")
    s.add_argument("--steps", type=int, default=None, help="timed steps (default: the size's)")
    s.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: the size's)")
    s.add_argument("--repeats", type=int, default=1,
                   help="time cmim and the reference this many times each, interleaved (noisy machines)")
    s.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="cpu: time steps by the process's CPU time (with --threads 1: A/B on a shared machine)")
    s.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default: torch's)")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    s.add_argument("--loader", default=None, metavar="MANIFEST",
                   help="a train manifest.json: also time cmim's loader for each pretraining step's views")
    s.add_argument("--workers", type=int, default=8, help="loader workers (with --loader)")
    s.add_argument("--out-dir", default="benchmarks/results", help="where the JSON file goes")
    s.add_argument("--out", default=None,
                   help="the JSON file (default: <out-dir>/<date>-<device>-<size>-<compile>.json)")
    s.set_defaults(fn=cmd_bench)


def cmd_bench(args) -> int:
    from cmim.bench.run import main

    return main(args)
