"""extract.py: scripted rollouts written to record_dir (short episodes, 2 workers)."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bin_packing_environment import encode_states, load_episode_npz  # noqa: E402
from baselines import random_valid_from_uniforms as random_valid  # noqa: E402
from components.rollouts import epsilon_best_fit, run_episodes, scripted_policy  # noqa: E402


def best_fit(masks):
    from baselines import best_fit as bf
    return bf(None, masks)


def extract(*argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, "extract.py"), "--quiet", *argv],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def load_all(record_dir):
    return {os.path.basename(p): load_episode_npz(p) for p in sorted(glob.glob(os.path.join(record_dir, "*.npz")))}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    d = tmp_path_factory.mktemp("record")
    r = extract("--episodes", "5", "--policy", "epsilon_best_fit", "--epsilon", "0.3", "--workers", "2",
                "--batch", "2", "--seed", "7", "--time_horizon", "20", "--record_dir", str(d))
    assert r.returncode == 0, r.stderr
    return d, r


def test_files_load_and_are_consistent(extracted):
    d, r = extracted
    episodes = load_all(d)
    assert sorted(episodes) == [f"7_{i:06d}.npz" for i in range(5)]
    for ep in episodes.values():
        n = len(ep["action"])
        assert n == 20
        assert ep["obs"].dtype == np.uint8 and ep["obs"].shape == (n, 64, 64, 3)
        assert ep["action_mask"].dtype == np.uint8 and ep["action_mask"].shape == (n, 30)
        assert ep["state"].shape == (n, 31) and ep["reward"].shape == (n,)
        assert ep["done"][-1] and not ep["done"][:-1].any()
        np.testing.assert_array_equal(ep["obs"], encode_states(ep["state"]))     # picture before the action
        assert np.all(ep["action_mask"][np.arange(n), ep["action"]] == 1)
        item = ep["state"][:, -1]
        np.testing.assert_array_equal(ep["reward"], np.where(ep["action"] == 0, -(30 - item), item))
    assert "episodes/s" in r.stdout and "MB per 1000 episodes" in r.stdout


def test_same_seed_same_episodes_whatever_workers_and_batch(extracted, tmp_path):
    d, _ = extracted
    r = extract("--episodes", "5", "--policy", "epsilon_best_fit", "--epsilon", "0.3", "--workers", "1",
                "--batch", "3", "--seed", "7", "--time_horizon", "20", "--record_dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    a, b = load_all(d), load_all(tmp_path)
    assert sorted(a) == sorted(b)
    for name in a:
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key])
    other = tmp_path / "other"
    r = extract("--episodes", "2", "--policy", "epsilon_best_fit", "--seed", "8", "--time_horizon", "20",
                "--record_dir", str(other))
    assert r.returncode == 0, r.stderr
    c = load_all(other)
    assert not np.array_equal(c["8_000000.npz"]["state"], a["7_000000.npz"]["state"])


@pytest.mark.parametrize("argv, message", [
    (["--episodes", "-3"], "--episodes must be >= 1"),
    (["--episodes", "2", "--policy", "greedy"], "unknown --policy 'greedy'"),
    (["--episodes", "2", "--epsilon", "1.5"], "--epsilon must be in [0, 1]"),
    (["--episodes", "2", "--epsilon", "-0.1"], "--epsilon must be in [0, 1]"),
    (["--episodes", "2", "--workers", "0"], "--workers must be >= 1"),
    (["--episodes", "2", "--preset", "huge"], "unknown --preset 'huge'"),
    (["--episodes", "2", "--time_horizon", "0"], "time_horizon must be an integer >= 1"),
])
def test_bad_flags_give_a_clear_error(tmp_path, argv, message):
    r = extract(*argv, "--record_dir", str(tmp_path))
    assert r.returncode == 2
    assert message in r.stderr.strip().splitlines()[-1]
    assert "Traceback" not in r.stderr
    assert not glob.glob(str(tmp_path / "*.npz"))


def test_policies():
    masks = np.array([[1, 0, 1, 1, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], np.uint8)
    np.testing.assert_array_equal(best_fit(masks), [3, 0, 4])
    u = np.linspace(0, 1, 3000, endpoint=False)
    picks = random_valid(np.repeat(masks[:1], len(u), 0), u)
    assert set(np.unique(picks)) == {0, 2, 3}
    assert np.all(np.abs(np.bincount(picks, minlength=5)[[0, 2, 3]] - 1000) <= 1)   # uniform
    ones, zeros = np.ones(3), np.zeros(3)
    np.testing.assert_array_equal(epsilon_best_fit(masks, ones, zeros, 0.0), best_fit(masks))
    np.testing.assert_array_equal(epsilon_best_fit(masks, zeros, zeros, 1.0), [0, 0, 0])


def test_epsilon_zero_is_best_fit_and_random_is_valid():
    seeds = np.arange(4)
    config = {"time_horizon": 30}
    actions, masks = [], []

    def watch(act):
        def wrapped(obs, t):
            a = act(obs, t)
            actions.append(a), masks.append(obs["action_mask"])
            return a
        return wrapped

    run_episodes(config, seeds, watch(scripted_policy("epsilon_best_fit", seeds, 30, 0.0)))
    a, m = np.concatenate(actions), np.concatenate(masks)
    np.testing.assert_array_equal(a, best_fit(m))
    actions.clear(), masks.clear()
    run_episodes(config, seeds, watch(scripted_policy("random", seeds, 30)))
    a, m = np.concatenate(actions), np.concatenate(masks)
    assert np.all(m[np.arange(len(a)), a] == 1) and not np.array_equal(a, best_fit(m))


def test_epsilon_zero_sum_of_squares_plays_sum_of_squares():
    from baselines import sum_of_squares
    seeds = np.arange(3)
    seen = []

    def watch(obs, t):
        a = act(obs, t)
        seen.append((obs["state"], obs["action_mask"], a))
        return a

    act = scripted_policy("epsilon_sum_of_squares", seeds, 40, 0.0)
    totals, _ = run_episodes({"time_horizon": 40}, seeds, watch)
    for state, mask, a in seen:
        np.testing.assert_array_equal(a, sum_of_squares(state, mask))
    explore = scripted_policy("epsilon_sum_of_squares", seeds, 40, 1.0)
    assert not np.array_equal(run_episodes({"time_horizon": 40}, seeds, explore)[0], totals)


from test_controller import models  # noqa: E402,F401  (the random V and small M on disk)


@pytest.fixture(scope="module")
def agent(models, tmp_path_factory):
    """That V and M, and a controller with random weights on disk."""
    from controller import Controller
    path = tmp_path_factory.mktemp("agent") / "c.json"
    path.write_text(json.dumps([np.random.default_rng(0).normal(size=Controller(32, 16, 30).num_params).tolist(), 0]))
    return {"vae": models["vae"], "rnn": models["rnn"], "c": str(path)}


def test_the_controller_policy_plays_as_the_agent_does_in_the_real_problem(agent):
    """Greedy, it is rollout_real's agent (same totals); with epsilon it explores, valid actions only."""
    from controller import rollout_real
    from extract import load_models
    from components.rollouts import controller_policy
    models = load_models(agent["vae"], agent["rnn"], agent["c"])
    seeds, config = np.arange(3), {"time_horizon": 40}
    greedy, _ = run_episodes(config, seeds, controller_policy(seeds, 40, 0.0, models))
    vae, rnn, controller, params = models
    np.testing.assert_allclose(greedy, rollout_real(controller, params, vae, rnn, config, seeds)[0][0])
    explored, _ = run_episodes(config, seeds, controller_policy(seeds, 40, 0.5, models))   # raises on invalid
    assert not np.array_equal(explored, greedy)


def test_extract_records_the_controllers_episodes_the_same_for_a_seed(agent, tmp_path, capsys):
    """Through main(argv) in this process: V's TensorFlow is then not imported once a run."""
    import extract as script
    flags = ["--episodes", "2", "--policy", "controller", "--controller", agent["c"], "--vae", agent["vae"],
             "--rnn", agent["rnn"], "--epsilon", "0.2", "--time_horizon", "15", "--seed", "4", "--quiet"]
    for d in ("a", "b"):
        assert script.main(flags + ["--record_dir", str(tmp_path / d)])["episodes"] == 2
    a, b = load_all(tmp_path / "a"), load_all(tmp_path / "b")
    assert sorted(a) == ["4_000000.npz", "4_000001.npz"] and len(a["4_000000.npz"]["action"]) == 15
    for name in a:
        np.testing.assert_array_equal(a[name]["action"], b[name]["action"])
    for argv, message in ((["--episodes", "2", "--policy", "controller"], "--controller is needed with --policy"),
                          (flags[:5] + [str(tmp_path / "missing.json")], "missing.json")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            script.main(argv + ["--record_dir", str(tmp_path / "c")])
        assert e.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]
