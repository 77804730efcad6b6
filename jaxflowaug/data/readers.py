"""Readers that turn local image data into in-memory uint8 arrays.

Each reader returns a `LocalData`: for every split an `(images, labels)` pair, images
uint8 `(N, H, W, C)` and labels int32 `(N,)` in `[0, len(class_names))`, plus the class
names. Three layouts are read:

- `read_folder(path)`: a class-per-subfolder image tree, as a directory or a `.tar`,
  `.tar.gz` or `.tar.xz` archive, laid out as `<class>/<image>` (one split, `'train'`)
  or `<split>/<class>/<image>`. Classes are sorted by name, which is the canonical
  label order of every known dataset with folder-safe class names (CIFAR-10, CIFAR-100,
  the digit datasets); images within a class are in natural file-name order (`2.jpg`
  before `10.jpg`), which keeps CIFAR-10's original order in the published tar.
- `read_idx(path)`: a directory of MNIST-format IDX files (`train-images-idx3-ubyte`,
  `train-labels-idx1-ubyte`, `t10k-...` for split `'test'`; optionally `.gz`).
- `read_npz(path)`: a `.npz` with `x_<split>` / `y_<split>` pairs, or `images` /
  `labels` (one split, `'train'`), and optionally `class_names`.

`read_cifar_binary` and `read_svhn_mat` parse the official CIFAR binary archives and SVHN
`.mat` files that `download` fetches.

For sources with integer labels (IDX, npz) the class names come from `class_names` in
the file, else from a known dataset whose name the path's last component starts with
(e.g. `fashion-mnist/` gives Fashion-MNIST's names), else `'0'`, `'1'`, ...
"""
import dataclasses
import gzip
import io
import os
import pathlib
import re
import tarfile

import numpy as np
import scipy.io
from PIL import Image

_DIGITS = tuple(str(i) for i in range(10))

# Class names in label order of the datasets known by name (TFDS names).
KNOWN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    'cifar10': ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                'horse', 'ship', 'truck'),
    'cifar100': (
        'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle',
        'bicycle', 'bottle', 'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel',
        'can', 'castle', 'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock',
        'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur',
        'dolphin', 'elephant', 'flatfish', 'forest', 'fox', 'girl', 'hamster',
        'house', 'kangaroo', 'keyboard', 'lamp', 'lawn_mower', 'leopard', 'lion',
        'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain', 'mouse',
        'mushroom', 'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree', 'pear',
        'pickup_truck', 'pine_tree', 'plain', 'plate', 'poppy', 'porcupine',
        'possum', 'rabbit', 'raccoon', 'ray', 'road', 'rocket', 'rose', 'sea',
        'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake', 'spider',
        'squirrel', 'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank',
        'telephone', 'television', 'tiger', 'tractor', 'train', 'trout', 'tulip',
        'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf', 'woman', 'worm'),
    'svhn_cropped': _DIGITS,
    'mnist': _DIGITS,
    'fashion_mnist': ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                      'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'),
}

# Spellings of known names in file names (after lower-casing and '-' -> '_').
_ALIASES = {'cifar10': 'cifar10', 'cifar_10': 'cifar10', 'cifar100': 'cifar100',
            'cifar_100': 'cifar100', 'svhn': 'svhn_cropped',
            'svhn_cropped': 'svhn_cropped', 'mnist': 'mnist',
            'fashion_mnist': 'fashion_mnist'}

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff',
                    '.ppm', '.pgm')
_GREY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')
_IDX_PREFIX = {'train': 'train', 'test': 't10k'}


@dataclasses.dataclass(frozen=True)
class LocalData:
  """Every split of a local source in memory.

  Attributes:
    splits: split name -> (images uint8 (N, H, W, C), labels int32 (N,)).
    class_names: names of the labels 0..K-1.
  """
  splits: dict[str, tuple[np.ndarray, np.ndarray]]
  class_names: tuple[str, ...]


def known_dataset_from_name(name: str) -> str | None:
  """The known dataset a file or folder name starts with (longest match), or None.

  `'fashion-mnist'` -> `'fashion_mnist'`, `'cifar10-jpeg-train.tar.xz'` -> `'cifar10'`,
  `'cifar100_x.npz'` -> `'cifar100'`; a match must end at a non-alphanumeric character.
  """
  norm = name.lower().replace('-', '_')
  matches = [alias for alias in _ALIASES
             if norm == alias or (norm.startswith(alias)
                                  and not norm[len(alias)].isalnum())]
  return _ALIASES[max(matches, key=len)] if matches else None


def _natural_key(name: str) -> tuple:
  """Sort key ordering digit runs by value: 'img2' < 'img10'."""
  return tuple((0, int(t), '') if t.isdigit() else (1, 0, t)
               for t in re.split(r'(\d+)', name))


def _decode(data: bytes, name: str) -> np.ndarray:
  """Decodes one image file to uint8 (H, W, 1) for grey modes, else (H, W, 3)."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image = image.convert('L' if image.mode in _GREY_MODES else 'RGB')
      array = np.asarray(image, dtype=np.uint8)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(
        f'cannot decode image file {name!r} ({e}); remove or replace the corrupt '
        'file') from None
  return array[..., None] if array.ndim == 2 else array


def walk(root: pathlib.Path):
  """`os.walk(root)` in sorted order, following symlinked folders but not link loops.

  A folder that resolves to one of its own ancestors (a link back up the tree) is
  skipped; a folder linked from two places is read twice.
  """
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames
                         if not _links_to_ancestor(pathlib.Path(dirpath) / d, root))
    yield dirpath, dirnames, sorted(filenames)


def _links_to_ancestor(path: pathlib.Path, root: pathlib.Path) -> bool:
  """Whether `path` resolves to the real path of a folder from `root` down to its parent."""
  real = os.path.realpath(path)
  return any(os.path.realpath(root / parent) == real
             for parent in path.relative_to(root).parents)


def _folder_entries(root: pathlib.Path):
  """Yields (relative parts, bytes or None for a directory) for a directory tree."""
  for dirpath, dirnames, filenames in walk(root):
    rel = pathlib.Path(dirpath).relative_to(root).parts
    for d in dirnames:
      yield rel + (d,), None
    for f in filenames:
      if f.lower().endswith(IMAGE_EXTENSIONS):
        yield rel + (f,), (pathlib.Path(dirpath) / f).read_bytes()


def _tar_entries(path: pathlib.Path, suffixes: tuple[str, ...] = IMAGE_EXTENSIONS):
  """Yields (relative parts, bytes or None for a directory) for a tar archive.

  Only files whose lower-cased names end with one of `suffixes` are read. The archive
  is streamed once (`r|*`), so compressed archives are never re-read.
  """
  try:
    with tarfile.open(path, 'r|*') as tar:
      for member in tar:
        parts = tuple(p for p in member.name.split('/') if p not in ('', '.'))
        if member.isdir():
          yield parts, None
        elif member.isfile() and member.name.lower().endswith(suffixes):
          yield parts, tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ValueError(f'cannot read tar archive {str(path)!r} ({e}); check that it '
                     'is a complete .tar/.tar.gz/.tar.xz file') from None


def read_folder(path: pathlib.Path) -> LocalData:
  """Reads a class-per-subfolder image tree from a directory or a tar archive.

  Grey images give C = 1; if any image is colour, all are RGB (grey ones repeated).

  Raises:
    ValueError: no images, a layout that is neither `<class>/<image>` nor
      `<split>/<class>/<image>`, an empty class folder, an undecodable image (named),
      or images of different heights/widths (named).
  """
  entries = _folder_entries(path) if path.is_dir() else _tar_entries(path)
  files, dirs = [], []
  for parts, data in entries:
    (dirs if data is None else files).append((parts, data))
  depths = {len(parts) for parts, _ in files}
  if not depths:
    raise ValueError(
        f'no image files ({", ".join(IMAGE_EXTENSIONS)}) found in {str(path)!r}; '
        'expected <class>/<image> or <split>/<class>/<image>')
  if len(depths) > 1 or depths - {2, 3}:
    raise ValueError(
        f'image files in {str(path)!r} sit at folder depths {sorted(depths)}; '
        'expected all at <class>/<image> or all at <split>/<class>/<image>')
  depth = depths.pop()

  def split_class(parts):
    return ('train',) + parts[:1] if depth == 2 else parts[:2]

  tree: dict[str, dict[str, list]] = {}
  for parts, _ in dirs:
    if len(parts) == depth - 1:
      split, cls = split_class(parts)
      tree.setdefault(split, {}).setdefault(cls, [])
  for parts, data in files:
    split, cls = split_class(parts)
    tree.setdefault(split, {}).setdefault(cls, []).append(('/'.join(parts), data))
  for split, classes in tree.items():
    for cls, items in classes.items():
      if not items:
        folder = cls if depth == 2 else f'{split}/{cls}'
        raise ValueError(f'class folder {folder!r} in {str(path)!r} holds no image '
                         'files; add images or remove the folder')
  class_names = tuple(sorted({c for classes in tree.values() for c in classes}))
  label_of = {c: i for i, c in enumerate(class_names)}

  decoded = {}
  for split, classes in tree.items():
    images, labels = [], []
    for cls in sorted(classes, key=label_of.get):
      for name, data in sorted(classes[cls], key=lambda item: _natural_key(item[0])):
        images.append((name, _decode(data, name)))
        labels.append(label_of[cls])
    decoded[split] = (images, np.asarray(labels, np.int32))
  first_name, first = next(iter(decoded.values()))[0][0]
  channels = 1
  for images, _ in decoded.values():
    for name, image in images:
      if image.shape[:2] != first.shape[:2]:
        raise ValueError(
            f'mixed image sizes in {str(path)!r}: {name!r} is '
            f'{image.shape[0]}x{image.shape[1]} but {first_name!r} is '
            f'{first.shape[0]}x{first.shape[1]}; resize all images to one size')
      channels = max(channels, image.shape[2])
  splits = {split: (np.stack([np.broadcast_to(im, im.shape[:2] + (channels,))
                              for _, im in images]), labels)
            for split, (images, labels) in decoded.items()}
  return LocalData(splits=splits, class_names=class_names)


def _read_idx_file(path: pathlib.Path) -> np.ndarray:
  """Parses one IDX file of unsigned bytes: magic (0, 0, 0x08, ndim), dims, data."""
  with (gzip.open if path.suffix == '.gz' else open)(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise ValueError(f'{str(path)!r} is not an unsigned-byte IDX file (bad magic '
                     f'number {data[:4].hex()}); expected MNIST-format IDX files')
  ndim = data[3]
  shape = tuple(int(d) for d in np.frombuffer(data, '>u4', ndim, offset=4))
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(shape)):
    raise ValueError(f'{str(path)!r} holds {body.size} values but its header says '
                     f'shape {shape}; the file is truncated or corrupt')
  return body.reshape(shape)


def read_cifar_binary(path: pathlib.Path, files: dict[str, tuple[str, ...]],
                      label_bytes: int, class_names: tuple[str, ...]) -> LocalData:
  """Reads an official CIFAR binary archive (`cifar-10-binary.tar.gz` and the like).

  Each `.bin` member holds records of `label_bytes` label bytes (CIFAR-10: the label;
  CIFAR-100: coarse then fine, of which the last, fine, is kept) followed by 3072 image
  bytes: the 32x32 red plane, then green, then blue, each row-major.

  Args:
    path: the archive.
    files: split -> member file names (without folders) in record order, e.g.
      `{'train': ('data_batch_1.bin', ...), 'test': ('test_batch.bin',)}`.
    label_bytes: label bytes per record (1 or 2).
    class_names: names of the labels.

  Raises:
    ValueError: a member missing, or one whose size is not a whole number of records.
  """
  record = label_bytes + 3 * 32 * 32
  found = {parts[-1]: data for parts, data in _tar_entries(path, ('.bin',))
           if data is not None}
  splits = {}
  for split, names in files.items():
    missing = [n for n in names if n not in found]
    if missing:
      raise ValueError(f'{str(path)!r} lacks {", ".join(missing)}; it is not the '
                       'official CIFAR binary archive')
    rows = []
    for name in names:
      if len(found[name]) % record:
        raise ValueError(f'{name} in {str(path)!r} holds {len(found[name])} bytes, not '
                         f'a whole number of {record}-byte records; the file is corrupt')
      rows.append(np.frombuffer(found[name], np.uint8).reshape(-1, record))
    rows = np.concatenate(rows)
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    splits[split] = _check_arrays(np.ascontiguousarray(images),
                                  rows[:, label_bytes - 1], f'{path}:{split}')
  return LocalData(splits, _integer_class_names(splits, class_names, path))


def read_svhn_mat(paths: dict[str, pathlib.Path]) -> LocalData:
  """Reads the official SVHN cropped-digit files (`train_32x32.mat`, ...).

  Each holds `X` uint8 (32, 32, 3, N) and `y` (N, 1) with labels 1..10, 10 meaning
  the digit 0; the images become (N, 32, 32, 3) and label 10 becomes 0.

  Args:
    paths: split -> `.mat` file.
  """
  splits = {}
  for split, path in paths.items():
    try:
      mat = scipy.io.loadmat(path, variable_names=('X', 'y'))
      images, labels = np.moveaxis(mat['X'], 3, 0), mat['y'].astype(np.int64)
    except (OSError, ValueError, KeyError) as e:
      raise ValueError(f'cannot read {str(path)!r} as an SVHN .mat file with X and y '
                       f'({e})') from None
    splits[split] = _check_arrays(np.ascontiguousarray(images), labels % 10, str(path))
  return LocalData(splits, KNOWN_CLASS_NAMES['svhn_cropped'])


def _find_idx(root: pathlib.Path, stem: str) -> pathlib.Path | None:
  for candidate in (root / f'{stem}.gz', root / stem):
    if candidate.is_file():
      return candidate
  return None


def read_idx_split(images_path: pathlib.Path, labels_path: pathlib.Path
                   ) -> tuple[np.ndarray, np.ndarray]:
  """One split from an IDX images file and its labels file: uint8 (N, H, W, 1), int32 (N,)."""
  return _check_arrays(_read_idx_file(images_path), _read_idx_file(labels_path),
                       str(images_path))


def read_idx(path: pathlib.Path) -> LocalData:
  """Reads the MNIST-format IDX files of a directory (splits 'train' and 'test').

  Raises:
    FileNotFoundError: no `{train,t10k}-images-idx3-ubyte[.gz]` in `path`, or an
      images file without its labels file.
    ValueError: malformed files or different image and label counts.
  """
  if not path.is_dir():
    raise FileNotFoundError(f'idx source {str(path)!r} must be a directory holding '
                            'train-images-idx3-ubyte.gz etc.')
  splits = {}
  for split, prefix in _IDX_PREFIX.items():
    images_path = _find_idx(path, f'{prefix}-images-idx3-ubyte')
    if images_path is None:
      continue
    labels_path = _find_idx(path, f'{prefix}-labels-idx1-ubyte')
    if labels_path is None:
      raise FileNotFoundError(f'{str(images_path)!r} has no labels file '
                              f'{prefix}-labels-idx1-ubyte[.gz] next to it')
    splits[split] = read_idx_split(images_path, labels_path)
  if not splits:
    raise FileNotFoundError(
        f'no IDX files in {str(path)!r}: expected train-images-idx3-ubyte[.gz] / '
        'train-labels-idx1-ubyte[.gz] and/or t10k-images-idx3-ubyte[.gz] / '
        't10k-labels-idx1-ubyte[.gz]')
  return LocalData(splits, _integer_class_names(splits, None, path))


def read_npz(path: pathlib.Path) -> LocalData:
  """Reads `x_<split>`/`y_<split>` (or `images`/`labels`) arrays from a .npz file.

  Raises:
    ValueError: no usable key pair, non-uint8 images, bad shapes, or labels outside
      `class_names`.
  """
  try:
    npz = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read {str(path)!r} as a .npz file ({e})') from None
  with npz:
    keys = set(npz.files)
    if {'images', 'labels'} <= keys:
      pairs = {'train': ('images', 'labels')}
    else:
      pairs = {k[2:]: (k, 'y_' + k[2:]) for k in keys
               if k.startswith('x_') and 'y_' + k[2:] in keys}
    if not pairs:
      raise ValueError(f'{str(path)!r} has arrays {sorted(keys)}; expected '
                       "'x_<split>' with 'y_<split>', or 'images' with 'labels'")
    splits = {split: _check_arrays(npz[x], npz[y], f'{path}:{x}')
              for split, (x, y) in sorted(pairs.items())}
    names = tuple(str(n) for n in npz['class_names']) if 'class_names' in keys else None
  return LocalData(splits, _integer_class_names(splits, names, path))


def _check_arrays(images, labels, where: str) -> tuple[np.ndarray, np.ndarray]:
  """Validates one split: images uint8 (N,H,W[,C]) -> (N,H,W,C); labels -> int32 (N,)."""
  if images.dtype != np.uint8:
    raise ValueError(f'images in {where} have dtype {images.dtype}; expected uint8 '
                     'in [0, 255] (for floats in [0, 1] store '
                     '(x * 255).round().astype(np.uint8))')
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f'images in {where} have shape {images.shape}; expected '
                     '(N, H, W) or (N, H, W, C)')
  if images.shape[1] in (1, 3, 4) and images.shape[3] not in (1, 3, 4):
    raise ValueError(
        f'images in {where} have shape {images.shape}, which looks channels-first '
        '(N, C, H, W); jaxflowaug expects channels-last (N, H, W, C): store '
        'np.transpose(images, (0, 2, 3, 1))')
  labels = np.asarray(labels)
  if labels.ndim == 2 and labels.shape[1] == 1:
    labels = labels[:, 0]
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels for {where} have shape {labels.shape} and dtype '
                     f'{labels.dtype}; expected integers of shape (N,)')
  if not len(images):
    raise ValueError(f'{where} holds no images; drop the empty split')
  if len(labels) != len(images):
    raise ValueError(f'{where} has {len(images)} images but {len(labels)} labels; '
                     'they must match one to one')
  if len(labels) and labels.min() < 0:
    raise ValueError(f'labels for {where} include {labels.min()}; class labels must '
                     'be non-negative integers')
  return images, labels.astype(np.int32)


def _integer_class_names(splits, names, path: pathlib.Path) -> tuple[str, ...]:
  """Class names for integer labels; checks every label indexes into them."""
  top = max(int(labels.max()) for _, labels in splits.values())
  if names is None:
    known = known_dataset_from_name(path.name)
    names = (KNOWN_CLASS_NAMES[known] if known
             else tuple(str(i) for i in range(top + 1)))
  if top >= len(names):
    raise ValueError(
        f'labels in {str(path)!r} go up to {top}, out of range for its class list of '
        f'{len(names)} names ({", ".join(names[:3])}, ...); fix the labels or the '
        'class list (class_names in the .npz, or the dataset name in the path)')
  return names
