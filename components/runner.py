"""Glue between BinPackingEnv-v0 and Dopamine's experiment runner.

- `DopamineBinPackingEnv` is what Dopamine's `Runner` steps: it wraps
  `gym.make("BinPackingEnv-v0")` (the picture environment), hands Dopamine only the
  64x64x3 picture as observation, keeps the latest `action_mask` as an attribute (the agent
  does not need it: it reads the mask off the picture, see components/masking.py) and has
  the `game_over` flag the runner polls. With record=True the environment writes every
  episode it finishes to record_dir in its npz format.
- Episode seeds: iteration i of the experiment plays the episodes of a generator seeded
  by (seed, 'train' stream, i), so a run resumed from a checkpoint plays the same
  episodes as an uninterrupted one, and none of them is an 'eval' stream episode.
- `BinPackingRunner` is Dopamine's `Runner` (train + eval phases, checkpoints in
  base_dir/checkpoints, resume from the latest one, logs) with these defaults; its
  parameters are bound in gin as `Runner.*` like for any Dopamine experiment.
"""
from __future__ import annotations

import gin
import gym
import numpy as np
from dopamine.discrete_domains import run_experiment

from bin_packing_environment import ENV_ID, PRESETS, SEED_STREAMS, make_config
from components.agent import MaskedJaxRainbowAgent


def env_config(preset: str = "perfect_pack", time_horizon: int | None = None):
    """The BinPackingConfig of a preset name, with an optional horizon override."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    config = dict(PRESETS[preset])
    if time_horizon is not None:
        config["time_horizon"] = time_horizon
    return make_config(config)


class DopamineBinPackingEnv:
    """BinPackingEnv-v0 as Dopamine's runner expects it: picture observations, game_over."""

    def __init__(self, preset="perfect_pack", time_horizon=None, record=False, record_dir="record", seed=0):
        self.preset = preset
        self.config = env_config(preset, time_horizon)
        self.seed = int(seed)
        self.record, self.record_dir = bool(record), record_dir
        self.environment = gym.make(ENV_ID, env_config=self.config, record=record, record_dir=record_dir)
        self.action_space = self.environment.action_space
        self.observation_space = self.environment.observation_space["real_obs"]
        self.game_over = False
        self.action_mask = None
        self.begin_iteration(0)

    def begin_iteration(self, iteration: int):
        ss = np.random.SeedSequence(self.seed, spawn_key=(SEED_STREAMS["train"], int(iteration)))
        self._episode_rng = np.random.default_rng(ss)

    def reset(self):
        obs = self.environment.reset(seed=int(self._episode_rng.integers(2 ** 63)))
        self.game_over = False
        self.action_mask = obs["action_mask"]
        return obs["real_obs"]

    def step(self, action):
        obs, reward, done, info = self.environment.step(int(action))
        self.game_over = done
        self.action_mask = obs["action_mask"]
        return obs["real_obs"], reward, done, info


@gin.configurable
def create_bin_packing_environment(preset="perfect_pack", time_horizon=None, record=False,
                                   record_dir="record", seed=0):
    return DopamineBinPackingEnv(preset, time_horizon, record, record_dir, seed)


@gin.configurable
def create_masked_rainbow_agent(sess, environment, summary_writer=None, seed=None, debug_mode=False):
    """Like Dopamine's create_agent: per-step TensorBoard summaries only in debug_mode."""
    del sess  # JAX agents have no TF session
    return MaskedJaxRainbowAgent(num_actions=environment.action_space.n,
                                 summary_writer=summary_writer if debug_mode else None, seed=seed)


@gin.configurable
class BinPackingRunner(run_experiment.Runner):
    """Dopamine's Runner (configure it with `Runner.*` bindings) on the bin packing environment."""

    def __init__(self, base_dir, create_agent_fn=create_masked_rainbow_agent,
                 create_environment_fn=create_bin_packing_environment):
        super().__init__(base_dir, create_agent_fn, create_environment_fn)

    @property
    def agent(self) -> MaskedJaxRainbowAgent:
        return self._agent

    @property
    def environment(self) -> DopamineBinPackingEnv:
        return self._environment

    @property
    def start_iteration(self) -> int:
        return self._start_iteration

    def _run_one_iteration(self, iteration):
        self._environment.begin_iteration(iteration)
        return super()._run_one_iteration(iteration)
