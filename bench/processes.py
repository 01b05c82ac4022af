"""The processes a benchmark starts, read through /proc, and always stopped.

Each child runs in its own process group with its output in a log file, and is asked by
the kernel to stop should the benchmark itself die (PR_SET_PDEATHSIG), so that neither
Ctrl-C, an error nor a SIGKILL leaves a server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


# --- Reading a process through /proc --------------------------------------------------------


def _stat_cpu(path: Path) -> float:
    stat = path.read_text()
    # Fields after the command name, which may hold spaces: utime and stime are 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads, from the kernel's accounting."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def main_thread_cpu_seconds(pid: int) -> float:
    """The CPU time of the process's first thread alone: for a server, its event loop."""
    return _stat_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def machine() -> dict[str, str | int]:
    """What the figures were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count() or 0, "cpu_model": model, "python": sys.version.split()[0]}


# --- Children -----------------------------------------------------------------------------


def _stop_with_parent() -> None:
    """Run in the child before exec: the kernel sends SIGTERM when the benchmark dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One started process, in its own process group, its output in `log_path`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> Self:
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_stop_with_parent,
        )
        return self

    def wait_for_port(self, port: int, timeout: float = 30.0) -> None:
        """Return once the child accepts connections on `port`; fail if it exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {port} in {timeout} s")

    def stop(self, timeout: float = 5.0, signum: int = signal.SIGTERM) -> None:
        """`signum` to the whole group, SIGKILL after `timeout`; safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            self._signal_group(process.pid, signum)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout)
            # Anything the child started in its group goes too.
            self._signal_group(process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signum)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def python(*args: str) -> list[str]:
    """A command line for this interpreter (the project's venv)."""
    return [sys.executable, *args]


def run_python(
    args: list[str], env: dict[str, str] | None, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run a step to its end (in this environment if `env` is None); raise if it fails."""
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        python(*args),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def py_spy(pid: int, output: Path, env: dict[str, str], log_dir: Path) -> Child:
    """A sampling profile of `pid` as collapsed stacks; stop it with SIGINT to write it."""
    executable = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    argv = [executable, "record", "--pid", str(pid), "--output", str(output)]
    # Non-blocking: sampling must not pause the server it measures.
    argv += ["--format", "raw", "--nonblocking", "--rate", "100", "--threads"]
    return Child(f"py-spy-{pid}", argv, env, log_dir)
