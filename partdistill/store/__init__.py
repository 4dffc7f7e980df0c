"""The pseudo-label store: sharded, resumable stage outputs (see `partdistill.store.shards`)."""
from partdistill.identity import identity_hash
from partdistill.store.partitions import class_key, partition_records
from partdistill.store.shards import Store, StoreMismatch, StoreMissing
from partdistill.store.writer import ShardWriter

__all__ = [
    "ShardWriter", "Store", "StoreMismatch", "StoreMissing", "class_key", "identity_hash", "partition_records",
]
