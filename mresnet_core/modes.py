"""How a momentum stack gets its activations in backward: one vocabulary, one default.

Every entry point (``MomentumNet``, ``to_momentumnet``, ``models.build_model`` and the
trainer's ``--memory``) takes a :class:`MemoryMode` or its string, and True/False for
"exact"/"backprop" as before. All modes give the gradients of ordinary autograd.
"""
from __future__ import annotations

import enum


class MemoryMode(str, enum.Enum):
    """``auto``: the cheapest of the others for the input's shapes (``plan.py``);
    ``exact``: activations rebuilt by exact inversion (memory flat in depth);
    ``recompute``: the stack's input kept, the stack re-run in backward;
    ``backprop``: ordinary autograd, every activation stored."""

    AUTO = "auto"
    EXACT = "exact"
    RECOMPUTE = "recompute"
    BACKPROP = "backprop"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


#: The default everywhere: exact inversion where it saves memory, else the cheaper way.
DEFAULT_MEMORY_MODE = MemoryMode.AUTO
MODE_NAMES = tuple(m.value for m in MemoryMode)


def memory_mode(value) -> MemoryMode:
    """The :class:`MemoryMode` that ``value`` names (True is "exact", False "backprop")."""
    if value is True:
        return MemoryMode.EXACT
    if value is False:
        return MemoryMode.BACKPROP
    if isinstance(value, str):
        try:
            return MemoryMode(value.strip().lower())
        except ValueError:
            pass
    raise ValueError(f"memory_efficient must be one of {', '.join(repr(m) for m in MODE_NAMES)} "
                     f"(or True for 'exact', False for 'backprop'), got {value!r}")
