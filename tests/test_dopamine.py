"""The masked Rainbow agent and run_evaluation_dopamine.py (tiny config, a few hundred steps)."""
from __future__ import annotations

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
