"""The compute and provenance table: per run (pretraining and trained evaluations) GPU-/CPU-hours,
img/s, MFU, wall time and peak memory, with the config hash of each run, the sha256 of every shard
it read, the sha256 of the weights file an imported run came from, and, read when the table is
rendered, the git commit of the code and the package versions.

The inputs (summary.json files, evaluation results, shard manifests) are the rule's declared
inputs; the commit and versions describe the environment that rendered the table.
"""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

from cmim import io
from cmim.report import paper_tables
from cmim.report.paper_tables import NOT_RUN, fmt

PACKAGES = ("cmim", "torch", "torchvision", "timm", "webdataset", "snakemake", "submitit", "numpy", "pandas",
            "matplotlib", "pycocotools", "pillow")
COMPUTE_KEYS = ("device", "world_size", "gpu_hours", "cpu_hours", "img_per_s", "mfu", "wall_time_s",
                "peak_memory_gb", "flops_per_image", "images_seen", "precision", "compile", "config_hash")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(where: Path | None = None) -> str:
    """The commit of the code that renders (cmim's source tree), '+dirty' with uncommitted changes."""
    where = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return "unknown (not a git checkout)"
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"


def shards_digest(manifest: dict) -> str:
    """One short digest over a split's shard sha256s (in order), to name the exact data in one cell."""
    h = hashlib.sha256("".join(s["sha256"] for s in manifest["shards"]).encode())
    return h.hexdigest()[:16]


def _row(job: str, kind: str, scale: dict, summary: dict | None, source: dict | None = None) -> dict:
    """One job's row; `source` = the weights file an imported run came from (its path and sha256)."""
    row = {"job": job, "kind": kind, "method": scale["method"], "arch": scale["arch"], "dataset": scale["dataset"],
           "epochs": scale["epochs"], "seed": scale["seed"],
           "source": (source or {}).get("path"), "source_sha256": (source or {}).get("sha256")}
    if summary is None:
        return {**row, "status": NOT_RUN}
    return {**row, "status": "ok", **{k: summary.get(k) for k in COMPUTE_KEYS}}


def frames(plan: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(jobs, shards): one row per pretraining run and trained evaluation; one per dataset split."""
    jobs = []
    for run in plan["runs"]:
        path = Path(plan["summaries"][run])
        summary = io.read_json(path) if path.exists() else None
        source = (summary or {}).get("source")
        if summary is not None and not summary.get("steps"):
            summary = {**summary, "device": "- (imported)" if source else "- (not trained)"}
        jobs.append(_row(run, "import" if source else "pretrain", plan["scales"][run], summary, source))
    for name, path in plan["evals"].items():
        run, task = name.split("/", 1)
        result = io.read_json(path) if Path(path).exists() else None
        training = None if result is None else result.get("training", {})
        source = None if result is None else result.get("checkpoint", {}).get("source")
        jobs.append(_row(name, task, plan["scales"][run], training, source))
    shards = []
    for name, path in plan.get("manifests", {}).items():
        if not Path(path).exists():
            shards.append({"split": name, "status": NOT_RUN})
            continue
        m = io.read_json(path)
        shards.append({"split": name, "status": "ok", "samples": m["num_samples"], "shards": len(m["shards"]),
                       "digest": shards_digest(m), "sha256": " ".join(s["sha256"] for s in m["shards"])})
    return pd.DataFrame(jobs), pd.DataFrame(shards)


DISPLAY = {"job": "job", "kind": "kind", "arch": "arch", "dataset": "dataset", "epochs": "epochs", "status": "status",
           "device": "device", "gpu_hours": "GPU-h", "cpu_hours": "CPU-h", "img_per_s": "img/s", "mfu": "MFU",
           "wall_time_s": "wall (min)", "peak_memory_gb": "peak mem (GB)", "config_hash": "config hash",
           "source_sha256": "imported from (sha256)"}


def display(jobs: pd.DataFrame) -> pd.DataFrame:
    df = jobs.reindex(columns=list(DISPLAY)).copy()
    df["wall_time_s"] = [None if v is None or pd.isna(v) else v / 60 for v in df["wall_time_s"]]
    for col in ("gpu_hours", "cpu_hours", "img_per_s", "mfu", "wall_time_s", "peak_memory_gb"):
        df[col] = [fmt(None if v is None or pd.isna(v) else float(v)) for v in df[col]]
    if not any(isinstance(v, str) for v in df["source_sha256"]):
        df = df.drop(columns=["source_sha256"])        # no imported run: no column of dashes
    return df.rename(columns=DISPLAY).fillna("-")


def shard_display(shards: pd.DataFrame) -> pd.DataFrame:
    if not len(shards):
        return shards
    df = shards.reindex(columns=["split", "status", "samples", "shards", "digest", "sha256"]).fillna("-")
    df["sha256"] = [" ".join(h[:12] for h in str(v).split()) if v != "-" else "-" for v in df["sha256"]]
    return df.rename(columns={"digest": "digest of shard sha256s", "sha256": "shard sha256 (first 12 hex each)"})


def write(plan: dict, out_md: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    jobs, shards = frames(plan)
    commit, versions = git_commit(), package_versions()
    out = {k: v for k, v in paper_tables.outputs(Path(out_md)).items() if k != "claims"}
    io.write_text(out["csv"], jobs.assign(git_commit=commit).to_csv(index=False))
    shown, shard_shown = display(jobs), shard_display(shards)
    env = pd.DataFrame([{"package": k, "version": v} for k, v in versions.items()])
    note = (f"Rendered from git commit {commit}. Hours are device-hours (wall time x processes); MFU is "
            "achieved FLOPs over the GPU's dense bf16 peak (none on CPU); the config hash is the hash of the job's "
            "resolved config (cmim.study.config_hash), as its checkpoints record it. An imported run (and each "
            "evaluation of it) names the sha256 of the weights file it was imported from.")
    md = [f"# {plan['title']}", "", note, "", "## Jobs", "", shown.to_markdown(index=False), ""]
    if len(shards):
        md += ["## Shards", "", shard_shown.to_markdown(index=False), ""]
    md += ["## Packages", "", env.to_markdown(index=False), ""]
    io.write_text(out["md"], "\n".join(md))
    tex = ["% " + plan["title"], r"\begin{table}[t]", r"\centering", r"\small",
           *paper_tables.tex_tabular(shown, "l" * len(shown.columns)),
           rf"\caption{{{paper_tables.tex_escape(plan['title'])}. {paper_tables.tex_escape(note)}}}",
           r"\label{tab:compute}", r"\end{table}"]
    io.write_text(out["tex"], "\n".join(tex) + "\n")
    sections = [f'<p class="note">{paper_tables.html.escape(note)}</p>', "<h2>Jobs</h2>",
                paper_tables.html_table(shown)]
    if len(shards):
        sections += ["<h2>Shards</h2>", paper_tables.html_table(shard_shown)]
    sections += ["<h2>Packages</h2>", paper_tables.html_table(env)]
    io.write_text(out["html"], paper_tables.html_page(plan["title"], sections))
    return jobs, shards
