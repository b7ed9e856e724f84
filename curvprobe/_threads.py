"""Thread settings applied once at import (see the package docstring)."""

from __future__ import annotations

import os


def configure_threads(blas_threads: int | None = None) -> None:
    """Limit BLAS threads (default from ``CURVPROBE_BLAS_THREADS``, else 1).

    ``0`` leaves BLAS untouched. Torch's own intra-op threads are not changed.
    """
    if blas_threads is None:
        blas_threads = int(os.environ.get("CURVPROBE_BLAS_THREADS", "1"))
    if blas_threads <= 0:
        return
    # Only OpenBLAS (numpy/scipy): torch reads MKL_NUM_THREADS when it is
    # imported and would drop to one intra-op thread if curvprobe is imported
    # first (as `python -m curvprobe` does).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(blas_threads))
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=blas_threads, user_api="blas")
