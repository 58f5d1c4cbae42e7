"""C, the controller of World Models, and the agent that runs V, M and C on the real problem.

The controller is linear: logits = W [z, h] + b over the 30 actions, invalid actions masked,
greedy at evaluation. One `Controller` serves the dream (dream_env.py) and the real
environment alike, vectorised over population members x episodes: parameters come as a
(P, num_params) array and inputs as (P, E, 288).

    python model.py norender log/binpacking.cma.16.64.best.json [--episodes 1000 --seed 0]
    python model.py render log/binpacking.cma.16.64.best.json
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from bin_packing_environment import PRESETS, BatchBinPacking, episode_seeds, preset_config

DEFAULT_VAE = "vae/vae.json"
DEFAULT_RNN = "rnn/rnn.json"
DEFAULT_INITIAL_Z = "initial_z/initial_z.json"


class Controller:
    """logits = W [z, h] + b; parameters flattened as W (actions x inputs) row-major, then b."""

    def __init__(self, z_size: int = 32, hidden_size: int = 256, num_actions: int = 30):
        self.input_size, self.num_actions = z_size + hidden_size, num_actions
        self.num_params = self.input_size * num_actions + num_actions

    def split(self, params):
        params = np.asarray(params, np.float32)
        if params.ndim == 1:
            params = params[None]
        if params.shape[-1] != self.num_params:
            raise ValueError(f"controller needs {self.num_params} parameters, got {params.shape[-1]}")
        n_w = self.input_size * self.num_actions
        return params[:, :n_w].reshape(-1, self.num_actions, self.input_size), params[:, n_w:]

    def act(self, params, x, mask, rng: np.random.Generator | None = None):
        """Actions (P, E) for inputs x (P, E, inputs) and masks (P, E, actions).

        Greedy over valid actions, or sampled from their softmax when rng is given.
        """
        W, b = self.split(params)
        logits = np.einsum("pei,pai->pea", x.astype(np.float32), W) + b[:, None, :]
        logits = np.where(np.asarray(mask) > 0, logits, -np.inf)
        if rng is not None:
            logits = logits + rng.gumbel(size=logits.shape)   # Gumbel-max: a softmax sample
        return logits.argmax(-1)


def load_params(path: str, controller: Controller) -> np.ndarray:
    """Parameters from a World Models log file: [params, ...] or {"params": ...}."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read controller file {path}: {e}") from None
    params = data["params"] if isinstance(data, dict) else data[0]
    params = np.asarray(params, np.float32)
    if params.shape != (controller.num_params,):
        raise ValueError(f"{path} holds {params.size} parameters; the controller needs {controller.num_params}")
    return params


def load_rnn(path: str = DEFAULT_RNN):
    from rnn.rnn import RNNNumpy
    if not os.path.exists(path):
        raise ValueError(f"MDN-RNN file {path} not found (train it with rnn_train.py, then copy_models.py)")
    return RNNNumpy.from_json(path)


def load_vae(path: str = DEFAULT_VAE):
    from vae.vae import ConvVAE
    if not os.path.exists(path):
        raise ValueError(f"VAE file {path} not found (train it with vae_train.py, then copy_models.py)")
    return ConvVAE.from_json(path)


def rollout_real(controller: Controller, params, vae, rnn, config, seeds, rng=None, progress=False,
                 on_step=None):
    """Total real reward (P, E) of P parameter vectors, each on the E episodes `seeds` (E,).

    Every member plays the same episodes; z is the VAE mean of the picture, h comes from M.
    on_step(t, z, h, c, mask, alive, state), if given, sees the agent's state before each action
    (dream_starts.py records from it the states the controller visits; imitate.py labels them).
    """
    params = np.atleast_2d(np.asarray(params, np.float32))
    P, E = len(params), len(seeds)
    env = BatchBinPacking(config, P * E, pictures=True)
    obs = env.reset(np.tile(np.asarray(seeds), P))
    h, c = rnn.initial_state(P * E)
    total = np.zeros(P * E)
    done = np.zeros(P * E, bool)
    steps = 0
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=env.config.time_horizon, desc="real steps", unit="step", leave=False)
    while not done.all():
        z, _ = vae.encode_mu_logvar(obs["picture"])
        if on_step is not None:
            on_step(steps, z, h, c, obs["action_mask"], ~done, obs["state"])
        x = np.concatenate([z, h], axis=1).reshape(P, E, -1)
        actions = controller.act(params, x, obs["action_mask"].reshape(P, E, -1), rng).reshape(-1)
        obs, reward, done, _ = env.step(actions)
        h, c, _ = rnn.step(z, actions, h, c)
        total += reward
        steps += 1
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return total.reshape(P, E), steps * P * E


def evaluate_real(controller, params, vae, rnn, config, episodes, seed, batch=500, progress=True):
    """Total reward of each of `episodes` real episodes on the 'eval' seed stream (never trained on)."""
    seeds = episode_seeds(seed, episodes, "eval")
    return np.concatenate([rollout_real(controller, params, vae, rnn, config, seeds[i:i + batch],
                                        progress=progress)[0][0] for i in range(0, episodes, batch)])


def render(controller, params, vae, rnn, config, seed, fps=20, max_frames=None):
    """Play one real episode with the agent and show it in the pygame window."""
    from play import watch
    env = BatchBinPacking(config, 1, pictures=True)
    obs = env.reset(episode_seeds(seed, 1, "eval"))
    h, c = rnn.initial_state(1)
    frames, captions, total, done = [], [], 0.0, False
    while not done:
        z, _ = vae.encode_mu_logvar(obs["picture"])
        action = controller.act(params, np.concatenate([z, h], 1)[None], obs["action_mask"][None])[0]
        frames.append(obs["picture"][0])
        item = int(obs["state"][0, -1])
        obs, reward, dones, _ = env.step(action)
        h, c, _ = rnn.step(z, action, h, c)
        total += reward[0]
        done = dones[0]
        captions.append([f"step {len(frames)}", f"item {item}",
                         f"action {int(action[0])}  reward {reward[0]:+.0f}", f"total {total:.0f}"])
    watch(frames, captions, fps=fps, max_frames=max_frames)
    return {"total_reward": total, "steps": len(frames)}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate (norender) or watch (render) a trained controller.")
    parser.add_argument("mode", choices=["norender", "render"])
    parser.add_argument("params_file", help="e.g. log/binpacking.cma.16.64.best.json")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed (episodes from the 'eval' stream)")
    parser.add_argument("--preset", default="perfect_pack", choices=sorted(PRESETS))
    parser.add_argument("--time_horizon", type=int, default=None, help="override the preset's horizon")
    parser.add_argument("--batch", type=int, default=500, help="episodes stepped together (V encodes them in one call)")
    parser.add_argument("--vae", default=DEFAULT_VAE)
    parser.add_argument("--rnn", default=DEFAULT_RNN)
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.batch < 1:
        parser.error("--episodes and --batch must be >= 1")
    if args.time_horizon is not None and args.time_horizon < 1:
        parser.error("--time_horizon must be >= 1")
    config = preset_config(args.preset, args.time_horizon)
    try:
        rnn = load_rnn(args.rnn)
        controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
        params = load_params(args.params_file, controller)
        vae = load_vae(args.vae)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    if args.mode == "render":
        return render(controller, params, vae, rnn, config, args.seed)
    from baselines import summarise
    start = time.time()
    totals = evaluate_real(controller, params, vae, rnn, config, args.episodes, args.seed, args.batch)
    result = summarise("world_model", args.preset, totals, wall_time_s=round(time.time() - start, 1))
    print(f"world model agent on {args.preset}: {result['mean_reward']:.2f} +- {result['stderr']:.2f} "
          f"over {args.episodes} episodes ({result['wall_time_s']} s)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
