"""Masked Rainbow's training loop, Dopamine's replay path vs ours, side by side in one run.

    python bench/bench_rainbow.py [--configs rainbow rainbow_tiny] [--steps 1000] [--rounds 20]
                                  [--no_checkpoint]

For each gin config (test_configs/<name>.gin) two agents with the same seed are built, one
with Dopamine's prioritized replay buffer (MaskedJaxRainbowAgent.fast_replay=False, the
old path) and one with components/replay.py's (fast_replay=True, the new path). Each plays
BinPackingEnv-v0 through Dopamine's per-step loop (begin_episode / step / end_episode,
rewards clipped): first the replay warm-up (min_replay_history + 100 steps, untimed,
compiles the jitted functions), then --steps timed training steps, in --rounds rounds of
one chunk per path run back to back (old first in even rounds, new first in odd ones), so
that both see the same machine load; besides the overall steps/s, the median over rounds of
the paired ratio is reported, which drifting load disturbs least.

Reported per path, in ms per training step: acting (the jitted masked select_action, one
picture), the environment step (picture drawn), replay add, replay sampling, the gradient
step (train call + priority update, which waits for it) and the rest; steps/s; and the
ratio new/old. `same_agent` says whether both agents ended with bit-identical parameters
(Dopamine's buffer draws from Python's global `random`, seeded here like ours).

With the checkpoint part (default on), both buffers are filled to capacity with real
pictures and one checkpoint is saved and loaded per path - what every iteration of a run
writes (Dopamine gzips the whole buffer at level 9, ours at level 1). For the full config
the bench also estimates one iteration of the full run (9000 training steps + 1000
evaluation steps at acting speed + a checkpoint), old vs new.

Writes bench/results_rainbow.json. Default run: ~5 minutes on 2 idle cores, much longer
under load (the load average is recorded).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PARTS = ("act", "env_step", "replay_add", "replay_sample", "gradient_step")


def build(config, fast_replay, seed):
    import gin
    import components.runner as runner
    gin.clear_config()
    gin.add_config_file_search_path(ROOT)
    gin.parse_config_files_and_bindings([os.path.join(ROOT, "test_configs", f"{config}.gin")],
                                        [f"MaskedJaxRainbowAgent.fast_replay={fast_replay}"])
    env = runner.create_bin_packing_environment(seed=seed)
    agent = runner.create_masked_rainbow_agent(None, env, seed=seed)
    settings = {k: gin.query_parameter(f"Runner.{k}") for k in ("training_steps", "evaluation_steps")}
    gin.clear_config()
    return Loop(agent, env), settings


class Loop:
    """Dopamine's Runner episode loop (clipped rewards), resumable at any step, with timers."""

    def __init__(self, agent, env):
        import numpy as np
        self.np = np
        self.agent, self.env = agent, env
        self.time = dict.fromkeys(PARTS + ("total",), 0.0)
        self.steps = 0
        self.timing = False
        self.action, self.episode_steps = None, 0
        self.env.begin_iteration(0)
        for name, key in (("_select_action", "act"), ("_store_transition", "replay_add"),
                          ("_sample_from_replay_buffer", "replay_sample"), ("_train_step", "train_step")):
            setattr(agent, name, self._timed(getattr(agent, name), key))
        self.env_step = self._timed(env.step, "env_step")

    def _timed(self, fn, key):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not self.timing:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.time[key] = self.time.get(key, 0.0) + time.perf_counter() - start
        return wrapper

    def run(self, n, timing):
        self.timing = timing
        agent, np = self.agent, self.np
        start = time.perf_counter()
        for _ in range(n):
            if self.action is None:
                self.action = agent.begin_episode(self.env.reset())
                self.episode_steps = 0
            obs, reward, terminal, _ = self.env_step(self.action)
            self.episode_steps += 1
            reward = np.clip(reward, -1, 1)
            if self.env.game_over or self.episode_steps == self.env.config.time_horizon:
                agent.end_episode(reward, terminal)
                self.action = None
            else:
                self.action = agent.step(reward, obs)
        if timing:
            self.time["total"] += time.perf_counter() - start
            self.steps += n
        self.timing = False

    def report(self):
        t = dict(self.time)
        t["gradient_step"] = t.pop("train_step", 0.0) - t["replay_sample"]
        ms = {k: round(1e3 * t[k] / self.steps, 3) for k in PARTS}
        ms["other"] = round(1e3 * (t["total"] - sum(t[k] for k in PARTS)) / self.steps, 3)
        return {"steps": self.steps, "steps_per_s": round(self.steps / t["total"], 1), "ms_per_step": ms}


def real_pictures(n):
    """n pictures of random valid play on perfect_pack, 50 episodes at a time."""
    import numpy as np
    from baselines import random_valid_from_uniforms
    from bin_packing_environment import BatchBinPacking, episode_seeds
    env = BatchBinPacking("perfect_pack", 50, pictures=True)
    rng = np.random.default_rng(0)
    out = []
    while len(out) * 50 < n:
        obs = env.reset(episode_seeds(len(out), 50))
        for _ in range(env.config.time_horizon):
            out.append(obs["picture"])
            obs, _, done, _ = env.step(random_valid_from_uniforms(obs["action_mask"], rng.random(50)))
            if done.all():
                break
    return np.concatenate(out)[:n]


def bench_checkpoint(loops):
    """Save and load one full-buffer checkpoint per path (the same real pictures in both)."""
    import numpy as np
    replays = {path: loop.agent._replay for path, loop in loops.items()}
    capacity = replays["old"]._replay_capacity
    pictures = real_pictures(capacity)
    out = {"pictures": capacity}
    for path, replay in replays.items():
        replay._store["observation"][:] = pictures.reshape(replay._store["observation"].shape)
        replay.add_count = max(replay.add_count, capacity)
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "runs") if os.path.isdir(os.path.join(ROOT, "runs"))
                                     else None) as tmp:
        for path, loop in loops.items():
            directory = os.path.join(tmp, path)
            os.makedirs(directory)
            start = time.perf_counter()
            loop.agent.bundle_and_checkpoint(directory, 0)
            save_s = time.perf_counter() - start
            size = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
            before = replays[path]._store["observation"].copy()
            start = time.perf_counter()
            replays[path].load(directory, 0)
            load_s = time.perf_counter() - start
            assert np.array_equal(before, replays[path]._store["observation"]), "checkpoint did not round-trip"
            out[path] = {"save_s": round(save_s, 2), "load_s": round(load_s, 2), "mb": round(size / 1e6, 1)}
    out["save_speedup"] = round(out["old"]["save_s"] / out["new"]["save_s"], 2)
    out["load_speedup"] = round(out["old"]["load_s"] / out["new"]["load_s"], 2)
    return out


def bench_config(config, steps, rounds, checkpoint, seed=0):
    import jax
    import numpy as np
    print(f"--- {config}: building both agents, warm-up", flush=True)
    old, settings = build(config, False, seed)
    new, _ = build(config, True, seed)
    random.seed(seed)  # Dopamine's buffer samples with the global `random` (imports draw from it); ours with its own
    loops = {"old": old, "new": new}
    warmup = old.agent.min_replay_history + 100
    for loop in loops.values():
        loop.run(warmup, timing=False)
    chunk = max(1, steps // rounds)
    paired = []  # per round: new steps/s / old steps/s, the two chunks run back to back
    for r in range(rounds):
        speed = {}
        for path in (("old", "new") if r % 2 == 0 else ("new", "old")):  # alternate who goes first
            before = loops[path].time["total"]
            loops[path].run(chunk, timing=True)
            speed[path] = chunk / (loops[path].time["total"] - before)
        paired.append(speed["new"] / speed["old"])
        if (r + 1) % max(1, rounds // 5) == 0 or r + 1 == rounds:
            print(f"    round {r + 1}/{rounds}: " + ", ".join(
                f"{p} {loops[p].steps / loops[p].time['total']:.1f} steps/s" for p in loops), flush=True)
    leaves = {p: jax.tree_util.tree_leaves(loops[p].agent.online_params) for p in loops}
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(leaves["old"], leaves["new"]))
    result = {"config": f"test_configs/{config}.gin", "warmup_steps": warmup, "same_agent": same,
              "old": old.report(), "new": new.report()}
    result["speedup_steps_per_s"] = round(result["new"]["steps_per_s"] / result["old"]["steps_per_s"], 3)
    result["speedup_median_of_rounds"] = round(float(np.median(paired)), 3)
    result["speedup_rounds_quartiles"] = [round(float(q), 3) for q in np.percentile(paired, [25, 75])]
    result["speedup_replay_sample"] = round(result["old"]["ms_per_step"]["replay_sample"]
                                            / max(result["new"]["ms_per_step"]["replay_sample"], 1e-9), 2)
    if checkpoint:
        print("    checkpoint of a full buffer, both paths...", flush=True)
        result["checkpoint"] = bench_checkpoint(loops)
        ck = result["checkpoint"]
        iteration = {}
        for path in ("old", "new"):
            r = result[path]
            act_s = r["ms_per_step"]["act"] + r["ms_per_step"]["env_step"]
            iteration[path] = round(settings["training_steps"] / r["steps_per_s"]
                                    + settings["evaluation_steps"] * act_s / 1e3 + ck[path]["save_s"], 1)
        result["iteration_estimate_s"] = dict(
            iteration, what=f"{settings['training_steps']} training steps + {settings['evaluation_steps']} "
                            "evaluation steps (acting + environment) + one checkpoint",
            speedup=round(iteration["old"] / iteration["new"], 3))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["rainbow", "rainbow_tiny"],
                        help="names of test_configs/<name>.gin")
    parser.add_argument("--steps", type=int, default=1000, help="timed training steps per path and config")
    parser.add_argument("--rounds", type=int, default=20,
                        help="rounds of one chunk per path (order alternating) the timed steps are split into")
    parser.add_argument("--no_checkpoint", action="store_true", help="skip the full-buffer checkpoint timing")
    parser.add_argument("--out", default=os.path.join(HERE, "results_rainbow.json"))
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = [bench_config(c, args.steps, args.rounds, not args.no_checkpoint) for c in args.configs]
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    out = {"machine": machine, "results": results}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\n| config | path | steps/s | " + " | ".join(f"{p} ms" for p in PARTS + ("other",)) + " |")
    print("| --- " * (4 + len(PARTS)) + "|")
    for r in results:
        for path in ("old", "new"):
            ms = r[path]["ms_per_step"]
            print(f"| {os.path.basename(r['config'])} | {path} | {r[path]['steps_per_s']} | "
                  + " | ".join(str(ms[p]) for p in PARTS + ("other",)) + " |")
        line = (f"{r['config']}: new/old steps/s {r['speedup_steps_per_s']}x (median of rounds "
                f"{r['speedup_median_of_rounds']}x, quartiles {r['speedup_rounds_quartiles']}), "
                f"same agent: {r['same_agent']}")
        if "checkpoint" in r:
            ck = r["checkpoint"]
            line += (f"; checkpoint save {ck['old']['save_s']} s -> {ck['new']['save_s']} s ({ck['save_speedup']}x), "
                     f"load {ck['old']['load_s']} s -> {ck['new']['load_s']} s")
        if "iteration_estimate_s" in r:
            it = r["iteration_estimate_s"]
            line += f"; one iteration {it['old']} s -> {it['new']} s ({it['speedup']}x)"
        print(line)
    if load_before[0] > 0.5:
        print(f"note: load average {load_before[0]:.2f} before the run - other jobs share the CPU")
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
