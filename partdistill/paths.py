"""Where partdistill's files are: the checkout, and the root that holds datasets/ and runs/."""
from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "PART_DISTILLATION_ROOT"
CHECKOUT = Path(__file__).resolve().parents[1]  # the repository checkout: the default root
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
