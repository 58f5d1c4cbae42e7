"""Heuristic packing policies, vectorised over a batch of states, and the evaluation loop.

Each policy maps state vectors (n, B+1) and their action masks (n, B) to actions (n,).
`evaluate_policy` is the one evaluation loop shared by the baseline scripts, model.py and
the main job, so every agent is scored the same way, on the 'eval' seed stream.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bin_packing_environment import PRESETS, BatchBinPacking, episode_seeds, make_config, preset_config


def best_fit(states, masks, rng=None):
    """The fullest bin the item fits in (highest valid level); a new bin only if none fits."""
    levels = np.arange(masks.shape[1])
    return np.where(masks.astype(bool), levels, -1).max(-1)


def sum_of_squares(states, masks, rng=None):
    """The valid action minimising sum_h N_h^2 after placement; ties go to the fuller bin."""
    n, B = masks.shape
    counts = np.zeros((n, 2 * B + 1), np.int64)
    counts[:, :B] = states[:, :B]
    counts[:, 0] = 0
    item = states[:, -1:]
    levels = np.arange(B)
    target = levels + item                                  # level each action leads to
    gain = np.take_along_axis(counts, target, -1)
    delta = np.where(target < B, 2 * gain + 1, 0)           # the bin at `target` (unless full)
    delta = delta - np.where(levels > 0, 2 * counts[:, :B] - 1, 0)   # the bin taken from level a
    score = np.where(masks.astype(bool), -delta * (B + 1) + levels, np.iinfo(np.int64).min)
    return score.argmax(-1)


def random_valid_from_uniforms(masks, u):
    """The floor(u * n_valid)-th valid action: uniform over the valid ones for u (n,) in [0, 1)."""
    masks = np.asarray(masks).astype(bool)
    n_valid = masks.sum(-1)
    k = np.minimum((u * n_valid).astype(np.int64), n_valid - 1)
    return (np.cumsum(masks, -1) > k[:, None]).argmax(-1)


def random_valid(states, masks, rng):
    """Uniform over the valid actions."""
    return random_valid_from_uniforms(masks, rng.random(len(masks)))


POLICIES = {"best_fit": best_fit, "sum_of_squares": sum_of_squares, "random": random_valid}


def progress_bar(episodes: int, label: str = "episodes"):
    """One bar for all of a policy's episodes, moved within a batch too (by a fraction of an episode
    a step), left on screen when done; evaluate.py shows one per policy."""
    from tqdm import tqdm
    return tqdm(total=episodes, desc=f"{label:<15}", unit="ep", dynamic_ncols=True,
                bar_format="{desc} {percentage:3.0f}%|{bar:30}| {n:.0f}/{total:.0f} episodes [{elapsed}<{remaining}]")


def advance(bar, per_step: float, end: int):
    """Move a progress_bar by one step's share of a batch, never past the batch's end (float sums)."""
    bar.update(max(0.0, min(per_step, end - bar.n)))


def evaluate_policy(policy, config="perfect_pack", episodes=1000, seed=0, batch=1000, rng=None,
                    progress=False, pictures=False, stream="eval"):
    """Total reward of each of `episodes` real episodes on the `stream` seed stream ('eval' by default).

    policy(states, masks, rng) -> actions; with pictures=True it is called as
    policy(states, masks, rng, pictures). progress: False, True, or the label of the progress bar.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    seeds = episode_seeds(seed, episodes, stream)
    totals = []
    bar = progress_bar(episodes, progress if isinstance(progress, str) else "episodes") if progress else None
    for start in range(0, episodes, batch):
        chunk = seeds[start:start + batch]
        env = BatchBinPacking(config, len(chunk), pictures=pictures)
        obs = env.reset(chunk)
        total = np.zeros(len(chunk))
        done = np.zeros(len(chunk), bool)
        per_step = len(chunk) / env.config.time_horizon
        while not done.all():
            extra = (obs["picture"],) if pictures else ()
            actions = policy(obs["state"], obs["action_mask"], rng, *extra)
            obs, reward, done, _ = env.step(actions)
            total += reward
            if bar is not None:
                advance(bar, per_step, start + len(chunk))
        totals.append(total)
        if bar is not None:
            bar.update(start + len(chunk) - bar.n)          # exact at the end of each batch
    if bar is not None:
        bar.close()
    return np.concatenate(totals)


def summarise(name, preset, totals, **extra):
    """The result record every evaluation prints as its last line."""
    stderr = float(totals.std(ddof=1) / np.sqrt(len(totals))) if len(totals) > 1 else float("nan")
    return {"policy": name, "preset": preset, "episodes": int(len(totals)),
            "mean_reward": round(float(totals.mean()), 3), "stderr": round(stderr, 3), **extra}


def main(policy_name, argv=None):
    from stages_common import episode_count, positive_int, seed_int
    parser = argparse.ArgumentParser(description=f"Evaluate the {policy_name} baseline on the real environment.")
    parser.add_argument("--episodes", type=episode_count, default=1000)
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS))
    parser.add_argument("--time_horizon", type=positive_int, default=None, help="override the preset's horizon")
    args = parser.parse_args(argv)
    config = preset_config(args.preset, args.time_horizon)
    try:
        make_config(config)
    except ValueError as e:
        parser.error(str(e))
    start = time.time()
    totals = evaluate_policy(POLICIES[policy_name], config, args.episodes, args.seed, progress=True)
    result = summarise(policy_name, args.preset, totals)
    print(f"{policy_name} on {args.preset}: {result['mean_reward']:.2f} +- {result['stderr']:.2f} "
          f"over {args.episodes} episodes ({time.time() - start:.1f} s)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    import sys
    if len(sys.argv) < 2 or sys.argv[1] not in POLICIES:
        sys.exit(f"usage: python baselines.py {{{','.join(POLICIES)}}} [--episodes N --seed S --preset P]")
    main(sys.argv[1], sys.argv[2:])
