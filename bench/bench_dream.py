"""Dream throughput, the wall time of one CMA-ES generation in the dream, and of C's validation.

Side by side in one run: a generation (popsize x num_episode dreams) rolled out all at once
in numpy, against the same generation rolled out one episode at a time as the original did.
Uses rnn/rnn.json and initial_z/initial_z.json when present, else a random M of the same size
(the cost does not depend on the weights). Then train.py's validation (the CMA-ES mean on
--validation_episodes real episodes, V encoding every picture) on one MPI worker and on
--workers, each worker playing its share (needs the shipped V and M). Writes
bench/results_dream.json.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dream_env import BatchDream, load_initial_z, rollout_dream  # noqa: E402
from controller import DEFAULT_INITIAL_Z, DEFAULT_RNN, DEFAULT_VAE, Controller  # noqa: E402
from rnn.rnn import RNNNumpy  # noqa: E402


def load_models():
    if os.path.exists(DEFAULT_RNN) and os.path.exists(DEFAULT_INITIAL_Z):
        return RNNNumpy.from_json(DEFAULT_RNN), load_initial_z(DEFAULT_INITIAL_Z), "shipped"
    from rnn.rnn import MDNRNN
    rnn = RNNNumpy.from_model(MDNRNN(seed=0))
    rng = np.random.default_rng(0)
    return rnn, {"mu": rng.normal(size=(8, 32)).astype(np.float32),
                 "logvar": np.full((8, 32), -2, np.float32)}, "random"


def time_validation(workers: int, episodes: int) -> float:
    """Wall seconds train.py spends on one generation and one validation of `episodes` real
    episodes (the generation: 4 candidates, 1 dream of 10 steps each, next to nothing)."""
    with tempfile.TemporaryDirectory() as log_dir:
        proc = subprocess.run([sys.executable, "train.py", "--vae", DEFAULT_VAE, "--rnn", DEFAULT_RNN,
                               "--initial_z", DEFAULT_INITIAL_Z, "--log_dir", log_dir, "--popsize", "4",
                               "--num_episode", "1", "--time_horizon", "10", "--generations", "1",
                               "--eval_episodes", str(episodes), "--num_worker", str(workers)],
                              cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["wall_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--popsize", type=int, default=64)
    parser.add_argument("--num_episode", type=int, default=16)
    parser.add_argument("--horizon", type=int, default=100, help="dream steps per episode in this benchmark")
    parser.add_argument("--validation_episodes", type=int, default=64, help="real episodes of the validation")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="MPI workers of the shared validation (default: up to 4 cores)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_dream.json"))
    args = parser.parse_args()
    rnn, initial_z, which = load_models()
    # M's done head is ignored here so every dream lasts exactly --horizon steps
    rnn_step = rnn.step

    def step_without_done(*a):
        h, c, out = rnn_step(*a)
        out["done_prob"] = np.zeros_like(out["done_prob"])
        return h, c, out
    rnn.step = step_without_done
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = np.random.default_rng(0).normal(size=(args.popsize, controller.num_params)) * 0.1
    dream = BatchDream(rnn, initial_z, 1.0, args.horizon)

    start = time.perf_counter()
    rollout_dream(controller, params, dream, args.num_episode, np.random.default_rng(0))
    batched = time.perf_counter() - start
    episodes = args.popsize * args.num_episode
    steps = episodes * args.horizon

    # one episode at a time, as the original's workers did (timed on a share, then scaled)
    share = max(1, episodes // 32)
    start = time.perf_counter()
    for k in range(share):
        rollout_dream(controller, params[k % args.popsize], dream, 1, np.random.default_rng(k))
    one_at_a_time = (time.perf_counter() - start) * episodes / share

    result = {"models": which, "popsize": args.popsize, "num_episode": args.num_episode, "horizon": args.horizon,
              "batched_generation_s": round(batched, 2), "batched_dream_steps_per_s": round(steps / batched),
              "one_at_a_time_generation_s": round(one_at_a_time, 1),
              "one_at_a_time_dream_steps_per_s": round(steps / one_at_a_time),
              "speedup": round(one_at_a_time / batched, 1),
              "batched_generation_s_at_1000_steps": round(batched * 1000 / args.horizon, 1)}
    print(f"| CMA-ES generation in the dream ({args.popsize} x {args.num_episode} episodes x {args.horizon} steps) "
          f"| wall s | dream steps/s |\n| --- | --- | --- |")
    print(f"| batched (all episodes at once) | {batched:.2f} | {steps / batched:,.0f} |")
    print(f"| one episode at a time (original), {share} timed | {one_at_a_time:.1f} | {steps / one_at_a_time:,.0f} |")
    print(f"speedup {one_at_a_time / batched:.1f}x")
    if which == "shipped" and args.workers > 1:
        one, shared = (time_validation(k, args.validation_episodes) for k in (1, args.workers))
        result["validation"] = {"episodes": args.validation_episodes, "workers": args.workers,
                                "one_worker_s": one, "shared_s": shared, "speedup": round(one / shared, 2)}
        print(f"validation, {args.validation_episodes} real episodes: 1 worker {one:.1f} s, "
              f"{args.workers} workers {shared:.1f} s ({one / shared:.2f}x)")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
