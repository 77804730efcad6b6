"""Tests for sources by name: tiny official-format files served from 127.0.0.1.

No test reaches the internet: `JAXFLOWAUG_DATA_MIRROR` points at a local `http.server`
thread (or a `file://` folder, or a closed port), and the checksum table is patched
with the md5s of the tiny files.
"""
import dataclasses
import gzip
import hashlib
import http.server
import io
import pathlib
import socket
import tarfile
import threading
import time

import numpy as np
import pytest
import scipy.io

from jaxflowaug import data
from jaxflowaug.data import download
from shared_data import FASHION_DIR, needs_fashion

RNG = np.random.default_rng(0)


def _cifar_records(images, *label_columns) -> bytes:
  """Binary CIFAR records: label bytes, then the red, green and blue 32x32 planes."""
  planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  return np.concatenate([np.stack(label_columns, 1).astype(np.uint8), planes], 1).tobytes()


def _tar_gz(path: pathlib.Path, members: dict[str, bytes]) -> None:
  with tarfile.open(path, 'w:gz') as tar:
    for name, payload in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))


def _idx_gz(path: pathlib.Path, array: np.ndarray) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, '>u4').tobytes()
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _images(n: int, shape=(32, 32, 3)) -> np.ndarray:
  return RNG.integers(0, 256, (n,) + shape, dtype=np.uint8)


@pytest.fixture(scope='module')
def official(tmp_path_factory):
  """A folder of tiny files in the official formats, and what each split must hold.

  Returns:
    (folder, {name: {split: (images uint8 (N, H, W, C), labels int (N,))}}).
  """
  root = tmp_path_factory.mktemp('official')
  want = {}
  batches = [(_images(2), RNG.integers(0, 10, 2)) for _ in range(6)]
  _tar_gz(root / 'cifar-10-binary.tar.gz', {
      f'cifar-10-batches-bin/{name}': _cifar_records(images, labels)
      for name, (images, labels) in zip(
          [f'data_batch_{i}.bin' for i in range(1, 6)] + ['test_batch.bin'], batches)}
      | {'cifar-10-batches-bin/batches.meta.txt': b'airplane\n'})
  want['cifar10'] = {
      'train': tuple(np.concatenate(column) for column in zip(*batches[:5])),
      'test': batches[5]}
  fine = {'train': (_images(4), np.array([99, 0, 42, 7])),
          'test': (_images(2), np.array([3, 98]))}
  _tar_gz(root / 'cifar-100-binary.tar.gz', {
      f'cifar-100-binary/{split}.bin': _cifar_records(images, labels % 20, labels)
      for split, (images, labels) in fine.items()})
  want['cifar100'] = fine
  want['svhn'] = {}
  for split, digits in (('train', [10, 1, 9]), ('test', [2, 10])):
    images = _images(len(digits))
    scipy.io.savemat(root / f'{split}_32x32.mat',
                     {'X': np.moveaxis(images, 0, 3), 'y': np.array(digits)[:, None]})
    want['svhn'][split] = (images, np.array(digits) % 10)
  want['mnist'] = {}
  for split, prefix, n in (('train', 'train', 5), ('test', 't10k', 3)):
    images, labels = _images(n, (28, 28)), RNG.integers(0, 10, n)
    _idx_gz(root / f'{prefix}-images-idx3-ubyte.gz', images)
    _idx_gz(root / f'{prefix}-labels-idx1-ubyte.gz', labels)
    want['mnist'][split] = (images[..., None], labels)
  return root, want


@pytest.fixture
def checksums(official, monkeypatch):
  """Patches the md5 table with the md5s of the tiny files (and no raw md5s)."""
  root, _ = official
  for name, dataset in download.DATASETS.items():
    archives = tuple(
        dataclasses.replace(a, md5=hashlib.md5((root / a.filename).read_bytes())
                            .hexdigest(), raw_md5='')
        if (root / a.filename).is_file() else a for a in dataset.archives)
    monkeypatch.setitem(download.DATASETS, name,
                        dataclasses.replace(dataset, archives=archives))


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves `root` with HTTP Range support; `cut` files are sent half, then cut off."""

  def do_GET(self):
    server = self.server
    server.requests.append((self.path, self.headers.get('Range')))
    path = server.root / self.path.lstrip('/')
    if not path.is_file():
      self.send_error(404)
      return
    body = path.read_bytes()
    start = int(self.headers['Range'][len('bytes='):].rstrip('-')) if self.headers.get(
        'Range') else 0
    self.send_response(206 if start else 200)
    self.send_header('Content-Length', str(len(body) - start))
    self.end_headers()
    if path.name in server.cut:
      server.cut.remove(path.name)
      self.wfile.write(body[start:start + (len(body) - start) // 2])
      self.close_connection = True
      return
    self.wfile.write(body[start:])

  def log_message(self, *args):
    del args  # Quiet.


@pytest.fixture
def server(official, checksums, monkeypatch):
  """An HTTP server on 127.0.0.1 serving the official folder, set as the mirror."""
  del checksums  # Only needed first.
  httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
  httpd.root, httpd.requests, httpd.cut = official[0], [], set()
  httpd.daemon_threads = True
  thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05},
                            daemon=True)
  thread.start()
  monkeypatch.setenv(download.MIRROR_ENV, f'http://127.0.0.1:{httpd.server_port}/')
  yield httpd
  httpd.shutdown()
  httpd.server_close()
  thread.join(timeout=5)


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _offline(monkeypatch) -> None:
  monkeypatch.setenv(download.MIRROR_ENV, f'http://127.0.0.1:{_closed_port()}')


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'svhn', 'mnist'])
def test_named_sources_parse_the_official_formats(name, official, server, tmp_path):
  _, want = official
  info = data.info(name, data_dir=tmp_path)
  assert info.name == name
  assert info.splits == {s: len(labels) for s, (_, labels) in want[name].items()}
  assert info.num_classes == (100 if name == 'cifar100' else 10)
  for split, (images, labels) in want[name].items():
    got_images, got_labels = data.load(name, split, data_dir=tmp_path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
  assert {path for path, _ in server.requests} == {
      f'/{a.filename}' for a in download.DATASETS[name].archives}


def test_second_load_never_touches_the_network(official, server, tmp_path, monkeypatch):
  images, _ = data.load('cifar10', 'train', data_dir=tmp_path)
  _offline(monkeypatch)
  (tmp_path / 'downloads' / 'cifar-10-binary.tar.gz').unlink()
  np.testing.assert_array_equal(data.load('cifar10', 'train', data_dir=tmp_path)[0], images)
  assert data.info('cifar10', data_dir=tmp_path).splits == {'train': 10, 'test': 2}


def test_a_download_with_the_wrong_checksum_is_deleted_and_named(server, tmp_path,
                                                                  monkeypatch):
  dataset = download.DATASETS['cifar100']
  monkeypatch.setitem(download.DATASETS, 'cifar100', dataclasses.replace(
      dataset, archives=(dataclasses.replace(dataset.archives[0], md5='0' * 32),)))
  with pytest.raises(ValueError, match=r'download of cifar-100-binary\.tar\.gz from '
                                       r'http://127\.0\.0\.1:\d+/cifar-100-binary\.tar\.gz '
                                       r'has md5 \w+, not the published 0{32}, and was '
                                       r'deleted'):
    data.load('cifar100', 'train', data_dir=tmp_path)
  assert not list((tmp_path / 'downloads').iterdir())
  assert not (tmp_path / 'jaxflowaug_local').exists()


def test_an_interrupted_download_resumes_with_http_range(official, server, tmp_path):
  server.cut.add('train_32x32.mat')
  with pytest.raises(FileNotFoundError, match=r'download of train_32x32\.mat from .* '
                                              r'stopped after \d+ of \d+ bytes; the partial '
                                              r'file .*train_32x32\.mat\.part.* is kept'):
    data.load('svhn', 'train', data_dir=tmp_path)
  part = tmp_path / 'downloads' / 'train_32x32.mat.part'
  half = part.stat().st_size
  assert 0 < half < (official[0] / 'train_32x32.mat').stat().st_size
  images, labels = data.load('svhn', 'train', data_dir=tmp_path)
  np.testing.assert_array_equal(images, official[1]['svhn']['train'][0])
  np.testing.assert_array_equal(labels, official[1]['svhn']['train'][1])
  assert [r for p, r in server.requests if p == '/train_32x32.mat'] == [
      None, f'bytes={half}-']
  assert not part.exists()


def test_offline_fails_fast_naming_the_file_and_archive_dir(checksums, tmp_path,
                                                            monkeypatch):
  _offline(monkeypatch)
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError) as raised:
    data.info('cifar10', data_dir=tmp_path)
  assert time.perf_counter() - start < 5.0
  message = str(raised.value)
  assert 'cannot download cifar-10-binary.tar.gz' in message
  assert '/cifar-10-binary.tar.gz (md5 ' in message and 'data.archive_dir' in message
  assert '\n' not in message


def test_archive_dir_replaces_the_download(official, checksums, tmp_path, monkeypatch):
  _offline(monkeypatch)
  images, _ = data.load('mnist', 'test', data_dir=tmp_path, archive_dir=official[0])
  np.testing.assert_array_equal(images, official[1]['mnist']['test'][0])
  assert not list((tmp_path / 'downloads').glob('*ubyte*'))
  wrong = tmp_path / 'wrong'
  wrong.mkdir()
  (wrong / 'test_32x32.mat').write_bytes(b'not the file')
  (wrong / 'train_32x32.mat').write_bytes((official[0] / 'train_32x32.mat').read_bytes())
  with pytest.raises(ValueError, match=r"test_32x32\.mat' \(in data\.archive_dir\) is not "
                                       r'the official test_32x32\.mat'):
    data.load('svhn', 'test', data_dir=tmp_path / 'dd', archive_dir=wrong)
  assert (wrong / 'test_32x32.mat').exists()  # A user's file is never deleted.


def test_file_url_mirror(official, checksums, tmp_path, monkeypatch):
  monkeypatch.setenv(download.MIRROR_ENV, official[0].as_uri())
  labels = data.load('cifar100', 'test', data_dir=tmp_path)[1]
  np.testing.assert_array_equal(labels, [3, 98])


@pytest.mark.slow  # reads the real data set
@needs_fashion
def test_fashion_mnist_from_the_shared_files_with_the_published_checksums(tmp_path,
                                                                          monkeypatch):
  _offline(monkeypatch)
  info = data.info('fashion_mnist', data_dir=tmp_path, archive_dir=FASHION_DIR)
  assert info.splits == {'train': 60000, 'test': 10000}
  assert info.class_names == data.KNOWN_CLASS_NAMES['fashion_mnist']
  assert abs(data.load('fashion_mnist', 'train[:10000]', data_dir=tmp_path)[0].mean()
             - 72.9) < 0.5
