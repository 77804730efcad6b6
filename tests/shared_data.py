"""The real data sets beside the repository (../shared/data on the project's machines), and the
marks that skip a test where they are absent (a checkout elsewhere, e.g. a CI clone in /tmp)."""
import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data'
FASHION_DIR = SHARED / 'fashion-mnist'
CIFAR_TAR = SHARED / 'cifar10-jpeg-train.tar.xz'

needs_fashion = pytest.mark.skipif(not FASHION_DIR.is_dir(),
                                   reason='no ../shared/data/fashion-mnist')
needs_cifar = pytest.mark.skipif(not CIFAR_TAR.is_file(),
                                 reason='no ../shared/data/cifar10-jpeg-train.tar.xz')
