"""Paper figures: ours (mean ± std over seeds) with the paper's points drawn beside them, one function
per kind; PNG for the report and PDF for papers (matplotlib, headless). One plan
(cmim.report.specs.figure_plan) in, <id>.png + <id>.pdf out.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cmim import io  # noqa: E402
from cmim.report import paper_tables, papers  # noqa: E402
from cmim.report.figures import _save  # noqa: E402
from cmim.report.verdicts import summary  # noqa: E402

COLORS = {"mae": "tab:blue", "can": "tab:orange", "cmae": "tab:green", "simclr": "tab:red",
          "random_init": "tab:gray", "raw_pixels": "black", "other": "tab:purple"}
LINE_STYLES = [("s", "--"), ("^", ":"), ("D", "-."), ("v", "-")]   # paper lines: one per (arch, dataset)
ARCH_NAMES = {"Ti": "vit_tiny", "S": "vit_small", "B": "vit_base", "L": "vit_large", "H": "vit_huge"}


def color(label: str) -> str:
    return COLORS.get(label, "tab:purple")


def vit_params(embed_dim: int, depth: int, patch: int) -> float:
    """Encoder parameters in millions: blocks (12 d^2 + 13 d each), patch embedding, cls token, final norm."""
    return (depth * (12 * embed_dim ** 2 + 13 * embed_dim) + 3 * patch ** 2 * embed_dim + 4 * embed_dim) / 1e6


def paper_arch_params(label: str) -> float | None:
    """"ViT-B/16" -> its parameter count (timm's sizes, cmim.study.ARCHS); None for anything else."""
    from cmim.study import ARCHS

    m = re.fullmatch(r"ViT-(Ti|S|B|L|H)/(\d+)", str(label))
    if not m:
        return None
    shape = ARCHS[ARCH_NAMES[m.group(1)]]
    return vit_params(shape["embed_dim"], shape["depth"], int(m.group(2)))


def _read(path: str) -> dict | None:
    return io.read_json(path) if Path(path).exists() else None


def _mean_std(values: list[float]) -> tuple[float, float]:
    s = summary(values)
    return s["mean"], s["std"]


def _aggregate(points: dict[float, list[float]]) -> list[tuple[float, float, float, int]]:
    """x -> values over seeds  ->  sorted (x, mean, std, n)."""
    return [(x, *_mean_std(v), len(v)) for x, v in sorted(points.items())]


def _draw_ours(ax, series: list[dict], x_of, metric: str, merge: bool = False) -> int:
    """One line per series group (merge: per series label, its groups' points joined, e.g. one
    method's 800- and 1600-epoch runs): mean ± std over the runs at each x. Returns the lines drawn."""
    lines: dict[str, dict[float, list[float]]] = {}
    for i, s in enumerate(series):
        key = s["label"] if merge else f"{s['label']}\0{i}"
        points = lines.setdefault(key, defaultdict(list))
        for files in s["files"].values():
            for name, path in files.items():
                r = _read(path)
                value = None if r is None else r["metrics"].get(metric)
                if value is not None:
                    points[x_of(r, name)].append(float(value))
    drawn = 0
    for key, points in lines.items():
        if not points:
            continue
        label = key.split("\0")[0]
        agg = _aggregate(points)
        ax.errorbar([a[0] for a in agg], [a[1] for a in agg], yerr=[a[2] for a in agg], marker="o", capsize=3,
                    color=color(label), label=f"{label} (n={max(a[3] for a in agg)} per point)")
        drawn += 1
    return drawn


def _panel_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True, transform=ax.transAxes, color="gray")


def _draw_paper(ax, plan: dict, x_of) -> None:
    """The paper's points, one line per (method, arch, dataset); a note where the values are not found."""
    lines: dict[tuple, list] = defaultdict(list)
    for p in plan["points"]:
        if not papers.is_value(p["value"]):
            continue
        x = x_of(p)
        if x is not None:
            lines[(p["method"], p["setting"]["arch"], p["setting"]["dataset"])].append((x, p["value"]))
    styles = {}
    for (method, arch, dataset), pts in sorted(lines.items()):
        pts.sort()
        marker, ls = styles.setdefault((arch, dataset), LINE_STYLES[len(styles) % len(LINE_STYLES)])
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker=marker, ls=ls, color=color(method),
                label=f"{method} {arch}, {dataset}")
    missing = "; ".join(n["source"] for n in plan.get("paper_not_found", []))
    if lines:
        ax.legend(fontsize=6)
        if missing:
            ax.text(0.01, 0.01, missing, fontsize=6, color="gray", transform=ax.transAxes, wrap=True)
    else:
        _panel_note(ax, "paper values not found" + (f":\n{missing}" if missing else ""))
    ax.grid(alpha=0.3)


def _two_panels(plan: dict):
    fig, (ours, paper) = plt.subplots(1, 2, figsize=(10.5, 4.0))
    fig.suptitle(plan["title"], fontsize=10)
    task = f"{plan.get('task') or ''} {plan.get('metric') or ''}".strip()
    ours.set_title(f"ours: {task} (mean ± std over seeds)", fontsize=9)
    paper.set_title("paper", fontsize=9)
    return fig, ours, paper


def _ours_beside_paper(plan: dict, out_png: Path, *, x_of, paper_x, xlabel: str, ylabel: str, merge: bool = False,
                       log_x: bool = False) -> None:
    """The two panels of a line figure: our series (x from each result) and the paper's points."""
    fig, ours, paper = _two_panels(plan)
    if not _draw_ours(ours, plan["series"], x_of, plan["metric"], merge=merge):
        configured = any(any(f.values()) if isinstance(f, dict) else f for s in plan["series"]
                         for f in s["files"].values())
        _panel_note(ours, "not run" if configured else "not configured")
    else:
        ours.legend(fontsize=7)
    for ax in (ours, paper):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_x:
            ax.set_xscale("log")
    ours.grid(alpha=0.3)
    _draw_paper(paper, plan, paper_x)
    _save(fig, out_png)


def epochs_figure(plan: dict, out_png: Path) -> None:
    _ours_beside_paper(plan, out_png, x_of=lambda r, name: int(r["pretrain_epochs"] or 0), merge=True,
                       paper_x=lambda p: p["setting"]["epochs"] if isinstance(p["setting"]["epochs"], int) else None,
                       xlabel="pretraining epochs", ylabel=f"{plan['task']} {plan['metric']} (%)")


def partial_figure(plan: dict, out_png: Path) -> None:
    def blocks(r, name):
        k = r["protocol"].get("blocks")
        return r["encoder"]["depth"] if k is None else k

    _ours_beside_paper(plan, out_png, x_of=blocks, paper_x=lambda p: None,
                       xlabel="tuned last blocks (all = full finetune)", ylabel=f"{plan['metric']} (%)")


def size_figure(plan: dict, out_png: Path) -> None:
    def params(r, name):
        e = r["encoder"]
        return vit_params(e["embed_dim"], e["depth"], e["patch_size"])

    _ours_beside_paper(plan, out_png, x_of=params, paper_x=lambda p: paper_arch_params(p["setting"]["arch"]),
                       merge=True, log_x=True, xlabel="encoder parameters (M)",
                       ylabel=f"{plan['task']} {plan['metric']} (%)")


def ablation_figure(plan: dict, out_png: Path) -> None:
    """Horizontal bars per ablation table: our mean with seed error bars; rows without results named.
    The value axis starts at 0: a bar's length is its value, so the gaps between rows are read at
    their true size (an axis starting at 71% made a 2-point gap look like half the scale)."""
    tables = plan["tables"]
    heights = [max(2.0, 0.45 * len(t["rows"]) + 1.0) for t in tables]
    fig, axes = plt.subplots(len(tables), 1, figsize=(8.5, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    fig.suptitle(plan["title"], fontsize=10)
    for ax, t in zip(axes.flat, tables):
        column = next(c for c in t["columns"] if c["id"] == plan["column"])
        ours = paper_tables.our_numbers(t)[column["id"]]
        labels, means, stds, colors = [], [], [], []
        for i, row in enumerate(t["rows"]):
            cell = ours[row["id"]]
            labels.append(f"{row['id']} ({cell['n']})" if cell["status"] == "ok" else f"{row['id']}: {cell['status']}")
            means.append(cell["mean"] if cell["status"] == "ok" else 0.0)
            stds.append(cell["std"] if cell["status"] == "ok" else 0.0)
            colors.append("tab:orange" if i == 0 else "tab:blue")
        y = range(len(labels))
        if not any(ours[row["id"]]["status"] == "ok" for row in t["rows"]):
            ax.set_yticks(list(y), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_xticks([])
            ax.set_title(t["title"], fontsize=8)
            _panel_note(ax, "no row configured and run")
            continue
        ax.barh(list(y), means, xerr=stds, color=colors, capsize=3, alpha=0.85)
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.invert_yaxis()
        done = [m + s for m, s, row in zip(means, stds, t["rows"]) if ours[row["id"]]["status"] == "ok"]
        ax.set_xlim(0.0, max(1.0, max(done) * 1.05))
        ax.set_xlabel(f"{column['task']} {column['metric']} (%), n = seeds; paper values not found")
        ax.set_title(t["title"], fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    _save(fig, out_png)


def mosaic(images: dict, count: int):
    """{input, masked, reconstruction}: uint8 [N, 3, S, S] -> one uint8 [3 rows x count, H, W, 3] grid
    (rows: input, masked input, prediction), 2-px white gaps."""
    import numpy as np

    rows = []
    for key in ("input", "masked", "reconstruction"):
        imgs = images[key][:count].permute(0, 2, 3, 1).numpy()            # [n, S, S, 3]
        gap = np.full((imgs.shape[1], 2, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([x for img in imgs for x in (img, gap)][:-1], axis=1))
    hgap = np.full((2, rows[0].shape[1], 3), 255, dtype=np.uint8)
    return np.concatenate([rows[0], hgap, rows[1], hgap, rows[2]], axis=0)


def reconstructions_figure(plan: dict, out_png: Path, images_per_run: int = 8) -> None:
    """Per run group (its first seed): input, masked input and prediction of a few train images, as
    un-normalised uint8 images (cmim.methods.visualize maps norm-pix predictions back to pixels)."""

    records, seen = [], set()
    for run, path in plan["files"].items():
        group = run.rsplit("-s", 1)[0] if re.search(r"-s\d+$", run) else run
        if group in seen or not Path(path).exists():
            continue
        rec = io.torch_load(path, what="reconstructions file", advice=(
            "cmim's reconstructions hold only uint8 images and names, so this one was not written by cmim: "
            f"delete it and re-run its pretraining (snakemake --force {path})"))
        if rec.get("images"):
            records.append((run, rec))
            seen.add(group)
    fig, axes = plt.subplots(max(1, len(records)), 1, figsize=(7.5, 2.3 * max(1, len(records)) + 0.5), squeeze=False)
    fig.suptitle(plan["title"] + "\n(rows: input, masked input, prediction)", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (run, rec) in zip(axes.flat, records):
        ax.imshow(mosaic(rec["images"], images_per_run), interpolation="nearest")
        ax.set_title(f"{run} ({rec['method']})", fontsize=8, loc="left")
    if not records:
        _panel_note(axes[0, 0], "no MAE-family run with reconstructions (not configured or not run)")
    _save(fig, out_png)


def throughput_figure(plan: dict, out_png: Path) -> None:
    """img/s and device-hours of every pretraining run and trained evaluation."""
    labels, rates, hours, kinds = [], [], [], []
    for run in plan["runs"]:
        s = _read(plan["summaries"][run])
        if s and s.get("steps"):
            labels.append(f"{run} pretrain")
            rates.append(s.get("img_per_s") or 0.0)
            hours.append((s.get("gpu_hours") or 0.0) + (s.get("cpu_hours") or 0.0))
            kinds.append("GPU" if s.get("gpu_hours") else "CPU")
    for name, path in plan["evals"].items():
        r = _read(path)
        t = (r or {}).get("training")
        if t:
            labels.append(name.replace("/", " "))
            rates.append(t.get("img_per_s") or 0.0)
            hours.append((t.get("gpu_hours") or 0.0) + (t.get("cpu_hours") or 0.0))
            kinds.append("GPU" if t.get("gpu_hours") else "CPU")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, max(2.5, 0.3 * len(labels) + 1.2)))
    fig.suptitle(plan["title"], fontsize=10)
    y = list(range(len(labels)))
    a.barh(y, rates, color="tab:blue")
    a.set_xlabel("images / s (training)")
    b.barh(y, hours, color=["tab:green" if k == "GPU" else "tab:gray" for k in kinds])
    b.set_xlabel("device-hours (green GPU, gray CPU)")
    for ax in (a, b):
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    if not labels:
        _panel_note(a, "no trained run finished yet")
    _save(fig, out_png)


def attention_figure(plan: dict, out_png: Path) -> None:
    """cmim.report.attention_maps (torch: imported only for this figure)."""
    from cmim.report.attention_maps import attention_figure as draw

    draw(plan, out_png)


def feature_map_figure(plan: dict, out_png: Path) -> None:
    """cmim.report.feature_maps (torch and scikit-learn: imported only for this figure)."""
    from cmim.report.feature_maps import feature_map_figure as draw

    draw(plan, out_png)


DRAW = {"epochs": epochs_figure, "partial": partial_figure, "size": size_figure, "ablation": ablation_figure,
        "reconstructions": reconstructions_figure, "compute": throughput_figure, "attention": attention_figure,
        "feature_map": feature_map_figure}


def render(plan: dict, out_png: Path) -> None:
    DRAW[plan["kind"]](plan, Path(out_png))
