import json

import numpy as np
import pytest

import baselines
import bin_packing_environment as E
from analysis import window_signal

SHORT = dict(E.PRESETS["perfect_pack"], time_horizon=80)


def test_a_window_from_the_start_over_the_whole_episode_is_the_episode_reward():
    seeds = E.episode_seeds(3, 40, "validation")
    rewards = window_signal.window_rewards(SHORT, seeds, 0, [80, 500])
    for name, policy in window_signal.POLICIES.items():
        totals = baselines.evaluate_policy(policy, SHORT, 40, seed=3, stream="validation")
        np.testing.assert_allclose(rewards[name][80], totals)
        np.testing.assert_allclose(rewards[name][500], totals)   # cut at the episode's end


def test_windows_share_the_start_state_and_the_items():
    seeds = E.episode_seeds(4, 30, "validation")
    same = window_signal.window_rewards(SHORT, seeds, 20, [1, 10],
                                        {"a": baselines.best_fit, "b": baselines.best_fit})
    np.testing.assert_array_equal(same["a"][10], same["b"][10])
    # one item on from a shared state: either policy's reward is the item or the new bin's cost
    first = window_signal.window_rewards(SHORT, seeds, 20, [1])
    assert set(np.unique(first["sum_of_squares"][1] - first["best_fit"][1])) <= set(range(-30, 31))


def test_separation_needs_a_positive_mean():
    assert window_signal.separation(np.array([1.0, 3.0]))["windows_for_2_stderr"] == pytest.approx(8 / 4, rel=1e-3)
    assert window_signal.separation(np.array([-1.0, -3.0]))["windows_for_2_stderr"] is None


def test_main_writes_its_table(tmp_path, capsys):
    out = tmp_path / "w.json"
    result = window_signal.main(["--episodes", "50", "--start_steps", "100", "--windows", "10,900",
                                 "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert [r["window"] for r in result["rows"]] == [10, 900]
    assert "| 100 | 900 |" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--start_steps", "1000"], "--start_steps"),
    (["--windows", "0"], "--windows"),
    (["--windows", "a,b"], "comma-separated"),
])
def test_bad_flags_are_named(flags, message, capsys):
    with pytest.raises(SystemExit):
        window_signal.main(flags)
    assert message in capsys.readouterr().err
