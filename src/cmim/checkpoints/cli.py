"""The command-line stages of cmim.checkpoints (added to `python -m cmim` by cmim.cli):

    python -m cmim import-checkpoint --run-config results/pretrain/<run>/config.yaml --source <file> --out <dir>
    python -m cmim export --run <id> --format timm|mae --out <file> [--configfile study.yaml]

Light at import (no torch): the work is imported inside each stage.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cmim import paths
from cmim.config import load_config
from cmim.errors import CheckpointError
from cmim.study import resolve_run


def cmd_import_checkpoint(args) -> int:
    """An imported run's import job (rule import_checkpoint): the same files as a pretraining run."""
    from cmim.checkpoints.job import import_run

    run_config = Path(args.run_config)
    if not run_config.exists():
        raise FileNotFoundError(f"run config {run_config} not found; it is written by the run_config rule")
    run = yaml.safe_load(run_config.read_text())
    import_run(run, Path(args.source), paths.RunFiles(Path(args.out)), log=lambda m: print(m, flush=True))
    return 0


def cmd_export(args) -> int:
    """A run's encoder (results/pretrain/<run>/checkpoint.pt) as a timm or MAE file."""
    from cmim.checkpoints.export import export

    config = load_config(args.configfile, args.set)
    run = resolve_run(config, args.run)
    checkpoint = paths.run_files(args.run).checkpoint
    if not checkpoint.exists():
        raise CheckpointError(f"{checkpoint} not found: run `snakemake {checkpoint}` (with this study's "
                              f"--configfile) first")
    done = export(checkpoint, args.format, Path(args.out), expected_spec=run["encoder"])
    print(f"wrote {done['out']}: the encoder of run {args.run} ({done['keys']} tensors) in {args.format} layout",
          flush=True)
    if args.format == "timm":
        spec = run["encoder"]
        print(f"  timm.create_model('vit_base_patch16_224.mae', pretrained=True, pretrained_cfg_overlay="
              f"dict(file='{done['out']}'), img_size={spec['img_size']}, patch_size={spec['patch_size']}, "
              f"embed_dim={spec['embed_dim']}, depth={spec['depth']}, num_heads={spec['num_heads']})", flush=True)
    else:
        print(f"  MAE: main_finetune.py --finetune {done['out']} (reads checkpoint['model']); cmim: "
              f"checkpoint: {{path: {done['out']}, format: mae}}", flush=True)
    return 0


def add_checkpoint_parsers(sub, config_args) -> None:
    s = sub.add_parser("import-checkpoint", help="import an imported run's weights file (the key report is printed)")
    s.add_argument("--run-config", required=True, help="the run's resolved config.yaml")
    s.add_argument("--source", required=True, help="the weights file")
    s.add_argument("--out", required=True, help="the run's folder (results/pretrain/<run>)")
    s.set_defaults(fn=cmd_import_checkpoint)

    s = sub.add_parser("export", help="write a run's encoder as a timm or official-MAE weights file")
    config_args(s)
    s.add_argument("--run", required=True, help="a run id (a run with seeds: one member, e.g. mae-s0)")
    s.add_argument("--format", required=True, choices=["timm", "mae"])
    s.add_argument("--out", required=True, help="the file to write (timm: .safetensors for safetensors)")
    s.set_defaults(fn=cmd_export)
