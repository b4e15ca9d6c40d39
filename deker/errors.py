"""The exceptions raised by deker.

The class names and their hierarchy are those of deker 1.1.7, so code written for it keeps
catching what it caught.  Where a caller would naturally reach for a builtin, the leaf also
subclasses it: a validation problem is a :class:`ValueError`, a lock timeout a
:class:`TimeoutError`, a memory-limit break a :class:`MemoryError`, and a failed multi-tile
operation an :class:`ExceptionGroup` that carries the real exceptions of its tiles.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

if sys.version_info >= (3, 11):  # pragma: no cover - depends on the interpreter
    from builtins import ExceptionGroup
else:  # pragma: no cover - depends on the interpreter
    from exceptiongroup import ExceptionGroup

__all__ = [
    "DekerArrayError",
    "DekerArrayNotFoundError",
    "DekerArrayTypeError",
    "DekerBaseApplicationError",
    "DekerBrokenSymlinkError",
    "DekerClientError",
    "DekerCollectionAlreadyExistsError",
    "DekerCollectionError",
    "DekerCollectionNotExistsError",
    "DekerExceptionGroup",
    "DekerFilterError",
    "DekerInstanceNotExistsError",
    "DekerIntegrityError",
    "DekerInvalidManagerCallError",
    "DekerInvalidSchemaError",
    "DekerLockError",
    "DekerMemoryError",
    "DekerMetaDataError",
    "DekerReadOnlyError",
    "DekerShapeError",
    "DekerStorageError",
    "DekerSubsetError",
    "DekerTaskError",
    "DekerURIError",
    "DekerUnknownFilterError",
    "DekerValidationError",
    "DekerVSubsetError",
]


class DekerBaseApplicationError(Exception):
    """Base class of every exception deker raises on purpose."""


class DekerClientError(DekerBaseApplicationError, RuntimeError):
    """The client cannot be used: it failed to open, or it is closed."""


class DekerArrayError(DekerBaseApplicationError):
    """An array cannot be created, found or written as asked."""


class DekerArrayNotFoundError(DekerArrayError, KeyError):
    """No array matches a lookup that must find one (a filter or id given to the xarray backend)."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return Exception.__str__(self)


class DekerArrayTypeError(DekerArrayError, TypeError):
    """Data given to an update has a type or dtype the array cannot store."""


class DekerShapeError(DekerArrayError, IndexError):
    """Data given to an update has a shape that does not broadcast to the region's.

    It is an :class:`IndexError`, what deker 1.1.7 raised for a wrong shape.
    """


class DekerSubsetError(DekerArrayError):
    """A subset cannot do what was asked (e.g. a scalar subset turned into xarray)."""


class DekerCollectionError(DekerBaseApplicationError):
    """A collection-level operation failed."""


class DekerCollectionAlreadyExistsError(DekerCollectionError, FileExistsError):
    """A collection with this name already exists in the storage."""


class DekerCollectionNotExistsError(DekerCollectionError, KeyError):
    """No collection with this name exists in the storage."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return Exception.__str__(self)


class DekerInvalidSchemaError(DekerBaseApplicationError, ValueError):
    """A schema is not valid."""


class DekerMetaDataError(DekerInvalidSchemaError):
    """Stored metadata is missing, too new, or cannot be parsed."""


class DekerFilterError(DekerBaseApplicationError, ValueError):
    """A filter names attributes the schema does not have."""


class DekerUnknownFilterError(DekerFilterError, NotImplementedError):
    """A filter names keys that are neither ``id`` nor attributes of the schema.

    It is also a :class:`NotImplementedError`, what deker 1.1.7 raised for such filters in
    collections without primary attributes.
    """


class DekerValidationError(DekerBaseApplicationError, ValueError):
    """Input (a schema, an attribute, a name, an id, a URI, a size) is not valid."""


class DekerURIError(DekerClientError, DekerValidationError):
    """A storage URI is not one deker can open; the message says what to write instead.

    It is a :class:`DekerClientError` (what deker 1.1.7 raised for every bad URI) and a
    :class:`DekerValidationError` (a :class:`ValueError`).
    """


class DekerIntegrityError(DekerBaseApplicationError):
    """The integrity check found problems in the storage."""


class DekerLockError(DekerBaseApplicationError, TimeoutError):
    """A lock could not be acquired within the allowed time."""


class DekerInstanceNotExistsError(DekerBaseApplicationError):
    """The collection, array or VArray this object refers to was deleted."""


class DekerInvalidManagerCallError(DekerBaseApplicationError, AttributeError):
    """A manager was used where it does not apply (``.varrays`` of an Array collection)."""


class DekerMemoryError(DekerBaseApplicationError, MemoryError):
    """The operation would need more memory than the client's limit allows."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Explicit, so that picklers that rebuild exceptions with ``cls.__new__(cls)`` (tblib,
        # which distributed installs) call the class instead: MemoryError refuses that.
        return (type(self), self.args)


class DekerStorageError(DekerBaseApplicationError):
    """The storage (adapter) cannot serve the request, or a stored file is unusable."""


class DekerReadOnlyError(DekerStorageError, PermissionError):
    """A write was asked of a read-only client (``Client(read_only=True)``, or a storage it cannot write).

    Raised before anything is touched.  Also a :class:`PermissionError` (with no ``errno``),
    what code writing to a read-only place catches.
    """


class DekerBrokenSymlinkError(DekerStorageError):
    """A symlink of the storage points at nothing and its target cannot be derived."""


class DekerTaskError(DekerBaseApplicationError):
    """A failure known only by its description, such as a formatted traceback.

    deker 1.1.7 callers built :class:`DekerVSubsetError` from strings; each string becomes one
    of these in the group, and its ``str`` is the string itself.
    """


def _render(message: str, items: Sequence[object]) -> str:
    lines = "\n".join(f"{i}) {item}" for i, item in enumerate(items, start=1))
    return f"{message}; exceptions:\n\n{lines} "


class DekerExceptionGroup(DekerBaseApplicationError):
    """Several errors reported together (deker 1.1.7 compatible).

    Parameters
    ----------
    message : str
        What failed.
    exceptions : list of str
        A description of every error.
    """

    def __init__(self, message: str, exceptions: Sequence[str]) -> None:
        super().__init__(message, list(exceptions))
        self.message = message
        self.exceptions: Sequence[Any] = list(exceptions)

    def __str__(self) -> str:
        return _render(self.message, self.exceptions)


def _as_exceptions(items: Sequence[object]) -> list[Exception]:
    # (an ExceptionGroup holds Exceptions only: a string is kept as it is, as deker 1.1.7's
    # callers passed tracebacks, and a KeyboardInterrupt or SystemExit by its repr)
    return [
        x if isinstance(x, Exception) else DekerTaskError(repr(x) if isinstance(x, BaseException) else str(x))
        for x in items
    ]


class DekerVSubsetError(DekerSubsetError, DekerExceptionGroup, ExceptionGroup):  # type: ignore[misc]
    """Some tile tasks of a VArray operation failed.

    It is an :class:`ExceptionGroup`: ``exceptions`` holds the real exception of every failed
    tile (so ``except*`` works), and ``tiles`` the grid position of each, in the same order.
    Tiles not named succeeded; locks taken by the operation have been released.

    Parameters
    ----------
    message : str
        What failed.
    exceptions : sequence of Exception or str
        The exceptions raised by the failed tile tasks (at least one).  A string (deker 1.1.7
        callers passed formatted tracebacks) or any other non-exception item becomes a
        :class:`DekerTaskError` holding its text.
    tiles : sequence of tuple of int, optional
        The grid position of the tile of each exception.
    """

    def __new__(
        cls,
        message: str,
        exceptions: Sequence[BaseException | str],
        tiles: Sequence[tuple[int, ...]] | None = None,
    ) -> DekerVSubsetError:
        """Build the group from the tile exceptions (``ExceptionGroup`` needs them here)."""
        return super().__new__(cls, message, _as_exceptions(exceptions))  # type: ignore[no-any-return,call-arg]

    def __init__(
        self,
        message: str,
        exceptions: Sequence[BaseException | str],
        tiles: Sequence[tuple[int, ...]] | None = None,
    ) -> None:
        ExceptionGroup.__init__(self, message, _as_exceptions(exceptions))
        self.tiles: tuple[tuple[int, ...], ...] = tuple(tiles or ())

    @property
    def message(self) -> str:  # type: ignore[override]
        """The message of the group."""
        return str(self.args[0])

    @message.setter
    def message(self, value: str) -> None:  # DekerExceptionGroup.__init__ is not called
        pass

    def __str__(self) -> str:
        items = []
        for i, exc in enumerate(self.exceptions):
            where = f"tile {self.tiles[i]}: " if i < len(self.tiles) else ""
            items.append(
                f"{where}{exc}" if type(exc) is DekerTaskError else f"{where}{type(exc).__name__}: {exc}"
            )
        return _render(self.message, items)

    def derive(self, excs: Sequence[BaseException]) -> DekerVSubsetError:  # type: ignore[override]
        """Return a group of the same kind holding ``excs`` (used by ``except*``)."""
        # ``excs`` is a subsequence of ``exceptions`` in order; one exception object may stand
        # for several tiles (a batch task that failed as a whole), so match by position.
        positions: list[tuple[int, ...]] = []
        start = 0
        for exc in excs:
            found = next((i for i in range(start, len(self.exceptions)) if self.exceptions[i] is exc), None)
            if found is None or found >= len(self.tiles):
                return DekerVSubsetError(self.message, list(excs), None)
            positions.append(self.tiles[found])
            start = found + 1
        return DekerVSubsetError(self.message, list(excs), positions)

    def __reduce__(self) -> tuple[Any, ...]:
        return (DekerVSubsetError, (self.message, list(self.exceptions), self.tiles))
