"""Which records go into which partition: whole classes, in runs of about equal image count."""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from partdistill.data.index import partition


def class_key(record: dict) -> str:
    """A record's class: the `class_key` a store record carries, else a dataset record's `wnid`, else
    `class-<category_id of its first annotation>`, else 'all'."""
    if "class_key" in record:
        return record["class_key"]
    if "wnid" in record:
        return record["wnid"]
    if record.get("annotations"):
        return f"class-{record['annotations'][0]['category_id']}"
    return "all"


def partition_records(records: list[dict], index: int, num_partitions: int,
                      key: Callable[[dict], str] = class_key) -> list[dict]:
    """The records of partition `index` of `num_partitions`, in their input order.

    Partitions hold whole classes (part ranking clusters per class): the classes, in sorted key
    order, are split into contiguous runs of about equal image count by `data.index.partition`.
    With fewer classes than partitions (or one dominant class) some partitions are empty.
    """
    keys = [key(r) for r in records]
    chosen = set(partition(Counter(keys), index, num_partitions))
    return [r for r, k in zip(records, keys) if k in chosen]
