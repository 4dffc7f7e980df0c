"""The `partdistill` command.

    partdistill data check [--json] [OVERRIDE ...]     which datasets are in place (exit 1: a needed one is not)
    partdistill data synth --out DIR [--images N]      tiny copies of every dataset, in their real formats
    partdistill data prepare part_imagenet             PartImageNet's valtest split (val + test)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from partdistill.data.layout import DATASETS

REPORTED = ("imagenet_1k", "imagenet_22k", "part_imagenet", "pascal_parts", "cityscapes_part")


def compose(overrides: Sequence[str]):
    """The config `launch.py` would compose with these overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from partdistill import config

    config.register()
    with initialize_config_dir(str(config.CONFIG_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def data_check(args: argparse.Namespace) -> int:
    """One row per dataset; exit status 1 when a dataset the composed config needs is missing."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from partdistill import plan
    from partdistill.config.resolver import check, describe_root

    try:
        cfg = compose(args.overrides)
        needs = plan.dataset_needs(cfg)
    except (HydraException, OmegaConfBaseException, plan.ConfigError) as exc:
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
    from partdistill.config.resolver import datasets_root
    from partdistill.data import part_imagenet

    base = datasets_root() / "part_imagenet"
    try:
        print(part_imagenet.prepare_valtest(base))
    except (part_imagenet.PrepareError, ValueError) as exc:
        print(f"partdistill data prepare: {exc}", file=sys.stderr)
        return 2
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
    synth.add_argument("--images", type=int, default=8, help="images per split and dataset (default 8)")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=data_synth)

    prepare = data.add_parser("prepare", help="derived splits: PartImageNet's valtest (val + test merged)")
    prepare.add_argument("dataset", choices=["part_imagenet"])
    prepare.set_defaults(func=data_prepare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
