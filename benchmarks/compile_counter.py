"""Counts XLA backend compilations, to show that no step recompiles once warmed up."""

import jax

COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'


class CompileCounter:
  """Counts XLA backend compilations from the moment it is created (a jax.monitoring listener)."""

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, *args, **kwargs):
    del args, kwargs
    if event == COMPILE_EVENT:
      self.count += 1


_COMPILES = None


def shared():
  """The process's CompileCounter (listeners cannot be removed, so there is one)."""
  global _COMPILES
  if _COMPILES is None:
    _COMPILES = CompileCounter()
  return _COMPILES
