"""A full, read-only or forbidden disk ends with one paragraph naming the path and the cause, no traceback."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image

from partdistill import cli, plan
from partdistill.data import masks
from partdistill.store import Store


def test_a_full_disk_inside_a_stage_is_named_with_its_path(capsys):
    with pytest.raises(SystemExit) as info:
        with plan.exit_on_user_error():
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/store/part-0-of-2.tmp")
            except OSError as exc:  # as a stage wraps it
                raise RuntimeError("writing shard 0 failed") from exc
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "/data/run/store/part-0-of-2.tmp: the disk is full (No space left on device)" in err
    assert "run the same command again to resume" in err


def test_overlays_on_a_disk_that_refuses_writes_end_with_a_message(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(image)
    whole = np.ones((4, 6), bool)
    record = {"image_id": "a", "file_name": str(image), "height": 4, "width": 6, "class_key": "n01",
              "objects": [{"segmentation": masks.encode(whole), "parts": [{"segmentation": masks.encode(whole),
                                                                          "label": 0}]}]}
    store = Store(tmp_path / "run/store", "part_ranking", 1, {"test": 1})
    with store.write_shard(0, classes=["n01"]) as shard:
        shard.add(record)
    target = "/sys/partdistill-overlays"  # sysfs takes no new folders, even from root
    status = cli.main(["store", "show", str(tmp_path / "run"), "part_ranking", "--out", target])
    err = capsys.readouterr().err
    assert status == 2 and target in err and "Traceback" not in err
    assert "not permitted" in err or "read-only" in err
