"""DDP gradient equivalence: 2 gloo processes give the gradients of one process on the combined batch.

The tiny Mask2Former of conf/model/tiny.yaml with the `proposal_learning` stage's real loss
(`partdistill.models.losses.configure_loss` + `loss_terms`, smoke preset: transformers'
Mask2FormerLoss with the Hungarian matcher, class, mask-BCE and dice terms, auxiliary layers) and
freeze list, trained for one step by the engine's `Trainer` (its `_wrap` into
DistributedDataParallel, the stage's AdamW and schedule, the ResumableSampler sharding a
DataLoader), once in this process on a global batch of 2 and once as 2 spawned gloo processes with
1 sample each (file:// rendezvous).

What makes the loss comparable between the two (choices of this test, not of the engine):
  * Randomness made per-sample deterministic: Mask2FormerLoss draws its point coordinates with
    `torch.rand(num_masks_in_batch, points, 2)` (and `torch.rand(1, points, 2)` per image in the
    matcher), and the Swin backbone's stochastic depth draws `torch.rand(batch, 1, 1)`: one stream
    for the whole batch, so a different batch split would draw different points. Here the two
    transformers modules see a `torch` whose `rand` gives every row of the leading dimension the
    same fixed draw; everything else, importance sampling included, is the real code.
  * Every sample has the same number of target masks in the first test: the mask and dice losses
    are normalised by the mask count of the whole DDP batch (`models.losses.build_criterion`
    all-reduces it, as detectron2's Mask2Former), but the class loss is a no-object-weighted mean
    per process (as in detectron2), so with 3 and 5 masks the class head's gradients differ by up to
    6 % of the largest entry. The second test holds 3 and 5 masks with the class term weighted 0.
  * Gradient clipping off (`clip_grad_norm=0`): clipping rescales the already averaged gradient,
    the same way on both sides, and the smoke value (0.01) would leave gradients too small for
    an absolute tolerance to say anything.

Compared: every trainable parameter's `.grad` after the step (DDP-averaged on rank 0 and rank 1
vs single process), absolute tolerance 1e-5 (also asserted: within 1e-4 relative to the largest
gradient); the weights after the one AdamW step, absolute 1e-5 wherever |grad| >= 100 x AdamW's eps
(see below); the per-rank losses' mean vs the combined-batch loss. Observed: 2.4e-7 for the
gradients (largest gradient about 1), 7.5e-9 for the weights; about 12 s.
"""
from __future__ import annotations

import sys

import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

WORLD = 2
MASKS_PER_SAMPLE = 3
SIZE = 64
TOLERANCE = 1e-5
ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which build_optimizer keeps


class _PerSampleRandTorch:
    """`torch`, except that `rand(n, *rest)` is one fixed draw of `rest` repeated for each of the n rows
    (and `rand()` of no size a fixed number): per-sample deterministic, whatever the batch split."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def rand(*size, dtype=None, device=None, generator=None, **kwargs):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        g = torch.Generator().manual_seed(1234 + 7 * len(size) + sum(size[1:]))
        if not size:
            return torch.rand((), generator=g, dtype=dtype).to(device)
        row = torch.rand(tuple(size[1:]), generator=g, dtype=dtype)
        return row.expand(tuple(size)).clone().to(device)


def per_sample_randomness() -> None:
    from transformers.models.mask2former import modeling_mask2former
    from transformers.models.swin import modeling_swin

    modeling_mask2former.torch = modeling_swin.torch = _PerSampleRandTorch()


def real_randomness() -> None:
    from transformers.models.mask2former import modeling_mask2former
    from transformers.models.swin import modeling_swin

    modeling_mask2former.torch = modeling_swin.torch = torch


class FixedSamples(torch.utils.data.Dataset):
    """Samples in the stage's collate format, each a function of its index only (ignores the seed);
    sample i has masks_per_sample[i] target masks."""

    def __init__(self, masks_per_sample):
        self.masks_per_sample = list(masks_per_sample)

    def __len__(self):
        return WORLD

    def __getitem__(self, item):
        index, _seed = item
        g = torch.Generator().manual_seed(100 + index)
        image = torch.randn(3, SIZE, SIZE, generator=g)
        pixel_mask = torch.ones(SIZE, SIZE, dtype=torch.int64)
        if index == 1:  # a padded image, as the augmentation's fixed-size crop makes
            pixel_mask[:, SIZE * 3 // 4:] = 0
            image[:, :, SIZE * 3 // 4:] = 0
        count = self.masks_per_sample[index]
        masks = torch.zeros(count, SIZE, SIZE)
        for m in range(count):
            y, x = torch.randint(0, SIZE // 2, (2,), generator=g).tolist()
            h, w = torch.randint(8, SIZE // 2, (2,), generator=g).tolist()
            masks[m, y:y + h, x:x + w] = 1.0
        return {"pixel_values": image, "pixel_mask": pixel_mask, "mask_labels": masks,
                "class_labels": torch.zeros(count, dtype=torch.int64)}


def one_step(cfg: dict, run_dir: str) -> dict:
    """One training step of the engine on this process's share of the batch; its grads, weights and loss."""
    from partdistill.data.augmentation import collate
    from partdistill.engine.sampler import ResumableSampler
    from partdistill.engine.solver import build_optimizer, build_scheduler
    from partdistill.engine.trainer import Trainer
    from partdistill.models.losses import configure_loss, loss_terms
    from partdistill.models.mask2former import build_model

    cfg = OmegaConf.create(cfg)
    torch.manual_seed(0)  # the same initial weights everywhere (DDP would broadcast rank 0's anyway)
    model = build_model(cfg.model, num_labels=1)
    configure_loss(model, cfg.stage.loss)
    solver = cfg.stage.solver
    optimizer = build_optimizer(model, solver, list(cfg.stage.freeze))
    scheduler = build_scheduler(optimizer, solver)
    dataset = FixedSamples(cfg.get("masks_per_sample", [MASKS_PER_SAMPLE] * WORLD))
    sampler = ResumableSampler(len(dataset), seed=0, sample_seeds=True)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    per_rank = solver.ims_per_batch // world

    def make_loader(smp):
        return torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=smp, collate_fn=collate)

    trainer = Trainer(model, loss_terms, optimizer, scheduler, sampler=sampler, make_loader=make_loader,
                      ims_per_batch=solver.ims_per_batch, max_iter=1, run_dir=run_dir, clip_grad_norm=0.0,
                      amp=False, device=torch.device("cpu"), resume="never", progress=False)
    metrics = trainer.train()
    return {"grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            "weights": {n: p.detach().clone() for n, p in model.named_parameters()},
            "loss": metrics["total_loss"], "eps": optimizer.defaults["eps"], "lr": solver.base_lr, "world_size": trainer.world_size, "rank": trainer.rank,
            "wrapped": type(trainer._wrap(model)).__name__}


def _worker(rank: int, cfg: dict, folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    per_sample_randomness()
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD)
    try:
        result = one_step(cfg, f"{folder}/run{rank}")
    finally:
        dist.destroy_process_group()
    torch.save(result, f"{folder}/rank{rank}.pt")


def max_diff(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys()
    worst = max(a, key=lambda k: (a[k] - b[k]).abs().max().item())
    return (a[worst] - b[worst]).abs().max().item(), worst


@pytest.fixture
def step_cfg(compose_cfg) -> dict:
    cfg = compose_cfg("experiment=smoke", "stage=proposal_learning", f"stage.solver.ims_per_batch={WORLD}")
    return {"model": OmegaConf.to_container(cfg.model, resolve=True),
            "stage": {"loss": OmegaConf.to_container(cfg.stage.loss, resolve=True),
                      "solver": OmegaConf.to_container(cfg.stage.solver, resolve=True),
                      "freeze": list(cfg.stage.freeze)}}


def ddp_and_single(step_cfg: dict, folder) -> tuple[list[dict], dict]:
    """One step as WORLD gloo processes and as one process on the combined batch."""
    mp.spawn(_worker, args=(step_cfg, str(folder)), nprocs=WORLD, join=True)
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    per_sample_randomness()
    try:
        single = one_step(step_cfg, str(folder / "single"))
    finally:
        real_randomness()
        torch.set_num_threads(threads)
    return ranks, single


def test_two_gloo_processes_give_the_gradients_of_one_process_on_the_combined_batch(step_cfg, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ranks, single = ddp_and_single(step_cfg, tmp_path)

    assert single["world_size"] == 1 and single["wrapped"] != "DistributedDataParallel"
    assert [(r["rank"], r["world_size"], r["wrapped"]) for r in ranks] == \
        [(0, WORLD, "DistributedDataParallel"), (1, WORLD, "DistributedDataParallel")]
    grads = single["grads"]
    zero = [n for n, g in grads.items() if not g.abs().sum() > 0]
    print("trained tensors with an all-zero gradient:", zero)
    assert len(grads) > 10 and len(zero) <= 2, zero  # nearly every trained tensor has a gradient
    assert not any(n.startswith("model.pixel_level_module.encoder.") for n in grads)  # the freeze list applied
    assert max_diff(ranks[0]["grads"], ranks[1]["grads"])[0] == 0.0  # DDP gave both ranks the same average
    scale = max(g.abs().max().item() for g in grads.values())
    assert (single["eps"], single["lr"]) == (ADAM_EPS, 1e-4)  # what the weight comparison below assumes
    for rank in ranks:
        diff, where = max_diff(rank["grads"], grads)
        print(f"rank {rank['rank']}: max |grad DDP - grad single| = {diff:.3g} ({where}); largest |grad| {scale:.3g}")
        assert diff <= TOLERANCE, (diff, where)
        assert diff <= 1e-4 * scale, (diff, scale, where)
        # AdamW's first step moves a weight by lr x g / (|g| + eps): where the true gradient is 0 (a key
        # projection's bias, which softmax ignores) float noise of 1e-12 becomes a step of up to lr in either
        # direction. Where |g| >= 100 eps, d(step)/dg = lr x eps / (|g| + eps)^2 <= lr / (1e4 eps) = 1 for the
        # smoke lr of 1e-4: a gradient difference carries over at most 1:1. The weights are compared there.
        informative = {n: (grads[n].abs() >= 100 * ADAM_EPS) for n in grads}
        wdiff = max(((rank["weights"][n] - single["weights"][n]).abs() * informative[n]).max().item() for n in grads)
        left = sum(int((~m).sum()) for m in informative.values())
        print(f"rank {rank['rank']}: max |weight DDP - weight single| after one AdamW step = {wdiff:.3g} "
              f"({left} of {sum(m.numel() for m in informative.values())} entries with |grad| < 100 eps left out)")
        assert wdiff <= TOLERANCE, wdiff
        frozen = [n for n in single["weights"] if n not in grads]
        assert all(torch.equal(rank["weights"][n], single["weights"][n]) for n in frozen)
    assert sum(r["loss"] for r in ranks) / WORLD == pytest.approx(single["loss"], rel=1e-5, abs=1e-6)
    assert ranks[0]["loss"] != ranks[1]["loss"]  # the ranks did see different samples


def test_the_mask_losses_are_normalised_by_the_mask_count_of_the_whole_ddp_batch(step_cfg, tmp_path, monkeypatch):
    """Ranks holding 3 and 5 masks: the mask and dice terms (class term weighted 0; it is a weighted mean
    per process, as in detectron2) match the combined batch because the mask count is all-reduced."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    step_cfg["masks_per_sample"] = [3, 5]
    step_cfg["stage"]["loss"]["class_weight"] = 0.0
    ranks, single = ddp_and_single(step_cfg, tmp_path)
    for rank in ranks:
        diff, where = max_diff(rank["grads"], single["grads"])
        assert diff <= TOLERANCE, (diff, where)
    assert sum(r["loss"] for r in ranks) / WORLD == pytest.approx(single["loss"], rel=1e-5, abs=1e-6)


if __name__ == "__main__":  # for a look at the numbers: python tests/test_ddp.py
    raise SystemExit(pytest.main([__file__, "-q", "-s", *sys.argv[1:]]))
