"""deker/errors.py: the exception hierarchy, the builtins each leaf also is, messages, pickling.

Covered: every class of ``__all__`` and its documented bases (SPEC §1.11 plus the builtins named
in the module docstring), ``str`` of ``DekerCollectionNotExistsError`` (no ``KeyError`` quotes),
``DekerExceptionGroup``'s 1.1.7 rendering, ``DekerVSubsetError`` as a real ``ExceptionGroup``
(``except*``, ``split``/``subgroup`` keeping the tile positions), and pickle round trips, in this
process and across a real process boundary (a forkserver worker raising them).

The module imports on Python 3.10 too (the package supports it): the group classes come from
``exceptiongroup`` there, as in deker/errors.py, and the ``except*`` test, whose syntax 3.10
cannot parse, is compiled at run time on 3.11+ only.
"""

from __future__ import annotations

import inspect
import multiprocessing as mp
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

if sys.version_info >= (3, 11):  # pragma: no cover - depends on the interpreter
    from builtins import BaseExceptionGroup, ExceptionGroup
else:  # pragma: no cover - depends on the interpreter
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

from deker import errors
from deker.errors import (
    DekerArrayError,
    DekerArrayNotFoundError,
    DekerArrayTypeError,
    DekerBaseApplicationError,
    DekerBrokenSymlinkError,
    DekerClientError,
    DekerCollectionAlreadyExistsError,
    DekerCollectionError,
    DekerCollectionNotExistsError,
    DekerExceptionGroup,
    DekerFilterError,
    DekerInstanceNotExistsError,
    DekerIntegrityError,
    DekerInvalidManagerCallError,
    DekerInvalidSchemaError,
    DekerLockError,
    DekerMemoryError,
    DekerMetaDataError,
    DekerReadOnlyError,
    DekerShapeError,
    DekerStorageError,
    DekerSubsetError,
    DekerTaskError,
    DekerUnknownFilterError,
    DekerURIError,
    DekerValidationError,
    DekerVSubsetError,
)

# class -> the classes it must (also) be, as documented
DOCUMENTED_BASES: dict[type[BaseException], tuple[type[BaseException], ...]] = {
    DekerBaseApplicationError: (Exception,),
    DekerClientError: (DekerBaseApplicationError, RuntimeError),
    DekerArrayError: (DekerBaseApplicationError,),
    DekerArrayNotFoundError: (DekerArrayError, KeyError),
    DekerArrayTypeError: (DekerArrayError, TypeError),
    DekerShapeError: (DekerArrayError, IndexError),
    DekerSubsetError: (DekerArrayError,),
    DekerVSubsetError: (DekerSubsetError, DekerExceptionGroup, ExceptionGroup),
    DekerCollectionError: (DekerBaseApplicationError,),
    DekerCollectionAlreadyExistsError: (DekerCollectionError, FileExistsError),
    DekerCollectionNotExistsError: (DekerCollectionError, KeyError),
    DekerInvalidSchemaError: (DekerBaseApplicationError, ValueError),
    DekerMetaDataError: (DekerInvalidSchemaError, ValueError),
    DekerFilterError: (DekerBaseApplicationError, ValueError),
    DekerUnknownFilterError: (DekerFilterError, ValueError, NotImplementedError),
    DekerValidationError: (DekerBaseApplicationError, ValueError),
    DekerURIError: (DekerClientError, DekerValidationError, RuntimeError, ValueError),
    DekerIntegrityError: (DekerBaseApplicationError,),
    DekerLockError: (DekerBaseApplicationError, TimeoutError, OSError),
    DekerInstanceNotExistsError: (DekerBaseApplicationError,),
    DekerInvalidManagerCallError: (DekerBaseApplicationError, AttributeError),
    DekerMemoryError: (DekerBaseApplicationError, MemoryError),
    DekerStorageError: (DekerBaseApplicationError,),
    DekerReadOnlyError: (DekerStorageError, PermissionError, OSError),
    DekerBrokenSymlinkError: (DekerStorageError,),
    DekerExceptionGroup: (DekerBaseApplicationError,),
    DekerTaskError: (DekerBaseApplicationError,),
}

# Builtins a class must NOT be (catching them must not swallow deker errors by accident).
NOT_BUILTINS: dict[type[BaseException], tuple[type[BaseException], ...]] = {
    DekerArrayError: (TypeError, ValueError),
    DekerSubsetError: (TypeError, ValueError),
    DekerIntegrityError: (ValueError, OSError),
    DekerStorageError: (OSError, ValueError),
    DekerInstanceNotExistsError: (OSError, KeyError, LookupError),
    DekerExceptionGroup: (BaseExceptionGroup,),
    DekerTaskError: (BaseExceptionGroup, ValueError, OSError),
    DekerCollectionError: (KeyError, OSError),
    DekerBaseApplicationError: (ValueError, OSError, RuntimeError),
}

PLAIN = [cls for cls in DOCUMENTED_BASES if cls not in (DekerVSubsetError, DekerExceptionGroup)]


def test_all_names_every_exception_class_and_nothing_else() -> None:
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == "deker.errors"
    }
    assert set(errors.__all__) == defined
    assert len(errors.__all__) == len(set(errors.__all__)) == 27
    assert {getattr(errors, n) for n in errors.__all__} == set(DOCUMENTED_BASES)


@pytest.mark.parametrize("cls", list(DOCUMENTED_BASES), ids=lambda c: c.__name__)
def test_documented_bases(cls: type[BaseException]) -> None:
    for base in DOCUMENTED_BASES[cls]:
        assert issubclass(cls, base), f"{cls.__name__} is not a {base.__name__}"
    if cls is not DekerBaseApplicationError:
        assert issubclass(cls, DekerBaseApplicationError)
    for builtin in NOT_BUILTINS.get(cls, ()):
        assert not issubclass(cls, builtin), f"{cls.__name__} must not be a {builtin.__name__}"


def test_builtin_handlers_catch_the_deker_leaves() -> None:
    """Code catching the natural builtin catches the deker error (module docstring)."""
    cases: list[tuple[BaseException, type[BaseException]]] = [
        (DekerValidationError("bad size"), ValueError),
        (DekerLockError("lock timed out"), TimeoutError),
        (DekerMemoryError("too big"), MemoryError),
        (DekerArrayTypeError("wrong dtype"), TypeError),
        (DekerCollectionNotExistsError("Collection x does not exist"), KeyError),
        (DekerArrayNotFoundError("No array of collection x matches"), KeyError),
        (DekerCollectionAlreadyExistsError("Collection x already exists"), FileExistsError),
        (DekerInvalidManagerCallError(".varrays of an Array collection"), AttributeError),
        (DekerClientError("Client is closed"), RuntimeError),
        (DekerMetaDataError("bad meta"), ValueError),
        (DekerFilterError("unknown attribute"), ValueError),
        (DekerReadOnlyError("Cannot update x: the client is read-only"), PermissionError),
    ]
    for exc, builtin in cases:
        with pytest.raises(builtin, match=str(exc).split()[0]):
            raise exc


def test_collection_not_exists_message_has_no_keyerror_quotes() -> None:
    exc = DekerCollectionNotExistsError("Collection weather does not exist")
    assert str(exc) == "Collection weather does not exist"
    assert str(KeyError("Collection weather does not exist")) == "'Collection weather does not exist'"
    assert str(DekerArrayNotFoundError("No array matches")) == "No array matches"
    assert exc.args == ("Collection weather does not exist",)


def test_lock_error_is_an_oserror_without_errno() -> None:
    exc = DekerLockError("Write lock on x timed out after 5 s")
    assert exc.errno is None and exc.strerror is None
    assert str(exc) == "Write lock on x timed out after 5 s"


def test_exception_group_renders_like_deker_117() -> None:
    exc = DekerExceptionGroup("Some tiles failed", ["first problem", "second problem"])
    assert str(exc) == "Some tiles failed; exceptions:\n\n1) first problem\n2) second problem "
    assert exc.message == "Some tiles failed"
    assert exc.exceptions == ["first problem", "second problem"]
    assert exc.args == ("Some tiles failed", ["first problem", "second problem"])
    assert not isinstance(exc, BaseExceptionGroup)
    empty = DekerExceptionGroup("nothing", ())
    assert str(empty) == "nothing; exceptions:\n\n "


def _vsubset() -> DekerVSubsetError:
    return DekerVSubsetError(
        "VArray update failed",
        [ValueError("bad value"), DekerLockError("tile busy"), KeyError("k")],
        [(0, 1), (1, 0), (2, 2)],
    )


def test_vsubset_error_is_an_exception_group_with_tiles() -> None:
    exc = _vsubset()
    assert isinstance(exc, ExceptionGroup) and isinstance(exc, DekerExceptionGroup)
    assert exc.message == "VArray update failed"
    assert [type(e) for e in exc.exceptions] == [ValueError, DekerLockError, KeyError]
    assert exc.tiles == ((0, 1), (1, 0), (2, 2))
    assert str(exc) == (
        "VArray update failed; exceptions:\n\n"
        "1) tile (0, 1): ValueError: bad value\n"
        "2) tile (1, 0): DekerLockError: tile busy\n"
        "3) tile (2, 2): KeyError: 'k' "
    )
    exc.message = "ignored"  # the setter does nothing: the message is the group's
    assert exc.message == "VArray update failed"
    untiled = DekerVSubsetError("read failed", [OSError("disk")])
    assert untiled.tiles == ()
    assert str(untiled) == "read failed; exceptions:\n\n1) OSError: disk "


def test_vsubset_error_built_the_deker_117_way_from_strings() -> None:
    """deker 1.1.7 callers pass formatted tracebacks: the group holds them as DekerTaskErrors."""
    exc = DekerVSubsetError("VArray update failed", ["Traceback (...)\nValueError: a", "OSError: b"])
    assert str(exc) == (
        "VArray update failed; exceptions:\n\n1) Traceback (...)\nValueError: a\n2) OSError: b "
    )  # what deker 1.1.7 printed
    assert exc.message == "VArray update failed" and exc.tiles == ()
    assert [type(e) for e in exc.exceptions] == [DekerTaskError, DekerTaskError]
    assert [str(e) for e in exc.exceptions] == ["Traceback (...)\nValueError: a", "OSError: b"]
    assert isinstance(exc, ExceptionGroup)
    mixed = DekerVSubsetError("read failed", [KeyError("k"), "text"], [(0,), (1,)])
    assert str(mixed) == "read failed; exceptions:\n\n1) tile (0,): KeyError: 'k'\n2) tile (1,): text "
    texts, real = mixed.split(DekerTaskError)
    assert texts is not None and texts.tiles == ((1,),)
    assert real is not None and real.tiles == ((0,),)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        back = pickle.loads(pickle.dumps(mixed, protocol=protocol))
        assert type(back) is DekerVSubsetError and str(back) == str(mixed) and back.tiles == mixed.tiles
        assert [type(e) for e in back.exceptions] == [KeyError, DekerTaskError]


_EXCEPT_STAR = """
def catch(raise_it, caught):
    try:
        raise_it()
    except* DekerLockError as group:
        caught["lock"] = group
    except* LookupError as group:
        caught["lookup"] = group
    except* ValueError as group:
        caught["value"] = group
"""


@pytest.mark.skipif(sys.version_info < (3, 11), reason="except* needs Python 3.11")
def test_vsubset_error_except_star_keeps_tile_positions() -> None:
    namespace: dict[str, Any] = {"DekerLockError": DekerLockError}
    exec(compile(_EXCEPT_STAR, __file__, "exec"), namespace)  # not parsed on 3.10
    caught: dict[str, Any] = {}

    def raise_it() -> None:
        raise _vsubset()

    namespace["catch"](raise_it, caught)
    assert set(caught) == {"lock", "lookup", "value"}
    for key, tile, kind in (("lock", (1, 0), DekerLockError), ("lookup", (2, 2), KeyError)):
        group = caught[key]
        assert type(group) is DekerVSubsetError
        assert group.tiles == (tile,)
        assert [type(e) for e in group.exceptions] == [kind]
        assert group.message == "VArray update failed"
    assert caught["value"].tiles == ((0, 1),)


def test_vsubset_error_split_and_subgroup() -> None:
    exc = _vsubset()
    match, rest = exc.split(OSError)
    assert isinstance(match, DekerVSubsetError) and isinstance(rest, DekerVSubsetError)
    assert match.tiles == ((1, 0),) and rest.tiles == ((0, 1), (2, 2))
    assert "2) tile (2, 2): KeyError: 'k' " in str(rest)
    sub = exc.subgroup((ValueError, OSError))
    assert isinstance(sub, DekerVSubsetError)
    assert sub.tiles == ((0, 1), (1, 0))
    assert exc.subgroup(ZeroDivisionError) is None
    # derive() with exceptions that are not members of the group: positions are unknown
    foreign = exc.derive([RuntimeError("new")])
    assert type(foreign) is DekerVSubsetError and foreign.tiles == ()


def test_one_exception_object_for_several_tiles_keeps_each_position() -> None:
    """Defect found by this test: ``derive`` mapped exceptions to tiles with ``list.index``, so
    one exception object failing several tiles (``outcomes.unbatch`` reports a batch task
    that failed as a whole that way) got the first tile's position for all of them."""
    shared = OSError("the batch task died")
    exc = DekerVSubsetError("VArray read failed", [shared, shared, ValueError("v")], [(0,), (1,), (2,)])
    assert exc.tiles == ((0,), (1,), (2,))
    match, rest = exc.split(OSError)
    assert rest is not None and rest.tiles == ((2,),)
    assert match is not None and match.tiles == ((0,), (1,))  # got ((0,), (0,))


def test_except_handlers_of_the_hierarchy_catch_a_vsubset_error() -> None:
    # (pytest matches an exception group's ``message``; its ``str`` is checked separately)
    for handler in (DekerSubsetError, DekerArrayError, DekerExceptionGroup, DekerBaseApplicationError):
        with pytest.raises(handler, match=r"^VArray update failed$") as info:
            raise _vsubset()
        assert str(info.value).startswith("VArray update failed; exceptions:\n\n1) tile (0, 1)")


def _instance(cls: type[BaseException]) -> BaseException:
    if cls is DekerVSubsetError:
        return _vsubset()
    if cls is DekerExceptionGroup:
        return DekerExceptionGroup("several", ["a", "b"])
    return cls(f"{cls.__name__} message")


@pytest.mark.parametrize("cls", list(DOCUMENTED_BASES), ids=lambda c: c.__name__)
def test_pickle_round_trip(cls: type[BaseException]) -> None:
    exc = _instance(cls)
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        back = pickle.loads(pickle.dumps(exc, protocol=protocol))
        assert type(back) is cls
        assert str(back) == str(exc)
        if cls is DekerVSubsetError:
            assert back.tiles == exc.tiles  # type: ignore[attr-defined]
            assert [(type(e), e.args) for e in back.exceptions] == [  # type: ignore[attr-defined]
                (type(e), e.args)
                for e in exc.exceptions  # type: ignore[attr-defined]
            ]
        else:
            assert back.args == exc.args


def _raise_in_worker(kind: str) -> None:
    """Run in a forkserver worker: raise a deker error (it travels back pickled)."""
    if kind == "vsubset":
        raise DekerVSubsetError(
            "tiles failed", [DekerLockError("tile busy"), DekerStorageError("disk")], [(3,), (5,)]
        )
    if kind == "not-exists":
        raise DekerCollectionNotExistsError("Collection c does not exist")
    raise DekerExceptionGroup("legacy", ["one", "two"])


def test_errors_cross_a_process_boundary() -> None:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as pool:
        futures = {kind: pool.submit(_raise_in_worker, kind) for kind in ("vsubset", "not-exists", "legacy")}
        with pytest.raises(DekerVSubsetError, match=r"^tiles failed$") as info:
            futures["vsubset"].result()
        assert str(info.value) == (
            "tiles failed; exceptions:\n\n1) tile (3,): DekerLockError: tile busy\n"
            "2) tile (5,): DekerStorageError: disk "
        )
        assert info.value.tiles == ((3,), (5,))
        assert [type(e) for e in info.value.exceptions] == [DekerLockError, DekerStorageError]
        with pytest.raises(DekerCollectionNotExistsError, match=r"^Collection c does not exist$"):
            futures["not-exists"].result()
        with pytest.raises(DekerExceptionGroup, match=r"legacy; exceptions:\n\n1\) one\n2\) two $"):
            futures["legacy"].result()


def test_every_error_pickles_where_distributed_changed_exception_pickling() -> None:
    """Defect found by the suite's order: once ``dask.multiprocessing`` is imported after deker
    (or distributed reports a failed task), tblib rebuilds exceptions with ``cls.__new__(cls)``,
    which MemoryError refuses, so a DekerMemoryError could not come back from a Dask worker.
    Checked in a fresh interpreter, where nothing else ran."""
    code = (
        "import pickle, deker.errors as e, dask.multiprocessing\n"
        "bad = []\n"
        "for name in e.__all__:\n"
        "    cls = getattr(e, name)\n"
        "    if name in ('DekerExceptionGroup', 'DekerVSubsetError'):\n"
        "        continue\n"
        "    exc = cls(f'{name} message')\n"
        "    again = pickle.loads(pickle.dumps(exc))\n"
        "    if type(again) is not cls or str(again) != str(exc):\n"
        "        bad.append(name)\n"
        "group = e.DekerVSubsetError('m', [e.DekerMemoryError('x')], [(1,)])\n"
        "again = pickle.loads(pickle.dumps(group))\n"
        "assert again.tiles == ((1,),) and type(again.exceptions[0]) is e.DekerMemoryError\n"
        "print(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
