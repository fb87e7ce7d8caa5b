r"""Demo: the Keras example's recipe on the synthetic volumetric set (no download needed).

  python main.py --config=configs/synthetic/vivit_demo.py --workdir=/tmp/vivit_demo

The synthetic set (11 classes of 3D shapes, MedMNIST npz layout, OrganMNIST3D's split
sizes) is generated into `<data_dir>/synthetic3d.npz` on first use. Its scores say how well
the pipeline learns shapes, nothing about MedMNIST.
"""

from configs.organmnist3d import vivit_keras_baseline


def get_config():
  """Keras recipe, synthetic data."""
  config = vivit_keras_baseline.get_config()
  config.experiment_name = 'synthetic3d_vivit_demo'
  config.dataset_name = 'synthetic3d'
  return config
