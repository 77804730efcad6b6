"""One read path for every source: a prepared TFDS dataset read by random access.

A source is a dataset name or a string `'<scheme>:<arg>'`:

- `'cifar10'`, `'cifar100'`, `'svhn'`, `'mnist'`, `'fashion_mnist'`: the official files,
  taken from `archive_dir` or downloaded into `data_dir/downloads` (see `download`),
  with their published train and test splits.
- `'tfds:NAME'`: a TFDS dataset already prepared (in `array_record` format) in
  `data_dir`; nothing is downloaded.
- `'folder:PATH'`, `'idx:PATH'`, `'npz:PATH'`: local data (see `readers`).

On first use a named or local source is materialised once as a TFDS dataset in
`data_dir` (`array_record` files, features `image: Tensor(shape, uint8)` and
`label: ClassLabel(names)`, record order kept), under a name keyed by the dataset name
and its checksums, or by the source's resolved path and its files' sizes and
modification times, so two sources never clash and an edited source is
re-materialised. A manifest of the sizes and sha256 digests of the written files is
kept beside them; a copy that no longer matches it (garbled, truncated or deleted
files, an interrupted write) is built again from the source. Later runs read the
prepared copy and never touch the network.

Everything is then read through `as_data_source(split)`, so TFDS split slicing
(`'train[:90%]'`, `'train[45000:]'`, `'train[:1000]'`, `'train+test'`) works for every
source, and the whole selection is loaded into memory as numpy arrays.
"""
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from google.protobuf import json_format
from google.protobuf import message

from jaxflowaug.data import download
from jaxflowaug.data import readers

DEFAULT_DATA_DIR = '~/.cache/jaxflowaug/tfds'
_READERS = {'folder': readers.read_folder, 'idx': readers.read_idx,
            'npz': readers.read_npz}
SCHEMES = ('tfds',) + tuple(_READERS)
NAMED = 'name'  # The scheme `parse_source` gives a dataset name.
_FORMAT = '1'  # Bump when the materialised layout changes.
_MANIFEST = 'jaxflowaug_manifest.json'
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
  """Splits `'scheme:arg'`, or gives `(NAMED, name)` for a dataset name.

  Raises:
    ValueError: an unknown name or scheme, or an empty arg.
  """
  if source in download.DATASETS:
    return NAMED, source
  scheme, sep, arg = source.partition(':') if isinstance(source, str) else ('', '', '')
  if not sep or scheme not in SCHEMES or not arg:
    raise ValueError(
        f'source={source!r} is not understood; use a dataset name '
        f'({", ".join(download.DATASETS)}) or one of '
        f'{", ".join(s + ":..." for s in SCHEMES)}, e.g. "cifar10", "tfds:cifar10", '
        '"folder:../data/cifar10-train.tar.xz", "idx:../data/fashion-mnist", '
        '"npz:data.npz"')
  return scheme, arg


def _fingerprint(path: pathlib.Path) -> str:
  """Sizes and mtimes of `path` and every file below it (through symlinked folders)."""
  if path.is_file():
    stat = path.stat()
    return f'{stat.st_size}:{stat.st_mtime_ns}'
  lines = []
  for dirpath, _, filenames in readers.walk(path):
    for f in filenames:
      stat = (pathlib.Path(dirpath) / f).stat()
      lines.append(f'{os.path.relpath(dirpath, path)}/{f}:{stat.st_size}:'
                   f'{stat.st_mtime_ns}')
  return '\n'.join(lines)


def _slug(path: pathlib.Path) -> str:
  """Lower-case `[a-z0-9_]` name of a path's last component, extensions dropped."""
  stem = path.name.split('.')[0] or path.name
  return re.sub(r'[^a-z0-9]+', '_', stem.lower()).strip('_') or 'data'


def _manifest(version_dir: pathlib.Path) -> dict[str, list]:
  """{relative file: [size, sha256]} of every file of a materialised copy."""
  files = {}
  for path in sorted(version_dir.rglob('*')):
    if path.is_file() and path.name != _MANIFEST:
      with open(path, 'rb') as f:
        digest = hashlib.file_digest(f, 'sha256').hexdigest()
      files[str(path.relative_to(version_dir))] = [path.stat().st_size, digest]
  return files


def _intact(version_dir: pathlib.Path) -> bool:
  """Whether the copy in `version_dir` is complete and unchanged since it was written."""
  try:
    want = json.loads((version_dir / _MANIFEST).read_text())
  except (OSError, ValueError):
    return False
  return want == _manifest(version_dir)


def _check_writable(data_dir: pathlib.Path, description: str) -> None:
  """Raises ValueError unless `data_dir` (or its first existing ancestor) is writable."""
  existing = data_dir
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not (existing.is_dir() and os.access(existing, os.W_OK)):
    raise ValueError(
        f'data_dir {str(data_dir)!r} is not writable ({str(existing)!r} cannot be '
        f'written to), so {description} cannot be materialised there; set '
        'data.data_dir to a writable directory (default ~/.cache/jaxflowaug/tfds)')


def _check_range(data: readers.LocalData, description: str) -> None:
  """Refuses uint8 images that never exceed 1: [0, 1] values stored without x255."""
  top = max(int(images.max()) for images, _ in data.splits.values())
  if top <= 1:
    raise ValueError(
        f'the images of {description} are uint8 with maximum {top}: they look like '
        'values in [0, 1] stored without scaling (a forgotten x255); store '
        '(x * 255).round().astype(np.uint8) instead')


def _materialised(key: str, description: str, data_dir: pathlib.Path,
                  read: Callable[[], readers.LocalData]):
  """The prepared builder `key`, built from `read()` when missing or damaged."""
  version_dir = data_dir / _LocalImages.name / key / str(_LocalImages.VERSION)
  if _intact(version_dir):
    return tfds.builder_from_directory(version_dir)
  _check_writable(data_dir, description)
  if version_dir.exists():
    logging.warning('the materialised copy of %s in %s is incomplete or damaged; '
                    'building it again', description, version_dir)
    shutil.rmtree(version_dir)
  data = read()
  _check_range(data, description)
  builder = _LocalImages(data=data, key=key, description=description, data_dir=data_dir)
  builder.download_and_prepare()
  (version_dir / _MANIFEST).write_text(json.dumps(_manifest(version_dir)))
  return builder


def _local_builder(scheme: str, arg: str, data_dir: pathlib.Path):
  """The prepared builder of a local source, materialising it on first use."""
  path = pathlib.Path(arg).expanduser().resolve()
  if not path.exists():
    raise FileNotFoundError(
        f'source path {arg!r} (resolved to {str(path)!r}) does not exist; relative '
        f'paths are resolved from the working directory {os.getcwd()!r}')
  digest = hashlib.sha256(
      f'{_FORMAT}\n{scheme}\n{path}\n{_fingerprint(path)}'.encode()).hexdigest()
  return _materialised(f'{_slug(path)}_{digest[:16]}', f'{scheme}:{path}', data_dir,
                       lambda: _READERS[scheme](path))


def _named_builder(name: str, data_dir: pathlib.Path, archive_dir):
  """The prepared builder of a dataset known by name, fetching it on first use."""
  md5s = ' '.join(a.md5 for a in download.DATASETS[name].archives)
  digest = hashlib.sha256(f'{_FORMAT}\n{NAMED}\n{name}\n{md5s}'.encode()).hexdigest()
  return _materialised(f'{name}_{digest[:16]}', name, data_dir,
                       lambda: download.read(name, data_dir / 'downloads', archive_dir))


# What TFDS and array_record raise on damaged files: Riegeli errors, unreadable or
# garbled dataset_info.json, undecodable records.
_DAMAGE = (RuntimeError, OSError, ValueError, json_format.Error, message.DecodeError)


def _damaged(where, error: Exception) -> ValueError:
  """The one-line error for a prepared dataset in `where` whose files cannot be read."""
  first_line = (str(error).splitlines() or [''])[0]
  return ValueError(
      f'the prepared dataset in {str(where)!r} is damaged ({type(error).__name__}: '
      f'{first_line}); delete that directory and prepare the dataset again')


def _tfds_builder(name: str, data_dir: pathlib.Path):
  """The builder of a stock TFDS dataset, which must already be prepared."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
    features = builder.info.features if prepared else None
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f'unknown TFDS dataset name {name!r} in source "tfds:{name}"; datasets '
        f'known by name: {", ".join(download.DATASETS)}, or any name of the TFDS '
        'catalog once prepared; or read local data with "folder:", "idx:" or '
        '"npz:"') from None
  except _DAMAGE as e:
    raise _damaged(data_dir / name, e) from None
  if not prepared:
    raise FileNotFoundError(
        f'TFDS dataset {name!r} is not prepared in data_dir={str(data_dir)!r}, and '
        'a "tfds:" source never downloads. Use the source name instead if it is one '
        f'of {", ".join(download.DATASETS)}; or, on a machine with network access and '
        f'TensorFlow, run `tfds build {name} --data_dir DIR --file_format=array_record` '
        f'and copy DIR/{name} to {str(data_dir / name)!r}; or read a local copy with a '
        '"folder:PATH" (image tree or .tar[.xz]), "idx:PATH" (MNIST-format IDX files) '
        'or "npz:PATH" source')
  if not {'image', 'label'} <= set(features.keys()):
    raise ValueError(f'TFDS dataset {name!r} has features {sorted(features.keys())}; '
                     "jaxflowaug needs 'image' and 'label'")
  if None in features['image'].shape:
    raise ValueError(f'TFDS dataset {name!r} has images of varying size '
                     f'{features["image"].shape}; jaxflowaug needs one fixed (H, W, C)')
  return builder


def _builder(source: str, data_dir, archive_dir):
  scheme, arg = parse_source(source)
  data_dir = pathlib.Path(data_dir or DEFAULT_DATA_DIR).expanduser()
  if scheme == 'tfds':
    return _tfds_builder(arg, data_dir)
  if scheme == NAMED:
    return _named_builder(arg, data_dir, archive_dir)
  return _local_builder(scheme, arg, data_dir)


def info(source: str, *, data_dir: str | os.PathLike | None = None,
         archive_dir: str | os.PathLike | None = None) -> DatasetInfo:
  """Describes `source` (materialising a named or local source on first use).

  Args:
    source: a dataset name (`'cifar10'`, ...), `'tfds:NAME'`, `'folder:PATH'`,
      `'idx:PATH'` or `'npz:PATH'`.
    data_dir: where TFDS data is prepared and named and local sources are
      materialised; default `~/.cache/jaxflowaug/tfds`.
    archive_dir: a folder holding official archives of named sources put there by
      hand, used instead of downloading them; None or '' = download.
  """
  builder = _builder(source, data_dir, archive_dir)
  label = builder.info.features['label']
  scheme, arg = parse_source(source)
  return DatasetInfo(
      name=(arg if scheme in ('tfds', NAMED)
            else _slug(pathlib.Path(arg).expanduser().resolve())),
      num_classes=label.num_classes, class_names=tuple(label.names),
      image_shape=tuple(builder.info.features['image'].shape),
      splits={s: v.num_examples for s, v in builder.info.splits.items()})


def load(source: str, split: str, *, data_dir: str | os.PathLike | None = None,
         archive_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Loads one (possibly sliced) split of `source` into memory.

  Args:
    source: a dataset name (`'cifar10'`, ...), `'tfds:NAME'`, `'folder:PATH'`,
      `'idx:PATH'` or `'npz:PATH'`.
    split: a TFDS split spec: `'train'`, `'train[:90%]'`, `'train[45000:]'`,
      `'train[:1000]'`, `'train+test'`, ...
    data_dir: where TFDS data is prepared and named and local sources are
      materialised; default `~/.cache/jaxflowaug/tfds`.
    archive_dir: as for `info`.

  Returns:
    images: uint8 `(N, H, W, C)`, in the source's record order.
    labels: int32 `(N,)` in `[0, num_classes)`.

  Raises:
    FileNotFoundError: a missing path, a TFDS dataset that is not prepared, or an
      archive of a named source that cannot be downloaded (see `download`).
    ValueError: an unknown scheme or dataset name, bad data (see `readers`), an archive
      with the wrong checksum, an unwritable `data_dir`, a damaged prepared `tfds:`
      dataset, or a split that does not exist, is malformed, runs past its split or
      selects nothing.
  """
  builder = _builder(source, data_dir, archive_dir)
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
  except _DAMAGE as e:
    raise _damaged(builder.data_dir, e) from None
  shape = tuple(builder.info.features['image'].shape)
  images = np.empty((len(records),) + shape, np.uint8)
  labels = np.empty((len(records),), np.int32)
  try:
    for start in range(0, len(records), _CHUNK):
      chunk = records.__getitems__(
          list(range(start, min(start + _CHUNK, len(records)))))
      images[start:start + len(chunk)] = np.stack([r['image'] for r in chunk])
      labels[start:start + len(chunk)] = [r['label'] for r in chunk]
  except _DAMAGE as e:
    raise _damaged(builder.data_dir, e) from None
  return images, labels
