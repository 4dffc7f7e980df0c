"""The message a missing or incomplete dataset gives: what is missing, where it looked, how to fix it."""
from __future__ import annotations

from typing import Sequence

from partdistill.data.layout import LayoutReport, check_dataset, section_anchor
from partdistill.errors import UserError
from partdistill.paths import DATASETS_README, ROOT_ENV, datasets_root, describe_root


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

