"""The config schema and the generic walk over it: YAML 1.2 loading, merging, `$ref`s, defaults,
coercion of command-line text, and errors that name the key path and suggest a fix.

Why apart from cmim.config: this is how any block is read against `workflow/schemas/config.schema.yaml`
(the one schema the Snakefile and `python -m cmim` share), whatever the block means; cmim.config
says what a study means. Light: no torch.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cmim.errors import ConfigError

# Keys that moved out of runs and evaluations: they decide how fast a job runs, not what it computes.
MOVED_KEYS = {"num_workers": "launch.num_workers"}


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
    A copy: the caller may change it."""
    return copy.deepcopy(_schema())


@functools.cache
def _schema() -> dict:
    """Parsed once per process (a large study asks for it thousands of times while its DAG is built);
    read-only: fill_defaults and resolve_ref copy what they hand out."""
    text = resources.files("cmim").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def definition(name: str) -> dict:
    """One block's schema, `$defs.<name>` with its `$ref`s followed (read-only)."""
    root = _schema()
    return resolve_ref(root["$defs"][name], root)


def fill_block(block: dict, name: str) -> dict:
    """`block` with every default of `$defs.<name>` filled in (recursively)."""
    root = _schema()
    return fill_defaults(block, root["$defs"][name], root)


def block_problems(block: Any, name: str, where: str) -> list[str]:
    """Problems of one block against `$defs.<name>`, each with its key path under `where`."""
    root = _schema()
    node = {**root["$defs"][name], "$defs": root["$defs"]}
    errors = sorted(jsonschema.Draft202012Validator(node).iter_errors(block), key=lambda e: list(map(str, e.path)))
    return [f"{where}.{key_path(e.absolute_path)}".rstrip(".") + f": {e.message}" for e in errors]


def schema_problems(raw: dict) -> list[str]:
    """Every problem of a whole config against the schema, one readable line each."""
    root = _schema()
    validator = jsonschema.Draft202012Validator(root)
    errors = sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
    return [line for e in errors for line in explain(e, root)]


# ----------------------------------------------------------------------------- loading


def load_yaml(path: str | Path) -> dict:
    """One config file as a mapping; a syntax error names the file, line and column (1-based, as
    editors count); an empty file (or only comments) is an error, as it is to Snakemake."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml_load(path.read_text())
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); a config is YAML text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}:{_yaml_where(e)} not valid YAML: {_yaml_problem(e)}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty (or only comments); a study needs at least datasets: and runs:")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (key: value lines), got {type(data).__name__}")
    return data


def _yaml_where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f"{mark.line + 1}:{mark.column + 1}:" if mark is not None else ""


def _yaml_problem(e: yaml.YAMLError) -> str:
    """PyYAML's several lines (context, problem, a caret under the text) as one."""
    parts = [getattr(e, "context", None), getattr(e, "problem", None)]
    text = "; ".join(p for p in parts if p) or str(e).splitlines()[0]
    context = getattr(e, "context_mark", None)
    problem = getattr(e, "problem_mark", None)
    if context is not None and problem is not None and context.line != problem.line:
        text += f" (the construct opened at line {context.line + 1}, column {context.column + 1})"
    return text


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


# ----------------------------------------------------------------------------- the walk


def resolve_ref(node: dict, root: dict) -> dict:
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
    node = resolve_ref(node, root)
    if not isinstance(instance, dict) or node.get("type") not in (None, "object"):
        return instance
    for key, sub in node.get("properties", {}).items():
        sub = resolve_ref(sub, root)
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


def key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _allowed_keys(error: jsonschema.ValidationError, root: dict) -> list[str]:
    node = resolve_ref(error.schema, root) if isinstance(error.schema, dict) else {}
    return sorted(node.get("properties", {}))


def explain(error: jsonschema.ValidationError, root: dict) -> list[str]:
    """One readable line per problem, naming the key path and what would be valid."""
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = _allowed_keys(error, root)
        node = resolve_ref(error.schema, root) if isinstance(error.schema, dict) else {}
        patterns = node.get("patternProperties", {})
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
    node = resolve_ref(node, root)
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
    node = resolve_ref(node, root)
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


