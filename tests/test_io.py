"""Atomic writes leave whole files with the permissions of any new file."""
from __future__ import annotations

import os

from partdistill.io import write_json_atomic


def test_atomic_write_is_whole_and_shared(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").read_text() == '{"x": 1}'
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
