"""partdistill's launchers: `hydra/launcher=local` (this process) and `hydra/launcher=slurm` (submitit).

Both check every job of a sweep before the first one runs or is submitted. Hydra composes each
job's config only inside the launcher, so this is the one place where a sweep (`-m
data=imagenet_1k,imagenet_22k`, a 40-task array) can be refused as a whole: a missing dataset or
stage, or jobs that would train into one folder under different configurations, stop the sweep
here with one message, instead of as many failed jobs.

On top of hydra-submitit-launcher's SLURM launcher, `SubmititSlurmLauncher`:
  * snapshots what a queued job runs: each job's config is composed at submission and pickled
    with the job (editing conf/ while jobs wait changes nothing), and the `partdistill` package,
    conf/ and datasets/metadata are copied to `<sweep dir>/.snapshot/<date>-<time>-<pid>/`, which
    the jobs import from (`hydra.launcher.snapshot=false` runs the installed code instead);
  * asks SLURM first (`sbatch --test-only`) whether the request can ever run: a wrong partition or
    more CPUs, memory or GPUs than any node has stops the sweep at once with sbatch's message; a
    job accepted anyway but pending for a reason that never clears (a time limit above the
    partition's, where SLURM does not enforce partition limits at submission) is cancelled at once;
  * prints the job (array) id, where the logs go and how to watch and cancel;
  * on SLURM's signal (preemption, or `signal_delay_s` before the time limit) calls
    `partdistill.engine.preemption.request_save()` in the job, then requeues the same job with
    the same overrides into the same output folder (at most `max_num_timeout` times); a stage
    that saves at its next safe point (training: when the current step ends) is waited for,
    at most `signal_delay_s / 2` seconds, before the requeue ends the process;
  * submits `stage=pipeline` as a chain of dependent jobs, each stage with its own resources, and
    returns without waiting (pipeline.py; `partdistill status RUN_DIR` follows it);
  * ends the sweep with one report naming each job that failed or died without a result (its
    job id, state, log files) and, for a partitioned stage, the command that resubmits only the
    incomplete partitions.
"""
from __future__ import annotations

import copy
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from hydra_plugins.partdistill_launchers import pipeline
from hydra_plugins.partdistill_launchers.reporting import announce, collect
from hydra_plugins.partdistill_launchers.submission import (
    SubmissionError,
    _refusal,
    ensure_job_states,
    make_executor,
    settings_for,
    refuse_hopeless,
    sbatch_test_only,
    snapshot_folder,
    take_snapshot,
)

log = logging.getLogger(__name__)

class _CheckSweepFirst:
    """Mixin for a Hydra launcher: the experiment's stage values merged into every config it sees (the
    sweep's, whose `stage.resources` the launcher's settings interpolate, and each job's), then
    `plan.preflight` over all job configs, then the real launch."""

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from partdistill.config import (
            apply_experiment,  # lazy: plugin discovery imports this module
        )

        apply_experiment(config, config.hydra.overrides.task)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        params = getattr(self, "params", None)
        if params:  # submitit resolved them at instantiation, before the merge
            params.update(settings_for(config, params))

    def _check_sweep(self, job_overrides: Sequence[Sequence[str]]) -> list[DictConfig]:
        from partdistill import plan, sweeps
        from partdistill.config import apply_experiment

        configs = [self.hydra_context.config_loader.load_sweep_config(self.config, list(o)) for o in job_overrides]
        for cfg in configs:
            apply_experiment(cfg, cfg.hydra.overrides.task)
        with plan.exit_on_user_error():
            running = [cfg for cfg in configs if not cfg.dry_run]
            plan.preflight(running)
            sweeps.refuse_shared_training_folders(running)
        return configs

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        self._check_sweep(job_overrides)
        return super().launch(job_overrides, initial_job_idx)


class LocalLauncher(_CheckSweepFirst, BasicLauncher):
    """Runs the jobs in this process, one after another."""


class SubmititSlurmLauncher(_CheckSweepFirst, SlurmLauncher):
    """Submits the jobs to SLURM through submitit (a sweep becomes one job array)."""

    # a sweep's job ends "completed" with its error in the result, which the waiting launcher reports; the
    # jobs of a pipeline's chain fail instead (pipeline.py), since SLURM's dependencies read the exit status
    fail_on_error = False

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import FailedJobError

        from partdistill import plan
        from partdistill.paths import project_root

        assert self.config is not None and self.hydra_context is not None
        configs = self._check_sweep(job_overrides)
        if all(cfg.dry_run for cfg in configs):  # a dry run submits nothing: print the plans here
            return BasicLauncher.launch(self, job_overrides, initial_job_idx)

        pipelines = [cfg for cfg in configs if cfg.stage.name == "pipeline"]
        if pipelines:  # each pipeline: a chain of dependent jobs, submitted without waiting for them
            with plan.exit_on_user_error():
                if len(pipelines) != len(configs):
                    raise SubmissionError("partdistill: a sweep cannot mix stage=pipeline with single stages: "
                                          "submit them with separate commands")
                for num, cfg in enumerate(configs):
                    pipeline.submit(self, cfg, first_num=(initial_job_idx + num) * 1000)
            return []

        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        snapshot = snapshot_folder(sweep_dir) if self.params.get("snapshot", True) else None
        executor = make_executor(self.params, snapshot, project_root())

        job_params: List[Any] = []
        for idx, (overrides, cfg) in enumerate(zip(job_overrides, configs)):
            idx = initial_job_idx + idx
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            # the plugin's arguments, plus the job's config as composed now (see __call__)
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state(),
                               cfg))

        ensure_job_states()
        with plan.exit_on_user_error():
            sbatch_test_only(executor, len(job_params))
            if snapshot is not None:
                take_snapshot(snapshot)
            try:
                jobs = executor.map_array(self, *zip(*job_params))
            except FailedJobError as exc:
                raise SubmissionError(_refusal(str(exc).strip(), executor._executor.parameters)) from None
            refuse_hopeless(jobs[0].job_id.split("_")[0], executor._executor.parameters)
        announce(jobs, sweep_dir, Path(str(self.params["submitit_folder"])))
        return collect(jobs, job_overrides, configs, initial_job_idx, Path(str(self.config.hydra.sweep.dir)))

    # -- inside the job ---------------------------------------------------------------------------

    def __call__(
        self,
        sweep_overrides: List[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: Dict[type, Singleton],
        sweep_config: Optional[DictConfig] = None,
    ) -> JobReturn:
        """Runs one job of the sweep inside SLURM, with the config composed at submission."""
        if sweep_config is None:  # pickled by an older version: compose from conf/ as the plugin does
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        import submitit

        import partdistill

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        print(f"partdistill: running the code in {Path(partdistill.__file__).parent} with the config composed at "
              "submission", file=sys.stderr, flush=True)
        Singleton.set_state(singleton_state)
        setup_globals()
        config = copy.deepcopy(sweep_config)
        OmegaConf.copy_cache(from_config=self.config, to_config=config)  # ${now:...} as at submission
        with open_dict(config.hydra.job) as job:
            job.id = submitit.JobEnvironment().job_id
            config.hydra.job.num = job_num
        self._requeue_after_save(max(5.0, float(self.params.get("signal_delay_s") or 120) / 2))
        ret = run_job(hydra_context=self.hydra_context, task_function=self.task_function, config=config,
                      job_dir_key=job_dir_key, job_subdir_key="hydra.sweep.subdir")
        if self.fail_on_error:
            _ = ret.return_value  # re-raises the stage's error: the SLURM job fails, and the jobs after it never start
        return ret

    def _requeue_after_save(self, grace_s: float) -> None:
        """Wraps submitit's handler of SLURM's signal (in this job process) so that a save the running
        stage puts off to its next safe point is written before submitit requeues and exits.

        submitit's handler calls `checkpoint()` and then `sys.exit`s from inside the signal handler,
        in the middle of whatever the stage was doing: the Trainer, asked mid-step, would never reach
        the end of the step where it saves. Here the signal first runs `request_save()`; when a
        callback said `save_later()`, submitit's handler runs only once the stage calls
        `preemption.saved()`, or after `grace_s` seconds, or at a second signal, whichever is first
        (then the job resumes from its previous save).
        """
        import signal
        import threading

        import submitit

        from partdistill.engine import preemption

        signum = submitit.JobEnvironment._usr_sig()
        requeue = signal.getsignal(signum)
        if not callable(requeue):
            return
        launcher = self

        def handler(sig: int, frame: Any) -> None:
            if preemption.pending():  # signalled again (or the grace time is over) before the save
                launcher._saved_before = (0, len(preemption.callbacks()))
                requeue(sig, frame)
                return
            launcher._saved_before = (preemption.request_save(), len(preemption.callbacks()))
            if not preemption.pending():
                requeue(sig, frame)
                return
            print(f"partdistill: SLURM signalled the job: the stage saves at its next safe point; requeueing then "
                  f"(or in {grace_s:.0f} s)", file=sys.stderr, flush=True)
            timer = threading.Timer(grace_s, os.kill, (os.getpid(), sig))
            timer.daemon = True
            timer.start()

            def after_save() -> None:
                timer.cancel()
                requeue(sig, None)

            preemption.when_saved(after_save)

        signal.signal(signum, handler)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on SLURM's signal (preemption or time limit), in global rank 0 only.

        Asks the running stage to save (`partdistill.engine.preemption.request_save()`), then returns
        the same call, which submitit pickles and requeues: the same job id, overrides, snapshot and
        output folder. Stages resume from what they saved; partitioned stages skip complete shards.
        """
        from partdistill.engine import preemption

        saved_before, self._saved_before = getattr(self, "_saved_before", None), None  # None: not pickled
        if saved_before is None:  # not asked yet (see _requeue_after_save)
            registered = len(preemption.callbacks())
            saved = preemption.request_save()
        else:
            saved, registered = saved_before
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID", "?")
        if os.environ.get("SLURM_ARRAY_TASK_ID"):
            job_id += f"_{os.environ['SLURM_ARRAY_TASK_ID']}"
        overrides = " ".join(filter_overrides(args[0])) if args else ""
        message = (f"partdistill: SLURM signalled job {job_id}: {saved} of {registered} save-now callback(s) saved; "
                   f"requeueing it with the same overrides ({overrides}) into the same output folder")
        print(message, file=sys.stderr, flush=True)
        log.warning(message)
        return super().checkpoint(*args, **kwargs)
