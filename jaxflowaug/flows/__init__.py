"""Normalizing flows: bijector layers, multi-scale Glow and the dense Fashion-MNIST flow.

Every layer and both flows `Glow` and `DenseFlow` follow one pair convention, with a
per-example logdet (B,):

    forward(x, ...) -> (z, log|det dz/dx|)      inverse(z, ...) -> (x, log|det dx/dz|)

and the inverse logdet is minus the forward one at the matching point. The flows map an
image batch x (B, H, W, C) in [0, 1] to a latent z of the same shape (prior N(0, I)):
`forward(x, y=None, dequantize=False)`, `inverse(z, y=None)`, the array-only
`encode(x, y=None) -> z` and `decode(z, y=None) -> x`, `log_prob` and `bits_per_dim`; call
them through `flow.apply(variables, x, method=Glow.forward)`.

`as_bijector(flow, variables, y)` wraps a flow as a `distrax.Bijector` in the same direction
(image -> latent, the image (H, W, C) is the event), and `as_distribution(flow, variables, y,
temperature)` gives the `distrax.Transformed` model of images (`log_prob`, `sample`,
`sample_and_log_prob`); both compose with distrax's bijectors.

Variable collections: 'params' (trainable) and 'consts' (fixed permutations and signs; only
`InvertibleConv1x1(decomposition='lu')` and `DenseFlow` have any). Checkpoint both; give
only 'params' to the optimiser.
"""
from jaxflowaug.flows.actnorm import ActNorm
from jaxflowaug.flows.bijector import Bijector
from jaxflowaug.flows.bijector import Flow
from jaxflowaug.flows.bijector import standard_normal_log_prob
from jaxflowaug.flows.conv1x1 import InvertibleConv1x1
from jaxflowaug.flows.coupling import Coupling
from jaxflowaug.flows.coupling import CouplingNet
from jaxflowaug.flows.dense import DenseFlow
from jaxflowaug.flows.dense import DenseSubnet
from jaxflowaug.flows.dense import GlowCouplingBlock
from jaxflowaug.flows.distrax_interop import as_bijector
from jaxflowaug.flows.distrax_interop import as_distribution
from jaxflowaug.flows.glow import Glow
from jaxflowaug.flows.glow import GlowStep
from jaxflowaug.flows.preprocess import Preprocess
from jaxflowaug.flows.preprocess import authors_decoded
from jaxflowaug.flows.squeeze import squeeze
from jaxflowaug.flows.squeeze import unsqueeze

__all__ = [
    'ActNorm', 'Bijector', 'Coupling', 'CouplingNet', 'DenseFlow', 'DenseSubnet', 'Flow',
    'Glow', 'GlowCouplingBlock', 'GlowStep', 'InvertibleConv1x1', 'Preprocess',
    'as_bijector', 'as_distribution', 'authors_decoded', 'squeeze', 'standard_normal_log_prob', 'unsqueeze',
]
