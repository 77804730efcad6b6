"""Test-wide settings: XLA compiles fast rather than well (as flax's train_test.py does).

Tests run many small, short-lived programs; compiling them with most optimisations off cuts
compile time several-fold and leaves the numbers the same to float32 round-off.
"""
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
jax.config.update("jax_disable_most_optimizations", True)
