"""Batched rollouts of vectorised policies on BatchBinPacking, with optional recording.

A policy here is `act(obs, t) -> actions (n,)`, with obs the batch observation of
`BatchBinPacking(pictures=True)` ({"state", "action_mask", "picture"}) at step t; it acts
on all n episodes at once. `run_episodes` steps the batch to the end and, given a
record_dir, writes each episode with `write_episode_npz` (obs = picture before each action).

The scripted policies draw their randomness from per-episode uniforms
(`episode_uniforms`): episode i's draws come from its own numpy Generator, seeded by its
episode seed, so an episode's content depends only on its seed - not on the batch it was
played in, nor on the worker that played it.
"""
from __future__ import annotations

import os

import numpy as np

from baselines import best_fit, random_valid_from_uniforms, sum_of_squares
from bin_packing_environment import BatchBinPacking, write_episode_npz

POLICY_STREAM = 1  # spawn key of the policy's Generator (the item stream uses the bare seed)


def episode_uniforms(seeds, steps: int, draws: int = 2) -> np.ndarray:
    """(n, steps, draws) uniforms in [0, 1), row i from a Generator seeded by seeds[i]."""
    return np.stack([np.random.default_rng(np.random.SeedSequence(int(s), spawn_key=(POLICY_STREAM,)))
                     .random((steps, draws)) for s in seeds])


def epsilon_greedy(greedy_actions, masks, u_explore, u_pick, epsilon: float):
    """With probability epsilon a uniform valid action, else the heuristic's greedy_actions."""
    return np.where(u_explore < epsilon, random_valid_from_uniforms(masks, u_pick), greedy_actions)


def epsilon_best_fit(masks, u_explore, u_pick, epsilon: float):
    return epsilon_greedy(best_fit(None, masks), masks, u_explore, u_pick, epsilon)


def scripted_policy(name: str, seeds, steps: int, epsilon: float = 0.0):
    """act(obs, t) of a scripted policy (extract.POLICIES) for these episodes."""
    u = episode_uniforms(seeds, steps)
    if name == "random":
        return lambda obs, t: random_valid_from_uniforms(obs["action_mask"], u[:, t, 1])
    if name == "epsilon_best_fit":
        return lambda obs, t: epsilon_best_fit(obs["action_mask"], u[:, t, 0], u[:, t, 1], epsilon)
    if name == "epsilon_sum_of_squares":
        return lambda obs, t: epsilon_greedy(sum_of_squares(obs["state"], obs["action_mask"]), obs["action_mask"],
                                             u[:, t, 0], u[:, t, 1], epsilon)
    raise ValueError(f"unknown policy {name!r}; choose 'random', 'epsilon_best_fit' or 'epsilon_sum_of_squares'")


def controller_policy(seeds, steps: int, epsilon: float, models: tuple):
    """act(obs, t) of World Models' agent in the real problem: V reads the picture, C acts on [z, h]
    (greedy, or a uniform valid action with probability epsilon, from the episodes' own draws), and
    M's h follows. models = (vae, rnn, controller, params). Rollouts of the current C give M the
    states C visits (World Models' iterative training, section 5 of the paper)."""
    vae, rnn, controller, params = models
    u = episode_uniforms(seeds, steps)
    h, c = rnn.initial_state(len(seeds))

    def act(obs, t):
        nonlocal h, c
        z, _ = vae.encode_mu_logvar(obs["picture"])
        x = np.concatenate([z, h], axis=1)[None]
        greedy = controller.act(params, x, obs["action_mask"][None])[0]
        actions = epsilon_greedy(greedy, obs["action_mask"], u[:, t, 0], u[:, t, 1], epsilon)
        h, c, _ = rnn.step(z, actions, h, c)
        return actions

    return act


def run_episodes(config, seeds, act, record_dir=None, names=None):
    """Play one episode per seed with `act`; returns (total rewards (n,), paths written).

    With record_dir, episode i is written as names[i] (default: a random name). Invalid
    actions raise (the policies here never take one).
    """
    seeds = np.asarray(seeds)
    n = len(seeds)
    env = BatchBinPacking(config, n, pictures=True, invalid_action="error")
    obs = env.reset(seeds)
    T, B = env.config.time_horizon, env.config.bin_size
    record = record_dir is not None
    if record:
        buf = {"obs": np.empty((n, T) + obs["picture"].shape[1:], np.uint8),
               "action": np.empty((n, T), np.int64), "reward": np.empty((n, T), np.float64),
               "done": np.empty((n, T), bool), "action_mask": np.empty((n, T, B), np.uint8),
               "state": np.empty((n, T, B + 1), np.int64)}
    totals = np.zeros(n)
    steps = T
    for t in range(T):
        actions = np.asarray(act(obs, t))
        if record:
            buf["obs"][:, t] = obs["picture"]
            buf["action_mask"][:, t] = obs["action_mask"]
            buf["state"][:, t] = obs["state"]
            buf["action"][:, t] = actions
        obs, reward, done, _ = env.step(actions)
        totals += reward
        if record:
            buf["reward"][:, t] = reward
            buf["done"][:, t] = done
        if done.all():
            steps = t + 1
            break
    paths = []
    if record:
        lengths = np.where(buf["done"][:, :steps].any(-1), buf["done"][:, :steps].argmax(-1) + 1, steps)
        for i in range(n):
            episode = {k: v[i, :lengths[i]] for k, v in buf.items()}
            paths.append(write_episode_npz(record_dir, episode, None if names is None else names[i]))
    return totals, paths


def greedy_evaluation(agent, config, seeds, batch=100, record_dir=None, prefix="eval"):
    """Total rewards (n,) of a Rainbow agent's greedy policy on `seeds`, `batch` episodes at a time.

    The agent (components.agent.MaskedJaxRainbowAgent) scores a whole batch of pictures per
    step; frames are stacked as the agent does (zeros before the first one). With record_dir,
    episode i is written as f"{prefix}_{i:06d}", at most 16 episodes buffered at once.
    """
    stack = agent.stack_size
    shape = tuple(agent.observation_shape)
    if record_dir is not None:
        batch = min(batch, 16)  # recorded pictures are buffered: 12 MB per 1000-step episode
    totals = []
    for start in range(0, len(seeds), batch):
        chunk = seeds[start:start + batch]
        states = np.zeros((len(chunk),) + shape + (stack,), np.uint8)

        def act(obs, t):
            states[...] = np.roll(states, -1, axis=-1)
            states[..., -1] = obs["picture"].reshape((len(chunk),) + shape)
            return agent.greedy_actions(states)

        names = [f"{prefix}_{start + i:06d}" for i in range(len(chunk))]
        totals.append(run_episodes(config, chunk, act, record_dir, names)[0])
    return np.concatenate(totals)


def disk_bytes(paths) -> int:
    return sum(os.path.getsize(p) for p in paths)
