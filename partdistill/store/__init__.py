"""The pseudo-label store: sharded, resumable stage outputs (see `partdistill.store.shards`)."""
from partdistill.store.shards import (
    ShardWriter,
    Store,
    StoreMismatch,
    StoreMissing,
    class_key,
    identity_hash,
    partition_records,
)

__all__ = [
    "ShardWriter", "Store", "StoreMismatch", "StoreMissing", "class_key", "identity_hash", "partition_records",
]
