"""Option dataclasses of every config block, and the one way to build them from a block.

Each block of the schema that a job reads as a whole (a method's options, `augment`, each
evaluation's protocol, the loop keys of a run) has a frozen dataclass here with the same keys, order
and defaults (tests/test_options.py checks every pair, both ways), plus the cross-key rules the
schema cannot say ("noise off means no denoising"): `cmim.config` calls them while validating a
study, and the jobs meet the same rules when they build their options. Torch-free, so a bad key
fails in well under a second.

    from_dict(CANOptions, {"noise": False}, "runs.can.can")   # -> ConfigError naming the key path
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, TypeVar

from cmim.errors import ConfigError

T = TypeVar("T")

# evaluations.<task> keys that choose runs and data rather than configure the protocol
SELECTION_KEYS = ("runs", "per_run", "dataset")


def from_dict(cls: type[T], block: dict, where: str, *, ignore: tuple[str, ...] = (),
              pick: bool = False) -> T:
    """The options `cls` of one config block, `where` its key path (e.g. runs.mae.mae).

    Unknown keys fail with the key path, a suggestion and the valid keys (keys in `ignore` are
    skipped; `pick` takes only the class's keys from a larger block, e.g. a run's loop keys); values
    are checked against the field types (ints are accepted as floats, lists become tuples); the
    class's own rules (`__post_init__`) fail with the key path too.
    """
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: expected a mapping of options, got {type(block).__name__} {block!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(k for k in block if k not in names and k not in ignore)
    if unknown and not pick:
        hint = difflib.get_close_matches(str(unknown[0]), names, n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        label = where.rsplit(".", 1)[-1]
        raise ConfigError(f"{where}: unknown {label} option(s) {unknown}; valid: {names}{did_you_mean}")
    values = {k: _checked(v, hints[k], f"{where}.{k}") for k, v in block.items() if k in names}
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def as_dict(opts: Any, *, without: tuple[str, ...] = ()) -> dict:
    """The options as a plain mapping, in field order (for identities, protocols and job files)."""
    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts) if f.name not in without}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _alternatives(kind) -> tuple:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    return (kind,)


def _checked(value: Any, kind, where: str) -> Any:
    """`value` as the field type `kind` wants it, or a ConfigError naming the key."""
    options = _alternatives(kind)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{where} must be set, got null")
    for option in options:
        if option is type(None):
            continue
        if option is float and _is_number(value):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (bool, str) and isinstance(value, option):
            return value
        if typing.get_origin(option) is tuple and isinstance(value, (list, tuple)):
            return _tuple(value, typing.get_args(option), where)
        if option is Any:
            return value
    names = [getattr(o, "__name__", str(o)) for o in options if o is not type(None)]
    article = "a number" if names == ["float"] else f"of type {' or '.join(names)}"
    raise ConfigError(f"{where} must be {article}, got {value!r}")


def _tuple(value, args: tuple, where: str) -> tuple:
    """A list as the tuple a field declares: tuple[float, float] (exactly two) or tuple[int, ...]."""
    if len(args) == 2 and args[1] is Ellipsis:
        element, count = args[0], None
    else:
        element, count = (args[0] if args else Any), len(args)
    noun = "numbers" if element is float else "integers" if element is int else "values"
    if count is not None and len(value) != count:
        raise ConfigError(f"{where} must be a list of {count} {noun}, got {list(value)!r}")
    try:
        return tuple(_checked(v, element, where) for v in value)
    except ConfigError:
        size = f"{count} " if count is not None else ""
        raise ConfigError(f"{where} must be a list of {size}{noun}, got {list(value)!r}") from None
