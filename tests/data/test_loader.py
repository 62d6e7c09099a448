"""Shard reading: exact once-per-sample evaluation, seeded reproducible training stream, clear errors."""

import hashlib
import io
import json
import os

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from cmim.data import loader as L
from cmim.data import manifest as M
from cmim.data.views import ViewSpec, eval_view
from cmim.errors import DataError


def png(value: int, size=(20, 16)) -> bytes:
    img = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    img[0, 0] = 255 - value  # an asymmetric pixel so crops and flips are visible
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def shards(tmp_path):
    """3 shards, 30 samples, label = i % 5, image value = i."""
    out = tmp_path / "train"
    out.mkdir()
    entries, i = [], 0
    for s in range(3):
        name = f"train-{s:06d}.tar"
        with wds.TarWriter(str(out / name), mtime=0) as w:
            for _ in range(10):
                w.write({"__key__": f"s{i:04d}", "png": png(i), "cls": str(i % 5).encode()})
                i += 1
        data = (out / name).read_bytes()
        entries.append({"file": name, "count": 10, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"num_samples": 30, "shards": entries, "classes": [{"id": k, "name": f"c{k}"} for k in range(5)]}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out / "manifest.json"


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_loader_reads_every_sample_once(shards, workers):
    view = eval_view(16, crop_pct=1.0)
    batches = list(L.eval_loader(shards, view, batch_size=7, num_workers=workers))
    images = torch.cat([b["images"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert images.shape == (30, 3, 16, 16) and images.dtype == torch.uint8
    values = sorted(int(v) for v in images[:, 0, 8, 8])  # centre pixel = sample index
    assert values == list(range(30))
    assert sorted(labels.tolist()) == sorted(i % 5 for i in range(30))


def test_eval_loader_respects_max_samples(shards):
    batches = list(L.eval_loader(shards, eval_view(16, 1.0), batch_size=8, max_samples=11))
    assert sum(len(b["labels"]) for b in batches) == 11


def test_train_loader_is_a_function_of_seed_and_epoch(shards):
    view = ViewSpec(num_views=2, crop_size=12, scale=(0.3, 1.0))

    def run(epoch, seed=0, workers=0):
        return list(L.train_loader(shards, view, batch_size=4, num_batches=6, epoch=epoch, seed=seed,
                                   num_workers=workers, shuffle_buffer=8))

    a, b = run(0), run(0)
    assert len(a) == 6
    assert a[0]["images"].shape == (4, 2, 3, 12, 12) and a[0]["images"].dtype == torch.uint8
    assert all(torch.equal(x["images"], y["images"]) and torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))
    c = run(1)
    assert not all(torch.equal(x["images"], y["images"]) for x, y in zip(a, c))
    w1, w2 = run(0, workers=2), run(0, workers=2)
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(w1, w2))


def test_resume_skip_reproduces_the_remaining_batches(shards):
    view = ViewSpec(num_views=1, crop_size=12)
    full = list(L.train_loader(shards, view, batch_size=3, num_batches=5, epoch=2, seed=7))
    it = iter(L.train_loader(shards, view, batch_size=3, num_batches=5, epoch=2, seed=7))
    for _ in range(2):
        next(it)
    rest = list(it)
    assert all(torch.equal(x["images"], y["images"]) for x, y in zip(full[2:], rest))


def test_random_crop_box_stays_inside_and_in_scale():
    rng = np.random.default_rng(0)
    view = ViewSpec(num_views=1, crop_size=8, scale=(0.2, 0.5))
    for _ in range(200):
        top, left, h, w = L.random_crop_box(40, 30, view, rng)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
        assert 0.15 <= h * w / 1200 <= 0.56


def test_missing_or_truncated_shard_is_named(shards):
    shard = shards.parent / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError, match="train-000001.tar.*truncated"):
        M.read_manifest(shards)
    shard.unlink()
    with pytest.raises(DataError, match="train-000001.tar.*missing"):
        M.read_manifest(shards)
    with pytest.raises(DataError, match="run the shard step"):
        M.read_manifest(shards.parent / "nope.json")


def test_corrupt_image_bytes_fail_with_the_sample_key(tmp_path):
    out = tmp_path / "bad"
    out.mkdir()
    with wds.TarWriter(str(out / "bad-000000.tar"), mtime=0) as w:
        w.write({"__key__": "broken01", "jpg": b"not a jpeg", "cls": b"0"})
    data = (out / "bad-000000.tar").read_bytes()
    (out / "manifest.json").write_text(json.dumps({"num_samples": 1, "shards": [
        {"file": "bad-000000.tar", "count": 1, "bytes": len(data), "sha256": ""}]}))
    with pytest.raises(DataError, match="broken01"):
        list(L.eval_loader(out / "manifest.json", eval_view(8, 1.0), batch_size=1))


# ----------------------------------------------------------------------------- verification (issue 12)


def _set_count(manifest_path, shard_index: int, count: int) -> None:
    """Edit one shard's count in the manifest (and the total, so the manifest stays self-consistent)."""
    m = json.loads(manifest_path.read_text())
    m["num_samples"] += count - m["shards"][shard_index]["count"]
    m["shards"][shard_index]["count"] = count
    manifest_path.write_text(json.dumps(m))


def test_verify_shards_catches_a_shard_damaged_in_place_at_the_same_size(shards):
    lines = []
    M.verify_shards(shards, log=lines.append)  # intact: passes, one summary line
    assert len(lines) == 1 and "3 shards" in lines[0] and "sha256 ok" in lines[0]
    shard = shards.parent / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one flipped byte inside a member: same size
    shard.write_bytes(bytes(data))
    M.read_manifest(shards)  # the cheap size check cannot see it
    want = json.loads(shards.read_text())["shards"][1]["sha256"]
    with pytest.raises(DataError) as err:
        M.verify_shards(shards, log=lambda m: None)
    first = str(err.value).splitlines()[0]
    assert "train-000001.tar" in first and want in first and hashlib.sha256(data).hexdigest() in first
    assert f"delete {shards.parent}" in first and "re-run sharding" in first


def test_verify_shards_logs_progress_for_big_splits(shards, monkeypatch):
    monkeypatch.setattr(M, "VERIFY_PROGRESS_BYTES", 0)  # every split counts as big
    lines = []
    M.verify_shards(shards, log=lines.append, workers=2)
    progress = [line for line in lines if "ETA" in line]
    assert len(progress) == 3 and progress[-1].startswith(f"[verify] {shards.parent}: 3/3 shards")
    assert "sha256 ok" in lines[-1]


def test_verify_shards_needs_a_recorded_hash(tmp_path, shards):
    m = json.loads(shards.read_text())
    m["shards"][2]["sha256"] = ""
    shards.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"train-000002.tar.*no sha256"):
        M.verify_shards(shards, log=lambda m: None)


@pytest.mark.parametrize("count", [11, 9])
def test_eval_pass_sees_exactly_the_manifest_count_of_each_shard(shards, count):
    """(Loader workers run the same check; torch takes 10 s to shut down an errored loader's workers.)"""
    _set_count(shards, 1, count)
    said = {11: "holds 10 samples, its manifest lists 11", 9: "holds more than the 9 samples its manifest lists"}
    with pytest.raises(DataError, match="train-000001.tar " + said[count]) as err:
        list(L.eval_loader(shards, eval_view(16, 1.0), batch_size=4))
    assert "re-run sharding" in str(err.value)


@pytest.mark.parametrize("count", [12, 8])
def test_train_stream_detects_a_shard_that_runs_out_early_or_late(shards, count):
    for i in range(3):
        _set_count(shards, i, count)
    view = ViewSpec(num_views=1, crop_size=8)
    said = {12: "holds 10 samples, its manifest lists 12", 8: "holds more than the 8 samples its manifest lists"}
    with pytest.raises(DataError, match=r"train-00000\d.tar " + said[count]):
        list(L.train_loader(shards, view, batch_size=4, num_batches=20, epoch=0, seed=0, shuffle_buffer=4))


def test_the_count_check_leaves_the_streams_unchanged(shards):
    """The same samples in the same order as webdataset's own tarfile_to_samples."""
    m = M.read_manifest(shards)
    urls = M.shard_urls(shards, m)
    plain = [s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples())]
    _, checked = M.read_shards(shards)
    ours = [s["__key__"] for s in wds.DataPipeline(wds.SimpleShardList(urls), M.checked_tar_samples(checked))]
    assert ours == plain and len(ours) == 30


def test_a_shard_replaced_under_a_running_job_is_an_error(shards):
    it = iter(L.train_loader(shards, ViewSpec(num_views=1, crop_size=8), batch_size=4, num_batches=20, epoch=0,
                             seed=0, shuffle_buffer=4))
    for i in range(3):  # a re-shard rewrote the shards: same bytes, new files
        shard = shards.parent / f"train-{i:06d}.tar"
        st = shard.stat()
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match=r"train-00000\d.tar changed after this job read .*manifest.json.*restart"):
        list(it)


@pytest.mark.parametrize("text", ["{not json", '["a list"]', '{"num_samples": 3, "shards": [{"file": "x.tar"}]}',
                                  '{"num_samples": 5, "shards": [{"file": "train-000000.tar", "count": 10, '
                                  '"bytes": 1}]}'])
def test_a_broken_manifest_is_a_data_error_naming_it(shards, text):
    shards.write_text(text)
    with pytest.raises(DataError) as err:
        M.read_manifest(shards)
    first = str(err.value).splitlines()[0]
    assert str(shards) in first and "re-run sharding" in first


def test_a_verified_shard_is_not_hashed_again_until_it_changes(shards, monkeypatch):
    """One job hashes; the next skips the unchanged shards (recorded with size, mtime, ctime, inode,
    device); a shard damaged in place after that is hashed again and caught."""
    hashed = []
    real = M._sha256
    monkeypatch.setattr(M, "_sha256", lambda shard: hashed.append(shard.file) or real(shard))
    M.verify_shards(shards, log=lambda m: None)
    assert sorted(hashed) == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    hashed.clear()
    lines = []
    M.verify_shards(shards, log=lines.append)
    assert hashed == [] and "3 verified before and unchanged" in lines[-1]
    shard = shards.parent / "train-000002.tar"
    data = bytearray(shard.read_bytes())
    stat = shard.stat()
    data[len(data) // 2] ^= 0xFF                       # damaged in place, same size ...
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # ... and its mtime set back: ctime still moves
    with pytest.raises(DataError, match="train-000002.tar is damaged"):
        M.verify_shards(shards, log=lambda m: None)
    assert hashed == ["train-000002.tar"]
    data[len(data) // 2] ^= 0xFF                       # repaired: the original bytes again
    shard.write_bytes(bytes(data))
    hashed.clear()
    shards.parent.joinpath(".verified.json").write_text("not json")   # an unreadable record: hash everything
    M.verify_shards(shards, log=lambda m: None)
    assert len(hashed) == 3
    hashed.clear()
    M.verify_shards(shards, log=lambda m: None, recheck=True)           # recheck: hash everything again
    assert len(hashed) == 3
