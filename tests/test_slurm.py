"""`hydra/launcher=slurm` against a real SLURM cluster (`scripts/local_slurm.sh start` makes one here).

Every behaviour runs on the scheduler itself: a sweep as one job array, an array over partitions
with a failing task resubmitted alone, preemption and time-limit requeues that resume to the
result of an uninterrupted run, a cancelled job, a two-task gloo all-reduce, a held job that
keeps the config of its submission, and requests SLURM refuses at submission. Jobs ask for one
CPU and 1 GB, so that two run at once on a two-core machine.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from partdistill.paths import CHECKOUT

SHIM = CHECKOUT / "scripts" / "sacct_shim"
LAUNCH = CHECKOUT / "launch.py"
SMALL = ["hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
# a job long enough to be signalled while it runs: object masks of 64 synthetic training images from
# Mask2Former (tiny, random weights), upscaled to stage.image_size; four partitions (one per class).
# On one core here: about 6 s per partition at 512 px (LONG), 16 s at 832 px (LONGER).
LONG = ["experiment=smoke", "stage=object_masks", "stage.source=model", "stage.image_size=512",
        "stage.num_partitions=4"]
LONGER = [*LONG[:-2], "stage.image_size=832", "stage.num_partitions=4"]
UP_STATES = ("idle", "mixed", "allocated", "completing")


def _not_ready() -> str | None:
    """Why the SLURM tests cannot run here, or None."""
    if shutil.which("sinfo") is None:
        return ("no SLURM here (sinfo is not on PATH): start the one-node cluster with "
                "`sudo bash scripts/local_slurm.sh start` (.ci/run does)")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo got no answer from slurmctld in 30 s: is it running? (bash scripts/local_slurm.sh status)"
    if out.returncode != 0:
        return f"sinfo fails ({out.stderr.strip()}): start SLURM with `sudo bash scripts/local_slurm.sh start`"
    states = out.stdout.split()
    if not any(state.rstrip("*~#$@") in UP_STATES for state in states):
        return f"no SLURM node is up (sinfo node states: {' '.join(states) or 'none'})"
    return None


REASON = _not_ready()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

SUBMITTED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def cancel_leftovers():
    """Cancels whatever the tests submitted that is still queued or running when the module ends."""
    yield
    queued = set(subprocess.run(["squeue", "-h", "-t", "PD,R,S,CF,RQ,RS,RH,SE", "-o", "%i"], capture_output=True,
                                text=True).stdout.split())
    left = [job for job in SUBMITTED if any(q == job or q.startswith(f"{job}_") for q in queued)]
    if left:
        subprocess.run(["scancel", *left], check=False)


def env_for(root: Path, shim: bool = True) -> dict:
    """The environment of a submission: the sacct stand-in first on PATH (or nowhere on it), one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != SHIM.resolve()]
    env.update(PATH=os.pathsep.join([str(SHIM)] * shim + path), PART_DISTILLATION_ROOT=str(root),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, str(LAUNCH), "-m", "hydra/launcher=slurm", *SMALL, *args]


def job_id_in(text: str) -> str | None:
    found = re.search(r"submitted SLURM job(?: array)? (\d+)", text)
    if found and found.group(1) not in SUBMITTED:
        SUBMITTED.append(found.group(1))
    return found.group(1) if found else None


def launch(*args: str, root: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(command(*args), capture_output=True, text=True, env=env_for(root), cwd=CHECKOUT,
                            timeout=timeout)
    job_id_in(result.stdout)
    return result


class Background:
    """launch.py running in the background, its output in files (read while it runs)."""

    def __init__(self, args: list[str], root: Path, folder: Path, shim: bool = True):
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / "launch.out", folder / "launch.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err, env=env_for(root, shim), cwd=CHECKOUT)

    def job_id(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = job_id_in(self.out.read_text())
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"no job was submitted:\n{self.out.read_text()}\n{self.err.read_text()}")

    def wait(self, timeout: float) -> tuple[int, str, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"launch.py did not end within {timeout} s:\n{self.out.read_text()}\n{self.err.read_text()}")
        return code, self.out.read_text(), self.err.read_text()


def job_state(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def wait_until(predicate, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def complete_shards(store: Path, total: int = 4) -> list[int]:
    return [i for i in range(total) if (store / f"part-{i}-of-{total}" / "manifest.json").is_file()]


def shard_records(store: Path, total: int = 4) -> dict[int, str]:
    """records.jsonl of every shard (manifests differ only in their creation time)."""
    assert complete_shards(store, total) == list(range(total)), f"{store} is incomplete"
    return {i: (store / f"part-{i}-of-{total}" / "records.jsonl").read_text() for i in range(total)}


def gt_predictions(records: list[dict]) -> list[dict]:
    """Every ground-truth part as a predicted segment labelled with its index in the object (a perfect method)."""
    return [{"image_id": r["image_id"], "segmentation": part["segmentation"], "label": j, "score": 1.0 - 0.01 * j}
            for r in records for obj in r["annotations"] for j, part in enumerate(obj["parts"])]


# -- data ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A dataset root with the small synthetic copies of every dataset (`partdistill data synth`)."""
    from partdistill.cli import main as cli

    root = tmp_path_factory.mktemp("synth")
    assert cli(["data", "synth", "--out", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def long_synth(tmp_path_factory) -> Path:
    """A dataset root with 64 synthetic training images (for the long job)."""
    from partdistill.data import synthetic

    root = tmp_path_factory.mktemp("long")
    synthetic.synthesize("synthetic", root / "datasets" / "synthetic", num_images=64, seed=0)
    return root


@pytest.fixture(scope="module")
def baseline(long_synth, tmp_path_factory):
    """The LONG job run uninterrupted in a local process (started at once, awaited by `.store()`)."""

    class Baseline:
        def __init__(self):
            self.run = tmp_path_factory.mktemp("baseline")
            args = [sys.executable, str(LAUNCH), *LONG, f"run_dir={self.run}", f"hydra.run.dir={self.run}/log"]
            self.log = self.run / "launch.txt"
            with open(self.log, "w") as log:
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env_for(long_synth),
                                             cwd=CHECKOUT)

        def store(self) -> Path:
            assert self.proc.wait(timeout=600) == 0, self.log.read_text()
            return self.run / "store" / "object_masks"

    base = Baseline()
    yield base
    if base.proc.poll() is None:
        base.proc.kill()
        base.proc.wait()


def job_logs(sweep: Path, job: str) -> str:
    """The job's stdout and stderr logs (submitit logs INFO to the first, warnings to the second)."""
    folder = sweep / ".submitit" / job
    return "".join((folder / f"{job}_0_log.{ext}").read_text() for ext in ("out", "err"))


# -- submission --------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, sbatch_says", [
    ("hydra.launcher.partition=nosuchpartition", "Invalid partition name specified"),
    ("hydra.launcher.cpus_per_task=64", "More processors requested than permitted"),
    ("hydra.launcher.mem_gb=4096", "Requested node configuration is not available"),
])
def test_f_impossible_requests_fail_at_submission_with_sbatchs_message(synth, tmp_path, override, sbatch_says):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    start = time.monotonic()
    result = launch("experiment=smoke", "stage=object_masks", f"run_dir={tmp_path}/run",
                    f"hydra.sweep.dir={tmp_path}/sweep", override, root=synth)
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "SLURM refused this sweep at submission; nothing was queued." in result.stderr
    assert sbatch_says in result.stderr
    assert override.split("=", 1)[0].split(".")[-1] in result.stderr  # the request is repeated
    assert elapsed < 30
    assert job_id_in(result.stdout) is None
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before
    assert not (tmp_path / "run").exists()


def test_f_a_missing_dataset_fails_before_submission(tmp_path):
    result = launch("experiment=smoke", "stage=object_masks", "stage.partition=0,1",
                    f"hydra.sweep.dir={tmp_path}/sweep", root=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "synthetic: looked at" in result.stderr
    assert job_id_in(result.stdout) is None
    assert not (tmp_path / "sweep" / ".submitit").exists()


# -- (a) a sweep -----------------------------------------------------------------------------------------


def test_a_sweep_over_three_suites_is_one_array_and_ends_with_the_summary(synth, tmp_path):
    from partdistill.data import catalog

    for suite, dataset in (("synthetic", "synthetic_val"), ("part_imagenet", "part_imagenet_valtest"),
                           ("pascal_parts", "pascal_parts_val")):
        (tmp_path / f"{suite}.json").write_text(json.dumps(gt_predictions(catalog.load(dataset, synth))))
    sweep = tmp_path / "sweep"
    suites = ["synthetic", "part_imagenet", "pascal_parts"]
    result = launch("experiment=smoke", "stage=evaluate", f"eval={','.join(suites)}",
                    f"eval.predictions={tmp_path}/${{eval.suite}}.json",
                    "eval.overlays=1", f"hydra.sweep.dir={sweep}", root=synth)
    assert result.returncode == 0, result.stderr
    array = job_id_in(result.stdout)
    out = result.stdout
    assert f"submitted SLURM job array {array} (3 tasks: {array}_0 .. {array}_2)" in out
    assert f"logs:   {sweep}/.submitit/%j" in out
    assert f"squeue -j {array}" in out and f"tail -f {sweep}/.submitit/{array}_0/{array}_0_0_log.out" in out
    assert "| job | status | suite | dataset | overrides | C-mIoU |" in out  # the summary table ends the sweep
    rows = json.loads((sweep / "summary.json").read_text())
    assert [(r["status"], r["suite"]) for r in rows] == [("ok", s) for s in suites]
    for i, suite in enumerate(suites):
        job = sweep / str(i)
        assert f"eval={suite}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert json.loads((job / "metrics.json").read_text())["C-mIoU"] is not None
        assert (sweep / ".submitit" / f"{array}_{i}" / f"{array}_{i}_0_result.pkl").is_file()
    assert json.loads((sweep / "0" / "metrics.json").read_text())["C-mIoU"] == pytest.approx(100.0)
    assert len(list((sweep / ".snapshot").iterdir())) == 1  # one snapshot per submission


# -- (b) a job array over partitions ---------------------------------------------------------------------------


def test_b_array_over_partitions_with_a_failed_task_then_resubmitted_alone(synth, tmp_path):
    run = tmp_path / "run"
    store = run / "store" / "object_masks"
    store.mkdir(parents=True)
    # a stray file where partition 2's shard goes: task 2 (and only it) fails to rename its finished shard
    (store / "part-2-of-4").write_text("in the way\n")
    args = ["experiment=smoke", "stage=object_masks", "stage.num_partitions=4", f"run_dir={run}"]
    result = launch(*args, "stage.partition=all", f"hydra.sweep.dir={tmp_path}/sweep1", root=synth)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "stage.partition=all -> stage.partition=range(0,4)" in result.stderr
    array = job_id_in(result.stdout)
    assert f"submitted SLURM job array {array} (4 tasks: {array}_0 .. {array}_3)" in result.stdout
    err = result.stderr
    assert "1 of 4 SLURM job(s) of this sweep did not complete" in err
    assert f"job {array}_2 (#2: " in err and "NotADirectoryError" in err
    assert f"log: {tmp_path}/sweep1/.submitit/{array}_2/{array}_2_0_log.out" in err
    assert "Traceback" not in err
    assert complete_shards(store) == [0, 1, 3]

    # fix the cause, then run the command the report gives
    (store / "part-2-of-4").unlink()
    resubmit = [line.strip() for line in err.splitlines() if line.strip().startswith("python ")]
    assert len(resubmit) == 1 and resubmit[0].endswith("stage.partition=incomplete")
    cmd = shlex.split(resubmit[0])
    cmd[0] = sys.executable
    again = subprocess.run([*cmd, f"hydra.sweep.dir={tmp_path}/sweep2"], capture_output=True, text=True,
                           env=env_for(synth), cwd=CHECKOUT, timeout=240)
    assert again.returncode == 0, again.stderr
    assert "stage.partition=incomplete -> stage.partition=2 (1 of 4 partitions" in again.stderr
    job = job_id_in(again.stdout)
    assert f"submitted SLURM job {job};" in again.stdout  # one job, not an array
    assert "stage.partition=2" in (tmp_path / "sweep2" / "0" / ".hydra" / "overrides.yaml").read_text()
    assert not (tmp_path / "sweep2" / "1").exists()
    assert complete_shards(store) == [0, 1, 2, 3]
    done = launch(*args, "stage.partition=incomplete", root=synth)
    assert done.returncode == 0 and "are complete" in done.stdout and job_id_in(done.stdout) is None


# -- (c) preemption and (d) time limit ---------------------------------------------------------------------------


@pytest.mark.slow
def test_c_preempted_job_requeues_and_resumes_to_the_uninterrupted_result(long_synth, baseline, tmp_path):
    run, sweep = tmp_path / "run", tmp_path / "sweep"
    store = run / "store" / "object_masks"
    bg = Background(command(*LONG, "hydra.launcher.timeout_min=30", f"run_dir={run}", f"hydra.sweep.dir={sweep}"),
                    long_synth, tmp_path)
    job = bg.job_id()
    wait_until(lambda: complete_shards(store), 240, "the first complete shard")
    assert job_state(job).get("JobState") == "RUNNING" and len(complete_shards(store)) < 4, \
        "the job ended before it could be preempted: make LONG's work longer"
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    code, out, err = bg.wait(timeout=400)
    assert code == 0, out + err
    log = job_logs(sweep, job)
    assert "Caught signal SIGUSR2" in log and "Calling checkpoint method" in log
    assert f"partdistill: SLURM signalled job {job}: 0 of 0 save-now callback(s) saved; requeueing it" in log
    assert f"Requeued job {job}" in log
    assert int(job_state(job)["Restarts"]) == 1
    written = [int(n) for n in re.findall(r"(\d+) partition\(s\) written", log)]
    assert written and written[-1] < 4  # the requeued run skipped the shards completed before the signal
    assert shard_records(store) == shard_records(baseline.store())


@pytest.mark.slow
def test_d_time_limit_signal_requeues_and_the_job_completes(long_synth, tmp_path):
    run, sweep = tmp_path / "run", tmp_path / "sweep"
    store = run / "store" / "object_masks"
    # SLURM sends USR2 when at most signal_delay_s remain, checking once a minute, so up to 60 s early: with
    # a 2-minute limit and 60 s, the first run is signalled at its first check (0-60 s in), every later
    # run about 47 s in (it starts cred_expire + 2 s after the check that requeued it). LONGER needs about
    # 75 s, so it is signalled at least once; each run completes at least one shard, and 5 requeues leave
    # room for a slower, busy machine
    bg = Background(command(*LONGER, "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60",
                            "hydra.launcher.max_num_timeout=5", f"run_dir={run}", f"hydra.sweep.dir={sweep}"),
                    long_synth, tmp_path)
    job = bg.job_id()
    code, out, err = bg.wait(timeout=480)
    assert code == 0, out + err
    log = job_logs(sweep, job)
    assert "Caught signal SIGUSR2" in log and "this job is timed-out" in log, \
        f"no time-limit signal reached the job (it may have ended first: make LONGER's work longer):\n{log}"
    assert f"Requeued job {job}" in log and "save-now callback(s) saved; requeueing it" in log
    assert int(job_state(job)["Restarts"]) >= 1
    written = [int(n) for n in re.findall(r"(\d+) partition\(s\) written", log)]
    assert written and written[-1] < 4  # the last run resumed: complete shards were skipped
    assert complete_shards(store) == [0, 1, 2, 3]
    records = sum(len(text.splitlines()) for text in shard_records(store).values())
    assert records == 64


@pytest.mark.slow
def test_a_job_that_dies_without_a_result_ends_the_sweep_naming_it(long_synth, tmp_path):
    sweep = tmp_path / "sweep"
    # without the sacct stand-in on PATH: the launcher finds accounting missing and puts it there itself
    bg = Background(command(*LONG, "hydra.launcher.timeout_min=30", f"run_dir={tmp_path}/run",
                            f"hydra.sweep.dir={sweep}"), long_synth, tmp_path, shim=False)
    job = bg.job_id()
    wait_until(lambda: job_state(job).get("JobState") == "RUNNING", 60, f"job {job} to run")
    subprocess.run(["scancel", job], check=True)
    code, out, err = bg.wait(timeout=180)
    assert code == 1, out + err
    assert f"job {job} (#0: " in err and "ended without a result (SLURM state CANCELLED)" in err
    assert f"log: {sweep}/.submitit/{job}/{job}_0_log.out" in err
    assert "stage.partition=incomplete" in err and "Traceback" not in err
    real = shutil.which("sacct", path=env_for(tmp_path, shim=False)["PATH"])
    if real is None or subprocess.run([real, "-j", "1"], capture_output=True).returncode != 0:  # no accounting
        assert f"job states come from scontrol through {SHIM}/sacct" in out


# -- (e) a two-task distributed job --------------------------------------------------------------------------


def test_e_two_tasks_on_the_node_all_reduce_with_gloo(tmp_path, monkeypatch):
    import cloudpickle
    import slurm_jobs
    import submitit

    for key, value in env_for(tmp_path).items():
        monkeypatch.setenv(key, value)
    cloudpickle.register_pickle_by_value(slurm_jobs)  # the job need not import the tests folder
    try:
        executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
        executor.update_parameters(nodes=1, tasks_per_node=2, cpus_per_task=1, mem_gb=1, timeout_min=5,
                                   slurm_job_name="pd_allreduce")
        job = executor.submit(slurm_jobs.allreduce)
    finally:
        cloudpickle.unregister_pickle_by_value(slurm_jobs)
    SUBMITTED.append(job.job_id)
    results = job.results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["world_size"] == 2 and r["sum"] == 3.0 and r["backend"] == "gloo" and r["source"] == "submitit"
               for r in results)
    assert sorted(r["local_rank"] for r in results) == [0, 1]


# -- snapshot ---------------------------------------------------------------------------------------------


def test_a_queued_job_runs_the_config_and_code_of_its_submission(synth, tmp_path):
    from partdistill.data import catalog

    suites = tmp_path / "extra" / "eval"
    suites.mkdir(parents=True)
    original = (CHECKOUT / "conf" / "eval" / "synthetic.yaml").read_text()
    (suites / "held.yaml").write_text(original + "overlays: 1\n")
    (tmp_path / "preds.json").write_text(json.dumps(gt_predictions(catalog.load("synthetic_val", synth))))
    sweep = tmp_path / "sweep"
    bg = Background(command("experiment=smoke", "stage=evaluate", "eval=held",
                            f"hydra.searchpath=[file://{tmp_path}/extra]", f"eval.predictions={tmp_path}/preds.json",
                            "+hydra.launcher.additional_parameters.hold=true",
                            f"hydra.sweep.dir={sweep}"), synth, tmp_path)
    job = bg.job_id()
    wait_until(lambda: job_state(job).get("JobState") == "PENDING", 30, f"job {job} to be held")
    (suites / "held.yaml").write_text(original + "overlays: 3\n")  # edited while the job waits
    subprocess.run(["scontrol", "release", job], check=True)
    code, out, err = bg.wait(timeout=180)
    assert code == 0, out + err
    assert "overlays: 1\n" in (sweep / "0" / ".hydra" / "config.yaml").read_text()
    snapshots = list((sweep / ".snapshot").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / "partdistill" / "engine" / "preemption.py").is_file()
    log = (sweep / ".submitit" / job / f"{job}_0_log.err").read_text()
    assert f"running the code in {snapshots[0]}/partdistill" in log
