"""Kernels: the recurrences the layers of ``ssm_train.nn`` run on. Pure torch (+ optional triton, C++).

Each op keeps its obviously-right reference loop, its CPU path and its Triton path side by side:

    scan.py                 linear_scan / reference_scan: h_t = a_t ⊙ h_{t-1} + b_t (LRU, S4D, RG-LRU)
      csrc/scan_cpu.cpp       fused C++ loops (CPU default)
      scan_triton.py          chunked Triton kernels (CUDA default)
    selective_scan.py       selective_scan / reference_selective_scan: Mamba's S6 with Δ, B, C fused in
      csrc/selective_scan_cpu.cpp
      selective_scan_triton.py
    conv.py                 vandermonde_kernel / fft_conv: S4D's convolutional mode
    backend.py              shared: precision (at_least_float32, autocast_off), the C++ library
                            (load_cpp, cpp_available), Triton's import check, backend choice
    cpp_build.py            builds the C++ library once per source contents, under a lock
"""

from ssm_train.ops.backend import at_least_float32, autocast_off, cpp_available, empty_cache
from ssm_train.ops.conv import fft_conv, vandermonde_kernel
from ssm_train.ops.scan import linear_scan, reference_scan

# selective_scan is imported from its module (ssm_train.ops.selective_scan), not re-exported here:
# the function's name would shadow the module's as an attribute of this package.

__all__ = [
    "linear_scan",
    "reference_scan",
    "fft_conv",
    "vandermonde_kernel",
    "at_least_float32",
    "autocast_off",
    "cpp_available",
    "empty_cache",
]
