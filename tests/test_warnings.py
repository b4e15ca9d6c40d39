"""deker/warnings.py: ``DekerWarning``, the base class of deker's warnings.

Covered: the public name, that it is a ``Warning`` (not a deker error) that the ``warnings``
machinery filters, escalates and pickles, that ``deker.warnings`` does not shadow the standard
library module inside deker, and that ``calculate_storage_size`` (which warned in deker 1.1.7)
now emits none (docs/migration.md row 46, the client's docstring).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from deker import ArraySchema, Client, DimensionSchema
from deker import warnings as deker_warnings
from deker.errors import DekerBaseApplicationError
from deker.warnings import DekerWarning

ROOT = Path(__file__).resolve().parents[1]


def test_public_names() -> None:
    assert deker_warnings.__all__ == ["DekerWarning"]
    assert DekerWarning.__module__ == "deker.warnings"


def test_it_is_a_warning_and_not_an_error() -> None:
    assert issubclass(DekerWarning, Warning)
    assert DekerWarning.__mro__[1] is Warning
    assert not issubclass(DekerWarning, DekerBaseApplicationError)
    assert not issubclass(DekerWarning, (DeprecationWarning, UserWarning, RuntimeWarning))


def test_the_warnings_machinery_handles_it() -> None:
    with pytest.warns(DekerWarning, match="^storage is big$") as record:
        warnings.warn("storage is big", DekerWarning, stacklevel=1)
    assert len(record) == 1 and record[0].category is DekerWarning
    with warnings.catch_warnings():
        warnings.simplefilter("error", DekerWarning)
        with pytest.raises(DekerWarning, match=r"^escalated$"):
            warnings.warn("escalated", DekerWarning, stacklevel=1)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("ignore", DekerWarning)
        warnings.simplefilter("always", UserWarning)
        warnings.warn("hidden", DekerWarning, stacklevel=1)
        warnings.warn("shown", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["shown"]


def test_pickle_round_trip() -> None:
    back = pickle.loads(pickle.dumps(DekerWarning("careful")))
    assert type(back) is DekerWarning and back.args == ("careful",)


def test_deker_warnings_does_not_shadow_the_standard_module() -> None:
    code = (
        "import deker.warnings, deker.client, deker.storage.hdf5, warnings, sys; "
        "print(warnings.__file__ == sys.modules['warnings'].__file__, "
        "'deker' in warnings.__file__, hasattr(warnings, 'catch_warnings'))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "True"]


def test_calculate_storage_size_warns_nothing(tmp_path: Path) -> None:
    with Client(tmp_path.as_uri()) as client:
        schema = ArraySchema(dtype=np.float32, dimensions=[DimensionSchema("x", 8)])
        array = client.create_collection("c", schema).create()
        array[:].update(np.arange(8, dtype=np.float32))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            whole = client.calculate_storage_size()
            one = client.calculate_storage_size("c")
        assert [w.category for w in seen] == []
        assert whole.bytes >= one.bytes > 8 * 4
