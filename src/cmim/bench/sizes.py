"""The model sizes `cmim bench` runs at, as resolved cmim runs (the same dicts a study's jobs read).

tiny:  seconds on a CPU (CI: the command runs end to end).
demo:  the demo study's model (config.yaml: ViT d4 w128 h4, patch 8 @ 32 px, batch 64, decoders
       128 x 2 blocks x 4 heads); tests/bench checks that it still matches config.yaml.
paper: the papers' ViT-B/16 @ 224, batch 256, each method's paper decoder (cmim's defaults:
       dec512d8b, CMAE's 2-block feature decoder): the shape of the team's GPU reference steps
       (notes/gpu-anchors.md section 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cmim.config import validate
from cmim.options.evals import FinetuneOptions
from cmim.study import resolve_run

STEPS = ("mae", "can", "cmae", "simclr", "finetune")
PRETRAIN = ("mae", "can", "cmae", "simclr")


@dataclass(frozen=True)
class Size:
    name: str
    arch: str
    image_size: int
    patch_size: int
    batch: int
    num_classes: int                               # finetune head
    warmup: int                                    # untimed steps (the first includes compilation)
    steps: int                                     # timed steps
    encoder: dict = field(default_factory=dict)    # width/depth/heads overrides of the arch
    decoder: dict = field(default_factory=dict)    # {} = each method's paper decoder
    options: dict = field(default_factory=dict)    # method -> options beyond the decoder (as config.yaml's)
    ceiling_n: int = 8192                          # matmul ceiling: n x n x n
    ceiling_reps: int = 30


SIZES = {
    "tiny": Size("tiny", "vit_tiny", 32, 8, 16, 10, warmup=1, steps=3,
                 encoder={"embed_dim": 64, "depth": 2, "num_heads": 2},
                 decoder={"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
                 options={"cmae": {"block_size": 1}}, ceiling_n=256, ceiling_reps=3),
    "demo": Size("demo", "vit_tiny", 32, 8, 64, 10, warmup=3, steps=15,
                 encoder={"embed_dim": 128, "depth": 4, "num_heads": 4},
                 decoder={"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4},
                 options={"cmae": {"block_size": 1}},   # 65% of single patches on the 4x4 grid, as config.yaml
                 ceiling_n=1024, ceiling_reps=5),
    "paper": Size("paper", "vit_base", 224, 16, 256, 1000, warmup=10, steps=30),
}


def size(name: str) -> Size:
    if name not in SIZES:
        raise ValueError(f"unknown bench size {name!r}; choose one of {sorted(SIZES)}")
    return SIZES[name]


def bench_run(s: Size, method: str, *, compile: str = "off", precision: str = "auto") -> dict:
    """A resolved run of `method` at size `s` (schema defaults for everything not set here).

    The finetune step's run is MAE's at the same size (only its encoder shape is read).
    """
    method = "mae" if method == "finetune" else method
    run = {"method": method, "dataset": "bench", "arch": s.arch, "patch_size": s.patch_size, **s.encoder,
           "epochs": 1, "warmup_epochs": 0, "batch_size": s.batch, "compile": compile, "precision": precision}
    if method != "simclr" and s.decoder:
        run[method] = dict(s.decoder)
    if s.options.get(method):
        run[method] = {**run.get(method, {}), **s.options[method]}
    cfg = {"datasets": {"bench": {"format": "imagefolder", "root": "/nonexistent", "image_size": s.image_size}},
           "runs": {method: run}}
    return resolve_run(validate(cfg, source=f"bench size {s.name}"), method)


# What the finetune step runs: the recipe the reference step has (no drop path, no Mixup/CutMix, no
# random erasing, plain cross-entropy), so the ratio compares like with like. `finetune_recipe`
# times MAE's full recipe (drop path 0.1, Mixup/CutMix, label smoothing, random erasing).
FINETUNE_AS_REFERENCE = {"drop_path": 0.0, "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0, "label_smoothing": 0.0}


def finetune_options(s: Size, *, recipe: bool = False, compile: str = "off", precision: str = "auto"):
    keys = {} if recipe else dict(FINETUNE_AS_REFERENCE)
    return FinetuneOptions(batch_size=s.batch, epochs=1, warmup_epochs=0, compile=compile, precision=precision,
                           **keys)
