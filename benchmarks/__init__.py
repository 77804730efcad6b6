"""Speed benchmarks: `python -m benchmarks.run` (see BENCHMARKS.md)."""
# Importing `train` applies its process settings (OpenBLAS, XLA:CPU's LAPACK, on one thread)
# before any benchmark runs, as for every training entry point.
import train  # noqa: F401
