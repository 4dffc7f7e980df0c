"""Cheap and safe looks into dataset folders and files: the layout checks' `Checker`, entries that
cannot be used, and whether an annotated sample's image fits its annotation.

The checks stat the files and folders a dataset must have, list a folder with one `os.scandir`, and
look into a few sampled subfolders for one file; they never walk a dataset. A symlink loop or a name
that is not UTF-8 (`problem`) must not stop a check or an index build of a tree of millions: it is
skipped and named (`shown`), and the rest goes on. `image_mismatch` reads an image's header only.
"""
from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from partdistill.data.layout import LayoutReport

WNID = re.compile(r"^n\d{8}$")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SAMPLED_FOLDERS = 8  # class folders sampled for emptiness per split


def problem(entry: os.DirEntry) -> str | None:
    """Why `entry` cannot be used, or None when it can.

    A name that is not UTF-8 can be neither stored in the index (Parquet strings are UTF-8) nor
    printed; a symlink loop, or a link that cannot be followed for another reason, makes
    `is_dir()`/`is_file()` raise. The check follows the link with `is_dir()`, whose result the
    entry caches, so the caller's own `is_dir()`/`is_file()`/`stat()` cost no second system call.
    """
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir decodes undecodable bytes to lone surrogates
        return "the name is not valid UTF-8 (rename it)"
    try:
        entry.is_dir()
    except OSError as error:
        return "a symlink loop" if error.errno == errno.ELOOP else f"cannot be followed ({error.strerror})"
    return None


def shown(path: str) -> str:
    """`path` as it can be printed and logged: bytes that are not UTF-8 written as `\\xNN`."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def image_mismatch(image: Path, height: int, width: int) -> str | None:
    """Why `image` cannot carry an annotation of `height` x `width`, or None: it is missing, its header
    is unreadable, or it has another size (every mask would be misplaced, an IndexError later)."""
    try:
        with Image.open(image) as opened:  # reads the header, decodes nothing
            actual_width, actual_height = opened.size
    except FileNotFoundError:
        return "missing"
    except OSError as error:  # PIL's UnidentifiedImageError is an OSError
        return f"unreadable ({error})"
    if (actual_height, actual_width) != (height, width):
        return f"{actual_height}x{actual_width} pixels where the annotation is {height}x{width}"
    return None


class Checker:
    """Accumulates what is missing under one dataset folder into a report."""

    def __init__(self, report: LayoutReport):
        self.report = report
        self.base = report.path

    def _absent(self, path: Path, what: str) -> bool:
        """Records `path` as missing (naming a broken symlink as such); True if it was absent."""
        if path.is_symlink() and not path.exists():
            self.report.missing.append(f"{path} ({what}; a broken symlink to {os.readlink(path)})")
            return True
        return False

    def folder(self, rel: str, what: str = "folder") -> Path | None:
        return self._expect(rel, what, Path.is_dir, "/")

    def file(self, rel: str, what: str = "file") -> Path | None:
        return self._expect(rel, what, Path.is_file, "")

    def _expect(self, rel: str, what: str, is_kind, shown_suffix: str) -> Path | None:
        """base/rel if it is of the kind `is_kind` tests, else None with it recorded as missing."""
        path = self.base / rel
        if self._absent(path, what):
            return None
        if not is_kind(path):
            self.report.missing.append(f"{path}{shown_suffix} ({what})")
            return None
        return path

    def _usable(self, entries: Iterable[os.DirEntry]) -> Iterator[os.DirEntry]:
        """The entries that can be followed; a symlink loop or an undecodable name is a warning, not a crash."""
        for e in entries:
            reason = problem(e)
            if reason is None:
                yield e
            else:
                self.report.warnings.append(f"{shown(e.path)}: {reason} (skipped)")

    def has_file(self, folder: Path, suffixes: Sequence[str]) -> bool:
        """True if `folder` holds at least one file with one of `suffixes` (stops at the first)."""
        with os.scandir(folder) as entries:
            return any(e.is_file() for e in self._usable(e for e in entries if e.name.lower().endswith(suffixes)))

    def subfolders(self, folder: Path, pattern: re.Pattern | None = None) -> list[str]:
        with os.scandir(folder) as entries:
            wanted = (e for e in entries if pattern is None or pattern.match(e.name))
            return sorted(e.name for e in self._usable(wanted) if e.is_dir())

    def sampled_nonempty(self, folder: Path, names: list[str], suffixes: Sequence[str], what: str) -> None:
        """Looks into up to SAMPLED_FOLDERS evenly spaced subfolders for one file each."""
        step = max(1, len(names) // SAMPLED_FOLDERS)
        sample = names[::step][:SAMPLED_FOLDERS]
        empty = [n for n in sample if not self.has_file(folder / n, suffixes)]
        for name in empty:
            self.report.missing.append(
                f"{folder / name}/ ({what} has no {'/'.join(suffixes)} file; "
                f"{len(empty)} of {len(sample)} sampled {what}s are empty)"
            )

    def class_folders(self, rel: str, expected: int | None = None) -> int:
        """Checks an ImageNet-style folder of wnid class folders; returns how many there are."""
        folder = self.folder(rel, "folder of class folders n########/")
        if folder is None:
            return 0
        names = self.subfolders(folder, WNID)
        if not names:
            self.report.missing.append(f"{folder}/n########/ (no class folders named by WordNet id)")
            return 0
        if expected is not None and len(names) != expected:
            self.report.warnings.append(f"{folder}: {len(names)} class folders, the full dataset has {expected}")
        self.sampled_nonempty(folder, names, IMAGE_SUFFIXES, "class folder")
        return len(names)
