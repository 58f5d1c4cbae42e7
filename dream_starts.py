"""Stage 6a (optional): real states to begin short dreams from, for train.py --dream_starts.

    python dream_starts.py --controller log/binpacking.cma.16.64.best.json [--episodes 300 --per_episode 100]
    python dream_starts.py --series series/series.npz [--per_episode 100]

Why: a dream begun at an empty packing and run for hundreds of steps drifts away from anything
real, and CMA-ES learns to exploit the drift (see dream_fidelity.py). M's one-step predictions
along real episodes are sound, though, so dreams of a few dozen steps begun at states that
really occur stay close to reality. A start state is what the agent holds at a real step: V's
z (mu) of the picture, M's h and c after the real steps before it, and the real valid actions.

--controller: the controller plays --episodes real episodes (greedy, or a random valid action
  with probability --epsilon; the episodes are split evenly over the --epsilon values given),
  and --per_episode of each episode's steps, drawn at random, are kept. These are real steps
  spent on training; the file records how many, and train.py reports them.
--series: M runs along the recorded episodes V and M were trained on; no new real steps.

Writes --out (npz, atomically): z float32 (n, z), h and c float16 (n, hidden), action_mask uint8
(n, actions), and rnn_sha256 (train.py refuses the file with another M), vae_sha256, source,
real_steps.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from baselines import random_valid_from_uniforms
from bin_packing_environment import PRESETS, episode_seeds, preset_config
from controller import DEFAULT_RNN, DEFAULT_VAE, Controller, load_params, load_rnn, load_vae, rollout_real
from stages_common import (atomic_write_npz, check_output_file, episode_count, fail, positive_int, remove_stale_temps,
                           require_file, seed_int, sha256_file, unit_float)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Record real states (z, M's h and c, valid actions) to begin dreams from.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--controller", help="a controller file (e.g. log/binpacking.cma.16.64.best.json) to play")
    source.add_argument("--series", help="a series.npz (series.py) whose recorded episodes M runs along")
    p.add_argument("--episodes", type=episode_count, default=300, help="real episodes played (--controller)")
    p.add_argument("--epsilon", type=unit_float, nargs="+", default=[0.0, 0.05, 0.2],
                   help="random valid action with this probability; episodes split evenly over the values")
    p.add_argument("--per_episode", type=positive_int, default=100, help="steps kept per episode, drawn at random")
    p.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS))
    p.add_argument("--time_horizon", type=positive_int, default=None, help="override the preset's episode length")
    p.add_argument("--batch", type=positive_int, default=500, help="real episodes stepped together")
    p.add_argument("--vae", default=DEFAULT_VAE)
    p.add_argument("--rnn", default=DEFAULT_RNN)
    p.add_argument("--out", default="starts/dream_starts.npz")
    p.add_argument("--seed", type=seed_int, default=0)
    return p


class EpsilonGreedy:
    """The controller, with a random valid action instead of its own at rate eps[e] in episode e."""

    def __init__(self, controller: Controller, eps: np.ndarray, rng: np.random.Generator):
        self.controller, self.eps, self.rng = controller, eps, rng

    def act(self, params, x, mask, rng=None):
        actions = self.controller.act(params, x, mask)
        explore = self.rng.random(actions.shape) < self.eps
        flat = np.asarray(mask).reshape(-1, np.shape(mask)[-1])
        random_valid = random_valid_from_uniforms(flat, self.rng.random(len(flat))).reshape(actions.shape)
        return np.where(explore, random_valid, actions)


def chosen_steps(rng, n_episodes: int, lengths, per_episode: int) -> np.ndarray:
    """(n, max length) bool: per_episode steps of each episode (all of them if it is shorter)."""
    lengths = np.broadcast_to(np.asarray(lengths), (n_episodes,))
    keys = rng.random((n_episodes, int(lengths.max())))
    keys[np.arange(keys.shape[1])[None, :] >= lengths[:, None]] = np.inf      # past the end: never chosen
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    return (rank < per_episode) & np.isfinite(keys)


class Recorder:
    """Keeps (z, h, c, mask) of the chosen steps as rollout_real or the series walk passes them."""

    def __init__(self, chosen: np.ndarray):
        self.chosen, self.rows = chosen, {k: [] for k in ("z", "h", "c", "action_mask")}

    def __call__(self, t, z, h, c, mask, alive, state=None):
        keep = alive & self.chosen[:, t] if t < self.chosen.shape[1] else np.zeros(len(z), bool)
        for k, v in zip(("z", "h", "c", "action_mask"), (z, h, c, mask)):
            self.rows[k].append(np.asarray(v)[keep])

    def arrays(self) -> dict:
        return {"z": np.concatenate(self.rows["z"]).astype(np.float32),
                "h": np.concatenate(self.rows["h"]).astype(np.float16),
                "c": np.concatenate(self.rows["c"]).astype(np.float16),
                "action_mask": np.concatenate(self.rows["action_mask"]).astype(np.uint8)}


def from_controller(args, rnn, rng) -> tuple[dict, int, str]:
    vae = load_vae(args.vae)
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = load_params(args.controller, controller)
    config = preset_config(args.preset, args.time_horizon)
    seeds = episode_seeds(args.seed, args.episodes, "starts")
    eps = np.asarray(args.epsilon, float)[np.arange(args.episodes) * len(args.epsilon) // args.episodes]
    rows, real_steps = {}, 0
    from tqdm import tqdm
    for i in tqdm(range(0, args.episodes, args.batch), desc="real episodes", unit="batch"):
        n = len(seeds[i:i + args.batch])
        recorder = Recorder(chosen_steps(rng, n, config["time_horizon"], args.per_episode))
        totals, steps = rollout_real(EpsilonGreedy(controller, eps[i:i + n], rng), params, vae, rnn, config,
                                     seeds[i:i + n], progress=True, on_step=recorder)
        real_steps += steps
        for k, v in recorder.arrays().items():
            rows.setdefault(k, []).append(v)
        print(f"episodes {i}..{i + n - 1}: mean reward {totals.mean():.2f}", flush=True)
    return {k: np.concatenate(v) for k, v in rows.items()}, real_steps, sha256_file(args.vae)


def from_series(args, rnn, rng) -> tuple[dict, int, str]:
    from series import Series                 # the one reader (and checker) of series.npz
    series = Series(args.series)
    if series.z_size != rnn.z_size:
        raise ValueError(f"{args.series} holds z of size {series.z_size}, M expects {rnn.z_size}")
    lengths = series.lengths
    recorder = Recorder(chosen_steps(rng, len(lengths), lengths, args.per_episode))
    h, c = rnn.initial_state(len(lengths))
    from tqdm import tqdm
    for t in tqdm(range(int(lengths.max())), desc="M along the recorded episodes", unit="step"):
        alive = t < lengths
        row = series.offsets + np.minimum(t, lengths - 1)
        z = series.mu[row].astype(np.float32)
        recorder(t, z, h, c, series.action_mask[row], alive)
        h_next, c_next, _ = rnn.step(z, series.action[row].astype(np.int64), h, c)
        h, c = np.where(alive[:, None], h_next, h), np.where(alive[:, None], c_next, c)
    return recorder.arrays(), 0, series.vae_sha256


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_output_file(parser, args.out, "--out")
    remove_stale_temps([args.out])
    require_file(parser, args.rnn, "MDN-RNN file")
    require_file(parser, args.controller or args.series, "controller file" if args.controller else "series file")
    if args.controller:
        require_file(parser, args.vae, "VAE file")
    start = time.time()
    rng = np.random.default_rng(args.seed)
    try:
        rnn = load_rnn(args.rnn)
        arrays, real_steps, vae_sha = (from_controller if args.controller else from_series)(args, rnn, rng)
    except ValueError as e:
        fail(parser, str(e))
    source = f"controller {args.controller}" if args.controller else f"series {args.series}"
    atomic_write_npz(args.out, **arrays, rnn_sha256=np.array(sha256_file(args.rnn)), vae_sha256=np.array(vae_sha),
                     source=np.array(source), real_steps=np.array(real_steps, np.int64))
    summary = {"out": args.out, "starts": len(arrays["z"]), "source": source, "real_steps": real_steps,
               "wall_s": round(time.time() - start, 1)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
