"""Reading a downloaded weights file as data, never as code.

A `.pth` is a pickle, and unpickling can call any function the file names (`__reduce__`). Every file
is read with cmim.io.torch_load (torch.load weights_only=True: tensors, containers, numbers,
strings) plus exactly the classes its format needs, or with safetensors (no code at all):

| format     | allow-listed                                | why                                             |
|------------|---------------------------------------------|-------------------------------------------------|
| mae        | argparse.Namespace, pathlib.PosixPath       | training checkpoints' `args` (paths via submitit)|
| timm       | argparse.Namespace                          | timm train.py checkpoints' `args`               |
| mmpretrain, lightning, cmim | nothing                    |                                                 |

`auto` first reads with nothing allowed and, only if the file asks for one of these classes, again
with them (the union is MAE's list). A file that asks for anything else is refused in one line
before any of it runs. Raw mmengine training checkpoints are refused with their own message: their
`message_hub` holds HistoryBuffer objects, whose pickled state names `getattr` (protocol 2 writes
class-level functions that way); allowing getattr would let a file call any function.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

from cmim import io
from cmim.checkpoints import lightning, mae, mmpretrain, native
from cmim.errors import CheckpointError, UnsafeFile

ALLOW = {"mae": mae.ALLOW_MAE, "timm": mae.ALLOW_TIMM, "mmpretrain": mmpretrain.ALLOW, "lightning": lightning.ALLOW,
         "cmim": native.ALLOW}
ALLOW_ANY = tuple(dict.fromkeys(cls for classes in ALLOW.values() for cls in classes))


@dataclass
class Source:
    obj: object                 # what the file holds (a mapping for every known format)
    read_as: str                # how it was read, for the report
    allowed: list[str]          # classes that had to be allow-listed


def qualname(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _mmengine(path: Path, refused: str) -> UnsafeFile:
    return UnsafeFile(
        f"{path}: refused: a raw mmengine training checkpoint (it asks for {refused}: its message_hub holds "
        f"HistoryBuffer objects, whose unpickling needs builtins.getattr, which would let the file call any "
        f"function). Extract the backbone where you trust the file, e.g. CMAE's / mmselfsup's "
        f"tools/extract_backbone_weights.py <in.pth> <out.pth>, or in Python torch.save({{'state_dict': "
        f"torch.load('<in.pth>', weights_only=False)['state_dict']}}, '<out.pth>'), and import that file")


def _torch(path: Path, allow: tuple) -> Source:
    try:
        obj = io.torch_load(path, allow=allow, what="weights file")
    except UnsafeFile as e:
        refused = getattr(e, "refused", "")
        if refused.startswith("mmengine.") or refused in ("getattr", "builtins.getattr"):
            raise _mmengine(path, refused) from None
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError) as e:  # not a torch file, cut short
        raise CheckpointError(f"{path} cannot be read as a torch file ({io.unreadable_reason(e)}); "
                              f"is the download complete?") from None
    return Source(obj, "torch.load(weights_only=True)" + (f" allowing {', '.join(map(qualname, allow))}"
                                                          if allow else ""), [qualname(c) for c in allow])


def read(path: str | Path, fmt: str) -> Source:
    """The file's contents as plain data (see the module docstring for what each format may ask for)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; download it or fix runs.<run>.checkpoint.path")
    if path.suffix == ".safetensors":
        if fmt not in ("auto", "timm"):
            raise CheckpointError(f"{path}: a .safetensors file is a bare timm-named state dict; set format: timm "
                                  f"or auto (got {fmt})")
        from safetensors.torch import load_file

        return Source(dict(load_file(str(path))), "safetensors", [])
    if fmt != "auto":
        return _torch(path, ALLOW[fmt])
    try:
        return _torch(path, ())
    except UnsafeFile as e:
        if getattr(e, "refused", "") not in {qualname(c) for c in ALLOW_ANY}:
            raise
    source = _torch(path, ALLOW_ANY)
    source.allowed = [qualname(c) for c in ALLOW_ANY]
    return source
