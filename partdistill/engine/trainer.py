"""The iteration-based training loop (detectron2's `SimpleTrainer` + hooks, not epochs).

    sampler = ResumableSampler(len(dataset), seed=cfg.seed, sample_seeds=True)
    trainer = Trainer(model, loss_fn, optimizer, scheduler, sampler=sampler,
                      make_loader=lambda s: DataLoader(dataset, batch_size=per_rank, sampler=s, ...),
                      ims_per_batch=solver.ims_per_batch, max_iter=solver.max_iter, run_dir=run_dir,
                      hooks=[EvalHook(stage.eval_period, evaluate), JSONLWriter(), TensorBoardWriter(),
                             PeriodicCheckpointer(stage.checkpoint_period)],
                      clip_grad_norm=solver.clip_grad_norm, amp=solver.amp, resume=stage.resume,
                      keep_checkpoints=stage.keep_checkpoints)
    trainer.train()   # resume=auto: continues from run_dir/checkpoints when a checkpoint is there

`loss_fn(model, batch) -> {term: 0-d tensor}`: the terms are summed for backward and each is
logged. One step: next batch -> forward under autocast (bf16 on CUDA; CPU runs stay fp32) ->
backward -> full-model L2 clipping -> optimizer step -> scheduler step -> hooks.

`save_now()` (registered with the SLURM preemption handler while `train()` runs) saves a
checkpoint and makes `train()` stop. Called between steps it saves the state at once; called
during a step (from a signal handler) it asks the loop to save when that step ends, because
mid-step the model, optimizer and RNG states do not belong to one iteration; it tells
`preemption.save_later()`, and the loop calls `preemption.saved()` after the save, which is when
a SLURM job requeues itself (and exits).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from partdistill.config.schema import Resume
from partdistill.engine import checkpoint as ckpt_io
from partdistill.models.weights import Checkpoint, latest_checkpoint, list_checkpoints
from partdistill.engine import identity as training_identity
from partdistill.engine import preemption
from partdistill.engine.rng import rng_preserved, rng_state, seed_rank
from partdistill.engine.sampler import ResumableSampler
from partdistill.engine.solver import clip_gradients
from partdistill.errors import UserError

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, object], Mapping[str, torch.Tensor]]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def to_device(batch, device: torch.device):
    """`batch` with every tensor inside dicts, lists and tuples moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple takes its fields as arguments
        return type(batch)(*(to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Runs `loss_fn` steps from the resumed iteration to `max_iter`.

    Args:
        model (nn.Module): the model, not wrapped; it is moved to `device`, and wrapped in DDP
            during `train()` when torch.distributed is initialised.
        loss_fn (LossFn): named loss terms of one batch; receives the (possibly DDP) model.
        optimizer, scheduler: from `build_optimizer` / `build_scheduler` on this model.
        sampler (ResumableSampler): its position is checkpointed and restored before `make_loader`.
        make_loader (Callable[[ResumableSampler], Iterable]): builds the (infinite) batch iterator
            over the sampler; called once per `train()`, after resuming.
        ims_per_batch (int): global batch size (all ranks); the sampler advances by it every step.
        max_iter (int): steps in the whole run.
        run_dir (Path): checkpoints go to run_dir/checkpoints, hooks write under it.
        hooks (Sequence[Hook]): called in order before training, after each step, after training.
        clip_grad_norm (float): full-model L2 max norm; <= 0 disables.
        amp (bool): bf16 autocast on CUDA (no effect on CPU).
        device (torch.device | None): None = the current CUDA device if any, else CPU.
        resume (Resume | str): "auto" continues from the newest complete checkpoint; "never" starts at 0;
            "restart" is auto, except that checkpoints of another identity are removed, not refused.
        keep_checkpoints (int): complete checkpoints kept in run_dir/checkpoints.
        progress (bool): a tqdm bar on the main process.
        ddp_kwargs (dict): extra DistributedDataParallel arguments (e.g. find_unused_parameters).
        identity (dict | None): what this run trains (JSON-able; see `engine.identity`), recorded in
            run_dir/checkpoints and compared before resuming by rank 0 (other ranks may pass None);
            None = no check (checkpoints are resumed whatever made them).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer, scheduler, *,
                 sampler: ResumableSampler, make_loader: Callable[[ResumableSampler], Iterable], ims_per_batch: int,
                 max_iter: int, run_dir: Path | str, hooks: Sequence = (), clip_grad_norm: float = 0.0,
                 amp: bool = True, device: torch.device | None = None, resume: Resume | str = Resume.auto,
                 keep_checkpoints: int = 3, progress: bool = True, ddp_kwargs: dict | None = None,
                 identity: dict | None = None):
        if device is None:
            cuda = torch.cuda.is_available()
            device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.device = device
        self.model = model.to(device)
        self.loss_fn, self.optimizer, self.scheduler = loss_fn, optimizer, scheduler
        self.sampler, self.make_loader = sampler, make_loader
        self.rank, self.world_size = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        if ims_per_batch % self.world_size:
            raise ValueError(f"ims_per_batch={ims_per_batch} is not divisible by the {self.world_size} processes")
        self.ims_per_batch, self.max_iter = ims_per_batch, max_iter
        self.run_dir = Path(run_dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.clip_grad_norm = clip_grad_norm
        self.amp = amp and device.type == "cuda"
        self.resume = Resume(resume)
        self.keep_checkpoints, self.progress, self.ddp_kwargs = keep_checkpoints, progress, ddp_kwargs or {}
        self.identity = identity
        self.hooks = list(hooks)
        for hook in self.hooks:
            hook.trainer = self
        self.iter = self.start_iter = 0  # iter = steps completed
        self.metrics: dict[str, float] = {}  # the last step's: loss terms, total_loss, lr, times
        self._running = self._stop_requested = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def stop_requested(self) -> bool:
        """Whether `save_now()` asked this `train()` to stop (on this rank)."""
        return self._stop_requested

    # -----------------------------------------------------------------------------------------
    # checkpoints

    def resume_or_start(self) -> None:
        """Restores the newest complete checkpoint when `resume` allows it and there is one.

        Raises:
            UserError: the checkpoints were made under another identity, or go beyond max_iter.
        """
        choice = list(self._choose()) if self.is_main else [None, None]
        if self.world_size > 1:  # rank 0 chooses: on a shared file system others may not see the same files yet
            dist.broadcast_object_list(choice, src=0)
        iteration, refused = choice
        if refused is not None:
            raise UserError(refused)
        if iteration is None:
            self.iter = self.start_iter = 0
            if self.world_size > 1:  # ranks drew from one seed so far (identical weights); now their own streams
                seed_rank(self.rank)
            return
        found = Checkpoint.at(self.checkpoint_dir, iteration)
        state = ckpt_io.load_checkpoint(found, self.model, self.optimizer, self.scheduler, rank=self.rank)
        self.sampler.load_state_dict(state["extra"]["sampler"])
        self.iter = self.start_iter = state["iteration"]

    def _choose(self) -> tuple[int | None, str | None]:
        """(the iteration to resume from, or None to start at 0; why this run may not use the folder's
        checkpoints, or None), decided on rank 0, which records this run's identity when it goes on."""
        folder = self.checkpoint_dir
        existing = list_checkpoints(folder)
        if self.identity is not None and existing:
            problem = training_identity.explain(folder, self.identity, existing[0].iteration, self.max_iter)
            if problem is not None and self.resume is not Resume.restart:
                return None, training_identity.refusal(problem)
            if problem is not None:
                removed = ckpt_io.remove_checkpoints(folder)
                log.warning("stage.resume=restart: removed %d checkpoint(s) of another run, starting over in %s. "
                            "%s", removed, folder, problem)
        if self.identity is not None:
            training_identity.record(folder, self.identity, self.max_iter)
        if self.resume is Resume.never:
            return None, None
        found = latest_checkpoint(folder)
        return (found.iteration if found else None), None

    def save_checkpoint(self, collective: bool = True) -> Path | None:
        """Saves the state after `self.iter` steps; rank 0 writes. Returns the state file written.

        In DDP with `collective` every rank must call it: each one's RNG states are gathered, and
        no rank goes on before the files exist. Without it (a signal outside the loop, where the
        other ranks are elsewhere), rank 0 saves its own RNG states only.
        """
        collective = collective and self.world_size > 1
        rng = [rng_state()]
        if collective:
            rng = [None] * self.world_size
            dist.all_gather_object(rng, rng_state())
        written = None
        if self.is_main:
            written = ckpt_io.save_checkpoint(self.checkpoint_dir, self.iter, self.model, self.optimizer,
                                              self.scheduler, {"sampler": self.sampler.state_dict()}, rng=rng,
                                              keep=self.keep_checkpoints).state_path
        if collective:
            dist.barrier()
        return written

    def save_now(self) -> Path | None:
        """Saves a checkpoint and stops `train()` cleanly (the SLURM preemption callback).

        Outside `train()`: saves at once. Inside (between steps, from a hook, or mid-step from a
        signal handler): `train()` saves when the current step and its hooks are done, then
        returns; returns None here. Must not wait on other ranks: in DDP, only rank 0 may be
        signalled, and the loop shares the request with every rank at the end of the step.
        """
        if not self._running:
            return self.save_checkpoint(collective=False)
        self._stop_requested = True
        preemption.save_later()  # a SLURM requeue waits for the save (preemption.saved() below)
        return None

    def _stop_agreed(self) -> bool:
        """Whether any rank asked to stop (one tiny all-reduce per step in DDP)."""
        if self.world_size == 1:
            return self._stop_requested
        device = self.device if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([float(self._stop_requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # -----------------------------------------------------------------------------------------
    # the loop

    def train(self) -> dict[str, float]:
        """Trains from the resumed iteration to `max_iter` (or to a `save_now()`); returns the last metrics."""
        self.resume_or_start()
        per_rank = self.ims_per_batch // self.world_size
        with rng_preserved():  # a fresh and a resumed run build their loaders at different points
            loader = self.make_loader(self.sampler)
            data = iter(loader)
        if getattr(loader, "batch_size", None) not in (None, per_rank):
            raise ValueError(f"the loader's batch size {loader.batch_size} is not "
                             f"ims_per_batch / world_size = {per_rank}")
        model = self._wrap(self.model)
        model.train()
        self.metrics = {}
        bar = tqdm(total=self.max_iter, initial=self.iter, desc="train", dynamic_ncols=True,
                   disable=not (self.progress and self.is_main), mininterval=1.0 if sys.stderr.isatty() else 60.0)
        self._running, self._stop_requested = True, False
        with preemption.registered(self.save_now), contextlib.closing(bar):
            try:
                for hook in self.hooks:
                    hook.before_train()
                while True:
                    if self._stop_agreed():  # also at max_iter: a request during the last step still saves
                        self.save_checkpoint()
                        log.info("stopped at iteration %d after a save-now request", self.iter)
                        preemption.saved()  # on SLURM: requeues the job now, and exits
                        break
                    if self.iter >= self.max_iter:
                        break
                    self._step(model, data)
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.metrics['total_loss']:.4g}", refresh=False)
                    for hook in self.hooks:
                        hook.after_step()
            finally:
                self._running = False
                for hook in self.hooks:
                    hook.after_train()
        return self.metrics

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **self.ddp_kwargs)

    def _step(self, model: nn.Module, data) -> None:
        start = time.perf_counter()
        batch = to_device(next(data), self.device)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            terms = dict(self.loss_fn(model, batch))
        total = sum(terms.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss is {total.item()} at iteration {self.iter}: "
                                     + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()))
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = clip_gradients(self.model.parameters(), self.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.sampler.advance(self.ims_per_batch)
        self.iter += 1
        step_time = time.perf_counter() - start
        self.metrics = {**{k: float(v.detach()) for k, v in terms.items()}, "total_loss": float(total.detach()),
                        **{f"lr/{k}": v for k, v in lrs.items()}, "data_time": data_time, "step_time": step_time,
                        "samples_per_s": self.ims_per_batch / step_time}
        if grad_norm is not None:
            self.metrics["grad_norm"] = float(grad_norm)
