"""Launchers that check every job of a sweep before the first one runs or is submitted.

Hydra composes each job's config only inside the launcher, so this is the one place where a
sweep (`-m data=imagenet_1k,imagenet_22k`, a 40-task array) can be refused as a whole: a missing
dataset or stage stops the sweep here with one message, instead of as many failed jobs.
"""
from __future__ import annotations

from typing import Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class _CheckSweepFirst:
    """Mixin for a Hydra launcher: `plan.preflight` over all job configs, then the real launch."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from partdistill import plan  # lazy: plugin discovery imports this module

        configs = [self.hydra_context.config_loader.load_sweep_config(self.config, list(o)) for o in job_overrides]
        with plan.exit_on_user_error():
            plan.preflight([cfg for cfg in configs if not cfg.dry_run])
        return super().launch(job_overrides, initial_job_idx)


class LocalLauncher(_CheckSweepFirst, BasicLauncher):
    """Runs the jobs in this process, one after another."""


class SubmititSlurmLauncher(_CheckSweepFirst, SlurmLauncher):
    """Submits the jobs to SLURM through submitit (a sweep becomes one job array)."""
