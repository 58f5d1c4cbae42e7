import json

import numpy as np
import pytest

import baselines
import bin_packing_environment as E
from analysis import seed_table
from controller import Controller

from test_controller import models  # noqa: F401  (the random V and small M on disk)


def write_run(path, params, validation, generation):
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([list(map(float, params)), validation]))
    hist = str(path).replace(".best.json", ".hist_best.json")
    with open(hist, "w") as f:
        json.dump([[generation - 2, 1.0, validation - 5, 0, 0, 0], [generation, 2.0, validation, 0, 0, 0]], f)


def test_every_seed_is_scored_against_best_fit_on_the_same_episodes(models, tmp_path, monkeypatch):  # noqa: F811
    c = Controller(32, 16, 30)
    best_fit = np.zeros(c.num_params)
    best_fit[-30:] = np.arange(30)                          # the highest valid level: Best Fit
    new_bins = np.zeros(c.num_params)
    new_bins[-30] = 1.0                                     # always a new bin: far below Best Fit
    runs = [tmp_path / "seed0" / "r.best.json", tmp_path / "seed1" / "r.best.json"]
    write_run(runs[0], best_fit, -30.5, 12)
    write_run(runs[1], new_bins, -90.0, 30)
    out = tmp_path / "table.json"
    flags = ["--vae", models["vae"], "--rnn", models["rnn"], "--episodes", "6", "--time_horizon", "40",
             "--seed", "3", "--out", str(out)]
    result = seed_table.main([*map(str, runs), *flags])
    reference = baselines.evaluate_policy(baselines.best_fit, dict(E.PRESETS["perfect_pack"], time_horizon=40), 6,
                                          seed=3)
    assert result["best_fit"]["mean"] == pytest.approx(reference.mean())
    first, second = result["rows"]
    assert first["mean"] == pytest.approx(reference.mean()) and first["minus_best_fit"] == pytest.approx(0)
    assert first["minus_best_fit_stderr"] == pytest.approx(0) and first["generation"] == 12
    assert second["mean"] < reference.mean() - 10 and second["minus_best_fit_stderr"] > 0
    assert second["validation"] == -90.0 and second["generation"] == 30
    assert result["summary"] == {"seeds": 2, "at_or_above_best_fit": 1, "median": pytest.approx(
        (first["mean"] + second["mean"]) / 2), "best": first["mean"], "worst": second["mean"]}
    assert "1 of 2 seeds at or above Best Fit" in result["table"]

    # a rerun on the same episodes measures nothing again; other episodes measure afresh
    def measured(*args, **kwargs):
        raise RuntimeError("measured twice")
    monkeypatch.setattr(seed_table, "evaluate_real", measured)
    again = seed_table.main([*map(str, runs), *flags])
    assert again["rows"] == result["rows"]
    with pytest.raises(RuntimeError, match="measured twice"):
        seed_table.main([*map(str, runs), *flags[:-4], "--seed", "4", "--out", str(out)])


def test_bad_runs_are_named(models, tmp_path, capsys):  # noqa: F811
    missing = tmp_path / "none.best.json"
    with pytest.raises(SystemExit, match="none.best.json"):
        seed_table.main([str(missing), "--vae", models["vae"], "--rnn", models["rnn"]])
    run = tmp_path / "s" / "r.best.json"
    write_run(run, np.zeros(Controller(32, 16, 30).num_params), -30.0, 2)
    with pytest.raises(SystemExit):
        seed_table.main([str(run), str(run), "--vae", models["vae"], "--rnn", models["rnn"]])
    assert "named twice" in capsys.readouterr().err
