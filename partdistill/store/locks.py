"""Per-shard locks: at most one live process writes a given shard, however many run the same stage.

Two jobs on one run_dir and stage (a job array submitted twice, a local run beside a SLURM one)
reach the same shard. The lock is an exclusive `flock` on a file beside the shard: the kernel,
or the NFS server for a shared file system, drops it when its holder dies, however it dies, so a
killed writer never blocks its shard and nothing has to judge whether a lock is stale. The file
names the holder (host, pid, start time) for the message of whoever waits; the holder removes it
on release, and a waiter that then finds the path gone or pointing at a new file starts over, so
two processes never hold locks on two different files of one path.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# errors of file systems where flock does not work (e.g. Lustre mounted without -o flock)
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_warned: set[str] = set()


@contextlib.contextmanager
def locked(path: Path, what: str) -> Iterator[bool]:
    """Holds an exclusive lock on `path` in the block, waiting (with one log line naming the holder)
    while another live process has it. Yields False, after one warning per folder, where the file
    system does not support locks: the block then runs unlocked, as it did before locks."""
    fd = _acquire(path, what)
    if fd is None:
        yield False
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # before the unlock: a waiter then finds a new file at the path and starts over
        os.close(fd)


def _acquire(path: Path, what: str) -> int | None:
    """A descriptor of the file at `path` holding its lock, or None where locks are not supported."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("%s is being written by %s: waiting for it", what, _holder(fd))
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in UNSUPPORTED:
                raise
            _warn_unsupported(path, exc)
            return None
        except BaseException:  # interrupted while waiting (Ctrl-C, a signal)
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the holder released and removed it while this process waited: start over


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _holder(fd: int) -> str:
    """'process <pid> on <host> (since <time>)' from the lock file, as far as it was written."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"process {owner['pid']} on {owner['host']} (since {owner['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _warn_unsupported(path: Path, exc: OSError) -> None:
    folder = str(path.parent)
    if folder not in _warned:
        _warned.add(folder)
        log.warning("file locks do not work in %s (%s): two processes writing the same shard at once are "
                    "not kept apart there", folder, exc.strerror)
