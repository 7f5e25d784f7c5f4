"""LocalSlurm: a one-node Slurm (munged + slurmctld + slurmd) on localhost for tests. Installs Debian's
slurm-wlm and munge, writes its own configuration into one directory, submits and watches jobs, sends
signals, and stops every process it started."""
from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Callable, Mapping

import psutil

logger = logging.getLogger(__name__)

APT_PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo",
            "squeue", "scancel")
# Daemons live in /usr/sbin, which a non-login PATH may lack.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
# Variables from an enclosing Slurm job (a developer running pytest inside salloc) would make our
# sbatch/srun talk about the wrong job or cluster.
_FOREIGN_ENV_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SINFO_", "SCANCEL_")
# States after which a job never runs again. A requeued job goes REQUEUED -> PENDING with Restarts+1,
# so it is not final; SPECIAL_EXIT (requeued and held) waits for a human, so waiting on it is futile.
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                          "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT"})
# What scancel --signal reaches, measured on slurm-wlm 22.05 with a step that traps TERM/USR1:
#   steps (no flag): slurmstepd signals every task of every step; the batch shell is untouched and
#          sees srun exit with the tasks' code. This is the form for "save, exit 75, requeue".
#   batch (--batch): only the batch shell. It must forward (kill -USR1 <srun pid>): srun relays
#          USR1/USR2 to its tasks.
#   full (--full): the batch shell and its children, srun included; srun takes TERM as "abort the
#          step" and the tasks die by SIGKILL (exit 137) before they can save. Never for requeue.
SIGNAL_TARGETS = {"steps": (), "batch": ("--batch",), "full": ("--full",)}


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be installed on this machine; tests skip with this message."""


class SlurmError(RuntimeError):
    """A Slurm daemon or command failed; the message carries its output and the log tails."""


def binary(name: str) -> str:
    found = shutil.which(name, path=_SEARCH_PATH)
    if found is None:
        raise SlurmError(f"{name} not found on {_SEARCH_PATH}: call ensure_slurm_installed() first")
    return found


def ensure_slurm_installed(timeout_s: float = 900.0) -> float:
    """Installs slurm-wlm and munge with apt-get when a binary is missing; returns the seconds spent
    (0.0 when already installed). Raises SlurmUnavailable when installing is impossible here."""
    if not _missing_binaries():
        return 0.0
    apt_get = shutil.which("apt-get", path=_SEARCH_PATH)
    if apt_get is None:
        raise SlurmUnavailable(f"no apt-get to install {' '.join(APT_PACKAGES)}; "
                               f"missing {', '.join(_missing_binaries())}")
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"installing {' '.join(APT_PACKAGES)} needs root; run as root or "
                               f"`apt-get install {' '.join(APT_PACKAGES)}` first")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    start_s = time.monotonic()
    for argv in ([apt_get, "update", "-q"],
                 [apt_get, "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES]):
        left_s = max(1.0, timeout_s - (time.monotonic() - start_s))
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=left_s)
        except subprocess.TimeoutExpired:
            raise SlurmUnavailable(f"`{' '.join(argv)}` did not finish within {timeout_s:.0f} s "
                                   f"(is the Debian mirror reachable?)") from None
        if proc.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(argv)}` exited {proc.returncode}: "
                                   f"{_tail(proc.stdout + proc.stderr, 8)}")
    if _missing_binaries():
        raise SlurmError(f"apt-get installed {' '.join(APT_PACKAGES)} but "
                         f"{', '.join(_missing_binaries())} are still not on {_SEARCH_PATH}")
    return time.monotonic() - start_s


def _missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name, path=_SEARCH_PATH) is None]


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    """Polls predicate until true; TimeoutError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def free_loopback_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1: every socket stays bound until all are chosen."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def parse_record(line: str) -> dict[str, str]:
    """One `scontrol -o` / jobcomp line of Key=Value tokens; a value may contain spaces."""
    fields: dict[str, str] = {}
    key = None
    for token in line.split():
        match = re.match(r"^([A-Za-z][\w:/]*)=(.*)$", token)
        if match:
            key, fields[match.group(1)] = match.group(1), match.group(2)
        elif key is not None:
            fields[key] += " " + token
    return fields


@dataclass(frozen=True)
class JobResult:
    """One job (or array task) as slurmctld reports it."""
    job_id: str
    state: str
    exit_code: int
    signal: int
    restarts: int
    array_task_id: int | None
    fields: Mapping[str, str]

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> "JobResult":
        code, _, sig = fields.get("ExitCode", "0:0").partition(":")
        task = fields.get("ArrayTaskId", "")
        return cls(job_id=fields["JobId"], state=fields["JobState"], exit_code=int(code),
                   signal=int(sig or 0), restarts=int(fields.get("Restarts", "0")),
                   array_task_id=int(task) if task.isdigit() else None, fields=dict(fields))


class LocalSlurm:
    """A one-node cluster whose every file (config, munge key, state, spool, logs) is under root."""

    def __init__(self, root: Path, *, cred_expire_s: int = 10, kill_wait_s: int = 5):
        self.root = Path(root)
        self.conf_path = self.root / "slurm.conf"
        self.log_dir = self.root / "log"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.jobcomp_path = self.log_dir / "jobcomp.txt"
        # slurmd -N and NodeName must agree; slurmctld insists SlurmctldHost is this host's short name.
        self.node_name = socket.gethostname().split(".")[0]
        self.cred_expire_s = cred_expire_s
        self.kill_wait_s = kill_wait_s
        self._procs: dict[str, subprocess.Popen] = {}

    # ---- environment and commands -------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The environment for clients and daemons: SLURM_CONF points at our config, no foreign job."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV_PREFIXES)}
        env["PATH"] = _SEARCH_PATH
        env["SLURM_CONF"] = str(self.conf_path)
        return env

    def run(self, *argv: str, timeout_s: float = 30.0, check: bool = True,
            cwd: Path | None = None,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), env={**self.env, **(env or {})}, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout_s)
        if check and proc.returncode != 0:
            raise SlurmError(f"`{' '.join(argv)}` exited {proc.returncode}: "
                             f"{_tail(proc.stdout + proc.stderr, 10)}\n{self.log_tail()}")
        return proc

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(f"--- {path.name}\n{_tail(path.read_text(errors='replace'), lines)}"
                         for path in sorted(self.log_dir.glob("*.log")))

    # ---- start --------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> float:
        """Writes the key and config, starts the daemons, waits for the node to be idle; returns s."""
        start_s = time.monotonic()
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        self._start_munged(timeout_s)
        self.conf_path.write_text(self.build_conf())
        self._spawn("slurmctld", [binary("slurmctld"), "-D"])
        self._spawn("slurmd", [binary("slurmd"), "-D", "-N", self.node_name])
        wait_until(self._node_idle, timeout_s, f"node {self.node_name} idle in sinfo")
        elapsed_s = time.monotonic() - start_s
        logger.info("local slurm up in %.1f s under %s", elapsed_s, self.root)
        return elapsed_s

    def _start_munged(self, timeout_s: float) -> None:
        munge_dir = self.root / "munge"
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        # --force: munged refuses a socket whose every ancestor directory is not executable by all,
        # and pytest's temp root is 0700; only root uses this socket, so the check buys nothing here.
        self._spawn("munged", [binary("munged"), "--foreground", "--force", f"--key-file={key}",
                               f"--socket={self.munge_socket}", f"--pid-file={munge_dir / 'munged.pid'}",
                               f"--seed-file={munge_dir / 'munged.seed'}",
                               f"--log-file={self.log_dir / 'munged.log'}"])
        wait_until(lambda: self._alive("munged") and self.munge_socket.exists(), timeout_s,
                   f"munged socket {self.munge_socket}")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.log_dir / f"{name}.out", "ab")
        # A new session keeps a Ctrl-C aimed at pytest from reaching the daemons before stop() runs.
        self._procs[name] = subprocess.Popen(argv, env=self.env, stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    def _alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            return True
        out = self.log_dir / f"{name}.out"
        raise SlurmError(f"{name} is not running (exit {proc.returncode if proc else 'never started'}):"
                         f"\n{_tail(out.read_text(errors='replace'), 10) if out.exists() else ''}"
                         f"\n{self.log_tail()}")

    def _node_idle(self) -> bool:
        for name in ("slurmctld", "slurmd"):
            self._alive(name)
        proc = self.run(binary("sinfo"), "-h", "-N", "-o", "%T", check=False)
        return proc.returncode == 0 and proc.stdout.strip() == "idle"

    def _node_line(self) -> str:
        """This machine's node definition as `slurmd -C` measures it, under our node name."""
        probe = subprocess.run([binary("slurmd"), "-C"], env=self.env, capture_output=True, text=True,
                               timeout=30, check=True)
        fields = parse_record(probe.stdout.splitlines()[0])
        # 90% of the measured memory: a node whose RealMemory exceeds what slurmd finds is drained.
        memory_mb = int(int(fields.get("RealMemory", "1000")) * 0.9)
        shape = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
        hardware = " ".join(f"{k}={fields[k]}" for k in shape if k in fields)
        return (f"NodeName={self.node_name} NodeAddr=127.0.0.1 {hardware} RealMemory={memory_mb} "
                "State=UNKNOWN")

    def build_conf(self) -> str:
        """slurm.conf for one node on loopback, no cgroups, no accounting database."""
        root, log = self.root, self.log_dir
        ctld_port, slurmd_port = free_loopback_ports(2)
        return "\n".join([
            "ClusterName=elamatest",
            f"SlurmctldHost={self.node_name}(127.0.0.1)",
            # Fresh free ports so a system Slurm (6817/6818) or a parallel test run cannot collide.
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            # Root owns every file here; a `slurm` user would need chown of the state and spool dirs.
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # socket: our own munged. cred_expire: a requeued job is held until now + cred_expire
            # (default 120 s, which would dominate every requeue test).
            f"AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire_s}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={log / 'slurmctld.log'}",
            f"SlurmdLogFile={log / 'slurmd.log'}",
            # No cgroups: containers differ in what they mount. linuxproc follows a job's processes
            # through /proc parent links, task/none skips binding, so slurmd never reads cgroup.conf.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            # No slurmdbd, so no sacct: scontrol keeps finished jobs for MinJobAge seconds, and jobcomp
            # writes one line per run, a requeued run included.
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp_path}",
            "MinJobAge=3600",
            # The main loop also starts jobs whose BeginTime just passed (requeued ones); the
            # default sched_interval of 60 s would leave them pending that long.
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=1",
            # Cores are the only consumable: jobs that give no --mem still run side by side.
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            # `scontrol requeue` from a batch script needs JobRequeue=1 (or --requeue per job).
            "JobRequeue=1",
            # TERM -> KILL grace for cancelled jobs; short so stop() does not wait 30 s per job.
            f"KillWait={self.kill_wait_s}",
            "ReturnToService=2",
            "MpiDefault=none",
            "MailProg=/bin/true",
            self._node_line(),
            f"PartitionName=debug Nodes={self.node_name} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    # ---- jobs ---------------------------------------------------------------------------------
    def sbatch(self, script: Path, *sbatch_args: str, cwd: Path | None = None,
               env: Mapping[str, str] | None = None, script_args: Sequence[str] = ()) -> str:
        """Submits script (with script_args after it); returns the job id. SLURM_SUBMIT_DIR is
        cwd; the job inherits env."""
        proc = self.run(binary("sbatch"), "--parsable", *sbatch_args, str(script), *script_args,
                        cwd=cwd, env=env)
        return proc.stdout.strip().split(";")[0]

    def jobs(self, job_id: str) -> list[JobResult]:
        """The job, or every task of an array job, as `scontrol show job` reports them now."""
        proc = self.run(binary("scontrol"), "show", "job", "-o", str(job_id))
        return [JobResult.from_fields(parse_record(line)) for line in proc.stdout.splitlines()
                if line.strip()]

    def wait(self, job_id: str, timeout_s: float = 120.0) -> list[JobResult]:
        """Waits until the job (every array task) is in a final state; requeues are waited through."""
        results: list[JobResult] = []

        def finished() -> bool:
            nonlocal results
            results = self.jobs(job_id)
            return bool(results) and all(r.state in FINAL_STATES for r in results)

        try:
            wait_until(finished, timeout_s, f"job {job_id} to finish", poll_s=0.5)
        except TimeoutError as err:
            states = ", ".join(f"{r.job_id}={r.state}({r.fields.get('Reason')})" for r in results)
            raise TimeoutError(f"{err}; now {states}\n{self.log_tail()}") from None
        return results

    def signal(self, job_id: str, signal_name: str = "TERM", *, to: str = "steps") -> None:
        """scancel --signal; `to` is one of SIGNAL_TARGETS (see there for who receives it)."""
        self.run(binary("scancel"), f"--signal={signal_name}", *SIGNAL_TARGETS[to], str(job_id))

    def runs(self, job_id: str) -> list[dict[str, str]]:
        """Every run of the job in the jobcomp log, oldest first (a requeued job has several)."""
        if not self.jobcomp_path.exists():
            return []
        records = [parse_record(line) for line in self.jobcomp_path.read_text().splitlines()]
        return [r for r in records if r.get("JobId") == str(job_id)]

    # ---- stop ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancels jobs, shuts the daemons down, kills any process left from our jobs. Idempotent."""
        if not self._procs:
            return
        try:
            if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
                self._cancel_all_jobs()
                self.run(binary("scontrol"), "shutdown", check=False)
        except (subprocess.SubprocessError, SlurmError) as err:
            logger.warning("graceful Slurm shutdown failed (%s); terminating the daemons", err)
        finally:
            for name in ("slurmd", "slurmctld", "munged"):
                self._end(name)
            self._kill_strays()
            self._procs.clear()
            atexit.unregister(self.stop)

    def _cancel_all_jobs(self) -> None:
        def queue() -> list[str]:
            return self.run(binary("squeue"), "-h", "-o", "%i", check=False).stdout.split()

        if queue():
            self.run(binary("scancel"), *queue(), check=False)
            try:
                wait_until(lambda: not queue(), self.kill_wait_s + 15, "cancelled jobs to leave")
            except TimeoutError as err:
                logger.warning("%s; killing what remains", err)

    def _end(self, name: str) -> None:
        """Gives a daemon 10 s to exit, then TERM, then KILL (`scontrol shutdown` spares munged)."""
        proc = self._procs.get(name)
        if proc is None:
            return
        if name == "munged":
            proc.terminate()
        for escalate in (proc.terminate, proc.kill, None):
            try:
                proc.wait(timeout=10)
                return
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) still running; %s", name, proc.pid,
                               escalate.__name__ if escalate else "giving up")
                if escalate is not None:
                    escalate()

    def _kill_strays(self) -> None:
        """slurmstepd and job processes outlive slurmd; ours are the ones whose SLURM_CONF is ours."""
        strays = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("SLURM_CONF") == str(self.conf_path) and proc.pid != os.getpid():
                    strays.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        for proc in strays:
            logger.warning("killing leftover pid %d of the local slurm", proc.pid)
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(strays, timeout=10)
