"""Online stochastic bin packing (the ORL benchmark) and its picture.

One item arrives per step; the agent puts it into an open bin or opens a new one.
The state is N_h, the number of open bins filled to level h (h = 1..B-1), plus the
arriving item's size. Action 0 opens a new bin, action a >= 1 uses a bin at level a.
Reward: -(B - item) for a new bin, +item otherwise, so an episode's total reward is
minus the empty space left in all opened bins (the final waste).

Everything steps through one vectorised core, `BatchBinPacking`, which plays many
independent episodes at once in numpy; the gym classes are thin views of a batch of
one, so the single and batch environments cannot drift apart.

What an invalid action does (an action at a level with no bin, or one the item overflows)
is decided in one place, the core's `invalid_action` mode (INVALID_MODES); each gym class
only picks its default mode, and any class takes `invalid_action=` to use another one:

| class | observation | invalid action (default mode) |
| --- | --- | --- |
| BinPackingGymEnvironment (ORL) | state vector (B+1) | "penalty": reward -100 minus the last step's waste term, the episode ends |
| BinPackingIncrementalWasteGymEnvironment (ORL) | state vector | "incremental": the same reward, the bins are unchanged, the item is dropped, the step counts and the episode goes on |
| BinPackingNearActionGymEnvironment (ORL) | state vector | "nearest": replaced by the nearest existing bin the item fits (ties to the lower level), a new bin only when none fits; normal reward |
| BinPackingContinuousActionEnv (ORL) | state vector | Box(0, 1) action, clipped, int(a * (B - 1)), then "nearest" |
| BinPackingActionMaskGymEnvironment (ORL) | {"action_mask", "real_obs": state} | "nearest" (ORL subclasses the near-action environment) |
| BinPacking2DMaskGymEnvironment (World Models, not ORL) | {"action_mask", "real_obs": 64x64x3 picture} | "penalty" |

The last step's waste term is B - item after a new bin, -item after an insertion and 0 at the
start, so the penalty is -100 - (B - item), -100 + item or -100. An action index outside
0..B-1 is an error in every mode. ORL's config names the capacity `bag_capacity`; `make_config`
takes it as well as our `bin_size`.

The picture (64x64x3 uint8), see `encode_state`:
- rows 60..63 (bottom): the arriving item as a 6x4 box at x = 6*(size-1), coloured by size;
- band h (h = 1..29) is the two rows 60-2h .. 61-2h; rows 0..1 stay empty. Bands never overlap.
- a band shows N_h as 2-pixel-wide segments from the left. 1 <= N <= 29: N segments coloured
  palette[N-1], so both length and colour tell N. N >= 30: N // 15 darkest segments (15 each),
  then, if the remainder r = N % 15 is not 0, one segment coloured palette[2r-1] (every other
  colour, so that a slightly wrong colour still reads as the right remainder). The band is 32 segments wide, so the largest
  count a band can show is MAX_BAND_COUNT = 480; larger counts are drawn as 480 (the picture
  saturates) and `decode_picture` returns 480 for them.

Run `python bin_packing_environment.py` to play it with the keyboard.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import uuid
from numbers import Integral, Real
from typing import Mapping, Sequence

import quiet  # noqa: F401  (before gym: its unmaintained-banner hidden)
import gym
import numpy as np
from gym import spaces

# ---------------------------------------------------------------- configuration

PRESETS: dict[str, dict] = {
    "perfect_pack": dict(bin_size=30, item_sizes=[1, 2, 3, 4, 5, 6, 7, 8, 9],
                         item_probabilities=[0.06, 0.11, 0.11, 0.22, 0, 0.11, 0.06, 0, 0.33],
                         time_horizon=1000),
    "bounded_waste": dict(bin_size=30, item_sizes=[1, 2, 3, 4, 5, 6, 7, 8, 9],
                          item_probabilities=[0.14, 0.10, 0.06, 0.13, 0.11, 0.13, 0.03, 0.11, 0.19],
                          time_horizon=1000),
    "linear_waste": dict(bin_size=30, item_sizes=[1, 2, 3, 4, 5, 6, 7, 8, 9],
                         item_probabilities=[0, 0, 0, 1 / 3, 0, 0, 0, 0, 2 / 3], time_horizon=1000),
    "small": dict(bin_size=9, item_sizes=[2, 3], item_probabilities=[0.8, 0.2], time_horizon=1000),
}
DEFAULT_PRESET = "perfect_pack"

# Penalty of ORL's base environment for an invalid action (the episode then ends).
INVALID_ACTION_PENALTY = -100.0

# Longest episode a config may ask for: the core draws each episode's whole item stream up front
# (8 bytes an item), so longer ones cannot fit in memory anyway. reset() also checks the batch's
# streams against the memory available.
MAX_TIME_HORIZON = 10 ** 9
# Most seeds episode_seeds hands out in one call (8 bytes each).
MAX_EPISODE_SEEDS = 10 ** 8

# Independent seed streams, so that evaluation never replays an episode training saw.
# "validation" picks checkpoints during training; "eval" is kept for final scores only.
SEED_STREAMS = {"train": 0, "eval": 1, "rollout": 2, "play": 3, "validation": 4, "starts": 5}


def _is_integer(x) -> bool:
    return isinstance(x, Integral) or (isinstance(x, Real) and float(x).is_integer())


@dataclasses.dataclass(frozen=True)
class BinPackingConfig:
    bin_size: int
    item_sizes: tuple
    item_probabilities: tuple
    time_horizon: int

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"invalid bin packing config: {field} {why}")

        if not _is_integer(self.bin_size) or isinstance(self.bin_size, bool) or self.bin_size < 2:
            bad("bin_size", f"must be an integer >= 2, got {self.bin_size!r}")
        if not _is_integer(self.time_horizon) or isinstance(self.time_horizon, bool) or self.time_horizon < 1:
            bad("time_horizon", f"must be an integer >= 1, got {self.time_horizon!r}")
        if self.time_horizon > MAX_TIME_HORIZON:
            bad("time_horizon", f"must be at most {MAX_TIME_HORIZON:.0e} (each episode's items are drawn up front, "
                                f"8 bytes each), got {self.time_horizon!r}")
        sizes, probs = list(self.item_sizes), list(self.item_probabilities)
        if not sizes:
            bad("item_sizes", "must not be empty")
        if len(sizes) != len(probs):
            bad("item_probabilities", f"has {len(probs)} entries but item_sizes has {len(sizes)}")
        for s in sizes:
            if not _is_integer(s) or isinstance(s, bool):
                bad("item_sizes", f"must hold integers, got {s!r}")
            if not 1 <= s < self.bin_size:
                bad("item_sizes", f"must be >= 1 and smaller than bin_size={self.bin_size}, got {s}")
        if len(set(int(s) for s in sizes)) != len(sizes):
            bad("item_sizes", "must not repeat a size")
        for p in probs:
            if not isinstance(p, Real) or isinstance(p, bool) or not math.isfinite(p) or p < 0:
                bad("item_probabilities", f"must be finite and non-negative, got {p!r}")
        if abs(sum(probs) - 1.0) > 1e-6:
            bad("item_probabilities", f"must sum to 1, got {sum(probs):.6g}")
        object.__setattr__(self, "bin_size", int(self.bin_size))
        object.__setattr__(self, "time_horizon", int(self.time_horizon))
        object.__setattr__(self, "item_sizes", tuple(int(s) for s in sizes))
        object.__setattr__(self, "item_probabilities", tuple(float(p) for p in probs))

    @property
    def num_actions(self) -> int:
        return self.bin_size

    @property
    def state_size(self) -> int:
        return self.bin_size + 1


def preset_config(preset: str, time_horizon: int | None = None) -> dict:
    """A preset's fields, its episode length replaced by time_horizon when one is given (the
    --preset/--time_horizon flags of the scripts); make_config checks the result."""
    config = dict(PRESETS[preset])
    if time_horizon is not None:
        config["time_horizon"] = time_horizon
    return config


def make_config(config=None) -> BinPackingConfig:
    """Accept a preset name, a dict of fields (missing ones from perfect_pack) or a config.

    A dict may name the capacity as ORL does, `bag_capacity`, instead of `bin_size`; giving both
    is fine when they agree and a ValueError naming both when they do not.
    """
    if config is None:
        config = DEFAULT_PRESET
    if isinstance(config, BinPackingConfig):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; choose one of {sorted(PRESETS)}")
        return BinPackingConfig(**PRESETS[config])
    if isinstance(config, Mapping):
        config = dict(config)
        unknown = set(config) - {f.name for f in dataclasses.fields(BinPackingConfig)} - {"bag_capacity"}
        if unknown:
            raise ValueError(f"invalid bin packing config: unknown field(s) {sorted(unknown)}")
        if "bag_capacity" in config:
            capacity = config.pop("bag_capacity")
            if "bin_size" in config and not _same_value(config["bin_size"], capacity):
                raise ValueError(f"invalid bin packing config: bin_size={config['bin_size']!r} and "
                                 f"bag_capacity={capacity!r} (ORL's name for bin_size) disagree")
            config["bin_size"] = capacity
        return BinPackingConfig(**{**PRESETS[DEFAULT_PRESET], **config})
    raise ValueError(f"config must be a preset name, a dict or a BinPackingConfig, got {type(config).__name__}")


def _same_value(a, b) -> bool:
    try:
        return bool(a == b) and isinstance(a, bool) == isinstance(b, bool)
    except Exception:  # e.g. arrays: not a capacity anyway, BinPackingConfig will say so
        return False


def episode_seeds(seed, n: int, stream: str = "train") -> np.ndarray:
    """n distinct per-episode seeds derived from (seed, stream); streams never overlap.

    seed may be an int or a tuple of ints, e.g. (seed, generation).
    """
    if stream not in SEED_STREAMS:
        raise ValueError(f"unknown seed stream {stream!r}; choose one of {sorted(SEED_STREAMS)}")
    if not _is_integer(n) or isinstance(n, bool) or not 0 <= n <= MAX_EPISODE_SEEDS:
        raise ValueError(f"episode_seeds: n (the number of seeds) must be an integer in 0..{MAX_EPISODE_SEEDS:.0e}, "
                         f"got {n!r}")
    n = int(n)
    entropy = [int(s) for s in seed] if isinstance(seed, (tuple, list)) else int(seed)
    ss = np.random.SeedSequence(entropy=entropy, spawn_key=(SEED_STREAMS[stream],))
    return ss.generate_state(n, dtype=np.uint64)


# ---------------------------------------------------------------- the picture

PICTURE_SHAPE = (64, 64, 3)
MAX_LEVELS = 29          # bands available: bin sizes up to 30
MAX_ITEM_SIZE = 10       # item boxes that fit in the bottom row
SEGMENTS = 32            # 2-pixel segments per band
LARGE_UNIT = 15          # what one darkest segment stands for once N >= 30
MAX_BAND_COUNT = SEGMENTS * LARGE_UNIT
ITEM_ROWS = slice(60, 64)


def _blues(n: int) -> np.ndarray:
    light, dark = np.array([222, 235, 247.0]), np.array([8, 48, 107.0])
    t = np.linspace(0.0, 1.0, n)[:, None]
    return np.rint(light + (dark - light) * t).astype(np.uint8)


PALETTE = _blues(30)                  # light = small, dark = large
BACKGROUND = np.zeros(3, np.uint8)


def _band_segments(count: int) -> list[int]:
    """Palette index of each segment drawn for a band count (empty list for 0)."""
    count = min(int(count), MAX_BAND_COUNT)
    if count < 30:
        return [count - 1] * count
    full, rest = divmod(count, LARGE_UNIT)
    return [29] * full + ([2 * rest - 1] if rest else [])


def _make_band_table() -> np.ndarray:
    table = np.zeros((MAX_BAND_COUNT + 1, 64, 3), np.uint8)
    for count in range(MAX_BAND_COUNT + 1):
        for k, colour in enumerate(_band_segments(count)):
            table[count, 2 * k:2 * k + 2] = PALETTE[colour]
    return table


def _make_item_table() -> np.ndarray:
    table = np.zeros((MAX_ITEM_SIZE + 1, 4, 64, 3), np.uint8)
    for size in range(1, MAX_ITEM_SIZE + 1):
        table[size, :, 6 * (size - 1):6 * size] = PALETTE[min(3 * size - 1, 29)]
    return table


BAND_TABLE = _make_band_table()       # BAND_TABLE[N] is one row of band pixels
ITEM_TABLE = _make_item_table()       # ITEM_TABLE[size] is the 4-row item strip (size 0: empty)


def _band_rows(level: int) -> slice:
    return slice(60 - 2 * level, 62 - 2 * level)


def encode_states(states) -> np.ndarray:
    """Pictures (n,64,64,3) of state vectors (n, B+1): [unused, N_1..N_{B-1}, item]."""
    states = np.asarray(states)
    if states.ndim != 2:
        raise ValueError(f"states must have shape (n, B+1), got {states.shape}")
    levels = states.shape[1] - 2
    if levels > MAX_LEVELS:
        raise ValueError(f"the picture shows bin sizes up to {MAX_LEVELS + 1}, got {levels + 1}")
    items = states[:, -1]
    if np.any(items < 0) or np.any(items > MAX_ITEM_SIZE):
        raise ValueError(f"the picture shows item sizes 0..{MAX_ITEM_SIZE}")
    counts = np.clip(states[:, 1:levels + 1], 0, MAX_BAND_COUNT)
    pics = np.zeros((len(states),) + PICTURE_SHAPE, np.uint8)
    bands = BAND_TABLE[counts]                       # (n, levels, 64, 3), level 1 first
    rows = bands[:, ::-1].repeat(2, axis=1)          # highest level at the top
    pics[:, 60 - 2 * levels:60] = rows
    pics[:, ITEM_ROWS] = ITEM_TABLE[items]
    return pics


def encode_state(state) -> np.ndarray:
    """The 64x64x3 uint8 picture of one state vector."""
    return encode_states(np.asarray(state)[None])[0]


def _nearest_colour(pixels: np.ndarray) -> np.ndarray:
    """Index into [BACKGROUND, PALETTE...] (0 = background) of the nearest colour.

    |p - c|^2 = |p|^2 - 2 p.c + |c|^2 as one matrix product (the dream's picture reward decodes
    thousands of pictures a generation); in float64 it is exact for pixel means of up to 2^20
    pixels, so the nearest colour and its ties are those of the direct difference.
    """
    colours = np.concatenate([BACKGROUND[None], PALETTE]).astype(np.float64)
    flat = pixels.reshape(-1, 3).astype(np.float64)
    d = (flat * flat).sum(1)[:, None] - 2.0 * flat @ colours.T + (colours * colours).sum(1)
    return d.argmin(-1).reshape(pixels.shape[:-1])


def _nearest_colour_counts(seg: np.ndarray) -> np.ndarray:
    """Per band, the count read segment by segment (each 2x2 segment as its nearest colour) from
    the band's segment colours seg (n, levels, SEGMENTS, 3)."""
    idx = _nearest_colour(seg) - 1                   # -1 = background, else palette index
    # a band is read as its leading run of filled segments; a run whose colour (ignoring the
    # last segment, which may be a remainder) is closer to the darkest than to the colour
    # its length implies is in the large mode.
    run = np.cumprod(idx >= 0, axis=-1).astype(bool)
    length = run.sum(-1)
    head = run.copy()
    np.put_along_axis(head, np.maximum(length - 1, 0)[..., None], length[..., None] == 1, -1)
    head_colour = (np.where(head, idx, 0).sum(-1) / np.maximum(head.sum(-1), 1))
    large = (length >= 30) | ((length >= 2) & (np.abs(head_colour - 29) < np.abs(head_colour - (length - 1))))
    # the last segment is either darkest or a remainder colour: choose among those 15 only
    last = np.take_along_axis(seg, np.maximum(length - 1, 0)[..., None, None], -2)[..., 0, :]
    choices = np.concatenate([PALETTE[-1:], PALETTE[1:29:2]]).astype(np.float32)
    rest = ((last[..., None, :] - choices) ** 2).sum(-1).argmin(-1)       # 0 = darkest
    last_is_rest = rest > 0
    return np.where(large, (length - last_is_rest) * LARGE_UNIT + rest, length)


def _nearest_band_counts(seg: np.ndarray) -> np.ndarray:
    """Per band, the count 0..MAX_BAND_COUNT whose drawing is nearest (squared error) to the
    band's segment colours seg (n, levels, SEGMENTS, 3): a maximum-likelihood read under pixel
    noise, where the nearest colour per segment can read a faint ghost as a dark bin."""
    seg = seg.astype(np.float64)
    P = PALETTE.astype(np.float64)
    total = (seg ** 2).sum((-1, -2))                              # distance of count 0 (all background)
    cum = np.cumsum(seg, axis=2)                                  # cum[..., k, :] = sum of segments 0..k
    small = np.arange(1, 30)                                      # c segments of colour c - 1
    d_small = -2 * np.einsum("nlkd,kd->nlk", cum[:, :, :29], P[:29]) + small * (P[:29] ** 2).sum(1)
    large = np.arange(30, MAX_BAND_COUNT + 1)                     # full darkest segments, then a remainder
    full, rest = np.divmod(large, LARGE_UNIT)
    d_large = -2 * (cum @ P[29])[..., full - 1] + full * (P[29] ** 2).sum()
    rest_colours = P[1:29:2]                                      # remainder r is drawn in P[2r - 1]
    r = np.maximum(rest - 1, 0)
    at_rest = (seg @ rest_colours.T)[:, :, np.minimum(full, SEGMENTS - 1), r]
    d_large = d_large + (rest > 0) * (-2 * at_rest + (rest_colours[r] ** 2).sum(1))
    distance = np.concatenate([np.zeros(total.shape + (1,)), d_small, d_large], -1)
    return distance.argmin(-1)


BAND_READS = {"nearest_colour": _nearest_colour_counts, "nearest_band": _nearest_band_counts}


def decode_pictures(pictures, bin_size: int = 30, bands: str = "nearest_colour") -> np.ndarray:
    """Inverse of `encode_states`; tolerant of noise.

    bands="nearest_colour" (the default, used by the dream) reads each 2x2 segment as its nearest
    colour; "nearest_band" reads each band as the count whose whole drawing is nearest. Both are
    exact on clean pictures; they differ on V's reconstructions.
    """
    if bands not in BAND_READS:
        raise ValueError(f"bands must be one of {tuple(BAND_READS)}, got {bands!r}")
    pictures = np.asarray(pictures)
    if pictures.ndim != 4 or pictures.shape[1:] != PICTURE_SHAPE:
        raise ValueError(f"pictures must have shape (n, 64, 64, 3), got {pictures.shape}")
    levels = bin_size - 1
    n = len(pictures)
    band_area = pictures[:, 60 - 2 * levels:60].astype(np.float32)
    # mean colour of each 2x2 segment: (n, levels, 32, 3), level order top-down
    seg = band_area.reshape(n, levels, 2, SEGMENTS, 2, 3).mean(axis=(2, 4))[:, ::-1]
    counts = BAND_READS[bands](seg)
    item_strip = pictures[:, ITEM_ROWS].astype(np.float32).mean(axis=1)        # (n, 64, 3)
    boxes = item_strip[:, :6 * MAX_ITEM_SIZE].reshape(n, MAX_ITEM_SIZE, 6, 3).mean(2)
    lit = _nearest_colour(boxes) > 0
    items = np.where(lit.any(-1), lit.argmax(-1) + 1, 0)
    states = np.zeros((n, bin_size + 1), np.int64)
    states[:, 1:bin_size] = counts
    states[:, -1] = items
    return states


def decode_picture(picture, bin_size: int = 30) -> np.ndarray:
    """The state vector a picture shows (exact inverse of `encode_state` up to MAX_BAND_COUNT)."""
    return decode_pictures(np.asarray(picture)[None], bin_size)[0]


def action_masks(states) -> np.ndarray:
    """Valid actions (n, B) uint8 of state vectors (n, B+1): new bin, or a level the item fits."""
    states = np.asarray(states)
    bin_size = states.shape[1] - 1
    levels = np.arange(bin_size)
    mask = (states[:, :bin_size] > 0) & (levels + states[:, -1:] <= bin_size)
    mask[:, 0] = True
    return mask.astype(np.uint8)


def action_mask(state) -> np.ndarray:
    return action_masks(np.asarray(state)[None])[0]


def waste(states) -> np.ndarray:
    """Empty space in all open bins, sum_h N_h (B - h), for state vectors (n, B+1)."""
    states = np.asarray(states)
    bin_size = states.shape[1] - 1
    return (states[:, 1:bin_size] * (bin_size - np.arange(1, bin_size))).sum(-1)


# ---------------------------------------------------------------- recording

RECORD_KEYS = ("obs", "action", "reward", "done", "action_mask", "state")


def write_episode_npz(record_dir: str, episode: Mapping[str, np.ndarray], name: str | None = None) -> str:
    """Write one episode as compressed npz, atomically (temp file then rename)."""
    missing = [k for k in RECORD_KEYS if k not in episode]
    if missing:
        raise ValueError(f"episode is missing {missing}")
    os.makedirs(record_dir, exist_ok=True)
    path = os.path.join(record_dir, (name or uuid.uuid4().hex) + ".npz")
    fd, tmp = tempfile.mkstemp(dir=record_dir, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **{k: np.asarray(episode[k]) for k in RECORD_KEYS})
        os.chmod(tmp, 0o644)                   # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_episode_npz(path: str) -> dict:
    """Load a recorded episode; ValueError naming the file if it is corrupt or inconsistent."""
    try:
        with np.load(path) as data:
            episode = {k: data[k] for k in RECORD_KEYS}
    except Exception as e:  # zipfile, KeyError, EOF...: all mean an unusable file
        raise ValueError(f"corrupt episode file {path}: {type(e).__name__}: {e}") from None
    n = len(episode["action"])
    if n == 0 or any(len(v) != n for v in episode.values()):
        raise ValueError(f"corrupt episode file {path}: empty or arrays of different lengths")
    if episode["obs"].dtype != np.uint8 or episode["obs"].shape[1:] != PICTURE_SHAPE:
        raise ValueError(f"corrupt episode file {path}: obs must be uint8 (N,64,64,3)")
    return episode


def list_episodes(record_dir: str) -> list[str]:
    if not os.path.isdir(record_dir):
        raise ValueError(f"record directory {record_dir!r} does not exist")
    return sorted(os.path.join(record_dir, f) for f in os.listdir(record_dir) if f.endswith(".npz"))


# ---------------------------------------------------------------- the vectorised core

# What an invalid action does (see the module docstring's table):
#   "error": ValueError; "penalty": reward -100 minus the last step's waste term, the episode ends;
#   "incremental": the same reward, the bins stay as they are, the item is dropped, the step counts
#   and the episode goes on; "nearest": the nearest valid action (`nearest_valid`) is played instead.
INVALID_MODES = ("error", "penalty", "incremental", "nearest")


def check_invalid_mode(invalid_action) -> str:
    if not isinstance(invalid_action, str) or invalid_action not in INVALID_MODES:
        raise ValueError(f"invalid_action must be one of {', '.join(map(repr, INVALID_MODES))}, "
                         f"got {invalid_action!r}")
    return invalid_action


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable, else free pages), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_item_memory(num_envs: int, time_horizon: int):
    """Refuse, naming time_horizon, a batch whose item streams cannot fit in memory."""
    need = 8 * num_envs * time_horizon + 24 * time_horizon      # the streams, and one draw's temporaries
    available = _available_memory()
    if available is not None and need > available:
        raise ValueError(f"time_horizon={time_horizon} with num_envs={num_envs} needs {need / 2 ** 30:.1f} GiB "
                         f"for the item streams, more than the {available / 2 ** 30:.1f} GiB available; "
                         f"use a shorter time_horizon or fewer episodes")


def _check_actions(actions, n: int, num_actions: int) -> np.ndarray:
    if isinstance(actions, (bool, np.bool_)):
        raise ValueError(f"action must be an integer level 0..{num_actions - 1}, got the bool {actions!r}")
    arr = np.asarray(actions)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.shape != (n,):
        raise ValueError(f"expected {n} action(s), got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"actions must be integers, got {arr.tolist()[:8]}")
    elif arr.dtype.kind == "b":
        raise ValueError(f"actions must be integer levels 0..{num_actions - 1}, got bools {arr.tolist()[:8]}")
    elif arr.dtype.kind not in "iu":
        raise ValueError(f"actions must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if np.any(arr < 0) or np.any(arr >= num_actions):
        bad = arr[(arr < 0) | (arr >= num_actions)][:8].tolist()
        raise ValueError(f"actions must be in 0..{num_actions - 1}, got {bad}")
    return arr


def nearest_valid(actions: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """ORL's replacement for an invalid action: the level closest to it among the existing bins
    the item fits (masks[:, 1:]), ties to the lower level; 0 (a new bin) only where no existing
    bin fits. Action 0 is never a candidate otherwise, however close."""
    fits = np.asarray(masks)[:, 1:] != 0
    dist = np.abs(np.arange(1, fits.shape[1] + 1) - np.asarray(actions)[:, None]).astype(np.float64)
    dist[~fits] = np.inf
    return np.where(fits.any(-1), dist.argmin(-1) + 1, 0)      # argmin: the first (lowest) of equals


def rules_rewards(items, actions, bin_size: int) -> np.ndarray:
    """The packing's reward for placing items (n,) by valid actions (n,): +item into a bin,
    -(bin size - item) for a new one (the environment's rule, and the dream's --dream_reward rules)."""
    items = np.asarray(items, np.float64)
    return np.where(np.asarray(actions) == 0, items - bin_size, items)


def place_items(states, actions, act=None) -> tuple[np.ndarray, np.ndarray]:
    """(states after each item goes where its action says, the level it brings its bin to).

    The one transition rule of the packing, used by the environment and by the checks of the
    dream; rows where `act` is False are left as they are. The item entry is kept: the next
    item is the environment's to draw. Actions are assumed valid.
    """
    states = np.array(states, np.int64)
    actions = np.asarray(actions, np.int64)
    B = states.shape[1] - 1
    rows = np.arange(len(states))
    act = np.ones(len(states), bool) if act is None else np.asarray(act, bool)
    new_bin = actions == 0
    target = np.where(new_bin, states[:, -1], actions + states[:, -1])   # the bin's level after placement
    # one (row, level) pair per row, so plain fancy indexing cannot collide
    take = act & ~new_bin
    states[rows[take], actions[take]] -= 1
    keep = act & (target < B)                                            # a full bin leaves the state
    states[rows[keep], target[keep]] += 1
    return states, target


class BatchBinPacking:
    """Many independent episodes stepped together; the one implementation of the rules.

    invalid_action (one of INVALID_MODES) is the one place that decides what an invalid action
    does: "error" raises ValueError; "penalty" ends that episode with reward -100 minus the last
    step's waste term (ORL's base environment); "incremental" gives the same reward but leaves the
    bins as they are, drops the item, counts the step and goes on (ORL's incremental-waste
    environment); "nearest" plays `nearest_valid` instead (ORL's near-action environment).
    Finished episodes stay frozen (reward 0) until the next reset. info["action"] is the action
    played (after a "nearest" replacement), info["valid"] whether the requested one was valid.
    """

    def __init__(self, config=None, num_envs: int = 1, pictures: bool = False, invalid_action: str = "error"):
        self.config = make_config(config)
        check_invalid_mode(invalid_action)
        if not _is_integer(num_envs) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        _check_item_memory(int(num_envs), self.config.time_horizon)
        if pictures and (self.config.bin_size - 1 > MAX_LEVELS or max(self.config.item_sizes) > MAX_ITEM_SIZE):
            raise ValueError(f"pictures need bin_size <= {MAX_LEVELS + 1} and items <= {MAX_ITEM_SIZE}")
        self.num_envs, self.pictures, self.invalid_action = int(num_envs), pictures, invalid_action
        self.states = None

    def reset(self, seeds: Sequence[int]):
        if isinstance(seeds, np.ndarray) and seeds.dtype.kind in "iu" and seeds.ndim == 1:
            bad = np.flatnonzero(seeds < 0)
        else:
            seeds = np.asarray(seeds, dtype=object).reshape(-1)
            bad = [i for i, s in enumerate(seeds) if not _is_integer(s) or isinstance(s, (bool, np.bool_)) or s < 0]
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"reset: seeds[{i}] must be a non-negative integer (one seed per episode), "
                             f"got {seeds[i]!r}")
        if len(seeds) != self.num_envs:
            raise ValueError(f"reset needs {self.num_envs} seeds, got {len(seeds)}")
        cfg = self.config
        _check_item_memory(self.num_envs, cfg.time_horizon)
        sizes, probs = np.array(cfg.item_sizes), np.array(cfg.item_probabilities)
        # The whole item stream is drawn up front from each episode's own generator.
        self.items = np.stack([np.random.default_rng(int(s)).choice(sizes, size=cfg.time_horizon, p=probs)
                               for s in seeds]).astype(np.int64)
        self.t = 0
        self.states = np.zeros((self.num_envs, cfg.bin_size + 1), np.int64)
        self.states[:, -1] = self.items[:, 0]
        self.done = np.zeros(self.num_envs, bool)
        self.last_reward = np.zeros(self.num_envs)
        self.picture_batch = encode_states(self.states) if self.pictures else None
        return self.observation()

    def observation(self) -> dict:
        self.masks = action_masks(self.states)
        obs = {"state": self.states.copy(), "action_mask": self.masks.copy()}
        if self.pictures:
            obs["picture"] = self.picture_batch.copy()
        return obs

    def step(self, actions):
        if self.states is None:
            raise RuntimeError("call reset() before step()")
        if self.t >= self.config.time_horizon:
            raise RuntimeError("the episodes are over; call reset()")
        B = self.config.bin_size
        actions = _check_actions(actions, self.num_envs, B)
        live = ~self.done
        rows = np.arange(self.num_envs)
        item = self.states[:, -1]
        masks = self.masks
        valid = masks[rows, actions].astype(bool)
        invalid = live & ~valid
        requested_valid = ~invalid & live
        mode = self.invalid_action
        if invalid.any():
            if mode == "error":
                bad = np.flatnonzero(invalid)[0]
                raise ValueError(f"invalid action {actions[bad]} for item {item[bad]} with counts "
                                 f"{self.states[bad, 1:B].tolist()} (episode {bad})")
            if mode == "nearest":
                actions = np.where(invalid, nearest_valid(actions, masks), actions)
                invalid = np.zeros_like(invalid)
        act = live & ~invalid
        new_bin = actions == 0
        reward = rules_rewards(item, actions, B)
        self.states, target = place_items(self.states, actions, act)
        reward = np.where(invalid, INVALID_ACTION_PENALTY + self.last_reward, np.where(act, reward, 0.0))
        self.last_reward = np.where(act, reward, self.last_reward)
        self.t += 1
        ended = self.t >= self.config.time_horizon
        if mode == "penalty":
            ended = ended | invalid
        self.done |= ended
        next_item = self.items[:, self.t] if self.t < self.config.time_horizon else 0
        self.states[:, -1] = np.where(self.done, 0, next_item)
        if self.pictures:
            self._redraw(rows[live], actions[live], target[live], new_bin[live])
        info = {"waste": waste(self.states), "valid": requested_valid, "action": actions}
        return self.observation(), reward, self.done.copy(), info

    def _redraw(self, rows, actions, target, new_bin):
        """Update only what changed: two bands and the item strip of each live episode."""
        B = self.config.bin_size
        pics, states = self.picture_batch, self.states
        for level in (np.where(new_bin, 0, actions), np.minimum(target, B - 1)):
            ok = (level >= 1) & (level < B)
            r, lv = rows[ok], level[ok]
            band = BAND_TABLE[np.minimum(states[r, lv], MAX_BAND_COUNT)]          # (k, 64, 3)
            top = 60 - 2 * lv
            pics[r, top] = band
            pics[r, top + 1] = band
        pics[:, ITEM_ROWS] = ITEM_TABLE[states[:, -1]]


# ---------------------------------------------------------------- gym environments

class _BinPackingGymBase(gym.Env):
    """A gym view of a batch of one episode; subclasses only choose the observation and the
    default `invalid_action` mode, which the constructor's invalid_action= overrides (the core
    decides what each mode does)."""

    metadata = {"render_modes": ["rgb_array"]}
    invalid_action = "penalty"
    pictures = False

    def __init__(self, env_config=None, record: bool = False, record_dir: str = "record",
                 invalid_action: str | None = None):
        super().__init__()
        if invalid_action is not None:
            self.invalid_action = check_invalid_mode(invalid_action)
        self.config = make_config(env_config)
        self.record = bool(record) and self.pictures
        if record and not self.pictures:
            raise ValueError("recording needs a picture environment (BinPacking2DMaskGymEnvironment)")
        self.record_dir = record_dir
        self.core = BatchBinPacking(self.config, 1, pictures=self.pictures, invalid_action=self.invalid_action)
        B = self.config.bin_size
        self.action_space = spaces.Discrete(B)
        self._rng = np.random.default_rng()
        self._episode = None
        self.state_space = spaces.Box(0, np.iinfo(np.int64).max, (B + 1,), np.int64)

    @property
    def state(self) -> np.ndarray:
        return self.core.states[0].copy()

    def reset(self, *, seed=None, return_info=False, options=None):
        # reset(seed=s) plays exactly the items of BatchBinPacking.reset([s]); later resets
        # without a seed continue from a generator seeded by s.
        if seed is not None:
            if not _is_integer(seed) or isinstance(seed, (bool, np.bool_)) or seed < 0:
                raise ValueError(f"reset: seed must be a non-negative integer or None, got {seed!r}")
            seed = int(seed)
            self._rng = np.random.default_rng(seed)
            episode_seed = seed
        else:
            episode_seed = self._rng.integers(2 ** 63)
        obs = self.core.reset([episode_seed])
        self._last = obs
        self._episode = {k: [] for k in RECORD_KEYS} if self.record else None
        out = self._obs(obs)
        return (out, self._info(obs, 0)) if return_info else out

    def _info(self, obs, total_waste, core_info=None):
        info = {"state": obs["state"][0], "waste": int(total_waste), "action_mask": obs["action_mask"][0]}
        if core_info is not None:       # the level played (after a "nearest" replacement), the request's verdict
            info.update(action=int(core_info["action"][0]), valid=bool(core_info["valid"][0]))
        return info

    def step(self, action):
        if self.core.states is None:
            raise RuntimeError("call reset() before step()")
        if self.core.done[0]:
            raise RuntimeError("the episode is over; call reset()")
        before = self._last
        obs, reward, done, info = self.core.step([action])
        if self._episode is not None:       # the action played (a "nearest" replacement, if any)
            for key, value in (("obs", before["picture"][0]), ("action", int(info["action"][0])), ("reward", reward[0]),
                               ("done", done[0]), ("action_mask", before["action_mask"][0]),
                               ("state", before["state"][0])):
                self._episode[key].append(value)
            if done[0]:
                write_episode_npz(self.record_dir, {k: np.asarray(v) for k, v in self._episode.items()})
        self._last = obs
        return self._obs(obs), float(reward[0]), bool(done[0]), self._info(obs, info["waste"][0], info)

    def render(self, mode="rgb_array"):
        return encode_state(self.core.states[0])


class BinPackingGymEnvironment(_BinPackingGymBase):
    """ORL's base environment: observation is the state vector; an invalid action ends the episode
    with reward -100 minus the last step's waste term ("penalty")."""
    invalid_action = "penalty"

    def __init__(self, env_config=None, **kwargs):
        super().__init__(env_config, **kwargs)
        self.observation_space = self.state_space

    def _obs(self, obs):
        return obs["state"][0]


class BinPackingIncrementalWasteGymEnvironment(BinPackingGymEnvironment):
    """ORL's incremental-waste environment: an invalid action gets the base environment's penalty,
    but the bins stay as they are, the item is dropped (the next one arrives), the step counts
    towards the horizon and the episode goes on ("incremental")."""
    invalid_action = "incremental"


class BinPackingNearActionGymEnvironment(BinPackingGymEnvironment):
    """ORL's near-action environment: an invalid action is replaced by the nearest level among the
    existing bins the item fits (ties to the lower level), a new bin only when none fits; the item
    is then placed with the normal reward ("nearest")."""
    invalid_action = "nearest"


def continuous_to_level(action, bin_size: int) -> int:
    """ORL's continuous action: clipped to [0, 1], then int(a * (bin_size - 1)) (computed in the
    action's own float type, as ORL does)."""
    if isinstance(action, (bool, np.bool_)):
        raise ValueError(f"action must be a number in [0, 1], got the bool {action!r}")
    a = np.asarray(action)
    if a.size != 1 or a.dtype.kind not in "iuf":
        raise ValueError(f"action must be one number in [0, 1], got {action!r}")
    a = a.reshape(())
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    if not np.isfinite(a):
        raise ValueError(f"action must be a finite number in [0, 1], got {action!r}")
    return int(np.clip(a, 0, 1) * (bin_size - 1))


class BinPackingContinuousActionEnv(BinPackingNearActionGymEnvironment):
    """ORL's continuous-action environment: a Box(0, 1) action, clipped, turned into the level
    int(a * (B - 1)), then the near-action rule ("nearest")."""

    def __init__(self, env_config=None, **kwargs):
        super().__init__(env_config, **kwargs)
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)

    def step(self, action):
        return super().step(continuous_to_level(action, self.config.bin_size))


class BinPackingActionMaskGymEnvironment(BinPackingNearActionGymEnvironment):
    """ORL's action-mask environment, a near-action environment ("nearest": an invalid action is
    replaced, no penalty, the episode goes on) whose observation is {"action_mask", "real_obs"}
    with the state vector as real_obs."""

    def __init__(self, env_config=None, **kwargs):
        super().__init__(env_config, **kwargs)
        B = self.config.bin_size
        self.observation_space = spaces.Dict({"action_mask": spaces.Box(0, 1, (B,), np.uint8),
                                              "real_obs": self.state_space})

    def _obs(self, obs):
        return {"action_mask": obs["action_mask"][0], "real_obs": obs["state"][0]}


class BinPacking2DMaskGymEnvironment(BinPackingActionMaskGymEnvironment):
    """What the world model sees: real_obs is the 64x64x3 picture. Can record episodes.

    Not one of ORL's environments: it comes from the World Models code, which built it on ORL's
    base environment, so an invalid action ends the episode with the penalty ("penalty", not the
    "nearest" of the action-mask environment it shares its observation with)."""
    pictures = True
    invalid_action = "penalty"

    def __init__(self, env_config=None, **kwargs):
        super().__init__(env_config, **kwargs)
        B = self.config.bin_size
        self.observation_space = spaces.Dict({"action_mask": spaces.Box(0, 1, (B,), np.uint8),
                                              "real_obs": spaces.Box(0, 255, PICTURE_SHAPE, np.uint8)})

    def _obs(self, obs):
        return {"action_mask": obs["action_mask"][0], "real_obs": obs["picture"][0]}


ENV_ID = "BinPackingEnv-v0"
if ENV_ID not in gym.envs.registry:
    # gym 0.25's passive checker uses np.bool8, which numpy 2 removed; our tests check the API.
    gym.register(id=ENV_ID, entry_point=f"{__name__}:BinPacking2DMaskGymEnvironment", disable_env_checker=True)


# ---------------------------------------------------------------- keyboard play

def main(argv=None):
    def int_in(low, high):
        """argparse type: an integer in [low, high] (stages_common's types import this module)."""
        def parse(text):
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
            if not low <= value <= high:
                raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
            return value
        return parse

    parser = argparse.ArgumentParser(description="Play online bin packing with the keyboard.")
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    parser.add_argument("--seed", type=int_in(0, 2 ** 32 - 2), default=0)
    parser.add_argument("--record", action="store_true", help="write the finished episode to --record_dir")
    parser.add_argument("--record_dir", default="record")
    parser.add_argument("--scale", type=int_in(1, 64), default=8, help="pixels per picture pixel")
    args = parser.parse_args(argv)
    from play import play, require_display
    require_display("bin_packing_environment.py")    # one line and exit 1, not a hang, with no screen
    env = BinPacking2DMaskGymEnvironment(args.preset, record=args.record, record_dir=args.record_dir)
    play(env, seed=args.seed, scale=args.scale)


if __name__ == "__main__":
    main()
