"""The training engine: exact resume after a kill, save-now, checkpoint files, schedule, clipping, sampler.

A tiny classifier with dropout, a frozen layer and a loss that draws from python's, numpy's and
torch's RNGs, fed by a dataset whose "augmentation" comes from each sample's seed: a resumed run
repeats the uninterrupted one only if every RNG state, the sampler position, the optimizer and the
scheduler come back exactly. Runs that must be separate processes (the kill, DDP) run this file as a
script: `python tests/test_engine.py run|ddp ...`.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from partdistill.config.schema import SolverConfig, TrainingStageConfig
from partdistill.engine import preemption
from partdistill.engine.checkpoint import save_checkpoint
from partdistill.engine.hooks import EvalHook, Hook, JSONLWriter, PeriodicCheckpointer, TensorBoardWriter
from partdistill.engine.sampler import ResumableSampler
from partdistill.engine.solver import build_optimizer, build_scheduler, clip_gradients
from partdistill.engine.trainer import Trainer
from partdistill.errors import UserError
from partdistill.models.weights import latest_checkpoint, list_checkpoints, load_model_file, load_model_weights

HERE = Path(__file__).resolve()
BATCH = 8  # global


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 6)  # frozen by the tests
        self.backbone = nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(16, 3))

    def forward(self, x):
        return self.head(self.backbone(self.stem(x)))


class ToyData(Dataset):
    """40 fixed points in 3 classes; each sample's noise (its augmentation) comes from its sample seed."""

    def __init__(self, n: int = 40):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0).long()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, item):
        index, seed = item
        return self.x[index] + 0.1 * torch.randn(6, generator=torch.Generator().manual_seed(seed)), self.y[index]


def toy_loss(model, batch):
    x, y = batch
    x = x * (1 + 0.05 * random.random()) + 0.01 * float(np.random.randn())  # python and numpy RNGs matter
    return {"ce": F.cross_entropy(model(x), y),  # dropout: torch's RNG matters
            "l2": 1e-3 * sum((p ** 2).sum() for p in model.parameters() if p.requires_grad)}


def solver(max_iter: int) -> SolverConfig:
    return SolverConfig(ims_per_batch=BATCH, base_lr=0.05, max_iter=max_iter, steps=[max_iter * 2 // 3],
                        warmup_iters=3, warmup_factor=0.2, clip_grad_norm=0.5)


def make_trainer(run_dir, max_iter: int, hooks=(), period: int = 2, keep: int = 3, loss_fn=toy_loss,
                 seed: int = 0, rank: int = 0, after=()) -> Trainer:
    """Everything seeded as a stage would seed it; a resumed run then restores the checkpoint over it.
    Hooks: `hooks`, the metrics writer, the checkpointer, then `after`."""
    random.seed(seed + rank), np.random.seed(seed + rank), torch.manual_seed(seed + rank)
    model = Toy()
    cfg = solver(max_iter)
    optimizer = build_optimizer(model, cfg, freeze=["stem"], backbone_prefix="backbone")
    data = ToyData()
    sampler = ResumableSampler(len(data), seed=seed, sample_seeds=True)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return Trainer(model, loss_fn, optimizer, build_scheduler(optimizer, cfg), sampler=sampler,
                   make_loader=lambda s: DataLoader(data, batch_size=BATCH // world, sampler=s),
                   ims_per_batch=BATCH, max_iter=max_iter, run_dir=run_dir,
                   hooks=[*hooks, JSONLWriter(), PeriodicCheckpointer(period), *after],
                   clip_grad_norm=cfg.clip_grad_norm, amp=cfg.amp, device=torch.device("cpu"), keep_checkpoints=keep,
                   progress=False)


def losses(run_dir) -> list[tuple]:
    """(iteration, loss terms, lrs) of every line of metrics.jsonl: everything but the timings."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [tuple(sorted((k, v) for k, v in r.items() if not k.endswith(("_time", "_per_s")))) for r in rows]


def final_weights(run_dir, iteration: int) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "checkpoints" / f"model-{iteration:07d}.safetensors"))


def assert_same_run(a, b, iteration: int) -> None:
    wa, wb = final_weights(a, iteration), final_weights(b, iteration)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]
    la, lb = losses(a), losses(b)
    assert [dict(r)["iteration"] for r in la] == list(range(1, iteration + 1))
    assert la == lb


class SaveNowAt(Hook):
    """Calls save_now() after step `at`, as a SLURM signal arriving between two steps would."""

    def __init__(self, at: int):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at and self.trainer.is_main:
            assert self.trainer.save_now() is None  # inside train(): saved when the loop gets back to it


# ---------------------------------------------------------------------------------------------
# exact resume


def _script(*args: str) -> list[str]:
    return [sys.executable, str(HERE), *args]


class Report(Hook):
    """Once step `at` is written and checkpointed and one more step is logged, says so and waits
    to be killed: the interrupted run leaves a metrics line past its last checkpoint."""

    def __init__(self, at: int):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at + 1:
            print(f"PAST {self.at}", flush=True)
            time.sleep(60)


def test_resume_after_sigkill_repeats_the_uninterrupted_run(tmp_path):
    n = 6
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.Popen(_script("run", str(tmp_path / "ref"), str(2 * n)), env=env)
    with subprocess.Popen(_script("run", str(tmp_path / "cut"), str(2 * n), str(n)), env=env,
                          stdout=subprocess.PIPE, text=True) as child:
        try:
            line = child.stdout.readline()
        finally:
            child.send_signal(signal.SIGKILL)
    assert line.strip() == f"PAST {n}" and child.returncode == -signal.SIGKILL
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").iteration == n
    assert len(losses(tmp_path / "cut")) == n + 1  # a line the resumed run must drop and redo
    subprocess.run(_script("run", str(tmp_path / "cut"), str(2 * n)), env=env, check=True, timeout=120)
    assert reference.wait(timeout=120) == 0
    assert_same_run(tmp_path / "ref", tmp_path / "cut", 2 * n)


def test_save_now_between_steps_stops_and_resumes_exactly(tmp_path):
    make_trainer(tmp_path / "ref", 10).train()
    stopped = make_trainer(tmp_path / "cut", 10, hooks=[SaveNowAt(5)])
    stopped.train()
    assert stopped.iter == 5 and stopped.stop_requested
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").iteration == 5
    assert preemption.callbacks() == []  # registered only while train() runs
    make_trainer(tmp_path / "cut", 10).train()
    assert_same_run(tmp_path / "ref", tmp_path / "cut", 10)


def test_preemption_signal_mid_step_saves_after_that_step(tmp_path):
    """SLURM's signal reaches submitit's handler, which calls preemption.request_save() in the middle
    of a step: the step completes, its checkpoint is saved, and training stops."""
    calls = []

    def signalling_loss(model, batch):
        calls.append(1)
        if len(calls) == 4:  # during step 4
            os.kill(os.getpid(), signal.SIGUSR2)
        return toy_loss(model, batch)

    make_trainer(tmp_path / "ref", 8).train()
    previous = signal.signal(signal.SIGUSR2, lambda *_: preemption.request_save())
    try:
        stopped = make_trainer(tmp_path / "cut", 8, period=100, loss_fn=signalling_loss)
        stopped.train()
    finally:
        signal.signal(signal.SIGUSR2, previous)
        preemption.reset()
    assert stopped.iter == 4
    assert [c.iteration for c in list_checkpoints(tmp_path / "cut" / "checkpoints")] == [4]
    make_trainer(tmp_path / "cut", 8).train()
    assert_same_run(tmp_path / "ref", tmp_path / "cut", 8)


def test_ddp_two_processes_stop_and_resume_exactly(tmp_path):
    """2 gloo ranks with different dropout streams: save-now on rank 0 stops both at the same step,
    and the resumed run (each rank's RNG restored) repeats the uninterrupted one."""
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(HERE), "ddp", str(tmp_path)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_run(tmp_path / "ref", tmp_path / "cut", 8)
    state = torch.load(tmp_path / "cut" / "checkpoints" / "state-0000008.pt", weights_only=True)
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


# ---------------------------------------------------------------------------------------------
# checkpoint files


def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, caplog):
    make_trainer(tmp_path, 6).train()
    folder = tmp_path / "checkpoints"
    done = final_weights(tmp_path, 6)
    state = folder / "state-0000006.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    (folder / "model-0000008.safetensors").write_bytes(b"a save killed before its state file")
    with caplog.at_level(logging.WARNING, logger="partdistill.engine.checkpoint"):
        assert latest_checkpoint(folder).iteration == 4
    assert "state-0000006.pt is corrupt or partial" in caplog.text
    assert "model-0000008.safetensors has no state file" in caplog.text
    trainer = make_trainer(tmp_path, 6)
    trainer.train()
    assert trainer.start_iter == 4
    again = final_weights(tmp_path, 6)
    assert all(torch.equal(done[k], again[k]) for k in done)
    assert not (folder / "model-0000008.safetensors").exists()  # an unfinished save is cleaned up


def test_only_the_last_k_checkpoints_are_kept(tmp_path):
    make_trainer(tmp_path, 10, keep=2).train()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "model-0000008.safetensors", "model-0000010.safetensors", "state-0000008.pt", "state-0000010.pt"]


def test_state_file_loads_with_weights_only_and_tied_weights_are_stored_once(tmp_path):
    model = Toy()
    model.head[1].weight = nn.Parameter(torch.randn(3, 16))
    model.extra = nn.Linear(16, 3)
    model.extra.weight = model.head[1].weight  # tied
    optimizer = torch.optim.AdamW(model.parameters())
    ckpt = save_checkpoint(tmp_path, 7, model, optimizer, None, {"sampler": {"position": 3}})
    state = torch.load(ckpt.state_path, weights_only=True)
    assert state["iteration"] == 7 and state["extra"] == {"sampler": {"position": 3}}
    assert set(state["rng"][0]) == {"python", "numpy", "torch", "cuda"}
    assert "extra.weight" not in load_file(str(ckpt.model_path))
    fresh = Toy()
    fresh.extra = nn.Linear(16, 3)
    load_model_file(fresh, ckpt.model_path)
    assert torch.equal(fresh.extra.weight, model.head[1].weight)
    again = Toy()
    again.extra = nn.Linear(16, 3)
    assert load_model_weights(again, tmp_path) == ckpt.model_path  # a checkpoints folder, as model.weights
    with pytest.raises(UserError, match="no such file or folder"):
        load_model_weights(again, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no complete checkpoint"):
        load_model_weights(again, tmp_path / "empty")


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_checkpoint_files_follow_the_umask_and_identical_weights_give_identical_files(tmp_path, umask):
    model = Toy()
    old = os.umask(umask)
    try:
        saved = [save_checkpoint(tmp_path / str(n), 5, model, None) for n in range(4)]
    finally:
        os.umask(old)
    for ckpt in saved:
        for path in (ckpt.model_path, ckpt.state_path):
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path
    # the model files of the same weights are the same bytes (safetensors orders metadata at random)
    assert len({ckpt.model_path.read_bytes() for ckpt in saved}) == 1
    load_model_file(Toy(), saved[0].model_path)


# ---------------------------------------------------------------------------------------------
# solver


def test_warmup_multistep_schedule_and_backbone_multiplier():
    model = Toy()
    cfg = SolverConfig(ims_per_batch=8, max_iter=12, base_lr=1.0, steps=[6, 9], gamma=0.1, warmup_iters=4,
                       warmup_factor=0.2, backbone_multiplier=0.1)
    optimizer = build_optimizer(model, cfg, freeze=["stem"], backbone_prefix="backbone")
    scheduler = build_scheduler(optimizer, cfg)
    lrs = []
    for _ in range(12):
        lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})
        optimizer.step()
        scheduler.step()
    default = [lr["default"] for lr in lrs]
    assert default == pytest.approx([0.2, 0.4, 0.6, 0.8, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])
    assert [lr["backbone"] for lr in lrs] == pytest.approx([x * 0.1 for x in default])
    constant = SolverConfig(ims_per_batch=8, max_iter=12, base_lr=1.0, warmup_factor=1.0)  # the paper's warmup
    optimizer = build_optimizer(Toy(), constant)
    assert build_scheduler(optimizer, constant).get_last_lr()[0] == 1.0


def test_param_groups_decay_and_freezing():
    model = Toy()
    optimizer = build_optimizer(model, solver(10), freeze=["stem"], backbone_prefix="backbone")
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"default", "backbone", "backbone_no_decay"}  # the head has no norm layer
    assert groups["backbone_no_decay"]["params"] == [model.backbone[1].weight, model.backbone[1].bias]  # LayerNorm
    assert groups["backbone_no_decay"]["weight_decay"] == 0 and groups["default"]["weight_decay"] == 0.05
    assert not model.stem.weight.requires_grad
    assert all(p is not model.stem.weight for g in optimizer.param_groups for p in g["params"])
    with pytest.raises(UserError, match="'stem2' matches no parameter"):
        build_optimizer(Toy(), solver(10), freeze=["stem2"])  # whole components only: no prefix of "stem"


def test_gradient_clipping_bounds_the_full_model_norm():
    model = Toy()
    (model(torch.randn(4, 6)) * 100).sum().backward()
    before = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    norm = clip_gradients(model.parameters(), 0.01)
    after = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert norm == pytest.approx(before.item()) and before > 0.01
    assert after <= 0.01 * (1 + 1e-5)
    assert clip_gradients(model.parameters(), 0.0) is None  # disabled
    assert torch.cat([p.grad.flatten() for p in model.parameters()]).norm() == after


def test_mask2former_freezes_backbone_and_deformable_encoder():
    from omegaconf import OmegaConf

    from partdistill.config import CONFIG_DIR
    from partdistill.models.mask2former import build_model

    cfg = OmegaConf.load(CONFIG_DIR / "model" / "tiny.yaml")
    cfg.pop("defaults", None)
    model = build_model(cfg)
    optimizer = build_optimizer(model, solver(10), freeze=TrainingStageConfig().freeze)
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen_prefixes = ("model.pixel_level_module.encoder.", "model.pixel_level_module.decoder.encoder.")
    names = dict(model.named_parameters())
    assert any(n.startswith(frozen_prefixes[0]) for n in names) and any(n.startswith(frozen_prefixes[1]) for n in names)
    for name, p in names.items():
        frozen = name.startswith(frozen_prefixes)
        assert p.requires_grad != frozen and (id(p) in trained) != frozen, name
    assert {g["name"] for g in optimizer.param_groups} == {"default", "no_decay"}  # the backbone is all frozen
    no_decay = {id(p) for g in optimizer.param_groups if g["name"] == "no_decay" for p in g["params"]}
    assert id(model.model.transformer_module.queries_embedder.weight) in no_decay  # an nn.Embedding


# ---------------------------------------------------------------------------------------------
# sampler and hooks


def test_sampler_position_round_trips_and_shards_by_rank():
    full = list(islice(iter(ResumableSampler(10, seed=3)), 30))
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    assert full[:10] != full[10:20]  # a new permutation each epoch
    sampler = ResumableSampler(10, seed=3)
    sampler.advance(13)
    restarted = ResumableSampler(10, seed=3)
    restarted.load_state_dict(sampler.state_dict())
    assert list(islice(iter(restarted), 17)) == full[13:]
    ranks = [ResumableSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.advance(4)
    shards = [list(islice(iter(r), 13)) for r in ranks]
    assert [i for pair in zip(*shards) for i in pair] == full[4:30]
    seeded = [list(islice(iter(ResumableSampler(10, seed=3, rank=r, world_size=2, sample_seeds=True)), 5))
              for r in range(2)]
    single = list(islice(iter(ResumableSampler(10, seed=3, sample_seeds=True)), 10))
    assert [s for pair in zip(*seeded) for s in pair] == single  # a sample's seed follows its position
    assert ResumableSampler(10, seed=4).permutation(0).tolist() != full[:10]
    with pytest.raises(UserError, match="seed=3"):
        ResumableSampler(10, seed=4).load_state_dict(sampler.state_dict())


def test_eval_hook_and_writers(tmp_path):
    seen = []

    def eval_fn(model):
        seen.append(model.training)
        torch.rand(100)  # an evaluation that draws from the RNG must not change training
        return {"toy": {"accuracy": 0.5}}

    make_trainer(tmp_path / "ref", 6).train()
    trainer = make_trainer(tmp_path / "run", 6, hooks=[EvalHook(4, eval_fn), TensorBoardWriter(period=2)])
    trainer.train()
    assert seen == [False, False]  # at 4 and at the end, in eval mode
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "eval/toy/accuracy" in r] == [4]  # the final one runs after the writers
    assert {"ce", "l2", "total_loss", "lr/default", "lr/backbone", "grad_norm", "data_time",
            "samples_per_s"} <= set(rows[0])
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    strip = [tuple(x for x in r if not x[0].startswith("eval/")) for r in losses(tmp_path / "run")]
    assert strip == losses(tmp_path / "ref")


# ---------------------------------------------------------------------------------------------
# the separate processes


def _run(run_dir: str, max_iter: str, report_at: str | None = None) -> None:
    torch.set_num_threads(1)
    after = [Report(int(report_at))] if report_at else []
    make_trainer(run_dir, int(max_iter), after=after, period=int(report_at or 2)).train()


def _ddp(root: str) -> None:
    from partdistill.engine.distributed import init_distributed

    torch.set_num_threads(1)
    rank, world, _ = init_distributed()
    assert world == 2
    make_trainer(Path(root) / "ref", 8, rank=rank).train()
    stopped = make_trainer(Path(root) / "cut", 8, hooks=[SaveNowAt(3)], rank=rank)
    stopped.train()
    assert stopped.iter == 3  # rank 1 stops with rank 0
    make_trainer(Path(root) / "cut", 8, rank=rank).train()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    {"run": _run, "ddp": _ddp}[sys.argv[1]](*sys.argv[2:])
