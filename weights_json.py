"""The json weight files of V and M: one reader and one writer for both.

A file is {"format": <tag>, <hyper-parameters>..., "weights": [{"name", "shape", "data"}, ...]}
where data is the base64 of the values in C order, little-endian, in the file's dtype
(float16 for V, float32 for M). Files are written atomically (temp file, then rename), and
every problem in a file is a ValueError naming the file and what is wrong (nan or inf
weights included: neither is ever written).
"""
import base64
import binascii
import json
import os

import numpy as np


def require(mapping, key, where):
    if not isinstance(mapping, dict) or key not in mapping:
        raise ValueError(f"{where}: missing key {key!r}")
    return mapping[key]


def write(path, tag, header: dict, weights: dict, dtype):
    """Write {name: array} under `header` to `path`; values are stored as `dtype`."""
    entries = []
    for name, values in weights.items():
        stored = np.ascontiguousarray(values, np.dtype(dtype))
        if not np.all(np.isfinite(stored)):
            raise ValueError(f"weight {name!r} does not fit in {np.dtype(dtype).name}")
        entries.append({"name": name, "shape": list(stored.shape),
                        "data": base64.b64encode(stored.tobytes()).decode("ascii")})
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"format": tag, **header, "weights": entries}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_document(path, tag) -> dict:
    """The parsed file, once its format tag is checked."""
    try:
        with open(path) as f:
            document = json.load(f)
    except ValueError as e:                   # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON (truncated or corrupt file?): {e}") from None
    except OSError as e:                      # a directory, no permission...
        raise ValueError(f"{path}: cannot read the file: {e.strerror or e}") from None
    found = require(document, "format", path)
    if found != tag:
        raise ValueError(f"{path}: format is {found!r}, expected {tag!r}")
    return document


def read_weights(document, path, shapes: dict, dtype) -> dict:
    """{name: float32 array} of the file's weights, checked against {name: shape} in order."""
    dtype = np.dtype(dtype)
    entries = require(document, "weights", path)
    if not isinstance(entries, list) or len(entries) != len(shapes):
        raise ValueError(f"{path}: expected a list of {len(shapes)} weights")
    weights = {}
    for (name, shape), entry in zip(shapes.items(), entries):
        where = f"{path}: weight {name!r}"
        found = require(entry, "name", where)
        if found != name:
            raise ValueError(f"{where}: found name {found!r} in its place")
        stored_shape = require(entry, "shape", where)
        if list(stored_shape) != list(shape):
            raise ValueError(f"{where}: shape mismatch, file has {stored_shape}, model has {list(shape)}")
        try:
            raw = base64.b64decode(require(entry, "data", where), validate=True)
        except (binascii.Error, TypeError) as e:
            raise ValueError(f"{where}: data is not valid base64: {e}") from None
        expected_bytes = int(np.prod(shape)) * dtype.itemsize
        if len(raw) != expected_bytes:
            raise ValueError(f"{where}: data has {len(raw)} bytes, expected {expected_bytes}")
        values = np.frombuffer(raw, dtype)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise ValueError(f"{where}: {bad} of its {values.size} values are nan or inf (a diverged training?)")
        weights[name] = values.astype(np.float32).reshape(shape)
    return weights
