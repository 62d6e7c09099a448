# cmim: shard -> pretrain -> evaluate -> report, one DAG from a laptop demo to a SLURM cluster.
# `snakemake` runs the demo study in config.yaml; pass --configfile for another study.
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from snakemake.logging import logger

from cmim import paths as P
from cmim import workflow as W
from cmim.config import ConfigError
from cmim.config import warnings as config_warnings

min_version("9.0")


envvars:
    "PATH",


# Rules run `python -m cmim ...`: the interpreter running Snakemake (the project's venv) comes
# first on the jobs' PATH, so `.venv/bin/snakemake` works without activating the venv. With
# --sdm conda, each rule's env is activated in front of it.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


# A study given with --configfile replaces the demo config instead of merging into it
# (a study must not inherit the demo's runs); --config key=value overrides apply either way.
# config.yaml is parsed by cmim first, so that a YAML error names its line and column (Snakemake's
# loader would say only "not valid JSON or YAML"); --configfile files are parsed by Snakemake
# before this file runs (`python -m cmim validate --configfile ...` names the line for those).
if not workflow.overwrite_configfiles:
    try:
        W.check_config_files(["config.yaml"])
    except ConfigError as e:
        raise WorkflowError(f"invalid config: {e}")

    configfile: "config.yaml"



try:
    CFG = W.load(config)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")


# `snakemake --report` opens on what the study shows (results/summary.rst, written by the rule
# report_summary from the tables' own outputs); before the study has run, on a short description.
_SUMMARY = os.path.abspath(P.summary("rst"))


report: _SUMMARY if os.path.exists(_SUMMARY) else "workflow/report/workflow.rst"


# A root that does not exist here may exist on the compute nodes: said once, not fatal.
if workflow.is_main_process:
    for _warning in config_warnings(CFG):
        logger.warning(f"warning: {_warning}")


# Where and how fast jobs run (the launch block) reaches them through the environment, not as a
# tracked param: a new partition, time limit, launcher or worker count never retrains anything;
# so does what watches the pretraining (the monitor block: the online kNN monitor).
# Job logs keep a traceback under the one-line error message.
os.environ["CMIM_LAUNCH"] = W.launch_env(CFG)
os.environ["CMIM_VERIFY_SHARDS"] = W.verify_env(CFG)
os.environ["CMIM_MONITOR"] = W.monitor_env(CFG)
os.environ["CMIM_TRACEBACK"] = "1"


envvars:
    "CMIM_LAUNCH",
    "CMIM_VERIFY_SHARDS",
    "CMIM_MONITOR",
    "CMIM_TRACEBACK",


wildcard_constraints:
    dataset=W.alternation(CFG["datasets"]),
    run=W.alternation(CFG["runs"]),
    split="[A-Za-z0-9_-]+",


localrules:
    all,


include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/paper.smk"


rule all:
    input:
        W.all_targets(CFG),
