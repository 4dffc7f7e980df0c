"""The `partdistill` command.

    partdistill data check [--json] [OVERRIDE ...]     which datasets are in place (exit 1: a needed one is not)
    partdistill data synth --out DIR [--images N]      tiny copies of every dataset, in their real formats
    partdistill data prepare part_imagenet             PartImageNet's valtest split (val + test)
    partdistill data index NAME                        build or refresh an ImageNet file index
    partdistill evaluate --dataset NAME --predictions FILE --out DIR   score saved predictions
    partdistill report SWEEP_DIR                       the summary table of an evaluation multirun
    partdistill store show RUN_DIR STAGE [--overlays N]   a store's shards, and PNGs of its pseudo-labels
    partdistill status RUN_DIR [--json]                where each stage of a run stands, read from its folder
    partdistill predict --weights W --images PATH... --out DIR [--object-class C]   a trained model on one's images
    partdistill export --weights W --out DIR           a trained model as a transformers model folder
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from partdistill.data.layout import DATASETS

REPORTED = ("imagenet_1k", "imagenet_22k", "part_imagenet", "pascal_parts", "cityscapes_part")


def data_check(args: argparse.Namespace) -> int:
    """One row per dataset; exit status 1 when a dataset the composed config needs is missing."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from partdistill import config, plan
    from partdistill.data.missing import check
    from partdistill.errors import ConfigError
    from partdistill.paths import describe_root

    try:
        cfg = config.compose(args.overrides)
        needs = plan.dataset_needs(cfg)
    except (HydraException, OmegaConfBaseException, ConfigError) as exc:
        print(f"partdistill data check: cannot compose the config: {exc}", file=sys.stderr)
        return 2
    names = list(REPORTED) + [n for n in DATASETS if n not in REPORTED and n in needs]
    rows = []
    for name in names:
        row = check(name, needs.get(name, [])).to_json()
        row["needed"] = name in needs
        rows.append(row)
    missing_needed = [r["dataset"] for r in rows if r["needed"] and r["status"] == "missing"]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_table(rows, describe_root()))
        if missing_needed:
            print(f"\nNeeded by this config and missing: {', '.join(missing_needed)}; see datasets/README.md.")
    return 1 if missing_needed else 0


def _table(rows: list[dict], root: str) -> str:
    lines = [f"Dataset root: {root}.", "", f"{'dataset':<16} {'status':<8} {'needed':<7} {'found':<34} path"]
    for r in rows:
        found = "; ".join(r["found"]) or "-"
        lines.append(f"{r['dataset']:<16} {r['status']:<8} {'yes' if r['needed'] else 'no':<7} {found:<34} {r['path']}")
        lines += [f"    missing: {item}" for item in r["missing"]]
        lines += [f"    warning: {item}" for item in r["warnings"]]
    return "\n".join(lines)


def data_synth(args: argparse.Namespace) -> int:
    """Writes every dataset's synthetic copy under OUT/datasets, then PartImageNet's valtest."""
    from partdistill.data import catalog, part_imagenet

    out = Path(args.out).resolve()
    for dataset in catalog.DATASETS:
        catalog.dataset_module(dataset).synthesize(dataset, out / "datasets" / dataset, args.images, args.seed)
        print(f"wrote {out / 'datasets' / dataset}")
    print(part_imagenet.prepare_valtest(out / "datasets" / "part_imagenet"))
    print(f"\nTry it:  export PART_DISTILLATION_ROOT={out}\n         python launch.py experiment=smoke dry_run=true")
    return 0


def data_prepare(args: argparse.Namespace) -> int:
    from partdistill.data import part_imagenet
    from partdistill.paths import datasets_root

    print(part_imagenet.prepare_valtest(datasets_root() / "part_imagenet"))
    return 0


def data_index(args: argparse.Namespace) -> int:
    """Builds (or finds still valid) the cached file index of an ImageNet split."""
    import time

    from partdistill.data import catalog, imagenet, index
    from partdistill.errors import UserError

    _, dataset, base, split, root = catalog.locate(args.name)
    if dataset not in ("imagenet_1k", "imagenet_22k"):
        raise UserError(f"{args.name}: only the ImageNet splits are indexed (the part datasets are small)")
    folder = imagenet.split_folder(dataset, base, split)
    start = time.perf_counter()
    table = index.cached_index(folder, root / "cache", workers=args.workers)
    print(f"{args.name}: {table.num_rows} images in {len(index.class_counts(table))} classes "
          f"({time.perf_counter() - start:.1f} s); index {index.cache_path(folder, root / 'cache')}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from partdistill.evaluation.report import headline
    from partdistill.evaluation.saved import evaluate_saved

    results = evaluate_saved(
        args.dataset, args.predictions, args.out, match_dataset=args.match_dataset,
        match_predictions=args.match_predictions, mapping=args.mapping, object_class=args.object_class,
        min_gt_iou=args.min_gt_iou, overlays=args.overlays, allow_empty=args.allow_empty,
    )
    for key, value in headline(results).items():
        print(f"{key:<16} {value:.2f}" if isinstance(value, float) else f"{key:<16} {value}")
    print(f"written to {Path(args.out).resolve()}")
    return 0


def report(args: argparse.Namespace) -> int:
    from partdistill.evaluation.summary import write_summary

    print(write_summary(args.sweep_dir))
    return 0


def store_show(args: argparse.Namespace) -> int:
    """Prints a stage's store: complete and incomplete shards, records, skipped; writes overlays."""
    from partdistill.store import Store
    from partdistill.evaluation.pseudo_labels import write_overlays

    store = Store.open(Path(args.run_dir) / "store", args.stage)
    summary = store.summary()
    print(f"{args.stage}: {len(summary['complete'])} of {summary['num_partitions']} partition(s) complete, "
          f"{summary['records']} records, {summary['skipped']} skipped -> {store.folder}")
    if summary["incomplete"]:
        shown = ", ".join(map(str, summary["incomplete"][:20])) + (" ..." if len(summary["incomplete"]) > 20 else "")
        print(f"  incomplete: {shown}")
    if args.overlays:
        out = Path(args.out) if args.out else Path(args.run_dir) / "overlays" / args.stage  # not in the store
        written = write_overlays(store.records(), out, args.overlays, args.stage)
        print(f"  {len(written)} overlay(s) (image | parts by label) -> {out}")
    return 0


def status(args: argparse.Namespace) -> int:
    """Each stage of the run in RUN_DIR: done, partial (with what is missing) or not started."""
    from partdistill.errors import UserError
    from partdistill.status import format_status, run_status

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder (a run's folder is its run_dir, by default "
                        "$PART_DISTILLATION_ROOT/runs/<experiment>_<data>)")
    rows = run_status(run_dir)
    print(json.dumps(rows, indent=2) if args.json else format_status(run_dir, rows))
    return 0


def predict(args: argparse.Namespace) -> int:
    """Part masks of a trained model on the user's images: predictions.jsonl, overlays/, summary.json."""
    from partdistill.stages.predict import format_summary
    from partdistill.stages.predict import predict as run_predict

    summary = run_predict(args.weights, args.images, args.out, object_class=args.object_class,
                          class_file=args.classes, object_model=args.object_model, dataset=args.dataset,
                          batch_size=args.batch_size, device=args.device, workers=args.workers,
                          proposals=args.proposals, dataset_objects=args.dataset_objects)
    print(format_summary(summary, Path(args.out).resolve()))
    return 0


def export(args: argparse.Namespace) -> int:
    from partdistill.stages.export import export_model

    info = export_model(args.weights, args.out)
    out = Path(args.out).resolve()
    print(f"{info['head']['kind']} model from {info['source']} -> {out} (Mask2FormerForUniversalSegmentation."
          f"from_pretrained('{out}'); partdistill predict --weights {out} ...)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="partdistill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser(
        "check",
        help="report every dataset under $PART_DISTILLATION_ROOT/datasets",
        description="One row per dataset: status (ok|missing|warning), what is found, missing items and "
        "warnings. Exits 1 when a dataset the composed config needs is missing. OVERRIDES are the "
        "ones launch.py takes (e.g. data=imagenet_22k eval=part_imagenet stage=evaluate).",
    )
    check.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    check.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra overrides, as for launch.py")
    check.set_defaults(func=data_check)

    synth = data.add_parser("synth", help="write tiny copies of every dataset (and the synthetic one)")
    synth.add_argument("--out", required=True, help="a folder; the datasets go to OUT/datasets/<name>")
    # 16: four training images per synthetic class, so that part ranking has more proposals per class than
    # clusters even from the smoke run's barely trained proposal model
    synth.add_argument("--images", type=int, default=16, help="images per split and dataset (default 16)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=data_synth)

    prepare = data.add_parser("prepare", help="derived splits: PartImageNet's valtest (val + test merged)")
    prepare.add_argument("dataset", choices=["part_imagenet"])
    prepare.set_defaults(func=data_prepare)

    idx = data.add_parser("index", help="build or refresh the cached file index of an ImageNet split")
    idx.add_argument("name", help="imagenet_1k_train, imagenet_1k_val or imagenet_22k_train")
    idx.add_argument("--workers", type=int, default=16, help="parallel directory listings (shared storage likes many)")
    idx.set_defaults(func=data_index)

    ev = commands.add_parser("evaluate", help="score saved predictions of any method on a dataset",
                             description="Scores a prediction file (JSON list or JSON Lines of {image_id, "
                             "segmentation: COCO RLE, label, score}) with part mIoU and part AR. Every record "
                             "is checked first; an error names the file, the record index and the field.")
    ev.add_argument("--dataset", required=True, help="a dataset name, e.g. pascal_parts_val, part_imagenet_valtest")
    ev.add_argument("--predictions", required=True, help="the prediction file")
    ev.add_argument("--match-dataset", help="learn the label -> part mapping on this dataset (default: --dataset)")
    ev.add_argument("--match-predictions", help="the predictions on --match-dataset")
    ev.add_argument("--mapping", choices=["majority", "hungarian", "identity"], default="majority")
    ev.add_argument("--object-class", choices=["synset", "supercategory"], default="synset",
                    help="PartImageNet's object classes (default: the ImageNet synset, as the paper)")
    ev.add_argument("--min-gt-iou", type=float, default=0.001, help="proposal AR: drop proposals not above this")
    ev.add_argument("--overlays", type=int, default=4, help="PNG overlays to write")
    ev.add_argument("--out", required=True, help="folder for metrics.json, CSVs, summary.md and overlays/")
    ev.add_argument("--allow-empty", action="store_true",
                    help="score a prediction file without records (every part then counts as missed) instead of "
                    "refusing it as the sign of a method that wrote nothing")
    ev.set_defaults(func=evaluate)

    rep = commands.add_parser("report", help="rebuild the summary table of an evaluation multirun")
    rep.add_argument("sweep_dir", help="the multirun's folder (it holds multirun.yaml)")
    rep.set_defaults(func=report)

    store = commands.add_parser("store", help="the pseudo-label store").add_subparsers(dest="store_command",
                                                                                        required=True)
    show = store.add_parser("show", help="a stage's shards and PNG overlays of its pseudo-labels")
    show.add_argument("run_dir", help="the run folder (it holds store/)")
    show.add_argument("stage", choices=["object_masks", "pixel_grouping", "part_ranking"])
    show.add_argument("--overlays", type=int, default=8, help="PNG overlays to write (0: none)")
    show.add_argument("--out", help="folder for the overlays (default: RUN_DIR/overlays/<stage>)")
    show.set_defaults(func=store_show)
    where = commands.add_parser("status", help="where each stage of a run stands (read from its folder)")
    where.add_argument("run_dir", help="the run's folder (its run_dir)")
    where.add_argument("--json", action="store_true", help="one JSON object per stage")
    where.set_defaults(func=status)

    weights_help = ("a trained model: a training stage's folder (RUN_DIR/distillation), one of its checkpoints, a run "
                    "folder (its distillation model) or a folder written by partdistill export")
    pred = commands.add_parser(
        "predict", help="run a trained model on your own images",
        description="Runs a trained model (proposal, distilled or fine-tuned head, as its head.json says) over "
        "images at the model's input size, batched, on the GPU when there is one. Writes OUT/predictions.jsonl "
        "(the evaluation file format: partdistill evaluate scores it), OUT/overlays/<image>.png and "
        "OUT/summary.json. Unreadable images are skipped, counted and named. A distilled model needs each "
        "object's class: --object-class, --classes or --object-model.")
    pred.add_argument("--weights", required=True, help=weights_help)
    pred.add_argument("--images", required=True, nargs="+", metavar="PATH",
                      help="image files, folders of images (searched recursively) or text files listing image paths")
    pred.add_argument("--out", required=True, help="output folder")
    pred.add_argument("--object-class", help="distilled model: the object class of every image (a class key such "
                      "as class-2 or n02690373, or its name)")
    pred.add_argument("--classes", metavar="FILE", help="distilled model: a file mapping images to classes, a JSON "
                      "object {path: class} or lines 'PATH CLASS' (paths relative to the file); --object-class "
                      "covers the images it does not list")
    pred.add_argument("--object-model", metavar="FOLDER", help="distilled model: an instance-segmentation model "
                      "(save_pretrained folder or hub id, e.g. RUN_DIR/instance_training/pretrained) whose top "
                      "instance is the object: parts are predicted inside its mask, conditioned on its class unless "
                      "--object-class/--classes give one")
    pred.add_argument("--dataset", help="the images belong to this dataset split (e.g. synthetic_val): records get its "
                      "image ids, so `partdistill evaluate --dataset` can score the output")
    pred.add_argument("--dataset-objects", action="store_true", help="distilled model: each object annotated in "
                      "--dataset's records, with its mask and class (as stage=evaluate conditions the model)")
    pred.add_argument("--batch-size", type=int, default=8)
    pred.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1 ...")
    pred.add_argument("--workers", type=int, default=None, help="image-reading processes (default: one per CPU, "
                      "at most 8; 0 reads in this process)")
    pred.add_argument("--proposals", type=int, default=200, help="proposal model: masks kept per image")
    pred.set_defaults(func=predict)

    exp = commands.add_parser(
        "export", help="write a trained model as a transformers model folder",
        description="Writes OUT so that transformers' Mask2FormerForUniversalSegmentation.from_pretrained(OUT) "
        "loads it (config.json with id2label, model.safetensors), with partdistill.json (what the head is) and a "
        "model card (README.md). partdistill predict --weights OUT and model.pretrained=OUT take it back.")
    exp.add_argument("--weights", required=True, help=weights_help)
    exp.add_argument("--out", required=True, help="the folder to write (replaced if it exists)")
    exp.set_defaults(func=export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from partdistill.errors import user_error_of

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        known = user_error_of(exc)
        if known is None:
            raise
        print(f"partdistill {args.command}: {known}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
