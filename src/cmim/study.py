"""What a validated study says: its runs (expanded over seeds, resolved), which runs each evaluation
covers with which protocol, and which result files that produces.

Light (no torch): the Snakefile asks these thousands of times while it builds the DAG, the report's
plans and the planner ask them too. Validation itself is cmim.config.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from cmim.config_schema import block_problems, deep_merge, fill_block
from cmim.errors import ConfigError

# Which methods train, which are evaluation baselines without training, and the runs whose encoder
# is read from a weights file (released MAE / CMAE / timm / ... weights: cmim.checkpoints).
TRAINED_METHODS = ("mae", "can", "cmae", "simclr")
BASELINE_METHODS = ("random_init", "raw_pixels")
IMPORTED = "imported"
UNTRAINED_METHODS = (*BASELINE_METHODS, IMPORTED)   # never pretrained by cmim: no pretrain job, no epochs saved
METHOD_OPTION_KEYS = TRAINED_METHODS  # a run may carry an options block named after its method only
# Evaluation tasks, and which runs each can take: a task that trains or reads an encoder cannot
# take raw_pixels (there is no encoder to finetune).
FROZEN_TASKS = ("linear_probe", "knn")
TRAINED_TASKS = ("finetune", "partial_finetune", "ade20k", "coco")
DENSE_TASKS = ("ade20k", "coco")            # segmentation (UperNet) and detection (Mask R-CNN)
TASKS = FROZEN_TASKS + TRAINED_TASKS
NEEDS_ENCODER = TRAINED_TASKS
# The probe feature each method is evaluated with when probe_feature is "auto" (METHODS.md:
# MAE and CMAE probe the cls token, CAN and SimCLR their contrastive feature, the patch mean).
# An imported encoder probes its cls token, as MAE's and CMAE's released weights are probed (its
# own pooling cannot be read from weights; probe_feature: mean overrides it).
AUTO_PROBE_FEATURE = {"mae": "cls", "cmae": "cls", "can": "mean", "simclr": "mean",
                      "random_init": "cls", "raw_pixels": "pixels", IMPORTED: "cls"}
# Timm's ViT sizes: width, depth, heads (timm vision_transformer.py vit_{tiny..huge}_patch16_224).
ARCHS = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16),
}
DENSE_FORMATS = {"ade20k": ("ade20k", "demo-ade20k"), "coco": ("coco", "demo-coco")}


def seed_run_id(run_id: str, seed: int) -> str:
    return f"{run_id}-s{seed}"


def expand_seeds(runs: dict, default_seeds: list[int] | None = None) -> tuple[dict, dict[str, list[str]]]:
    """Runs with `seeds: [a, b, ...]` become one run per seed (`<id>-s<seed>`, `seed` set);
    returns (runs, groups: id as written -> its run ids)."""
    out, groups = {}, {}
    for run_id, spec in runs.items():
        seeds = spec.get("seeds", default_seeds)
        own = {k: v for k, v in spec.items() if k != "seeds"}
        if not seeds:
            out[run_id], groups[run_id] = own, [run_id]
            continue
        if "seed" in own:
            raise ConfigError(f"runs.{run_id}: give either seed or seeds, not both")
        members = [seed_run_id(run_id, s) for s in seeds]
        for member, seed in zip(members, seeds):
            if member in runs:
                raise ConfigError(f"runs.{run_id}.seeds: the expanded run id '{member}' is taken by another run")
            out[member] = {**own, "seed": seed}
        groups[run_id] = members
    return out, groups


def expand_names(names: list[str], groups: dict[str, list[str]]) -> list[str]:
    """Run ids as written in evaluations / report lists: a group name stands for all its seeds."""
    out = []
    for name in names:
        for member in groups.get(name, [name]):
            if member not in out:
                out.append(member)
    return out


def run_options(config: dict, run_id: str) -> dict:
    """A run's keys: schema defaults < run_defaults < the run's own keys (not yet checked)."""
    merged = fill_block(deep_merge(config.get("run_defaults", {}), config["runs"][run_id]), "run_partial")
    if merged.get("seed") is None:
        merged["seed"] = config["seed"]
    return merged


def encoder_spec(run: dict, image_size: int) -> dict:
    """The encoder's shape: the arch's width/depth/heads unless the run overrides them."""
    spec = dict(ARCHS[run["arch"]])
    for key in ("embed_dim", "depth", "num_heads"):
        if run.get(key) is not None:
            spec[key] = run[key]
    return dict(spec, patch_size=run["patch_size"], img_size=image_size)


def encoder_label(spec: dict) -> str:
    """A short name of an encoder's shape: ViT d<depth> w<width> h<heads> p<patch> @<image size>."""
    return (f"ViT d{spec['depth']} w{spec['embed_dim']} h{spec['num_heads']} p{spec['patch_size']} "
            f"@{spec['img_size']}")


def resolve_run(config: dict, run_id: str) -> dict:
    """Everything one run needs, self-contained: written next to its outputs and read by its jobs."""
    if run_id not in config["runs"]:
        raise ConfigError(f"unknown run '{run_id}'; runs in this config: {sorted(config['runs'])}")
    run = run_options(config, run_id)
    dataset = config["datasets"][run["dataset"]]
    if run["method"] in BASELINE_METHODS:
        run["epochs"] = 0  # baselines are not trained, whatever run_defaults say
    if run["method"] in UNTRAINED_METHODS:
        run["checkpoint_epochs"] = []  # no epoch checkpoints exist, whatever run_defaults say
    resolved = {
        "run": run_id,
        **{k: v for k, v in run.items() if k not in (*METHOD_OPTION_KEYS, "embed_dim", "depth", "num_heads")},
        "method_options": run.get(run["method"], {}) if run["method"] in METHOD_OPTION_KEYS else {},
        "encoder": encoder_spec(run, dataset["image_size"]),
        "probe_feature": probe_feature(run),
        "data": {"dataset": run["dataset"], "mean": dataset["mean"], "std": dataset["std"],
                 "image_size": dataset["image_size"], "eval_crop_pct": dataset["eval_crop_pct"]},
    }
    return resolved


def probe_feature(run: dict) -> str:
    return AUTO_PROBE_FEATURE[run["method"]] if run["probe_feature"] == "auto" else run["probe_feature"]


def launch_settings(partial: dict | None) -> dict:
    """A launch block with every default filled in and checked (from the config, the CLI or the
    CMIM_LAUNCH variable the Snakefile sets for its jobs)."""
    block = copy.deepcopy(partial or {})
    problems = block_problems(block, "launch", "launch")
    if problems:
        raise ConfigError("launch settings: " + "; ".join(problems))
    return fill_block(block, "launch")


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (for provenance and stale-checkpoint detection)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_method(config: dict, run_id: str) -> str | None:
    return {**config.get("run_defaults", {}), **config["runs"][run_id]}.get("method")


def evaluated_runs(config: dict, task: str) -> list[str]:
    """Run ids an evaluation task covers, in config order ("all" = every run the task can take)."""
    spec = config["evaluations"].get(task)
    if spec is None:
        return []
    if spec["runs"] != "all":
        return list(spec["runs"])
    runs = list(config["runs"])
    if task in NEEDS_ENCODER:
        runs = [r for r in runs if run_method(config, r) != "raw_pixels"]
    return runs


def dense_dataset(config: dict, task: str) -> str | None:
    """The dataset of a dense task: evaluations.<task>.dataset, else the study's one dataset of that format."""
    spec = config["evaluations"].get(task, {})
    if spec.get("dataset"):
        return spec["dataset"]
    found = [n for n, ds in config["datasets"].items() if ds["format"] in DENSE_FORMATS[task]]
    return found[0] if len(found) == 1 else None


def eval_options(config: dict, task: str, run_id: str) -> dict:
    """The protocol of one task for one run: the task's block with that run's `per_run` keys on top
    (without the selection keys `runs` / `per_run`)."""
    spec = config["evaluations"][task]
    own = spec.get("per_run", {}).get(run_id, {})
    return {k: v for k, v in deep_merge(spec, own).items() if k not in ("runs", "per_run")}


def checkpoint_epochs(config: dict, run_id: str) -> list[int]:
    """Saved epochs of a trained run that need their own evaluation: not the last epoch (the final
    checkpoint's result stands for it), none for the untrained baselines and imported runs."""
    run = run_options(config, run_id)
    if run["method"] in UNTRAINED_METHODS:
        return []
    return sorted(e for e in set(run["checkpoint_epochs"]) if e != run["epochs"])


def result_names(config: dict, task: str, run_id: str) -> list[str]:
    """Result names of one task for one run: the final checkpoint's (`<task>`), `<task>-ep<E>` per
    saved epoch where the task evaluates epochs, `partial_finetune-k<K>` per block count."""
    if task == "partial_finetune":
        return [f"partial_finetune-k{k}" for k in eval_options(config, task, run_id)["blocks"]]
    names = [task]
    if config["evaluations"][task].get("on_checkpoint_epochs"):
        names += [f"{task}-ep{e}" for e in checkpoint_epochs(config, run_id)]
    return names
