"""Tests for vivit_flax.files."""

import os

import pytest

from vivit_flax import files


def test_write_atomic_writes_text_and_bytes_and_leaves_no_temporary(tmp_path):
  files.write_atomic(str(tmp_path / 'a.json'), '{"x": 1}')
  files.write_atomic(str(tmp_path / 'b.bin'), b'\x00\xff')
  assert (tmp_path / 'a.json').read_text() == '{"x": 1}'
  assert (tmp_path / 'b.bin').read_bytes() == b'\x00\xff'
  assert sorted(os.listdir(tmp_path)) == ['a.json', 'b.bin']


def test_a_failed_write_keeps_the_previous_version_whole(tmp_path):
  path = str(tmp_path / 'results.json')
  files.write_atomic(path, 'old')
  with pytest.raises(TypeError):
    files.write_atomic(path, 42)  # Not text: fails while writing.
  assert open(path).read() == 'old'
  assert os.listdir(tmp_path) == ['results.json']
