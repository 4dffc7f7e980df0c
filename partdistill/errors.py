"""The errors a user can fix: launch.py and the CLI print their message, not a traceback."""
from __future__ import annotations

import errno

from hydra.errors import CompactHydraException

# disk faults a user fixes outside partdistill: what each means, said plainly
DISK_FAULTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is mounted read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
}


class UserError(Exception):
    """A problem with the user's input (config, files, datasets); the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config value that composes but cannot be run (the message names the key and the fix)."""


class DiskError(UserError):
    """A file partdistill must read or write hit a disk fault (full, read-only, no permission)."""


class PredictionError(UserError, ValueError):
    """A prediction file that cannot be scored; the message names the record index and the fix."""


class ModelConfigError(UserError):
    """A `model.*` option that is unknown or has a value the model cannot be built from."""


class PretrainedUnavailable(UserError):
    """`model.pretrained` names a folder that does not exist or a hub id that cannot be loaded."""


class DenseCRFUnavailable(UserError):
    """stage.dcrf.enabled=true without pydensecrf installed."""


class AnnotationFileError(UserError, ValueError):
    """A split's annotation file that cannot be used at all; the message names it and what is wrong."""


class PrepareError(UserError):
    """valtest cannot be made from what is on disk (the message says what and how to fix it)."""


class UnknownDataset(UserError, KeyError):
    """A dataset name (data.name, eval.dataset) that is no dataset: launch.py prints the message."""


def user_error_of(exc: BaseException) -> UserError | None:
    """The UserError behind `exc` (resolvers and Hydra wrap what they raise), a composition error (an
    override or option Hydra refuses, met when partdistill composes a config itself) as a ConfigError, a
    disk fault as a DiskError, or None for a bug, which keeps its traceback."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UserError):
            return seen
        if isinstance(seen, CompactHydraException):  # a bad override or option, as Hydra itself reports it
            cause = f"\n{seen.__cause__}" if seen.__cause__ is not None else ""
            return ConfigError(f"{seen}{cause}")
        if isinstance(seen, OSError) and seen.errno in DISK_FAULTS:
            path = seen.filename or "a file"
            return DiskError(
                f"partdistill: {path}: {DISK_FAULTS[seen.errno]} ({seen.strerror}). Outputs are written to a "
                "temporary file and renamed, so nothing partial was left behind; free space or fix the permissions "
                "and run the same command again to resume, or give another run_dir=... (or --out) on a disk that "
                "can take it."
            )
        seen = seen.__cause__ or seen.__context__
    return None
