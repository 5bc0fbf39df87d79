"""Fixtures that run the real stack: a scifaas service and a local endpoint agent with
its managers and workers, started once per test session from the built binary.

The binary is ``target/debug/scifaas`` of this repository (build it with
``cargo build -p scifaas``) unless ``SCIFAAS_BIN`` names another. Both processes are
stopped by their pid at the end (terminate, bounded wait, kill); the agent runs in a
process group of its own, so managers it started and left behind go with it.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SDK_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = SDK_DIR.parent.parent
sys.path.insert(0, str(SDK_DIR))

from scifaas import Client, ScifaasError  # noqa: E402

ENDPOINT_NAME = "pytest-ep"
# Bounded waits, in seconds.
SERVICE_START_TIMEOUT = 30.0
ENDPOINT_READY_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0

LISTENING = re.compile(r"listening on (https?://\S+)")

# The running stack, for the failure summary at the end of the session.
_STACK = []


def scifaas_bin():
    path = Path(os.environ.get("SCIFAAS_BIN") or REPO_DIR / "target" / "debug" / "scifaas")
    if not path.is_file() or not os.access(str(path), os.X_OK):
        pytest.exit(
            "the scifaas binary %s does not exist or is not executable: build it with "
            "`cargo build -p scifaas` in %s, or point SCIFAAS_BIN at one" % (path, REPO_DIR),
            returncode=4,
        )
    return str(path)


class Process:
    """A child process whose merged stdout/stderr is drained by a thread (so its pipe
    never fills) into memory and a log file."""

    def __init__(self, name, argv, env, log_path, new_group=False):
        self.name = name
        self.argv = argv
        self.lines = []
        self._changed = threading.Condition()
        self._log = open(str(log_path), "w", buffering=1)
        self.log_path = log_path
        self.popen = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=new_group,
        )
        self.group = self.popen.pid if new_group else None
        self._reader = threading.Thread(target=self._drain, name=name + "-output", daemon=True)
        self._reader.start()

    def _drain(self):
        for line in self.popen.stdout:
            self._log.write(line)
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, pattern, timeout):
        """The first match of ``pattern`` in the output, waiting up to ``timeout``;
        None when the time passed or the process ended first."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = pattern.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (
                    self.popen.poll() is not None and not self._reader.is_alive()
                ):
                    return None
                self._changed.wait(min(remaining, 0.2))

    def tail(self, n=60):
        with self._changed:
            lines = self.lines[-n:]
        status = self.popen.poll()
        state = "running" if status is None else "exited with %s" % status
        return "--- %s (%s; pid %d; log %s) ---\n%s" % (
            self.name,
            state,
            self.popen.pid,
            self.log_path,
            "\n".join(lines),
        )

    def stop(self):
        """Terminate by pid, wait (bounded), then kill; then its process group."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT)
        if self.group is not None:
            # Anything the agent started and left in its (own) group.
            try:
                os.killpg(self.group, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._reader.join(5)
        self._log.close()


class Stack:
    def __init__(self, home):
        self.home = home
        self.url = None
        self.admin_token = None
        self.endpoint = ENDPOINT_NAME
        self.processes = []

    def output(self):
        return "\n\n".join(p.tail() for p in self.processes)

    def stop(self):
        for process in reversed(self.processes):
            process.stop()


def base_env(home):
    env = dict(os.environ)
    env["SCIFAAS_HOME"] = str(home)
    for key in ("SCIFAAS_URL", "SCIFAAS_TOKEN"):
        env.pop(key, None)
    env.setdefault("RUST_LOG", "info")
    env.setdefault("RUST_BACKTRACE", "1")
    return env


def start_service(stack, binary):
    data_dir = stack.home / "service"
    service = Process(
        "service",
        [binary, "service", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)],
        base_env(stack.home),
        stack.home / "service.log",
    )
    stack.processes.append(service)
    match = service.wait_for_line(LISTENING, SERVICE_START_TIMEOUT)
    if match is None:
        raise RuntimeError(
            "the service printed no `listening on http://ADDR` line within %.0f s\n%s"
            % (SERVICE_START_TIMEOUT, service.tail())
        )
    stack.url = match.group(1).rstrip("/.,")
    token_file = data_dir / "admin-token"
    deadline = time.monotonic() + 10
    while not token_file.is_file() or not token_file.read_text().strip():
        if time.monotonic() > deadline:
            raise RuntimeError("the service wrote no %s\n%s" % (token_file, service.tail()))
        time.sleep(0.05)
    stack.admin_token = token_file.read_text().strip()


def start_endpoint(stack, binary):
    env = base_env(stack.home)
    configure = subprocess.run(
        [binary, "endpoint", "configure", stack.endpoint, "--service", stack.url],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    if configure.returncode != 0:
        raise RuntimeError(
            "`scifaas endpoint configure %s` failed (%d):\n%s"
            % (stack.endpoint, configure.returncode, configure.stdout)
        )
    env["SCIFAAS_TOKEN"] = stack.admin_token
    agent = Process(
        "endpoint",
        [binary, "endpoint", "start", stack.endpoint],
        env,
        stack.home / "endpoint.log",
        new_group=True,
    )
    stack.processes.append(agent)

    client = Client(stack.url, stack.admin_token, timeout=10)
    deadline = time.monotonic() + ENDPOINT_READY_TIMEOUT
    view = None
    while time.monotonic() < deadline:
        if agent.popen.poll() is not None:
            break
        try:
            view = client.get_endpoint(stack.endpoint)
        except ScifaasError as err:
            if err.status != 404:
                raise
            view = None
        if view and view.get("connected") and view.get("managers"):
            return view
        time.sleep(0.2)
    raise RuntimeError(
        "endpoint %s was not connected with a manager within %.0f s (last view: %r)\n%s"
        % (stack.endpoint, ENDPOINT_READY_TIMEOUT, view, stack.output())
    )


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The running service and endpoint: ``url``, ``admin_token``, ``endpoint``."""
    binary = scifaas_bin()
    stack = Stack(tmp_path_factory.mktemp("scifaas-home"))
    _STACK.append(stack)
    try:
        start_service(stack, binary)
        start_endpoint(stack, binary)
    except BaseException:
        stack.stop()
        raise
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def client(stack):
    """A ``Client`` holding the admin token."""
    return Client(stack.url, stack.admin_token)


@pytest.fixture(scope="session")
def endpoint(stack):
    """The name of the running endpoint."""
    return stack.endpoint


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus != 0 and _STACK:
        terminalreporter.section("scifaas stack output (tails)")
        terminalreporter.write_line(_STACK[0].output())
