"""Loader throughput per CPU core: cmim's shard loader against torchvision's ImageFolder with MAE's
transforms, on the same JPEGs, and the cores each needs to feed a GPU.

    python benchmarks/loader.py                      # 2000 generated ImageNet-sized JPEGs, ~3 minutes
    python benchmarks/loader.py --images 500 --batches 6 --repeats 1   # a quick look

What it does, in a temporary folder (removed at the end):
1. generates `--images` photo-like JPEGs at ImageNet's common sizes (cmim.data.photos: crops of
   scikit-image's photos with texture and noise, quality 75-95, 4:2:0, 2% greyscale) in
   ImageFolder layout, and shards them twice with cmim's sharder: as given ("raw") and with the
   short side resized to 256 px ("256"); the 256-px JPEGs are also written out as an ImageFolder,
   so both loaders read the same bytes in both settings;
2. times, in this process (workers=0, one torch / OpenCV thread, process CPU time, so the figures
   are per core and hold on a shared machine), `--batches` batches of 64 after one warm-up batch:
   - torchvision: datasets.ImageFolder + MAE's transform_train (RandomResizedCrop(224, scale=(0.2,
     1.0), bicubic), RandomHorizontalFlip, ToTensor, Normalize), through a DataLoader;
   - cmim pil / auto: cmim.data.loader.train_loader with decode='pil' (before: PIL decode and resize)
     and decode='auto' (torchvision decode, torch resize), MAE's view (1 x 224, scale 0.2-1);
   - cmim cuda, workers' share: what the loader workers still do when the GPU decodes (read,
     shuffle, header, boxes); the GPU's part is not timed (no GPU here);
   every setting `--repeats` times, interleaved, median reported;
3. times the per-image stages on the raw JPEGs: decode (PIL, torchvision.io.decode_jpeg,
   cv2.imdecode) and the crop resize (PIL, torch uint8 antialiased) of MAE's boxes;
4. prints a table and writes benchmarks/results/<date>-cpu-loader.json.

Not in cmim's loader time: the flip and the normalisation, which cmim runs on the batch on the
accelerator (cmim.data.augment); torchvision's figure includes them, as MAE's workers run them.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import io
import os
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import datasets, transforms

from cmim import io as io_
from cmim.bench.run import device_name
from cmim.data import decode as D
from cmim.data.loader import train_loader
from cmim.data.photos import IMAGENET_SIZES, image_folder
from cmim.data.shard import shard_split
from cmim.data.views import ViewSpec

H100_MAE_IMG_S = 4484          # MAE ViT-B/16 pretraining on one H100 (the figure): what a loader must feed
BATCH = 64
MAE_VIEW = ViewSpec(num_views=1, crop_size=224, scale=(0.2, 1.0), interpolation="bicubic")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# ----------------------------------------------------------------------------- data


def build(work: Path, images: int) -> dict:
    """ImageFolder trees and shard splits, raw and 256 px, of the same generated JPEGs."""
    files = image_folder(work / "src", "train", images)
    quiet = lambda _: None
    raw = shard_split("imagefolder", work / "src", "bench", "train", "train", work / "raw", workers=1, log=quiet)
    r256 = shard_split("imagefolder", work / "src", "bench", "train", "train", work / "r256", resize_short_side=256,
                       workers=1, log=quiet)
    n256 = _unpack(work / "r256", work / "src256" / "train")
    assert n256 == r256["num_samples"] == raw["num_samples"] == images
    return {"files": files, "raw_bytes_mean": float(np.mean([p.stat().st_size for p in files])),
            "raw_size_stats": raw["image_size_stats"], "r256_size_stats": r256["image_size_stats"],
            "raw_shard_bytes": sum(s["bytes"] for s in raw["shards"]),
            "r256_shard_bytes": sum(s["bytes"] for s in r256["shards"])}


def _unpack(shard_dir: Path, out: Path) -> int:
    """The JPEGs of a split's shards as an ImageFolder tree (the bytes the shards hold)."""
    n = 0
    for tar_path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name, member in members.items():
                if not name.endswith(".jpg"):
                    continue
                key = name[: -len(".jpg")]
                label = tar.extractfile(members[key + ".cls"]).read().decode()
                path = out / f"class{int(label):03d}" / f"{key}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tar.extractfile(member).read())
                n += 1
    return n


# ----------------------------------------------------------------------------- loaders


def _timed(batches, n_batches: int) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, images) of n_batches batches after a warm-up batch."""
    it = iter(batches)
    next(it)  # warm-up: opens files, fills cmim's shuffle buffer
    cpu, wall, images = time.process_time(), time.perf_counter(), 0
    for _ in range(n_batches):
        batch = next(it)
        images += len(batch["labels"] if isinstance(batch, dict) else batch[1])
    return time.process_time() - cpu, time.perf_counter() - wall, images


def torchvision_mae(root: Path, n_batches: int, seed: int):
    mae = transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = datasets.ImageFolder(str(root), transform=mae)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    return _timed(_cycle(loader), n_batches)


def _cycle(loader):
    while True:
        yield from loader


def cmim_loader(manifest: Path, n_batches: int, seed: int, decode: str):
    return _timed(train_loader(manifest, MAE_VIEW, batch_size=BATCH, num_batches=n_batches + 1, epoch=0, seed=seed,
                               decode=decode), n_batches)


def cmim_worker_share(manifest: Path, n_batches: int, seed: int):
    """decode: cuda, the workers' part: the batches of bytes and boxes, not decoded."""
    views = train_loader(manifest, MAE_VIEW, batch_size=BATCH, num_batches=n_batches + 1, epoch=0, seed=seed,
                         decode_device=torch.device("cpu"))
    return _timed(views.batches, n_batches)


# ----------------------------------------------------------------------------- stages


def stage_times(files: list[Path], repeats: int) -> dict[str, float]:
    """ms per image of each decode and of the crop resize, on MAE's boxes of the raw JPEGs."""
    datas = [p.read_bytes() for p in files[:300]]
    rng = np.random.default_rng(0)
    pils = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas]
    tensors = [D.decode_tensor({"jpg": d}) for d in datas]
    boxes = [D.random_crop_box(p.width, p.height, MAE_VIEW, rng) for p in pils]

    def pil_resize(i):
        top, left, h, w = boxes[i]
        return pils[i].crop((left, top, left + w, top + h)).resize((224, 224), Image.Resampling.BICUBIC)

    stages = {
        "decode PIL (open + convert RGB)": lambda i: Image.open(io.BytesIO(datas[i])).convert("RGB"),
        "decode torchvision.io.decode_jpeg (cmim auto)": lambda i: D.decode_tensor({"jpg": datas[i]}),
        "decode cv2.imdecode": lambda i: cv2.imdecode(np.frombuffer(datas[i], np.uint8),
                                                      cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION),
        "resize PIL crop + bicubic 224": pil_resize,
        "resize torch uint8 antialiased bicubic 224 (cmim auto)": lambda i: D.resized_crop(tensors[i], boxes[i], 224,
                                                                                            "bicubic"),
    }
    out: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(repeats):
        for name, fn in stages.items():
            start = time.process_time()
            for i in range(len(datas)):
                fn(i)
            out[name].append((time.process_time() - start) / len(datas) * 1e3)
    return {k: round(statistics.median(v), 4) for k, v in out.items()}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000, help="generated JPEGs (default 2000)")
    ap.add_argument("--batches", type=int, default=20, help="timed batches of 64 per setting (default 20)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every setting (default 3)")
    ap.add_argument("--workdir", default=None, help="where the temporary data go (default: the system's temp)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder of the JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    work = Path(tempfile.mkdtemp(prefix="cmim-loader-bench-", dir=args.workdir))
    try:
        started = time.perf_counter()
        data = build(work, args.images)
        print(f"[loader bench] {args.images} JPEGs generated and sharded in {time.perf_counter() - started:.0f}s "
              f"({data['raw_bytes_mean'] / 1e3:.0f} kB mean); timing {args.batches} x {BATCH} images per setting, "
              f"{args.repeats} repeats", flush=True)
        settings = {}
        for images, folder, shards in (("raw", "src", "raw"), ("256", "src256", "r256")):
            manifest = work / shards / "manifest.json"
            settings[(images, "torchvision ImageFolder + MAE transforms")] = functools.partial(
                torchvision_mae, work / folder / "train", args.batches)
            settings[(images, "cmim decode=pil (before)")] = functools.partial(cmim_loader, manifest, args.batches,
                                                                              decode="pil")
            settings[(images, "cmim decode=auto (after)")] = functools.partial(cmim_loader, manifest, args.batches,
                                                                               decode="auto")
            settings[(images, "cmim decode=cuda: workers' share")] = functools.partial(cmim_worker_share, manifest,
                                                                                       args.batches)
        runs: dict[tuple, list[tuple]] = {k: [] for k in settings}
        for r in range(args.repeats):
            for key, fn in settings.items():
                runs[key].append(fn(r))
        stages = stage_times(data["files"], args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for (images, name), results in runs.items():
        per_core = statistics.median(n / cpu for cpu, _, n in results)
        base = statistics.median(n / cpu for cpu, _, n in runs[(images, "torchvision ImageFolder + MAE transforms")])
        rows.append({"images": images, "loader": name, "img_s_per_core": round(per_core, 1),
                     "ms_per_img": round(1e3 / per_core, 3), "cores_for_4484": round(H100_MAE_IMG_S / per_core, 2),
                     "vs_torchvision": round(per_core / base, 3),
                     "runs_img_s_per_core": [round(n / cpu, 1) for cpu, _, n in results],
                     "runs_wall_s": [round(w, 3) for _, w, _ in results]})
    print(f"\n{'JPEGs':6} {'loader':44} {'img/s/core':>10} {'ms/img':>7} {'cores@4484':>10} {'vs tv':>6}")
    for row in rows:
        print(f"{row['images']:6} {row['loader']:44} {row['img_s_per_core']:10.0f} {row['ms_per_img']:7.3f} "
              f"{row['cores_for_4484']:10.1f} {row['vs_torchvision']:6.2f}")
    print("\nper-image stages on the raw JPEGs (ms, one core):")
    for name, ms in stages.items():
        print(f"  {name:58} {ms:.3f}")
    meta = {"date": datetime.date.today().isoformat(), "cpu": device_name(torch.device("cpu")),
            "cores_visible": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "pillow": PIL.__version__,
            "opencv": cv2.__version__, "images": args.images, "batch": BATCH, "timed_batches": args.batches,
            "repeats": args.repeats, "sizes_cycled": IMAGENET_SIZES, "grey_every": 50,
            "timing": "workers=0, 1 torch / OpenCV thread, process CPU time after one warm-up batch; median of repeats",
            "target_img_s": H100_MAE_IMG_S, **{k: v for k, v in data.items() if k != "files"}}
    out = Path(args.out) / f"{meta['date']}-cpu-loader.json"
    io_.write_json(out, {"meta": meta, "rows": rows, "stages_ms": stages})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
