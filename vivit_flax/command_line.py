"""What the project's command-line programs (main.py, report, sweep) share: how bad input ends them."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator, Sequence

from absl import app, logging


@contextlib.contextmanager
def exit_on(*errors: type[BaseException]) -> Iterator[None]:
  """Ends the program with `error: <message>` (exit status 1) when the block raises one of
  `errors`: bad input whose message says what to change, shown without a traceback (which
  `--verbosity=1` logs)."""
  try:
    yield
  except errors as error:
    logging.debug('Details:', exc_info=True)
    sys.exit(f'error: {error}')


def absl_main(
    run: Callable[[], Any], *errors: type[BaseException]
) -> Callable[[Sequence[str]], None]:
  """The `main(argv)` for `absl.app.run` of a program that takes only flags: it calls `run()`,
  within `exit_on(*errors)`."""

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
    with exit_on(*errors):
      run()

  return main
