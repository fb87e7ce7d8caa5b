"""What a sweep leaves on disk, read back: each point's status and scores, the sweep's tables, and
the best point on a validation metric.

A point's sub-workdir holds `results.json` once it finished (the trainer writes it),
`failed.json` ({'error': message}) once it failed, and `point.json` ({'index', 'overrides'}: what
`main.py` needs to train it again) from its start; so a point is 'done', 'failed: <message>',
'unfinished' (started: training now, or stopped before its end and resumed by a rerun) or
'not run'. Nothing here imports JAX: collecting and selecting run anywhere.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Sequence

from vivit_flax import files

RESULTS, FAILED, POINT = 'results.json', 'failed.json', 'point.json'
DONE, UNFINISHED, NOT_RUN = 'done', 'unfinished', 'not run'


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def results(point_dir: str) -> dict[str, Any] | None:
  """The point's results.json, None until it finished."""
  return _read_json(os.path.join(point_dir, RESULTS))


def record_start(point_dir: str, index: int, overrides: dict[str, Any]) -> None:
  """Marks the point started: writes point.json (its index and every override it trains with)
  and removes the failure marker of an earlier try."""
  os.makedirs(point_dir, exist_ok=True)
  files.write_atomic(
      os.path.join(point_dir, POINT),
      json.dumps({'index': index, 'overrides': overrides}, indent=2),
  )
  if os.path.exists(os.path.join(point_dir, FAILED)):
    os.remove(os.path.join(point_dir, FAILED))


def record_failure(point_dir: str, error: str) -> str:
  """Writes the point's failure marker; returns its status ('failed: <first line of error>')."""
  os.makedirs(point_dir, exist_ok=True)
  files.write_atomic(
      os.path.join(point_dir, FAILED), json.dumps({'error': error}, indent=2)
  )
  return failed_status(error)


def failed_status(error: str) -> str:
  """The status of a point that failed with `error`."""
  lines = error.strip().splitlines() or ['unknown error']
  return f'failed: {lines[0]}'


def overrides(point_dir: str) -> dict[str, Any]:
  """Every override the point was trained with, from its point.json."""
  record = _read_json(os.path.join(point_dir, POINT))
  if record is None:
    raise FileNotFoundError(
        f'{point_dir} has no {POINT}: it was not trained by vivit_flax.sweep.'
    )
  return record['overrides']


def status(point_dir: str) -> str:
  """'done', 'failed: <message>', 'unfinished' or 'not run' (see the module docstring)."""
  if os.path.exists(os.path.join(point_dir, RESULTS)):
    return DONE
  failure = _read_json(os.path.join(point_dir, FAILED))
  if failure is not None:
    return failed_status(failure['error'])
  return UNFINISHED if os.path.isdir(point_dir) else NOT_RUN


def metric(tree: dict[str, Any], path: str) -> Any:
  """The value at dotted `path` ('validation.auc') in a results.json tree, None if absent."""
  node = tree
  for part in path.split('.'):
    if not isinstance(node, dict) or part not in node:
      return None
    node = node[part]
  return node


def rows(
    workdir: str,
    names: Sequence[str],
    points: Sequence[dict[str, Any]],
    metrics: Sequence[str],
) -> list[dict[str, Any]]:
  """One table row per point as it stands on disk: name, overrides, `metrics`, status."""
  table = []
  for name, point in zip(names, points):
    point_dir = os.path.join(workdir, name)
    scores = results(point_dir) or {}
    table.append(
        {
            'name': name,
            **point,
            **{m: metric(scores, m) for m in metrics},
            'status': status(point_dir),
        }
    )
  return table


def _cell(value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    text = f'{value:.4g}'
  elif isinstance(value, (tuple, list)):
    text = 'x'.join(str(v) for v in value)
  else:
    text = str(value)
  return text.replace('|', '\\|')


def tables(table: list[dict[str, Any]]) -> tuple[str, str]:
  """The rows as the text of results.csv and of results.md."""
  columns = list(dict.fromkeys(key for row in table for key in row))
  csv_text = io.StringIO()
  writer = csv.DictWriter(csv_text, columns)
  writer.writeheader()
  writer.writerows(table)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + ' --- |' * len(columns)]
  lines += [
      '| ' + ' | '.join(_cell(row.get(c)) for c in columns) + ' |'
      for row in table
  ]
  return csv_text.getvalue(), '\n'.join(lines) + '\n'


def collect(
    workdir: str,
    names: Sequence[str],
    points: Sequence[dict[str, Any]],
    metrics: Sequence[str],
) -> list[dict[str, Any]]:
  """Writes `<workdir>/results.csv` and `results.md` from the points as they stand; returns the
  rows.

  Each file is replaced whole. Having written them, it reads the points again and rewrites the
  tables until they match: of tasks finishing together, the last to write has seen every
  point that finished before it, so no task leaves a table older than the points.
  """
  written = None
  while True:
    table = rows(workdir, names, points, metrics)
    texts = tables(table)
    if texts == written:
      return table
    for name, text in zip(('results.csv', 'results.md'), texts):
      files.write_atomic(os.path.join(workdir, name), text)
    written = texts


def summary(table: list[dict[str, Any]]) -> str:
  """One line per kind of point that is not done, naming them; '' when all are done."""
  lines = []
  for label, pick in (
      ('not run', lambda s: s == NOT_RUN),
      (
          'unfinished (training, or stopped: rerun to resume)',
          lambda s: s == UNFINISHED,
      ),
      ('failed', lambda s: s.startswith('failed')),
  ):
    names = [row['name'] for row in table if pick(row['status'])]
    if names:
      lines.append(f'{len(names)} {label}: {", ".join(names)}')
  return '\n'.join(lines)


def _score(value: Any) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def minimised(metric_path: str) -> bool:
  """Whether lower is better for the score at `metric_path`: a loss."""
  return 'loss' in metric_path.rsplit('.', 1)[-1]


def best(
    workdir: str, names: Sequence[str], metric_path: str
) -> tuple[str, dict[str, Any]]:
  """The name and results.json of the finished point with the best `metric_path`, a validation
  score ('validation.auc', 'best.validation.accuracy'): the highest, or the lowest for a loss.
  Ties go to the earlier point.

  Raises:
    ValueError: `metric_path` is not a validation score, no point has finished, or no finished
      point has a finite `metric_path`; the message names the fix.
  """
  if 'validation' not in metric_path.split('.'):
    raise ValueError(
        f'--select={metric_path}: choose on a validation score (e.g. '
        'validation.auc); choosing on test would make the test scores of the '
        'chosen point optimistic.'
    )
  finished = {
      n: r
      for n in names
      if (r := results(os.path.join(workdir, n))) is not None
  }
  if not finished:
    raise ValueError(
        f'--select: no point of the sweep in {workdir} has finished; --collect '
        'names the missing ones.'
    )
  scores = {n: _score(metric(r, metric_path)) for n, r in finished.items()}
  scored = [n for n in finished if scores[n] is not None]
  if not scored:
    known = {
        f'validation.{key}'
        for r in finished.values()
        for key, value in r.get('validation', {}).items()
        if _score(value) is not None
    }
    raise ValueError(
        f'--select={metric_path}: no finished point has this score; use one of '
        f'{", ".join(sorted(known))}.'
    )
  sign = 1 if minimised(metric_path) else -1
  name = min(scored, key=lambda n: sign * scores[n])
  return name, finished[name]


def scores_text(scores: dict[str, Any]) -> str:
  """The validation and test scores of a results.json, one `  split.key = value` line each."""
  return '\n'.join(
      f'  {split}.{key} = {value}'
      for split in ('validation', 'test')
      for key, value in scores.get(split, {}).items()
  )
