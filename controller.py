"""C, the controller of World Models, and what every script needs to run it: V's and M's files
and a real rollout of V, M and C together.

The controller is linear: logits = W [z, h] + b over the 30 actions, invalid actions masked,
greedy at evaluation. One `Controller` serves the dream (dream_env.py) and the real
environment alike, vectorised over population members x episodes: parameters come as a
(P, num_params) array and inputs as (P, E, 288). model.py (evaluate or watch), train.py
(CMA-ES), dream_env.py and the analysis scripts all import it from here.
"""
from __future__ import annotations

import json
import os

import numpy as np

from bin_packing_environment import BatchBinPacking, episode_seeds, make_config

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
    """Parameters from a World Models log file: [params, ...] or {"params": ...}.

    ValueError naming the file for anything else: another layout, another count or shape,
    entries that are not numbers, nan or inf."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:                 # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"cannot read controller file {path}: {e}") from None
    if isinstance(data, dict) and "params" in data:
        params = data["params"]
    elif isinstance(data, list) and data:
        params = data[0]
    else:
        raise ValueError(f"controller file {path} is not a controller: expected [parameters, ...] "
                         f'(train.py\'s .best.json) or {{"params": [...]}}, found {type(data).__name__} '
                         f"{json.dumps(data)[:40]}")
    try:
        params = np.asarray(params, np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"controller file {path}: its parameters are not a list of numbers") from None
    if params.shape != (controller.num_params,):
        what = f"{params.size} parameters" if params.ndim == 1 else f"an array of shape {params.shape}"
        raise ValueError(f"controller file {path} holds {what}; the controller needs a list of "
                         f"{controller.num_params} numbers")
    bad = int((~np.isfinite(params)).sum())
    if bad:
        raise ValueError(f"controller file {path} holds {bad} non-finite parameter(s) (nan or inf)")
    return params


def check_bin_size(rnn, rnn_path: str, config: dict, preset: str):
    """ValueError unless the agent (whose M has one action per bin level) fits the preset's bin size."""
    if rnn.action_size != config["bin_size"]:
        raise ValueError(f"the agent (M {rnn_path}) was trained for bin size {rnn.action_size}; "
                         f"--preset {preset} has bin size {config['bin_size']}")


def _model_file(path: str, what: str, name: str, stage: str) -> str:
    """path, or ValueError naming what is wrong with it (missing, or a directory)."""
    if not os.path.exists(path):
        raise ValueError(f"{what} file {path} not found (train it with {stage}, then copy_models.py)")
    if os.path.isdir(path):
        raise ValueError(f"{what} file {path} is a directory; give the {name} file")
    return path


def load_rnn(path: str = DEFAULT_RNN):
    from rnn.rnn import RNNNumpy
    return RNNNumpy.from_json(_model_file(path, "MDN-RNN", "rnn.json", "rnn_train.py"))


def load_vae(path: str = DEFAULT_VAE):
    from vae.vae import ConvVAE
    return ConvVAE.from_json(_model_file(path, "VAE", "vae.json", "vae_train.py"))


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
    """Total reward of each of `episodes` real episodes on the 'eval' seed stream (never trained on).

    progress: True, or the bar's label: one bar over all the episodes (baselines.progress_bar), not one a batch.
    """
    seeds = episode_seeds(seed, episodes, "eval")
    bar = None
    if progress:
        from baselines import advance, progress_bar
        bar = progress_bar(episodes, progress if isinstance(progress, str) else "world_model")
    totals = []
    for i in range(0, episodes, batch):
        chunk = seeds[i:i + batch]
        on_step = None
        if bar is not None:
            per_step = len(chunk) / make_config(config).time_horizon
            on_step = lambda *_, end=i + len(chunk): advance(bar, per_step, end)   # noqa: E731
        totals.append(rollout_real(controller, params, vae, rnn, config, chunk, on_step=on_step)[0][0])
        if bar is not None:
            bar.update(i + len(chunk) - bar.n)
    if bar is not None:
        bar.close()
    return np.concatenate(totals)
