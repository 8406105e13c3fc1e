"""Time the same benchmark command on two source trees in one run (alternating, fresh processes).

Used to check that a refactor does not slow the exact path: e.g.

    git worktree add /tmp/base <old-commit>
    python benchmarks/bench_revisions.py /tmp/base . --rounds 3 -- \
        --preset paper --modality rgb+xyz --random-backbones --samples 3

Each round runs ``cmdr-iad benchmark ARGS --json F`` once per tree (order alternating between
rounds, so a drifting machine load hits both alike), with ``PYTHONPATH=<tree>/src``. Prints every
run, the median seconds per sample of each tree and the ratio base / new (≥ 1: new is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_once(tree: Path, args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        env = dict(os.environ, PYTHONPATH=str(tree.resolve() / "src"))
        cmd = [sys.executable, "-c", "import sys; from cmdr_iad.cli import main; sys.exit(main())",
               "benchmark", *args, "--json", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{tree}: benchmark failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        data = json.loads(out.read_text())
        return data[-1] if isinstance(data, list) else data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", type=Path, help="source tree of the baseline (has src/cmdr_iad)")
    ap.add_argument("new", type=Path, help="source tree of the new revision")
    ap.add_argument("--rounds", type=int, default=3)
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    bench_args = argv[cut + 1:]  # after "--": the `cmdr-iad benchmark` options
    times: dict[str, list[float]] = {"base": [], "new": []}
    for r in range(a.rounds):
        order = [("base", a.base), ("new", a.new)]
        for name, tree in (order if r % 2 == 0 else order[::-1]):
            res = run_once(tree, bench_args)
            times[name].append(res["seconds_per_sample"])
            print(f"round {r + 1} {name:4s} {res['seconds_per_sample']:.3f} s/sample, "
                  f"peak {res['peak_memory_mb']:.0f} MB, matmul {res['matmul_gflops']:.0f} GFLOP/s",
                  flush=True)
    mb, mn = statistics.median(times["base"]), statistics.median(times["new"])
    print(f"median base {mb:.3f} s/sample, new {mn:.3f} s/sample, ratio base/new {mb / mn:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
