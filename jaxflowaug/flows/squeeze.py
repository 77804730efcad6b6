"""Squeeze: 2x2 space-to-depth and its inverse (Dinh et al. 2017, RealNVP).

A permutation of entries (logdet 0), so `Glow` calls these functions directly.
"""


def squeeze(x):
  """(B, H, W, C) -> (B, H/2, W/2, 4C); out[b, i, j, (2p + q) C + c] = x[b, 2i + p, 2j + q, c].

  Raises:
    ValueError: if H or W is odd.
  """
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'squeeze needs even height and width, got x.shape={x.shape}; '
                     'crop or pad the image to even sizes.')
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x):
  """(B, H, W, 4C) -> (B, 2H, 2W, C), the inverse of `squeeze`.

  Raises:
    ValueError: if the channel count is not a multiple of 4.
  """
  b, h, w, c4 = x.shape
  if c4 % 4:
    raise ValueError(f'unsqueeze needs a channel count divisible by 4, got x.shape={x.shape}.')
  x = x.reshape(b, h, w, 2, 2, c4 // 4)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c4 // 4)

