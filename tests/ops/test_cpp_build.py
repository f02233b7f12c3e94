"""cpp_build: the JIT build never hangs a run, never loads a partial build, builds once.

The kill/concurrency tests build a one-op TORCH_LIBRARY file (~10 s) through the same builder as
the real kernels, in child processes (a process can register an op namespace only once), with a
compiler wrapper that logs every compile (`-c`) so "built once" is counted, not timed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from ssm_train.ops import backend, cpp_build

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "ssm_train" / "ops" / "csrc"

TINY = """\
#include <ATen/ATen.h>
#include <torch/library.h>
at::Tensor plus_one(const at::Tensor& x) { return x + 1; }
TORCH_LIBRARY(cpp_build_tiny, m) { m.def("plus_one(Tensor x) -> Tensor", &plus_one); }
"""

# A child: wait for $GO (so that N children start together), load, run an op, print JSON.
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    args = json.loads(sys.argv[1])
    while args.get("go") and not os.path.exists(args["go"]):
        time.sleep(0.01)
    import torch
    from ssm_train.ops import cpp_build
    t0 = time.monotonic()
    spec = cpp_build.BuildSpec(args["name"], tuple(Path(s) for s in args["sources"]), tuple(args["cflags"]))
    lib = cpp_build.load_library(spec, root=Path(args["root"]), timeout=args["timeout"])
    seconds = time.monotonic() - t0
    if args["name"] == "tiny":
        y = torch.ops.cpp_build_tiny.plus_one(torch.zeros(2)).tolist()
    else:
        a, b = torch.full((3,), 0.5), torch.ones(1, 4, 3)
        y = torch.ops.ssm_train_scan.forward(a, b, None, False)[0, :, 0].tolist()
    print(json.dumps({"lib": str(lib), "seconds": seconds, "y": y}))
    """
)


@pytest.fixture
def compiler(tmp_path: Path) -> dict[str, Path]:
    """A CXX wrapper that appends one line per compile to `log` and touches `started`."""
    real = shutil.which(os.environ.get("CXX", "c++"))
    if real is None:
        pytest.skip("no C++ compiler")
    wrapper, log, started = tmp_path / "bin" / "cxx-wrapper", tmp_path / "cxx.log", tmp_path / "cxx.started"
    wrapper.parent.mkdir()
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" -c "*) echo "$$ $*" >> "{log}"; touch "{started}";; esac\n'
        f'exec "{real}" "$@"\n'
    )
    wrapper.chmod(0o755)
    return {"cxx": wrapper, "log": log, "started": started}


def compiles(compiler: dict[str, Path]) -> int:
    return len(compiler["log"].read_text().splitlines()) if compiler["log"].exists() else 0


def tiny_sources(directory: Path, text: str = TINY) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tiny.cpp").write_text(text)
    return [str(directory / "tiny.cpp")]


def child_env(compiler: dict[str, Path] | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if compiler is not None:
        env["CXX"] = str(compiler["cxx"])
    return env


def start_child(args: dict, env: dict[str, str]) -> subprocess.Popen:
    args = {"cflags": ["-O0"], "timeout": 300, **args}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: kill -9 takes ninja and the compiler too
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def build_dir_for(root: Path, sources: list[str], compiler: dict[str, Path], name: str = "tiny") -> Path:
    """The directory the children will use (same CXX, so the same key)."""
    old = os.environ.get("CXX")
    os.environ["CXX"] = str(compiler["cxx"])
    try:
        spec = cpp_build.BuildSpec(name, tuple(Path(s) for s in sources), ("-O0",))
        return cpp_build.build_directory(spec, root)
    finally:
        os.environ.pop("CXX") if old is None else os.environ.__setitem__("CXX", old)


def log_events(directory: Path, event: str) -> int:
    return sum(event in line for line in (directory / cpp_build.BUILD_LOG).read_text().splitlines())


# ---------------------------------------------------------------------------------------------
# Fast, in-process


def test_key_depends_on_contents_not_paths(tmp_path):
    one = tiny_sources(tmp_path / "checkout1")
    two = tiny_sources(tmp_path / "checkout2")
    changed = tiny_sources(tmp_path / "checkout3", TINY + "// one more line\n")
    spec = lambda src, flags=("-O0",): cpp_build.BuildSpec("tiny", tuple(map(Path, src)), flags)  # noqa: E731
    root = tmp_path / "ext"
    assert cpp_build.build_directory(spec(one), root) == cpp_build.build_directory(spec(two), root)
    assert cpp_build.build_directory(spec(one), root) != cpp_build.build_directory(spec(changed), root)
    assert cpp_build.build_directory(spec(one), root) != cpp_build.build_directory(spec(one, ("-O2",)), root)
    assert cpp_build.build_directory(spec(one), root).parent == root


def test_marker_must_verify_before_a_library_is_loaded(tmp_path):
    """A truncated library, a foreign key or a broken marker reads as 'not built' (rebuild)."""
    lib = tmp_path / "x.so"
    lib.write_bytes(b"\x7fELF" + b"x" * 1000)
    marker = {"key": "k", "library": "x.so", "size": lib.stat().st_size, "sha256": cpp_build._sha256_file(lib)}
    (tmp_path / cpp_build.MARKER).write_text(json.dumps(marker))
    assert cpp_build._valid_library(tmp_path, "k") == lib
    assert cpp_build._valid_library(tmp_path, "other key") is None
    with open(lib, "r+b") as f:
        f.truncate(500)  # a half-written library
    assert cpp_build._valid_library(tmp_path, "k") is None
    (tmp_path / cpp_build.MARKER).write_text("{not json")
    assert cpp_build._valid_library(tmp_path, "k") is None
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_lock_wait_is_bounded_and_says_who_holds_it(tmp_path):
    spec = cpp_build.BuildSpec("tiny", tuple(map(Path, tiny_sources(tmp_path / "src"))), ("-O0",))
    root = tmp_path / "ext"
    directory = cpp_build.build_directory(spec, root)
    directory.mkdir(parents=True)
    with open(directory / cpp_build.LOCK, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        holder.write("pid 4242 on some-node\n")
        holder.flush()
        t0 = time.monotonic()
        expected = r"waited 0\.5 s .*pid 4242 on some-node.*SSM_TRAIN_BUILD_TIMEOUT"
        with pytest.raises(cpp_build.BuildTimeout, match=expected):
            cpp_build.load_library(spec, root=root, timeout=0.5)
        assert time.monotonic() - t0 < 5
    assert not (directory / cpp_build.BUILD_LOG).exists()  # nothing was compiled


def test_timeout_from_env(monkeypatch):
    monkeypatch.delenv(cpp_build.ENV_TIMEOUT, raising=False)
    assert cpp_build.timeout_from_env() == cpp_build.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(cpp_build.ENV_TIMEOUT, "12.5")
    assert cpp_build.timeout_from_env() == 12.5
    monkeypatch.setenv(cpp_build.ENV_TIMEOUT, "soon")
    with pytest.raises(ValueError, match="SSM_TRAIN_BUILD_TIMEOUT='soon' is not a number"):
        cpp_build.timeout_from_env()


def test_compile_error_is_one_line_and_recorded(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "broken.cpp").write_text("int f( {\n")
    spec = cpp_build.BuildSpec("broken", (tmp_path / "src" / "broken.cpp",))
    root = tmp_path / "ext"
    with pytest.raises(cpp_build.BuildError, match=r"broken\.cpp:1:\d+: error: ") as info:
        cpp_build.load_library(spec, root=root, timeout=60)
    assert "\n" not in str(info.value)
    directory = cpp_build.build_directory(spec, root)
    assert "error" in json.loads((directory / cpp_build.FAILED).read_text())["error"]
    assert not (directory / cpp_build.MARKER).exists()
    assert not list(directory.glob("staging-*"))  # the failed attempt cleaned up after itself


def test_real_kernels_load_through_the_marker():
    """scan.py's kernels come from cpp_build: a verified marker names the library in use."""
    if not backend.cpp_available():
        pytest.skip(f"C++ kernels did not build: {backend.load_cpp()}")
    directory = backend.cpp_build_directory()
    inputs = cpp_build._key_inputs(backend.CPP_SPEC, cpp_build._read_sources(backend.CPP_SPEC))
    lib = cpp_build._valid_library(directory, cpp_build._key(inputs))
    assert lib is not None and cpp_build._loaded[directory] == lib
    assert directory.name.startswith("ssm_train_scan_cpu-")
    assert isinstance(torch.ops.ssm_train_scan.has_simd(), bool)
    assert hasattr(torch.ops.ssm_train_selective, "forward")


# ---------------------------------------------------------------------------------------------
# Slow: child processes that compile


@pytest.mark.slow
def test_kill_minus_9_mid_build_then_next_run_loads_in_bounded_time(tmp_path, compiler):
    sources = tiny_sources(tmp_path / "src")
    root = tmp_path / "ext"
    env = child_env(compiler)
    victim = start_child({"name": "tiny", "sources": sources, "root": str(root)}, env)
    deadline = time.monotonic() + 120
    while not compiler["started"].exists():
        assert victim.poll() is None, victim.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)
    time.sleep(0.5)  # mid-compile
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    directory = build_dir_for(root, sources, compiler)
    assert not (directory / cpp_build.MARKER).exists()

    # The hazard is real: torch's own loader in the dead builder's directory waits on its baton.
    (staging,) = directory.glob("staging-*")
    assert (staging / "lock").exists()
    plain = (
        "import sys, torch.utils.cpp_extension as c; "
        "c.load(name='tiny', sources=[sys.argv[1]], build_directory=sys.argv[2], is_python_module=False)"
    )
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, "-c", plain, str(staging / "src" / "tiny.cpp"), str(staging)],
            env=env, capture_output=True, timeout=10,
        )

    t0 = time.monotonic()
    result = finish(start_child({"name": "tiny", "sources": sources, "root": str(root), "timeout": 60}, env))
    recovered = time.monotonic() - t0
    assert result["y"] == [1.0, 1.0]
    assert recovered < 120, recovered
    assert compiles(compiler) == 2  # the killed attempt and the one rebuild
    assert not list(directory.glob("staging-*")) and not (directory / "lock").exists()
    assert log_events(directory, "build start") == 2 and log_events(directory, "build ok") == 1
    print(f"recovered after kill -9 in {recovered:.1f} s (load {result['seconds']:.1f} s)")


@pytest.mark.slow
def test_concurrent_starts_build_once(tmp_path, compiler):
    sources = tiny_sources(tmp_path / "src")
    root, go = tmp_path / "ext", tmp_path / "go"
    env = child_env(compiler)
    procs = [start_child({"name": "tiny", "sources": sources, "root": str(root), "go": str(go)}, env) for _ in range(4)]
    time.sleep(2.0)  # let all four import and spin on the go file
    go.touch()
    results = [finish(p) for p in procs]
    assert all(r["y"] == [1.0, 1.0] for r in results)
    assert len({r["lib"] for r in results}) == 1
    assert compiles(compiler) == 1
    directory = build_dir_for(root, sources, compiler)
    assert log_events(directory, "build start") == 1
    print("load seconds:", [round(r["seconds"], 2) for r in results])


@pytest.mark.slow
def test_two_checkouts_of_the_real_kernels_share_one_build(tmp_path, compiler):
    """csrc copied to two trees (two checkouts): the second loads the first's build, no compile."""
    trees = [tmp_path / "checkout1" / "csrc", tmp_path / "checkout2" / "csrc"]
    for tree in trees:
        shutil.copytree(CSRC, tree)
    root = tmp_path / "ext"
    env = child_env(compiler)

    def run(tree: Path) -> dict:
        sources = [str(tree / Path(s).name) for s in backend.CPP_SPEC.sources]
        args = {"name": backend.CPP_SPEC.name, "sources": sources, "root": str(root),
                "cflags": list(backend.CPP_SPEC.extra_cflags)}
        return finish(start_child(args, env))

    first = run(trees[0])
    n = compiles(compiler)
    second = run(trees[1])
    assert first["y"] == second["y"] == pytest.approx([1.0, 1.5, 1.75, 1.875])
    assert n == 2 and compiles(compiler) == n  # two .cpp files, compiled once, by the first tree only
    assert first["lib"] == second["lib"]
    print(f"first checkout built in {first['seconds']:.1f} s; second loaded in {second['seconds']:.3f} s")


def test_lock_timeout_falls_back_with_one_line(tmp_path):
    """A builder that never finishes: the run falls back after the timeout and says so once."""
    root = tmp_path / "ext"
    spec = backend.CPP_SPEC
    directory = cpp_build.build_directory(spec, root)
    directory.mkdir(parents=True)
    code = (
        "import torch\n"
        "from ssm_train.ops.scan import linear_scan\n"
        "from ssm_train.ops.selective_scan import selective_scan\n"
        "for _ in range(3): linear_scan(torch.rand(4), torch.rand(2, 5, 4))\n"
        "x = torch.rand(1, 5, 3)\n"
        "selective_scan(x, x, -torch.rand(3, 2), torch.rand(1, 5, 2), torch.rand(1, 5, 2))\n"
        "print('done')\n"
    )
    env = dict(child_env(None), TORCH_EXTENSIONS_DIR=str(root), **{cpp_build.ENV_TIMEOUT: "1"})
    env.pop("SSM_TRAIN_SCAN_BACKEND", None)
    env.pop("SSM_TRAIN_SELECTIVE_BACKEND", None)
    with open(directory / cpp_build.LOCK, "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-W", "default", "-c", code], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "C++ scan extension unavailable" in ln]
    assert len(lines) == 1 and "BuildTimeout" in lines[0], proc.stderr[-3000:]
    assert elapsed < 60
