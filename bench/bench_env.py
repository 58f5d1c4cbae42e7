"""Environment throughput, measured side by side in one run on one core.

Single gym environment with pictures vs the batch environment with and without pictures,
all driven by Best Fit. Prints steps/s and the ratios, and writes bench/results_env.json.
Targets: batch with pictures >= 20x the single env, batch without pictures >= 200x.
"""
import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sys  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import baselines  # noqa: E402
from bin_packing_environment import BatchBinPacking, BinPacking2DMaskGymEnvironment, episode_seeds  # noqa: E402


def single_steps_per_s(steps):
    env = BinPacking2DMaskGymEnvironment()
    obs = env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        action = int(np.flatnonzero(obs["action_mask"])[-1])
        obs, _, done, _ = env.step(action)
        if done:
            obs = env.reset()
    return steps / (time.perf_counter() - start)


def batch_steps_per_s(num_envs, pictures, horizon_steps):
    env = BatchBinPacking("perfect_pack", num_envs, pictures=pictures)
    obs = env.reset(episode_seeds(0, num_envs))
    start = time.perf_counter()
    for _ in range(horizon_steps):
        obs, _, _, _ = env.step(baselines.best_fit(obs["state"], obs["action_mask"]))
    return num_envs * horizon_steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--single_steps", type=int, default=20000)
    parser.add_argument("--num_envs", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=300, help="batch steps (each steps every episode)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_env.json"))
    args = parser.parse_args()
    single = single_steps_per_s(args.single_steps)
    pics = batch_steps_per_s(args.num_envs, True, args.steps)
    nopics = batch_steps_per_s(args.num_envs, False, args.steps)
    result = {"single_env_pictures_steps_per_s": round(single), "batch_pictures_steps_per_s": round(pics),
              "batch_no_pictures_steps_per_s": round(nopics), "num_envs": args.num_envs,
              "ratio_batch_pictures": round(pics / single, 1), "ratio_batch_no_pictures": round(nopics / single, 1)}
    print("| environment | steps/s | ratio to single |\n| --- | --- | --- |")
    print(f"| single gym env, pictures | {single:,.0f} | 1 |")
    print(f"| batch of {args.num_envs}, pictures | {pics:,.0f} | {pics / single:.1f}x (target >= 20x) |")
    print(f"| batch of {args.num_envs}, no pictures | {nopics:,.0f} | {nopics / single:.1f}x (target >= 200x) |")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
