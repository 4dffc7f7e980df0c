"""The GPU path, measured: the paper's model and the hot stages on one GPU, and the whole method projected.

Builds the paper's model from config (`model=m2f_swin_large model.pretrained=null`: Swin-L
Mask2Former, random weights, nothing downloaded) with each stage's config as `launch.py` composes it
(`partdistill.config.compose`), and times, after warm-up, as the median of repeats (CUDA events):
(a) one training step (the engine's) of proposal learning and of distillation at 640 x 640, bf16
    autocast as the engine trains, the frozen prefixes of `stage.freeze`, at the per-GPU batch of
    each experiment (`ims_per_batch` / its GPUs: 8 and 4) and then 16, 32, 64 until the first
    out-of-memory: step time, images/s, peak memory; distillation's head has 8 parts x the training
    set's classes (21,841 for the paper's ImageNet-22K, 1,000 for ImageNet-1K);
(b) pixel grouping per image: backbone at 640 + batched k-means (the preset's K, restarts and
    iterations) on res3+res4 + assignment, against the paper's scikit-learn KMeans per object on
    the CPU in the same run, with the ratio; their mean inertia must agree (gpu_stages.py);
(c) object-mask inference (forward + top instance) and one part-ranking pass, images/s; the stages
    run inference in fp32 (no autocast), which is what the projection uses; bf16 is shown beside;
(d) the training loader (the paper's augmentation, the training stages' worker count) on generated
    500 x 375 JPEGs: samples/s, and the share of it one step consumes (is loading < 5 % of a step?);
(e) the projection of `experiment=compute_friendly` (ImageNet-1K, one 8-GPU node) and
    `experiment=paper` (ImageNet-22K, 64 GPUs) from these figures (gpu_report.py says how).
It prints one Markdown table at the end and writes every figure to `--out` (JSON, rewritten after
each part, so a run stopped by its time limit still leaves what it measured). A part that raises is
recorded with its traceback (`errors`) and the next part runs: one call on a lent GPU brings back
every figure that can be had.

An agreement that fails (the k-means inertia) makes the script exit non-zero at the end, after the
table and the JSON are written. `--cpu-smoke` (alias `--smoke`, tests/test_benchmarks.py) runs the
same code and checks on the CPU with `model=tiny` at 192 px (objects of ~150-250 feature points, so
the k-means comparison is well posed), batch 2, two repeats, in under a minute; its figures mean nothing.

    python benchmarks/bench_gpu.py --out bench_gpu.json   # on a GPU: meant to end within ~4 min on an H200 (not yet run on one)
    python benchmarks/bench_gpu.py --cpu-smoke [--out smoke.json]
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers loads: random weights, never a download

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import torch  # noqa: E402

from gpu_common import DATASETS, build_on, device_info, free, make_items, stage_config  # noqa: E402
from gpu_report import project, table  # noqa: E402
from gpu_stages import object_masks, pixel_grouping, ranking_pass  # noqa: E402
from gpu_training import loader_rate, stage_items, train_sweep  # noqa: E402
from partdistill.data.images import read_rgb  # noqa: E402

PARTITIONED = ("object_masks", "pixel_grouping", "part_ranking")
STAGES = PARTITIONED + ("proposal_learning", "distillation")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write every figure here (JSON)")
    parser.add_argument("--experiments", nargs="+", default=["compute_friendly", "paper"])
    parser.add_argument("--sweep-experiment", default="paper", help="whose training stages get the batch sweep")
    parser.add_argument("--sweep", type=int, nargs="*", default=[16, 32, 64], help="batch sizes after the per-GPU one")
    parser.add_argument("--sweep-budget", type=float, default=45.0, help="seconds per training sweep before "
                        "larger batches are skipped (the per-GPU batch always runs)")
    parser.add_argument("--gpus", type=int, help="GPUs of the projection (default: each experiment's training resources)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--images", type=int, default=300, help="generated JPEGs for the loader and the batches")
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--sklearn-objects", type=int, default=8, help="objects the scikit-learn baseline clusters")
    parser.add_argument("--loader-batches", type=int, default=64)
    parser.add_argument("--batch-cap", type=int, help="no batch larger than this (smoke)")
    parser.add_argument("--cpu-smoke", "--smoke", action="store_true", dest="smoke",
                        help="model=tiny at 192 px on the CPU, batch 2: checks that it runs and agrees")
    if parser.parse_known_args(argv)[0].smoke:
        parser.set_defaults(sweep=[], warmup=1, repeat=2, images=12, height=120, width=160, sklearn_objects=2,
                            loader_batches=6, batch_cap=2)
    return parser.parse_args(argv)


def overrides(args, stage: str) -> tuple[list[str], list[str]]:
    """(model overrides, stage overrides): the paper's model with random weights, or the tiny one small."""
    if not args.smoke:
        return ["model=m2f_swin_large", "model.pretrained=null"], []
    extra = ["stage.image_size=192", "stage.batch_size=2"] if stage in PARTITIONED else ["stage.augmentation.base_size=192"]
    return ["model=tiny"], extra


def inference(run) -> None:
    """(c) object masks and (b) pixel grouping with the instance model (COCO's 80 classes), then (c)
    one part-ranking pass with the one-class proposal model."""
    primary, cfgs = run.primary, run.cfgs
    model = build_on(primary["object_masks"].model, run.device).eval()
    out = run.results["object_masks"] = {}
    for batch in sorted({cfgs[e]["object_masks"].stage.batch_size for e in cfgs}):
        for precision in ("fp32", "bf16"):
            out[f"{precision}@{batch}"] = object_masks(model, run.images, run.cap(batch),
                                                       primary["object_masks"].stage.image_size, run.device,
                                                       precision, *run.timing)
    run.results["pixel_grouping"] = {
        p: pixel_grouping(model, run.images, run.rles, primary["pixel_grouping"].stage, run.device, p, *run.timing,
                          run.args.sklearn_objects) for p in ("fp32", "bf16")}
    del model
    free(run.device)
    model = build_on(primary["part_ranking"].model, run.device, num_labels=1).eval()
    run.results["part_ranking"] = {p: ranking_pass(model, run.images, run.rles, primary["part_ranking"].stage,
                                                   run.device, p, *run.timing) for p in ("fp32", "bf16")}


def proposal_steps(run) -> None:
    """(a) one sweep: proposal learning trains the same model in every experiment."""
    batches = sorted({run.per_gpu[e, "proposal_learning"] for e in run.cfgs} | {run.cap(b) for b in run.args.sweep})
    run.results["training"]["proposal_learning"] = train_sweep(
        run.primary["proposal_learning"], "proposal_learning", 1, run.items, batches, run.device, *run.timing,
        run.args.sweep_budget)


def distillation_steps(run, experiment: str) -> None:
    """(a) distillation of one training set: its head has num_part_classes x the set's classes outputs."""
    cfg = run.cfgs[experiment]["distillation"]
    parts, classes = int(cfg.stage.num_part_classes), DATASETS[cfg.data.name]["classes"]
    key = run.keys[experiment]["distillation"] = f"distillation@{cfg.data.name}"
    if key in run.results["training"]:
        return
    sweep = run.args.sweep if experiment == run.args.sweep_experiment else []
    batches = sorted({run.per_gpu[experiment, "distillation"]} | {run.cap(b) for b in sweep})
    run.results["training"][key] = train_sweep(cfg, "distillation", parts * classes,
                                               stage_items(run.items, "distillation", classes, parts), batches,
                                               run.device, *run.timing, run.args.sweep_budget)


def loader(run) -> None:
    """(d) the loader against what a proposal-learning step at the per-GPU batch consumes."""
    batch = run.per_gpu[run.args.sweep_experiment, "proposal_learning"]
    out = loader_rate(run.items, run.primary["proposal_learning"].stage, batch, run.args.loader_batches)
    sweep = run.results["training"].get("proposal_learning", {"points": []})
    step = [p for p in sweep["points"] if p["batch"] == batch and "step_s" in p]
    out["step_images_per_s"] = step[0]["images_per_s"] if step else None
    out["step_share"] = out["step_images_per_s"] / out["samples_per_s"] if step else float("nan")
    run.results["loader"] = out


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: no CUDA device here; --cpu-smoke runs the same code on the CPU")
    device = torch.device("cpu" if args.smoke else "cuda")
    started = time.perf_counter()
    torch.manual_seed(0)  # the random weights, hence the features the k-means sides compare, are the same every run
    cfgs = {e: {s: stage_config(e, s, *overrides(args, s)) for s in STAGES} for e in args.experiments}
    gpus = {e: args.gpus or c["distillation"].stage.resources.nodes * c["distillation"].stage.resources.gpus_per_node
            for e, c in cfgs.items()}
    cap = (lambda b: min(b, args.batch_cap)) if args.batch_cap else (lambda b: b)
    results = {"mode": "cpu-smoke" if args.smoke else "gpu", "meta": device_info(device), "settings": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "sections_s": {}, "errors": {},
        "training": {}}
    run = SimpleNamespace(args=args, device=device, cfgs=cfgs, primary=cfgs[args.sweep_experiment], cap=cap,
                          timing=(args.warmup, args.repeat), results=results,
                          keys={e: {"proposal_learning": "proposal_learning"} for e in cfgs},
                          per_gpu={(e, s): cap(cfgs[e][s].stage.solver.ims_per_batch // gpus[e]) for e in cfgs
                                   for s in ("proposal_learning", "distillation")})

    def part(name: str, fn, *fn_args) -> None:
        """Runs one part; an error is recorded and the next part runs: one call on a lent GPU should
        bring back every figure that can be had (the script still exits non-zero at the end)."""
        t0 = time.perf_counter()
        try:
            fn(run, *fn_args)
        except Exception:  # noqa: BLE001 - recorded with its traceback, and fails the run at the end
            results["errors"][name] = traceback.format_exc()
            print(results["errors"][name], file=sys.stderr, flush=True)
        free(device)  # after the traceback is gone, so the failed part's tensors are released
        results["sections_s"][name] = round(time.perf_counter() - t0, 2)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=float))
        print(f"[{time.perf_counter() - started:6.1f} s] {name} {'FAILED' if name in results['errors'] else 'done'}",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        run.items = make_items(Path(tmp), args.images, args.height, args.width)
        run.images = [read_rgb(item["file_name"]) for item in run.items[:64]]
        run.rles = [item["object"] for item in run.items[:64]]
        part("inference: object masks, pixel grouping, part ranking", inference)
        part("proposal learning steps", proposal_steps)
        for e in sorted(cfgs, key=lambda e: e != args.sweep_experiment):  # the sweep's experiment first
            part(f"distillation steps ({cfgs[e]['distillation'].data.name})", distillation_steps, e)
        part("loader", loader)

    results["projection"] = {e: project(e, {s: cfgs[e][s].stage for s in STAGES}, results,
                                        DATASETS[cfgs[e]["distillation"].data.name]["images"], gpus[e], run.keys[e])
                             for e in cfgs}
    part("projection", lambda run: None)
    kind = "CPU smoke (model=tiny, 192 px): the figures mean nothing" if args.smoke else results["meta"].get("gpu")
    print(f"\n{kind}; {time.perf_counter() - started:.0f} s in all\n")
    print(table(results))
    failed = [f"pixel grouping {p}: {r['check']}" for p, r in results.get("pixel_grouping", {}).items() if r["check"]]
    failed += [f"{name}: {trace.strip().splitlines()[-1]}" for name, trace in results["errors"].items()]
    if failed:
        sys.exit("bench_gpu.py: " + "; ".join(failed))


if __name__ == "__main__":
    main()
