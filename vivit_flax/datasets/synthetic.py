"""A synthetic 3D shape classification set in the exact MedMNIST `.npz` layout.

Each example is a uint8 [28, 28, 28] volume holding one of 11 shapes at a random position, size, orientation
and intensity over a random background, with near-Gaussian noise of random strength. Labels are uint8 [N, 1]. Generation is
deterministic by seed; each split has its own random stream, so changing one split size leaves the other
splits as they were. Default split sizes are OrganMNIST3D's (971 / 161 / 610).

CLI: python -m vivit_flax.datasets.synthetic --out DIR [--seed S] [--num_train N] [--num_val N] [--num_test N]
writes DIR/synthetic3d.npz and its MD5 sidecar DIR/synthetic3d.npz.md5.
"""

import argparse
import hashlib
import io
import os

import numpy as np

from vivit_flax import files

FILE_NAME = 'synthetic3d.npz'
LABEL_NAMES = (
    'sphere',
    'cube',
    'cylinder_t',
    'cylinder_h',
    'cylinder_w',
    'cone',
    'torus',
    'ellipsoid',
    'hollow_shell',
    'two_blobs',
    'cross',
)
NUM_CLASSES = len(LABEL_NAMES)
SPLIT_SIZES = {'train': 971, 'val': 161, 'test': 610}
SIZE = 28
_CHUNK = 16  # examples rasterised at once (cache-sized; part of the definition of the set)
_EDGE = 0.05  # width of the soft edge ramp, in grid units ([-1, 1] spans the volume; a voxel is ~0.074)
_AXIS_JITTER = (
    0.3  # max tilt (radians) of the axis-aligned shapes (cylinders, cube)
)
_AXIS_CLASSES = {
    2: 0,
    3: 1,
    4: 2,
}  # cylinder class -> axis (0 = T/depth, 1 = H, 2 = W)
_CUBE = 1


def _rotations(rng, n, max_angle):
  """[n, 3, 3] rotations about random axes by angles uniform in [0, max_angle] (Rodrigues)."""
  axis = rng.standard_normal((n, 3))
  axis /= np.linalg.norm(axis, axis=1, keepdims=True)
  angle = rng.uniform(0, 1, n) * max_angle
  k = np.zeros((n, 3, 3))
  k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
  k -= k.transpose(0, 2, 1)
  s, c = np.sin(angle)[:, None, None], np.cos(angle)[:, None, None]
  return np.eye(3) + s * k + (1 - c) * k @ k


def _params(rng, labels):
  """Per-example shape parameters, drawn for the whole split at once."""
  n = len(labels)
  full = _rotations(rng, n, np.pi)
  tilt = _rotations(rng, n, _AXIS_JITTER)
  for (
      cls,
      axis,
  ) in (
      _AXIS_CLASSES.items()
  ):  # column 0 (the cylinder's local x) becomes the grid axis, tilted
    full[labels == cls] = tilt[labels == cls] @ np.roll(np.eye(3), axis, axis=0)
  full[labels == _CUBE] = tilt[labels == _CUBE]
  u = rng.uniform(0, 1, (n, 2)).astype(np.float32)  # shape-specific proportions
  return dict(
      rot=full.astype(np.float32),
      center=rng.uniform(-0.12, 0.12, (n, 3)).astype(np.float32),
      size=rng.uniform(0.42, 0.72, n).astype(np.float32),
      a=u[:, 0],
      b=u[:, 1],
      fg=rng.uniform(0.45, 1.0, n).astype(np.float32),
      bg=rng.uniform(0.0, 0.2, n).astype(np.float32),
      noise=rng.uniform(0.03, 0.1, n).astype(np.float32),
  )


def _inside(cls, q, s, a, b):
  """Signed inside-ness (> 0 inside, grid units) of shape `cls` at local coordinates q [n, V, 3]."""
  x, y, z = q[..., 0], q[..., 1], q[..., 2]
  r = np.sqrt(x * x + y * y + z * z)
  if cls == 0:  # sphere
    return s - r
  if cls == _CUBE:  # cube, faces near the grid axes
    return 0.8 * s - np.abs(q).max(-1)
  if cls in _AXIS_CLASSES:  # cylinder along local x
    rad, half = (0.25 + 0.2 * a) * s, (0.95 + 0.35 * b) * s
    return np.minimum(rad - np.sqrt(y * y + z * z), half - np.abs(x))
  if cls == 5:  # cone, apex at +x
    half, base = (0.8 + 0.3 * a) * s, (0.55 + 0.25 * b) * s
    return np.minimum(
        base * (half - x) / (2 * half) - np.sqrt(y * y + z * z),
        half - np.abs(x),
    )
  if cls == 6:  # torus in the local x-y plane
    ring = (0.65 + 0.15 * a) * s
    return (0.22 + 0.08 * b) * s - np.sqrt(
        (np.sqrt(x * x + y * y) - ring) ** 2 + z * z
    )
  if cls == 7:  # flat (oblate) ellipsoid, disc-like
    radii = np.stack([s, s * (0.75 + 0.25 * a), s * (0.25 + 0.1 * b)], -1)
    return s * (1 - np.sqrt(((q / radii) ** 2).sum(-1)))
  if cls == 8:  # hollow shell
    return np.minimum(s - r, r - s * (0.72 - 0.12 * a))
  if cls == 9:  # two blobs along local x
    off, rad = (
        np.stack([(0.65 + 0.15 * a) * s, 0 * s, 0 * s], -1),
        (0.38 + 0.07 * b) * s,
    )
    return rad - np.minimum(
        np.linalg.norm(q - off, axis=-1), np.linalg.norm(q + off, axis=-1)
    )
  # cross: three perpendicular bars through the centre
  half, w = (0.9 + 0.15 * a) * s, (0.2 + 0.06 * b) * s
  ends, sides = half[..., None] - np.abs(q), w[..., None] - np.abs(q)
  bars = [
      np.minimum(
          ends[..., i],
          np.minimum(sides[..., (i + 1) % 3], sides[..., (i + 2) % 3]),
      )
      for i in range(3)
  ]
  return np.maximum(np.maximum(bars[0], bars[1]), bars[2])


def _render(rng, labels, p):
  """Rasterises the shapes of one chunk: uint8 [n, SIZE, SIZE, SIZE]."""
  n = len(labels)
  grid = np.linspace(-1, 1, SIZE, dtype=np.float32)
  pts = np.stack(np.meshgrid(grid, grid, grid, indexing='ij'), -1).reshape(
      -1, 3
  )
  occ = np.empty((n, len(pts)), np.float32)
  for cls in np.unique(labels):
    m = np.flatnonzero(labels == cls)
    rot = p['rot'][
        m
    ]  # local = (pts - center) @ rot, as one matrix product for the whole class
    local = (
        (pts @ rot.transpose(1, 0, 2).reshape(3, -1))
        .reshape(-1, len(m), 3)
        .transpose(1, 0, 2)
    )
    local -= p['center'][m, None] @ rot
    f = _inside(int(cls), local, *(p[k][m, None] for k in ('size', 'a', 'b')))
    occ[m] = np.clip(0.5 + f / (2 * _EDGE), 0, 1)
  # Zero-mean, unit-variance triangular noise: close to Gaussian and several times cheaper to draw.
  noise = rng.random(occ.shape, dtype=np.float32)
  noise += rng.random(occ.shape, dtype=np.float32)
  noise -= 1
  vol = occ
  vol *= (p['fg'] - p['bg'])[:, None]
  vol += p['bg'][:, None]
  vol += (p['noise'] * np.sqrt(6, dtype=np.float32))[:, None] * noise
  return (
      (np.clip(vol, 0, 1) * 255 + 0.5)
      .astype(np.uint8)
      .reshape(n, SIZE, SIZE, SIZE)
  )


def generate_split(seed, split_id, n):
  """(images uint8 [n, 28, 28, 28], labels uint8 [n, 1]) of one split; deterministic by (seed, split_id)."""
  rng = np.random.default_rng([seed, split_id])
  labels = rng.integers(0, NUM_CLASSES, n).astype(np.uint8)
  p = _params(rng, labels)
  chunks = [
      _render(
          rng,
          labels[i : i + _CHUNK],
          {k: v[i : i + _CHUNK] for k, v in p.items()},
      )
      for i in range(0, n, _CHUNK)
  ]
  images = (
      np.concatenate(chunks)
      if chunks
      else np.zeros((0, SIZE, SIZE, SIZE), np.uint8)
  )
  return images, labels[:, None]


def generate(
    seed=0,
    num_train=SPLIT_SIZES['train'],
    num_val=SPLIT_SIZES['val'],
    num_test=SPLIT_SIZES['test'],
):
  """The whole set as a dict with the MedMNIST keys (train/val/test _images and _labels)."""
  out = {}
  for split_id, (split, n) in enumerate(
      (('train', num_train), ('val', num_val), ('test', num_test))
  ):
    out[f'{split}_images'], out[f'{split}_labels'] = generate_split(
        seed, split_id, n
    )
  return out


def write(path, seed=0, **split_sizes):
  """Generates the set and writes it to `path` (.npz) plus `<path>.md5`, each atomically; returns the MD5."""
  path = os.path.abspath(os.path.expanduser(path))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  buf = io.BytesIO()
  np.savez(buf, **generate(seed, **split_sizes))
  data = buf.getvalue()
  md5 = hashlib.md5(data).hexdigest()
  # The sidecar goes first: whoever sees the .npz (another process, say) also finds its MD5.
  files.write_atomic(
      path + '.md5', f'{md5}  {os.path.basename(path)}\n'.encode()
  )
  files.write_atomic(path, data)
  return md5


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
      '--out',
      required=True,
      help=f'output folder; {FILE_NAME} and its .md5 go there',
  )
  parser.add_argument('--seed', type=int, default=0)
  for split, n in SPLIT_SIZES.items():
    parser.add_argument(f'--num_{split}', type=int, default=n)
  args = parser.parse_args(argv)
  path = os.path.join(args.out, FILE_NAME)
  md5 = write(
      path,
      args.seed,
      num_train=args.num_train,
      num_val=args.num_val,
      num_test=args.num_test,
  )
  print(f'wrote {path} (md5 {md5})')


if __name__ == '__main__':
  main()
