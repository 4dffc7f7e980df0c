"""What a computed result was made from: its identity, hashed, and the differences between two.

A stage's store (`store.json`) and a training stage's checkpoints (`identity.json`) record the
identity of what made them: a nested JSON-able dict of the options, data and inputs that decide
the result. A later run that would add to them compares its own identity with the recorded one,
and a difference is named key by key, so the user sees what changed rather than a hash. A leaf
module: the store and the engine, independent of each other, both use it.
"""
from __future__ import annotations

import hashlib
import json

MISSING = "<missing>"  # shown for a key that one side does not have


def identity_hash(identity: dict) -> str:
    """The first 16 hex chars of the sha256 of `identity` as canonical JSON (sorted keys, compact)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(value, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out = {}
    for key, child in value.items():
        out.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differing_keys(old: dict, new: dict) -> list[str]:
    """The flattened keys whose values differ (or that one side lacks), in key order."""
    return _differing(flatten(old), flatten(new))


def _differing(flat_old: dict, flat_new: dict) -> list[str]:
    return sorted(key for key in flat_old.keys() | flat_new.keys()
                  if flat_old.get(key, MISSING) != flat_new.get(key, MISSING))


def differences(old: dict, new: dict) -> list[str]:
    """'  key: old (stored) vs new (now)' for every flattened key whose values differ, in key order."""
    flat_old, flat_new = flatten(old), flatten(new)
    return [f"  {key}: {_shown(flat_old.get(key, MISSING))} (stored) vs {_shown(flat_new.get(key, MISSING))} (now)"
            for key in _differing(flat_old, flat_new)]


def _shown(value) -> str:
    return MISSING if value is MISSING else json.dumps(value, ensure_ascii=False)
