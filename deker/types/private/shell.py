"""The names deker 1.1.7 offered an interactive shell session (``deker.types.private.shell``).

``from deker.types.private.shell import *`` brings the client, the schemas, :class:`Scale` and
:func:`set_logging_level` (the same objects as ``deker``'s); ``shell_completions`` lists them as
``"<Name>("`` strings, for a completer.  Nothing in deker imports this module.
"""

from __future__ import annotations

from deker.client import Client
from deker.log import set_logging_level
from deker.schemas import ArraySchema, AttributeSchema, DimensionSchema, TimeDimensionSchema, VArraySchema
from deker.types import Scale

__all__ = (
    "Client",
    "DimensionSchema",
    "TimeDimensionSchema",
    "ArraySchema",
    "AttributeSchema",
    "VArraySchema",
    "Scale",
    "set_logging_level",
)

#: Every exported name followed by ``(``, in ``__all__`` order.
shell_completions: tuple[str, ...] = tuple(f"{name}(" for name in __all__)
