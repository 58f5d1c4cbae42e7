"""Keep the best of several CMA-ES runs: the controller with the highest validation score.

Training C in the dream depends on its seed (README, "How the shipped agent was made": of five
seeds one reached Best Fit, one collapsed), so the pipeline trains a few and keeps one. The score
compared is the second entry of each run's .best.json, train.py's real-environment validation on
its own validation seeds; the final evaluation (model.py) draws other seeds, so choosing by
validation does not flatter the reported reward.

    python pick_controller.py log/seed0/binpacking.cma.16.64.best.json \\
        log/seed1/binpacking.cma.16.64.best.json --out log/binpacking.cma.16.64.best.json

Prints one line per run and, last, a JSON line naming the chosen file.
"""
from __future__ import annotations

import argparse
import json
import os

from stages_common import atomic_write_json, check_output_file


def load_run(path: str) -> tuple[list, float]:
    """[parameters, validation reward] of one run, with an error that names a bad file."""
    if not os.path.isfile(path):
        raise SystemExit(f"pick_controller: {path} not found (did its train.py run finish?)")
    try:
        with open(path) as f:
            params, reward = json.load(f)
        reward = float(reward)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"pick_controller: {path} is not a train.py .best.json [parameters, reward]: {e}")
    return params, reward


def pick(paths: list[str]) -> tuple[int, list[tuple[list, float]]]:
    """Index of the run with the highest validation reward (the first on a tie), and every run."""
    runs = [load_run(p) for p in paths]
    sizes = {len(params) for params, _ in runs}
    if len(sizes) != 1:
        raise SystemExit(f"pick_controller: the runs have different parameter counts {sorted(sizes)}; "
                         "they must train the same controller")
    rewards = [reward for _, reward in runs]
    return rewards.index(max(rewards)), runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="each run's binpacking.cma.<E>.<P>.best.json")
    parser.add_argument("--out", required=True, help="where the chosen run's .best.json is copied")
    args = parser.parse_args(argv)
    check_output_file(parser, args.out, "--out")
    chosen, runs = pick(args.runs)
    for i, (path, (_, reward)) in enumerate(zip(args.runs, runs)):
        print(f"{'*' if i == chosen else ' '} {reward:8.2f}  {path}")
    atomic_write_json(args.out, list(runs[chosen]))
    print(json.dumps({"chosen": args.runs[chosen], "validation_reward": runs[chosen][1],
                      "validation_rewards": [reward for _, reward in runs]}))


if __name__ == "__main__":
    main()
