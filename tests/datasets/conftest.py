"""Fixtures of the dataset tests: small MedMNIST-layout files, and no network."""

import urllib.request

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Any real download attempt fails the test; download tests patch urlopen with a local server."""

  def refuse(*args, **kwargs):
    raise AssertionError(f'network access attempted: {args}')

  monkeypatch.setattr(urllib.request, 'urlopen', refuse)


@pytest.fixture
def make_npz():
  """Writes a MedMNIST-layout .npz of random uint8 volumes `shape` and returns its arrays."""

  def make(
      path,
      sizes=(23, 7, 9),
      shape=(28, 28, 28),
      num_classes=11,
      seed=0,
      **extra,
  ):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(('train', 'val', 'test'), sizes):
      arrays[f'{split}_images'] = rng.integers(
          0, 256, (n,) + shape, dtype=np.uint8
      )
      arrays[f'{split}_labels'] = rng.integers(0, num_classes, (n, 1)).astype(
          np.uint8
      )
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays

  return make
