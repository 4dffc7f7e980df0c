"""The dataset root ($PART_DISTILLATION_ROOT/datasets) and the message a missing or incomplete dataset gives."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from partdistill.data.layout import LayoutReport, check_dataset, section_anchor
from partdistill.errors import UserError

ROOT_ENV = "PART_DISTILLATION_ROOT"
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository checkout: the default root
DATASETS_README = CHECKOUT / "datasets" / "README.md"


def project_root() -> Path:
    """`$PART_DISTILLATION_ROOT`, or the repository checkout when it is unset or empty."""
    value = os.environ.get(ROOT_ENV, "")
    return Path(os.path.abspath(os.path.expanduser(value))) if value else CHECKOUT


def datasets_root() -> Path:
    return project_root() / "datasets"


def describe_root() -> str:
    """One sentence saying which root is used and why."""
    value = os.environ.get(ROOT_ENV, "")
    if value:
        return f"${ROOT_ENV}={value}, so datasets are read from {datasets_root()}"
    return (
        f"${ROOT_ENV} is unset, so the default root was used: {CHECKOUT} (the repository checkout); "
        f"datasets are read from {datasets_root()}"
    )


class DatasetLayoutError(UserError):
    """A dataset a run needs is missing or incomplete. The message says what and how to fix it."""

    def __init__(self, reports: Sequence[LayoutReport], root: str | None = None):
        self.reports = list(reports)
        super().__init__(format_layout_error(self.reports, root))


def format_layout_error(reports: Sequence[LayoutReport], root: str | None = None) -> str:
    """The message for missing datasets; `root` describes an explicitly given root (default: the env's)."""
    lines = [
        f"partdistill: {len(reports)} dataset(s) this run needs are missing or incomplete; "
        "nothing was run or submitted.",
        f"Dataset root: {root or describe_root()}.",
        f"  (set it with `export {ROOT_ENV}=/path/to/root`; datasets live in $PART_DISTILLATION_ROOT/datasets/<name>)",
    ]
    for report in reports:
        lines += ["", f"{report.dataset}: looked at {report.path}"]
        lines += [f"  missing: {item}" for item in report.missing]
        lines += [f"  warning: {item}" for item in report.warnings]
        lines.append(
            f"  how to fix: datasets/README.md, section \"{report.section}\" "
            f"({DATASETS_README}#{section_anchor(report.section)})"
        )
    return "\n".join(lines)


def check(name: str, splits: Sequence[str] = (), only: bool = False) -> LayoutReport:
    """Checks one dataset under the current root (see `check_dataset`)."""
    return check_dataset(name, datasets_root(), splits, only)

