"""The dream: bin packing as M imagines it, where the controller is trained.

Reset samples z from the first frames' encodings (initial_z.json); each step feeds (z, action)
to M and samples the next z from its mixture at temperature tau, and returns M's predicted
reward, and the valid actions M reads from the sampled next z (probability > 0.5; opening a
new bin is always valid).
The picture carries no clock, so a dream ends at the preset's horizon (or earlier if M's done
head says so). With `starts` (a dream_starts.npz from dream_starts.py), a dream instead begins
at a real state: V's z of a real picture, M's h and c after the real steps that led there, and
the real valid actions; short dreams from such states stay near where the real problem goes.
`rollout_dream` can score a dream by the waste of its first and last packings as V decodes them
(`picture_vae`) instead of M's summed rewards, and give every population member the same dreams
(`common_random_numbers`). `BatchDream` runs many dreams at once for CMA-ES; `BinPackingDream`
is the gym view of one dream.

    python dream_env.py [--temperature 1.0 --seed 0]   # play the dream with the keyboard
"""
from __future__ import annotations

import argparse
import json
import zipfile
from dataclasses import dataclass

import quiet  # noqa: F401  (before gym: its unmaintained-banner hidden)
import gym
import numpy as np
from gym import spaces

from bin_packing_environment import rules_rewards
from controller import DEFAULT_INITIAL_Z, DEFAULT_RNN, DEFAULT_VAE, load_rnn, load_vae


def load_initial_z(path: str = DEFAULT_INITIAL_Z) -> dict:
    """{"mu", "logvar": (n, z), "action_mask": (n, A) or absent} of recorded first frames."""
    try:
        with open(path) as f:
            data = json.load(f)
        out = {"mu": np.asarray(data["mu"], np.float32), "logvar": np.asarray(data["logvar"], np.float32)}
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"cannot read initial z file {path}: {type(e).__name__}: {e}") from None
    if out["mu"].ndim != 2 or out["mu"].shape != out["logvar"].shape or len(out["mu"]) == 0:
        raise ValueError(f"{path}: mu and logvar must be non-empty (n, z_size) arrays of the same shape")
    if "action_mask" in data:
        out["action_mask"] = np.asarray(data["action_mask"], np.uint8)
    return out


STARTS_KEYS = ("z", "h", "c", "action_mask")


def load_dream_starts(path: str, rnn=None, rnn_path: str | None = None) -> dict:
    """Real states to start dreams from (dream_starts.py); refuses a file made with another M."""
    from stages_common import sha256_file
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in STARTS_KEYS + ("rnn_sha256", "real_steps")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read dream starts file {path}: {type(e).__name__}: {e}") from None
    for k in ("z", "h", "c"):
        out[k] = out[k].astype(np.float32)
    n = len(out["z"])
    if n == 0 or any(out[k].ndim != 2 or len(out[k]) != n for k in STARTS_KEYS):
        raise ValueError(f"{path}: z, h, c and action_mask must be non-empty 2-D arrays with the same rows")
    if rnn is not None:
        want = {"z": rnn.z_size, "h": rnn.hidden_size, "c": rnn.hidden_size, "action_mask": rnn.action_size}
        bad = [f"{k} has width {out[k].shape[1]}, M needs {w}" for k, w in want.items() if out[k].shape[1] != w]
        if bad:
            raise ValueError(f"{path}: " + "; ".join(bad))
    if rnn_path is not None and str(out["rnn_sha256"]) != sha256_file(rnn_path):
        raise ValueError(f"{path} holds M states of another M than {rnn_path}: run dream_starts.py again")
    return out


class BatchDream:
    """n dreams stepped together in numpy, begun from initial_z's first frames or from real states."""

    def __init__(self, rnn, initial_z: dict, temperature: float = 1.0, time_horizon: int = 1000,
                 starts: dict | None = None, empty_start_fraction: float = 0.0, z_noise: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if z_noise < 0:
            raise ValueError(f"z_noise must be >= 0, got {z_noise}")
        self.z_noise = float(z_noise)           # scale of M's Gaussian noise (RNNNumpy.sample_next_z)
        if not 0.0 <= empty_start_fraction <= 1.0:
            raise ValueError(f"empty_start_fraction must be in [0, 1], got {empty_start_fraction}")
        if empty_start_fraction and starts is None:
            raise ValueError("empty_start_fraction mixes empty packings into dreams begun at recorded states: "
                             "it needs starts")
        # Recorded states are drawn uniformly over whole episodes, so early packings are rare among
        # them; a share of dreams from the empty packing lets C see the start of an episode too.
        self.empty_start_fraction = float(empty_start_fraction)
        if initial_z["mu"].shape[1] != rnn.z_size:
            raise ValueError(f"initial z has size {initial_z['mu'].shape[1]}, M expects {rnn.z_size}")
        self.rnn, self.initial_z, self.starts = rnn, initial_z, starts
        self.temperature, self.time_horizon = float(temperature), int(time_horizon)

    def reset(self, n: int, rng: np.random.Generator) -> dict:
        self.rng = rng
        self.t = 0
        self.done = np.zeros(n, bool)
        if self.starts is not None:
            pick = rng.integers(len(self.starts["z"]), size=n)
            state = [self.starts[k][pick] for k in ("z", "h", "c", "action_mask")]
            if self.empty_start_fraction:
                empty = rng.random(n) < self.empty_start_fraction
                state = [np.where(empty[:, None], new, old) for new, old in zip(self._empty_starts(n, rng), state)]
        else:
            state = self._empty_starts(n, rng)
        self.z, self.h, self.c, mask = state
        self.mask = mask.copy()
        self.mask[:, 0] = 1
        return self.observation()

    def _empty_starts(self, n: int, rng) -> list:
        """[z, h, c, mask] of n dreams begun at first frames of initial_z (an empty packing)."""
        pick = rng.integers(len(self.initial_z["mu"]), size=n)
        z = self.rnn.first_z(self.initial_z["mu"][pick], self.initial_z["logvar"][pick], rng)
        h, c = self.rnn.initial_state(n)
        if "action_mask" in self.initial_z:
            mask = self.initial_z["action_mask"][pick]
        else:                                   # an empty packing: only a new bin is possible
            mask = np.zeros((n, self.rnn.action_size), np.uint8)
        return [z, h, c, mask]

    def observation(self) -> dict:
        return {"z": self.z, "h": self.h, "action_mask": self.mask}

    def step(self, actions):
        actions = np.asarray(actions)
        self.h, self.c, out = self.rnn.step(self.z, actions, self.h, self.c)
        reward = np.where(self.done, 0.0, out["reward"])
        self.z = self.rnn.sample_next_z(out, self.temperature, self.rng, self.z_noise)
        self.mask = (self.rnn.mask_prob(self.h, self.z) > 0.5).astype(np.uint8)
        self.mask[:, 0] = 1
        self.t += 1
        self.done = self.done | (out["done_prob"] > 0.5) | (self.t >= self.time_horizon)
        info = {"done_prob": out["done_prob"]}
        if "next_item" in out:                   # the mlp transition draws the next item itself
            info["next_item"] = out["next_item"]
        return self.observation(), reward, self.done.copy(), info


class CommonRandomNumbers:
    """A Generator stand-in giving dream e of every population member the same random draws.

    Rows are laid out member-major (row = member * episodes + e), so each draw is made for one
    member's rows and tiled. Candidates are then compared on the same dreams (same starts, same
    sampled items as far as their actions agree), so CMA-ES ranks them by their play, not by luck.
    """

    def __init__(self, rng: np.random.Generator, copies: int):
        self.rng, self.copies = rng, int(copies)

    def _tiled(self, draw, size):
        size = (size,) if np.isscalar(size) else tuple(size)
        if size[0] % self.copies:
            raise ValueError(f"{size[0]} rows do not split into {self.copies} equal copies")
        one = draw((size[0] // self.copies,) + size[1:])
        return np.tile(one, (self.copies,) + (1,) * (len(size) - 1))

    def random(self, size):
        return self._tiled(self.rng.random, size)

    def standard_normal(self, size):
        return self._tiled(self.rng.standard_normal, size)

    def gumbel(self, size):
        return self._tiled(lambda s: self.rng.gumbel(size=s), size)

    def integers(self, high, size):
        return self._tiled(lambda s: self.rng.integers(high, size=s), size)


def picture_waste(vae, z, bin_size: int) -> np.ndarray:
    """Waste (free space in open bins) of the packing V draws for z, read off the decoded picture."""
    from bin_packing_environment import decode_pictures, waste
    return waste(decode_pictures(vae.decode(z), bin_size)).astype(np.float64)


def picture_steps(horizon: int, every: int | None) -> list[int]:
    """Dream steps whose pictures are read for the end waste: the last, or with `every` one step
    in `every` over the second half of the horizon, ending at the last."""
    if not every:
        return [horizon]
    return [t for t in range(horizon // 2 + 1, horizon + 1) if (horizon - t) % every == 0]


def check_rules_rnn(rnn) -> None:
    """The rules reward reads each dreamed item off M's item head: only the mlp transition has one."""
    if getattr(rnn, "transition", "mdn") != "mlp":
        raise ValueError("--dream_reward rules needs an M with the mlp transition (rnn_train.py --transition mlp): "
                         "its item head draws the dream's items")


def rollout_dream(controller, params, dream: BatchDream, episodes: int, rng: np.random.Generator,
                  sample_actions: bool = False, common_random_numbers: bool = False, picture_vae=None,
                  picture_every: int | None = None, rules_vae=None):
    """Total dreamed reward (P, episodes) of P parameter vectors, all dreams stepped together.

    With common_random_numbers, every member plays the same `episodes` dreams (CommonRandomNumbers).
    With picture_vae, a dream's reward is not the sum of M's reward head but the waste of the first
    dreamed packing minus that of the last, both read off V's decoded pictures: the real rewards
    telescope to exactly that (+item into a bin, -(bin size - item) for a new one), so the per-step
    errors of M's reward head cannot add up. With picture_every, the end waste is the mean over the
    pictures of `picture_steps`: each decoded picture misreads the waste by ~10 units, the dream's
    drift over 100 steps is a few, so averaging ten pictures ranks policies far better per dream.
    With rules_vae (an M with the mlp transition, whose item head draws each next item), a step's
    reward is the packing's rule (`rules_rewards`) for the dreamed item and the action C chose among
    M's valid ones; the first item is read off V's decoded start picture. No picture misreading
    and no item lost by M's step can then add to a dream's score, but a bin M invents is free to
    fill, and C learns to make M invent them (docs/experiments.md, "Scoring each dreamed step by
    the rules"): it does not teach.
    """
    if rules_vae is not None and picture_vae is not None:
        raise ValueError("a dream is scored by its pictures or by the rules, not both")
    params = np.atleast_2d(np.asarray(params, np.float32))
    P = len(params)
    if common_random_numbers:
        rng = CommonRandomNumbers(rng, P)
    obs = dream.reset(P * episodes, rng)
    bin_size = dream.rnn.action_size
    first_z = last_z = obs["z"]
    read = set(picture_steps(dream.time_horizon, picture_every))
    end_waste = []
    total = np.zeros(P * episodes)
    done = np.zeros(P * episodes, bool)
    if rules_vae is not None:
        check_rules_rnn(dream.rnn)
        from bin_packing_environment import decode_pictures
        item = decode_pictures(rules_vae.decode(first_z), bin_size)[:, -1]
    while not done.all():
        x = np.concatenate([obs["z"], obs["h"]], axis=1).reshape(P, episodes, -1)
        mask = obs["action_mask"].reshape(P, episodes, -1)
        actions = controller.act(params, x, mask, rng if sample_actions else None).reshape(-1)
        was_done = done
        obs, reward, done, info = dream.step(actions)
        if rules_vae is not None:
            reward = np.where(was_done, 0.0, rules_rewards(item, actions, bin_size))
            item = info["next_item"]
        total += reward
        if picture_vae is None:
            continue
        last_z = np.where(was_done[:, None], last_z, obs["z"])   # a dream that ended keeps its last z
        if dream.t in read:
            end_waste.append(picture_waste(picture_vae, last_z, bin_size))
    if picture_vae is not None:
        if len(end_waste) < len(read):           # every dream ended early: the rest see its last picture
            end_waste += [picture_waste(picture_vae, last_z, bin_size)] * (len(read) - len(end_waste))
        total = picture_waste(picture_vae, first_z, bin_size) - np.mean(end_waste, axis=0)
    return total.reshape(P, episodes), dream.t * P * episodes


# ---------------------------------------------------------------- what a dream is

@dataclass(frozen=True)
class DreamSpec:
    """Everything that makes one dream differ from another, in one place: train.py trains C in
    it, analysis.dream_fidelity measures it and BinPackingDream lets a person play it, so the
    three see the same dream from the same flags (add_dream_arguments). The dream's length is
    the caller's (train.py --time_horizon, dream_fidelity --ranking_horizons)."""
    temperature: float = 1.0            # World Models' tau
    z_noise: float = 1.0                # scale of the Gaussian noise of M's next z
    reward: str = "m"                   # "m": M's reward head summed; "picture": waste read off V's pictures;
                                        # "rules": the packing's reward for each dreamed item and action
    picture_every: int = 0
    starts: str | None = None           # dream_starts.npz: begin at recorded real states
    empty_start_fraction: float = 0.0
    common_random_numbers: bool = False

    @classmethod
    def from_args(cls, args) -> "DreamSpec":
        """The spec of flags parsed with add_dream_arguments (checked by dream_spec)."""
        return cls(**{field: getattr(args, dest) for field, dest in DREAM_FLAGS.items()})

    def batch_dream(self, rnn, initial_z: dict, horizon: int, rnn_path: str | None = None) -> BatchDream:
        if self.reward == "rules":
            check_rules_rnn(rnn)
        starts = load_dream_starts(self.starts, rnn, rnn_path) if self.starts else None
        return BatchDream(rnn, initial_z, self.temperature, horizon, starts, self.empty_start_fraction, self.z_noise)

    def rollout(self, controller, params, dream: BatchDream, episodes: int, rng: np.random.Generator,
                vae=None, sample_actions: bool = False):
        """rollout_dream with this dream's scoring; vae is needed unless reward == "m"."""
        if self.reward != "m" and vae is None:
            raise ValueError(f"a dream scored by --dream_reward {self.reward} needs V (--vae)")
        return rollout_dream(controller, params, dream, episodes, rng, sample_actions=sample_actions,
                             common_random_numbers=self.common_random_numbers,
                             picture_vae=vae if self.reward == "picture" else None, picture_every=self.picture_every,
                             rules_vae=vae if self.reward == "rules" else None)


# argparse dest of each DreamSpec field
DREAM_FLAGS = {"temperature": "temperature", "z_noise": "z_noise", "reward": "dream_reward",
               "picture_every": "picture_every", "starts": "dream_starts",
               "empty_start_fraction": "empty_start_fraction", "common_random_numbers": "common_random_numbers"}


def add_dream_arguments(p: argparse.ArgumentParser) -> None:
    """The flags that describe a dream, with the same names, defaults and help in every script."""
    from stages_common import non_negative_float, non_negative_int, positive_float
    g = p.add_argument_group("the dream")
    g.add_argument("--temperature", type=positive_float, default=1.0, help="M's sampling temperature tau (World Models: 1)")
    g.add_argument("--z_noise", type=non_negative_float, default=1.0,
                   help="scale of the Gaussian noise of M's next z (1: World Models; 0: the sampled component's mean)")
    g.add_argument("--dream_reward", choices=["m", "picture", "rules"], default="m",
                   help="m: the sum of M's reward head (World Models); picture: the waste of the first dreamed "
                        "packing minus that of the last, read off V's decoded pictures (needs --vae); rules: "
                        "each step's reward by the packing's rule for M's drawn item and the action (needs --vae "
                        "and an M with --transition mlp; C exploits it, see docs/experiments.md)")
    g.add_argument("--picture_every", type=non_negative_int, default=0,
                   help="with --dream_reward picture: 0 reads the last picture only; N > 0 averages the waste "
                        "of one picture in N over the dream's second half (less noise, more decoding)")
    g.add_argument("--dream_starts", default=None,
                   help="begin each dream at a recorded real state (dream_starts.py) instead of an empty packing")
    g.add_argument("--empty_start_fraction", type=non_negative_float, default=0.0,
                   help="with --dream_starts: share of dreams begun at the empty packing instead (default 0)")
    g.add_argument("--common_random_numbers", action="store_true",
                   help="every candidate (or policy) plays the same dreams: same starts and random draws")


def dream_spec(parser: argparse.ArgumentParser, args) -> DreamSpec:
    """The DreamSpec of parsed flags; combinations that make no sense are parser errors."""
    if args.picture_every and args.dream_reward != "picture":
        parser.error("--picture_every needs --dream_reward picture")
    if args.empty_start_fraction > 1:
        parser.error(f"--empty_start_fraction must be in [0, 1], got {args.empty_start_fraction}")
    if args.empty_start_fraction and not args.dream_starts:
        parser.error("--empty_start_fraction needs --dream_starts (without them every dream begins empty)")
    return DreamSpec.from_args(args)


class BinPackingDream(gym.Env):
    """One dream as a gym environment. With a VAE, real_obs is the decoded picture of z."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, rnn_path=DEFAULT_RNN, initial_z_path=DEFAULT_INITIAL_Z, vae_path=None,
                 temperature=1.0, time_horizon=1000, spec: DreamSpec | None = None):
        super().__init__()
        self.rnn = load_rnn(rnn_path)
        self.vae = load_vae(vae_path) if vae_path else None
        self.spec = spec or DreamSpec(temperature=temperature)
        self.dream = self.spec.batch_dream(self.rnn, load_initial_z(initial_z_path), time_horizon, rnn_path)
        A, Z, H = self.rnn.action_size, self.rnn.z_size, self.rnn.hidden_size
        self.action_space = spaces.Discrete(A)
        obs_spaces = {"action_mask": spaces.Box(0, 1, (A,), np.uint8),
                      "z": spaces.Box(-np.inf, np.inf, (Z,), np.float32),
                      "h": spaces.Box(-1, 1, (H,), np.float32)}
        if self.vae is not None:
            obs_spaces["real_obs"] = spaces.Box(0, 255, (64, 64, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self._rng = np.random.default_rng()

    def _obs(self, obs):
        out = {k: v[0].copy() for k, v in obs.items()}
        if self.vae is not None:
            out["real_obs"] = self.vae.decode(obs["z"])[0]
        return out

    def _info(self, obs) -> dict:
        """With a VAE, the packing its decoded picture shows (what keyboard play draws and reads)."""
        if self.vae is None:
            return {}
        from bin_packing_environment import decode_picture
        return {"state": decode_picture(obs["real_obs"], self.action_space.n)}

    def reset(self, *, seed=None, return_info=False, options=None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        obs = self._obs(self.dream.reset(1, self._rng))
        return (obs, self._info(obs)) if return_info else obs

    def step(self, action):
        if not 0 <= int(action) < self.action_space.n:
            raise ValueError(f"action must be in 0..{self.action_space.n - 1}, got {action}")
        obs, reward, done, info = self.dream.step([int(action)])
        obs = self._obs(obs)
        return obs, float(reward[0]), bool(done[0]), {"done_prob": float(info["done_prob"][0]), **self._info(obs)}

    def render(self, mode="rgb_array"):
        if self.vae is None:
            raise ValueError("rendering a dream needs a VAE (vae_path)")
        return self.vae.decode(self.dream.z)[0]


def main(argv=None):
    from stages_common import positive_int, seed_int
    parser = argparse.ArgumentParser(description="Play the dream with the keyboard (pictures decoded by V).")
    parser.add_argument("--rnn", default=DEFAULT_RNN)
    parser.add_argument("--vae", default=DEFAULT_VAE)
    parser.add_argument("--initial_z", default=DEFAULT_INITIAL_Z)
    parser.add_argument("--time_horizon", type=positive_int, default=1000, help="steps of one dream")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--scale", type=positive_int, default=8, help="screen pixels per picture pixel")
    add_dream_arguments(parser)                      # the same dream C trains in, from the same flags
    args = parser.parse_args(argv)
    spec = dream_spec(parser, args)
    from play import play, require_display
    require_display("dream_env.py")                  # one line and exit 1, not a crash, with no screen
    try:
        env = BinPackingDream(args.rnn, args.initial_z, args.vae, time_horizon=args.time_horizon, spec=spec)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    play(env, seed=args.seed, scale=args.scale)


if __name__ == "__main__":
    main()
