"""Rollout speed on this machine: scripted extract.py policies and the Rainbow agent.

    python bench/bench_rollouts.py [--episodes 32] [--rainbow_episodes 16] [--train_steps 1500]

Measures, with 1000-step perfect_pack episodes written to a temporary record dir:
- extract.py's random and epsilon_best_fit policies (1 worker, batches of 16);
- the (untrained) full-size masked Rainbow agent acting greedily, no training: through
  Dopamine's per-step loop on BinPackingEnv-v0 (what run_evaluation_dopamine.py does
  during training) and batched over BatchBinPacking (its final evaluation);
- Rainbow training steps/s (acting + a gradient step every 4 steps) after the replay
  warm-up, which bounds how long run_evaluation_dopamine.py takes.
Prints a table and writes bench/results_rollouts.json. Default run: about a minute and a half.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def bench_extract(policy, episodes, tmp):
    import extract
    record_dir = os.path.join(tmp, policy)
    args = extract.parse_args(["--episodes", str(episodes), "--policy", policy, "--epsilon", "0.3",
                               "--workers", "1", "--batch", "16", "--record_dir", record_dir, "--quiet"])
    s = extract.extract(args)
    return {"what": f"extract.py {policy} (1 worker)", "episodes": episodes, "wall_s": s["wall_time_s"],
            "episodes_per_s": s["episodes_per_s"], "mb_per_1000_episodes": s["mb_per_1000_episodes"]}


def make_agent():
    import gin
    import components.runner as runner
    gin.clear_config()
    gin.add_config_file_search_path(ROOT)
    gin.parse_config_files_and_bindings([os.path.join(ROOT, "test_configs", "rainbow.gin")], [])
    return runner


def bench_rainbow_loop(runner, episodes, tmp):
    import numpy as np
    from components.rollouts import disk_bytes
    record_dir = os.path.join(tmp, "rainbow_loop")
    env = runner.create_bin_packing_environment(record=True, record_dir=record_dir)
    agent = runner.create_masked_rainbow_agent(None, env, seed=0)
    agent.eval_mode = True
    agent.begin_episode(env.reset())                        # compile outside the timing
    start = time.time()
    for _ in range(episodes):
        action = agent.begin_episode(env.reset())
        while True:
            obs, reward, done, _ = env.step(action)
            if done:
                break
            action = agent.step(reward, obs)
    wall = time.time() - start
    files = [os.path.join(record_dir, f) for f in os.listdir(record_dir)]
    return agent, {"what": "rainbow acting, Dopamine loop (1 env)", "episodes": episodes, "wall_s": round(wall, 2),
                   "episodes_per_s": round(episodes / wall, 3),
                   "mb_per_1000_episodes": round(disk_bytes(files) / len(files) * 1000 / 1e6, 1)}


def bench_rainbow_batched(agent, env_config, episodes, tmp):
    from bin_packing_environment import episode_seeds
    from components.rollouts import disk_bytes
    from components.rollouts import greedy_evaluation
    record_dir = os.path.join(tmp, "rainbow_batched")
    greedy_evaluation(agent, env_config, episode_seeds(1, 2, "eval"), 2)          # compile
    start = time.time()
    greedy_evaluation(agent, env_config, episode_seeds(0, episodes, "eval"), 16, record_dir)
    wall = time.time() - start
    files = [os.path.join(record_dir, f) for f in os.listdir(record_dir)]
    return {"what": "rainbow acting, batched greedy (16 envs)", "episodes": episodes, "wall_s": round(wall, 2),
            "episodes_per_s": round(episodes / wall, 3),
            "mb_per_1000_episodes": round(disk_bytes(files) / len(files) * 1000 / 1e6, 1)}


def bench_rainbow_training(runner, steps):
    import numpy as np
    env = runner.create_bin_packing_environment()
    agent = runner.create_masked_rainbow_agent(None, env, seed=0)
    warmup = agent.min_replay_history + 100                # fill the replay, compile the train step

    def run(n):
        done, action = True, None
        for _ in range(n):
            if done:
                action = agent.begin_episode(env.reset())
            obs, reward, done, _ = env.step(action)
            if not done:
                action = agent.step(float(np.clip(reward, -1, 1)), obs)
            else:
                agent.end_episode(float(np.clip(reward, -1, 1)), True)
    run(warmup)
    start = time.time()
    run(steps)
    wall = time.time() - start
    return {"what": "rainbow training (act + train every 4 steps)", "steps": steps, "wall_s": round(wall, 2),
            "steps_per_s": round(steps / wall, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=32, help="episodes per extract.py policy")
    parser.add_argument("--rainbow_loop_episodes", type=int, default=2)
    parser.add_argument("--rainbow_episodes", type=int, default=16, help="batched Rainbow episodes")
    parser.add_argument("--train_steps", type=int, default=1500, help="timed Rainbow training steps")
    parser.add_argument("--out", default=os.path.join(HERE, "results_rollouts.json"))
    args = parser.parse_args(argv)

    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in ("random", "epsilon_best_fit"):
            rows.append(bench_extract(policy, args.episodes, tmp))
            print(rows[-1], flush=True)
        runner = make_agent()
        agent, row = bench_rainbow_loop(runner, args.rainbow_loop_episodes, tmp)
        rows.append(row)
        print(row, flush=True)
        rows.append(bench_rainbow_batched(agent, runner.env_config("perfect_pack"), args.rainbow_episodes, tmp))
        print(rows[-1], flush=True)
    training = bench_rainbow_training(runner, args.train_steps)
    print(training, flush=True)

    print()
    print(f"{'rollouts (1000-step perfect_pack episodes, recorded)':<52} {'episodes/s':>10} {'MB/1000 ep':>11}")
    for r in rows:
        print(f"{r['what']:<52} {r['episodes_per_s']:>10.2f} {r['mb_per_1000_episodes']:>11.1f}")
    print(f"{training['what']:<52} {training['steps_per_s']:>10.1f} steps/s")
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    if load_before[0] > 0.5:
        print(f"note: load average {load_before[0]:.2f} before the run - other jobs share the CPU, "
              f"timings are pessimistic")
    result = {"machine": machine,
              "rollouts": rows, "rainbow_training": training}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
