"""How many items must a dream last before its reward can tell Sum of Squares from Best Fit?

Measured in the real environment, so no dream error is involved. Best Fit packs the first
--start_steps items of each episode; from that shared state Best Fit and Sum of Squares each pack
the same next items. A k-item window's reward (the sum of rewards, = minus the growth of the waste,
which is what train.py's --dream_reward picture scores) is compared policy against policy on the
same window. Sum of Squares wins whole episodes by ~6 points, but it invests early (it keeps more
bins open at good levels), so short windows score it *below* Best Fit: an objective of that length
cannot teach a controller to pack better than Best Fit, however faithful the dream.

    python -m analysis.window_signal [--episodes 4000 --start_steps 200,500 --windows 30,100,300,500 --seed 0]

prints per start and window the mean and spread of (Sum of Squares - Best Fit) and the number of
windows a candidate needs for that mean to stand two standard errors clear of zero, and writes
--out (json).
"""
from __future__ import annotations

import argparse
import copy
import json

import numpy as np

from baselines import best_fit, sum_of_squares
from bin_packing_environment import PRESETS, BatchBinPacking, episode_seeds, make_config
from stages_common import atomic_write_json, check_output_file, episode_count, int_list, seed_int

POLICIES = {"best_fit": best_fit, "sum_of_squares": sum_of_squares}


def window_rewards(config, seeds, start_steps: int, windows, policies=POLICIES) -> dict:
    """{policy: {k: reward over the k items after start_steps (n,)}} on the same items for all.

    A window longer than what is left of the episode is cut at its end.
    """
    env = BatchBinPacking(config, len(seeds))
    obs = env.reset(seeds)
    horizon = env.config.time_horizon
    if start_steps >= horizon:
        raise ValueError(f"start_steps must be below the horizon ({horizon}), got {start_steps}")
    for _ in range(start_steps):
        obs, _, _, _ = env.step(best_fit(obs["state"], obs["action_mask"]))
    ends = sorted({min(k, horizon - start_steps) for k in windows})
    out = {}
    for name, policy in policies.items():
        branch = copy.deepcopy(env)
        obs, total, marks = branch.observation(), np.zeros(len(seeds)), {}
        for step in range(1, ends[-1] + 1):
            obs, reward, _, _ = branch.step(policy(obs["state"], obs["action_mask"]))
            total += reward
            if step in ends:
                marks[step] = total.copy()
        out[name] = {k: marks[min(k, horizon - start_steps)] for k in windows}
    return out


def separation(diff: np.ndarray) -> dict:
    """Mean and spread of a per-window difference, and the windows needed for 2 standard errors."""
    mean, std = float(diff.mean()), float(diff.std(ddof=1))
    needed = (2 * std / mean) ** 2 if mean > 0 else float("inf")
    return {"mean": round(mean, 3), "std": round(std, 3),
            "stderr": round(std / np.sqrt(len(diff)), 3),
            "windows_for_2_stderr": round(needed, 1) if np.isfinite(needed) else None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=episode_count, default=4000, help="episodes (windows) per start")
    parser.add_argument("--start_steps", default="200,500",
                        help="items Best Fit packs before the windows begin (comma-separated)")
    parser.add_argument("--windows", default="30,100,300,500",
                        help="window lengths in items (comma-separated)")
    parser.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS))
    parser.add_argument("--seed", type=seed_int, default=0, help="episodes come from the validation seed stream")
    parser.add_argument("--out", default="results/window_signal.json")
    args = parser.parse_args(argv)
    try:
        args.start_steps = int_list(args.start_steps, "--start_steps", minimum=0)
        args.windows = int_list(args.windows, "--windows")
    except ValueError as e:
        parser.error(str(e))
    config = make_config(PRESETS[args.preset])
    if max(args.start_steps) >= config.time_horizon:
        parser.error(f"--start_steps must be below the preset's horizon ({config.time_horizon})")
    check_output_file(parser, args.out, "--out")
    seeds = episode_seeds(args.seed, args.episodes, "validation")
    rows = []
    print("| start (items) | window (items) | Sum of Squares - Best Fit | std | windows for 2 stderr |")
    print("| --- | --- | --- | --- | --- |")
    for start in args.start_steps:
        rewards = window_rewards(config, seeds, start, args.windows)
        for k in args.windows:
            row = {"start_steps": start, "window": k,
                   **separation(rewards["sum_of_squares"][k] - rewards["best_fit"][k])}
            rows.append(row)
            needed = row["windows_for_2_stderr"]
            print(f"| {start} | {k} | {row['mean']:+.2f} +- {row['stderr']:.2f} | {row['std']:.2f} | "
                  f"{'never (Best Fit ahead)' if needed is None else f'{needed:.0f}'} |")
    result = {"preset": args.preset, "episodes": args.episodes, "seed": args.seed, "rows": rows}
    atomic_write_json(args.out, result, indent=1)
    print(json.dumps({"out": args.out, "rows": len(rows)}))
    return result


if __name__ == "__main__":
    main()
