"""Each method's options dataclass has exactly the schema's keys and defaults."""

import dataclasses

import pytest

from cmim.config import schema
from cmim.methods import METHODS, build_method
from cmim.options.methods import CANOptions, CMAEOptions, MAEOptions, SimCLROptions

OPTIONS = {"mae": MAEOptions, "can": CANOptions, "cmae": CMAEOptions, "simclr": SimCLROptions}


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_fields_equal_schema_keys_and_defaults(method):
    block = schema()["$defs"][method]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(OPTIONS[method])}
    assert list(fields) == list(block), "same keys, same order as the schema"
    assert fields == {k: v.get("default") for k, v in block.items()}


def test_every_trained_method_is_registered():
    assert sorted(METHODS) == sorted(schema()["$defs"]["run_partial"]["properties"]["method"]["enum"][:4])


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match=r"did you mean 'cmae'.*\['can', 'cmae', 'mae', 'simclr'\]"):
        build_method({"method": "cmea"})


def test_unknown_option_lists_valid_ones():
    from method_runs import make_run

    run = make_run("mae")
    run["method_options"]["mask_ration"] = 0.5
    with pytest.raises(ValueError, match=r"runs\.r\.mae: unknown mae option\(s\) \['mask_ration'\]; valid: "
                                         r".*'mask_ratio'"):
        build_method(run)
