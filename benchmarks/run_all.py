"""`make bench`: run every benchmark script in benchmarks/ (each writes docs/results/<name>.*).

`--quick` passes `--quick` to each (a smoke subset). Failures are reported and the rest still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

SKIP = {"__init__", "common", "run_all"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("only", nargs="*", help="benchmark names to run (default: all)")
    args = ap.parse_args()
    names = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem not in SKIP)
    names = [n for n in names if not args.only or n in args.only]
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if args.quick else [])
        rc = subprocess.run(cmd).returncode
        print(f"== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - start:.0f} s")
        if rc:
            failed.append(name)
    if failed:
        print("failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
