"""Writing files that readers and concurrent writers only ever see whole."""

import os
import tempfile


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes `data` to `path` through a temporary file of a name no other writer uses, renamed
  over it: a crash or a full disk leaves the previous version whole, and writers of the same
  file at the same moment (sweep tasks finishing together) leave one whole version.
  """
  fd, temporary = tempfile.mkstemp(
      dir=os.path.dirname(path) or '.',
      prefix=os.path.basename(path) + '.',
      suffix='.tmp',
  )
  try:
    with os.fdopen(fd, 'wb' if isinstance(data, bytes) else 'w') as f:
      f.write(data)
    os.replace(temporary, path)
  except BaseException:
    os.remove(temporary)
    raise
