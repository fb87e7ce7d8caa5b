"""The median the throughput modules report: None for no samples (e.g. zero windows)."""

import statistics


def median(values):
  """Median of `values`, or None when there are none."""
  return statistics.median(values) if values else None
