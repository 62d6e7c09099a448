"""Our setting beside the paper's: the pretraining data, evaluation data, arch and epochs of the run
group that fills a cell, and whether that is the paper number's own setting.

Why it matters: a difference "ours - paper" between a 2-epoch Fashion-MNIST ViT and the paper's
ImageNet-1K ViT-B at 1600 epochs means nothing. The report prints a difference and "reproduced / off
by" only at the paper's own setting (every field the paper states equal to ours, and the paper states
all of them), and a paper-scale study (report.scale: full) may not fill a paper row with a run group
of another setting: cmim.report.spec_checks.check says so with the key path.
"""

from __future__ import annotations

from cmim.datasets import family
from cmim.report import papers
from cmim.study import ARCHS, DENSE_TASKS, dense_dataset, resolve_run

FIELDS = ("pretrain", "evaluated_on", "arch", "epochs")
LABELS = {"pretrain": "pretraining data", "evaluated_on": "evaluated on", "arch": "arch", "epochs": "epochs"}
ARCH_SHORT = {"vit_tiny": "Ti", "vit_small": "S", "vit_base": "B", "vit_large": "L", "vit_huge": "H"}
PAPER_IMAGE_SIZE = 224   # the papers' pretraining resolution; another one is written into the arch ("@448")


def paper_arch(encoder: dict | None) -> str | None:
    """The arch in the papers' words ("ViT-B/16", "ViT-H/14 @448") for timm's sizes, else None."""
    if not encoder:
        return None
    for name, shape in ARCHS.items():
        if all(encoder[k] == v for k, v in shape.items()):
            size = "" if encoder["img_size"] == PAPER_IMAGE_SIZE else f" @{encoder['img_size']}"
            return f"ViT-{ARCH_SHORT[name]}/{encoder['patch_size']}{size}"
    return None


def evaluated_on(cfg: dict, task: str, run: str) -> str | None:
    """The dataset (family) a task evaluates this run on."""
    if task in DENSE_TASKS:
        name = dense_dataset(cfg, task)
    elif task == "pretrain":
        name = resolve_run(cfg, run)["dataset"]
    else:
        name = cfg["evaluations"].get(task, {}).get("dataset") or resolve_run(cfg, run)["dataset"]
    return family(cfg, name) if name else None


def ours(cfg: dict, run: str, task: str | None) -> dict:
    """The setting of one of our runs for one task, in the fields the papers state."""
    r = resolve_run(cfg, run)
    pretrain = family(cfg, r["dataset"])
    return {"pretrain": pretrain, "evaluated_on": evaluated_on(cfg, task, run) if task else pretrain,
            "arch": None if r["method"] == "raw_pixels" else paper_arch(r["encoder"]), "epochs": r["epochs"]}


def differences(setting: dict, paper: dict) -> list[str]:
    """The fields the paper states and ours differ in, as "arch ViT-B/16 vs ViT-L/16" (ours vs paper)."""
    out = []
    for key in FIELDS:
        if paper[key] is not None and setting.get(key) != paper[key]:
            mine = setting.get(key)
            out.append(f"{LABELS[key]} {'unknown' if mine is None else mine} vs {paper[key]}")
    return out


def same(setting: dict, paper: dict) -> bool:
    """The paper number's own setting: the paper states every field and ours equal them."""
    return all(paper[k] is not None and setting.get(k) == paper[k] for k in FIELDS)


def cell_setting(cfg: dict, runs: list[str], task: str | None, number: dict) -> dict:
    """A cell's setting, its comparison with the paper number's, and whether a difference is shown."""
    paper = papers.setting_parts(number["setting"])
    if not runs:
        return {"ours": None, "paper": paper, "differs": [], "same": False}
    setting = ours(cfg, runs[0], task)
    small = cfg.get("report", {}).get("scale") == "small"
    return {"ours": setting, "paper": paper, "differs": differences(setting, paper),
            "same": not small and same(setting, paper)}


def text(setting: dict | None) -> str:
    """One line: "ImageNet-1K, ViT-B/16, 1600 ep" (evaluation data added when it differs)."""
    if not setting:
        return "-"
    data = setting["pretrain"] or "unknown data"
    if setting.get("evaluated_on") and setting["evaluated_on"] != setting["pretrain"]:
        data = f"{data} -> {setting['evaluated_on']}"
    return f"{data}, {setting['arch'] or 'non-standard ViT'}, {setting['epochs']} ep"
