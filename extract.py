"""Fast scripted rollouts for the world model: N episodes of pictures written to record/.

    python extract.py --episodes 1000 --policy epsilon_best_fit --epsilon 0.3 --workers 2 --seed 0 \
        [--record_dir record --preset perfect_pack --batch 16 --time_horizon H]

Episodes are played `--batch` at a time on BatchBinPacking(pictures=True) with vectorised
policies, in `--workers` processes. Episode i (0-based) has the seed
episode_seeds(seed, N, 'rollout')[i] and is written as <record_dir>/<seed>_<i:06d>.npz in
the environment's format (write_episode_npz); its policy draws come from a Generator
seeded by that episode seed, so the same --seed gives the same files whatever --batch
and --workers are. Policies:
  random            uniform among the valid actions;
  epsilon_best_fit  with probability --epsilon a uniform valid action, else best fit
                    (the highest level the item fits in; a new bin only if none fits);
  epsilon_sum_of_squares  the same around Sum of Squares, whose packings (more bins left
                    open at more levels) Best Fit's rollouts never show M.
  controller        the same around a trained agent (--controller C, with the --vae and --rnn it
                    was trained with): the states C itself visits, for the next round of M's
                    training (World Models' iterative procedure).
A 1000-step episode is 12 MB of raw pictures, buffered until the batch ends: each
worker holds about batch x 12 MB.
"""
from __future__ import annotations

import argparse
import functools
import multiprocessing
import sys
import time

import numpy as np

from bin_packing_environment import PRESETS, episode_seeds, make_config, preset_config
from components.rollouts import controller_policy, disk_bytes, run_episodes, scripted_policy
from controller import DEFAULT_RNN, DEFAULT_VAE
from stages_common import MAX_EPISODES, check_output_dir, finite_float, remove_stale_record_temps, seed_int

POLICIES = ("random", "epsilon_best_fit", "epsilon_sum_of_squares", "controller")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Write scripted bin packing episodes (pictures) to record_dir.")
    parser.add_argument("--episodes", type=int, required=True, help="number of episodes to write")
    parser.add_argument("--policy", default="epsilon_best_fit", help=f"one of {', '.join(POLICIES)}")
    parser.add_argument("--epsilon", type=finite_float, default=0.3, help="exploration rate of the epsilon_ policies")
    parser.add_argument("--controller", default=None, help="--policy controller: C's file (train.py's .best.json)")
    parser.add_argument("--vae", default=DEFAULT_VAE, help="--policy controller: the V that C was trained with")
    parser.add_argument("--rnn", default=DEFAULT_RNN, help="--policy controller: the M that C was trained with")
    parser.add_argument("--workers", type=int, default=1, help="processes")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--record_dir", default="record")
    parser.add_argument("--preset", default="perfect_pack", help=f"one of {', '.join(sorted(PRESETS))}")
    parser.add_argument("--time_horizon", type=int, default=None, help="override the preset's horizon")
    parser.add_argument("--batch", type=int, default=16, help="episodes stepped together per worker")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not 1 <= args.episodes <= MAX_EPISODES:
        parser.error(f"--episodes must be >= 1 and <= {MAX_EPISODES}, got {args.episodes}")
    if args.policy not in POLICIES:
        parser.error(f"unknown --policy {args.policy!r}; choose one of {', '.join(POLICIES)}")
    if (args.policy == "controller") != (args.controller is not None):
        parser.error("--controller is needed with --policy controller, and only there")
    if args.controller is not None:
        try:
            load_models(args.vae, args.rnn, args.controller)        # refused here, before any episode
        except ValueError as e:
            parser.error(str(e))
    if not 0.0 <= args.epsilon <= 1.0:
        parser.error(f"--epsilon must be in [0, 1], got {args.epsilon}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    if args.preset not in PRESETS:
        parser.error(f"unknown --preset {args.preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    config = preset_config(args.preset, args.time_horizon)
    try:
        args.config = make_config(config)
    except ValueError as e:
        parser.error(str(e))
    check_output_dir(parser, args.record_dir, "--record_dir")
    for path in remove_stale_record_temps(args.record_dir):
        print(f"removed {path}, left by a killed run")
    return args


@functools.lru_cache(maxsize=1)
def load_models(vae_path, rnn_path, controller_path):
    """(V, M, C, C's parameters), loaded once per process."""
    from controller import Controller, load_params, load_rnn, load_vae
    rnn = load_rnn(rnn_path)
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = load_params(controller_path, controller)           # before V: a bad file fails fast
    return load_vae(vae_path), rnn, controller, params


def run_chunk(job):
    """Play and write one batch of episodes; returns (episodes, bytes written, total rewards)."""
    config, policy, epsilon, seed, indices, seeds, record_dir, model_paths = job
    if policy == "controller":
        act = controller_policy(seeds, config.time_horizon, epsilon, load_models(*model_paths))
    else:
        act = scripted_policy(policy, seeds, config.time_horizon, epsilon)
    names = [f"{seed}_{i:06d}" for i in indices]
    totals, paths = run_episodes(config, seeds, act, record_dir, names)
    return len(indices), disk_bytes(paths), totals


def extract(args):
    """Write the episodes; returns a summary dict."""
    from tqdm import tqdm

    seeds = episode_seeds(args.seed, args.episodes, "rollout")
    jobs = [(args.config, args.policy, args.epsilon, args.seed, list(range(s, min(s + args.batch, args.episodes))),
             seeds[s:s + args.batch], args.record_dir, (args.vae, args.rnn, args.controller))
            for s in range(0, args.episodes, args.batch)]
    start = time.time()
    written, totals = 0, []
    bar = tqdm(total=args.episodes, unit="ep", desc=f"{args.policy}", disable=args.quiet)
    if args.workers == 1 or len(jobs) == 1:
        results = map(run_chunk, jobs)
        pool = None
    else:
        # spawn: safe even when the parent already runs threads (JAX, TensorFlow, BLAS).
        pool = multiprocessing.get_context("spawn").Pool(min(args.workers, len(jobs)))
        results = pool.imap_unordered(run_chunk, jobs)
    try:
        for n, nbytes, chunk_totals in results:
            written += nbytes
            totals.append(chunk_totals)
            bar.update(n)
    except BaseException:
        if pool is not None:
            pool.terminate()  # files already written are complete (written atomically)
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    elapsed = time.time() - start
    totals = np.concatenate(totals)
    return {"episodes": args.episodes, "policy": args.policy, "epsilon": args.epsilon,
            "preset": args.preset, "steps_per_episode": args.config.time_horizon,
            "mean_reward": round(float(totals.mean()), 3), "wall_time_s": round(elapsed, 2),
            "episodes_per_s": round(args.episodes / elapsed, 2),
            "mb_per_1000_episodes": round(written / args.episodes * 1000 / 1e6, 1)}


def main(argv=None):
    args = parse_args(argv)
    summary = extract(args)
    print(f"wrote {summary['episodes']} {args.policy} episodes of {summary['steps_per_episode']} steps to "
          f"{args.record_dir}/ in {summary['wall_time_s']:.1f} s: {summary['episodes_per_s']:.2f} episodes/s, "
          f"{summary['mb_per_1000_episodes']:.1f} MB per 1000 episodes on disk "
          f"(mean reward {summary['mean_reward']:.1f})")
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
