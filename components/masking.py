"""The valid-action mask of a bin packing picture, computed in JAX.

The picture of `bin_packing_environment.encode_states` holds everything the mask needs:
band h (rows 60-2h .. 61-2h) starts with a coloured segment at column 0 exactly when
N_h > 0 (every palette colour is non-zero, the background is 0), and the arriving item
of size s is the box lit at columns 6(s-1) .. 6s-1 of the bottom rows (60..63). So

    mask[0] = 1,   mask[a] = N_a > 0 and a + item <= B   (a = 1..B-1),

the same rule as `bin_packing_environment.action_masks`. Reading the mask off the
picture lets the Q-network mask its own output: the agent then needs no side channel
from the environment, and Rainbow's target (argmax over next-state Q-values, computed
on pictures sampled from the replay buffer) is masked for free. The rule is exact on
the environment's pictures (tests/test_dopamine.py checks it against `action_masks`);
it is not meant for noisy (e.g. reconstructed) pictures.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bin_packing_environment import ITEM_ROWS, MAX_ITEM_SIZE, MAX_LEVELS, PICTURE_SHAPE

_ITEM_ROW = ITEM_ROWS.start


def picture_action_mask(picture, num_actions: int, xp=jnp):
    """Valid actions (..., num_actions) bool of pictures (..., 64, 64, C).

    C may be 3 (one picture) or 3*k (k stacked frames, channels last); the newest frame
    (the last 3 channels) is read. Zero pixels are background whether or not the picture
    was scaled to [0, 1]. `xp` is jax.numpy (default, traceable) or numpy.
    """
    bin_size = int(num_actions)
    if not 2 <= bin_size <= MAX_LEVELS + 1:
        raise ValueError(f"the picture shows bin sizes 2..{MAX_LEVELS + 1}, got {bin_size}")
    if tuple(picture.shape[-3:-1]) != PICTURE_SHAPE[:2]:
        raise ValueError(f"expected pictures (..., 64, 64, C), got shape {picture.shape}")
    lit = (picture[..., -3:] != 0).any(-1)                                  # (..., 64, 64)
    levels = np.arange(1, bin_size)
    nonempty = lit[..., 60 - 2 * levels, 0]                                 # (..., B-1)
    boxes = lit[..., _ITEM_ROW, 6 * np.arange(MAX_ITEM_SIZE)]               # (..., 10)
    item = xp.where(boxes.any(-1), xp.argmax(boxes, -1) + 1, 0)             # (...,)
    fits = levels + item[..., None] <= bin_size
    valid = nonempty & fits
    new_bin = xp.ones(valid.shape[:-1] + (1,), bool)
    return xp.concatenate([new_bin, valid], -1)
