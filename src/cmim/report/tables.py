"""Result tables: one function per table, markdown for reading and CSV for everything else."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cmim import io


def encoder_label(spec: dict | None) -> str:
    if not spec:
        return "-"
    return (f"ViT d{spec['depth']} w{spec['embed_dim']} h{spec['num_heads']} "
            f"p{spec['patch_size']} @{spec['img_size']}")


def probe_rows(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        r = io.read_json(path)
        encoder = encoder_label(r.get("encoder")) if r["feature"] != "pixels" else "-"
        rows.append({"run": r["run"], "method": r["method"], "encoder": encoder,
                     "pretrain epochs": r["pretrain_epochs"], "feature": r["feature"],
                     "probe": r["protocol"]["features"], "top-1": round(r["top1"], 2),
                     "top-5": round(r.get("top5", float("nan")), 2), "train": r["train_samples"],
                     "val": r["val_samples"], "dataset": r["dataset"]})
    return pd.DataFrame(rows)


def probe_table(paths: list[Path], out_md: Path, out_csv: Path) -> pd.DataFrame:
    """Linear-probe top-1 of every probed run, baselines included, in config order."""
    df = probe_rows(paths)
    io.write_text(out_csv, df.to_csv(index=False))
    title = "Linear probe on frozen features (top-1 / top-5 %, val split)"
    io.write_text(out_md, f"# {title}\n\n{df.to_markdown(index=False)}\n")
    return df
