"""The convolution every model and flow in the project uses.

`Conv` is `flax.linen.Conv` with the project's `conv_general_dilated`, so a faster
platform-specific implementation can be swapped in at one place.
"""
import functools

import flax.linen as nn
from jax import lax

conv_general_dilated = lax.conv_general_dilated

Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
