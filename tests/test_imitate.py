import json

import numpy as np
import pytest

import baselines
import bin_packing_environment as E
from analysis import imitate
from controller import Controller, load_params

from test_controller import models  # noqa: F401  (the random V and small M on disk)


def test_fitting_recovers_a_rule_the_controller_can_express():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    mask = rng.random((400, 5)) < 0.6
    mask[:, 0] = True
    label = np.where(mask, np.arange(5), -1).max(1)          # Best Fit: the highest valid action
    params, loss, accuracy = imitate.fit_controller(x, mask, label, 5, steps=300)
    assert accuracy > 0.99 and loss < 0.5
    W, b = Controller(2, 4, 5).split(params)
    assert np.all(np.diff(b[0]) > 0)                          # learned as a rising bias


def test_imitating_best_fit_plays_best_fit(models, tmp_path):  # noqa: F811
    out = tmp_path / "c.json"
    rounds = imitate.main(["--vae", models["vae"], "--rnn", models["rnn"], "--teacher", "best_fit",
                           "--rounds", "2", "--episodes", "3", "--steps", "300", "--time_horizon", "40",
                           "--validation_episodes", "6", "--seed", "1", "--out", str(out)])
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["states"] == 2 * 3 * 40
    config = dict(E.PRESETS["perfect_pack"], time_horizon=40)
    best_fit = baselines.evaluate_policy(baselines.best_fit, config, 6, seed=1, stream="validation")
    assert rounds[-1]["validation_reward"] == pytest.approx(best_fit.mean(), abs=1e-3)
    saved = json.loads(out.read_text())
    assert saved["teacher"] == "best_fit"
    assert saved["heuristics_on_validation"]["best_fit"] == pytest.approx(best_fit.mean(), abs=1e-3)
    assert load_params(str(out), Controller(32, 16, 30)).shape == (Controller(32, 16, 30).num_params,)


def test_bad_flags_are_named(models, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        imitate.main(["--vae", str(tmp_path / "none.json"), "--rnn", models["rnn"]])
    assert "--vae" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        imitate.main(["--rnn", models["rnn"], "--vae", models["vae"], "--l2", "-1"])
    assert "--l2" in capsys.readouterr().err
