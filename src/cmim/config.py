"""The study configuration: load, validate against the one schema, fill defaults, resolve runs.

Why one module: the Snakefile and `python -m cmim` must agree on what a config means, and a typo
must fail before any job starts with the key path and a suggestion. This module imports no torch,
so a bad key fails in well under a second.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

# Which methods train, and which are evaluation baselines without training.
TRAINED_METHODS = ("mae", "can", "cmae", "simclr")
BASELINE_METHODS = ("random_init", "raw_pixels")
METHOD_OPTION_KEYS = TRAINED_METHODS  # a run may carry an options block named after its method only

# Evaluation tasks, and which runs each can take: a task that trains or reads an encoder cannot
# take raw_pixels (there is no encoder to finetune).
FROZEN_TASKS = ("linear_probe", "knn")
TRAINED_TASKS = ("finetune", "partial_finetune", "ade20k", "coco")
DENSE_TASKS = ("ade20k", "coco")            # segmentation (UperNet) and detection (Mask R-CNN)
TASKS = FROZEN_TASKS + TRAINED_TASKS
NEEDS_ENCODER = TRAINED_TASKS
# Keys that moved out of runs and evaluations: they decide how fast a job runs, not what it computes.
MOVED_KEYS = {"num_workers": "launch.num_workers"}

# The probe feature each method is evaluated with when probe_feature is "auto" (METHODS.md:
# MAE and CMAE probe the cls token, CAN and SimCLR their contrastive feature, the patch mean).
AUTO_PROBE_FEATURE = {"mae": "cls", "cmae": "cls", "can": "mean", "simclr": "mean",
                      "random_init": "cls", "raw_pixels": "pixels"}

# Timm's ViT sizes: width, depth, heads (timm vision_transformer.py vit_{tiny..huge}_patch16_224).
ARCHS = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16),
}


class ConfigError(ValueError):
    """A config problem, with the key path and what to do about it."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 / 2E5 as floats (YAML 1.2; PyYAML's 1.1 rules make them strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|" + r"^[-+]?(?:\d[\d_]*)\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


def schema() -> dict:
    """The JSON schema (draft 2020-12) shared with the Snakefile: workflow/schemas/config.schema.yaml.
    Parsed once per process (a large study asks for it thousands of times while its DAG is built)."""
    return copy.deepcopy(_schema())


@functools.cache
def _schema() -> dict:
    text = resources.files("cmim").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


# ----------------------------------------------------------------------------- loading


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: dict, override: dict) -> dict:
    """Mappings merge key by key (override wins); everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    value = yaml_load(raw) if raw != "" else ""
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config(paths: list[str | Path], overrides: list[str] = ()) -> dict:
    """Merge config files left to right, then `key.path=value` overrides, then validate."""
    raw: dict = {}
    for p in paths:
        raw = deep_merge(raw, load_yaml(p))
    for item in overrides:
        raw = deep_merge(raw, parse_override(item))
    source = ", ".join(str(p) for p in paths) or "config"
    return validate(raw, source=source)


# ----------------------------------------------------------------------------- validation


def _resolve(node: dict, root: dict) -> dict:
    """Follow a local $ref, keeping sibling keywords (draft 2020-12 allows them)."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ConfigError(f"schema: only local $ref supported, got {ref}")
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        node = {**target, **siblings}
    return node


def fill_defaults(instance: Any, node: dict, root: dict) -> Any:
    """Insert every missing key that has a `default` in the schema, recursively."""
    node = _resolve(node, root)
    if not isinstance(instance, dict) or node.get("type") not in (None, "object"):
        return instance
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(sub, root)
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            instance[key] = fill_defaults(instance[key], sub, root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        known = set(node.get("properties", {}))
        for key in instance:
            if key not in known:
                instance[key] = fill_defaults(instance[key], extra, root)
    return instance


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _allowed_keys(error: jsonschema.ValidationError, root: dict) -> list[str]:
    node = _resolve(error.schema, root) if isinstance(error.schema, dict) else {}
    return sorted(node.get("properties", {}))


def _explain(error: jsonschema.ValidationError, root: dict) -> list[str]:
    """One readable line per problem, naming the key path and what would be valid."""
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = _allowed_keys(error, root)
        patterns = _resolve(error.schema, root).get("patternProperties", {}) if isinstance(error.schema, dict) else {}
        lines = []
        unknown = [k for k in set(error.instance) - set(allowed) if not any(re.search(p, k) for p in patterns)]
        for key in sorted(unknown):
            full = f"{where}.{key}" if error.absolute_path else str(key)
            if key in MOVED_KEYS and where != "launch":
                lines.append(f"{full}: moved to {MOVED_KEYS[key]} (it decides how fast jobs run, not what they "
                             f"compute, so changing it never reruns anything); set it there once")
                continue
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
            extension = " or x-<name> for YAML anchors" if not error.absolute_path else ""
            lines.append(f"{full}: unknown key{did_you_mean}; allowed here: {', '.join(allowed)}{extension}")
        return lines
    if error.validator == "enum":
        options = [str(o) for o in error.validator_value]
        hint = difflib.get_close_matches(str(error.instance), options, n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        return [f"{where}: {error.instance!r} is not allowed{did_you_mean}; choose one of {options}"]
    if error.validator == "type":
        return [f"{where}: expected {error.validator_value}, got {type(error.instance).__name__} "
                f"{error.instance!r}"]
    return [f"{where}: {error.message}"]


def _types(node: dict, root: dict) -> set[str]:
    """The JSON types a schema node admits (following $ref, oneOf/anyOf; const/enum by their values)."""
    node = _resolve(node, root)
    out: set[str] = set()
    kind = node.get("type")
    out.update([kind] if isinstance(kind, str) else kind or [])
    for key in ("oneOf", "anyOf"):
        for alt in node.get(key, []):
            out |= _types(alt, root)
    for value in ([node["const"]] if "const" in node else []) + list(node.get("enum", [])):
        out.add({str: "string", bool: "boolean", int: "integer", float: "number"}.get(type(value), "other"))
    return out


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return {str: "string", dict: "object", list: "array", type(None): "null"}.get(type(value), "other")


def coerce(instance: Any, node: dict, root: dict) -> Any:
    """Text where the schema wants a number, boolean, null, list or mapping, read as YAML 1.2.

    Why: Snakemake hands a nested `--config 'launch={"timeout_min": 600}'` over as text ('600'), and its
    YAML 1.1 loader reads 4e-3 as text, while `python -m cmim` reads the same file as numbers; both go
    through this, so the Snakefile and the CLI accept exactly the same configs. Text the schema admits
    as text (names, paths, enum values) is never touched.
    """
    node = _resolve(node, root)
    if isinstance(instance, str):
        allowed = _types(node, root)
        if not allowed or "string" in allowed:
            return instance
        try:
            value = yaml_load(instance)
        except yaml.YAMLError:
            return instance
        kind = _json_type(value)
        if kind == "number" and "integer" in allowed and "number" not in allowed and float(value).is_integer():
            value, kind = int(value), "integer"
        ok = kind in allowed or (kind == "integer" and "number" in allowed)
        return coerce(value, node, root) if ok else instance
    if isinstance(instance, dict):
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        out = {}
        for key, value in instance.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            out[key] = coerce(value, sub, root) if sub is not None else value
        return out
    if isinstance(instance, list) and isinstance(node.get("items"), dict):
        return [coerce(v, node["items"], root) for v in instance]
    return instance


def validate(raw: dict, source: str = "config") -> dict:
    """Schema check (all problems at once), then defaults, then cross-key checks. Returns a new dict."""
    root = schema()
    raw = {k: v for k, v in raw.items() if k != "run_groups"}  # recomputed below (a config validated twice)
    raw = coerce(raw, root, root)
    validator = jsonschema.Draft202012Validator(root)
    errors = sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [line for e in errors for line in _explain(e, root)]
        raise ConfigError(f"{source}: {len(lines)} problem(s):\n  - " + "\n  - ".join(lines))
    # Runs stay as written: their defaults are filled only after run_defaults are merged under
    # them (run_options), or a filled default would hide the run_defaults value.
    config = copy.deepcopy(raw)
    runs, run_defaults = config.pop("runs"), config.pop("run_defaults", {})
    config = fill_defaults(config, root, root)
    config["run_defaults"] = {k: v for k, v in run_defaults.items() if k != "seeds"}
    try:
        config["runs"], config["run_groups"] = expand_seeds(runs, run_defaults.get("seeds"))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    for spec in config["evaluations"].values():
        if isinstance(spec.get("runs"), list):
            spec["runs"] = expand_names(spec["runs"], config["run_groups"])
        if spec.get("per_run"):
            spec["per_run"] = {m: own for name, own in spec["per_run"].items()
                               for m in config["run_groups"].get(name, [name])}
    if isinstance(config["report"].get("loss_curve_runs"), list):
        config["report"]["loss_curve_runs"] = expand_names(config["report"]["loss_curve_runs"], config["run_groups"])
    problems = _check_semantics(config, raw)
    if problems:
        raise ConfigError(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return config


# ----------------------------------------------------------------------------- runs


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
    root = schema()
    run_schema = root["$defs"]["run_partial"]
    merged = deep_merge(config.get("run_defaults", {}), config["runs"][run_id])
    merged = fill_defaults(merged, run_schema, root)
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


def resolve_run(config: dict, run_id: str) -> dict:
    """Everything one run needs, self-contained: written next to its outputs and read by its jobs."""
    if run_id not in config["runs"]:
        raise ConfigError(f"unknown run '{run_id}'; runs in this config: {sorted(config['runs'])}")
    run = run_options(config, run_id)
    dataset = config["datasets"][run["dataset"]]
    if run["method"] in BASELINE_METHODS:
        run["epochs"] = 0  # baselines are not trained, whatever run_defaults say
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
    root = schema()
    node = root["$defs"]["launch"]
    block = copy.deepcopy(partial or {})
    errors = list(jsonschema.Draft202012Validator({**node, "$defs": root["$defs"]}).iter_errors(block))
    if errors:
        lines = [f"launch.{_key_path(e.absolute_path)}: {e.message}" for e in errors]
        raise ConfigError("launch settings: " + "; ".join(lines))
    return fill_defaults(block, node, root)


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


DENSE_FORMATS = {"ade20k": ("ade20k", "demo-ade20k"), "coco": ("coco", "demo-coco")}


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


# ----------------------------------------------------------------------------- cross-key checks


def _check_semantics(config: dict, raw: dict) -> list[str]:
    problems: list[str] = []
    datasets = config["datasets"]
    for name, ds in datasets.items():
        where = f"datasets.{name}"
        if "demo" in raw["datasets"][name] and not ds["format"].startswith("demo-"):
            problems.append(f"{where}.demo: only demo-ade20k / demo-coco datasets take demo options "
                            f"(format is {ds['format']}); remove the key")
    for run_id in config["runs"]:
        problems += _check_run(config, run_id)
    for task, spec in config["evaluations"].items():
        problems += _check_task(config, task, spec)
    report_runs = config["report"]["loss_curve_runs"]
    if report_runs != "all":
        problems += [f"report.loss_curve_runs: unknown run '{r}'" for r in report_runs
                     if r not in config["runs"]]
    launch = config["launch"]
    if launch["launcher"] != "slurm" and launch["nodes"] > 1:
        problems.append(f"launch.nodes: {launch['nodes']} nodes need launcher: slurm "
                        f"(got {launch['launcher']})")
    problems += __import__("cmim.report.specs", fromlist=["check"]).check(config)  # tables: / figures: (report)
    return problems


def _check_task(config: dict, task: str, spec: dict) -> list[str]:
    where = f"evaluations.{task}"
    problems = []
    if spec.get("runs") != "all":
        for run_id in spec.get("runs", []):
            if run_id not in config["runs"]:
                problems.append(f"{where}.runs: unknown run '{run_id}'; runs: {sorted(config['runs'])}")
            elif task in NEEDS_ENCODER and run_method(config, run_id) == "raw_pixels":
                problems.append(f"{where}.runs: '{run_id}' is the raw_pixels baseline, which has no encoder to "
                                f"{task.replace('_', ' ')}; remove it from the list")
    if spec.get("dataset") is not None and spec["dataset"] not in config["datasets"]:
        problems.append(f"{where}.dataset: unknown dataset '{spec['dataset']}'; datasets: {sorted(config['datasets'])}")
    elif task in DENSE_TASKS:
        name = dense_dataset(config, task)
        formats = " or ".join(DENSE_FORMATS[task])
        if name is None:
            problems.append(f"{where}.dataset: name the {formats} dataset to evaluate on (the study has "
                            f"{'none' if spec.get('dataset') is None else 'several'} of that format)")
        elif config["datasets"][name]["format"] not in DENSE_FORMATS[task]:
            problems.append(f"{where}.dataset: '{name}' is a {config['datasets'][name]['format']} dataset; "
                            f"{task} needs {formats}")
    root = schema()
    task_schema = _resolve(root["$defs"][task], root)
    for run_id, own in spec.get("per_run", {}).items():
        if run_id not in config["runs"]:
            problems.append(f"{where}.per_run: unknown run '{run_id}'; runs: {sorted(config['runs'])}")
            continue
        for key in own:
            if key in ("runs", "per_run", "dataset") or key not in task_schema["properties"]:
                allowed = sorted(set(task_schema["properties"]) - {"runs", "per_run", "dataset"})
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                problems.append(f"{where}.per_run.{run_id}.{key}: not a key that can differ per run"
                                + (f" (did you mean '{hint[0]}'?)" if hint else "")
                                + f"; allowed: {', '.join(allowed)}")
        partial = {**task_schema, "required": []}
        validator = jsonschema.Draft202012Validator({**partial, "$defs": root["$defs"]})
        for error in validator.iter_errors({k: v for k, v in own.items() if k in task_schema["properties"]}):
            problems.append(f"{where}.per_run.{run_id}.{_key_path(error.absolute_path)}: {error.message}")
    if task == "partial_finetune":
        for run_id in evaluated_runs(config, task):
            if run_id not in config["runs"]:
                continue
            depth = encoder_spec(run_options(config, run_id), 1)["depth"]
            too_deep = [k for k in eval_options(config, task, run_id)["blocks"] if k > depth]
            if too_deep:
                problems.append(f"{where}.blocks: {too_deep} exceed the depth of run '{run_id}' ({depth} blocks); "
                                f"k counts the last blocks that train, so k <= {depth}")
    return problems


def _check_run(config: dict, run_id: str) -> list[str]:
    where = f"runs.{run_id}"
    raw = deep_merge(config.get("run_defaults", {}), config["runs"][run_id])
    problems = []
    for key in ("method", "dataset"):
        if key not in raw:
            problems.append(f"{where}: missing required key '{key}' (set it in the run or in run_defaults)")
    if problems:
        return problems
    method = raw["method"]
    if raw["dataset"] not in config["datasets"]:
        hint = difflib.get_close_matches(raw["dataset"], list(config["datasets"]), n=1)
        problems.append(f"{where}.dataset: unknown dataset '{raw['dataset']}'"
                        + (f" (did you mean '{hint[0]}'?)" if hint else "")
                        + f"; datasets: {sorted(config['datasets'])}")
        return problems
    own = config["runs"][run_id]
    for other in METHOD_OPTION_KEYS:
        if other != method and other in own:
            problems.append(f"{where}.{other}: options for method '{other}' in a '{method}' run; "
                            f"remove them or set method: {other}")
    run = run_options(config, run_id)
    dataset = config["datasets"][run["dataset"]]
    image_size, patch = dataset["image_size"], run["patch_size"]
    if image_size % patch:
        problems.append(f"{where}.patch_size: {patch} does not divide the image size {image_size} "
                        f"(datasets.{run['dataset']}.image_size)")
        return problems
    spec = encoder_spec(run, image_size)
    if spec["embed_dim"] % spec["num_heads"]:
        problems.append(f"{where}: embed_dim {spec['embed_dim']} is not divisible by num_heads "
                        f"{spec['num_heads']}")
    if method in BASELINE_METHODS:
        if own.get("epochs", 0) not in (0, None) and "epochs" in own:
            problems.append(f"{where}.epochs: a {method} baseline is not trained; set epochs: 0 or drop it")
        return problems
    if run["epochs"] < 1:
        problems.append(f"{where}.epochs: a {method} run needs epochs >= 1")
    if run["warmup_epochs"] >= max(run["epochs"], 1):
        problems.append(f"{where}.warmup_epochs: {run['warmup_epochs']} must be below epochs "
                        f"({run['epochs']}); scale warmup down for short runs")
    late = [e for e in run["checkpoint_epochs"] if e > run["epochs"]]
    if late:
        problems.append(f"{where}.checkpoint_epochs: {late} are beyond epochs ({run['epochs']})")
    grid = image_size // patch
    opts = run.get(method, {})
    ratio = opts.get("mask_ratio")
    if ratio is not None and int(grid * grid * (1 - ratio)) < 1:
        problems.append(f"{where}.{method}.mask_ratio: {ratio} leaves no visible patch on a "
                        f"{grid}x{grid} grid")
    if method == "cmae" and opts["mask_type"] == "block" and grid % opts["block_size"]:
        problems.append(f"{where}.cmae.block_size: {opts['block_size']} does not divide the "
                        f"{grid}x{grid} patch grid; use mask_type: random or another block_size")
    if method == "cmae" and opts["momentum_end"] < opts["momentum"]:
        problems.append(f"{where}.cmae.momentum_end: must be >= momentum ({opts['momentum']})")
    if method == "can" and not opts["noise"] and (opts["denoise_loss"] or opts["sigma_embed"] != "off"):
        problems.append(f"{where}.can: noise is off, so denoise_loss must be false and sigma_embed "
                        f"'off' (nothing to denoise or embed)")
    if run["batch_size"] % run["accum_steps"]:
        problems.append(f"{where}.batch_size: {run['batch_size']} is not divisible by accum_steps "
                        f"{run['accum_steps']}")
    return problems
