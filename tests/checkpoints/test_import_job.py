"""The import job through the CLI (what rule import_checkpoint runs) and export back out to timm / MAE."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import yaml

import checkpoint_files as F
from cmim import cli
from cmim.checkpoints.importer import import_encoder
from cmim.options.checkpoint import CheckpointOptions
from cmim.train.checkpoint import ENCODER_FORMAT, file_sha256, load_encoder
from tiny import TINY_RUN, fmnist_only, tiny_config, write_config

TIMM_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


def study(tmp_path, source=None) -> tuple:
    """A tiny study with one trained-shape run `mae` and one imported run `imp` reading `source`."""
    if source is None:
        source = F.write("mae-released", F.encoder(), tmp_path)
    cfg = fmnist_only(tiny_config(methods=()))
    cfg["runs"] = {"mae": {"method": "mae"}, "imp": {"method": "imported", "epochs": 1600,
                                                      "checkpoint": {"path": str(source)}}}
    assert TINY_RUN["patch_size"] == 8 and TINY_RUN["embed_dim"] == 64 and TINY_RUN["depth"] == 2
    return write_config(tmp_path / "study.yaml", cfg), cfg


def test_import_job_writes_a_pretraining_runs_files_and_the_key_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    enc = F.encoder()
    source = F.write("mae-training", enc, tmp_path)
    config, _ = study(tmp_path, source)
    run_dir = tmp_path / "results/pretrain/imp"
    resolved = str(run_dir / "config.yaml")
    assert cli.main(["resolve", "--configfile", str(config), "--run", "imp", "--out", resolved]) == 0
    assert cli.main(["import-checkpoint", "--run-config", str(run_dir / "config.yaml"), "--source", str(source),
                     "--out", str(run_dir)]) == 0
    log = capsys.readouterr().out
    for line in ("format mae (auto: timm names under 'model'", "ignored, decoder: decoder_blocks.0.0.bias",
                 "ignored, optimizer: top-level 'optimizer', top-level 'scaler'", "missing encoder keys: none",
                 "allowing argparse.Namespace, pathlib.PosixPath"):
        assert line in log, line
    sha = file_sha256(source)
    imported, meta = load_encoder(run_dir / "checkpoint.pt")
    assert meta["format"] == ENCODER_FORMAT and meta["method"] == "imported" and meta["epoch"] == 1600
    assert meta["source"] == {"path": str(source), "sha256": sha, "format": "mae"}
    assert torch.equal(F.features(imported.eval()), F.features(enc))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["source"]["sha256"] == sha and summary["steps"] == 0 and summary["epochs"] == 1600
    report = json.loads((run_dir / "import_report.json").read_text())
    assert report["source"]["sha256"] == sha and report["probe_feature"] == "cls"
    assert report["loaded"]["blocks.1.mlp.fc2.weight"] == "blocks.1.mlp.fc2.weight"
    assert (run_dir / "metrics.jsonl").read_text() == ""
    assert torch.load(run_dir / "reconstructions.pt", weights_only=True)["images"] is None


def test_the_import_job_fails_in_one_line_naming_the_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    source = F.write("cmae-released", F.encoder(), tmp_path)
    obj = torch.load(source, weights_only=True)
    del obj["state_dict"]["layers.0.ln2.bias"]
    torch.save(obj, source)
    config, _ = study(tmp_path, source)
    run_dir = tmp_path / "results/pretrain/imp"
    cli.main(["resolve", "--configfile", str(config), "--run", "imp", "--out", str(run_dir / "config.yaml")])
    code = cli.main(["import-checkpoint", "--run-config", str(run_dir / "config.yaml"), "--source", str(source),
                     "--out", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "encoder key blocks.0.norm2.bias is missing: expected as 'layers.0.ln2.bias'" in err[0]
    assert "(format mmpretrain)" in err[0]
    assert not (run_dir / "checkpoint.pt").exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_to_timm_loads_in_timm_strictly_with_identical_features(suffix, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    enc = F.encoder()
    config, cfg = study(tmp_path)
    F.cmim_file(enc, tmp_path / "results/pretrain/mae/checkpoint.pt")
    out = tmp_path / f"mae_timm{suffix}"
    assert cli.main(["export", "--configfile", str(config), "--run", "mae", "--format", "timm", "--out", str(out)]) == 0
    assert "timm.create_model('vit_base_patch16_224.mae', pretrained=True" in capsys.readouterr().out
    # the `.mae` tag has num_classes=0, so timm loads strictly: a missing or extra encoder key would raise
    model = timm.create_model("vit_base_patch16_224.mae", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out)), **TIMM_KWARGS).eval()
    assert model.num_classes == 0
    assert torch.equal(F.features(model), F.features(enc))


def test_export_to_mae_reimports_with_identical_features_and_fits_maes_finetune_loader(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    enc = F.encoder()
    config, _ = study(tmp_path)
    F.cmim_file(enc, tmp_path / "results/pretrain/mae/checkpoint.pt")
    out = tmp_path / "mae_pretrain.pth"
    assert cli.main(["export", "--configfile", str(config), "--run", "mae", "--format", "mae", "--out", str(out)]) == 0
    imported, report = import_encoder(out, F.SPEC, CheckpointOptions(path=str(out)), run="again")
    assert report["format"] == "mae"
    assert torch.equal(F.features(imported), F.features(enc))
    # MAE's main_finetune.py: checkpoint['model'] into a global-pool ViT, strict=False, and it asserts the
    # missing keys are exactly the new head and fc_norm
    checkpoint = torch.load(out, map_location="cpu", weights_only=True)
    finetune = timm.models.vision_transformer.VisionTransformer(num_classes=10, global_pool="avg", **TIMM_KWARGS)
    missing = set(finetune.load_state_dict(checkpoint["model"], strict=False).missing_keys)
    assert missing == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}


def test_export_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, _ = study(tmp_path)
    assert cli.main(["export", "--configfile", str(config), "--run", "mae", "--format", "timm", "--out", "x.pth"]) == 1
    assert cli.main(["export", "--configfile", str(config), "--run", "nope", "--format", "timm", "--out", "x.pth"]) == 2


def test_resolved_imported_run_keeps_its_source_and_has_no_epoch_checkpoints(tmp_path):
    from cmim.config import load_config, warnings
    from cmim.study import checkpoint_epochs, resolve_run

    config, _ = study(tmp_path, tmp_path / "w.pth")
    cfg = load_config([config])
    assert [w.split(": ")[0] for w in warnings(cfg)] == ["runs.imp.checkpoint.path"]
    assert "w.pth does not exist on this machine" in warnings(cfg)[0]
    run = resolve_run(cfg, "imp")
    assert run["checkpoint"] == {"path": str(tmp_path / "w.pth"), "format": "auto", "prefix": None,
                                 "interpolate_pos_embed": False}
    assert run["checkpoint_epochs"] == [] and checkpoint_epochs(cfg, "imp") == [] and run["epochs"] == 1600
    assert run["probe_feature"] == "cls"
    assert "checkpoint" not in resolve_run(cfg, "mae")       # other runs' resolved configs are unchanged
    assert yaml.safe_load(yaml.safe_dump(run)) == run
