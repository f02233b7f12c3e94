"""What every kernel in ``ssm_train.ops`` shares: precision, the C++ library, Triton, backend choice.

Precision. Every recurrence runs in float32 or wider, also under bf16/fp16 autocast or with bf16
weights: `at_least_float32` upcasts half precisions, `autocast_off` switches autocast off around
a kernel.

The C++ library. One TORCH_LIBRARY build holds both CPU ops (``torch.ops.ssm_train_scan.*`` from
csrc/scan_cpu.cpp, ``torch.ops.ssm_train_selective.*`` from csrc/selective_scan_cpu.cpp), compiled
on first use by cpp_build.py under a lock, keyed by the sources' contents (never their paths).
`load_cpp` builds and loads it once per process and returns the error instead of raising, so that
each op decides whether to fall back (linear_scan, with one warning) or to refuse (a backend that
was asked for by name).

Triton. An optional dependency, imported on first use: `triton_error(x)` says why the Triton
kernels cannot run on x's device (triton missing, no CUDA, the interpreter not set), or None.

Backend choice. `requested_backend(argument, env_var, valid)`: an explicit argument wins over the
environment variable, which wins over "auto".
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from ssm_train.ops import cpp_build

__all__ = [
    "at_least_float32", "autocast_off", "UPCAST_DTYPES", "CPP_SPEC", "load_cpp", "cpp_available",
    "cpp_build_directory", "empty_cache", "triton_error", "triton_scan_module", "requested_backend",
]

UPCAST_DTYPES = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Precision


def at_least_float32(x: Tensor) -> Tensor:
    """Upcast half-precision tensors to float32; leave float32/float64/complex alone."""
    return x.float() if x.dtype in UPCAST_DTYPES else x


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A context with autocast disabled for ``device_type`` (a no-op where it is not on)."""
    try:
        on = torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # device types without autocast support
        on = False
    return torch.autocast(device_type, enabled=False) if on else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# The C++ CPU library, built on first use

CSRC = Path(__file__).parent / "csrc"
# One spec, two ops libraries' worth of sources: torch.ops.ssm_train_scan.* and ssm_train_selective.*
CPP_SPEC = cpp_build.BuildSpec(
    name="ssm_train_scan_cpu",
    sources=(CSRC / "scan_cpu.cpp", CSRC / "selective_scan_cpu.cpp"),
    extra_cflags=("-O3", "-march=native", "-fopenmp", "-std=c++17"),
    extra_ldflags=("-fopenmp",),
)

_cpp_lock = threading.Lock()
_cpp_state: dict[str, object] = {}  # "ok": bool, "error": str


def cpp_build_directory() -> Path:
    """Where the kernels are built: keyed by source contents, flags, CPU, torch, Python and
    compiler (see cpp_build), so checkouts and venvs share a build and CPUs do not."""
    return cpp_build.build_directory(CPP_SPEC)


def load_cpp() -> str | None:
    """Build/load the library once per process; returns None on success, else the error.

    Bounded (see cpp_build: $SSM_TRAIN_BUILD_TIMEOUT) and never loads a partial build; the
    callers turn an error into a fallback or a refusal."""
    with _cpp_lock:
        if "ok" not in _cpp_state:
            try:
                cpp_build.load_library(CPP_SPEC)
                torch.ops.ssm_train_scan.forward  # noqa: B018  (raises if not registered)
                torch.ops.ssm_train_selective.forward  # noqa: B018
                _cpp_state["ok"] = True
            except Exception as exc:  # compiler missing, build error, lock timeout, ...
                first_line = (str(exc).strip().splitlines() or [""])[0]
                _cpp_state["ok"] = False
                _cpp_state["error"] = f"{type(exc).__name__}: {first_line[:300]}"
        return None if _cpp_state["ok"] else str(_cpp_state["error"])


def cpp_available() -> bool:
    """Whether the C++ CPU kernels build and load here (builds them on first call)."""
    return load_cpp() is None


def empty_cache() -> None:
    """Free the idle output buffers the C++ kernels keep for reuse (see csrc/scan_cpu.cpp)."""
    if _cpp_state.get("ok"):
        torch.ops.ssm_train_scan.empty_cache()


# ---------------------------------------------------------------------------------------------
# Triton, an optional dependency imported on first use

_triton_state: dict[str, object] = {}  # "module": scan_triton, or "error": str


def triton_scan_module() -> ModuleType | None:
    """ssm_train.ops.scan_triton if triton imports here, else None (the reason: `triton_error`)."""
    if not _triton_state:
        try:
            from ssm_train.ops import scan_triton

            _triton_state["module"] = scan_triton
        except Exception as exc:  # triton missing, or failing to import on this machine
            _triton_state["error"] = f"triton is not importable ({type(exc).__name__}: {exc})"
    return _triton_state.get("module")  # type: ignore[return-value]


def triton_error(x: Tensor) -> str | None:
    """None if the Triton kernels import and run on x's device, else why not."""
    module = triton_scan_module()
    if module is None:
        return str(_triton_state["error"])
    return module.check_device(x)


# ---------------------------------------------------------------------------------------------
# Backend choice


def requested_backend(op: str, backend: str, env_var: str, valid: tuple[str, ...]) -> tuple[str, bool]:
    """(backend, forced): the argument if not "auto", else $env_var if set, else "auto".

    ``forced`` says the backend was named (argument or environment), so a failure to provide it
    is an error rather than a fallback."""
    if backend not in valid:
        raise ValueError(f"{op}: backend must be one of {valid}, got {backend!r}")
    if backend != "auto":
        return backend, True
    env = os.environ.get(env_var, "").strip().lower()
    if env not in ("",) + valid:
        raise ValueError(f"${env_var}={env!r} is not a backend; valid: {valid}")
    if env in ("", "auto"):
        return "auto", False
    return env, True
