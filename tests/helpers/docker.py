"""A private Docker engine for the compose tests, and images built without any image registry.

dockerd runs as root with its own data root, exec root, pid file and unix socket, no iptables and
no default bridge (compose's project network still works; builds use `--network host`). The base
image is a debootstrap'd Debian imported with `docker import`; it also gets this machine's local
CA certificates and pip index settings, so apt and pip inside builds reach the same registries.

Built things are cached under CACHE_DIR, keyed by their inputs: the rootfs tarball by the
debootstrap arguments, and the engine's data root (with its images) is reused by the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

CACHE_DIR = Path(os.environ.get("VAULTK8S_TEST_CACHE", "/var/cache/vaultk8s-tests"))
SUITE = "bookworm"
# Debian's docker.io CLI, not a newer static client that may sit earlier on PATH (it would want buildx).
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
DOCKERD = shutil.which("dockerd") or ("/usr/sbin/dockerd" if os.path.exists("/usr/sbin/dockerd") else None)
COMPOSE = shutil.which("docker-compose")
DEBOOTSTRAP = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap")
                                              else None)
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")


def why_docker_cannot_run() -> str | None:
    """A reason when this machine cannot possibly run the engine; None when it should."""
    if os.geteuid() != 0:
        return "the compose tests start dockerd and need root"
    missing = [name for name, path in (("dockerd", DOCKERD), ("docker", DOCKER), ("docker-compose", COMPOSE),
                                       ("debootstrap", DEBOOTSTRAP)) if not path]
    if missing:
        return f"{', '.join(missing)} not installed (bash scripts/setup.sh installs them)"
    return None


def run(args: list[str], *, env: dict[str, str] | None = None, timeout: float, check: bool = True,
        cwd: Path | None = None, text: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=text, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])} ... exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]!s}\n{result.stderr[-3000:]!s}")
    return result


# -- the engine --------------------------------------------------------------------------------


@dataclass
class Engine:
    """A running dockerd; `env` points DOCKER_HOST at its socket."""

    pid: int
    socket: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env.update(DOCKER_HOST=f"unix://{self.socket}", DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="0")
        return env

    def docker(self, *args: str, timeout: float = 120, check: bool = True,
               text: bool = True) -> subprocess.CompletedProcess:
        return run([DOCKER, *args], env=self.env, timeout=timeout, check=check, text=text)


@contextlib.contextmanager
def engine(tmp: Path, start_timeout: float = 60, stop_timeout: float = 30) -> Iterator[Engine]:
    """Start dockerd; stop it by pid (SIGTERM, then SIGKILL) with bounded waits.

    The data root is the shared cache's when no other run holds it (images survive), else a
    fresh one under tmp. Exec root and socket live in a short temp dir (unix socket paths are short).
    """
    short = Path(tempfile.mkdtemp(prefix="vk8sd-", dir="/tmp"))
    with _data_root(tmp) as data_root:
        sock, pidfile, log = short / "docker.sock", short / "docker.pid", tmp / "dockerd.log"
        args = [DOCKERD, f"--data-root={data_root}", f"--exec-root={short / 'x'}", f"--pidfile={pidfile}",
                f"-H=unix://{sock}", "--storage-driver=overlay2", "--iptables=false", "--ip6tables=false",
                "--bridge=none", "--ip-forward=false", "--ip-masq=false", "--userland-proxy=false"]
        with open(log, "ab") as log_fd:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            eng = Engine(proc.pid, sock, log)
            _wait(lambda: proc.poll() is None and eng.docker("version", timeout=10, check=False).returncode == 0,
                  start_timeout, f"dockerd did not answer (see {log})", proc)
            _remove_leftovers(eng)
            yield eng
        finally:
            _stop(proc, stop_timeout)
            _unmount_under(short)
            shutil.rmtree(short, ignore_errors=True)


def _remove_leftovers(eng: Engine) -> None:
    """Compose projects an interrupted run left in the cached data root (dockerd restarts them)."""
    label = "label=com.docker.compose.project"
    ids = eng.docker("ps", "-aq", "--filter", label, timeout=60).stdout.split()
    if ids:
        eng.docker("rm", "-f", "-v", *ids, timeout=120, check=False)
    for kind in ("volume", "network"):
        eng.docker(kind, "prune", "-f", "--filter", label, timeout=60, check=False)


@contextlib.contextmanager
def _data_root(tmp: Path) -> Iterator[Path]:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(CACHE_DIR / "docker.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            root = CACHE_DIR / "docker"
        except BlockingIOError:  # another run uses the cached engine: a private one, built from scratch
            root = tmp / "docker"
        yield root
    finally:
        os.close(lock_fd)


def _unmount_under(root: Path) -> None:
    """dockerd leaves its default netns bind-mounted in the exec root (x/netns/default)."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(f"{root}/")), key=len, reverse=True):
        subprocess.run(["umount", target], capture_output=True, timeout=30)


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait(check, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: it exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f}s")
        time.sleep(0.5)


# -- images ------------------------------------------------------------------------------------


def apt_mirror() -> str:
    """The Debian mirror apt already uses here (deb822 or one-line sources)."""
    for path in sorted(Path("/etc/apt").glob("sources.list*")) + sorted(Path("/etc/apt/sources.list.d").glob("*")):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        for match in re.finditer(r"^URIs:\s*(\S+)|^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M):
            uri = match.group(1) or match.group(2)
            if "/debian" in uri and "security" not in uri:
                return uri
    return "http://deb.debian.org/debian"


def base_rootfs(timeout: float = 600) -> Path:
    """A `debootstrap --variant=minbase` tarball of Debian, built once per set of arguments."""
    mirror = apt_mirror()
    args = ["--variant=minbase", SUITE]
    key = hashlib.sha256(" ".join([*args, mirror, "clean"]).encode()).hexdigest()[:16]
    tarball = CACHE_DIR / f"rootfs-{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE_DIR))
    try:
        run([DEBOOTSTRAP, *args, str(work / "root"), mirror], timeout=timeout)
        # As slim images do: no downloaded .debs or package lists in the layer.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (work / "root" / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        tmp = work / "rootfs.tar"
        run(["tar", "-C", str(work / "root"), "--numeric-owner", "-cf", str(tmp), "."], timeout=300)
        os.replace(tmp, tarball)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def rootfs_image() -> str:
    """The tag `local_base_image` imports the current rootfs tarball as."""
    return f"rootfs:{base_rootfs().stem}"


def pip_settings() -> str:
    """This machine's pip index settings that make sense inside a container (no local paths)."""
    result = run(["python3", "-m", "pip", "config", "list"], timeout=60, check=False)
    keep = []
    for line in result.stdout.splitlines():
        name, _, value = line.partition("=")
        option = name.split(".", 1)[-1]
        value = value.strip().strip("'\"")
        if option in ("index-url", "extra-index-url", "trusted-host", "timeout", "retries") and \
                not any(v.startswith(("file:", "/")) for v in value.split()):
            keep.append(f"{option} = {value}")
    for env_name, option in (("PIP_INDEX_URL", "index-url"), ("PIP_EXTRA_INDEX_URL", "extra-index-url"),
                             ("PIP_DEFAULT_TIMEOUT", "timeout")):
        value = os.environ.get(env_name, "")
        if value and not any(v.startswith(("file:", "/")) for v in value.split()):
            keep.append(f"{option} = {value}")
    # The image's own bundle, which update-ca-certificates fills with the copied local CAs.
    keep.append("cert = /etc/ssl/certs/ca-certificates.crt")
    return "[global]\n" + "".join(f"{line}\n" for line in dict.fromkeys(keep))


def local_base_image(eng: Engine, tmp: Path) -> str:
    """The locally made base: debootstrap + this machine's local CAs and pip index settings."""
    rootfs = base_rootfs()
    ctx = tmp / "base-ctx"
    (ctx / "ca").mkdir(parents=True, exist_ok=True)
    for cert in sorted(LOCAL_CA_DIR.rglob("*.crt")) if LOCAL_CA_DIR.is_dir() else []:
        shutil.copy(cert, ctx / "ca" / cert.name)
    (ctx / "pip.conf").write_text(pip_settings())
    (ctx / "Dockerfile").write_text(
        "FROM rootfs\n"
        "COPY ca/ /usr/local/share/ca-certificates/\n"
        "COPY pip.conf /etc/pip.conf\n"
        # ca-certificates is not in minbase; update-ca-certificates comes with it.
        "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        "--no-install-recommends ca-certificates && update-ca-certificates && apt-get clean && rm -rf /var/lib/apt/lists/*\n"
    )
    digest = _digest([rootfs.name.encode(), *(_file_bytes(p) for p in sorted(ctx.rglob("*")))])
    tag = f"vaultk8s-test-base:{digest}"
    if not _has_image(eng, tag):
        if not _has_image(eng, rootfs_image()):
            eng.docker("import", str(rootfs), rootfs_image(), timeout=300)
        (ctx / "Dockerfile").write_text((ctx / "Dockerfile").read_text().replace(
            "FROM rootfs\n", f"FROM {rootfs_image()}\n"))
        eng.docker("build", "--network", "host", "-t", tag, str(ctx), timeout=600)
    return tag


def build_image(eng: Engine, context: Path, files: Iterable[Path], name: str, *, target: str,
                build_args: dict[str, str], timeout: float = 1200) -> str:
    """`docker build` of the repo's Dockerfile, skipped when an image of the same inputs exists."""
    digest = _digest([target.encode(), repr(sorted(build_args.items())).encode(),
                      *(p.relative_to(context).as_posix().encode() + _file_bytes(p) for p in sorted(files))])
    tag = f"{name}:{digest}"
    if not _has_image(eng, tag):
        args = ["build", "--network", "host", "--target", target, "-t", tag]
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        eng.docker(*args, str(context), timeout=timeout)
    return tag


def prune_images(eng: Engine, keep: Iterable[str]) -> None:
    """Drop this suite's images of earlier inputs, so the cached data root does not grow without bound."""
    keep = set(keep)
    listed = eng.docker("images", "--format", "{{.Repository}}:{{.Tag}}", timeout=60).stdout.split()
    old = [t for t in listed if t.startswith(("vaultk8s-test-", "rootfs:")) and t not in keep]
    if old:
        eng.docker("rmi", *old, timeout=120, check=False)
    eng.docker("image", "prune", "-f", timeout=120, check=False)


def _has_image(eng: Engine, tag: str) -> bool:
    return eng.docker("image", "inspect", tag, timeout=30, check=False).returncode == 0


def _file_bytes(path: Path) -> bytes:
    return path.read_bytes() if path.is_file() else b""


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]
