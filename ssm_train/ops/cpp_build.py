"""Build-once, load-many JIT builds of the C++ kernels, safe under kills and concurrent starts.

Why not plain ``torch.utils.cpp_extension.load``: it serialises builders with a ``lock`` file
(FileBaton) that a killed builder leaves behind, and every later process then waits on it forever;
and it keys nothing by source contents, so two checkouts sharing one build directory rewrite each
other's ``build.ninja`` and rebuild, while a third process may load the half-written library.

The design:

* **Key.** A build lives in ``<root>/<name>-<key>``, ``key`` a hash of the source *contents*
  (not paths), compile/link flags, CPU flags (``-march=native``), torch (version + git hash),
  Python (version + ABI tag), the compiler (resolved path + ``--version``) and this module's
  layout version. Different sources never share a directory; the same sources from any checkout
  or venv with the same torch/compiler find the same directory and never rebuild each other.
  ``root`` is ``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/ssm_train/torch_extensions``.
* **Marker.** A finished build is ``<name>.so`` plus ``complete.json`` naming it with its size
  and sha256. Loaders that find a valid marker ``torch.ops.load_library`` the file directly and
  never touch cpp_extension, its baton or ninja (which would take the baton and rerun ninja even
  when everything is up to date). The library is published by ``os.replace`` of a complete,
  fsynced file and the marker is written after it (temp + fsync + ``os.replace``), so no reader
  can see a partial library: either no marker (build) or a marker whose checksum verifies.
* **Lock.** Builders serialise on ``fcntl.flock`` of ``build.flock`` (never deleted). The kernel
  drops a flock when its holder dies, so ``kill -9`` cannot leave it stale; on Linux NFS it maps
  to fcntl byte-range locks. The descriptor is close-on-exec, so orphaned compilers of a killed
  builder do not hold it. Waiting is bounded: poll with ``LOCK_NB`` (re-checking the marker each
  time) until ``$SSM_TRAIN_BUILD_TIMEOUT`` seconds (default 600), then raise `BuildTimeout`,
  which the callers turn into one fallback warning. N ranks starting at once: one builds, the
  others find the marker once the lock frees, so the compiler runs once.
* **Staging.** Under the lock the builder re-checks the marker, removes the staging directories
  of earlier (dead) builders -- with them any torch ``lock`` baton they left, which no live
  process can hold since every builder holds our flock first -- and builds in a fresh
  ``staging-<pid>-<random>/`` from copies of the exact bytes it hashed. Torch's baton there is
  always fresh, so ``load`` can never wait on it; a rebuild never reuses half-written objects.
* **Failures.** A failed build writes ``failed.json``; processes that were already waiting when
  it failed re-raise that error instead of each retrying (N ranks do not compile a broken file N
  times), while later processes retry (the failure may have been transient). ``builds.log``
  gets one line per build start/end, for humans and tests.

Sources must be self-contained (include only system/torch headers): they are copied.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ssm_train.atomic import atomic_write, fsync_dir

__all__ = ["BuildSpec", "BuildError", "BuildTimeout", "build_directory", "load_library", "ENV_TIMEOUT"]

log = logging.getLogger(__name__)

ENV_TIMEOUT = "SSM_TRAIN_BUILD_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
LAYOUT_VERSION = 1  # bump when the directory layout or marker format changes
MARKER = "complete.json"
FAILED = "failed.json"
LOCK = "build.flock"
BUILD_LOG = "builds.log"

_process_lock = threading.Lock()  # threads of one process: one loads, the others reuse it
_loaded: dict[Path, Path] = {}  # build directory -> library loaded into this process


class BuildError(RuntimeError):
    """The compiler or loader failed; the message's first line says why."""


class BuildTimeout(BuildError):
    """Another process held the build lock for longer than the timeout."""


@dataclass(frozen=True)
class BuildSpec:
    """What to build: a library of TORCH_LIBRARY ops (``is_python_module=False``)."""

    name: str
    sources: tuple[Path, ...]
    extra_cflags: tuple[str, ...] = ()
    extra_ldflags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [Path(s).name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"cpp_build: source file names must be unique (they are copied flat): {names}")


# ---------------------------------------------------------------------------------------------
# Key


def _cpu_flags() -> str:
    """The CPU feature flags: -march=native binaries must not move to a CPU lacking them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


@functools.lru_cache(maxsize=8)
def _compiler_id(cxx: str) -> str:
    """Resolved path and first ``--version`` line of the compiler torch will use (cached: ~ms)."""
    path = shutil.which(cxx)
    if path is None:
        return f"{cxx}: not found"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        version = (out.strip().splitlines() or [""])[0]
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"--version failed: {type(exc).__name__}"
    return f"{os.path.realpath(path)}|{version}"


def _read_sources(spec: BuildSpec) -> dict[str, bytes]:
    """name -> bytes, read once: the builder compiles exactly the bytes that were hashed."""
    return {Path(s).name: Path(s).read_bytes() for s in spec.sources}


def _key_inputs(spec: BuildSpec, contents: dict[str, bytes]) -> dict[str, object]:
    return {
        "layout": LAYOUT_VERSION,
        "name": spec.name,
        "sources": [[n, hashlib.sha256(b).hexdigest()] for n, b in contents.items()],
        "cflags": list(spec.extra_cflags),
        "ldflags": list(spec.extra_ldflags),
        "machine": platform.machine(),
        "cpu": hashlib.sha256(_cpu_flags().encode()).hexdigest(),
        "torch": f"{torch.__version__}|{getattr(torch.version, 'git_version', '')}",
        "python": f"{platform.python_version()}|{sys.implementation.cache_tag}",
        "compiler": _compiler_id(os.environ.get("CXX", "c++")),
    }


def _key(inputs: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def default_root() -> Path:
    """$TORCH_EXTENSIONS_DIR, else ~/.cache/ssm_train/torch_extensions."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(root) if root else Path.home() / ".cache" / "ssm_train" / "torch_extensions"


def build_directory(spec: BuildSpec, root: Path | None = None) -> Path:
    """Where `spec` is (or will be) built; depends on source contents, never on their paths."""
    return _directory(spec, _key(_key_inputs(spec, _read_sources(spec))), root)


def _directory(spec: BuildSpec, key: str, root: Path | None) -> Path:
    return (root or default_root()) / f"{spec.name}-{key[:20]}"


# ---------------------------------------------------------------------------------------------
# Files


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _valid_library(directory: Path, key: str) -> Path | None:
    """The library a complete marker names, if the marker matches `key` and the file verifies."""
    try:
        marker = json.loads((directory / MARKER).read_text())
        lib = directory / marker["library"]
        if marker.get("key") != key or lib.stat().st_size != marker["size"]:
            return None
        return lib if _sha256_file(lib) == marker["sha256"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _append_log(directory: Path, event: str) -> None:
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} pid={os.getpid()} {event}\n"
    with open(directory / BUILD_LOG, "a") as f:
        f.write(line)


# ---------------------------------------------------------------------------------------------
# Lock


def timeout_from_env() -> float:
    """$SSM_TRAIN_BUILD_TIMEOUT seconds (default 600): the longest a loader waits for a builder."""
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"${ENV_TIMEOUT}={raw!r} is not a number of seconds") from None


def _try_flock(fd: int) -> bool:
    """Non-blocking exclusive flock. True if taken; raises OSError if locks are unsupported."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise


def _holder(lock_path: Path) -> str:
    """Who holds the lock, as its holder wrote it (for the timeout message)."""
    try:
        return lock_path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _acquire(directory: Path, key: str, timeout: float) -> tuple[int | None, Path | None]:
    """Wait (bounded) until we hold the build lock or another process finished the build.

    Returns (fd, None) holding the lock, or (None, library) when a valid marker appeared while
    waiting. fd is None with library None only where the filesystem has no locks (we then build
    unlocked: wasteful when concurrent, but still never partial or blocked).
    """
    lock_path = directory / LOCK
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + timeout
    delay, said = 0.05, False
    try:
        while True:
            try:
                if _try_flock(fd):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
                    return fd, None
            except OSError as exc:  # ENOLCK / EOPNOTSUPP: no locking on this filesystem
                log.warning("cpp_build: cannot lock %s (%s); building without a lock", lock_path, exc)
                os.close(fd)
                return None, None
            lib = _valid_library(directory, key)
            if lib is not None:
                os.close(fd)
                return None, lib
            if time.monotonic() >= deadline:
                raise BuildTimeout(
                    f"waited {timeout:g} s for the build lock {lock_path} (held by {_holder(lock_path)}); "
                    f"raise ${ENV_TIMEOUT} if builds are that slow here"
                )
            if not said:
                log.info("cpp_build: waiting for %s, building in %s", _holder(lock_path), directory)
                said = True
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)
    except BaseException:
        os.close(fd)
        raise


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the only descriptor drops the flock


# ---------------------------------------------------------------------------------------------
# Build


def _clean_staging(directory: Path) -> None:
    """Remove earlier builders' staging dirs (and torch batons in them): their owners are dead,
    because every builder holds the flock we hold now. A process that loaded a library from one
    keeps its mapping: unlinking does not unmap."""
    for old in directory.glob("staging-*"):
        shutil.rmtree(old, ignore_errors=True)
    (directory / "lock").unlink(missing_ok=True)  # a baton of torch's, if anyone built here directly


def _first_error_line(exc: BaseException) -> str:
    """The compiler's first ``error:`` line (without the staging path), else the exception's
    first line: one line that fits a fallback warning."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        found = re.search(r"([^\s/]*(?::\d+)*: (?:fatal )?error: .*)", ln)
        if found:
            return found.group(1)[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _compile(spec: BuildSpec, contents: dict[str, bytes], staging: Path) -> Path:
    """Run torch's JIT build in a fresh staging directory; it also loads the library here."""
    from torch.utils.cpp_extension import load

    src = staging / "src"
    src.mkdir(parents=True)
    paths = []
    for name, data in contents.items():
        (src / name).write_bytes(data)
        paths.append(str(src / name))
    out = load(
        name=spec.name,
        sources=paths,
        extra_cflags=list(spec.extra_cflags),
        extra_ldflags=list(spec.extra_ldflags),
        build_directory=str(staging),
        is_python_module=False,
        verbose=False,
    )
    return Path(out)


def _build(
    spec: BuildSpec, contents: dict[str, bytes], key: str, directory: Path, inputs: dict, locked: bool
) -> Path:
    """Build, publish the library atomically, then the marker. `locked`: we hold the flock, so
    no other builder is alive and its leftovers can go (unlocked, they may be live)."""
    if locked:
        _clean_staging(directory)
    (directory / MARKER).unlink(missing_ok=True)
    staging = directory / f"staging-{os.getpid()}-{secrets.token_hex(4)}"
    _append_log(directory, "build start")
    log.info("cpp_build: compiling %s in %s (first use of these sources here)", spec.name, directory)
    t0 = time.monotonic()
    try:
        built = _compile(spec, contents, staging)
        with open(built, "rb") as f:
            os.fsync(f.fileno())
        lib = directory / f"{spec.name}.so"
        os.replace(built, lib)  # same filesystem: atomic; this process's mapping follows the inode
        fsync_dir(directory)
        marker = {
            "key": key,
            "library": lib.name,
            "size": lib.stat().st_size,
            "sha256": _sha256_file(lib),
            "built_by": f"pid {os.getpid()} on {socket.gethostname()}",
            "seconds": round(time.monotonic() - t0, 2),
            "inputs": inputs,
        }
        atomic_write(directory / MARKER, lambda f: f.write(json.dumps(marker, indent=1).encode()))
        (directory / FAILED).unlink(missing_ok=True)
        _append_log(directory, f"build ok {time.monotonic() - t0:.1f}s")
        return lib
    except Exception as exc:
        error = f"{type(exc).__name__}: {_first_error_line(exc)}"
        atomic_write(directory / FAILED, lambda f: f.write(json.dumps({"time": time.time(), "error": error}).encode()))
        _append_log(directory, f"build failed {time.monotonic() - t0:.1f}s: {error}")
        raise BuildError(error) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _recent_failure(directory: Path, since: float) -> str | None:
    """The error of a build that failed while we were waiting for it (we would only repeat it)."""
    try:
        failed = json.loads((directory / FAILED).read_text())
        return str(failed["error"]) if float(failed["time"]) >= since else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_library(spec: BuildSpec, *, root: Path | None = None, timeout: float | None = None) -> Path:
    """Load `spec`'s ops into this process, building them first if no process has; returns the
    library's path. Never waits longer than `timeout` (default $SSM_TRAIN_BUILD_TIMEOUT) for
    another builder. Raises BuildError (or BuildTimeout) instead of loading anything partial."""
    timeout = timeout_from_env() if timeout is None else timeout
    contents = _read_sources(spec)
    inputs = _key_inputs(spec, contents)
    key = _key(inputs)
    directory = _directory(spec, key, root)
    with _process_lock:
        if directory in _loaded:
            return _loaded[directory]
        directory.mkdir(parents=True, exist_ok=True)
        lib = _valid_library(directory, key)
        if lib is None:
            started = time.time()
            fd, lib = _acquire(directory, key, timeout)
            try:
                if lib is None:
                    lib = _valid_library(directory, key)  # finished while we waited for the lock
                if lib is None:
                    error = _recent_failure(directory, started)
                    if error is not None:
                        raise BuildError(f"{error} (build by another process)")
                    _loaded[directory] = lib = _build(spec, contents, key, directory, inputs, fd is not None)
                    return lib  # torch's load already loaded it
            finally:
                _release(fd)
        torch.ops.load_library(str(lib))
        _loaded[directory] = lib
        return lib
