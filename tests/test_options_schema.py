"""Every options class against its schema block, both ways; the one converter (`from_dict`)."""

from __future__ import annotations

import dataclasses

import pytest

from cmim.config_schema import definition
from cmim.errors import ConfigError
from cmim.options import SELECTION_KEYS, as_dict, from_dict
from cmim.options.checkpoint import CheckpointOptions
from cmim.options.evals import TASK_OPTIONS, FeaturesOptions
from cmim.options.loop import LoopOptions
from cmim.options.methods import METHOD_OPTIONS, AugmentOptions
from cmim.options.monitor import MonitorOptions

# schema block ($defs.<name>) -> the class that mirrors it
BLOCKS = {**METHOD_OPTIONS, "augment": AugmentOptions, "features": FeaturesOptions, "checkpoint": CheckpointOptions,
          "monitor": MonitorOptions,
          **TASK_OPTIONS}
# run keys that are not the loop's: what the run is (method, data, shape), not how it trains
RUN_ONLY = {"method", "dataset", "arch", "patch_size", "depth", "embed_dim", "num_heads", "seeds", "probe_feature",
            "augment", "mae", "can", "cmae", "simclr", "checkpoint"}


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _schema_keys(name: str) -> dict:
    return {k: v for k, v in definition(name)["properties"].items() if k not in SELECTION_KEYS}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_each_class_has_exactly_its_blocks_keys_in_order_with_its_defaults(name):
    block = _schema_keys(name)
    fields = {f.name: _plain(f.default) for f in dataclasses.fields(BLOCKS[name])}
    assert list(fields) == list(block), f"{name}: same keys, same order as $defs.{name}"
    assert fields == {k: v.get("default") for k, v in block.items()}, f"{name}: same defaults"


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_the_schema_defaults_build_the_default_options_and_round_trip(name):
    cls = BLOCKS[name]
    defaults = {k: v["default"] for k, v in _schema_keys(name).items()}
    opts = from_dict(cls, defaults, name)
    assert opts == cls()
    assert from_dict(cls, {k: _plain(v) for k, v in as_dict(opts).items()}, name) == opts


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_an_unknown_key_fails_with_its_key_path(name):
    with pytest.raises(ConfigError, match=rf"evaluations\.x\.{name}: unknown {name} option\(s\) \['nope'\]; valid: "):
        from_dict(BLOCKS[name], {"nope": 1}, f"evaluations.x.{name}")


def test_every_loop_key_is_a_run_key_with_the_same_default_and_every_run_key_is_accounted_for():
    run = definition("run_partial")["properties"]
    loop = {f.name: f for f in dataclasses.fields(LoopOptions)}
    shared = set(loop) & set(run)
    assert shared >= {"epochs", "batch_size", "base_lr", "warmup_epochs", "weight_decay", "betas", "seed"}
    for key in shared - {"epochs", "batch_size", "base_lr", "warmup_epochs", "checkpoint_every_steps", "seed"}:
        assert _plain(loop[key].default) == run[key]["default"], key   # the loop's own defaults are the run's
    assert set(run) - set(loop) <= RUN_ONLY, "a run key that is neither a loop key nor a known run key"


def test_values_are_checked_and_converted_by_type():
    opts = from_dict(AugmentOptions, {"blur_prob": 1, "crop_scale": [0.08, 1]}, "runs.r.augment")
    assert opts.blur_prob == 1.0 and isinstance(opts.blur_prob, float) and opts.crop_scale == (0.08, 1.0)
    with pytest.raises(ConfigError, match=r"runs\.r\.augment\.color_jitter must be a list of 4 numbers"):
        from_dict(AugmentOptions, {"color_jitter": [0.4, 0.4]}, "runs.r.augment")
    with pytest.raises(ConfigError, match=r"evaluations\.knn\.k must be of type int, got 'many'"):
        from_dict(TASK_OPTIONS["knn"], {"k": "many"}, "evaluations.knn")
    with pytest.raises(ConfigError, match=r"evaluations\.finetune\.rand_augment must be of type str"):
        from_dict(TASK_OPTIONS["finetune"], {"rand_augment": 3}, "evaluations.finetune")
    assert from_dict(TASK_OPTIONS["finetune"], {"rand_augment": None}, "evaluations.finetune").rand_augment is None


def test_a_class_rule_fails_with_the_key_path_where_it_is_built():
    with pytest.raises(ConfigError, match=r"runs\.can\.can: noise is off, so denoise_loss must be false"):
        from_dict(METHOD_OPTIONS["can"], {"noise": False}, "runs.can.can")
    with pytest.raises(ConfigError, match=r"evaluations\.ade20k: slide_stride 600 must be in 1\.\.slide_crop"):
        from_dict(TASK_OPTIONS["ade20k"], {"slide_stride": 600}, "evaluations.ade20k")
    assert METHOD_OPTIONS["cmae"]().grid_problems(7) and not METHOD_OPTIONS["cmae"]().grid_problems(8)
