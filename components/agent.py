"""Dopamine's JAX Rainbow agent with invalid actions masked.

Which agent and why: `dopamine.jax.agents.rainbow.rainbow_agent.JaxRainbowAgent` (C51
distributional Q-learning + n-step + prioritized replay, Adam), not the TF1 `RainbowAgent`.
The TF agent needs graph mode and tf.compat.v1 sessions, which TensorFlow 2.21 only
half-supports; the JAX agent builds cleanly, runs on CPU (about 550 acting steps/s and
120 training steps/s - a gradient step every 4 - with the full Nature torso on two cores),
and its network is a plain flax module we can replace.

Masking (greedy = argmax of Q over valid actions, exploration uniform over valid actions):
- the network (`components.networks.MaskedRainbowNetwork`) reads the mask off the
  picture it is given and pushes invalid actions' Q-values to -1e9, so the greedy action
  and Rainbow's target argmax are always valid;
- this subclass replaces Dopamine's `select_action` by `masked_select_action`, whose
  epsilon branch draws uniformly among the valid actions (Dopamine's draws among all).
Everything else - replay, training, checkpointing - is Dopamine's, configured in gin under
`JaxRainbowAgent.*` like any Dopamine agent; the network must be bound to
`@MaskedRainbowNetwork` (checked at construction).

Replay (`fast_replay`, gin `MaskedJaxRainbowAgent.fast_replay`, default True): the buffer is
`components.replay.FastPrioritizedReplayBuffer`, Dopamine's prioritized buffer with batched
sampling, a sampling RNG seeded by the agent's seed and level-1 gzip checkpoints - the same
batches as Dopamine's buffer given the same draws (bench/bench_rainbow.py times both, and
tests/test_dopamine.py checks that both paths train the same agent). fast_replay=False is
Dopamine's buffer, drawing from Python's unseeded global `random`.

Checkpoints also hold the acting RNG key and the replay's sampling RNG state (Dopamine
keeps neither), so a run resumed from a checkpoint acts and samples as an uninterrupted
one would; checkpoints without them (older ones) still load.
"""
from __future__ import annotations

import functools

import gin
import jax
import jax.numpy as jnp
import numpy as onp
from dopamine.jax.agents.rainbow import rainbow_agent

from components.masking import picture_action_mask
from components.networks import MaskedRainbowNetwork
from components.replay import FastPrioritizedReplayBuffer


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6, 7, 8, 10, 11))
def masked_select_action(network_def, params, state, rng, num_actions, eval_mode, epsilon_eval,
                         epsilon_train, epsilon_decay_period, training_steps, min_replay_history,
                         epsilon_fn, support):
    """Dopamine's `select_action` (same arguments and epsilon schedule), restricted to valid actions."""
    epsilon = jnp.where(eval_mode, epsilon_eval,
                        epsilon_fn(epsilon_decay_period, training_steps, min_replay_history, epsilon_train))
    rng, rng1, rng2 = jax.random.split(rng, num=3)
    mask = picture_action_mask(state.reshape(state.shape[:2] + (-1,)), num_actions)
    explore = jax.random.categorical(rng2, jnp.where(mask, 0.0, -jnp.inf))
    greedy = jnp.argmax(network_def.apply(params, state, support).q_values)
    return rng, jnp.where(jax.random.uniform(rng1) <= epsilon, explore, greedy)


@gin.configurable
class MaskedJaxRainbowAgent(rainbow_agent.JaxRainbowAgent):
    """JaxRainbowAgent that never picks an invalid action (see the module docstring)."""

    def __init__(self, num_actions, fast_replay=True, **kwargs):
        self._fast_replay = bool(fast_replay)
        self._replay_seed = kwargs.get("seed")  # None: Dopamine seeds the agent from the clock
        super().__init__(num_actions, **kwargs)
        if not isinstance(self.network_def, MaskedRainbowNetwork):
            raise ValueError("MaskedJaxRainbowAgent needs JaxRainbowAgent.network = @MaskedRainbowNetwork, "
                             f"got {type(self.network_def).__name__}")
        self._batch_q = jax.jit(jax.vmap(lambda params, state: self.network_def.apply(
            params, state, self._support).q_values, in_axes=(None, 0)))

    def _build_replay_buffer(self):
        if not self._fast_replay:
            return super()._build_replay_buffer()
        if self._replay_scheme not in ("uniform", "prioritized"):
            raise ValueError(f"Invalid replay scheme: {self._replay_scheme}")
        return FastPrioritizedReplayBuffer(
            observation_shape=self.observation_shape, stack_size=self.stack_size,
            update_horizon=self.update_horizon, gamma=self.gamma,
            observation_dtype=self.observation_dtype, sampling_seed=self._replay_seed)

    def bundle_and_checkpoint(self, checkpoint_dir, iteration_number):
        bundle = super().bundle_and_checkpoint(checkpoint_dir, iteration_number)
        if bundle is not None:
            bundle["rng"] = onp.asarray(self._rng)  # jax.random.PRNGKey: a raw uint32 key
            if isinstance(self._replay, FastPrioritizedReplayBuffer):
                bundle["replay_sampling_rng"] = self._replay._sampling_rng.getstate()
        return bundle

    def unbundle(self, checkpoint_dir, iteration_number, bundle_dictionary):
        if not super().unbundle(checkpoint_dir, iteration_number, bundle_dictionary):
            return False
        if bundle_dictionary is not None:
            if "rng" in bundle_dictionary:
                self._rng = jnp.asarray(bundle_dictionary["rng"], jnp.uint32)
            if "replay_sampling_rng" in bundle_dictionary and isinstance(self._replay, FastPrioritizedReplayBuffer):
                self._replay._sampling_rng.setstate(bundle_dictionary["replay_sampling_rng"])
        return True

    def _select_action(self):
        self._rng, action = masked_select_action(
            self.network_def, self.online_params, self.preprocess_fn(self.state), self._rng,
            self.num_actions, self.eval_mode, self.epsilon_eval, self.epsilon_train,
            self.epsilon_decay_period, self.training_steps, self.min_replay_history,
            self.epsilon_fn, self._support)
        self.action = onp.asarray(action)
        return self.action

    # Dopamine's begin_episode/step, with the masked action selection.
    def begin_episode(self, observation):
        self._reset_state()
        self._record_observation(observation)
        if not self.eval_mode:
            self._train_step()
        return self._select_action()

    def step(self, reward, observation):
        self._last_observation = self._observation
        self._record_observation(observation)
        if not self.eval_mode:
            self._store_transition(self._last_observation, self.action, reward, False)
            self._train_step()
        return self._select_action()

    def greedy_actions(self, states):
        """Greedy valid actions (n,) for a batch of agent states (n, *observation_shape, stack)."""
        q = self._batch_q(self.online_params, self.preprocess_fn(states))
        return onp.asarray(jnp.argmax(q, -1))
