"""Tests for jaxflowaug.data: real sources, tiny fixtures, slicing, subsets, batching."""
import gzip
import io
import os
import pathlib
import tarfile
import time

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxflowaug import data
from jaxflowaug.data import batching
from jaxflowaug.data import store
from shared_data import CIFAR_TAR, FASHION_DIR, needs_cifar, needs_fashion

FASHION = f'idx:{FASHION_DIR}'
CIFAR = f'folder:{CIFAR_TAR}'


@pytest.fixture(scope='session')
def real_dir(tmp_path_factory):
  """One data_dir for the real datasets, so each is materialised once per session."""
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='session')
def cifar(real_dir):
  start = time.perf_counter()
  images, labels = data.load(CIFAR, 'train', data_dir=real_dir)
  print(f'CIFAR-10 tar materialise + load: {time.perf_counter() - start:.1f}s')
  return images, labels


# ---------------------------------------------------------------- real data


@pytest.mark.slow  # reads the real data set
@needs_fashion
def test_fashion_mnist_idx(real_dir):
  info = data.info(FASHION, data_dir=real_dir)
  assert info.splits == {'train': 60000, 'test': 10000}
  assert info.image_shape == (28, 28, 1) and info.num_classes == 10
  assert info.class_names == data.KNOWN_CLASS_NAMES['fashion_mnist']
  images, labels = data.load(FASHION, 'train', data_dir=real_dir)
  assert images.shape == (60000, 28, 28, 1) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  assert abs(images.mean() - 72.94) < 0.01
  np.testing.assert_array_equal(np.bincount(labels), [6000] * 10)
  test_images, _ = data.load(FASHION, 'test', data_dir=real_dir)
  assert test_images.shape == (10000, 28, 28, 1)


@pytest.mark.slow  # reads the real data set
@needs_cifar
def test_cifar10_tar_in_label_and_file_order(cifar, real_dir):
  images, labels = cifar
  assert images.shape == (50000, 32, 32, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 5000))
  assert data.info(CIFAR, data_dir=real_dir).class_names == (
      'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse',
      'ship', 'truck')
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), [125.3, 122.9, 113.9],
                             atol=0.1)
  # The first members of the archive, decoded directly, in file-number order.
  want = {}
  with tarfile.open(CIFAR_TAR, 'r|*') as tar:
    for member in tar:
      if member.name in ('train/airplane/0000.jpg', 'train/airplane/0011.jpg'):
        want[member.name] = np.asarray(Image.open(io.BytesIO(
            tar.extractfile(member).read())).convert('RGB'))
      if len(want) == 2:
        break
  np.testing.assert_array_equal(images[0], want['train/airplane/0000.jpg'])
  np.testing.assert_array_equal(images[11], want['train/airplane/0011.jpg'])


@needs_cifar
def test_second_load_comes_from_the_materialised_cache(cifar, real_dir, monkeypatch):
  def fail(path):
    raise AssertionError(f'source re-read: {path}')
  monkeypatch.setitem(store._READERS, 'folder', fail)
  start = time.perf_counter()
  images, labels = data.load(CIFAR, 'train[:2000]', data_dir=real_dir)
  assert time.perf_counter() - start < 10.0
  np.testing.assert_array_equal(images, cifar[0][:2000])
  np.testing.assert_array_equal(labels, cifar[1][:2000])


# ---------------------------------------------------------------- tiny fixtures


def _png(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def _pixel(i: int, size=(4, 4), channels=3) -> np.ndarray:
  """An image whose every value is i, identifying it after a round trip."""
  return np.full(size + ((channels,) if channels > 1 else ()), i, np.uint8)


def _tree(root: pathlib.Path) -> pathlib.Path:
  """train/{b,a}/ and test/{a,b}/ with file names needing natural order."""
  for split, offset in (('train', 0), ('test', 100)):
    for cls, names in (('b', ('10', '2', '1')), ('a', ('3', '20'))):
      for name in names:
        _png(root / split / cls / f'img{name}.png',
             _pixel(offset + int(name) + (50 if cls == 'b' else 0)))
  return root


def _tar(root: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  with tarfile.open(out, 'w:xz') as tar:
    for path in sorted(root.rglob('*')):
      tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
  return out


def _npz(path: pathlib.Path, n=100, m=20, **extra) -> pathlib.Path:
  """x_train[i] == i and x_test[i] == 200 + i everywhere; labels i % 4."""
  def images(values):
    return np.broadcast_to(values.astype(np.uint8)[:, None, None, None],
                           (len(values), 2, 2, 1))
  np.savez(path, x_train=images(np.arange(n)), y_train=np.arange(n) % 4,
           x_test=images(200 + np.arange(m)), y_test=np.arange(m) % 4, **extra)
  return path


def _idx(path: pathlib.Path, array: np.ndarray, magic=0x08) -> None:
  header = bytes([0, 0, magic, array.ndim]) + np.asarray(array.shape, '>u4').tobytes()
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize('as_tar', [False, True])
def test_folder_layout_order_and_splits(tmp_path, as_tar):
  root = _tree(tmp_path / 'tree')
  source = f'folder:{_tar(root, tmp_path / "tree.tar.xz") if as_tar else root}'
  info = data.info(source, data_dir=tmp_path / 'dd')
  assert info.class_names == ('a', 'b')
  assert info.splits == {'train': 5, 'test': 5} and info.image_shape == (4, 4, 3)
  images, labels = data.load(source, 'train', data_dir=tmp_path / 'dd')
  np.testing.assert_array_equal(images[:, 0, 0, 0], [3, 20, 51, 52, 60])
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1])
  images, _ = data.load(source, 'test', data_dir=tmp_path / 'dd')
  np.testing.assert_array_equal(images[:, 0, 0, 0], [103, 120, 151, 152, 160])


def test_folder_without_split_level_is_train_and_grey_mixes_to_rgb(tmp_path):
  _png(tmp_path / 'f' / 'cat' / '0.png', _pixel(7, channels=1))
  _png(tmp_path / 'f' / 'dog' / '0.png', _pixel(9))
  images, labels = data.load(f'folder:{tmp_path / "f"}', 'train',
                             data_dir=tmp_path / 'dd')
  assert images.shape == (2, 4, 4, 3)
  np.testing.assert_array_equal(images[0], _pixel(7))
  np.testing.assert_array_equal(labels, [0, 1])


def test_idx_and_known_class_names(tmp_path):
  root = tmp_path / 'fashion-mnist'
  root.mkdir()
  _idx(root / 'train-images-idx3-ubyte.gz', np.arange(3 * 5 * 5).reshape(3, 5, 5))
  _idx(root / 'train-labels-idx1-ubyte.gz', np.array([9, 0, 3]))
  info = data.info(f'idx:{root}', data_dir=tmp_path / 'dd')
  assert info.class_names[9] == 'Ankle boot' and info.splits == {'train': 3}
  images, labels = data.load(f'idx:{root}', 'train', data_dir=tmp_path / 'dd')
  np.testing.assert_array_equal(images[..., 0], np.arange(75).reshape(3, 5, 5))
  np.testing.assert_array_equal(labels, [9, 0, 3])


def test_npz_both_layouts_and_class_names(tmp_path):
  source = f'npz:{_npz(tmp_path / "d.npz", class_names=np.array(list("wxyz")))}'
  info = data.info(source, data_dir=tmp_path / 'dd')
  assert info.class_names == ('w', 'x', 'y', 'z') and info.image_shape == (2, 2, 1)
  assert info.splits == {'train': 100, 'test': 20}
  np.savez(tmp_path / 'one.npz', images=np.full((3, 2, 2, 3), 9, np.uint8),
           labels=np.array([[0], [2], [1]]))
  images, labels = data.load(f'npz:{tmp_path / "one.npz"}', 'train',
                             data_dir=tmp_path / 'dd')
  assert images.shape == (3, 2, 2, 3)
  np.testing.assert_array_equal(labels, [0, 2, 1])


@pytest.mark.parametrize('split, want', [
    ('train[:90%]', np.arange(90)),
    ('train[45:]', np.arange(45, 100)),
    ('train[:10]', np.arange(10)),
    ('train[-10%:]', np.arange(90, 100)),
    ('train[:2]+test[:3]', np.array([0, 1, 200, 201, 202])),
])
def test_split_slicing(tmp_path, split, want):
  images, labels = data.load(f'npz:{_npz(tmp_path / "d.npz")}', split,
                             data_dir=tmp_path / 'dd')
  np.testing.assert_array_equal(images[:, 0, 0, 0], want)
  np.testing.assert_array_equal(labels, want % 100 % 4)


def test_sources_with_the_same_name_never_clash(tmp_path):
  (tmp_path / 'a').mkdir()
  (tmp_path / 'b').mkdir()
  one = data.load(f'npz:{_npz(tmp_path / "a" / "d.npz", n=10)}', 'train',
                  data_dir=tmp_path / 'dd')[0]
  two = data.load(f'npz:{_npz(tmp_path / "b" / "d.npz", n=12)}', 'train',
                  data_dir=tmp_path / 'dd')[0]
  assert (len(one), len(two)) == (10, 12)
  _npz(tmp_path / 'a' / 'd.npz', n=14)  # Edited in place: materialised again.
  assert len(data.load(f'npz:{tmp_path / "a" / "d.npz"}', 'train',
                       data_dir=tmp_path / 'dd')[0]) == 14


def test_tfds_reads_prepared_data_and_refuses_to_download(tmp_path):
  data.load(f'npz:{_npz(tmp_path / "d.npz")}', 'train', data_dir=tmp_path / 'dd')
  (prepared,) = (tmp_path / 'dd' / 'jaxflowaug_local').iterdir()
  source = f'tfds:jaxflowaug_local/{prepared.name}'
  assert data.info(source, data_dir=tmp_path / 'dd').splits == {'train': 100,
                                                                 'test': 20}
  images, _ = data.load(source, 'test[:5]', data_dir=tmp_path / 'dd')
  np.testing.assert_array_equal(images[:, 0, 0, 0], [200, 201, 202, 203, 204])
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError, match='tfds build cifar10'):
    data.load('tfds:cifar10', 'train', data_dir=tmp_path / 'empty')
  assert time.perf_counter() - start < 5.0


# ---------------------------------------------------------------- bad input


def _bad_folder(tmp_path, kind):
  root = tmp_path / 'bad'
  _png(root / 'a' / '0.png', _pixel(1))
  if kind == 'empty':
    (root / 'b').mkdir()
  elif kind == 'corrupt':
    (root / 'a' / 'broken.jpg').write_bytes(b'not a jpeg at all')
  elif kind == 'sizes':
    _png(root / 'b' / 'big.png', _pixel(1, size=(5, 4)))
  return root


@pytest.mark.parametrize('as_tar', [False, True])
@pytest.mark.parametrize('kind, error, match', [
    ('empty', ValueError, r"class folder 'b' .* holds no image files"),
    ('corrupt', ValueError, r"cannot decode image file '.*a/broken\.jpg'"),
    ('sizes', ValueError, r"mixed image sizes .*'.*b/big\.png' is 5x4"),
])
def test_bad_folders_raise(tmp_path, as_tar, kind, error, match):
  root = _bad_folder(tmp_path, kind)
  path = _tar(root, tmp_path / 'bad.tar.xz') if as_tar else root
  with pytest.raises(error, match=match):
    data.load(f'folder:{path}', 'train', data_dir=tmp_path / 'dd')


@pytest.mark.parametrize('source, error, match', [
    ('folder:{tmp}/missing', FileNotFoundError, 'does not exist'),
    ('idx:{tmp}', FileNotFoundError, 'no IDX files'),
    ('tfds:no_such_dataset', ValueError, "unknown TFDS dataset name 'no_such_dataset'"),
    ('hdf5:{tmp}/x.h5', ValueError, "source='hdf5:.*' is not understood"),
    ('cifar11', ValueError, "'cifar11' is not understood; use a dataset name \\(cifar10,"),
])
def test_bad_sources_raise(tmp_path, source, error, match):
  with pytest.raises(error, match=match):
    data.load(source.format(tmp=tmp_path), 'train', data_dir=tmp_path / 'dd')


@pytest.mark.parametrize('split, match', [
    ('train[:1000]', 'incompatible with 100 examples'),
    ('valid', "Unknown split 'valid'"),
    ('train[5:5]', 'selects no examples'),
])
def test_bad_splits_raise(tmp_path, split, match):
  with pytest.raises(ValueError, match=match):
    data.load(f'npz:{_npz(tmp_path / "d.npz")}', split, data_dir=tmp_path / 'dd')


def test_labels_out_of_range_raise(tmp_path):
  path = _npz(tmp_path / 'd.npz', class_names=np.array(['x', 'y']))
  with pytest.raises(ValueError, match='go up to 3, out of range for its class list '
                                       'of 2 names'):
    data.load(f'npz:{path}', 'train', data_dir=tmp_path / 'dd')
  root = tmp_path / 'mnist'
  root.mkdir()
  _idx(root / 'train-images-idx3-ubyte.gz', np.zeros((2, 3, 3)))
  _idx(root / 'train-labels-idx1-ubyte.gz', np.array([1, 10]))
  with pytest.raises(ValueError, match='go up to 10, out of range'):
    data.load(f'idx:{root}', 'train', data_dir=tmp_path / 'dd')


def test_bad_arrays_raise(tmp_path):
  np.savez(tmp_path / 'f.npz', images=np.zeros((2, 2, 2), np.float32),
           labels=np.zeros(2, int))
  with pytest.raises(ValueError, match='dtype float32; expected uint8'):
    data.load(f'npz:{tmp_path / "f.npz"}', 'train', data_dir=tmp_path / 'dd')
  with pytest.raises(ValueError, match='x_test holds no images'):
    data.load(f'npz:{_npz(tmp_path / "e.npz", m=0)}', 'train', data_dir=tmp_path / 'dd')
  np.savez(tmp_path / 'k.npz', pixels=np.zeros((2, 2, 2), np.uint8))
  with pytest.raises(ValueError, match="expected 'x_<split>'"):
    data.load(f'npz:{tmp_path / "k.npz"}', 'train', data_dir=tmp_path / 'dd')
  root = tmp_path / 'idx'
  root.mkdir()
  _idx(root / 'train-images-idx3-ubyte.gz', np.zeros((2, 3, 3)), magic=0x0D)
  _idx(root / 'train-labels-idx1-ubyte.gz', np.zeros(2))
  with pytest.raises(ValueError, match='bad magic'):
    data.load(f'idx:{root}', 'train', data_dir=tmp_path / 'dd')


# ---------------------------------------------------------------- subsets

LABELS = np.repeat(np.arange(10), 100)[np.random.default_rng(0).permutation(1000)]


def test_subset_is_deterministic_and_seeded():
  a = data.subset_indices(LABELS, 50)
  np.testing.assert_array_equal(a, data.subset_indices(LABELS, 50, seed=9999))
  assert len(np.unique(a)) == 50 and np.all(np.diff(a) > 0)
  assert not np.array_equal(a, data.subset_indices(LABELS, 50, seed=1))
  assert len(data.subset_indices(LABELS, 0.05)) == 50


def test_subset_balanced_and_validation_disjoint():
  train, val = data.train_val_indices(LABELS, 0.1, 205, balanced=True)
  np.testing.assert_array_equal(np.bincount(LABELS[train]), [10] * 10)
  counts = np.bincount(LABELS[val], minlength=10)
  assert counts.sum() == 205 and counts.max() - counts.min() == 1
  assert not set(train) & set(val)
  np.testing.assert_array_equal(
      train, data.train_val_indices(LABELS, 0.1, 30, balanced=True)[0])
  unbalanced = data.subset_indices(LABELS, 100)
  assert np.bincount(LABELS[unbalanced], minlength=10).std() > 0


def test_subset_errors():
  with pytest.raises(ValueError, match='asks for 1001 examples but only 1000'):
    data.subset_indices(LABELS, 1001)
  with pytest.raises(ValueError, match='only 900 are available'):
    data.subset_indices(LABELS, 901, exclude=np.arange(100))
  with pytest.raises(ValueError, match='needs 10 examples of class 0 but only 5'):
    data.subset_indices(LABELS, 100, balanced=True,
                        exclude=np.flatnonzero(LABELS == 0)[:95])
  for size in (0, 1.5, -3, '10'):
    with pytest.raises(ValueError, match='size='):
      data.subset_indices(LABELS, size)


# ---------------------------------------------------------------- batching


@pytest.mark.parametrize('process_count', [1, 4])
def test_one_epoch_covers_each_example_once(process_count):
  n, batch = 103, 20
  steps = data.steps_per_epoch(n, batch)
  assert steps == 5
  for epoch in range(2):
    seen = np.concatenate([
        data.batch_indices(n, batch, 7, epoch * steps + s, process_index=p,
                           process_count=process_count)
        for s in range(steps) for p in range(process_count)])
    assert len(seen) == 100 and len(np.unique(seen)) == 100 and seen.max() < n
    np.testing.assert_array_equal(seen, data.epoch_permutation(n, 7, epoch)[:100])
  assert not np.array_equal(data.epoch_permutation(n, 7, 0),
                            data.epoch_permutation(n, 7, 1))


def test_process_shares_split_the_global_batch():
  shares = [data.batch_indices(64, 16, 3, 2, process_index=p, process_count=4)
            for p in range(4)]
  assert all(len(s) == 4 for s in shares)
  np.testing.assert_array_equal(np.concatenate(shares),
                                data.batch_indices(64, 16, 3, 2))


def test_resume_mid_epoch_sees_the_same_batches():
  run = [data.batch_indices(50, 8, 11, s) for s in range(20)]
  batching._cached_permutation.cache_clear()  # As in a fresh process.
  resumed = [data.batch_indices(50, 8, 11, s) for s in range(9, 20)]
  for a, b in zip(run[9:], resumed):
    np.testing.assert_array_equal(a, b)
  # A step restored from a checkpoint may be a numpy or jax integer scalar.
  np.testing.assert_array_equal(data.batch_indices(50, 8, 11, np.int64(9)), run[9])
  np.testing.assert_array_equal(data.batch_indices(50, 8, 11, jnp.asarray(9)), run[9])


@pytest.mark.parametrize('kwargs, match', [
    ({'num_examples': 10, 'global_batch_size': 11}, 'global_batch_size=11'),
    ({'process_count': 3}, 'process_count=3 must be >= 1 and divide'),
    ({'process_index': 2, 'process_count': 2}, 'process_index=2 must be <'),
    ({'step': -1}, 'step=-1'),
    ({'step': 1.5}, 'step=1.5 must be a non-negative integer'),
])
def test_batch_indices_errors(kwargs, match):
  args = {'num_examples': 100, 'global_batch_size': 8, 'seed': 0, 'step': 0, **kwargs}
  with pytest.raises(ValueError, match=match):
    data.batch_indices(args.pop('num_examples'), args.pop('global_batch_size'),
                       args.pop('seed'), args.pop('step'), **args)


# ---------------------------------------------------------------- mistakes and damage


def test_images_in_zero_one_are_refused(tmp_path):
  path = tmp_path / 'binary.npz'
  np.savez(path, images=(np.arange(32).reshape(2, 4, 4, 1) % 2).astype(np.uint8),
           labels=np.array([0, 1]))
  with pytest.raises(ValueError, match=r'uint8 with maximum 1: .*forgotten x255.*'
                                       r'\(x \* 255\)\.round\(\)\.astype\(np\.uint8\)'):
    data.load(f'npz:{path}', 'train', data_dir=tmp_path / 'dd')
  assert not (tmp_path / 'dd' / 'jaxflowaug_local').exists()


def test_channels_first_arrays_are_named(tmp_path):
  path = tmp_path / 'nchw.npz'
  np.savez(path, images=np.full((2, 3, 8, 8), 9, np.uint8), labels=np.array([0, 1]))
  with pytest.raises(ValueError, match=r'shape \(2, 3, 8, 8\), which looks channels-first '
                                       r'\(N, C, H, W\); .* expects channels-last '
                                       r'\(N, H, W, C\): .*np\.transpose\(images, '
                                       r'\(0, 2, 3, 1\)\)'):
    data.load(f'npz:{path}', 'train', data_dir=tmp_path / 'dd')


def test_symlinked_class_folders_are_followed_but_not_loops(tmp_path):
  _png(tmp_path / 'elsewhere' / 'cats' / '0.png', _pixel(5))
  _png(tmp_path / 'f' / 'dog' / '0.png', _pixel(9))
  (tmp_path / 'f' / 'cat').symlink_to(tmp_path / 'elsewhere' / 'cats')
  (tmp_path / 'f' / 'dog' / 'loop').symlink_to(tmp_path / 'f')
  images, labels = data.load(f'folder:{tmp_path / "f"}', 'train', data_dir=tmp_path / 'dd')
  np.testing.assert_array_equal(images[:, 0, 0, 0], [5, 9])
  np.testing.assert_array_equal(labels, [0, 1])


def _damage(version_dir: pathlib.Path, kind: str) -> None:
  train = next(version_dir.glob('*-train.array_record-*'))
  if kind == 'garbled records':
    payload = bytearray(train.read_bytes())
    payload[len(payload) // 2:len(payload) // 2 + 64] = b'\xff' * 64
    train.write_bytes(bytes(payload))
  elif kind == 'truncated records':
    train.write_bytes(train.read_bytes()[:train.stat().st_size // 2])
  elif kind == 'empty records':
    train.write_bytes(b'')
  elif kind == 'garbled info':
    (version_dir / 'dataset_info.json').write_text('{"name": ')
  elif kind == 'deleted info':
    (version_dir / 'dataset_info.json').unlink()


DAMAGE = ['garbled records', 'truncated records', 'empty records', 'garbled info',
          'deleted info']


@pytest.mark.parametrize('kind', DAMAGE)
def test_a_damaged_cache_is_rebuilt_from_the_source(tmp_path, kind):
  source = f'npz:{_npz(tmp_path / "d.npz")}'
  want = data.load(source, 'train', data_dir=tmp_path / 'dd')
  (version_dir,) = (tmp_path / 'dd' / 'jaxflowaug_local').glob('*/1.0.0')
  _damage(version_dir, kind)
  assert data.info(source, data_dir=tmp_path / 'dd').splits == {'train': 100, 'test': 20}
  for got, expected in zip(data.load(source, 'train', data_dir=tmp_path / 'dd'), want):
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('kind', DAMAGE)
def test_a_damaged_tfds_dataset_names_the_directory_to_delete(tmp_path, kind):
  data.load(f'npz:{_npz(tmp_path / "d.npz")}', 'train', data_dir=tmp_path / 'dd')
  (version_dir,) = (tmp_path / 'dd' / 'jaxflowaug_local').glob('*/1.0.0')
  _damage(version_dir, kind)
  with pytest.raises(ValueError, match=rf"prepared dataset in '{version_dir.parent}.*' "
                                       r'is damaged \(.*\); delete that directory') as e:
    data.load(f'tfds:jaxflowaug_local/{version_dir.parent.name}', 'train',
              data_dir=tmp_path / 'dd')
  assert 'split' not in str(e.value) and '\n' not in str(e.value)


def test_a_read_only_data_dir_is_named(tmp_path, monkeypatch):
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda path, mode: (
      mode != os.W_OK and real_access(path, mode)))
  with pytest.raises(ValueError, match=r"data_dir '.*dd' is not writable .* set "
                                       r'data\.data_dir to a writable directory'):
    data.load(f'npz:{_npz(tmp_path / "d.npz")}', 'train', data_dir=tmp_path / 'dd')
