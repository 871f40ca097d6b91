"""Start and stop `leitstand run` as a child process: for the demo, the benchmarks and the e2e tests.

A real process, so `kill -9` in a fault test is what a crash is, and the service's memory and CPU can
be read from /proc. Stopped by its recorded PID (never by name): TERM, a grace period, then KILL.
Its log goes to a file; `wait_for_log` waits for a line (e.g. "leading as") without sleeping blindly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, needle: str, timeout_seconds: float = 60.0, after: int = 0) -> bool:
        """True once `needle` appears in the log after byte offset `after`; False on timeout or exit."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if needle in self.log_text()[after:]:
                return True
            if not self.alive():
                return needle in self.log_text()[after:]
            time.sleep(0.1)
        return False

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up of any kind."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, grace_seconds: float = 10.0) -> int | None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def cpu_seconds(self) -> float:
        """User + system CPU of the process so far (from /proc; 0.0 once it is gone)."""
        return process_cpu_seconds(self.pid)

    def rss_mib(self) -> float:
        return process_rss_mib(self.pid)


def process_cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def start_operator(
    kubeconfig: Path,
    log: Path,
    *,
    identity: str = "leitstand-0",
    config: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> OperatorProcess:
    """`leitstand run --kubeconfig ... --identity ...` with its output in `log` (appended)."""
    args = [sys.executable, "-c", "from leitstand.operator.cli import main; main()", "run",
            f"--kubeconfig={kubeconfig}", f"--identity={identity}"]
    if config is not None:
        args.append(f"--config={config}")
    env = {**os.environ, **(extra_env or {})}
    env.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "leitstand" / "numba"))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return OperatorProcess(proc, log)
