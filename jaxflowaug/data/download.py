"""Datasets by name: the official archives, fetched once, checked, then parsed.

`DATASETS` maps a source name (`'cifar10'`, `'cifar100'`, `'svhn'`, `'mnist'`,
`'fashion_mnist'`) to the files torchvision and TFDS read: the CIFAR *binary* archives
(nothing is unpickled), SVHN's cropped-digit `train_32x32.mat` / `test_32x32.mat` (the
optional `extra` split is not fetched), and the MNIST / Fashion-MNIST IDX `.gz` files.

`read(name, downloads, archive_dir)` parses the dataset from a local copy of each
file, which `fetch` finds or makes:

1. a file of that name in `archive_dir` (put there by hand on an offline machine) if
   its checksum is the published one, else a ValueError naming it;
2. else a verified earlier download in `downloads`;
3. else it downloads `<base URL>/<file name>` into `downloads` with a progress bar, a
   short timeout and no retries. An interrupted download is kept as `<file>.part` and
   resumed (HTTP Range) by the next call; a download with the wrong checksum is deleted.

The base URL is the official one, or `$JAXFLOWAUG_DATA_MIRROR` (any `http://`,
`https://` or `file://` folder holding the files under their official names) when set.
"""
import dataclasses
import gzip
import hashlib
import http.client
import os
import pathlib
import urllib.error
import urllib.request
from collections.abc import Callable

import tqdm

from jaxflowaug.data import readers

MIRROR_ENV = 'JAXFLOWAUG_DATA_MIRROR'
TIMEOUT_S = 10.0  # Seconds to connect, and the longest stall while reading.
_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True)
class Archive:
  """One official file.

  Attributes:
    filename: its official name.
    md5: the published md5 of the file.
    raw_md5: for a `.gz` file, the published md5 of its decompressed content (also
      accepted: some distributions, e.g. Debian's, gzip the same content anew), or ''.
  """
  filename: str
  md5: str
  raw_md5: str = ''


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset known by name.

  Attributes:
    url: the official folder of its files.
    archives: its files.
    read: turns {file name: local path} into `readers.LocalData`.
  """
  url: str
  archives: tuple[Archive, ...]
  read: Callable[[dict[str, pathlib.Path]], readers.LocalData]


def _idx_archives(md5s) -> tuple[Archive, ...]:
  """The `.gz` archives of (IDX file name, md5 of the .gz, md5 of the content) triples."""
  return tuple(Archive(f'{stem}.gz', md5, raw_md5) for stem, md5, raw_md5 in md5s)


def _read_idx_files(paths: dict[str, pathlib.Path], class_names) -> readers.LocalData:
  """The train and test splits of the four MNIST-format IDX files in `paths`."""
  splits = {split: readers.read_idx_split(paths[f'{prefix}-images-idx3-ubyte.gz'],
                                          paths[f'{prefix}-labels-idx1-ubyte.gz'])
            for split, prefix in (('train', 'train'), ('test', 't10k'))}
  return readers.LocalData(splits, class_names)


def _cifar(name: str, archive: Archive, files, label_bytes: int) -> Dataset:
  """A CIFAR binary archive of `files` (see `readers.read_cifar_binary`)."""
  return Dataset('https://www.cs.toronto.edu/~kriz', (archive,),
                 lambda paths: readers.read_cifar_binary(
                     paths[archive.filename], files, label_bytes,
                     readers.KNOWN_CLASS_NAMES[name]))


_CIFAR10_FILES = {'train': tuple(f'data_batch_{i}.bin' for i in range(1, 6)),
                  'test': ('test_batch.bin',)}
_CIFAR100_FILES = {'train': ('train.bin',), 'test': ('test.bin',)}

# md5s: CIFAR from https://www.cs.toronto.edu/~kriz/cifar.html; SVHN, MNIST and
# Fashion-MNIST from torchvision's datasets/svhn.py and datasets/mnist.py (the raw_md5s
# of the decompressed IDX files from the `raw_data` lists of older torchvision versions).
DATASETS: dict[str, Dataset] = {
    'cifar10': _cifar('cifar10', Archive('cifar-10-binary.tar.gz',
                                         'c32a1d4ab5d03f1284b67883e8d87530'),
                      _CIFAR10_FILES, 1),
    'cifar100': _cifar('cifar100', Archive('cifar-100-binary.tar.gz',
                                           '03b5dce01913d631647c71ecec9e9cb8'),
                       _CIFAR100_FILES, 2),
    'svhn': Dataset(
        'http://ufldl.stanford.edu/housenumbers',
        (Archive('train_32x32.mat', 'e26dedcc434d2e4c54c9b2d4a06d8373'),
         Archive('test_32x32.mat', 'eb5a983be6a315427106f1b164d9cef3')),
        lambda paths: readers.read_svhn_mat({'train': paths['train_32x32.mat'],
                                             'test': paths['test_32x32.mat']})),
    'mnist': Dataset(
        'https://ossci-datasets.s3.amazonaws.com/mnist',
        _idx_archives((
            ('train-images-idx3-ubyte', 'f68b3c2dcbeaaa9fbdd348bbdeb94873',
             '6bbc9ace898e44ae57da46a324031adb'),
            ('train-labels-idx1-ubyte', 'd53e105ee54ea40749a09fcbcd1e9432',
             'a25bea736e30d166cdddb491f175f624'),
            ('t10k-images-idx3-ubyte', '9fb629c4189551a2d022fa330f9573f3',
             '2646ac647ad5339dbf082846283269ea'),
            ('t10k-labels-idx1-ubyte', 'ec29112dd5afa0611ce80d1b7f02629c',
             '27ae3e4e09519cfbb04c329615203637'))),
        lambda paths: _read_idx_files(paths, readers.KNOWN_CLASS_NAMES['mnist'])),
    'fashion_mnist': Dataset(
        'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com',
        _idx_archives((
            ('train-images-idx3-ubyte', '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
             'f4a8712d7a061bf5bd6d2ca38dc4d50a'),
            ('train-labels-idx1-ubyte', '25c81989df183df01b3e8a0aad5dffbe',
             '9018921c3c673c538a1fc5bad174d6f9'),
            ('t10k-images-idx3-ubyte', 'bef4ecab320f06d8554ea6380940ec79',
             '8181f5470baa50b63fa0f6fddb340f0a'),
            ('t10k-labels-idx1-ubyte', 'bb300cfdad3c16e7a12a480ee83cd310',
             '15d484375f8d13e6eb1aabb0c3f46965'))),
        lambda paths: _read_idx_files(paths, readers.KNOWN_CLASS_NAMES['fashion_mnist'])),
}


def url(name: str, archive: Archive) -> str:
  """Where `archive` of dataset `name` is downloaded from ($JAXFLOWAUG_DATA_MIRROR first)."""
  base = os.environ.get(MIRROR_ENV) or DATASETS[name].url
  return f'{base.rstrip("/")}/{archive.filename}'


def _md5(path: pathlib.Path, gunzip: bool = False) -> str:
  digest = hashlib.md5()
  with (gzip.open if gunzip else open)(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def verified(path: pathlib.Path, archive: Archive) -> bool:
  """Whether `path` has the published md5 of `archive` (or of its decompressed content)."""
  if _md5(path) == archive.md5:
    return True
  try:
    return bool(archive.raw_md5) and _md5(path, gunzip=True) == archive.raw_md5
  except (OSError, EOFError):  # Not gzip, or a truncated one.
    return False


def _where_to_put(name: str, archive: Archive, archive_dir) -> str:
  return (f'Download {url(name, archive)} (md5 {archive.md5}) on a machine with '
          f'internet and put it in a folder named by data.archive_dir (now '
          f'{str(archive_dir)!r}), e.g. --config.data.archive_dir=~/datasets/{name}; it is '
          'then used instead of a download, and only once: later runs read the '
          'materialised copy in data.data_dir.')


def _download(name: str, archive: Archive, target: pathlib.Path, archive_dir) -> None:
  """Downloads `archive` to `target`, resuming `target.part` when a server allows it.

  Raises:
    FileNotFoundError: the server cannot be reached or refuses the file (the message
      says where to get it and where to put it), or the transfer stopped (the partial
      file is kept for the next call to resume).
  """
  source = url(name, archive)
  part = target.with_name(target.name + '.part')
  start = part.stat().st_size if part.is_file() else 0
  headers = {'Range': f'bytes={start}-'} if start else {}
  try:
    response = urllib.request.urlopen(urllib.request.Request(source, headers=headers),
                                      timeout=TIMEOUT_S)
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    reason = getattr(e, 'reason', e)
    raise FileNotFoundError(
        f'cannot download {archive.filename} of dataset {name!r} from {source} '
        f'({reason}). {_where_to_put(name, archive, archive_dir)}') from None
  with response:
    if getattr(response, 'status', None) != 206:
      start = 0  # The server sent the whole file.
    length = response.headers.get('Content-Length')
    total = start + int(length) if length else None
    with open(part, 'ab' if start else 'wb') as f, tqdm.tqdm(
        total=total, initial=start, unit='B', unit_scale=True, desc=archive.filename) as bar:
      try:
        for chunk in iter(lambda: response.read(_CHUNK), b''):
          f.write(chunk)
          bar.update(len(chunk))
      except (OSError, http.client.HTTPException) as e:
        bar.write(f'{archive.filename}: {e!r}')
  size = part.stat().st_size
  if total is not None and size < total:
    raise FileNotFoundError(
        f'the download of {archive.filename} from {source} stopped after {size} of '
        f'{total} bytes; the partial file {str(part)!r} is kept and the next run resumes '
        f'it. {_where_to_put(name, archive, archive_dir)}')
  part.replace(target)


def fetch(name: str, archive: Archive, downloads: pathlib.Path, archive_dir) -> pathlib.Path:
  """The local, verified copy of `archive` (see the module docstring for the order).

  Raises:
    FileNotFoundError: the file is not in `archive_dir` and cannot be downloaded.
    ValueError: the file in `archive_dir`, or the download, has another checksum (a
      download is deleted first).
  """
  if archive_dir:
    manual = pathlib.Path(archive_dir).expanduser() / archive.filename
    if manual.is_file():
      if not verified(manual, archive):
        raise ValueError(
            f'{str(manual)!r} (in data.archive_dir) is not the official '
            f'{archive.filename}: its md5 is {_md5(manual)}, not {archive.md5}; it is '
            f'truncated, corrupt or another file. Replace it with {url(name, archive)}.')
      return manual
  target = downloads / archive.filename
  if not (target.is_file() and verified(target, archive)):
    downloads.mkdir(parents=True, exist_ok=True)
    _download(name, archive, target, archive_dir)
    if not verified(target, archive):
      md5 = _md5(target)
      target.unlink()
      raise ValueError(
          f'the download of {archive.filename} from {url(name, archive)} has md5 {md5}, '
          f'not the published {archive.md5}, and was deleted; run again to download it '
          'anew, or check the mirror (a proxy page or a changed file).')
  return target


def read(name: str, downloads: pathlib.Path, archive_dir) -> readers.LocalData:
  """Fetches every file of dataset `name` and parses them (all splits in memory)."""
  dataset = DATASETS[name]
  return dataset.read({a.filename: fetch(name, a, downloads, archive_dir)
                       for a in dataset.archives})
