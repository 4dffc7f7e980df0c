"""What a training run trains, recorded beside its checkpoints, and whether a run may resume them.

    <run folder>/checkpoints/identity.json   {"identity": {...}, "identity_hash": ..., "max_iter": N}

The identity (built by the training stage: its options, model, seed, data) holds only what can
change the result; a run resumes a folder's checkpoints when its identity is the recorded one,
and `explain` otherwise says why not, key by key (with partdistill.identity, the code that
compares a pseudo-label store with the configuration asking for it).

`max_iter` is not part of the identity: the schedule (warmup, then `solver.steps`, explicit
iterations) does not depend on it, nor does the order of the samples, so a run of N iterations
is the first N iterations of any longer run of the same identity. A larger max_iter therefore
continues a run, and a smaller one resumes checkpoints up to it; checkpoints beyond it would
make a longer run pass for a shorter one, and are refused. A schedule that derived its steps
from max_iter would show up as changed steps, which count.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from partdistill.identity import differences, identity_hash
from partdistill.io import write_json_atomic

log = logging.getLogger(__name__)

IDENTITY_FILE = "identity.json"


def record(folder: Path, identity: dict, max_iter: int) -> None:
    """Writes `folder/identity.json` (max_iter only for the reader: it is not compared)."""
    write_json_atomic(Path(folder) / IDENTITY_FILE,
                      {"identity_hash": identity_hash(identity), "max_iter": max_iter, "identity": identity},
                      indent=1)


def recorded(folder: Path) -> dict | None:
    """The identity recorded in `folder`, or None where there is none (a run made before identities).

    Raises:
        ValueError: the file is not one that `record` wrote (edited by hand, or another file).
    """
    path = Path(folder) / IDENTITY_FILE
    try:
        return json.loads(path.read_text())["identity"]
    except FileNotFoundError:
        return None
    except (KeyError, TypeError) as exc:
        raise ValueError(f"no identity in it ({exc})") from exc


def recorded_max_iter(folder: Path) -> int | None:
    """The max_iter of the run that last recorded `folder`'s identity, or None (none recorded)."""
    path = Path(folder) / IDENTITY_FILE
    return json.loads(path.read_text()).get("max_iter") if path.is_file() else None


def explain(folder: Path, identity: dict, newest: int, max_iter: int) -> str | None:
    """Why the checkpoints in `folder` (the newest at iteration `newest`) are not a run of `identity`
    stopped at or before `max_iter`, or None when they are, or when no identity was recorded (a run
    made before identities, resumed with one warning and recorded as this one from now on)."""
    folder = Path(folder)
    try:
        stored = recorded(folder)
    except ValueError as exc:
        return f"{folder / IDENTITY_FILE} cannot be read ({exc}): what these checkpoints trained is unknown"
    if stored is None:
        log.warning("%s holds no %s (its checkpoints were made before partdistill recorded what a run "
                    "trains): resuming them unchecked, recorded as this configuration's from now on",
                    folder, IDENTITY_FILE)
        return None
    identity = json.loads(json.dumps(identity))  # as it reads back from disk (tuples become lists)
    if stored != identity:
        return (f"{folder}: these checkpoints (newest: iteration {newest}) were trained with another "
                f"configuration than this run's. What differs:\n" + "\n".join(differences(stored, identity)))
    if newest > max_iter:
        return (f"{folder}: these checkpoints go up to iteration {newest}, beyond stage.solver.max_iter={max_iter}: "
                f"they hold a longer run than this one (a max_iter of at least {newest} continues it)")
    return None


def refusal(problem: str) -> str:
    """`problem` with the two ways out."""
    return (f"{problem}\nResuming them would continue another training than the one asked for. Either\n"
            f"  - train into another folder: run_dir=<a new folder>, or\n"
            f"  - start over in place: stage.resume=restart (removes these checkpoints)\n"
            f"(options that cannot change the result, such as stage.eval_period, do not count here)")
