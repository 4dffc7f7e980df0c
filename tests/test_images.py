"""A corrupt image is found when a stage reads it: skipped and counted, the others still load."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from partdistill.data.images import ImageRecords, UnreadableImage, collate, read_rgb


@pytest.fixture
def files(tmp_path):
    good = tmp_path / "good.JPEG"
    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(good, quality=95)
    truncated = tmp_path / "truncated.JPEG"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.JPEG"
    garbage.write_bytes(b"not an image at all")
    return good, truncated, garbage


def test_read_rgb(files):
    good, truncated, garbage = files
    assert read_rgb(str(good)).shape == (32, 48, 3)
    for bad in (truncated, garbage):
        with pytest.raises(UnreadableImage, match=bad.name):
            read_rgb(str(bad))


def test_loader_skips_and_counts_unreadable_images(files):
    records = [{"file_name": str(f), "image_id": f.stem} for f in files * 2]
    loader = torch.utils.data.DataLoader(ImageRecords(records), batch_size=4, collate_fn=collate, num_workers=0)
    read, skipped = [], []
    for ok, bad in loader:
        read += [s["record"]["image_id"] for s in ok]
        skipped += [s["skipped"] for s in bad]
    assert read == ["good", "good"]
    assert len(skipped) == 4 and sum("truncated.JPEG" in s for s in skipped) == 2


def test_loader_workers_default_to_the_cpus_this_process_may_use(compose_cfg):
    import os

    from partdistill.data.images import loader_workers

    cpus = len(os.sched_getaffinity(0))
    assert loader_workers(None) == min(8, cpus) and loader_workers(3) == 3  # an explicit value is used as given
    cfg = compose_cfg("data=imagenet_1k", "stage=proposal_learning")
    assert cfg.data.num_workers is None and cfg.stage.num_workers is None
