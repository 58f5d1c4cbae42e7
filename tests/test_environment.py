import json
import os
import subprocess
import sys

import gym
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import baselines
import bin_packing_environment as E

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = dict(E.PRESETS["perfect_pack"], time_horizon=60)


def run_random_batch(config, n, seed, pictures=False, invalid_action="error"):
    """Play n episodes with random valid actions; yields (obs, actions, reward, done, info)."""
    env = E.BatchBinPacking(config, n, pictures=pictures, invalid_action=invalid_action)
    obs = env.reset(E.episode_seeds(seed, n))
    rng = np.random.default_rng(seed)
    done = np.zeros(n, bool)
    while not done.all():
        actions = baselines.random_valid(obs["state"], obs["action_mask"], rng)
        new, reward, done, info = env.step(actions)
        yield obs, actions, reward, done, info
        obs = new


# ---------------------------------------------------------------- configs and actions

@pytest.mark.parametrize("bad, field", [
    (dict(item_probabilities=[0.5] * 9), "item_probabilities"),
    (dict(item_probabilities=[-0.1, 1.1] + [0] * 7), "item_probabilities"),
    (dict(item_sizes=[1, 2, 3, 4, 5, 6, 7, 8, 30]), "item_sizes"),
    (dict(item_sizes=[1, 2, 3, 4, 5, 6, 7, 8, 2.5]), "item_sizes"),
    (dict(item_sizes=[1, 2]), "item_probabilities"),
    (dict(time_horizon=0), "time_horizon"),
    (dict(bin_size=1.5), "bin_size"),
    (dict(colour="red"), "colour"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        E.make_config(bad)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        E.BinPackingGymEnvironment("nope")


@pytest.mark.parametrize("action", [-1, 30, 2.5, float("nan"), "a"])
def test_invalid_action_index_raises(action):
    env = E.BinPackingGymEnvironment()
    env.reset(seed=0)
    with pytest.raises(ValueError):
        env.step(action)


def test_invalid_action_penalty_and_nearest():
    env = E.BinPackingGymEnvironment()
    env.reset(seed=0)
    _, r0, _, _ = env.step(0)
    _, r, done, _ = env.step(29)                  # no bin at level 29
    assert done and r == E.INVALID_ACTION_PENALTY + r0
    near = E.BinPackingNearActionGymEnvironment()
    near.reset(seed=0)
    near.step(0)
    _, r, done, info = near.step(29)              # nearest valid: the only open bin (if it fits) or new bin
    assert not done and info["state"].sum() >= 1


# ---------------------------------------------------------------- semantics

def test_reward_rules_and_waste():
    env = E.BatchBinPacking("perfect_pack", 1)
    obs = env.reset([5])
    item = obs["state"][0, -1]
    _, r, _, info = env.step([0])
    assert r[0] == -(30 - item) and info["waste"][0] == 30 - item
    item2 = env.states[0, -1]
    if item + item2 <= 30:
        _, r, _, _ = env.step([item])
        assert r[0] == item2


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2 ** 32), preset=st.sampled_from(sorted(E.PRESETS)))
def test_invariants_over_random_play(seed, preset):
    config = dict(E.PRESETS[preset], time_horizon=120)
    B = config["bin_size"]
    placed = np.zeros(4)
    total = np.zeros(4)
    for obs, actions, reward, done, info in run_random_batch(config, 4, seed):
        state = obs["state"]
        assert (state >= 0).all()
        # the mask is exactly: new bin, or a level with a bin where the item fits
        for i in range(4):
            expect = [a == 0 or (state[i, a] > 0 and a + state[i, -1] <= B) for a in range(B)]
            assert obs["action_mask"][i].tolist() == [int(x) for x in expect]
        placed += state[:, -1]
        total += reward
    # volume is conserved: what was placed equals what the bins hold (full bins hold B)
    # and the total reward is minus the final waste
    assert np.allclose(total, -info["waste"])
    bins_volume = placed + info["waste"]
    assert np.all(bins_volume % B == 0)


def test_full_bin_leaves_the_state():
    env = E.BatchBinPacking(dict(bin_size=4, item_sizes=[2], item_probabilities=[1], time_horizon=3), 1)
    env.reset([0])
    env.step([0])
    assert env.states[0, 2] == 1
    _, r, _, info = env.step([2])
    assert r[0] == 2 and env.states[0, 1:4].sum() == 0 and info["waste"][0] == 0


def test_same_seed_same_items_and_no_global_state():
    a, b = E.BinPackingGymEnvironment(), E.BinPackingGymEnvironment()
    np.random.seed(1)
    sa = a.reset(seed=7)
    np.random.seed(2)
    sb = b.reset(seed=7)
    assert (sa == sb).all()
    assert (a.core.items == b.core.items).all()
    c = E.BinPackingGymEnvironment()
    c.reset(seed=8)
    assert not (a.core.items == c.core.items).all()


def test_batch_agrees_with_single_env_step_for_step():
    seeds = E.episode_seeds(3, 3)
    batch = E.BatchBinPacking(SHORT, 3, pictures=True)
    bobs = batch.reset(seeds)
    singles = [E.BinPacking2DMaskGymEnvironment(SHORT) for _ in seeds]
    sobs = [env.reset(seed=int(s)) for env, s in zip(singles, seeds)]
    rng = np.random.default_rng(0)
    for _ in range(SHORT["time_horizon"]):
        for i, o in enumerate(sobs):
            assert (o["real_obs"] == bobs["picture"][i]).all()
            assert (o["action_mask"] == bobs["action_mask"][i]).all()
        actions = baselines.random_valid(bobs["state"], bobs["action_mask"], rng)
        bobs, br, bd, binfo = batch.step(actions)
        for i, env in enumerate(singles):
            sobs[i], r, d, info = env.step(int(actions[i]))
            assert r == br[i] and d == bd[i] and info["waste"] == binfo["waste"][i]
            assert (info["state"] == bobs["state"][i]).all()
    assert bd.all()


def test_gym_registration_and_observation_space():
    env = gym.make(E.ENV_ID)
    obs = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["real_obs"].dtype == np.uint8 and obs["real_obs"].shape == (64, 64, 3)
    obs, r, done, info = env.step(0)
    assert {"state", "waste", "action_mask"} <= set(info)


# ---------------------------------------------------------------- the picture

@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(0, E.MAX_BAND_COUNT), min_size=29, max_size=29),
       item=st.integers(0, 9))
def test_decode_inverts_encode(counts, item):
    state = np.array([0] + counts + [item])
    picture = E.encode_state(state)
    assert picture.dtype == np.uint8 and picture.shape == (64, 64, 3)
    assert (E.decode_picture(picture) == state).all()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 32))
def test_decode_inverts_encode_on_reachable_states(seed):
    for obs, *_ in run_random_batch(SHORT, 2, seed, pictures=True):
        assert (E.decode_pictures(obs["picture"]) == obs["state"]).all()
        assert (E.encode_states(obs["state"]) == obs["picture"]).all()   # incremental drawing is exact


def test_band_saturates_beyond_max_count():
    state = np.zeros(31, int)
    state[5] = E.MAX_BAND_COUNT + 100
    assert E.decode_picture(E.encode_state(state))[5] == E.MAX_BAND_COUNT


def test_decode_tolerates_noise():
    rng = np.random.default_rng(0)
    state = np.array([0] + list(rng.integers(0, 40, 29)) + [7])
    noisy = E.encode_state(state).astype(int) + rng.integers(-12, 13, (64, 64, 3))
    assert (E.decode_picture(np.clip(noisy, 0, 255).astype(np.uint8)) == state).all()


def test_nearest_band_read_is_exact_on_every_count_and_reads_a_faint_ghost_as_empty():
    counts = np.arange(E.MAX_BAND_COUNT + 1)
    counts = np.concatenate([counts, np.zeros(-len(counts) % 29, int)]).reshape(-1, 29)   # every count once
    states = np.concatenate([np.zeros((len(counts), 1), int), counts, np.arange(len(counts))[:, None] % 11], 1)
    pictures = E.encode_states(states)
    assert (E.decode_pictures(pictures, bands="nearest_band") == states).all()
    assert (E.decode_pictures(pictures) == states).all()
    # V's typical slip: a faint grey ghost where a level is empty; the nearest colour per segment is
    # the darkest blue (a bin), the nearest drawing of the whole band is no bin
    state = np.zeros(31, int)
    state[[3, 10]] = [2, 45]
    picture = E.encode_state(state)
    rows = E._band_rows(7)
    picture[rows, 0:2] = (65, 71, 82)
    assert E.decode_picture(picture)[7] == 1
    assert (E.decode_pictures(picture[None], bands="nearest_band")[0] == state).all()
    with pytest.raises(ValueError, match="bands must be one of"):
        E.decode_pictures(picture[None], bands="nearest")


# ---------------------------------------------------------------- recording

def test_recording_writes_episode_atomically(tmp_path):
    env = E.BinPacking2DMaskGymEnvironment(SHORT, record=True, record_dir=str(tmp_path))
    obs = env.reset(seed=1)
    done, n = False, 0
    while not done:
        obs, r, done, info = env.step(int(np.flatnonzero(obs["action_mask"])[-1]))
        n += 1
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".npz")
    ep = E.load_episode_npz(str(tmp_path / files[0]))
    assert ep["obs"].shape == (n, 64, 64, 3) and ep["obs"].dtype == np.uint8
    assert ep["action_mask"].shape == (n, 30) and ep["state"].shape == (n, 31)
    assert ep["done"][-1] and not ep["done"][:-1].any()
    assert (E.decode_pictures(ep["obs"]) == ep["state"]).all()
    assert ep["reward"].sum() == -info["waste"]


def test_corrupt_episode_file_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="corrupt episode file"):
        E.load_episode_npz(str(path))


# ---------------------------------------------------------------- baselines

def test_baselines_are_valid_and_ordered():
    res = {name: baselines.evaluate_policy(p, "perfect_pack", 200, seed=5).mean()
           for name, p in baselines.POLICIES.items()}
    assert -35 < res["best_fit"] < -20
    assert res["sum_of_squares"] > res["best_fit"] - 3
    assert res["random"] < -200


def test_baseline_script_prints_json_last_line():
    out = subprocess.run([sys.executable, "baseline_best_fit.py", "--episodes", "50", "--seed", "1"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["policy"] == "best_fit" and result["episodes"] == 50 and result["stderr"] > 0


def test_baseline_script_rejects_bad_flags():
    proc = subprocess.run([sys.executable, "baseline_sum_of_squares.py", "--episodes", "-3"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--episodes" in proc.stderr


# ---------------------------------------------------------------- keyboard play

def test_keyboard_play_with_posted_keys():
    import pygame
    import play

    env = E.BinPacking2DMaskGymEnvironment(SHORT)
    pygame.init()
    pygame.display.set_mode((10, 10))
    expected = E.BinPacking2DMaskGymEnvironment(SHORT)
    expected.reset(seed=4)
    first = expected.state[-1]
    expected.step(0)                                        # 'n'
    second = expected.state[-1]
    fits = first + second <= 30
    if fits:
        expected.step(int(first))                           # typed level + Enter
    keys = [pygame.K_n, pygame.K_2, pygame.K_9, pygame.K_RETURN]      # level 29: refused
    keys += [getattr(pygame, f"K_{d}") for d in str(first)] + [pygame.K_RETURN] if fits else []
    keys += [pygame.K_q]
    for k in keys:
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=k))
    game = play.play(env, seed=4, scale=2, max_frames=50, fps=1000)
    assert (env.state == expected.state).all()
    assert game.steps == (2 if fits else 1) and not game.done


def test_game_arrows_and_space():
    import play

    game = play.Game(E.BinPacking2DMaskGymEnvironment(SHORT), seed=4)
    game.key("n")
    game.key("space")                                       # no cursor yet: refused
    assert game.steps == 1 and "not a valid" in game.message
    game.key("right")
    assert game.cursor == game.valid_levels()[0]
    game.key("space")
    assert game.steps == 2


def test_nearest_colour_matches_the_direct_distance_on_segment_means():
    """The matrix-product form picks the colour (and breaks ties) as the plain |p - c|^2 does."""
    from bin_packing_environment import BACKGROUND, PALETTE, _nearest_colour
    rng = np.random.default_rng(0)
    colours = np.concatenate([BACKGROUND[None], PALETTE]).astype(np.float64)
    near = colours[rng.integers(len(colours), size=20000)] + rng.integers(-40, 41, size=(20000, 3))
    pixels = np.concatenate([near, rng.integers(0, 256, size=(20000, 3))]).clip(0, 255)
    pixels = (pixels * 4 + rng.integers(0, 4, size=pixels.shape)) / 4   # means of 2x2 segments
    direct = ((pixels[:, None, :] - colours) ** 2).sum(-1).argmin(-1)
    assert (_nearest_colour(pixels.astype(np.float32)) == direct).all()
