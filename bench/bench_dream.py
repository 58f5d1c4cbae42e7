"""Dream throughput and the wall time of one CMA-ES generation in the dream.

Side by side in one run: a generation (popsize x num_episode dreams) rolled out all at once
in numpy, against the same generation rolled out one episode at a time as the original did.
Uses rnn/rnn.json and initial_z/initial_z.json when present, else a random M of the same size
(the cost does not depend on the weights). Writes bench/results_dream.json.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dream_env import BatchDream, load_initial_z, rollout_dream  # noqa: E402
from controller import DEFAULT_INITIAL_Z, DEFAULT_RNN, Controller  # noqa: E402
from rnn.rnn import RNNNumpy  # noqa: E402


def load_models():
    if os.path.exists(DEFAULT_RNN) and os.path.exists(DEFAULT_INITIAL_Z):
        return RNNNumpy.from_json(DEFAULT_RNN), load_initial_z(DEFAULT_INITIAL_Z), "shipped"
    from rnn.rnn import MDNRNN
    rnn = RNNNumpy.from_model(MDNRNN(seed=0))
    rng = np.random.default_rng(0)
    return rnn, {"mu": rng.normal(size=(8, 32)).astype(np.float32),
                 "logvar": np.full((8, 32), -2, np.float32)}, "random"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--popsize", type=int, default=64)
    parser.add_argument("--num_episode", type=int, default=16)
    parser.add_argument("--horizon", type=int, default=100, help="dream steps per episode in this benchmark")
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
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
