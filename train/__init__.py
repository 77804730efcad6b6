"""Programs: flags, configs, training loops, checkpoints, logging and reports."""
import os

# XLA:CPU calls LAPACK (scipy's OpenBLAS, loaded at the first factorisation) for the flows'
# small 1x1-convolution matrices; OpenBLAS's own threads then fight XLA's for the cores and a
# 48x48 triangular solve takes ~5 ms instead of ~0.05 ms (a fifth of a Glow step at K = 4).
# An explicit OPENBLAS_NUM_THREADS in the environment wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
