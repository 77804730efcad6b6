"""One read path for every source: a prepared TFDS dataset read by random access.

A source is a string `'<scheme>:<arg>'`:

- `'tfds:NAME'`: a TFDS dataset already prepared (in `array_record` format) in
  `data_dir`; nothing is downloaded.
- `'folder:PATH'`, `'idx:PATH'`, `'npz:PATH'`: local data (see `readers`). On first use
  it is materialised once as a TFDS dataset in `data_dir` (`array_record` files, features
  `image: Tensor(shape, uint8)` and `label: ClassLabel(names)`, record order kept), under
  a name keyed by the source's resolved path and its files' sizes and modification
  times, so two sources never clash and an edited source is re-materialised. Later
  runs read the prepared copy.

Everything is then read through `as_data_source(split)`, so TFDS split slicing
(`'train[:90%]'`, `'train[45000:]'`, `'train[:1000]'`, `'train+test'`) works for every
source, and the whole selection is loaded into memory as numpy arrays.
"""
import dataclasses
import hashlib
import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds

from jaxflowaug.data import readers

DEFAULT_DATA_DIR = '~/.cache/jaxflowaug/tfds'
_READERS = {'folder': readers.read_folder, 'idx': readers.read_idx,
            'npz': readers.read_npz}
SCHEMES = ('tfds',) + tuple(_READERS)
_FORMAT = '1'  # Bump when the materialised layout changes.
_CHUNK = 8192  # Records decoded per `__getitems__` call.


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a source holds.

  Attributes:
    name: the TFDS name, or for a local source a slug of its path's last component.
    num_classes: K; labels are in [0, K).
    class_names: K names in label order.
    image_shape: (H, W, C) of every image.
    splits: split name -> number of examples.
  """
  name: str
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  splits: Mapping[str, int]


class _LocalImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder writing in-memory `readers.LocalData` to array_record files."""

  name = 'jaxflowaug_local'
  VERSION = tfds.core.Version('1.0.0')

  def __init__(self, *, data: readers.LocalData, key: str, description: str,
               data_dir: pathlib.Path):
    self._data = data
    super().__init__(
        data_dir=data_dir, file_format='array_record',
        config=tfds.core.BuilderConfig(name=key, description=description))

  def _info(self) -> tfds.core.DatasetInfo:
    images, _ = next(iter(self._data.splits.values()))
    return tfds.core.DatasetInfo(
        builder=self, description=self.builder_config.description,
        disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=images.shape[1:], dtype=np.uint8,
                                          encoding='bytes'),
            'label': tfds.features.ClassLabel(names=list(self._data.class_names)),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(images, labels)
            for split, (images, labels) in self._data.splits.items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}


def parse_source(source: str) -> tuple[str, str]:
  """Splits `'scheme:arg'`; raises ValueError for an unknown scheme or empty arg."""
  scheme, sep, arg = source.partition(':') if isinstance(source, str) else ('', '', '')
  if not sep or scheme not in SCHEMES or not arg:
    raise ValueError(
        f'source={source!r} is not understood; use one of '
        f'{", ".join(s + ":..." for s in SCHEMES)}, e.g. "tfds:cifar10", '
        '"folder:../data/cifar10-train.tar.xz", "idx:../data/fashion-mnist", '
        '"npz:data.npz"')
  return scheme, arg


def _fingerprint(path: pathlib.Path) -> str:
  """Sizes and mtimes of `path` and every file below it."""
  if path.is_file():
    stat = path.stat()
    return f'{stat.st_size}:{stat.st_mtime_ns}'
  lines = []
  for dirpath, dirnames, filenames in os.walk(path):
    dirnames.sort()
    for f in sorted(filenames):
      stat = (pathlib.Path(dirpath) / f).stat()
      lines.append(f'{os.path.relpath(dirpath, path)}/{f}:{stat.st_size}:'
                   f'{stat.st_mtime_ns}')
  return '\n'.join(lines)


def _slug(path: pathlib.Path) -> str:
  """Lower-case `[a-z0-9_]` name of a path's last component, extensions dropped."""
  stem = path.name.split('.')[0] or path.name
  return re.sub(r'[^a-z0-9]+', '_', stem.lower()).strip('_') or 'data'


def _local_builder(scheme: str, arg: str, data_dir: pathlib.Path):
  """The prepared builder of a local source, materialising it on first use."""
  path = pathlib.Path(arg).expanduser().resolve()
  if not path.exists():
    raise FileNotFoundError(
        f'source path {arg!r} (resolved to {str(path)!r}) does not exist; relative '
        f'paths are resolved from the working directory {os.getcwd()!r}')
  digest = hashlib.sha256(
      f'{_FORMAT}\n{scheme}\n{path}\n{_fingerprint(path)}'.encode()).hexdigest()
  key = f'{_slug(path)}_{digest[:16]}'
  version_dir = (data_dir / _LocalImages.name / key /
                 str(_LocalImages.VERSION))
  if (version_dir / 'dataset_info.json').is_file():
    return tfds.builder_from_directory(version_dir)
  builder = _LocalImages(data=_READERS[scheme](path), key=key,
                         description=f'{scheme}:{path}', data_dir=data_dir)
  builder.download_and_prepare()
  return builder


def _tfds_builder(name: str, data_dir: pathlib.Path):
  """The builder of a stock TFDS dataset, which must already be prepared."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f'unknown TFDS dataset name {name!r} in source "tfds:{name}"; datasets '
        f'known with class names: {", ".join(readers.KNOWN_CLASS_NAMES)} (any name '
        'of the TFDS catalog works once prepared), or read local data with '
        '"folder:", "idx:" or "npz:"') from None
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'TFDS dataset {name!r} is not prepared in data_dir={str(data_dir)!r}, and '
        'jaxflowaug never downloads. On a machine with network access run '
        f'`tfds build {name} --data_dir=DIR --file_format=array_record` and copy '
        f'DIR/{name} to {str(data_dir / name)!r}; or read a local copy instead with '
        'a "folder:PATH" (image tree or .tar[.xz]), "idx:PATH" (MNIST-format IDX '
        'files) or "npz:PATH" source')
  features = builder.info.features
  if not {'image', 'label'} <= set(features.keys()):
    raise ValueError(f'TFDS dataset {name!r} has features {sorted(features.keys())}; '
                     "jaxflowaug needs 'image' and 'label'")
  if None in features['image'].shape:
    raise ValueError(f'TFDS dataset {name!r} has images of varying size '
                     f'{features["image"].shape}; jaxflowaug needs one fixed (H, W, C)')
  return builder


def _builder(source: str, data_dir):
  scheme, arg = parse_source(source)
  data_dir = pathlib.Path(data_dir or DEFAULT_DATA_DIR).expanduser()
  if scheme == 'tfds':
    return _tfds_builder(arg, data_dir)
  return _local_builder(scheme, arg, data_dir)


def info(source: str, *, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
  """Describes `source` (materialising a local source on first use).

  Args:
    source: `'tfds:NAME'`, `'folder:PATH'`, `'idx:PATH'` or `'npz:PATH'`.
    data_dir: where TFDS data is prepared and local sources are materialised;
      default `~/.cache/jaxflowaug/tfds`.
  """
  builder = _builder(source, data_dir)
  label = builder.info.features['label']
  scheme, arg = parse_source(source)
  return DatasetInfo(
      name=arg if scheme == 'tfds' else _slug(pathlib.Path(arg).expanduser().resolve()),
      num_classes=label.num_classes, class_names=tuple(label.names),
      image_shape=tuple(builder.info.features['image'].shape),
      splits={s: v.num_examples for s, v in builder.info.splits.items()})


def load(source: str, split: str, *, data_dir: str | os.PathLike | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
  """Loads one (possibly sliced) split of `source` into memory.

  Args:
    source: `'tfds:NAME'`, `'folder:PATH'`, `'idx:PATH'` or `'npz:PATH'`.
    split: a TFDS split spec: `'train'`, `'train[:90%]'`, `'train[45000:]'`,
      `'train[:1000]'`, `'train+test'`, ...
    data_dir: where TFDS data is prepared and local sources are materialised;
      default `~/.cache/jaxflowaug/tfds`.

  Returns:
    images: uint8 `(N, H, W, C)`, in the source's record order.
    labels: int32 `(N,)` in `[0, num_classes)`.

  Raises:
    FileNotFoundError: a missing path, or a TFDS dataset that is not prepared.
    ValueError: an unknown scheme or dataset name, bad data (see `readers`), or a
      split that does not exist, is malformed, runs past its split or selects nothing.
  """
  builder = _builder(source, data_dir)
  sizes = {s: v.num_examples for s, v in builder.info.splits.items()}
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        builder.info.splits)
  except (ValueError, TypeError, AttributeError) as e:
    raise ValueError(f'split={split!r} is not valid for source {source!r} with '
                     f'splits {sizes}: {e}') from None
  total = sum(max((i.to if i.to is not None else sizes[i.splitname]) - (i.from_ or 0), 0)
              for i in instructions)
  if total == 0:
    raise ValueError(f'split={split!r} selects no examples of source {source!r} '
                     f'(splits {sizes}); widen the slice')
  try:
    records = builder.as_data_source(split=split)
  except NotImplementedError:
    raise ValueError(
        f'source {source!r} is prepared in {builder.info.file_format} format, which '
        'cannot be read without TensorFlow; rebuild it with '
        '`tfds build ... --file_format=array_record`') from None
  shape = tuple(builder.info.features['image'].shape)
  images = np.empty((len(records),) + shape, np.uint8)
  labels = np.empty((len(records),), np.int32)
  for start in range(0, len(records), _CHUNK):
    chunk = records.__getitems__(
        list(range(start, min(start + _CHUNK, len(records)))))
    images[start:start + len(chunk)] = np.stack([r['image'] for r in chunk])
    labels[start:start + len(chunk)] = [r['label'] for r in chunk]
  return images, labels
