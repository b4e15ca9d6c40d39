"""deker: a storage engine for huge multidimensional numpy arrays in HDF5 files.

API- and format-compatible with deker 1.1.7: a :class:`Client` opens a ``file://`` storage of
collections, which hold :class:`Array` objects (one HDF5 file each) or :class:`VArray` objects
(virtual arrays tiled over many files).  Subsets read, update, clear and describe regions.
"""

from deker.arrays import Array, VArray
from deker.client import Client
from deker.collection import Collection
from deker.collection import FilteredManager as FilteredManager
from deker.dimensions import Dimension, TimeDimension
from deker.options import HDF5CompressionOpts, HDF5Options
from deker.schemas import ArraySchema, AttributeSchema, DimensionSchema, TimeDimensionSchema, VArraySchema
from deker.subset import Subset, VSubset
from deker.types import Scale as Scale

__version__ = "2.0.0.dev0"

__all__ = [
    "HDF5CompressionOpts",
    "HDF5Options",
    "Array",
    "VArray",
    "Client",
    "Collection",
    "Dimension",
    "TimeDimension",
    "ArraySchema",
    "AttributeSchema",
    "DimensionSchema",
    "TimeDimensionSchema",
    "VArraySchema",
    "Subset",
    "VSubset",
]
