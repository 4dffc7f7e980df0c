"""Optimizer, learning-rate schedule and gradient clipping as the paper trains (`base_trainer.py`).

    optimizer = build_optimizer(model, stage.solver, stage.freeze)
    scheduler = build_scheduler(optimizer, stage.solver)

AdamW over the parameters that train, in up to four named groups: (backbone or not) x (decay or
not). The backbone (`backbone_prefix`) gets `base_lr x backbone_multiplier`; as in the paper's
code, normalisation layers, embeddings and Swin's position tables get no weight decay
(Mask2Former's `WEIGHT_DECAY_NORM` / `WEIGHT_DECAY_EMBED` are 0.0). Parameters under a `freeze`
prefix get `requires_grad=False` and are left out of the optimizer.
"""
from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from partdistill.errors import UserError

log = logging.getLogger(__name__)

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm,
              nn.LocalResponseNorm)
NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "position_embeddings")  # Swin, both codebases


GROUP_NAMES = {(False, True): "default", (False, False): "no_decay", (True, True): "backbone",
               (True, False): "backbone_no_decay"}  # (under the backbone, decayed) -> param group


def under(name: str, prefix: str) -> bool:
    """Whether parameter `name` lies under module `prefix` (a whole dotted component, so "encoder"
    does not match "encoder2")."""
    return name == prefix or name.startswith(prefix + ".")


def freeze_parameters(model: nn.Module, freeze: Sequence[str]) -> tuple[int, int]:
    """Sets `requires_grad=False` on every parameter under a `freeze` prefix.

    Returns:
        (tensors, elements) frozen.
    Raises:
        UserError: a prefix matches no parameter (a misspelt name would silently train it).
    """
    names = dict(model.named_parameters())
    tensors = elements = 0
    for prefix in freeze:
        matched = [p for n, p in names.items() if under(n, prefix)]
        if not matched:
            tops = sorted({n.split(".")[0] for n in names})
            raise UserError(f"freeze prefix {prefix!r} matches no parameter of {type(model).__name__} "
                            f"(its top-level names: {tops})")
        for p in matched:
            if p.requires_grad:
                p.requires_grad_(False)
                tensors, elements = tensors + 1, elements + p.numel()
    return tensors, elements


def build_optimizer(model: nn.Module, solver_cfg, freeze: Sequence[str] = (),
                    backbone_prefix: str = "model.pixel_level_module.encoder",
                    weight_decay_norm: float = 0.0, weight_decay_embed: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model` (not DDP-wrapped: names are the model's own).

    Args:
        model (nn.Module): the model; parameters under `freeze` are frozen in place.
        solver_cfg (SolverConfig | DictConfig): `base_lr`, `weight_decay`, `backbone_multiplier`.
        freeze (list[str]): parameter-name prefixes to freeze.
        backbone_prefix (str): parameters under it train at `base_lr x backbone_multiplier`.
        weight_decay_norm, weight_decay_embed (float): decay of norm layers and embeddings.
    Returns:
        torch.optim.AdamW whose param groups carry a `name` (default, no_decay, backbone, backbone_no_decay).
    """
    frozen, frozen_elements = freeze_parameters(model, freeze)
    groups: dict[str, dict] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:  # tied parameters are optimised once
                continue
            seen.add(id(p))
            name = f"{module_name}.{param_name}" if module_name else param_name
            decay = solver_cfg.weight_decay
            if isinstance(module, NORM_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            elif param_name in NO_DECAY_NAMES:
                decay = 0.0
            backbone = under(name, backbone_prefix)
            key = GROUP_NAMES[backbone, decay > 0]
            lr = solver_cfg.base_lr * (solver_cfg.backbone_multiplier if backbone else 1)
            group = groups.setdefault(key, {"name": key, "params": [], "weight_decay": decay, "lr": lr})
            group["params"].append(p)
    if not groups:
        raise UserError(f"no parameter of {type(model).__name__} is left to train (freeze={list(freeze)})")
    param_groups = [groups[k] for k in GROUP_NAMES.values() if k in groups]
    summary = ", ".join(f"{g['name']} {len(g['params'])} tensors at lr {g['lr']:g}, wd {g['weight_decay']:g}"
                        for g in param_groups)
    log.info("optimizer: %d frozen tensors (%d elements) under %s; training %s", frozen, frozen_elements,
             list(freeze), summary)
    return torch.optim.AdamW(param_groups, lr=solver_cfg.base_lr)


def build_scheduler(optimizer: torch.optim.Optimizer, solver_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """detectron2's WarmupMultiStepLR, per iteration: call `step()` once after each optimizer step.

    At iteration t the lr of each group is its initial lr times
    `warmup(t) x gamma ** (number of steps <= t)`, where `warmup` rises linearly from
    `warmup_factor` to 1 over `warmup_iters` (factor 1.0: constant).
    """
    steps = [int(s) for s in solver_cfg.steps]
    if steps != sorted(steps):
        raise UserError(f"solver.steps must be increasing, got {steps}")
    late = [s for s in steps if s >= solver_cfg.max_iter]
    if late:
        log.warning("solver.steps %s are at or beyond max_iter=%d: those decays never happen",
                    late, solver_cfg.max_iter)
    warmup_iters, warmup_factor = int(solver_cfg.warmup_iters), float(solver_cfg.warmup_factor)
    gamma = float(solver_cfg.gamma)

    # a plain function, not a callable object: LambdaLR then saves no schedule in its state_dict,
    # so a resumed run follows its own (possibly edited) config rather than the checkpoint's
    def factor(t: int) -> float:
        warm = 1.0
        if t < warmup_iters:
            alpha = t / warmup_iters
            warm = warmup_factor * (1 - alpha) + alpha
        return warm * gamma ** bisect_right(steps, t)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor | None:
    """Full-model L2 clipping: scales all gradients together so their joint norm is <= max_norm.

    Returns:
        The norm before clipping (a 0-d tensor), or None when `max_norm <= 0` (disabled).
    """
    if max_norm <= 0:
        return None
    grads = [p for p in parameters if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(grads, max_norm)
