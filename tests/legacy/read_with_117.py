"""Run by deker 1.1.7's interpreter: read a whole storage, dump what it sees, check integrity.

usage: python read_with_117.py STORAGE_DIR OUT_DIR
Writes OUT_DIR/<collection>__<id>.npy for each array/varray and OUT_DIR/report.json.
"""

import json
import sys
from pathlib import Path

import hdf5plugin  # noqa: F401  (registers filters)
import numpy as np

from deker import Client

root, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
report = {"collections": {}}
with Client(f"file://{root}") as client:
    for coll in client:
        entries = {}
        for obj in coll:
            np.save(out / f"{coll.name}__{obj.id}.npy", obj[:].read())
            entries[obj.id] = {
                "kind": type(obj).__name__,
                "primary": json.loads(json.dumps(dict(obj.primary_attributes), default=str)),
                "custom": json.loads(json.dumps(dict(obj.custom_attributes), default=str)),
            }
            if primary := dict(obj.primary_attributes):
                found = coll.filter(primary).last()
                entries[obj.id]["found_by_key"] = found is not None and found.id == obj.id
        report["collections"][coll.name] = {"dict": coll.as_dict, "objects": entries}
    client.check_integrity(4)  # raises DekerIntegrityError on any problem
report["integrity"] = "ok"
(out / "report.json").write_text(json.dumps(report, default=str))
