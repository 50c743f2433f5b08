"""Run a recipe and SIGKILL this very process at a chosen point (used by test_resume.py).

usage: python resume_worker.py RECIPE KILL_AT [key=value ...]
KILL_AT: `after:N` (right after step N is logged), `saving:N` (midway through writing checkpoint N), `never`.
"""

import os
import signal
import sys

from lmstack.train.loop import train
from lmstack.train.recipe import build_job, load_recipe


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    recipe_path, kill_at, *overrides = sys.argv[1:]
    recipe = load_recipe(recipe_path, overrides)
    job, _ = build_job(recipe, recipe.run_dir)
    mode, _, n = kill_at.partition(":")

    def log(message: str) -> None:
        print(message, flush=True)
        if mode == "after" and message.startswith(f"step {n}: loss"):
            die()

    if mode == "saving":
        write_extras = job.write_extras

        def dying_extras(directory):
            write_extras(directory)
            if directory.name.startswith(f".tmp-step-{int(n):08d}"):
                die()

        job.write_extras = dying_extras
    train(job, recipe.train, recipe.run_dir, log)


if __name__ == "__main__":
    main()
