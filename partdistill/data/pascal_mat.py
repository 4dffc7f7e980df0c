"""The Pascal-Part annotation format (Chen et al.): one `.mat` file per annotated image, read and written.

As `scipy.io.loadmat(path)` returns it: variable `anno`, a 1x1 struct with fields `imname` (string)
and `objects` (1xN struct array). Each object: `class` (a string as the files spell it, 'table' for
diningtable), `classind` (the 1-based VOC class index, a double), `mask` (HxW uint8 0/1) and `parts`
(1xM struct array of `part_name` and `mask`, or an empty 0x0 array). `write_mat` writes exactly this
structure, so the synthetic copies go through the same reader as the released files.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import mat_struct

# one object as read: (class as the file spells it, HxW bool mask, [(raw part name, HxW bool mask)])
MatObject = tuple[str, np.ndarray, Sequence[tuple[str, np.ndarray]]]


class MatLayoutError(ValueError):
    """A .mat file that cannot be read or does not have the Pascal-Part layout."""


def _field(struct: object, name: str) -> object:
    if not isinstance(struct, mat_struct) or not hasattr(struct, name):
        raise MatLayoutError(f"expected a struct with field {name!r}")
    return getattr(struct, name)


def _items(value: object) -> list:
    """Struct arrays as a list: squeeze_me turns 1 element into the element itself, 0 into an empty array."""
    return list(value.ravel()) if isinstance(value, np.ndarray) else [value]


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise MatLayoutError(f"{what} is not a string")
    return value


def _mask(value: object, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 2:
        raise MatLayoutError(f"{what} is not a 2-D array")
    return value != 0


def read_mat(path: Path) -> list[MatObject]:
    """The objects of one Pascal-Part .mat file; classes as the file names them ('table'), masks boolean.

    Raises:
        MatLayoutError: the file is unreadable, or lacks the `anno.objects[].parts[]` layout, or its
            masks differ in shape (the message says which).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # scipy warns about odd files: treat them as unreadable
            data = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # a corrupt file fails in many ways (ValueError, zlib.error, struct.error, ...)
        raise MatLayoutError(f"unreadable .mat file ({type(e).__name__}: {e})") from e
    if "anno" not in data:
        raise MatLayoutError("no variable 'anno'")
    objects = []
    for i, obj in enumerate(_items(_field(data["anno"], "objects"))):
        parts = [
            (_text(_field(part, "part_name"), f"objects[{i}].parts[{j}].part_name"),
             _mask(_field(part, "mask"), f"objects[{i}].parts[{j}].mask"))
            for j, part in enumerate(_items(_field(obj, "parts")))
        ]  # fmt: skip
        name = _text(_field(obj, "class"), f"objects[{i}].class")
        objects.append((name, _mask(_field(obj, "mask"), f"objects[{i}].mask"), parts))
    if not objects:
        raise MatLayoutError("anno.objects is empty")
    shapes = {m.shape for _, mask, parts in objects for m in [mask] + [pm for _, pm in parts]}
    if len(shapes) != 1:
        raise MatLayoutError(f"masks differ in shape: {sorted(shapes)}")
    return objects


def write_mat(path: Path, imname: str, objects: Sequence[tuple[str, int, np.ndarray, Sequence[tuple[str, np.ndarray]]]],
              ) -> None:
    """Writes one annotation file in the released struct layout.

    Args:
        path: the .mat file.
        imname: the image id.
        objects: (class as the files spell it, 1-based VOC class index, HxW mask, [(raw part name,
            HxW mask)]) per object; an object without parts gets an empty 0x0 `parts`, as in the
            released files.
    """
    obj_fields = [("class", object), ("classind", object), ("mask", object), ("parts", object)]
    obj_array = np.empty((1, len(objects)), dtype=obj_fields)
    for i, (mat_class, classind, mask, parts) in enumerate(objects):
        part_array = np.zeros((0, 0))
        if parts:
            part_array = np.empty((1, len(parts)), dtype=[("part_name", object), ("mask", object)])
            for j, (part_name, part_mask) in enumerate(parts):
                part_array[0, j] = (part_name, part_mask.astype(np.uint8))
        # classind a double, as MATLAB wrote it
        obj_array[0, i] = (mat_class, float(classind), mask.astype(np.uint8), part_array)
    anno = np.empty((1, 1), dtype=[("imname", object), ("objects", object)])
    anno[0, 0] = (imname, obj_array)
    scipy.io.savemat(str(path), {"anno": anno}, do_compression=True)
