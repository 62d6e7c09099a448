"""pytest plugin: a real SLURM cluster on this machine for the tests of cmim's SLURM paths: one node
(partition "partition") and, where network namespaces can be made, two "network nodes" (partition
"multi_partition", None otherwise; "net_why" says why) for multi-node jobs.

Load it with ``pytest_plugins = ["slurm_cluster"]`` in tests/conftest.py. It provides one fixture,

    slurm_cluster  (session scope) -> {"conf", "partition", "account", "gpus", "dir",
                                       "multi_partition", "net_nodes", "net_why"}

which starts the cluster with scripts/slurm-local/start-slurm.sh once per session, sets SLURM_CONF
for the session (restored afterwards) and stops the cluster with stop-slurm.sh at the end.

- Skipped (with the reason) when it cannot run here: not Linux, not root, packages missing and no
  apt-get/dpkg to install them, or ``CMIM_SLURM=0``.
- Where it should run, a failing start is a test error carrying the tail of the script's output.
- ``CMIM_SLURM_DIR`` picks the cluster directory (default /tmp/cmim-slurm); ``CMIM_SLURM_KEEP=1``
  leaves the cluster running after the session (the next session's start is then a 1 s no-op).
- Several sessions at once (two pytest runs, xdist workers) share one cluster: each holds a shared
  lock on ``DIR.lock`` while it uses the cluster, and only the last one out stops it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "slurm-local"
PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client", "slurmdbd", "slurm-wlm-mysql-plugin",
            "mariadb-server", "mariadb-client")
START_TIMEOUT_S = 900   # a cold start installs packages (about 30 s on a fast mirror)
STOP_TIMEOUT_S = 180


def _cluster_dir() -> Path:
    return Path(os.environ.get("CMIM_SLURM_DIR") or "/tmp/cmim-slurm").resolve()


def _missing_packages() -> list[str]:
    missing = []
    for pkg in PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Status}", pkg], capture_output=True, text=True)
        if r.stdout.strip() != "installed":
            missing.append(pkg)
    return missing


def _why_not() -> str | None:
    """Why the cluster cannot run on this machine, or None if it can."""
    if os.environ.get("CMIM_SLURM", "1") == "0":
        return "CMIM_SLURM=0: local SLURM cluster disabled"
    if not sys.platform.startswith("linux"):
        return f"local SLURM cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "local SLURM cluster needs root (start-slurm.sh installs packages and runs the daemons as root)"
    if shutil.which("dpkg-query") is None:
        return "local SLURM cluster needs a Debian-like system (no dpkg-query)"
    missing = _missing_packages()
    if missing and shutil.which("apt-get") is None:
        return f"SLURM packages missing ({' '.join(missing)}) and no apt-get to install them"
    return None


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node SLURM cluster (started once per session); SLURM_CONF points at it."""
    why = _why_not()
    if why:
        pytest.skip(why)
    cdir = _cluster_dir()
    cdir.parent.mkdir(parents=True, exist_ok=True)
    # Shared while in use; taken exclusively (non-blocking) at the end to learn whether we are the
    # last user. Taking it shared first also waits for a stop that another session is doing.
    users = open(f"{cdir}.lock", "a")  # held until the end of the session
    fcntl.flock(users, fcntl.LOCK_SH)
    try:
        with open(f"{cdir}.start.lock", "a") as start_lock:   # one start-slurm.sh at a time
            fcntl.flock(start_lock, fcntl.LOCK_EX)
            try:
                r = subprocess.run(["bash", str(SCRIPTS / "start-slurm.sh"), str(cdir)],
                                   capture_output=True, text=True, timeout=START_TIMEOUT_S)
                failure = f"failed (exit {r.returncode})" if r.returncode else None
                out, err = r.stdout, r.stderr
            except subprocess.TimeoutExpired as e:
                failure = f"did not finish in {START_TIMEOUT_S}s"
                out, err = _text(e.stdout), _text(e.stderr)
        if failure:
            # stop what did start (unless another session uses the cluster), then report
            stopped = _stop_if_last(users, cdir, check=False)
            pytest.fail(f"start-slurm.sh {cdir} {failure}; logs in {cdir}/log "
                        f"({'daemons stopped again' if stopped else 'daemons left running'})\n"
                        f"{_tail(out, 15)}\n{_tail(err)}", pytrace=False)
        env = _read_env(cdir / "env.sh")
        info = {"conf": env["SLURM_CONF"], "partition": env["CMIM_SLURM_PARTITION"],
                "account": env["CMIM_SLURM_ACCOUNT"], "gpus": int(env["CMIM_SLURM_GPUS"]), "dir": str(cdir),
                # the network nodes (one slurmd each in its own network namespace) for multi-node jobs
                "multi_partition": env.get("CMIM_SLURM_MULTI_PARTITION") or None,
                "net_nodes": int(env.get("CMIM_SLURM_NET_NODES") or 0),
                "net_why": env.get("CMIM_SLURM_NET_WHY") or "no network nodes"}
        old_conf = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = info["conf"]
        try:
            yield info
        finally:
            if old_conf is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old_conf
    except BaseException:
        users.close()
        raise
    _stop_if_last(users, cdir)


def _stop_if_last(users, cdir: Path, check: bool = True) -> bool:
    """Stop the cluster unless another session still holds the lock (or CMIM_SLURM_KEEP=1); release it.

    Returns whether stop-slurm.sh ran; with check, a failing stop is a test error."""
    try:
        if os.environ.get("CMIM_SLURM_KEEP") == "1":
            return False
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False   # another session still uses the cluster; the last one out stops it
        r = subprocess.run(["bash", str(SCRIPTS / "stop-slurm.sh"), str(cdir)],
                           capture_output=True, text=True, timeout=STOP_TIMEOUT_S)
    finally:
        users.close()
    if check and r.returncode != 0:
        pytest.fail(f"stop-slurm.sh {cdir} failed (exit {r.returncode}):\n{_tail(r.stdout)}\n{_tail(r.stderr)}",
                    pytrace=False)
    return True


FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"})


def sacct(job_id: str, until=FINAL_STATES, fields=("State",), history: bool = False,
          timeout: float = 30) -> list[dict[str, str]]:
    """The job's accounting rows (with `history`, one per requeued run) once its newest state is in `until`.

    Polls: slurmdbd records a job's end a moment after the job's own files are written, so a job
    that submitit already reports done may still read RUNNING for a second or two.
    """
    cmd = ["sacct", "-j", job_id, "-X", "-n", "-P", "--format=" + ",".join(fields), *(["-D"] if history else [])]
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(cmd, capture_output=True, text=True)
        rows = [dict(zip(fields, line.split("|"))) for line in r.stdout.splitlines() if line.strip()]
        if rows and rows[-1]["State"] in until:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not in {set(until)} after {timeout}s: {rows or r.stderr}")
        time.sleep(0.2)


def task_hosts(job_dir: Path) -> list[str]:
    """The host of each task of a finished submitit job, by global rank, from its log's start line
    (`JobEnvironment(... hostname=..., global_rank=...)`): what the tasks saw, not slurmdbd's NodeList,
    which can lag for a just-ended job."""
    hosts = {}
    for log in job_dir.glob("*_log.out"):
        m = re.search(r"JobEnvironment\(.*hostname=([^,]+),.*global_rank=(\d+)", log.read_text())
        assert m, f"no submitit start line in {log}"
        hosts[int(m[2])] = m[1].split(".")[0]
    return [hosts[r] for r in sorted(hosts)]


def multi_node_partition(cluster: dict, nodes: int = 2) -> str:
    """The partition of the network nodes, or skip the test with the reason they are missing."""
    if not cluster.get("multi_partition") or cluster.get("net_nodes", 0) < nodes:
        pytest.skip(f"no {nodes} network nodes for a multi-node job: {cluster.get('net_why')}")
    return cluster["multi_partition"]
