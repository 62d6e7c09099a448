"""runs.<id>.checkpoint: where an imported run's weights come from and how to read them.

Mirrors `$defs.checkpoint` (same keys, order, defaults). cmim.config builds it for every imported
run while validating (and requires `path` there); the import job (cmim.checkpoints) builds it from
the resolved run, so both meet the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass

IMPORT_FORMATS = ("auto", "mae", "timm", "mmpretrain", "lightning", "cmim")


@dataclass(frozen=True)
class CheckpointOptions:
    """runs.<id>.checkpoint (method: imported)."""

    path: str | None = None                # the weights file; required for an imported run (cmim.config)
    format: str = "auto"                   # one of IMPORT_FORMATS; auto detects and says why
    prefix: str | None = None              # take the keys starting with it ('' = bare); None: the format's rule
    interpolate_pos_embed: bool = False    # resample a position embedding of another grid instead of failing

    def __post_init__(self) -> None:
        if self.format not in IMPORT_FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {list(IMPORT_FORMATS)}")
        if self.prefix and not self.prefix.endswith("."):
            raise ValueError(f"prefix {self.prefix!r} must end with '.' (a module path such as 'backbone.'), "
                             f"or be '' for names that are already the encoder's")
        if self.path is not None and not self.path.strip():
            raise ValueError("path is empty; give the weights file")
