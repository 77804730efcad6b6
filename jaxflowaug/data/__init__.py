"""Data: sources (datasets by name, TFDS, image folders/tars, IDX, npz), subsets, batches.

This subpackage is the only part of jaxflowaug that reads files.
"""
from jaxflowaug.data.batching import batch_indices
from jaxflowaug.data.batching import epoch_permutation
from jaxflowaug.data.batching import steps_per_epoch
from jaxflowaug.data.pixels import to_float
from jaxflowaug.data.readers import KNOWN_CLASS_NAMES
from jaxflowaug.data.store import DEFAULT_DATA_DIR
from jaxflowaug.data.store import DatasetInfo
from jaxflowaug.data.store import info
from jaxflowaug.data.store import load
from jaxflowaug.data.subsets import subset_indices
from jaxflowaug.data.subsets import train_val_indices
