"""Train the masked Rainbow agent on BinPackingEnv-v0 with Dopamine, then evaluate it greedily.

    python run_evaluation_dopamine.py --base_dir=test_results --gin_files=test_configs/rainbow.gin \
        [--gin_bindings='Runner.num_iterations=10'] [--seed 0] [--record --record_dir record] \
        [--eval_episodes 100]

Training is Dopamine's own Runner (train and eval phases, logs, checkpoints in
base_dir/checkpoints); running the command again with the same base_dir resumes from the
last completed iteration. The agent is Dopamine's JAX Rainbow with invalid actions masked
(components/agent.py). With --record (or the gin binding
`create_bin_packing_environment.record = True`) every episode played - training,
Dopamine's evaluation phases and the final evaluation - is written to --record_dir in the
environment's npz format.

After training, the greedy policy plays --eval_episodes fresh episodes (the 'eval' seed
stream), batched; the last line printed is one JSON object with the result.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

import quiet  # noqa: F401  (no gym banner; TensorFlow's oneDNN kernels on, as in every script)

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (imported by Dopamine) is only used for I/O


class UsageError(Exception):
    """A problem with the command line or the configuration: reported in one line, exit 2."""


def parse_args(argv=None):
    from stages_common import episode_count, positive_int, seed_int
    parser = argparse.ArgumentParser(description="Train masked Rainbow (Dopamine, JAX) on bin packing.")
    parser.add_argument("--base_dir", required=True, help="experiment directory (checkpoints, logs)")
    parser.add_argument("--gin_files", action="append", default=None,
                        help="gin config file (repeatable; default test_configs/rainbow.gin)")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="gin binding overriding the files, e.g. 'Runner.num_iterations=5' (repeatable)")
    parser.add_argument("--seed", type=seed_int, default=0, help="seeds the agent and the episodes")
    parser.add_argument("--record", action="store_true", help="write every episode played to --record_dir")
    parser.add_argument("--record_dir", default="record")
    parser.add_argument("--eval_episodes", type=episode_count, default=100, help="greedy episodes after training")
    parser.add_argument("--eval_batch", type=positive_int, default=100,
                        help="episodes played at once in the final evaluation")
    args = parser.parse_args(argv)
    if args.gin_files is None:
        args.gin_files = [os.path.join(REPO_ROOT, "test_configs", "rainbow.gin")]
    return args


def _one_line(error: BaseException) -> str:
    return " | ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _check_writable(path: str, what: str):
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test"):
            pass
    except OSError as e:
        raise UsageError(f"{what} {path!r} is not writable: {e.strerror or e}") from None


def load_gin(gin_files, gin_bindings):
    for path in gin_files:
        if not os.path.isfile(path):
            raise UsageError(f"gin file {path!r} does not exist")
    import gin
    import components.runner  # noqa: F401  (registers the configurables the files name)
    gin.clear_config()
    gin.add_config_file_search_path(REPO_ROOT)
    try:
        gin.parse_config_files_and_bindings(gin_files, gin_bindings, skip_unknown=False)
    except Exception as e:  # gin reports unknown names, bad values and syntax as assorted types
        raise UsageError(f"invalid gin configuration: {_one_line(e)}") from None


def main(argv=None):
    start_time = time.time()
    args = parse_args(argv)
    try:
        load_gin(args.gin_files, args.gin_bindings)
        _check_writable(args.base_dir, "base_dir")
        if args.record:
            _check_writable(args.record_dir, "record_dir")
            from stages_common import remove_stale_record_temps
            for path in remove_stale_record_temps(args.record_dir):
                print(f"removed {path}, left by a killed run")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from absl import logging
    import numpy as np

    from baselines import summarise
    from bin_packing_environment import episode_seeds
    from components.rollouts import greedy_evaluation
    from components.runner import BinPackingRunner, create_bin_packing_environment, create_masked_rainbow_agent

    logging.set_verbosity(logging.INFO)
    env_kwargs = dict(seed=args.seed)
    if args.record:
        env_kwargs.update(record=True, record_dir=args.record_dir)
    try:
        runner = BinPackingRunner(
            args.base_dir,
            create_agent_fn=functools.partial(create_masked_rainbow_agent, seed=args.seed),
            create_environment_fn=functools.partial(create_bin_packing_environment, **env_kwargs))
    except ValueError as e:  # bad preset / horizon / agent settings from the gin files
        message = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: invalid configuration: {message}", file=sys.stderr)
        return 2
    if runner.start_iteration > 0:
        print(f"resuming {args.base_dir} from iteration {runner.start_iteration}", flush=True)
    runner.run_experiment()
    agent, env = runner.agent, runner.environment
    train_steps = int(agent.training_steps)

    print(f"\nevaluating the greedy policy on {args.eval_episodes} '{env.preset}' episodes...", flush=True)
    seeds = episode_seeds(args.seed, args.eval_episodes, "eval")
    record_dir = env.record_dir if env.record else None
    totals = greedy_evaluation(agent, env.config, seeds, args.eval_batch, record_dir, prefix=f"eval_{args.seed}")
    result = summarise("rainbow", env.preset, totals, train_steps=train_steps,
                       wall_time_s=round(time.time() - start_time, 1))
    print(f"rainbow on {env.preset}: {result['mean_reward']:.2f} +- {result['stderr']:.2f} "
          f"over {result['episodes']} episodes ({train_steps} training steps)")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
