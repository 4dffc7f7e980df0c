"""Atomic file writes: a reader (or a rerun after a crash) never sees half a file."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Callable


def replace_atomically(path: Path, write: Callable[[Path], None], durable: bool = False) -> None:
    """`write(tmp)` fills a temporary file beside `path`, which is then renamed over `path`.

    The temporary name is unique per writer (array tasks may write the same file at once) and
    made like any new file, so it gets the umask's permissions (mkstemp's 0600 would hide shared
    results from a team). `durable` also syncs the file and the rename to disk (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:  # the rename itself survives a node crash
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_text_atomic(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, data, indent: int | None = None) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent))


def _umask() -> int:
    """This process's umask. Linux shows it in /proc; elsewhere it is read by setting and restoring
    it, which a thread creating a file at that moment could see."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_mode() -> int:
    """The permissions a new file gets under this process's umask (0644 under 022): what a library that
    creates its files 0600 (safetensors) should be given, so a team can read the outputs."""
    return 0o666 & ~_umask()
