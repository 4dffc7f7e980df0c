"""What an evaluation leaves on disk: metrics.json, per-class CSVs and a Markdown summary (its PNG
overlays are drawn by evaluation.figures)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from partdistill.io import write_json_atomic, write_text_atomic

MIOU_KEYS = ("C-mIoU", "A-mIoU", "C-mACC", "A-mACC", "C-mIoPred", "A-mIoPred")
SUPERVISED_KEYS = ("mIoU", "mACC", "pixel_acc", "AP", "AP50", "AP75")


def headline(results: dict) -> dict:
    """The top-level numbers (mIoU family and AR@k), without the tables."""
    return {k: v for k, v in results.items() if not isinstance(v, (dict, list))}


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(rows: list[dict], columns: list[str] | None = None) -> str:
    """CSV of `rows` with `columns` (default: the first row's keys); None is an empty cell."""
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns or list(rows[0]), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_table(out_dir: Path, rows: list[dict], columns: list[str], title: str, notes: list[str] = ()) -> str:
    """summary.md (title, table, notes), summary.csv and summary.json (the rows); returns the Markdown."""
    text = "\n".join([f"# {title}", "", markdown_table(rows, columns)] + (["", *notes] if notes else []))
    write_text_atomic(Path(out_dir) / "summary.md", text + "\n")
    write_text_atomic(Path(out_dir) / "summary.csv", csv_text(rows, columns))
    write_json_atomic(Path(out_dir) / "summary.json", rows, indent=1)
    return text


def write_results(results: dict, out_dir: Path, title: str) -> None:
    """metrics.json (headline numbers at top level), per_class.csv, per_part.csv and summary.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "metrics.json", results, indent=1)
    write_text_atomic(out_dir / "per_class.csv", csv_text(results.get("per_class", [])))
    write_text_atomic(out_dir / "per_part.csv", csv_text(results.get("per_part", [])))
    top = headline(results)
    text = [f"# {title}", "", markdown_table([top], list(top))]
    if results.get("per_class"):
        text += ["", "## Per object class", "", markdown_table(results["per_class"], ["class", "objects", "mIoU", "mACC", "mIoPred"])]
    write_text_atomic(out_dir / "summary.md", "\n".join(text) + "\n")
