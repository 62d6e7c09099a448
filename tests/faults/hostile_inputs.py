"""Hostile inputs, tried as a user would meet them: configs, images, annotation files, checkpoints and
resume states that are broken, inconsistent or planted. Each case runs the command a user (or the
Snakefile) runs and keeps what the user sees: the last line of the command's error, or the log lines
that say what was skipped, converted, dropped or refused.

    python tests/faults/hostile_inputs.py            # prints the markdown table of tests/faults/README.md
    python tests/faults/hostile_inputs.py -k coco    # only the cases whose name contains "coco"

The cases worth keeping as regressions are tests of their own (tests/faults/README.md names them);
this script is the wider sweep, to extend with the next hostile input (add a function to CASES).
Paths of the scratch folder print as `<tmp>`. Nothing here is imported by the test suite.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from tiny import tiny_run  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
LAUNCH = {"launcher": "inprocess", "cpus_per_task": 2, "num_workers": 0}
DATA = {"dataset": "pets", "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 32, "eval_crop_pct": 1.0}


class Planted:
    """Unpickling this calls open(<marker>, "w")."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class Sandbox:
    """A scratch folder with a tiny imagefolder dataset sharded, a random-init encoder and its run."""

    def __init__(self, tmp: Path) -> None:
        from cmim.data.shard import shard_split
        from cmim.paths import RunFiles
        from cmim.tasks.pretrain import write_baseline

        self.tmp = tmp
        self.pets = tmp / "pets"
        for split in ("train", "val"):
            for label, cls in enumerate(("cat", "dog")):
                for i in range(6):
                    self.image(self.pets / split / cls / f"{i}.png", seed=10 * label + i)
        self.manifests = {s: tmp / "shards" / s / "manifest.json" for s in ("train", "val")}
        for split, path in self.manifests.items():
            shard_split("imagefolder", self.pets, "pets", split, split, path.parent, log=lambda m: None)
        self.run = tiny_run("mae")
        self.run_config = tmp / "mae.yaml"
        self.run_config.write_text(yaml.safe_dump(self.run))
        base = tiny_run("random_init")
        files = RunFiles(tmp / "random_init")
        write_baseline(base, files, log=lambda m: None)
        self.checkpoint = files.checkpoint
        self.marker = tmp / "pwned"

    @staticmethod
    def image(path: Path, seed: int = 0, size=(32, 32), mode: str = "RGB", fmt: str = "PNG") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode).save(path, fmt)
        return path

    def folder(self, name: str) -> Path:
        out = self.tmp / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        return out

    def cmim(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cmim", *args], capture_output=True, text=True, cwd=self.tmp,
                              timeout=600, env=env)

    def plant(self, path: Path, legacy: bool = False, **fields) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        obj = {**fields, "payload": Planted(self.marker)}
        if legacy:
            path.write_bytes(pickle.dumps(obj, protocol=2))
        else:
            torch.save(obj, path)
        return path

    # ------------------------------------------------------------------ commands
    def validate(self, text: str | dict, name: str = "study.yaml") -> subprocess.CompletedProcess:
        path = self.tmp / name
        path.write_text(text if isinstance(text, str) else yaml.safe_dump(text))
        return self.cmim("validate", "--configfile", str(path))

    def snakemake(self, config_text: str, as_configfile: bool) -> subprocess.CompletedProcess:
        work = self.folder("sm")
        path = work / ("study.yaml" if as_configfile else "config.yaml")
        path.write_text(config_text)
        cmd = [SNAKEMAKE, "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work)]
        return subprocess.run(cmd + (["--configfile", str(path)] if as_configfile else []), capture_output=True,
                              text=True, timeout=600)

    def shard(self, fmt: str, root: Path, split: str, **options) -> subprocess.CompletedProcess:
        opts = {"shard_max_count": 100, "shard_max_bytes": 1e9, "max_bad_fraction": 0.5, **options}
        return self.cmim("shard", "--format", fmt, "--root", str(root), "--dataset", "d", "--split", "x",
                         "--source-split", split, "--out-dir", str(self.tmp / "out" / fmt), "--options",
                         json.dumps(opts))

    def probe(self, checkpoint: Path) -> subprocess.CompletedProcess:
        from cmim.config import validate
        from tiny import tiny_config

        cfg = tiny_config()
        opts = {**validate(cfg)["evaluations"]["linear_probe"], "features": "augmented", "epochs": 1}
        return self.cmim("linear-probe", "--run-config", str(self.run_config), "--checkpoint", str(checkpoint),
                         "--train-manifest", str(self.manifests["train"]), "--val-manifest",
                         str(self.manifests["val"]), "--options", json.dumps(opts), "--data", json.dumps(DATA),
                         "--out", str(self.tmp / "probe.json"))

    def knn(self, features: Path) -> subprocess.CompletedProcess:
        return self.cmim("knn", "--run-config", str(self.run_config), "--features", str(features), "--options",
                         json.dumps({"k": 5, "temperature": 0.07}), "--out", str(self.tmp / "knn.json"))

    def pretrain(self, out: Path, **run) -> subprocess.CompletedProcess:
        config = self.tmp / "pre.yaml"
        config.write_text(yaml.safe_dump(tiny_run("mae", **run)))
        return self.cmim("pretrain", "--run-config", str(config), "--manifest", str(self.manifests["train"]),
                         "--out", str(out), "--launch", json.dumps(LAUNCH))


# ----------------------------------------------------------------------------- what the user sees


def seen(result: subprocess.CompletedProcess, keep: tuple[str, ...] = ()) -> str:
    """A failed command's error: its line, the problem lines under it ("  - key: ...") and, for
    Snakemake's `WorkflowError:`, the line that follows; a succeeded one's lines holding any of `keep`."""
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0:
        starts = [i for i, line in enumerate(lines) if line.startswith(("cmim ", "WorkflowError"))]
        if not starts:
            return f"exit {result.returncode}: " + " / ".join(lines[-2:])
        i = starts[-1] if lines[starts[-1]].startswith("cmim ") else starts[0]
        said = [lines[i]] + [line for line in lines[i + 1:i + 2] if not line.lstrip().startswith(("File ", "- "))]
        said += [line.strip() for line in lines[i + 1:] if line.startswith("  - ")]
        return f"exit {result.returncode}: " + " / ".join(dict.fromkeys(said))
    kept = [line.strip() for line in lines if any(k in line for k in keep)]
    return "ok: " + (" / ".join(kept) if kept else "(nothing said)")


DEMO = (ROOT / "config.yaml").read_text()
STUDY = {"datasets": {"pets": {"format": "imagefolder", "root": "PETS", "image_size": 32}},
         "runs": {"mae": {"method": "mae", "dataset": "pets", "arch": "vit_tiny", "epochs": 1, "warmup_epochs": 0.5,
                          "patch_size": 8}}}


def study(sb: Sandbox, **changes) -> dict:
    out = json.loads(json.dumps(STUDY).replace("PETS", str(sb.pets)))
    for key, value in changes.items():
        node, *path = key.split(".")
        target = out.setdefault(node, {})
        for part in path[:-1]:
            target = target.setdefault(part, {})
        if value is None:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    return out


# ----------------------------------------------------------------------------- configs

def c_yaml_syntax(sb):
    return seen(sb.validate("datasets:\n  pets: [1\nruns: {}\n"))


def c_yaml_tab(sb):
    return seen(sb.validate("datasets:\n\tpets: {}\n"))


def c_yaml_unclosed_quote(sb):
    return seen(sb.validate('runs: "mae\n'))


def c_empty_file(sb):
    return seen(sb.validate(""))


def c_only_comments(sb):
    return seen(sb.validate("# nothing yet\n"))


def c_top_level_list(sb):
    return seen(sb.validate("- datasets\n- runs\n"))


def c_binary_file(sb):
    (sb.tmp / "bin.yaml").write_bytes(b"\xff\xfe\x00\x01")
    return seen(sb.cmim("validate", "--configfile", str(sb.tmp / "bin.yaml")))


def c_missing_file(sb):
    return seen(sb.cmim("validate", "--configfile", str(sb.tmp / "nope.yaml")))


def c_typo_key(sb):
    return seen(sb.validate(study(sb, **{"runs.mae.epocs": 3})))


def c_wrong_type(sb):
    return seen(sb.validate(study(sb, **{"runs.mae.epochs": "ten"})))


def c_unknown_enum(sb):
    return seen(sb.validate(study(sb, **{"runs.mae.method": "byol"})))


def c_imagefolder_without_root(sb):
    return seen(sb.validate(study(sb, **{"datasets.pets.root": None})))


def c_coco_without_root(sb):
    return seen(sb.validate(study(sb, **{"datasets.pets.format": "coco", "datasets.pets.root": None})))


def c_root_absent(sb):
    return seen(sb.validate(study(sb, **{"datasets.pets.root": "/mnt/nodes-only/pets"})), keep=("warning",))


def c_root_is_a_file(sb):
    return seen(sb.validate(study(sb, **{"datasets.pets.root": str(sb.run_config)})), keep=("warning",))


def c_patch_does_not_divide(sb):
    return seen(sb.validate(study(sb, **{"runs.mae.patch_size": 7})))


def c_warmup_past_epochs(sb):
    return seen(sb.validate(study(sb, **{"runs.mae.warmup_epochs": 3})))


def c_unknown_run_in_evaluation(sb):
    return seen(sb.validate(study(sb, **{"evaluations.knn.runs": ["mea"]})))


def c_raw_pixels_finetuned(sb):
    cfg = study(sb, **{"runs.raw": {"method": "raw_pixels", "dataset": "pets"}, "evaluations.finetune.runs": ["raw"]})
    return seen(sb.validate(cfg))


def c_bad_override(sb):
    (sb.tmp / "s.yaml").write_text(yaml.safe_dump(study(sb)))
    return seen(sb.cmim("validate", "--configfile", str(sb.tmp / "s.yaml"), "--set", "runs.mae.epochs"))


def c_snakefile_config_yaml_syntax(sb):
    return seen(sb.snakemake("datasets:\n  pets: [1\nruns: {}\n", as_configfile=False))


def c_snakefile_config_yaml_empty(sb):
    return seen(sb.snakemake("", as_configfile=False))


def c_snakemake_configfile_syntax(sb):
    """Snakemake parses --configfile before the Snakefile runs: its own message (README says to validate)."""
    return seen(sb.snakemake("datasets:\n  pets: [1\nruns: {}\n", as_configfile=True))


def c_snakemake_imagefolder_without_root(sb):
    return seen(sb.snakemake(yaml.safe_dump(study(sb, **{"datasets.pets.root": None})), as_configfile=True))


def c_snakemake_root_absent(sb):
    return seen(sb.snakemake(yaml.safe_dump(study(sb, **{"datasets.pets.root": "/mnt/nodes-only/pets"})),
                             as_configfile=True), keep=("warning",))


# ----------------------------------------------------------------------------- images

def _imagefolder(sb, name: str, write: Callable[[Path], None]) -> subprocess.CompletedProcess:
    root = sb.folder(name)
    for cls in ("cat", "dog"):
        for i in range(4):
            sb.image(root / "train" / cls / f"{i}.png", seed=i)
    write(root / "train")
    return sb.shard("imagefolder", root, "train")


SHARD_SAYS = ("skipped ", "converted ", "WARNING", "degenerate_boxes ", "dropped_annotations ")


def i_truncated_jpeg(sb):
    def write(split):
        data = io.BytesIO()
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data, "JPEG")
        (split / "cat" / "cut.jpg").write_bytes(data.getvalue()[:300])
    return seen(_imagefolder(sb, "trunc", write), SHARD_SAYS)


def i_zero_bytes(sb):
    return seen(_imagefolder(sb, "zero", lambda s: (s / "dog" / "empty.jpg").write_bytes(b"")), SHARD_SAYS)


def i_text_named_jpg(sb):
    return seen(_imagefolder(sb, "text", lambda s: (s / "dog" / "notes.jpg").write_text("not an image\n")), SHARD_SAYS)


def i_cmyk(sb):
    return seen(_imagefolder(sb, "cmyk", lambda s: sb.image(s / "cat" / "cmyk.jpg", mode="CMYK", fmt="JPEG")),
                SHARD_SAYS)


def i_sixteen_bit_grey(sb):
    def write(split):
        Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).save(split / "cat" / "g16.png")
    return seen(_imagefolder(sb, "g16", write), SHARD_SAYS)


def i_loose_file(sb):
    return seen(_imagefolder(sb, "loose", lambda s: sb.image(s / "stray.png")), SHARD_SAYS)


def i_decompression_bomb(sb):
    def write(split):
        Image.new("1", (20000, 20000)).save(split / "cat" / "bomb.png")   # 400 Mpx, a few kB on disk
    return seen(_imagefolder(sb, "bomb", write), SHARD_SAYS)


def i_every_file_bad(sb):
    root = sb.folder("allbad")
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        (root / "train" / cls / "x.jpg").write_bytes(b"")
    return seen(sb.shard("imagefolder", root, "train"))


def i_empty_split(sb):
    root = sb.folder("emptysplit")
    (root / "train").mkdir()
    return seen(sb.shard("imagefolder", root, "train"))


def i_root_absent_in_shard_job(sb):
    return seen(sb.shard("imagefolder", sb.tmp / "nowhere", "train"))


# ----------------------------------------------------------------------------- annotation files

def _coco(sb, name: str, change: Callable[[dict], None], raw: bytes | None = None) -> subprocess.CompletedProcess:
    root = sb.folder(name)
    images = []
    for i, image_id in enumerate((1, 2)):
        sb.image(root / "val2017" / f"{image_id:012d}.jpg", seed=i, fmt="JPEG")
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 32, "height": 32})
    doc = {"images": images, "categories": [{"id": 1, "name": "thing"}, {"id": 3, "name": "other"}],
           "annotations": [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 0,
                            "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]},
                           {"id": 11, "image_id": 2, "category_id": 3, "bbox": [4, 4, 6, 6], "area": 36, "iscrowd": 0,
                            "segmentation": [[4, 4, 10, 4, 10, 10, 4, 10]]}]}
    change(doc)
    path = root / "annotations" / "instances_val2017.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    return sb.shard("coco", root, "val2017", max_bad_fraction=0.9)


def _ann(doc, i, **kv):
    doc["annotations"][i].update(kv)


def a_coco_not_json(sb):
    return seen(_coco(sb, "cj", lambda d: None, raw=b"{not json"))


def a_coco_top_level_list(sb):
    return seen(_coco(sb, "cl", lambda d: None, raw=b"[]"))


def a_coco_category_twice(sb):
    return seen(_coco(sb, "c2", lambda d: d["categories"].append({"id": 1, "name": "again"})))


def a_coco_zero_width_box(sb):
    return seen(_coco(sb, "zw", lambda d: _ann(d, 0, bbox=[10, 10, 0, 20])), SHARD_SAYS)


def a_coco_box_outside_image(sb):
    return seen(_coco(sb, "out", lambda d: _ann(d, 0, bbox=[40, 2, 5, 5])), SHARD_SAYS)


def a_coco_sub_pixel_box(sb):
    return seen(_coco(sb, "sub", lambda d: _ann(d, 0, bbox=[2, 2, 0.5, 0.5])), SHARD_SAYS + ("done,",))


def a_coco_negative_width(sb):
    return seen(_coco(sb, "neg", lambda d: _ann(d, 0, bbox=[10, 10, -3, 5])), SHARD_SAYS)


def a_coco_nan_box(sb):
    return seen(_coco(sb, "nan", lambda d: None,
                      raw=json.dumps({"images": [{"id": 1, "file_name": "000000000001.jpg", "width": 32, "height": 32}],
                                      "categories": [{"id": 1, "name": "t"}],
                                      "annotations": [{"id": 3, "image_id": 1, "category_id": 1,
                                                       "bbox": [1, 1, float("nan"), 2]}]}).encode()), SHARD_SAYS)


def a_coco_unknown_image_id(sb):
    return seen(_coco(sb, "orph", lambda d: _ann(d, 1, image_id=999)), SHARD_SAYS)


def a_coco_unknown_category(sb):
    return seen(_coco(sb, "cat", lambda d: _ann(d, 1, category_id=77)), SHARD_SAYS)


def a_coco_size_differs(sb):
    return seen(_coco(sb, "size", lambda d: d["images"][0].update(width=33)), SHARD_SAYS)


def a_coco_file_name_escapes(sb):
    return seen(_coco(sb, "esc", lambda d: d["images"][0].update(file_name="../../etc/passwd")), SHARD_SAYS)


def a_coco_duplicate_annotation_id(sb):
    return seen(_coco(sb, "dup", lambda d: _ann(d, 1, id=10)), SHARD_SAYS)


def _ade(sb, name: str, label: np.ndarray, info: str | None) -> subprocess.CompletedProcess:
    root = sb.folder(name)
    base = root / "ADEChallengeData2016"
    for i in range(3):
        sb.image(base / "images" / "validation" / f"ADE_val_{i}.jpg", seed=i, fmt="JPEG")
        lab = label if i == 0 else np.ones((32, 32), np.uint8)
        (base / "annotations" / "validation").mkdir(parents=True, exist_ok=True)
        Image.fromarray(lab).save(base / "annotations" / "validation" / f"ADE_val_{i}.png")
    if info is not None:
        (base / "objectInfo150.txt").write_text(info)
    return sb.shard("ade20k", root, "validation", max_bad_fraction=0.9)


INFO = "Idx\tRatio\tTrain\tVal\tName\n1\t0.1\t1\t1\twall\n2\t0.1\t1\t1\tsky\n"


def a_ade_label_outside_class_list(sb):
    return seen(_ade(sb, "adelab", np.full((32, 32), 7, np.uint8), INFO), SHARD_SAYS)


def a_ade_annotation_other_size(sb):
    return seen(_ade(sb, "adesize", np.ones((16, 32), np.uint8), INFO), SHARD_SAYS)


def a_ade_object_info_malformed(sb):
    return seen(_ade(sb, "adeinfo", np.ones((32, 32), np.uint8), "Idx\tName\n1\twall\n"))


def a_coco_val_json_zero_area_box(sb):
    """The detection job on a val json with a zero-width box: scored as it is, warned with the ceiling."""
    from cmim.data import scene_trees
    from cmim.data.shard import shard_split

    root = sb.folder("scenes")
    scene_trees.generate(root, "coco", n_train=4, n_val=3, size=64, seed=0, log=lambda m: None)
    tree = scene_trees.tree_root(root, "coco")
    manifests = {}
    for split, source in (("train", "train2017"), ("val", "val2017")):
        manifests[split] = root / "shards" / split / "manifest.json"
        shard_split("coco", tree, "scenes", split, source, manifests[split].parent, log=lambda m: None)
    gt = json.loads((tree / "annotations" / "instances_val2017.json").read_text())
    next(a for a in gt["annotations"] if not a["iscrowd"])["bbox"][2] = 0
    (root / "gt.json").write_text(json.dumps(gt))
    from tiny import TINY_DETECTION

    opts = {**TINY_DETECTION, "iters": 1, "examples": 0}
    data = {**DATA, "dataset": "scenes", "image_size": 64}
    result = sb.cmim("dense", "--task", "coco", "--run-config", str(sb.tmp / "random_init.yaml"), "--checkpoint",
                     str(sb.checkpoint), "--train-manifest", str(manifests["train"]), "--val-manifest",
                     str(manifests["val"]), "--out-dir", str(root / "det"), "--result", str(root / "coco.json"),
                     "--examples", str(root / "ex.png"), "--gt-json", str(root / "gt.json"), "--options",
                     json.dumps(opts), "--data", json.dumps(data), "--launch", json.dumps(LAUNCH))
    return seen(result, ("warning",))


# ----------------------------------------------------------------------------- checkpoints and other torch files

def k_planted_checkpoint(sb):
    out = seen(sb.probe(sb.plant(sb.tmp / "planted.pt", format="cmim-encoder-v1")))
    return out + ("; THE PICKLE RAN" if sb.marker.exists() else "; nothing ran")


def k_planted_raw_pickle(sb):
    out = seen(sb.probe(sb.plant(sb.tmp / "planted-raw.pt", legacy=True, format="cmim-encoder-v1")))
    return out + ("; THE PICKLE RAN" if sb.marker.exists() else "; nothing ran")


def k_truncated_checkpoint(sb):
    path = sb.tmp / "cut.pt"
    path.write_bytes(sb.checkpoint.read_bytes()[:1000])
    return seen(sb.probe(path))


def k_random_bytes(sb):
    path = sb.tmp / "noise.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    return seen(sb.probe(path))


def k_empty_checkpoint(sb):
    path = sb.tmp / "empty.pt"
    path.write_bytes(b"")
    return seen(sb.probe(path))


def k_missing_checkpoint(sb):
    return seen(sb.probe(sb.tmp / "nowhere.pt"))


def k_other_shape(sb):
    from cmim.models.vit import build_encoder

    spec = sb.run["encoder"]
    wrong = build_encoder({**spec, "embed_dim": spec["embed_dim"] // 2})
    path = sb.tmp / "narrow.pt"
    torch.save({"format": "cmim-encoder-v1", "encoder": wrong.state_dict(), "encoder_spec": spec}, path)
    return seen(sb.probe(path))


def k_segmenter_as_encoder(sb):
    path = sb.tmp / "seg.pt"
    torch.save({"format": "cmim-segmenter-v1", "model": {}}, path)
    return seen(sb.probe(path))


def k_resume_state_as_checkpoint(sb):
    path = sb.tmp / "resume" / "step-000000004.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save({"step": 4, "epoch": 0, "model": {}, "optimizer": {}, "rng": {"numpy": np.random.get_state()}}, path)
    return seen(sb.probe(path))


def k_planted_features(sb):
    out = seen(sb.knn(sb.plant(sb.tmp / "feat.pt", format="cmim-features-v1")))
    return out + ("; THE PICKLE RAN" if sb.marker.exists() else "; nothing ran")


def k_features_of_another_format(sb):
    path = sb.tmp / "feat2.pt"
    torch.save({"format": "something-else", "train_x": torch.zeros(2, 3)}, path)
    return seen(sb.knn(path))


def k_planted_reconstructions(sb):
    from cmim.report import paper_figures

    path = sb.plant(sb.tmp / "rec.pt", run="mae", method="mae")
    try:
        paper_figures.reconstructions_figure({"title": "t", "files": {"mae": str(path)}}, sb.tmp / "r.png")
        out = "ok: rendered"
    except Exception as e:                           # the report rule's one-line error
        out = f"error: {e}"
    return out + ("; THE PICKLE RAN" if sb.marker.exists() else "; nothing ran")


# ----------------------------------------------------------------------------- resume states

def _resume_dir(sb, name: str) -> Path:
    out = sb.folder(name)
    (out / "resume").mkdir()
    return out


def r_planted_state(sb):
    out = _resume_dir(sb, "rp")
    sb.plant(out / "resume" / "step-000000099.pt", step=99, epoch=1, step_in_epoch=0, config_hash="x")
    said = seen(sb.pretrain(out))
    return said + ("; THE PICKLE RAN" if sb.marker.exists() else "; nothing ran") + \
        ("; the file is still in resume/" if (out / "resume" / "step-000000099.pt").exists() else "")


def r_planted_raw_pickle_state(sb):
    """A raw pickle (protocol 4): torch cannot parse its framing, so it is unreadable, not refused."""
    out = _resume_dir(sb, "rr")
    path = out / "resume" / "step-000000099.pt"
    path.write_bytes(pickle.dumps({"step": 99, "payload": Planted(sb.marker)}, protocol=4))
    said = seen(sb.pretrain(out), ("[resume]",))
    return said + ("; THE PICKLE RAN" if sb.marker.exists() else "; nothing ran")


def r_truncated_state(sb):
    out = sb.folder("rt")
    sb.pretrain(out, epochs=1, checkpoint_epochs=[1], checkpoint_every_steps=2)
    states = sorted((out / "resume").glob("step-*.pt"))
    states[-1].write_bytes(states[-1].read_bytes()[:2000])
    (out / "checkpoint.pt").unlink()
    return seen(sb.pretrain(out, epochs=1, checkpoint_epochs=[1], checkpoint_every_steps=2), ("[resume]", "resuming"))


def r_random_bytes_state(sb):
    out = _resume_dir(sb, "rb")
    (out / "resume" / "step-000000005.pt").write_bytes(b"\x00" * 100)
    return seen(sb.pretrain(out), ("[resume]",))


def r_state_of_another_config(sb):
    out = sb.folder("rc")
    sb.pretrain(out, epochs=1, checkpoint_epochs=[1], checkpoint_every_steps=2)
    (out / "checkpoint.pt").unlink()
    changed = sb.pretrain(out, epochs=1, checkpoint_epochs=[1], checkpoint_every_steps=2, base_lr=2e-3)
    return seen(changed, ("[resume]",))


def r_state_that_is_a_list(sb):
    out = _resume_dir(sb, "rl")
    torch.save([1, 2, 3], out / "resume" / "step-000000005.pt")
    return seen(sb.pretrain(out), ("[resume]",))


def r_object_array_rng(sb):
    """numpy's RNG state replaced by an object array: refused (object dtype is not in the allow-list)."""
    out = _resume_dir(sb, "ro")
    rng = list(np.random.get_state())
    rng[1] = np.array([1, "x"], dtype=object)
    torch.save({"step": 5, "rng": {"numpy": tuple(rng)}, "config_hash": "x"}, out / "resume" / "step-000000005.pt")
    return seen(sb.pretrain(out), ("[resume]",))


def r_leftover_temp_files(sb):
    out = _resume_dir(sb, "rtmp")
    (out / "resume" / ".step-000000004.pt.abc.tmp").write_bytes(b"half")
    return seen(sb.pretrain(out), ("[resume] removed",))


CASES: dict[str, list[Callable[[Sandbox], str]]] = {
    "config": [c_yaml_syntax, c_yaml_tab, c_yaml_unclosed_quote, c_empty_file, c_only_comments, c_top_level_list,
               c_binary_file, c_missing_file, c_typo_key, c_wrong_type, c_unknown_enum, c_imagefolder_without_root,
               c_coco_without_root, c_root_absent, c_root_is_a_file, c_patch_does_not_divide, c_warmup_past_epochs,
               c_unknown_run_in_evaluation, c_raw_pixels_finetuned, c_bad_override, c_snakefile_config_yaml_syntax,
               c_snakefile_config_yaml_empty, c_snakemake_configfile_syntax, c_snakemake_imagefolder_without_root,
               c_snakemake_root_absent],
    "image": [i_truncated_jpeg, i_zero_bytes, i_text_named_jpg, i_cmyk, i_sixteen_bit_grey, i_loose_file,
              i_decompression_bomb, i_every_file_bad, i_empty_split, i_root_absent_in_shard_job],
    "annotation": [a_coco_not_json, a_coco_top_level_list, a_coco_category_twice, a_coco_zero_width_box,
                   a_coco_box_outside_image, a_coco_sub_pixel_box, a_coco_negative_width, a_coco_nan_box,
                   a_coco_unknown_image_id, a_coco_unknown_category, a_coco_size_differs, a_coco_file_name_escapes,
                   a_coco_duplicate_annotation_id, a_ade_label_outside_class_list, a_ade_annotation_other_size,
                   a_ade_object_info_malformed, a_coco_val_json_zero_area_box],
    "checkpoint": [k_planted_checkpoint, k_planted_raw_pickle, k_truncated_checkpoint, k_random_bytes,
                   k_empty_checkpoint, k_missing_checkpoint, k_other_shape, k_segmenter_as_encoder,
                   k_resume_state_as_checkpoint, k_planted_features, k_features_of_another_format,
                   k_planted_reconstructions],
    "resume state": [r_planted_state, r_planted_raw_pickle_state, r_truncated_state, r_random_bytes_state,
                     r_state_of_another_config, r_state_that_is_a_list, r_object_array_rng, r_leftover_temp_files],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cmim-hostile-"))
    try:
        sb = Sandbox(tmp)
        (tmp / "random_init.yaml").write_text(yaml.safe_dump(tiny_run("random_init")))
        print("| # | kind | input | what the user sees |\n|---:|---|---|---|")
        n = 0
        for kind, cases in CASES.items():
            for case in cases:
                if args.k not in case.__name__:
                    continue
                n += 1
                sb.marker.unlink(missing_ok=True)
                try:
                    said = case(sb)
                except Exception as e:                   # the script's own failure, said as such
                    said = f"SCRIPT ERROR {type(e).__name__}: {e}"
                said = said.replace(str(tmp), "<tmp>").replace(str(ROOT), "<checkout>").replace("|", "\\|")
                what = case.__name__.split("_", 1)[1].replace("_", " ")
                print(f"| {n} | {kind} | {what} | {said[:400]} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
