"""The Rainbow Q-network for the 64x64x3 bin packing picture, with invalid actions masked.

Dopamine's `networks.RainbowNetwork` assumes a (H, W, stack) grey-scale input; here the
agent's state is (64, 64, 3, stack), so the frames are folded into channels first. The
torso is Nature DQN's (conv 8x8/4, 4x4/2, 3x3/1, dense 512) unless gin shrinks it.

Masking: the returned `q_values` of invalid actions are set to MASKED_Q, far below any
reachable return, so every argmax over them - the greedy action in `select_action` and
the next-state action in Rainbow's target - only ever picks a valid action. Logits and
probabilities are left alone (the loss only reads the chosen action's logits).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import gin
import jax.numpy as jnp
from dopamine.discrete_domains import atari_lib

from components.masking import picture_action_mask

MASKED_Q = -1e9


@gin.configurable
class MaskedRainbowNetwork(nn.Module):
    """Distributional Q-network over pictures; q_values of invalid actions are MASKED_Q."""

    num_actions: int
    num_atoms: int
    conv_features: Sequence[int] = (32, 64, 64)
    kernel_sizes: Sequence[int] = (8, 4, 3)
    strides: Sequence[int] = (4, 2, 1)
    hidden_units: int = 512
    inputs_preprocessed: bool = False

    @nn.compact
    def __call__(self, x, support):
        # x: one state (64, 64, 3, stack) or (64, 64, 3); Dopamine vmaps over batches.
        x = x.reshape(x.shape[:2] + (-1,))
        mask = picture_action_mask(x, self.num_actions)
        if not self.inputs_preprocessed:
            x = x.astype(jnp.float32) / 255.0
        init = nn.initializers.variance_scaling(scale=1.0 / jnp.sqrt(3.0), mode="fan_in",
                                                distribution="uniform")
        for features, kernel, stride in zip(self.conv_features, self.kernel_sizes, self.strides):
            x = nn.relu(nn.Conv(features=features, kernel_size=(kernel, kernel),
                                strides=(stride, stride), kernel_init=init)(x))
        x = x.reshape(-1)
        x = nn.relu(nn.Dense(features=self.hidden_units, kernel_init=init)(x))
        x = nn.Dense(features=self.num_actions * self.num_atoms, kernel_init=init)(x)
        logits = x.reshape((self.num_actions, self.num_atoms))
        probabilities = nn.softmax(logits)
        q_values = jnp.sum(support * probabilities, axis=1)
        q_values = jnp.where(mask, q_values, MASKED_Q)
        return atari_lib.RainbowNetworkType(q_values, logits, probabilities)
