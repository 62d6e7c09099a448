"""The config contract: one schema, errors that name the key, defaults, run_defaults, resolution."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cmim import config as C
from cmim import study as S

ROOT = Path(__file__).resolve().parents[1]


def demo() -> dict:
    return C.load_yaml(ROOT / "config.yaml")


def errors_of(raw: dict) -> str:
    with pytest.raises(C.ConfigError) as e:
        C.validate(raw)
    return str(e.value)


def test_demo_config_is_valid_and_defaults_are_filled():
    cfg = C.validate(demo())
    assert cfg["launch"]["launcher"] == "inprocess"
    assert cfg["datasets"]["fmnist"]["shard_max_bytes"] == 1_000_000_000  # a schema default
    assert cfg["evaluations"]["linear_probe"]["optimizer"] == "lars"


def test_unknown_key_names_the_path_and_suggests():
    raw = demo()
    raw["runs"]["mae"]["epocs"] = 3
    msg = errors_of(raw)
    assert "runs.mae.epocs" in msg and "did you mean 'epochs'" in msg


def test_wrong_type_and_enum_are_reported_together():
    raw = demo()
    raw["runs"]["mae"]["batch_size"] = "big"
    raw["launch"]["launcher"] = "slrum"
    msg = errors_of(raw)
    assert "runs.mae.batch_size: expected integer" in msg
    assert "launch.launcher" in msg and "did you mean 'slurm'" in msg


def test_options_of_another_method_are_rejected():
    raw = demo()
    raw["runs"]["mae"]["can"] = {"noise": False}
    assert "runs.mae.can: options for method 'can' in a 'mae' run" in errors_of(raw)


def test_cross_key_checks():
    raw = demo()
    raw["runs"]["mae"]["warmup_epochs"] = 50
    raw["runs"]["mae"]["patch_size"] = 5
    raw["runs"]["random_init"]["dataset"] = "fmnst"
    msg = errors_of(raw)
    assert "runs.mae.patch_size: 5 does not divide the image size 32" in msg
    assert "runs.random_init.dataset: unknown dataset 'fmnst' (did you mean 'fmnist'?)" in msg
    raw = demo()
    raw["runs"]["mae"]["warmup_epochs"] = 50
    assert "runs.mae.warmup_epochs" in errors_of(raw)


def test_can_noise_off_must_not_keep_denoising():
    raw = demo()
    raw["runs"]["can"] = {"method": "can", "can": {"noise": False}}
    assert "runs.can.can: noise is off" in errors_of(raw)
    raw["runs"]["can"]["can"].update(denoise_loss=False, sigma_embed="off")
    C.validate(raw)


def test_run_defaults_sit_between_schema_defaults_and_the_run():
    raw = demo()
    raw["run_defaults"]["base_lr"] = 1e-3
    raw["runs"]["mae"].update(epochs=2, warmup_epochs=1, checkpoint_epochs=[2])
    cfg = C.validate(raw)
    run = S.resolve_run(cfg, "mae")
    assert run["base_lr"] == 1e-3          # from run_defaults
    assert run["epochs"] == 2              # the run's own
    assert run["weight_decay"] == 0.05     # schema default
    assert run["method_options"]["mask_ratio"] == 0.75
    assert run["encoder"] == {"embed_dim": 128, "depth": 4, "num_heads": 4, "patch_size": 8, "img_size": 32}
    assert S.resolve_run(cfg, "random_init")["epochs"] == 0  # baselines are never trained


def test_resolved_config_hash_changes_with_a_hyper_parameter():
    cfg = C.validate(demo())
    before = S.config_hash(S.resolve_run(cfg, "mae"))
    raw = demo()
    raw["runs"]["mae"]["mae"]["mask_ratio"] = 0.5
    after = S.config_hash(S.resolve_run(C.validate(raw), "mae"))
    assert before != after
    assert before == S.config_hash(S.resolve_run(C.validate(demo()), "mae"))


def test_overrides_parse_yaml_values():
    assert C.parse_override("runs.mae.epochs=3") == {"runs": {"mae": {"epochs": 3}}}
    assert C.parse_override("launch.partition=null") == {"launch": {"partition": None}}


@pytest.mark.parametrize("tool", ["cli", "snakemake"])
def test_a_typo_fails_fast_naming_the_key(tmp_path, tool):
    raw = demo()
    raw["run_defaults"]["epocs"] = 3
    bad = tmp_path / "config.yaml"
    bad.write_text(yaml.safe_dump(raw))
    if tool == "cli":
        cmd = [sys.executable, "-m", "cmim", "validate", "--configfile", str(bad)]
    else:
        cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--snakefile", str(ROOT / "Snakefile"),
               "--configfile", str(bad), "--directory", str(tmp_path)]
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    assert result.returncode != 0
    assert "run_defaults.epocs" in result.stderr + result.stdout
    assert "did you mean 'epochs'" in result.stderr + result.stdout
    # Fails before any job: nothing written, no rule scheduled (how fast is a benchmark's business).
    assert not (tmp_path / "results").exists() and "\nrule " not in result.stdout, elapsed


def test_exponent_floats_are_numbers_in_the_cli_and_in_the_snakefile(tmp_path):
    path = tmp_path / "c.yaml"
    raw = demo()
    raw["run_defaults"]["base_lr"] = 0.001
    path.write_text(yaml.safe_dump(raw).replace("base_lr: 0.001", "base_lr: 4e-3"))
    assert "base_lr: 4e-3" in path.read_text()
    assert S.resolve_run(C.load_config([path]), "mae")["base_lr"] == 4e-3
    for text in ("4e-3", "1.0e6", "1E5"):  # what Snakemake's YAML 1.1 loader hands over: text
        raw["run_defaults"]["base_lr"] = text
        assert S.resolve_run(C.validate(raw), "mae")["base_lr"] == float(text)


def test_nested_command_line_overrides_are_read_against_the_schema():
    """snakemake --config 'launch={"timeout_min":600}' hands the values over as text."""
    raw = demo()
    raw["launch"] = {"timeout_min": "600", "gpus_per_node": "0", "num_workers": "auto", "partition": "600"}
    cfg = C.validate(raw)
    assert cfg["launch"]["timeout_min"] == 600 and cfg["launch"]["gpus_per_node"] == 0
    assert cfg["launch"]["num_workers"] == "auto" and cfg["launch"]["partition"] == "600"  # text stays text
    raw["launch"] = {"timeout_min": "ten"}
    assert "launch.timeout_min: expected integer, got str 'ten'" in errors_of(raw)
    raw["launch"] = {"timeout_min": "1.5"}
    assert "launch.timeout_min: expected integer" in errors_of(raw)


def test_the_readme_examples_are_valid_configs(tmp_path):
    """A newcomer copies README's YAML: it must validate as it stands."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README has no YAML example"
    for i, block in enumerate(blocks):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(block)
        # a block without datasets is a diff on the demo study (README: --configfiles merge)
        base = [] if "datasets:" in block else [ROOT / "config.yaml"]
        cfg = C.load_config([*base, path])
        for run in cfg["runs"]:
            S.resolve_run(cfg, run)


def test_imported_runs_need_their_file_and_only_they_take_a_checkpoint_block(tmp_path):
    weights = tmp_path / "mae_pretrain_vit_base.pth"
    weights.write_bytes(b"")
    raw = demo()
    raw["runs"]["released"] = {"method": "imported", "epochs": 1600}
    raw["runs"]["mae"]["checkpoint"] = {"path": str(weights)}
    msg = errors_of(raw)
    assert "runs.released.checkpoint.path: an imported run needs the file of its weights" in msg
    assert "runs.mae.checkpoint: only an imported run reads its weights from a file (this run's method is mae)" in msg
    raw = demo()
    raw["runs"]["released"] = {"method": "imported", "checkpoint": {"path": str(weights), "prefix": "backbone"},
                               "checkpoint_epochs": [100]}
    msg = errors_of(raw)
    assert "runs.released.checkpoint: prefix 'backbone' must end with '.'" in msg
    assert "runs.released.checkpoint_epochs: an imported run has only the file's weights" in msg
    raw["runs"]["released"] = {"method": "imported", "checkpoint": {"path": str(weights), "format": "mmcls"}}
    assert "runs.released.checkpoint.format: 'mmcls' is not allowed" in errors_of(raw)
    raw["runs"]["released"]["checkpoint"]["format"] = "mmpretrain"
    cfg = C.validate(raw)                            # the demo's run_defaults (checkpoint_epochs) do not reach it
    assert S.resolve_run(cfg, "released")["checkpoint_epochs"] == []


def test_an_imported_run_whose_file_is_absent_warns_but_validates(tmp_path):
    raw = demo()
    raw["runs"]["released"] = {"method": "imported", "checkpoint": {"path": str(tmp_path / "later.pth")}}
    got = C.warnings(C.validate(raw))
    assert len(got) == 1 and got[0].startswith(f"runs.released.checkpoint.path: {tmp_path / 'later.pth'} does not "
                                               f"exist on this machine (yet)"), got


# ----------------------------------------------------------------------------- configs that passed and failed later


SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def tool_output(tool: str, workdir: Path, configfile: Path | None) -> subprocess.CompletedProcess:
    """`python -m cmim validate` or `snakemake -n` on a config; snakemake without --configfile reads the
    workdir's config.yaml through the Snakefile's `configfile:` directive."""
    if tool == "cli":
        cmd = [sys.executable, "-m", "cmim", "validate", "--configfile", str(configfile or workdir / "config.yaml")]
    else:
        cmd = [SNAKEMAKE, "-n", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
        cmd += ["--configfile", str(configfile)] if configfile else []
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def small_study(**datasets) -> dict:
    return {"datasets": datasets, "runs": {"mae": {"method": "mae", "dataset": next(iter(datasets)), "arch": "vit_tiny",
                                                  "epochs": 1, "warmup_epochs": 0.5, "patch_size": 8}}}


@pytest.mark.parametrize("fmt", ["imagefolder", "ade20k", "coco"])
def test_a_dataset_read_from_a_folder_needs_its_root(fmt):
    """An imagefolder dataset without root passed validate; `snakemake -n` then ended in a traceback."""
    text = errors_of(small_study(d={"format": fmt, "image_size": 32}))
    assert f"datasets.d.root: a dataset of format {fmt} needs the folder of its source" in text
    C.validate(small_study(d={"format": "fashion-mnist", "image_size": 32}))      # searches its default places


def test_a_root_that_does_not_exist_is_a_warning_not_an_error(tmp_path):
    (tmp_path / "a-file").write_text("x")
    cfg = C.validate(small_study(here={"format": "imagefolder", "root": str(tmp_path), "image_size": 32},
                                 far={"format": "coco", "root": str(tmp_path / "nowhere"), "image_size": 32},
                                 flat={"format": "ade20k", "root": str(tmp_path / "a-file"), "image_size": 32}))
    got = C.warnings(cfg)
    assert len(got) == 2
    assert got[0].startswith(f"datasets.far.root: {tmp_path / 'nowhere'} does not exist on this machine")
    assert "compute node" in got[0]
    assert got[1].startswith(f"datasets.flat.root: {tmp_path / 'a-file'} is a file, not a folder")
    assert C.warnings(C.validate(demo())) == []


@pytest.mark.parametrize("text,where,words", [
    ("datasets:\n  a: [1\nruns: {}\n", ":3:5:", "expected ',' or ']', but got ':'"),
    ("datasets:\n\tfmnist: {}\n", ":2:1:", "found character '\\t' that cannot start any token"),
    ('runs: "mae\n', ":2:1:", "while scanning a quoted scalar"),
    ("", ":", "the file is empty"),
    ("# only a comment\n", ":", "the file is empty"),
    ("- datasets\n- runs\n", ":", "the top level must be a mapping"),
])
@pytest.mark.parametrize("tool", ["cli", "snakemake"])
def test_a_broken_or_empty_config_file_names_its_line_and_column(tmp_path, tool, text, where, words):
    """Snakemake's own loader said only "Config file is not valid JSON or YAML"; the Snakefile parses its
    config.yaml with cmim's loader first. (A --configfile file is parsed by Snakemake before the
    Snakefile runs: README, *When things go wrong*; `validate` names the line for it.)"""
    (tmp_path / "config.yaml").write_text(text)
    result = tool_output(tool, tmp_path, None)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{tmp_path / 'config.yaml'}{where}" in out or f"config.yaml{where}" in out, out[-2000:]
    assert words in out, out[-2000:]
    assert "Traceback" not in out and "not valid JSON or YAML" not in out, out[-2000:]


@pytest.mark.parametrize("tool", ["cli", "snakemake"])
def test_a_missing_root_fails_and_an_absent_one_warns_in_validate_and_the_snakefile(tmp_path, tool):
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(small_study(imnet={"format": "imagefolder", "image_size": 32})))
    result = tool_output(tool, tmp_path, study)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "datasets.imnet.root: a dataset of format imagefolder" in out, out[-2000:]
    assert "Traceback" not in out and "InputFunctionException" not in out, out[-2000:]

    far = small_study(imnet={"format": "imagefolder", "root": str(tmp_path / "mounted-on-nodes"), "image_size": 32})
    study.write_text(yaml.safe_dump(far))
    result = tool_output(tool, tmp_path, study)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-2000:]
    assert out.count(f"warning: datasets.imnet.root: {tmp_path / 'mounted-on-nodes'} does not exist") == 1, out
