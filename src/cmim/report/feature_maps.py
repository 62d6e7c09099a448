"""The `feature_maps` figure: each run's frozen val features in 2-D, coloured by class (t-SNE).

From the features the kNN task already caches (results/features/<run>/<dataset>-final.pt): nothing
is extracted again. Per run (the first seed of each run group): the val features of at most
`classes` classes (evenly spaced over the dataset's classes when it has more), a seeded random
subset of at most `points` of them, L2-normalised (the kNN's cosine geometry), reduced to 50
dimensions by PCA (t-SNE's usual first step) and embedded by scikit-learn's TSNE (perplexity 30,
PCA initialisation, random_state 0, one thread): the same picture every time.

Why scikit-learn's TSNE rather than umap-learn: it is one dependency that also brings PCA, while
umap-learn pulls numba and llvmlite (about 150 MB of JIT compiler) for a figure; for 2,000 points a
t-SNE takes seconds on one core.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cmim.evals.features import load_features  # noqa: E402
from cmim.report.figures import _save  # noqa: E402

SEED = 0
PCA_DIMS = 50
PERPLEXITY = 30.0


def chosen_classes(num_classes: int, at_most: int) -> list[int]:
    """Every class, or `at_most` of them evenly spaced over the class ids (ImageNet's first ten are all fish)."""
    if num_classes <= at_most:
        return list(range(num_classes))
    return sorted({round(i * (num_classes - 1) / (at_most - 1)) for i in range(at_most)})


def subset(labels: np.ndarray, classes: list[int], points: int) -> np.ndarray:
    """Indices of a seeded random subset (at most `points`) of the samples of `classes`, in sorted order."""
    pool = np.flatnonzero(np.isin(labels, classes))
    if len(pool) > points:
        pool = np.sort(np.random.default_rng(SEED).choice(pool, size=points, replace=False))
    return pool


def embed(features: np.ndarray) -> np.ndarray:
    """[N, D] -> [N, 2]: L2-normalise, PCA to 50 dimensions, t-SNE (deterministic, one thread)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    with threadpool_limits(1):   # one core, as the report rule has; OpenMP spinning on a busy machine is slower
        if x.shape[1] > PCA_DIMS and len(x) > PCA_DIMS:
            x = PCA(PCA_DIMS, random_state=SEED).fit_transform(x)
        perplexity = min(PERPLEXITY, (len(x) - 1) / 3)
        return TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=SEED).fit_transform(x)


def run_map(path: Path, classes: int, points: int) -> dict:
    """One run's 2-D map: {xy [n, 2], labels [n], class_names, feature}."""
    feats = load_features(path)
    labels = feats["val_y"].numpy()
    keep = subset(labels, chosen_classes(len(feats["classes"]), classes), points)
    return {"xy": embed(feats["val_x"].numpy()[keep].astype(np.float64)), "labels": labels[keep],
            "class_names": list(feats["classes"]), "feature": feats["feature"]}


def feature_map_figure(plan: dict, out_png: Path) -> dict[str, dict]:
    """Draw one panel per run; returns the maps drawn (run -> run_map), runs not run yet named in the title."""
    maps = {r: run_map(Path(plan["views"][r]["features"]), plan["classes"], plan["points"])
            for r in plan["runs"] if Path(plan["views"][r]["features"]).exists()}
    missing = [r for r in plan["runs"] if r not in maps]
    cols = min(4, max(1, len(maps)))
    rows = -(-max(1, len(maps)) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows + 0.9), squeeze=False)
    note = f"; not run: {', '.join(missing)}" if missing else ""
    fig.suptitle(f"{plan['title']}\n(n = val points per panel; colours = classes{note})", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    cmap = plt.get_cmap("tab10" if plan["classes"] <= 10 else "tab20")
    for ax, (run, m) in zip(axes.flat, maps.items()):
        shown = sorted(set(m["labels"].tolist()))
        for i, c in enumerate(shown):
            at = m["labels"] == c
            ax.scatter(m["xy"][at, 0], m["xy"][at, 1], s=3, color=cmap(i % cmap.N), label=m["class_names"][c],
                       rasterized=True)
        ax.set_title(f"{run} ({plan['views'][run]['method']}, {m['feature']}; n={len(m['labels'])})", fontsize=8)
    if maps:   # one legend, right of the first row (tight_layout makes room for it)
        axes[0, -1 if len(maps) >= cols else len(maps) - 1].legend(
            *axes.flat[0].get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=6,
            markerscale=3, frameon=False)
    else:
        axes[0, 0].text(0.5, 0.5, "no cached features yet (not configured or not run)", ha="center", va="center",
                        fontsize=8, color="gray", transform=axes[0, 0].transAxes)
    for ax in list(axes.flat)[len(maps) or 1:]:
        ax.axis("off")
    _save(fig, Path(out_png))
    print(f"[feature_maps] drew {', '.join(maps) or 'nothing'}" + (f"; not run: {', '.join(missing)}" if missing
                                                                    else ""), flush=True)
    return maps
