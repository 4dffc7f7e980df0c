"""Dataset indexing: `build_index` and the Parquet cache against a sorted recursive glob.

Builds (or reuses) a tree of empty `.JPEG` files in class folders, then times, in one run:
(a) `sorted(glob.glob("**/*.JPEG", recursive=True))`, the baseline (names only, no sizes), and
(a+) the same plus one `os.stat` per file, which gives what the index holds; (b) `build_index` (parallel os.scandir, with sizes); (c) `cached_index` cold (scan + Parquet
write); (d) `cached_index` warm (fingerprint + Parquet read). Each is the best of --repeat runs.
The index must list the glob's files, and the reloaded index must equal the built one. `--smoke`
does all of it on a tree of a few hundred files in a second (tests/test_benchmarks.py); its times
mean nothing.

    python benchmarks/bench_index.py --files 200000 --classes 1000 [--smoke]
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import tempfile
import time
from pathlib import Path

from partdistill.data.index import build_index, cache_path, cached_index


def make_tree(folder: Path, files: int, classes: int) -> None:
    """`files` empty JPEGs spread over `classes` class folders; an existing complete tree is reused."""
    marker = folder / f".complete-{files}-{classes}"
    if marker.exists():
        return
    for k in range(classes):
        wnid = f"n{k:08d}"
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        for n in range(k, files, classes):
            os.close(os.open(folder / wnid / f"{wnid}_{n}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))
    marker.touch()


def glob_with_sizes(tree: Path) -> list[tuple[str, int]]:
    return [(p, os.stat(tree / p).st_size) for p in sorted(glob.glob("**/*.JPEG", root_dir=tree, recursive=True))]


def best_of(repeat: int, fn, before=lambda: None) -> tuple[float, object]:
    """The fastest of `repeat` timed calls of `fn` (`before` runs untimed ahead of each)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        before()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="where the tree goes, kept for later runs (default: a temporary folder, removed afterwards)")
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a tiny tree, one repeat: checks that it runs and agrees")
    if parser.parse_known_args()[0].smoke:
        parser.set_defaults(files=400, classes=8, workers=2, repeat=1)
    args = parser.parse_args()
    if args.root:
        run(args, args.root)
    else:  # a tree nobody can reuse is not left behind (200,000 files at the default size)
        with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
            run(args, Path(tmp))


def run(args: argparse.Namespace, root: Path) -> None:
    tree, cache = root / "tree", root / "cache"
    start = time.perf_counter()
    make_tree(tree, args.files, args.classes)
    print(f"tree: {tree} ({args.files} files, {args.classes} classes, ready in {time.perf_counter() - start:.1f} s)")
    # one untimed pass so every method meets the same warm page cache
    glob.glob("**/*.JPEG", root_dir=tree, recursive=True)

    drop = lambda: shutil.rmtree(cache, ignore_errors=True)  # noqa: E731
    t_glob, names = best_of(args.repeat, lambda: sorted(glob.glob("**/*.JPEG", root_dir=tree, recursive=True)))
    t_glob_stat, _ = best_of(args.repeat, lambda: glob_with_sizes(tree))
    t_build, table = best_of(args.repeat, lambda: build_index(tree, args.workers))
    t_cold, _ = best_of(args.repeat, lambda: cached_index(tree, cache, args.workers), before=drop)
    t_warm, warm = best_of(args.repeat, lambda: cached_index(tree, cache, args.workers))
    assert table.column("path").to_pylist() == names and warm.equals(table)

    size = cache_path(tree, cache).stat().st_size
    print(f"workers={args.workers}, best of {args.repeat}; index {size / 2**20:.1f} MiB\n")
    print(f"{'method':<36}{'seconds':>9}")
    for label, seconds in (
        ("(a) sorted(glob('**/*.JPEG'))", t_glob),
        ("(a+) glob + os.stat per file", t_glob_stat),
        ("(b) build_index", t_build),
        ("(c) cached_index, cold", t_cold),
        ("(d) cached_index, warm", t_warm),
    ):
        print(f"{label:<36}{seconds:>9.3f}")
    print(f"\nbaseline/build  {t_glob / t_build:6.2f}x")
    print(f"(a+)/build      {t_glob_stat / t_build:6.2f}x")
    print(f"baseline/reload {t_glob / t_warm:6.2f}x")
    print(f"build/reload    {t_build / t_warm:6.2f}x")


if __name__ == "__main__":
    main()
