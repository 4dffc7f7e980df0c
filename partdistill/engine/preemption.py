"""Save-now requests for a job that SLURM is about to stop (preemption or its time limit).

On SLURM, `hydra/launcher=slurm` runs each job under submitit. SLURM sends the job SIGUSR2
`hydra.launcher.signal_delay_s` seconds before its time limit, and `scancel --signal=USR2 ID`
(or a preempting scheduler) sends the same signal. submitit then calls the launcher's
`checkpoint()` in the job's main process (global rank 0 only), which calls `request_save()`
here before it requeues the job with the same overrides into the same output folder.

A stage with state worth saving registers its save-now while it runs; the training engine does
this itself (`partdistill.engine.trainer.Trainer.train` registers `Trainer.save_now`, which lets
the current step finish, saves a checkpoint and stops; a requeued job resumes from it):

    from partdistill.engine import preemption

    with preemption.registered(trainer.save_now):
        trainer.train()

The callbacks run inside the signal handler, between two Python bytecodes of the running
stage: they must write atomically (temporary file + rename) and not wait on other ranks. A
stage that prefers to save at a safe point can poll `save_requested()` instead (and register
nothing, or a callback that only records the request). Partitioned stages register nothing:
the store keeps complete shards, drops the shard in flight, and a rerun skips complete shards.

A callback that only records the request and saves later, at its stage's next safe point (the
Trainer, between two steps), calls `save_later()`, and `saved()` once the save is written. The
requeue waits for that: submitit's handler requeues the job and exits the process at once
(`sys.exit` from inside the signal handler), which would otherwise end the stage before its save.
The SLURM launcher passes its requeue to `when_saved()`; with nothing pending it runs at once.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

log = logging.getLogger(__name__)

Callback = Callable[[], object]
_callbacks: list[Callback] = []
_requested = False
_pending = False  # a callback called save_later() and its stage has not called saved() yet
_after_save: list[Callback] = []  # run by saved(): the requeue that waits for the save


def on_preemption(callback: Callback) -> Callback:
    """Registers `callback` (no arguments) to run on `request_save()`; returns it (usable as a decorator)."""
    if not callable(callback):
        raise TypeError(f"on_preemption needs a callable, got {type(callback).__name__}")
    _callbacks.append(callback)
    return callback


def remove(callback: Callback) -> None:
    """Unregisters `callback` (no error if it is not registered)."""
    with contextlib.suppress(ValueError):
        _callbacks.remove(callback)


@contextlib.contextmanager
def registered(callback: Callback) -> Iterator[Callback]:
    """`with registered(save_now):` keeps `save_now` registered for the duration of the block."""
    on_preemption(callback)
    try:
        yield callback
    finally:
        remove(callback)


def callbacks() -> list[Callback]:
    """The registered callbacks, in registration order (a copy)."""
    return list(_callbacks)


def save_requested() -> bool:
    """Whether `request_save()` was called in this process (the job is about to stop)."""
    return _requested


def request_save() -> int:
    """Runs every registered callback, in order; returns how many ran without error.

    A failing callback is logged with its traceback and the others still run: the job is
    requeued anyway and resumes from the last checkpoint that was written completely.
    """
    global _requested
    _requested = True
    saved = 0
    for callback in list(_callbacks):
        try:
            callback()
            saved += 1
        except Exception:  # noqa: BLE001 - the requeue must happen whatever a save does
            log.exception("preemption: the save-now callback %r failed", callback)
    return saved


def save_later() -> None:
    """Says that the save asked for is written later, at the stage's next safe point (which calls `saved()`)."""
    global _pending
    _pending = True


def pending() -> bool:
    """Whether a save asked for is still to be written (`save_later()` without `saved()` yet)."""
    return _pending


def when_saved(action: Callback) -> None:
    """Runs `action` once the pending save is written (`saved()`), or now when none is pending."""
    if not _pending:
        action()
        return
    _after_save.append(action)


def saved() -> None:
    """Called by a stage once it has written the save it put off with `save_later()`: runs what
    `when_saved()` queued (on SLURM: the requeue, which exits the process)."""
    global _pending
    _pending = False
    actions = list(_after_save)
    _after_save.clear()
    for action in actions:
        action()


def reset() -> None:
    """Forgets every callback, the request and what waits for it (tests; a process that runs several stages)."""
    global _requested, _pending
    _callbacks.clear()
    _after_save.clear()
    _requested = _pending = False
