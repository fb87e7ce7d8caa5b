"""Checks of single config values, for the component that reads each value.

Each raises ValueError naming the key, what it must be and, for a choice, the closest allowed
value; `config_validation.validate` reports them as `ConfigError`s.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
  """`value` of `key` (e.g. 'config.model.classifier') must be one of `choices`."""
  choices = list(choices)
  if value not in choices:
    close = difflib.get_close_matches(
        str(value), [str(c) for c in choices], n=1
    )
    hint = f' Did you mean {close[0]!r}?' if close else ''
    raise ValueError(
        f'{key}={value!r} is not one of '
        f'{", ".join(repr(c) for c in choices)}.{hint}'
    )


def check_positive(key: str, value: Any) -> None:
  """`value` of `key` must be positive; None (unset) passes."""
  if value is not None and value <= 0:
    raise ValueError(f'{key}={value!r} must be positive.')


def check_non_negative(key: str, value: Any) -> None:
  """`value` of `key` must be zero or positive; None (unset) passes."""
  if value is not None and value < 0:
    raise ValueError(f'{key}={value!r} must be zero or positive.')


def check_fraction(key: str, value: Any, *, allow_one: bool = False) -> None:
  """`value` of `key` must be in [0, 1) ([0, 1] with `allow_one`); None (unset) passes."""
  if value is not None and not (
      0 <= value <= 1 if allow_one else 0 <= value < 1
  ):
    raise ValueError(
        f'{key}={value!r} must be in [0, {"1]" if allow_one else "1)"}.'
    )
