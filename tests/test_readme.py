"""Every command README.md shows works in the environment README's install (command (a)) builds.

The commands are read from README.md itself: each line of its ```bash blocks (continuations
joined, `a && b` split) and each inline code span that is a command (`snakemake ...`,
`python -m cmim ...`). They run in this environment (.venv, built by `bash scripts/setup.sh`):
`python -m cmim validate` for real; Snakemake as a dry run (`-n`) with `--directory <tmp>`, since
the real thing needs a cluster or takes minutes; pytest as `--collect-only`. A study file the README
names but does not ship (my_study.yaml) is the README's own YAML example. A command of another
shape fails here until this file says how to check it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tiny import ROOT

README = ROOT / "README.md"
BIN = Path(sys.executable).parent
COMMAND_STARTS = ("snakemake", ".venv/bin/", "python -m", "python3 -m", "bash scripts/")
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\s*\n(.*?)^```", re.M | re.S)
ANY_BLOCK = re.compile(r"^```.*?^```", re.M | re.S)
BUILTIN_EXECUTORS = {"local", "dryrun", "touch"}


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block: comments dropped, `\\` continuations joined, `&&` split."""
    text = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def readme_commands() -> list[str]:
    text = README.read_text()
    commands = [c for block in SHELL_BLOCK.findall(text) for c in shell_commands(block)]
    prose = ANY_BLOCK.sub("", text)
    commands += [span.strip() for span in re.findall(r"`([^`\n]+)`", prose) if span.strip().startswith(COMMAND_STARTS)]
    # `.venv/bin/x` and the activated venv's `x` are one command
    return list(dict.fromkeys(re.sub(r"^(?:\.venv/bin/)?python3? ", "python ", c.removeprefix(".venv/bin/"))
                              for c in commands))


def readme_study() -> str:
    """The README's example study (its first YAML block with datasets and runs)."""
    for block in re.findall(r"^```yaml\s*\n(.*?)^```", README.read_text(), re.M | re.S):
        data = yaml.safe_load(block)
        if isinstance(data, dict) and {"datasets", "runs"} <= set(data):
            return block
    raise AssertionError("README.md has no example study (a ```yaml block with datasets and runs)")


def in_environment(argv: list[str]) -> list[str]:
    """`.venv/bin/x` and a bare `snakemake` / `python` (the activated venv) -> this environment's."""
    exe = argv[0]
    if exe.startswith(".venv/bin/"):
        exe = exe.removeprefix(".venv/bin/")
    if exe in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    if (BIN / exe).exists():
        return [str(BIN / exe), *argv[1:]]
    return argv


def study_files(args: list[str], workdir: Path) -> list[str]:
    """Study files the README names but the checkout does not hold: the README's example, in workdir."""
    out = []
    for arg in args:
        if arg.endswith((".yaml", ".yml")) and not (ROOT / arg).exists():
            path = workdir / Path(arg).name
            path.write_text(readme_study())
            arg = str(path)
        out.append(arg)
    return out


def how_to_check(command: str, workdir: Path) -> tuple[list[str] | None, str]:
    """(argv to run from the checkout, what success looks like) or (None, why it is not run)."""
    argv = shlex.split(command)
    if argv[:2] == ["bash", "scripts/setup.sh"]:
        return None, "setup.sh builds the environment these commands run in (checked by bash -n)"
    argv = in_environment(study_files(argv, workdir))
    name = Path(argv[0]).name
    if name == "snakemake" and "--report" in argv:
        return None, "builds the page from a finished run (tests/report/test_report_workflow.py does that)"
    if name == "snakemake":
        shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")  # the demo study of the checkout
        extra = [] if {"-n", "--dry-run", "--unlock", "--lint"} & set(argv) else ["-n"]
        return [*argv, *extra, "--directory", str(workdir)], "snakemake"
    cmim_command = [a for a in argv[3:] if a != "--debug"][:1] if argv[1:3] == ["-m", "cmim"] else []
    if cmim_command == ["validate"]:
        return argv, "config OK"
    if cmim_command == ["bench"]:   # the real step at the tiny size (seconds); the measured sizes: benchmarks/
        return [*argv, "--size", "tiny", "--only", "mae", "--steps", "2", "--warmup", "1",
                "--out-dir", str(workdir)], "wrote "
    if cmim_command == ["plan"]:   # seconds: it reads configs and manifests
        return argv, "**total**"
    if argv[1:3] == ["-m", "pytest"]:
        return [*argv, "--collect-only"], "collected"
    raise AssertionError(f"README shows `{command}`: tests/test_readme.py does not know how to check it; "
                         f"teach how_to_check() (dry run where it needs a cluster or takes long)")


COMMANDS = readme_commands()


def as_param(command: str):
    quick = "cmim validate" in command or command.startswith("bash scripts/") or "--report" in command
    return pytest.param(command, marks=() if quick else pytest.mark.slow)


def test_readme_shows_the_two_commands_and_the_cluster_command():
    assert "bash scripts/setup.sh" in COMMANDS and "snakemake" in COMMANDS
    assert any("--profile profiles/slurm" in c for c in COMMANDS)


@pytest.mark.parametrize("command", [as_param(c) for c in COMMANDS])
def test_readme_command_works_after_the_readme_install(command, tmp_path):
    argv, expect = how_to_check(command, tmp_path)
    if argv is None:
        if command.startswith("bash scripts/"):
            script = ROOT / shlex.split(command)[1]
            assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        pytest.skip(expect)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"`{command}` failed (ran {shlex.join(argv)}):\n{out[-4000:]}"
    if expect == "snakemake":
        assert re.search(r"This was a dry-run|Nothing to be done|Unlock", out, re.I) or "--lint" in argv, out[-2000:]
    else:
        assert expect in out, out[-2000:]


def executors(command: str) -> set[str]:
    """Snakemake executors a command uses: --executor X, or the `executor:` of its --profile."""
    argv = shlex.split(command)
    found = set()
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--executor", "-e"):
            found.add(value)
        if flag == "--profile":
            for name in ("config.yaml", "profile.yaml"):
                path = ROOT / value / name
                if path.exists():
                    found.add((yaml.safe_load(path.read_text()) or {}).get("executor", "local"))
    return found


def test_readme_install_brings_every_snakemake_executor_the_readme_uses():
    """`bash scripts/setup.sh` installs cmim without extras: an executor plugin that a README command
    needs (profiles/slurm -> snakemake-executor-plugin-slurm) must be a main dependency."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'pip install --quiet -e ".${EXTRAS}"' in setup and 'EXTRAS=""' in setup
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].strip().lower() for d in deps}
    needed = {f"snakemake-executor-plugin-{e}" for c in COMMANDS if "snakemake" in c
              for e in executors(c) - BUILTIN_EXECUTORS}
    assert needed, "README shows no cluster command?"
    assert needed <= names, f"README's commands need {sorted(needed - names)}, not in pyproject's dependencies"
