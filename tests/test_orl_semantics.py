"""Each environment variant against ORL's rules (awslabs/or-rl-benchmarks, Bin Packing).

The rules, as ORL's environments play them (B the capacity, N_h the bins at level h):
- a in 0..B-1 is valid iff a == 0 or (N_a > 0 and a + item <= B); an index >= B is an error;
- a new bin gives -(B - item) and its waste term is B - item; an insertion gives +item and its
  waste term is -item; the waste term is 0 at the start of an episode;
- base ("penalty"): an invalid action gives -100 - waste term and ends the episode;
- incremental waste: the same reward, the bins stay, the step counts, the next item arrives;
- near action: an invalid action becomes the nearest level among the existing bins the item fits
  (ties to the lower level), 0 only when none fits; the normal reward follows;
- continuous: clip to [0, 1], int(a * (B - 1)), then the near-action rule;
- action mask: a near-action environment with observation {"action_mask", "real_obs"};
- the World Models picture environment (not ORL's) keeps the base environment's penalty.

`OrlReference` restates these rules one plain Python step at a time; it shares nothing with the
environment but the item stream (the environment's input).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import bin_packing_environment as E

PENALTY = -100

# class -> (its invalid-action mode according to ORL / the World Models code, its observation)
VARIANTS = {
    "BinPackingGymEnvironment": (E.BinPackingGymEnvironment, "penalty", "state"),
    "BinPackingIncrementalWasteGymEnvironment": (E.BinPackingIncrementalWasteGymEnvironment, "incremental", "state"),
    "BinPackingNearActionGymEnvironment": (E.BinPackingNearActionGymEnvironment, "nearest", "state"),
    "BinPackingContinuousActionEnv": (E.BinPackingContinuousActionEnv, "nearest", "state"),
    "BinPackingActionMaskGymEnvironment": (E.BinPackingActionMaskGymEnvironment, "nearest", "mask"),
    "BinPacking2DMaskGymEnvironment": (E.BinPacking2DMaskGymEnvironment, "penalty", "picture"),
}


class OrlReference:
    """ORL's transition, reward and end of episode, one step at a time, from the rule statements."""

    def __init__(self, B, T, mode, items, levels=None, t=0, waste=0):
        self.B, self.T, self.mode, self.items = B, T, mode, list(items)
        self.levels = list(levels) if levels is not None else [0] * B      # index 0 unused
        self.t, self.waste = t, waste
        self.item = self.items[t]

    def valid(self, a):
        return a == 0 or (self.levels[a] > 0 and a + self.item <= self.B)

    def mask(self):
        return [int(self.valid(a)) for a in range(self.B)]

    def nearest(self, a):
        fits = [x for x in range(1, self.B) if self.levels[x] > 0 and x + self.item <= self.B]
        if not fits:
            return 0
        return min(fits, key=lambda x: abs(x - a))        # min keeps the first: the lower level

    def place(self, a):
        if a == 0:
            self.levels[self.item] += 1
            self.waste = self.B - self.item
        else:
            self.levels[a] -= 1
            if a + self.item < self.B:
                self.levels[a + self.item] += 1
            self.waste = -self.item
        return -self.waste

    def step(self, a):
        assert 0 <= a < self.B
        done = False
        if self.valid(a):
            reward = self.place(a)
        elif self.mode == "nearest":
            reward = self.place(self.nearest(a))
        elif self.mode == "penalty":
            reward, done = PENALTY - self.waste, True
        elif self.mode == "incremental":
            reward = PENALTY - self.waste
        else:
            raise AssertionError(self.mode)
        self.t += 1
        if self.t == self.T:
            done = True
        self.item = self.items[self.t] if self.t < self.T else None
        return reward, done


def continuous_level(a, B):
    return int(min(max(a, 0.0), 1.0) * (B - 1))


def config(B, sizes=None, T=10):
    sizes = sizes or [1, 2, 3, 4, 5]
    sizes = [s for s in sizes if s < B]
    return dict(bin_size=B, item_sizes=sizes, item_probabilities=[1 / len(sizes)] * len(sizes), time_horizon=T)


def force(env, counts, item, waste=0, t=0, items=()):
    """Put the environment's episode in a chosen state: N_h = counts[h] (counts[0] unused), the
    arriving item, the last step's waste term, the time step and the items that follow."""
    core = env.core
    B = env.config.bin_size
    core.states[0] = 0
    core.states[0, 1:B] = counts[1:B]
    core.states[0, -1] = item
    core.items[0, t] = item
    core.items[0, t + 1:t + 1 + len(items)] = items
    core.t = t
    core.done[0] = False
    core.last_reward[0] = -waste
    if core.pictures:
        core.picture_batch = E.encode_states(core.states)
    env._last = core.observation()


def make(name, cfg, invalid_action=None):
    cls = VARIANTS[name][0]
    env = cls(cfg) if invalid_action is None else cls(cfg, invalid_action=invalid_action)
    env.reset(seed=0)
    return env


def levels(counts_by_level, B):
    out = [0] * B
    for h, n in counts_by_level.items():
        out[h] = n
    return out


# ---------------------------------------------------------------- near action, case by case

def test_nearest_ties_go_to_the_lower_level():
    env = make("BinPackingNearActionGymEnvironment", config(10))
    force(env, levels({2: 1, 6: 1}, 10), item=3)
    state, r, done, info = env.step(4)            # no bin at 4; 2 and 6 are both 2 away
    assert info["state"][1:10].tolist() == levels({5: 1, 6: 1}, 10)[1:] and r == 3 and not done


def test_nearest_prefers_an_existing_bin_to_a_closer_new_bin():
    # the bug of the old rule: action 2 is 2 away from "new bin" (0) but 5 away from level 7
    env = make("BinPackingNearActionGymEnvironment", config(30))
    force(env, levels({7: 1, 10: 1}, 30), item=3)
    _, r, done, info = env.step(2)
    assert info["state"][1:30].tolist() == levels({10: 2}, 30)[1:] and r == 3 and not done


def test_nearest_opens_a_new_bin_only_when_no_existing_bin_fits():
    env = make("BinPackingNearActionGymEnvironment", config(10))
    force(env, levels({8: 2}, 10), item=3)
    _, r, done, info = env.step(8)                # overflow, and no other bin: new bin
    assert info["state"][1:10].tolist() == levels({3: 1, 8: 2}, 10)[1:] and r == -(10 - 3) and not done
    force(env, levels({}, 10), item=4)
    _, r, _, info = env.step(5)                   # no bins at all
    assert info["state"][1:10].tolist() == levels({4: 1}, 10)[1:] and r == -6


def test_nearest_keeps_a_valid_new_bin_and_skips_bins_the_item_overflows():
    env = make("BinPackingNearActionGymEnvironment", config(10))
    force(env, levels({2: 1}, 10), item=3)
    _, r, _, info = env.step(0)                   # valid: a new bin even though level 2 fits
    assert info["state"][1:10].tolist() == levels({2: 1, 3: 1}, 10)[1:] and r == -7
    force(env, levels({3: 1, 8: 1}, 10), item=3)
    _, r, _, info = env.step(9)                   # 8 is nearer but overflows: level 3
    assert info["state"][1:10].tolist() == levels({6: 1, 8: 1}, 10)[1:] and r == 3
    assert info["action"] == 3 and not info["valid"]       # the action played, and the verdict


def test_nearest_valid_function_on_many_masks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        B = int(rng.integers(2, 31))
        masks = (rng.random((16, B)) < rng.random()).astype(np.uint8)
        masks[:, 0] = 1
        actions = rng.integers(0, B, 16)
        got = E.nearest_valid(actions, masks)
        for m, a, g in zip(masks, actions, got):
            fits = [x for x in range(1, B) if m[x]]
            assert g == (min(fits, key=lambda x: abs(x - a)) if fits else 0)


# ---------------------------------------------------------------- penalty, case by case

@pytest.mark.parametrize("name", ["BinPackingGymEnvironment", "BinPacking2DMaskGymEnvironment"])
def test_penalty_at_the_start_at_an_empty_level_and_by_overflow(name):
    env = make(name, config(10))
    force(env, levels({}, 10), item=4)
    _, r, done, info = env.step(3)                # empty level, first step: waste term 0
    assert r == -100 and done and info["state"][1:10].sum() == 0
    env = make(name, config(10))
    force(env, levels({8: 1}, 10), item=3, waste=-2)
    _, r, done, info = env.step(8)                # overflow; last step an insertion of a 2
    assert r == -100 + 2 and done and info["state"][1:10].tolist() == levels({8: 1}, 10)[1:]


@pytest.mark.parametrize("name", ["BinPackingGymEnvironment", "BinPacking2DMaskGymEnvironment"])
def test_penalty_after_a_new_bin_and_after_an_insertion(name):
    cfg = dict(bin_size=10, item_sizes=[4], item_probabilities=[1], time_horizon=10)
    env = make(name, cfg)
    env.step(0)                                   # new bin with a 4: -6, waste term 6
    _, r, done, _ = env.step(7)
    assert r == -100 - (10 - 4) and done
    env = make(name, cfg)
    env.step(0)
    _, r1, _, _ = env.step(4)                     # insertion of a 4: +4, waste term -4
    _, r, done, _ = env.step(3)
    assert r1 == 4 and r == -100 + 4 and done
    with pytest.raises(RuntimeError, match="over"):
        env.step(0)


# ---------------------------------------------------------------- incremental waste

def test_incremental_keeps_the_bins_counts_the_step_and_goes_on():
    cfg = dict(bin_size=10, item_sizes=[4], item_probabilities=[1], time_horizon=4)
    env = make("BinPackingIncrementalWasteGymEnvironment", cfg)
    state, r, done, _ = env.step(5)               # at the start: -100, nothing placed
    assert r == -100 and not done and state[1:10].sum() == 0 and state[-1] == 4
    state, r, _, _ = env.step(0)                  # new bin: -6
    assert r == -6 and state[4] == 1
    state, r, done, _ = env.step(7)               # invalid after a new bin: -106, bins unchanged
    assert r == -106 and not done and state[1:10].tolist() == levels({4: 1}, 10)[1:]
    state, r, done, _ = env.step(7)               # the waste term is still the new bin's
    assert r == -106 and done                     # the 4th step: the horizon counts invalid steps


def test_incremental_drops_the_item_and_the_next_one_arrives():
    env = make("BinPackingIncrementalWasteGymEnvironment", config(10, T=5))
    force(env, levels({8: 1}, 10), item=3, waste=-3, items=[2, 1])
    state, r, done, _ = env.step(8)
    assert r == -97 and not done and state[-1] == 2 and state[1:10].tolist() == levels({8: 1}, 10)[1:]
    state, r, _, _ = env.step(8)                  # now the 2 fits level 8: the bin is full
    assert r == 2 and state[1:10].sum() == 0 and state[-1] == 1


# ---------------------------------------------------------------- continuous action

@pytest.mark.parametrize("a, level", [(0.0, 0), (0.5, 4), (0.999, 8), (1.0, 9), (1.7, 9), (-0.3, 0),
                                      (np.array([0.5], np.float32), 4), (np.float32(0.34), 3)])
def test_continuous_mapping_and_clipping(a, level):
    assert E.continuous_to_level(a, 10) == level
    env = make("BinPackingContinuousActionEnv", config(10))
    assert env.action_space == E.spaces.Box(0.0, 1.0, (1,), np.float32)
    force(env, levels({level: 1}, 10) if level else levels({}, 10), item=1)
    _, r, _, info = env.step(a)
    assert r == (1 if level else -9)              # the mapped level is valid: played as it is
    assert info["action"] == level


def test_continuous_then_the_near_action_rule():
    env = make("BinPackingContinuousActionEnv", config(10))
    force(env, levels({2: 1, 7: 1}, 10), item=2)
    _, r, done, info = env.step(0.5)              # level 4: empty; 2 is nearer than 7
    assert info["state"][1:10].tolist() == levels({4: 1, 7: 1}, 10)[1:] and r == 2 and not done
    for bad in (float("nan"), True, "x", [0.1, 0.2]):
        with pytest.raises(ValueError, match="action"):
            env.step(bad)


# ---------------------------------------------------------------- action mask (ORL's)

def test_action_mask_env_replaces_an_invalid_action_and_goes_on():
    env = make("BinPackingActionMaskGymEnvironment", config(10))
    force(env, levels({2: 1, 6: 1}, 10), item=3)
    obs, r, done, _ = env.step(4)
    assert set(obs) == {"action_mask", "real_obs"} and r == 3 and not done
    assert obs["real_obs"][1:10].tolist() == levels({5: 1, 6: 1}, 10)[1:]
    item = obs["real_obs"][-1]
    assert obs["action_mask"].tolist() == [1] + [int(h in (5, 6) and h + item <= 10) for h in range(1, 10)]


# ---------------------------------------------------------------- modes, every class

@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_class_takes_any_mode_and_names_the_valid_ones(name):
    cls, default, _ = VARIANTS[name]
    assert make(name, config(10)).core.invalid_action == default
    for mode in E.INVALID_MODES:
        assert make(name, config(10), invalid_action=mode).core.invalid_action == mode
    with pytest.raises(ValueError, match="'error', 'penalty', 'incremental', 'nearest'.*'nope'"):
        cls(config(10), invalid_action="nope")


def test_base_env_with_nearest_and_picture_env_with_incremental():
    env = make("BinPackingGymEnvironment", config(30), invalid_action="nearest")
    force(env, levels({7: 1, 10: 1}, 30), item=3)
    _, r, done, info = env.step(2)
    assert r == 3 and not done and info["state"][10] == 2
    env = make("BinPacking2DMaskGymEnvironment", config(10), invalid_action="incremental")
    force(env, levels({}, 10), item=3)
    obs, r, done, _ = env.step(5)
    assert r == -100 and not done and (E.decode_picture(obs["real_obs"], 10)[1:10] == 0).all()
    with pytest.raises(ValueError, match="invalid action"):
        env = make("BinPackingGymEnvironment", config(10), invalid_action="error")
        force(env, levels({}, 10), item=3)
        env.step(5)


def test_batch_core_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="invalid_action must be one of.*'incremental'"):
        E.BatchBinPacking(config(10), 2, invalid_action="near")


@pytest.mark.parametrize("name", sorted(set(VARIANTS) - {"BinPackingContinuousActionEnv"}))
def test_an_index_outside_the_actions_is_an_error_in_every_variant(name):
    env = make(name, config(10))
    for bad in (10, -1, 2.5):
        with pytest.raises(ValueError, match="actions"):
            env.step(bad)


# ---------------------------------------------------------------- ORL's config

def test_orl_config_keys():
    orl = {"bag_capacity": 9, "item_sizes": [2, 3], "item_probabilities": [0.8, 0.2], "time_horizon": 1000}
    assert E.make_config(orl) == E.make_config("small")
    env = E.BinPackingNearActionGymEnvironment(orl)
    assert env.config.bin_size == 9 and env.action_space.n == 9
    assert E.make_config(dict(orl, bin_size=9)) == E.make_config("small")
    with pytest.raises(ValueError, match=r"bin_size=10.*bag_capacity=9"):
        E.make_config(dict(orl, bin_size=10))
    with pytest.raises(ValueError, match="bin_size"):
        E.make_config(dict(orl, bag_capacity=1))
    assert orl == {"bag_capacity": 9, "item_sizes": [2, 3], "item_probabilities": [0.8, 0.2], "time_horizon": 1000}


# ---------------------------------------------------------------- refusals (issue 24)

def test_a_bool_is_not_an_action():
    env = make("BinPackingGymEnvironment", config(10))
    for bad in (True, np.True_):
        with pytest.raises(ValueError, match="action.*bool"):
            env.step(bad)
    batch = E.BatchBinPacking(config(10), 2)
    batch.reset([0, 1])
    with pytest.raises(ValueError, match="bool"):
        batch.step(np.array([True, False]))


def test_bad_seeds_are_named():
    env = E.BinPackingGymEnvironment(config(10))
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed"):
            env.reset(seed=bad)
    batch = E.BatchBinPacking(config(10), 2)
    with pytest.raises(ValueError, match=r"seeds\[0\].*None"):
        batch.reset([None, 1])
    with pytest.raises(ValueError, match=r"seeds\[1\].*-4"):
        batch.reset([3, -4])
    assert batch.reset(np.array([3, 4], np.uint64))["state"].shape == (2, 11)


def test_sizes_that_cannot_fit_in_memory_are_refused():
    with pytest.raises(ValueError, match="time_horizon"):
        E.make_config(dict(E.PRESETS["small"], time_horizon=10 ** 13))
    with pytest.raises(ValueError, match="time_horizon"):
        E.BinPackingGymEnvironment(dict(E.PRESETS["small"], time_horizon=10 ** 13))
    with pytest.raises(ValueError, match="time_horizon=100000000 with num_envs=100000"):
        E.BatchBinPacking(dict(E.PRESETS["small"], time_horizon=10 ** 8), 10 ** 5)
    with pytest.raises(ValueError, match=r"n \(the number of seeds\).*100000000000"):
        E.episode_seeds(0, 100000000000)
    with pytest.raises(ValueError, match="number of seeds"):
        E.episode_seeds(0, -1)
    assert len(E.episode_seeds(0, 0)) == 0 and len(E.episode_seeds(0, 5)) == 5


# ---------------------------------------------------------------- against the reference, at random

def observed_state(kind, obs, B):
    if kind == "state":
        return np.asarray(obs)
    if kind == "mask":
        return np.asarray(obs["real_obs"])
    return E.decode_picture(obs["real_obs"], B)


def check_observation(kind, obs, ref, done):
    B = ref.B
    state = observed_state(kind, obs, B)
    assert state[1:B].tolist() == ref.levels[1:B]
    if not done:
        assert state[-1] == ref.item
        if kind != "state":
            assert obs["action_mask"].tolist() == ref.mask()


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(VARIANTS)), preset=st.sampled_from(sorted(E.PRESETS)),
       override=st.sampled_from([None, "penalty", "incremental", "nearest"]),
       seed=st.integers(0, 2 ** 32 - 1), invalid_rate=st.sampled_from([0.0, 0.05, 0.3, 1.0]))
def test_random_episodes_follow_orl(name, preset, override, seed, invalid_rate):
    cls, default, kind = VARIANTS[name]
    mode = override or default
    T = 40
    cfg = dict(E.PRESETS[preset], time_horizon=T)
    B = cfg["bin_size"]
    env = cls(cfg) if override is None else cls(cfg, invalid_action=override)
    obs = env.reset(seed=seed)
    ref = OrlReference(B, T, mode, env.core.items[0])
    check_observation(kind, obs, ref, False)
    rng = np.random.default_rng(seed)
    done = False
    while not done:
        if name == "BinPackingContinuousActionEnv":
            a = float(rng.uniform(-0.2, 1.2))
            level = continuous_level(a, B)
        else:
            if rng.random() < invalid_rate:
                a = int(rng.integers(0, B))
            else:
                a = int(rng.choice(np.flatnonzero(ref.mask())))
            level = a
        expected_reward, expected_done = ref.step(level)
        obs, reward, done, info = env.step(a)
        assert (reward, done) == (expected_reward, expected_done)
        check_observation(kind, obs, ref, done)
        assert info["waste"] == sum(n * (B - h) for h, n in enumerate(ref.levels) if h)
    with pytest.raises(RuntimeError):
        env.step(0)


@settings(max_examples=120, deadline=None)
@given(name=st.sampled_from(sorted(VARIANTS)), preset=st.sampled_from(sorted(E.PRESETS)),
       data=st.data())
def test_one_step_from_random_states_follows_orl(name, preset, data):
    cls, mode, kind = VARIANTS[name]
    cfg = dict(E.PRESETS[preset], time_horizon=50)
    B = cfg["bin_size"]
    sizes = cfg["item_sizes"]
    counts = [0] + data.draw(st.lists(st.integers(0, 3) | st.just(0), min_size=B - 1, max_size=B - 1))
    item = data.draw(st.sampled_from(sizes))
    prev = data.draw(st.sampled_from(sizes))
    waste = data.draw(st.sampled_from([0, B - prev, -prev]))
    t = data.draw(st.integers(0, 48))
    nxt = data.draw(st.sampled_from(sizes))
    env = cls(cfg)
    env.reset(seed=0)
    force(env, counts, item, waste=waste, t=t, items=[nxt])
    items = list(env.core.items[0])
    ref = OrlReference(B, 50, mode, items, levels=counts, t=t, waste=waste)
    if name == "BinPackingContinuousActionEnv":
        a = data.draw(st.floats(-0.5, 1.5))
        level = continuous_level(a, B)
    else:
        a = level = data.draw(st.integers(0, B - 1))
    expected = ref.step(level)
    obs, reward, done, _ = env.step(a)
    assert (reward, done) == expected
    check_observation(kind, obs, ref, done)
