"""Single-purpose hooks of the training loop, run in the order given to the Trainer.

Each hook sees the trainer as `self.trainer` (`iter` = steps completed, `max_iter`, `start_iter`,
`metrics` of the last step, `model`, `run_dir`, `is_main`). The order that keeps a resumed run's
logs whole: `EvalHook` (it adds its results to the step's `trainer.metrics`), then the writers,
then `PeriodicCheckpointer` last, so a checkpoint at N implies that step N was written and a run
killed between the two redoes the step rather than losing its line.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from partdistill.engine.rng import rng_preserved
from partdistill.io import write_text_atomic

log = logging.getLogger(__name__)


class Hook:
    """Does nothing; subclasses override what they need."""

    trainer = None  # set by the Trainer

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class PeriodicCheckpointer(Hook):
    """Saves a checkpoint every `period` iterations and at `max_iter` (the trainer keeps the last K)."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self) -> None:
        t = self.trainer
        if t.iter % self.period == 0 or t.iter == t.max_iter:
            t.save_checkpoint()


def flatten(metrics: Mapping, prefix: str = "") -> dict[str, float]:
    """{"part_miou": {"mIoU": 40.1}} -> {"part_miou/mIoU": 40.1}."""
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float)):
            flat[name] = float(value)
    return flat


class EvalHook(Hook):
    """Calls `eval_fn(model)` every `period` iterations and once at the end, on every rank.

    `eval_fn` returns metrics (nested dicts of numbers, as evaluators return them); they are
    logged and added to `trainer.metrics` as `eval/<task>/<metric>`. The model is put back in
    train mode and every RNG state restored afterwards. The final evaluation runs after training
    ends at `max_iter`, also when a resumed run finds nothing left to train (a job killed during
    its last evaluation), but not when a save-now request stopped the run.
    """

    def __init__(self, period: int, eval_fn: Callable[[object], Mapping]):
        self.period, self.eval_fn = period, eval_fn
        self.last_iter: int | None = None  # iteration of the last evaluation in this process
        self.results: dict = {}

    def _evaluate(self) -> None:
        t = self.trainer
        with rng_preserved():  # evaluating must not change what training draws next
            t.model.eval()
            try:
                self.results = flatten(self.eval_fn(t.model))
            finally:
                t.model.train()
        self.last_iter = t.iter
        if self.results:
            log.info("evaluation at iteration %d: %s", t.iter, json.dumps(self.results))
        t.metrics.update({f"eval/{k}": v for k, v in self.results.items()})

    def after_step(self) -> None:
        t = self.trainer
        if self.period > 0 and t.iter % self.period == 0 and t.iter < t.max_iter:
            self._evaluate()

    def after_train(self) -> None:
        t = self.trainer
        if t.iter >= t.max_iter and not t.stop_requested and self.last_iter != t.iter:
            self._evaluate()


class JSONLWriter(Hook):
    """Appends `{"iteration": i, **metrics}` to run_dir/metrics.jsonl every `period` steps (main process).

    On resume, lines after the checkpoint's iteration (written by the interrupted run after it
    saved) are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, path: Path | str | None = None, period: int = 1):
        self.path, self.period, self._file = path, period, None

    def before_train(self) -> None:
        t = self.trainer
        if not t.is_main:
            return
        self.path = Path(self.path or t.run_dir / "metrics.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _iteration(line) <= t.start_iter]
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")  # noqa: SIM115 - appended to after each step, closed in after_train

    def after_step(self) -> None:
        t = self.trainer
        if self._file is not None and (t.iter % self.period == 0 or t.iter == t.max_iter):
            self._file.write(json.dumps({"iteration": t.iter, **t.metrics}) + "\n")
            self._file.flush()

    def after_train(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _iteration(line: str) -> float:
    """The iteration of a metrics line; a line cut short by a kill counts as after any checkpoint."""
    try:
        return json.loads(line)["iteration"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class TensorBoardWriter(Hook):
    """Writes the mean of each metric over the last `period` steps to TensorBoard (main process):
    every loss term, total_loss, lr/<group>, grad_norm, data_time, step_time, samples_per_s, eval/*.

    Events after the resumed iteration (from the interrupted run) are purged.
    """

    def __init__(self, log_dir: Path | str | None = None, period: int = 20):
        self.log_dir, self.period = log_dir, period
        self._writer, self._sums, self._counts = None, {}, {}

    def before_train(self) -> None:
        t = self.trainer
        if not t.is_main:
            return
        # imports tensorboard (about 1 s): only when used
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.log_dir or t.run_dir / "tensorboard"), purge_step=t.start_iter + 1)

    def after_step(self) -> None:
        t = self.trainer
        if self._writer is None:
            return
        for key, value in t.metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1
        if t.iter % self.period == 0 or t.iter == t.max_iter:
            for key, total in self._sums.items():
                self._writer.add_scalar(key if "/" in key else f"train/{key}", total / self._counts[key], t.iter)
            self._writer.flush()
            self._sums, self._counts = {}, {}

    def after_train(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
