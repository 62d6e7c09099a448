"""The `attention_maps` figure: what each run's encoder attends to, over a few fixed val images.

Per run (the first seed of each run group), the last block's attention of the feature its frozen
evaluations probe (cmim.models.attention: the cls token's row for cls-probed runs, DINO's figure;
the patch tokens' rows averaged for mean-probed runs such as CAN and SimCLR), per head and averaged
over the heads, on the same images for every run of a dataset: the first image of each of the first
classes met in the val shards' fixed order (a class-sorted split still gives different classes).
Methods side by side: one block of rows per image, one row per run.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from cmim.data.augment import normalize, to_unit  # noqa: E402
from cmim.models.attention import attention_maps  # noqa: E402
from cmim.report.figures import _save  # noqa: E402
from cmim.train.checkpoint import load_encoder  # noqa: E402

SCAN = 5000          # val images read at most while looking for distinct classes
CELL = 0.95          # inches per panel


def fixed_images(manifest: Path, count: int, data: dict) -> tuple[torch.Tensor, list[str]]:
    """Centre views (uint8 [n, 3, S, S]) and class names of the first image of each of the first `count`
    classes met in the split's fixed order (fewer if the first SCAN images hold fewer classes)."""
    from cmim.data.loader import eval_loader
    from cmim.data.manifest import class_names, read_manifest
    from cmim.data.views import eval_view

    names = class_names(read_manifest(manifest))
    images, labels = [], []
    batches = eval_loader(manifest, eval_view(data["image_size"], data["eval_crop_pct"]), batch_size=64,
                          max_samples=SCAN)
    for batch in batches:
        for image, label in zip(batch["images"], batch["labels"].tolist()):
            if label not in labels:
                images.append(image)
                labels.append(label)
            if len(labels) == count:
                break
        if len(labels) == count:
            break
    if not images:
        raise ValueError(f"{manifest}: no val image to draw attention on")
    return torch.stack(images), [names[c] if c < len(names) else str(c) for c in labels]


def run_maps(view: dict, images: torch.Tensor) -> torch.Tensor:
    """One run's attention maps [n, heads, h, w] of its probed feature on uint8 images."""
    encoder, _ = load_encoder(Path(view["checkpoint"]))
    data = view["data"]
    x = normalize(to_unit(images), data["mean"], data["std"])
    return attention_maps(encoder.eval(), x, view["feature"])


def _show_image(ax, image: torch.Tensor) -> None:
    img = image.permute(1, 2, 0).numpy()
    ax.imshow(img[..., 0] if (img[..., 0] == img[..., 1]).all() else img, cmap="gray", interpolation="nearest")


def attention_figure(plan: dict, out_png: Path) -> list[str]:
    """Draw the figure; returns the runs drawn (runs whose checkpoint is not there yet are named as not run)."""
    cache: dict[str, tuple[torch.Tensor, list[str]]] = {}
    drawn: dict[str, tuple[torch.Tensor, list[str], torch.Tensor]] = {}
    for run in plan["runs"]:
        view = plan["views"][run]
        if not Path(view["checkpoint"]).exists() or not Path(view["val_manifest"]).exists():
            continue
        if view["val_manifest"] not in cache:
            cache[view["val_manifest"]] = fixed_images(Path(view["val_manifest"]), plan["images"], view["data"])
        images, labels = cache[view["val_manifest"]]
        drawn[run] = (images, labels, run_maps(view, images))
    missing = [r for r in plan["runs"] if r not in drawn]
    heads = max((m.shape[1] for _, _, m in drawn.values()), default=1)
    n_images = max((len(labels) for _, labels, _ in drawn.values()), default=0)
    rows, cols = max(1, n_images * len(drawn)), 2 + heads
    fig, axes = plt.subplots(rows, cols, figsize=(CELL * cols + 1.2, CELL * rows + 1.0), squeeze=False)
    note = f"; not run: {', '.join(missing)}" if missing else ""
    fig.suptitle(f"{plan['title']}\n(per map, dark = least, bright = most attention{note})", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    for i in range(n_images):
        for j, (run, (images, labels, maps)) in enumerate(drawn.items()):
            row = axes[i * len(drawn) + j]
            if i >= len(labels):
                continue
            _show_image(row[0], images[i])
            row[0].axis("on")
            row[0].set_ylabel(f"{run}\n({plan['views'][run]['method']}, {plan['views'][run]['feature']})",
                              fontsize=6, rotation=0, ha="right", va="center")
            for k, grid in enumerate([maps[i].mean(0), *maps[i]]):
                row[k + 1].imshow(grid.numpy(), cmap="inferno", interpolation="nearest")
            if j == 0:
                row[0].set_title(f"image {i + 1}: {labels[i]}", fontsize=6)
                row[1].set_title("mean of heads", fontsize=6)
                for k in range(maps.shape[1]):
                    row[k + 2].set_title(f"head {k + 1}", fontsize=6)
    if not drawn:
        axes[0, 0].axis("on")
        axes[0, 0].text(0.5, 0.5, "no run with an encoder checkpoint yet (not configured or not run)",
                        ha="left", va="center", fontsize=8, color="gray", transform=axes[0, 0].transAxes)
    _save(fig, Path(out_png))
    print(f"[attention_maps] drew {', '.join(drawn) or 'nothing'}" + (f"; not run: {', '.join(missing)}" if missing
                                                                       else ""), flush=True)
    return list(drawn)
