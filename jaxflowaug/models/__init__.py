"""Classifiers: CIFAR ResNet-18 and the ~100K-parameter CNN, chosen by name with `get`."""
from jaxflowaug.models.resnet import ResNet, ResNet18, ResNetBlock, _ResNetTiny
from jaxflowaug.models.small_cnn import SmallCNN

_MODELS = {'ResNet18': ResNet18, 'SmallCNN': SmallCNN, '_ResNetTiny': _ResNetTiny}


def get(name: str, **kwargs):
  """Returns the classifier module called `name`, built with `kwargs` (e.g. num_classes).

  Raises:
    ValueError: if `name` is not one of the registered models.
  """
  if name not in _MODELS:
    raise ValueError(f'unknown model name {name!r} (config field `model`); '
                     f'choose one of {sorted(_MODELS)}.')
  return _MODELS[name](**kwargs)
