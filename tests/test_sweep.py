"""Tests for vivit_flax.sweep: the hyper combinators, point names, overrides, and tiny sweeps trained
in this process and as main.py processes (npz_video files of float [N, T, H, W, C] clips and of
uint8 [N, T, H, W] volumes, end to end)."""

import csv
import json
import os

import numpy as np
import pytest

from vivit_flax import config_overrides, config_validation, model, sweep, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP_CONFIG = """
from configs.synthetic import vivit_smoke


def get_config():
  config = vivit_smoke.get_config()
  config.dataset_name = 'npz_video'
  config.dataset_configs.path = {float_clips!r}
  config.model.patches.size = (4, 4, 4)
  config.num_training_steps = 2
  config.log_eval_steps = 100
  config.write_summary = False
  config.checkpoint = False
  return config


def get_hyper(hyper):
  return {hyper}
"""


@pytest.fixture
def make_sweep(tmp_path):
  """Writes npz_video files of float [N, 8, 8, 8, 2] clips and uint8 [N, 8, 8, 8] volumes, and a
  sweep config file training a tiny model on the float clips with get_hyper returning `hyper`.
  """
  rng = np.random.default_rng(0)
  float_clips, volumes = {}, {}
  for split, n in (('train', 16), ('val', 8), ('test', 8)):
    float_clips[f'{split}_images'] = rng.uniform(size=(n, 8, 8, 8, 2)).astype(
        np.float32
    )
    volumes[f'{split}_images'] = rng.integers(
        0, 256, (n, 8, 8, 8), dtype=np.uint8
    )
    float_clips[f'{split}_labels'] = volumes[f'{split}_labels'] = (
        np.arange(n) % 3
    )
  np.savez(tmp_path / 'float_clips.npz', **float_clips)
  np.savez(tmp_path / 'volumes.npz', **volumes)

  def make(
      hyper="hyper.sweep('config.lr_configs.base_learning_rate', [0.001, 0.01])",
  ):
    path = tmp_path / 'sweep_config.py'
    path.write_text(
        SWEEP_CONFIG.format(
            float_clips=str(tmp_path / 'float_clips.npz'), hyper=hyper
        )
    )
    return str(path)

  return make


def test_hyper_combinators():
  hyper = sweep.Hyper()
  points = hyper.product(
      [
          hyper.sweep('config.a', [1, 2]),
          hyper.zipit(
              [hyper.sweep('b.c', ['x', 'y']), hyper.sweep('d', [True, False])]
          ),
      ]
  )
  assert points == [
      {'config.a': 1, 'b.c': 'x', 'd': True},
      {'config.a': 1, 'b.c': 'y', 'd': False},
      {'config.a': 2, 'b.c': 'x', 'd': True},
      {'config.a': 2, 'b.c': 'y', 'd': False},
  ]
  assert hyper.product([]) == [{}]
  with pytest.raises(ValueError, match='one length'):
    hyper.zipit([hyper.sweep('a', [1, 2]), hyper.sweep('b', [1])])
  with pytest.raises(ValueError, match="'a' is set twice"):
    hyper.product([hyper.sweep('a', [1]), hyper.sweep('a', [2])])


def test_point_names_are_stable_and_safe():
  assert (
      sweep.point_name(
          {
              'lr_configs.base_learning_rate': 3e-4,
              'model.attention_config.type': 'spacetime',
          }
      )
      == 'base_learning_rate=0.0003,type=spacetime'
  )
  assert (
      sweep.point_name(
          {'model.num_heads': 4, 'model.spatial_transformer.num_heads': 2}
      )
      == 'model.num_heads=4,model.spatial_transformer.num_heads=2'
  )
  assert (
      sweep.point_name(
          {'model.patches.size': (4, 4, 2), 'dataset_configs.path': '/a b'}
      )
      == 'size=4x4x2,path=_a_b'
  )
  assert sweep.point_name({}) == 'base'


def test_overrides_and_main_py_flags(make_sweep):
  sweep_config = make_sweep()
  base, points = sweep.load_sweep(sweep_config)
  assert points == [
      {'lr_configs.base_learning_rate': 0.001},
      {'lr_configs.base_learning_rate': 0.01},
  ]
  config = config_overrides.apply_overrides(
      base, {'model.patches.size': (2, 2, 2), 'num_training_steps': 5}
  )
  assert (
      config.model.patches.size == (2, 2, 2) and config.num_training_steps == 5
  )
  assert base.model.patches.size == (4, 4, 4)
  with pytest.raises(
      ValueError,
      match='config.lr_configs.base_learnin_rate is not in the base '
      'config. Did you mean lr_configs.base_learning_rate',
  ):
    config_overrides.apply_overrides(
        base, {'lr_configs.base_learnin_rate': 1.0}
    )
  with pytest.raises(ValueError, match='config.num_training_steps=0.5'):
    config_overrides.apply_overrides(base, {'num_training_steps': 0.5})
  command = sweep.main_command(
      sweep_config,
      '/w',
      {'model.patches.size': (2, 2, 2), 'write_summary': False},
  )
  assert command[-2:] == [
      '--config.model.patches.size=(2, 2, 2)',
      '--config.write_summary=False',
  ]
  with pytest.raises(ValueError, match='--parallel=0'):
    sweep.main_command(sweep_config, '/w', {'num_training_steps': None})


def test_example_sweep_config_is_valid():
  base, points = sweep.load_sweep(
      os.path.join(REPO, 'configs', 'organmnist3d', 'sweep_lr_variant.py')
  )
  assert len(points) == 12 and len({sweep.point_name(p) for p in points}) == 12
  for point in points[
      :4
  ]:  # the four attention variants at the first learning rate
    config = config_overrides.apply_overrides(
        base, {**point, 'dataset_configs.download': True}
    )
    config_validation.validate(config, num_devices=1)
    model.ViViTClassificationModel(
        config, {'num_classes': 11, 'input_shape': (-1, 28, 28, 28, 1)}
    )


def test_in_process_sweep_trains_and_skips_finished_points(
    make_sweep, tmp_path, monkeypatch
):
  sweep_config, workdir = make_sweep(), tmp_path / 'sweep'
  names = ['base_learning_rate=0.001', 'base_learning_rate=0.01']
  (workdir / names[0]).mkdir(parents=True)
  (workdir / names[0] / 'results.json').write_text(
      json.dumps({'test': {'accuracy': 0.25}})
  )
  rows = sweep.run_sweep(
      sweep_config, str(workdir), metrics=['test.accuracy', 'validation.loss']
  )
  assert [r['name'] for r in rows] == names
  assert [r['status'] for r in rows] == ['skipped', 'done']
  assert (
      json.loads((workdir / names[1] / 'config.json').read_text())[
          'lr_configs'
      ]['base_learning_rate']
      == 0.01
  )
  with open(workdir / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert [float(r['lr_configs.base_learning_rate']) for r in table] == [
      0.001,
      0.01,
  ]
  assert (
      table[0]['test.accuracy'] == '0.25' and table[0]['validation.loss'] == ''
  )
  assert (
      0 <= float(table[1]['test.accuracy']) <= 1
      and float(table[1]['validation.loss']) > 0
  )
  markdown = (workdir / 'results.md').read_text().splitlines()
  assert markdown[0] == (
      '| name | lr_configs.base_learning_rate | test.accuracy | validation.loss '
      '| status |'
  )
  assert (
      len(markdown) == 4
      and markdown[2] == f'| {names[0]} | 0.001 | 0.25 |  | skipped |'
  )

  # A rerun trains only the point whose results.json is gone.
  (workdir / names[1] / 'results.json').unlink()
  trained = []

  def fake_train(config, point_workdir):
    trained.append((config.lr_configs.base_learning_rate, point_workdir))
    (workdir / names[1] / 'results.json').write_text(
        json.dumps({'test': {'accuracy': 0.5}})
    )
    return {}

  monkeypatch.setattr(trainer, 'train_and_evaluate', fake_train)
  rows = sweep.run_sweep(sweep_config, str(workdir))
  assert trained == [(0.01, str(workdir / names[1]))]
  assert [r['status'] for r in rows] == ['skipped', 'done'] and rows[1][
      'test.accuracy'
  ] == 0.5


def test_parallel_sweep_of_npz_files_through_main_py(make_sweep, tmp_path):
  """Two main.py processes at once, one on float [N, T, H, W, C] clips, one on uint8
  [N, T, H, W] volumes (npz_video end to end)."""
  files = [str(tmp_path / 'float_clips.npz'), str(tmp_path / 'volumes.npz')]
  sweep_config = make_sweep(
      f"hyper.sweep('config.dataset_configs.path', {files!r})"
  )
  workdir = tmp_path / 'sweep'
  rows = sweep.run_sweep(
      sweep_config,
      str(workdir),
      parallel=2,
      overrides={'model.patches.size': (8, 8, 4)},
  )
  logs = {
      r['name']: (workdir / r['name'] / 'log.txt').read_text()[-3000:]
      for r in rows
  }
  assert [r['status'] for r in rows] == ['done', 'done'], logs
  for row, path in zip(rows, files):
    config = json.loads((workdir / row['name'] / 'config.json').read_text())
    assert config['dataset_configs']['path'] == path
    assert config['model']['patches']['size'] == [8, 8, 4]
    assert 0 <= row['test.accuracy'] <= 1 and 0 <= row['test.auc'] <= 1
