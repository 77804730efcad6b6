"""Speed benchmarks: `python -m benchmarks.run` (see BENCHMARKS.md)."""
import os

# As in `train/__init__.py`: keep OpenBLAS (XLA:CPU's LAPACK) off XLA's threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
