"""The masked Rainbow agent and run_evaluation_dopamine.py (tiny config, a few hundred steps)."""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import bin_packing_environment as bpe  # noqa: E402
from bin_packing_environment import BatchBinPacking, encode_states, load_episode_npz  # noqa: E402

TINY = os.path.join(ROOT, "test_configs", "rainbow_tiny.gin")


def _random_states(preset, n, steps, seed):
    """State vectors and pictures seen while playing random valid actions."""
    from baselines import random_valid_from_uniforms as random_valid
    rng = np.random.default_rng(seed)
    env = BatchBinPacking(preset, n, pictures=True)
    obs = env.reset(rng.integers(2 ** 32, size=n))
    states, pictures, masks = [], [], []
    for _ in range(steps):
        states.append(obs["state"]), pictures.append(obs["picture"]), masks.append(obs["action_mask"])
        obs, _, done, _ = env.step(random_valid(obs["action_mask"], rng.random(n)))
        if done.all():
            break
    return np.concatenate(states), np.concatenate(pictures), np.concatenate(masks)


@pytest.mark.parametrize("preset", ["perfect_pack", "small", "linear_waste"])
def test_picture_mask_matches_environment(preset):
    from components.masking import picture_action_mask
    states, pictures, masks = _random_states(preset, 8, 300, 0)
    B = states.shape[1] - 1
    got = picture_action_mask(pictures, B, xp=np)
    np.testing.assert_array_equal(got, masks.astype(bool))
    got_jax = np.asarray(picture_action_mask(pictures[:50], B))     # jax.numpy, as in the network
    np.testing.assert_array_equal(got_jax, masks[:50].astype(bool))


def test_picture_mask_with_large_counts():
    from components.masking import picture_action_mask
    rng = np.random.default_rng(1)
    states = np.zeros((500, 31), np.int64)
    states[:, 1:30] = rng.choice([0, 1, 29, 30, 31, 45, 479, 480, 5000], size=(500, 29))
    states[:, -1] = rng.integers(0, 10, 500)                         # item 0 = finished episode
    got = picture_action_mask(encode_states(states), 30, xp=np)
    np.testing.assert_array_equal(got, bpe.action_masks(states).astype(bool))


@pytest.fixture(scope="module")
def tiny_agent():
    import gin
    import components.runner as runner
    gin.clear_config()
    gin.add_config_file_search_path(ROOT)
    gin.parse_config_files_and_bindings([TINY], [])
    env = runner.create_bin_packing_environment()
    agent = runner.create_masked_rainbow_agent(None, env, seed=0)
    gin.clear_config()
    return agent


def test_exploration_and_greedy_only_pick_valid_actions(tiny_agent):
    import jax
    from components.agent import masked_select_action
    states, pictures, masks = _random_states("perfect_pack", 4, 40, 2)
    agent = tiny_agent
    rng = jax.random.PRNGKey(0)
    counts = np.zeros(30)
    for picture, mask in zip(pictures[::4], masks[::4]):
        state = picture[..., None]
        for eval_mode in (False, True):  # training_steps=0: epsilon 1 in training, 0 in eval
            for _ in range(5 if not eval_mode else 1):
                rng, action = masked_select_action(
                    agent.network_def, agent.online_params, state, rng, agent.num_actions, eval_mode, 0.0,
                    agent.epsilon_train, agent.epsilon_decay_period, 0, agent.min_replay_history,
                    agent.epsilon_fn, agent._support)
                assert mask[int(action)] == 1
                counts[int(action)] += not eval_mode
    assert (counts > 0).sum() > 3  # exploration spreads over several valid actions
    greedy = agent.greedy_actions(pictures[..., None])
    assert np.all(masks[np.arange(len(masks)), greedy] == 1)
    q = np.asarray(agent._batch_q(agent.online_params, pictures[..., None]))
    np.testing.assert_array_equal(q > -1e8, masks.astype(bool))


def _run(capsys, *argv):
    import run_evaluation_dopamine
    code = run_evaluation_dopamine.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_training_never_takes_invalid_actions_records_and_resumes(tmp_path, capsys, monkeypatch):
    taken = []
    original_step = bpe._BinPackingGymBase.step

    def checked_step(self, action):
        assert self._last["action_mask"][0][int(action)] == 1, f"invalid action {action}"
        taken.append(int(action))
        return original_step(self, action)

    monkeypatch.setattr(bpe._BinPackingGymBase, "step", checked_step)
    base, record = tmp_path / "run", tmp_path / "record"
    code, out, err = _run(capsys, f"--base_dir={base}", f"--gin_files={TINY}", "--seed", "3", "--record",
                          "--record_dir", str(record), "--eval_episodes", "3")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) == {"policy", "preset", "episodes", "mean_reward", "stderr", "train_steps", "wall_time_s"}
    assert result["policy"] == "rainbow" and result["episodes"] == 3 and result["train_steps"] == 200
    # 2 iterations x (100 training + 50 evaluation steps) of 50-step episodes
    assert len(taken) == 300
    files = sorted(glob.glob(str(record / "*.npz")))
    assert len(files) == 2 * 3 + 3                 # every episode: training, Dopamine's eval, final eval
    for path in files:
        ep = load_episode_npz(path)
        n = len(ep["action"])
        assert n == 50
        assert ep["obs"].dtype == np.uint8 and ep["obs"].shape == (n, 64, 64, 3)
        assert ep["action_mask"].dtype == np.uint8 and ep["action_mask"].shape == (n, 30)
        assert ep["state"].shape == (n, 31) and ep["reward"].shape == (n,) and ep["done"].shape == (n,)
        assert ep["done"][-1] and not ep["done"][:-1].any()
        assert np.all(ep["action_mask"][np.arange(n), ep["action"]] == 1)
        np.testing.assert_array_equal(ep["obs"], encode_states(ep["state"]))
    # Running again with more iterations resumes from the checkpoint instead of starting over.
    code, out, err = _run(capsys, f"--base_dir={base}", f"--gin_files={TINY}", "--seed", "3",
                          "--gin_bindings=Runner.num_iterations=3", "--eval_episodes", "2")
    assert code == 0, err
    assert "resuming" in out and "from iteration 2" in out
    assert json.loads(out.strip().splitlines()[-1])["train_steps"] == 300
    assert len(taken) == 450
    # ... and ends where an uninterrupted run ends: same parameters, acting key, evaluation returns.
    straight = tmp_path / "straight"
    code, out, err = _run(capsys, f"--base_dir={straight}", f"--gin_files={TINY}", "--seed", "3",
                          "--gin_bindings=Runner.num_iterations=3", "--eval_episodes", "2")
    assert code == 0, err
    assert "resuming" not in out
    resumed, uninterrupted = _checkpoint(base, 2), _checkpoint(straight, 2)
    for a, b in zip(_leaves(resumed["online_params"]), _leaves(uninterrupted["online_params"])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(resumed["rng"], uninterrupted["rng"])
    assert resumed["logs"]["iteration_2"]["eval_episode_returns"] == \
        uninterrupted["logs"]["iteration_2"]["eval_episode_returns"]
    # The learning curve reads the logs, all three iterations of the resumed run.
    from components import plot_curve
    curve = plot_curve.load_curve(str(base))
    np.testing.assert_array_equal(curve["training_steps"], [100, 200, 300])
    np.testing.assert_array_equal(curve["eval_episodes"], [1, 1, 1])
    assert np.isfinite(curve["eval_mean"]).all() and np.isnan(curve["eval_stderr"]).all()
    assert curve["eval_mean"][2] == resumed["logs"]["iteration_2"]["eval_average_return"][0]
    assert "300 training steps (3 iterations)" in plot_curve.default_title(curve)
    png = tmp_path / "curve.png"
    assert plot_curve.main(["--base_dir", str(base), "--out", str(png), "--reference", "Best Fit=-26.98"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = plot_curve.plot_curve(curve, references=[("Best Fit", 5000.0)])     # a level far above the curve ...
    assert ax.get_ylim()[1] > 5000.0 and "Best Fit (5000)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert plot_curve.parse_reference("a=b=-1.5") == ("a=b", -1.5)            # ... in view and in the legend
    for bad in ("Best Fit", "=-3", "x=nan", "x=ten"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME=NUMBER"):
            plot_curve.parse_reference(bad)
    assert plot_curve.main(["--base_dir", str(tmp_path / "nothing")]) == 2


def _checkpoint(base_dir, iteration):
    from dopamine.discrete_domains import checkpointer
    return checkpointer.Checkpointer(str(base_dir / "checkpoints")).load_checkpoint(iteration)


def _leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("stack_size", [1, 3])
def test_fast_replay_samples_dopamines_batches(stack_size):
    """components.replay draws the batches Dopamine's buffer draws after random.seed(same seed)."""
    import random
    from dopamine.replay_memory.prioritized_replay_buffer import OutOfGraphPrioritizedReplayBuffer
    from components.replay import FastPrioritizedReplayBuffer
    kw = dict(observation_shape=(4, 4), stack_size=stack_size, replay_capacity=64, batch_size=16,
              update_horizon=3, gamma=0.9)
    dopamine, fast = OutOfGraphPrioritizedReplayBuffer(**kw), FastPrioritizedReplayBuffer(**kw, sampling_seed=5)
    random.seed(5)
    rng = np.random.default_rng(stack_size)
    batches = 0
    for step in range(300):  # wraps around the capacity 4 times; episodes end with and without a terminal
        end = bool(rng.random() < 0.1)
        transition = (rng.integers(0, 255, (4, 4), dtype=np.uint8), int(rng.integers(5)), float(rng.normal()),
                      end and bool(rng.random() < 0.5))
        priority = float(rng.random()) + 0.01 if rng.random() < 0.5 else dopamine.sum_tree.max_recorded_priority
        for buffer in (dopamine, fast):
            buffer.add(*transition, priority=priority, episode_end=end)
        if step >= 20 and step % 3 == 0:
            expected, got = dopamine.sample_transition_batch(), fast.sample_transition_batch()
            for a, b in zip(expected, got):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)
            new_priorities = rng.random(16) + 0.01
            dopamine.set_priority(expected[-2], new_priorities)
            fast.set_priority(got[-2], new_priorities)
            batches += 1
    assert batches == 93
    assert fast._sampling_rng.getstate() == random.getstate()   # drew as many numbers, in the same calls


def test_fast_and_dopamine_replay_train_the_same_agent():
    """fast_replay=True and False: same actions and bit-identical parameters after 200 steps."""
    import random
    import gin
    import components.runner as runner
    from components.replay import FastPrioritizedReplayBuffer

    def build(fast):
        gin.clear_config()
        gin.add_config_file_search_path(ROOT)
        gin.parse_config_files_and_bindings([TINY], [f"MaskedJaxRainbowAgent.fast_replay={fast}"])
        env = runner.create_bin_packing_environment(seed=1)
        agent = runner.create_masked_rainbow_agent(None, env, seed=1)
        gin.clear_config()
        return agent, env

    agents = {fast: build(fast) for fast in (False, True)}
    assert isinstance(agents[True][0]._replay, FastPrioritizedReplayBuffer)
    assert agents[True][0]._replay._replay_capacity == 1000                # gin bindings reach the subclass
    assert type(agents[False][0]._replay) is not FastPrioritizedReplayBuffer
    random.seed(1)  # Dopamine's buffer samples with the global `random`
    actions = {}
    for fast, (agent, env) in agents.items():
        taken, action = [], agent.begin_episode(env.reset())
        for _ in range(200):
            taken.append(int(action))
            obs, reward, done, _ = env.step(action)
            if done:
                agent.end_episode(np.clip(reward, -1, 1), True)
                action = agent.begin_episode(env.reset())
            else:
                action = agent.step(np.clip(reward, -1, 1), obs)
        actions[fast] = taken
        assert agent.training_steps == 201 and agent._replay.add_count == 200
    assert actions[False] == actions[True]
    for a, b in zip(_leaves(agents[False][0].online_params), _leaves(agents[True][0].online_params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("argv, message", [
    (["--gin_files=test_configs/does_not_exist.gin"], "gin file 'test_configs/does_not_exist.gin' does not exist"),
    ([f"--gin_files={TINY}", "--gin_bindings=Runner.num_iteratons=3"], "doesn't have a parameter named 'num_iteratons'"),
    ([f"--gin_files={TINY}", "--gin_bindings=NoSuchThing.x=3"], "No configurable matching 'NoSuchThing'"),
])
def test_configuration_errors_are_one_line(tmp_path, capsys, argv, message):
    code, out, err = _run(capsys, f"--base_dir={tmp_path / 'run'}", *argv)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in err


def test_unwritable_base_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, out, err = _run(capsys, f"--base_dir={blocker / 'run'}", f"--gin_files={TINY}")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"error: base_dir '{blocker / 'run'}' is not writable")


def test_bad_preset_is_one_line(tmp_path, capsys):
    code, out, err = _run(capsys, f"--base_dir={tmp_path / 'run'}", f"--gin_files={TINY}",
                          "--gin_bindings=create_bin_packing_environment.preset='nope'")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: invalid configuration: unknown preset 'nope'")


@pytest.mark.parametrize("name, iterations", [("rainbow.gin", 200), ("rainbow_small.gin", 40)])
def test_shipped_gin_configs_parse_with_the_discount_that_learns(name, iterations):
    """gamma 0.99 made the greedy policy worse with training (docs/experiments.md, "Rainbow: the discount")."""
    import gin
    import components.runner  # noqa: F401  (registers the configurables the files bind)
    gin.clear_config()
    gin.add_config_file_search_path(ROOT)
    try:
        gin.parse_config_files_and_bindings([os.path.join(ROOT, "test_configs", name)], [])
        assert gin.query_parameter("JaxRainbowAgent.gamma") == 0.9
        assert gin.query_parameter("JaxRainbowAgent.vmax") == 10.0
        assert gin.query_parameter("Runner.num_iterations") == iterations
        assert gin.query_parameter("JaxRainbowAgent.network").selector == "MaskedRainbowNetwork"
    finally:
        gin.clear_config()
