"""envs/cmim.yaml must install what pyproject.toml pins (CI has no conda, so this is the check)."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_conda_env_mirrors_pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {d.split(" ")[0].replace(" ", "") for d in project["dependencies"]}
    pins = {p.split("#")[0].strip().strip('"') for p in pins}
    env = yaml.safe_load((ROOT / "envs" / "cmim.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == pins, f"only in pyproject: {pins - listed}; only in envs/cmim.yaml: {listed - pins}"
    assert any(p.startswith("-e") for p in pip), "the env must install cmim itself"
