"""Stage `report`: one page that says whether the method learned, and pictures of each stage's output.

It reads what the other stages left in run_dir (each training stage's metrics.json, the grouping's
evaluation, the pipeline's evaluation of the distilled model under run_dir/eval/<suite>/) and puts
each stage's headline number in one table beside two controls scored by the same evaluator on the
same split: *random* (each object cut into as many random cells as there are part clusters per
class, random labels; mean over seeds 0..stage.random_seeds-1) and *oracle* (the ground-truth parts:
100). Writes summary.md, summary.csv and summary.json, and the figures (`report_figures`), to
`stage.out`; a stage that has not run shows as "-" and is named.

    python launch.py experiment=demo stage=report
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from partdistill.data import catalog
from partdistill.engine.hooks import flatten
from partdistill.evaluation.controls import oracle_parts, random_cells
from partdistill.evaluation.report import markdown_table, write_table
from partdistill.evaluation.saved import evaluate_saved
from partdistill.io import write_json_atomic
from partdistill.paths import project_root
from partdistill.stages.report_figures import write_figures

log = logging.getLogger(__name__)
STAGE = "report"
COLUMNS = ["stage", "result", "metric", "value", "source"]


def _metric(path: Path, suffix: str) -> float | None:
    """The value of the first key of metrics.json (top level or its flattened "eval") ending in `suffix`."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    flat = {**{k: v for k, v in data.items() if not isinstance(v, (dict, list))}, **flatten(data.get("eval", {}))}
    return next((float(v) for k, v in flat.items() if (k == suffix or k.endswith("/" + suffix)) and v is not None),
                None)


def stage_rows(run_dir: Path, suite: str) -> list[dict]:
    """The headline number of each stage, read from the files it wrote."""
    wanted = [
        ("instance_training", "instance model: its top mask vs the object", "top_instance_IoU",
         "instance_training/metrics.json"),
        ("pixel_grouping", "k-means parts of the ground-truth objects", "AR@10", "pixel_grouping/metrics.json"),
        ("proposal_learning", "class-agnostic part proposals", "AR@10", "proposal_learning/metrics.json"),
        ("proposal_learning", "class-agnostic part proposals", "AR@100", "proposal_learning/metrics.json"),
        ("distillation", "class-conditioned parts, distilled", "C-mIoU", f"eval/{suite}/metrics.json"),
        ("distillation", "class-conditioned parts, distilled", "A-mIoU", f"eval/{suite}/metrics.json"),
    ]
    return [{"stage": stage, "result": result, "metric": metric, "value": _metric(run_dir / source, metric),
             "source": source} for stage, result, metric, source in wanted]


def control_rows(dataset: str, k: int, seeds: int, out: Path) -> list[dict]:
    """Random (mean over `seeds` seeds) and oracle C-mIoU / A-mIoU on catalog split `dataset`."""
    records = [r for r in catalog.load(dataset, project_root()) if r["annotations"]]
    scored = {"random": [], "oracle": []} if seeds else {"oracle": []}
    for name, predictions in [*((f"random-s{s}", random_cells(records, k, s)) for s in range(seeds)),
                              ("oracle", oracle_parts(records))]:
        folder = out / "controls" / name
        write_json_atomic(folder / "predictions.json", predictions)
        results = evaluate_saved(dataset, folder / "predictions.json", folder, overlays=0, root=project_root())
        scored[name.split("-")[0]].append(results)
    rows = []
    for name, runs in scored.items():
        result = (f"control: {k} random cells per object, random labels (mean of {seeds} seeds)"
                  if name == "random" else "control: the ground-truth parts")
        for metric in ("C-mIoU", "A-mIoU"):
            values = [r[metric] for r in runs if r.get(metric) is not None]
            rows.append({"stage": name, "result": result, "metric": metric,
                         "value": sum(values) / len(values) if values else None, "source": f"controls/{name}*"})
    return rows


def run(cfg: DictConfig) -> dict:
    s, run_dir, out = cfg.stage, Path(cfg.run_dir), Path(cfg.stage.out)
    dataset = f"{cfg.eval.dataset}_{cfg.eval.split}"
    head = run_dir / "distillation" / "head.json"
    # the random control cuts objects into as many cells as the distilled model has part clusters per class
    seeds = int(s.random_seeds) if head.is_file() else 0
    if not head.is_file():
        log.warning("report: no %s, so no random control (it takes the distilled model's clusters per class)", head)
    k = json.loads(head.read_text())["num_parts"] if head.is_file() else 0
    rows = stage_rows(run_dir, cfg.eval.suite) + control_rows(dataset, k, seeds, out)
    title = f"{run_dir.name}: {dataset}, seed {cfg.seed}"
    write_table(out, rows, COLUMNS, title)
    missing = sorted({r["stage"] for r in rows if r["value"] is None})
    if missing:
        log.warning("report: no result yet from %s (run those stages first)", ", ".join(missing))
    figures = write_figures(cfg, out / "figures", int(s.images))
    print(f"\n{title}\n\n{markdown_table(rows, COLUMNS[:4])}\n")
    print(f"report: summary -> {out}/summary.md (.csv, .json); figures -> {', '.join(str(p) for p in figures)}")
    return {f"{r['stage']}/{r['metric']}": r["value"] for r in rows}
