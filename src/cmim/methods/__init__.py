"""The pretraining methods, by config name. A typo fails with the list of valid names."""

from __future__ import annotations

import difflib

from torch import nn

from cmim.methods.can import CAN
from cmim.methods.cmae import CMAE
from cmim.methods.mae import MAE
from cmim.methods.simclr import SimCLR

METHODS: dict[str, type[nn.Module]] = {"mae": MAE, "can": CAN, "cmae": CMAE, "simclr": SimCLR}


def build_method(run: dict) -> nn.Module:
    """METHODS[run["method"]](run) for a resolved run (cmim.study.resolve_run)."""
    name = run["method"]
    if name not in METHODS:
        hint = difflib.get_close_matches(str(name), list(METHODS), n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ValueError(f"unknown method {name!r}{did_you_mean}; valid methods: {sorted(METHODS)}")
    return METHODS[name](run)
