"""The server process caps BLAS and OpenMP pools at one thread (small per-request matrices; 2 busy cores)."""

import subprocess
import sys

CHECK = """
import faiss
import numpy as np
from threadpoolctl import threadpool_info
from server.app import limit_native_threads
limit_native_threads()
pools = [p for p in threadpool_info() if p["user_api"] in ("blas", "openmp")]
assert pools, "numpy's BLAS was not found"
assert all(p["num_threads"] == 1 for p in pools), pools
assert faiss.omp_get_max_threads() == 1
print("ok")
"""


def test_limit_native_threads_caps_blas_and_openmp() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
