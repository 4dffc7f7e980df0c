"""The projection of the whole method from the measured per-GPU rates, and the one table `bench_gpu.py` prints.

Projection, per experiment, from the composed config of each stage (batch sizes, iterations,
global batches) and the training set's image count (`gpu_common.DATASETS`), on N GPUs:
- object masks, pixel grouping, part ranking: every training image once (twice for ranking, one
  pass of each kind), at the stage's batch size, spread evenly over N one-GPU tasks: GPU-hours =
  images / (images/s), wall = GPU-hours / N. Every image is counted (an upper bound: images without
  an object drop out after object masks);
- proposal learning, distillation: `stage.solver.max_iter` steps at the per-GPU batch
  `ims_per_batch / N`; wall = iterations x step time, GPU-hours = wall x N. DDP's gradient all-reduce
  is not in a one-GPU figure: the projection assumes it overlaps the backward pass.
Not projected: evaluation (minutes), the per-class k-means of part ranking (bench_ranking.py), and
start-up, checkpoints and queueing. A projection from one GPU, not a measurement of a cluster.
"""
from __future__ import annotations

import math


def _step_for(points: list[dict], batch: int) -> tuple[float | None, str]:
    """Step seconds at `batch` from the sweep's points: measured, or scaled by images from the measured
    batch nearest to it (log scale); None with why when nothing was measured."""
    measured = [p for p in points if "step_s" in p]
    exact = [p for p in measured if p["batch"] == batch]
    if exact:
        return exact[0]["step_s"]["median_s"], f"measured at {batch}"
    if not measured:
        why = next((f"OOM at {p['batch']}" for p in points if "oom" in p), "not measured")
        return None, why
    near = min(measured, key=lambda p: abs(math.log(p["batch"] / batch)))
    return near["step_s"]["median_s"] * batch / near["batch"], f"scaled from batch {near['batch']}"


def project(name: str, configs: dict, results: dict, images: int, gpus: int, training_keys: dict) -> dict:
    """{stage: {gpu_hours, wall_hours, basis}} and totals for one experiment; `configs[stage]` is the
    composed `stage` node, `training_keys[stage]` the key of its sweep in `results["training"]`."""
    rows = {}

    def partitioned(stage: str, per_image_s: float | None, passes: int, basis: str):
        if per_image_s is None:
            rows[stage] = {"gpu_hours": None, "wall_hours": None, "basis": basis}
            return
        gpu_h = passes * images * per_image_s / 3600
        rows[stage] = {"gpu_hours": gpu_h, "wall_hours": gpu_h / gpus, "basis": basis}

    om = results.get("object_masks", {}).get(f"fp32@{configs['object_masks'].batch_size}")
    partitioned("object_masks", 1 / om["images_per_s"] if om else None, 1,
                f"object-mask inference, batch {configs['object_masks'].batch_size}, fp32 as the stage runs")
    pg = results.get("pixel_grouping", {}).get("fp32")
    partitioned("pixel_grouping", pg["per_image_s"] if pg else None, 1,
                "backbone + batched k-means + assignment per image")
    if pg:
        rows["pixel_grouping (paper's k-means)"] = {
            "gpu_hours": images * pg["per_image_paper_kmeans_s"] / 3600,
            "wall_hours": images * pg["per_image_paper_kmeans_s"] / 3600 / gpus,
            "basis": "scikit-learn KMeans per object on the CPU instead (not summed)"}
    for stage in ("proposal_learning", "part_ranking", "distillation"):
        s = configs[stage]
        if stage == "part_ranking":
            pr = results.get("part_ranking", {}).get("fp32")
            partitioned(stage, 1 / pr["images_per_s"] if pr else None, 2, "two passes per image, one timed")
            continue
        per_gpu = s.solver.ims_per_batch // gpus
        sweep = results.get("training", {}).get(training_keys[stage], {"points": []})
        step, how = _step_for(sweep["points"], per_gpu)
        basis = f"{s.solver.max_iter} iterations x batch {s.solver.ims_per_batch} = {per_gpu}/GPU ({how})"
        wall = None if step is None else s.solver.max_iter * step / 3600
        rows[stage] = {"gpu_hours": None if wall is None else wall * gpus, "wall_hours": wall, "basis": basis}
    summed = [r for k, r in rows.items() if "(" not in k]
    known = all(r["gpu_hours"] is not None for r in summed)
    total = {"gpu_hours": sum(r["gpu_hours"] for r in summed) if known else None,
             "wall_hours": sum(r["wall_hours"] for r in summed) if known else None}
    return {"experiment": name, "images": images, "gpus": gpus, "stages": rows, "total": total}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def table(results: dict) -> str:
    """One Markdown table of every figure the run measured, then the projection."""
    lines = ["| measurement | setting | figure |", "|---|---|---|"]
    for key, r in results.get("object_masks", {}).items():
        lines.append(f"| object-mask inference | batch {r['batch']}, {r['precision']} | "
                     f"{_fmt(r['images_per_s'])} images/s |")
    for key, r in results.get("pixel_grouping", {}).items():
        lines.append(f"| pixel grouping: backbone + k-means + assignment | batch {r['batch']}, {r['precision']} | "
                     f"{_fmt(r['images_per_s'])} images/s ({_fmt(r['per_image_s'] * 1000)} ms/image) |")
        lines.append(f"| k-means per object: ours (batched) vs scikit-learn on the CPU | K {r['kmeans']['k']}, "
                     f"n_init {r['kmeans']['n_init']}, {r['sklearn_objects']} objects compared | "
                     f"{_fmt(r['kmeans_per_object_s'] * 1000)} vs {_fmt(r['sklearn_per_object_s'] * 1000)} ms: "
                     f"{_fmt(r['kmeans_speedup'])}x; inertia ratio {r['inertia_ratio']:.4f} |")
        lines.append(f"| grouping per image, paper's k-means / ours | {r['precision']} | {_fmt(r['per_image_speedup'])}x |")
    for key, r in results.get("part_ranking", {}).items():
        lines.append(f"| part ranking, one pass | batch {r['batch']}, {r['precision']} | "
                     f"{_fmt(r['images_per_s'])} images/s (two passes: {_fmt(r['images_per_s'] / 2)}) |")
    for key, sweep in results.get("training", {}).items():
        for p in sweep["points"]:
            if "step_s" in p:
                mem = f", peak {_fmt(p['peak_memory_gib'])} GiB" if p["peak_memory_gib"] is not None else ""
                figure = f"{_fmt(p['step_s']['median_s'] * 1000)} ms/step, {_fmt(p['images_per_s'])} images/s{mem}"
            else:
                figure = f"OOM ({p['oom']})" if "oom" in p else p["skipped"]
            lines.append(f"| training step: {key}, head of {sweep['num_labels']} labels | batch {p['batch']}, "
                         f"{sweep['image_size']} px | {figure} |")
    loader = results.get("loader")
    if loader:
        lines.append(f"| training loader | {loader['workers']} workers, batch {loader['batch']} | "
                     f"{_fmt(loader['samples_per_s'])} samples/s; the step uses {_fmt(100 * loader['step_share'])} % "
                     f"of it (< 5 %: {loader['step_share'] < 0.05}) |")
    for proj in results.get("projection", {}).values():
        lines += ["", f"Projection: {proj['experiment']}, {proj['images']:,} images, {proj['gpus']} GPUs",
                  "", "| stage | GPU-hours | wall hours | basis |", "|---|---:|---:|---|"]
        for stage, r in proj["stages"].items():
            lines.append(f"| {stage} | {_fmt(r['gpu_hours'])} | {_fmt(r['wall_hours'])} | {r['basis']} |")
        lines.append(f"| total | {_fmt(proj['total']['gpu_hours'])} | {_fmt(proj['total']['wall_hours'])} | |")
    return "\n".join(lines)
