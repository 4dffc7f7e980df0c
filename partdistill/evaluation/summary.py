"""One table for a multirun: a row per job (suite, its overrides, its metrics), failed jobs included.

Written as summary.md, summary.csv and summary.json in the sweep folder when a multirun of
`stage=evaluate` ends (SummaryCallback, registered in conf/config.yaml), and rebuilt at any time
from what the jobs left on disk with `partdistill report SWEEP_DIR`.
"""
from __future__ import annotations

import json
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from partdistill.errors import ConfigError
from partdistill.evaluation.report import (
    MIOU_KEYS,
    SUPERVISED_KEYS,
    headline,
    write_table,
)


def expected_jobs(sweep_dir: Path) -> list[list[str]]:
    """The overrides of every job of the sweep, in job-number order, from Hydra's multirun.yaml."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        raise ConfigError(f"{path} not found: {sweep_dir} is not the folder of a Hydra multirun")
    task = list(OmegaConf.load(path).hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(task)
    batches = BasicSweeper.split_arguments(overrides, None)
    sweeps = [o.key_or_group for o in overrides if o.is_sweep_override()]
    return [[o for o in job if o.split("=")[0].lstrip("+~") in sweeps] for batch in batches for job in batch]


def collect(sweep_dir: Path) -> list[dict]:
    """A row per expected job: ok (its metrics), failed (started, no metrics.json) or missing (never started)."""
    rows = []
    for num, overrides in enumerate(expected_jobs(sweep_dir)):
        job_dir = sweep_dir / str(num)
        row = {"job": num, "overrides": " ".join(overrides)}
        metrics = job_dir / "metrics.json"
        if metrics.is_file():
            row.update(status="ok", **headline(json.loads(metrics.read_text())))
        else:
            row.update(status="failed" if job_dir.is_dir() else "missing", suite=None, dataset=None)
            log_file = next(iter(sorted(job_dir.glob("*.log"))), None) if job_dir.is_dir() else None
            row["log"] = str(log_file) if log_file else None
        rows.append(row)
    return rows


def write_summary(sweep_dir: str | Path) -> str:
    """Writes summary.{md,csv,json} in the sweep folder and returns the Markdown table."""
    sweep_dir = Path(sweep_dir)
    rows = collect(sweep_dir)
    failed = [r for r in rows if r["status"] != "ok"]
    notes = [f"- job {r['job']} ({r['overrides']}): {r['status']}" + (f", log {r['log']}" if r.get("log") else "")
             for r in failed]
    return write_table(sweep_dir, rows, ["job", "status", "suite", "dataset", "overrides"] + _metric_keys(rows),
                       f"Evaluation summary: {sweep_dir}", ["Jobs without results:", *notes] if notes else [])


def write_suite_summary(eval_dir: str | Path, suites: list[str]) -> str:
    """The same table for a pipeline's evaluation, a row per suite from eval_dir/<suite>/metrics.json (a
    suite without one: "missing"); writes summary.{md,csv,json} in eval_dir and returns the Markdown."""
    eval_dir = Path(eval_dir)
    rows = []
    for suite in suites:
        metrics = eval_dir / suite / "metrics.json"
        row = {"suite": suite, "status": "ok" if metrics.is_file() else "missing"}
        row.update(headline(json.loads(metrics.read_text())) if metrics.is_file() else {"dataset": None})
        row["suite"] = suite
        rows.append(row)
    missing = [r["suite"] for r in rows if r["status"] != "ok"]
    notes = [f"Suites without results (their evaluation failed or did not run): {', '.join(missing)}"] if missing else []
    return write_table(eval_dir, rows, ["suite", "status", "dataset"] + _metric_keys(rows),
                       f"Evaluation summary: {eval_dir}", notes)


def _metric_keys(rows: list[dict]) -> list[str]:
    keys = [k for k in MIOU_KEYS + SUPERVISED_KEYS if any(k in r for r in rows)]
    return keys + sorted({k for r in rows for k in r if k.startswith(("AR", "AP-AR"))}, key=_ar_order)


def _ar_order(key: str) -> tuple:
    kind, _, k = key.partition("@")
    return (kind, int(k) if k.isdigit() else 0)


class SummaryCallback(Callback):
    """Writes and prints the summary table when a multirun of stage=evaluate ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if config.stage.name != "evaluate":
            return
        print(write_summary(Path(config.hydra.sweep.dir)))
