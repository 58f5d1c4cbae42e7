"""Bad input never costs a run: every stage script refuses a bad flag, an unwritable output location
or an unusable file at start, in one line naming it, with a non-zero exit code and no file written;
and the temp files of a killed writer are removed at the next start of the same stage."""
import base64
import json
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import stages_common
from controller import Controller, load_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUGE = "100000000000"                 # 10**11 episodes: 745 GiB of seeds
SHIPPED_AGENT = os.path.join(ROOT, "log", "binpacking.cma.16.64.best.json")

# (script and arguments, the flag the error must name). In the scratch directory each runs in,
# "afile" is a file and "adir" a directory; /proc/x cannot be created.
CASES = [
    (["baselines.py", "best_fit", "--seed", "-1"], "--seed"),
    (["bin_packing_environment.py", "--seed", "-1"], "--seed"),
    (["dream_env.py", "--z_noise", "nan"], "--z_noise"),
    (["baseline_best_fit.py", "--episodes", HUGE], "--episodes"),
    (["vae_train.py", "--seed", "-1"], "--seed"),
    (["vae_train.py", "--kl_tolerance", "nan"], "--kl_tolerance"),
    (["vae_train.py", "--out_dir", "/proc/x"], "--out_dir"),
    (["vae_train.py", "--out_dir", "afile"], "--out_dir"),
    (["series.py", "--out", "adir"], "--out"),
    (["series.py", "--out", "afile/series.npz"], "--out"),
    (["rnn_train.py", "--seed", "-1"], "--seed"),
    (["rnn_train.py", "--out_dir", "/proc/x"], "--out_dir"),
    (["copy_models.py", "--out_root", "afile"], "--out_root"),
    (["dream_starts.py", "--series", "s.npz", "--seed", "-1"], "--seed"),
    (["dream_starts.py", "--series", "s.npz", "--out", "adir"], "--out"),
    (["dream_starts.py", "--controller", "c.json", "--episodes", HUGE], "--episodes"),
    (["dream_starts.py", "--series", "s.npz", "--epsilon", "0", "nan"], "--epsilon"),
    (["train.py", "--seed", "-1"], "--seed"),
    (["train.py", "--sigma_init", "nan"], "--sigma_init"),
    (["train.py", "--temperature", "nan"], "--temperature"),
    (["train.py", "--weight_decay", "nan"], "--weight_decay"),
    (["train.py", "--empty_start_fraction", "nan"], "--empty_start_fraction"),
    (["train.py", "--eval_episodes", HUGE], "--eval_episodes"),
    (["train.py", "--log_dir", "afile"], "--log_dir"),
    (["train.py", "--log_dir", "/proc/x"], "--log_dir"),
    (["model.py", "norender", "c.json", "--seed", "-1"], "--seed"),
    (["model.py", "norender", "c.json", "--episodes", HUGE], "--episodes"),
    (["evaluate.py", "--seed", "-1"], "--seed"),
    (["evaluate.py", "--episodes", HUGE], "--episodes"),
    (["evaluate.py", "--out_dir", "afile"], "--out_dir"),
    (["evaluate.py", "--agent", "missing.json"], "--agent"),
    (["evaluate.py", "--rnn", "adir"], "--rnn"),
    (["pick_controller.py", "a.json", "--out", "adir"], "--out"),
    (["pick_controller.py", "a.json", "--out", "/proc/x/best.json"], "--out"),
    (["pipeline.py", "--scale", "tiny", "--seed", "-1"], "--seed"),
    (["pipeline.py", "--scale", "tiny", "--work_dir", "afile"], "--work_dir"),
    (["-m", "analysis.dream_fidelity", "--seed", "-1"], "--seed"),
    (["-m", "analysis.dream_fidelity", "--out", "adir"], "--out"),
    (["-m", "analysis.window_signal", "--seed", "-1"], "--seed"),
    (["-m", "analysis.imitate", "--seed", "-1"], "--seed"),
    (["extract.py", "--episodes", "2", "--seed", "-1"], "--seed"),
    (["extract.py", "--episodes", HUGE], "--episodes"),
    (["extract.py", "--episodes", "2", "--epsilon", "nan"], "--epsilon"),
    (["extract.py", "--episodes", "2", "--record_dir", "afile"], "--record_dir"),
    (["run_evaluation_dopamine.py", "--base_dir", "b", "--seed", "-1"], "--seed"),
    (["run_evaluation_dopamine.py", "--base_dir", "b", "--eval_episodes", HUGE], "--eval_episodes"),
]


def tree(directory):
    """Every path under directory with its size and modification time."""
    found = {}
    for d, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(d, name)
            st = os.stat(path)
            found[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
    return found


def run_script(args, cwd):
    script = args if args[0] == "-m" else [os.path.join(ROOT, args[0])] + args[1:]
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, *script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_every_stage_refuses_bad_flags_in_one_line_before_any_work(tmp_path):
    """Each case in its own scratch directory, two at a time (CI has two cores)."""
    dirs = []
    for k in range(len(CASES)):
        d = tmp_path / f"case{k}"
        (d / "adir").mkdir(parents=True)
        (d / "afile").write_text("a file where a directory was expected\n")
        dirs.append(d)
    before = [tree(d) for d in dirs]
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda case: run_script(case[0][0], case[1]), zip(CASES, dirs)))
    problems = []
    for (args, flag), d, was, proc in zip(CASES, dirs, before, procs):
        lines = proc.stderr.strip().splitlines()
        last = lines[-1] if lines else ""
        if proc.returncode == 0 or "Traceback" in proc.stderr or flag not in last or "error" not in last:
            problems.append(f"{' '.join(args)}: exit {proc.returncode}, last line {last!r}")
        if tree(d) != was:
            problems.append(f"{' '.join(args)} wrote {sorted(set(tree(d)) ^ set(was))}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- flag types and output locations

def test_seed_and_episode_types_refuse_what_cannot_be_used():
    import argparse
    assert stages_common.seed_int("0") == 0 and stages_common.seed_int(str(2 ** 32 - 2)) == 2 ** 32 - 2
    for bad in ("-1", str(2 ** 32 - 1), "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            stages_common.seed_int(bad)
    assert stages_common.episode_count("10000000") == 10 ** 7
    for bad in ("0", "10000001", HUGE):
        with pytest.raises(argparse.ArgumentTypeError):
            stages_common.episode_count(bad)
    for parse in (stages_common.finite_float, stages_common.unit_float, stages_common.positive_float,
                  stages_common.non_negative_float):
        for bad in ("nan", "inf", "-inf"):
            with pytest.raises(argparse.ArgumentTypeError, match="must be"):
                parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be a number in \[0, 1\]"):
        stages_common.unit_float("1.5")


def test_output_checks_probe_and_leave_nothing_behind(tmp_path):
    import argparse
    parser = argparse.ArgumentParser(prog="stage")
    deep = tmp_path / "a" / "b" / "c"
    stages_common.check_output_dir(parser, str(deep), "--out_dir")
    stages_common.check_output_file(parser, str(deep / "x.npz"), "--out")
    assert os.listdir(tmp_path) == []                    # created to probe, then removed again
    (tmp_path / "f").write_text("")
    for check, path, flag in ((stages_common.check_output_dir, tmp_path / "f", "--out_dir"),
                              (stages_common.check_output_dir, tmp_path / "f" / "sub", "--out_dir"),
                              (stages_common.check_output_file, tmp_path, "--out"),
                              (stages_common.check_output_file, tmp_path / "f" / "x.json", "--out")):
        with pytest.raises(SystemExit) as e:
            check(parser, str(path), flag)
        assert e.value.code == 2
    assert sorted(os.listdir(tmp_path)) == ["f"]


# ---------------------------------------------------------------- leftovers of killed writers

def test_stale_temp_files_of_our_writers_are_removed_and_no_others(tmp_path):
    ours = [".series.npz.0123456789ab.tmp", "rnn.json.tmp", ".write_probe.abcd_123.tmp"]
    others = ["notes.tmp", ".series.npz.tmp", ".other.npz.0123456789ab.tmp", "series.npz", ".series.npz.01234.tmp"]
    for name in ours + others:
        (tmp_path / name).write_text("x")
    removed = stages_common.remove_stale_temps([tmp_path / "series.npz", tmp_path / "rnn.json"])
    assert sorted(os.path.basename(p) for p in removed) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(others)


def test_extract_removes_a_killed_writers_episode_temp_files(tmp_path):
    record = tmp_path / "record"
    record.mkdir()
    stale, fresh, foreign = record / "tmpab12_xyz.npz.tmp", record / "tmpcd34_xyz.npz.tmp", record / "tmp.npz.tmp"
    for path in (stale, fresh, foreign):
        path.write_bytes(b"half an episode")
    os.utime(stale, (1e9, 1e9))                          # untouched for years: its writer is dead
    proc = subprocess.run([sys.executable, "extract.py", "--episodes", "1", "--time_horizon", "3", "--quiet",
                           "--record_dir", str(record)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"removed {stale}" in proc.stdout
    assert not stale.exists() and fresh.exists() and foreign.exists()   # a live writer's file may be seconds old
    assert (record / "0_000000.npz").exists()


# ---------------------------------------------------------------- controller files

@pytest.mark.parametrize("document, message", [
    ({"a": 1}, "is not a controller"),
    ([], "is not a controller"),
    (None, "is not a controller"),
    ("params", "is not a controller"),
    ([[[0.0] * 8670], -20.0], "holds an array of shape (1, 8670); the controller needs a list of 8670 numbers"),
    ([[0.0] * 5, -20.0], "holds 5 parameters; the controller needs a list of 8670 numbers"),
    ([["x"] * 8670, -20.0], "its parameters are not a list of numbers"),
    ([[0.0] * 8669 + [float("nan")], -20.0], "holds 1 non-finite parameter(s)"),
    ({"params": [float("inf")] * 8670}, "holds 8670 non-finite parameter(s)"),
])
def test_controller_files_that_are_not_controllers(tmp_path, document, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError) as e:
        load_params(str(path), Controller())
    assert str(path) in str(e.value) and message in str(e.value)


def test_model_refuses_a_broken_controller_a_directory_and_another_bin_size(tmp_path, capsys, monkeypatch):
    import model
    monkeypatch.chdir(ROOT)
    nan_agent = tmp_path / "nan.json"
    params, reward = json.load(open(SHIPPED_AGENT))
    nan_agent.write_text(json.dumps([params[:-1] + [float("nan")], reward]))
    for args, message in (([str(nan_agent)], f"controller file {nan_agent} holds 1 non-finite parameter"),
                          ([str(tmp_path / "none.json")], "No such file"),
                          ([SHIPPED_AGENT, "--vae", "vae"], "VAE file vae is a directory"),
                          ([SHIPPED_AGENT, "--rnn", "rnn"], "MDN-RNN file rnn is a directory"),
                          ([SHIPPED_AGENT, "--preset", "small"],
                           "was trained for bin size 30; --preset small has bin size 9")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            model.main(["norender", *args, "--episodes", "1"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


# ---------------------------------------------------------------- weights and series

def poisoned(src, dst, dtype):
    """A copy of the weight file src with one value of its first weight set to nan."""
    doc = json.load(open(src))
    values = np.frombuffer(base64.b64decode(doc["weights"][0]["data"]), dtype).copy()
    values[3] = np.nan
    doc["weights"][0]["data"] = base64.b64encode(values.tobytes()).decode("ascii")
    json.dump(doc, open(dst, "w"))
    return str(dst)


def test_nan_weights_are_refused_naming_the_file(tmp_path):
    from rnn.rnn import RNNNumpy, read_json
    from vae.vae import ConvVAE
    rnn = poisoned(os.path.join(ROOT, "rnn", "rnn.json"), tmp_path / "rnn.json", "<f4")
    for load in (read_json, RNNNumpy.from_json):
        with pytest.raises(ValueError, match=f"{rnn}: weight 'lstm/kernel': 1 of its .* values are nan or inf"):
            load(rnn)
    vae = poisoned(os.path.join(ROOT, "vae", "vae.json"), tmp_path / "vae.json", "<f2")
    with pytest.raises(ValueError, match=f"{vae}: weight .*: 1 of its .* values are nan or inf"):
        ConvVAE.from_json(vae)
    with pytest.raises(ValueError, match="cannot read the file"):
        read_json(str(tmp_path))                           # a directory


def series_arrays(n=40):
    rng = np.random.default_rng(0)
    mask = np.zeros((n, 30), np.uint8)
    mask[:, 0] = 1
    return dict(mu=rng.normal(size=(n, 32)).astype(np.float16), logvar=np.full((n, 32), -2, np.float16),
                action=np.zeros(n, np.int16), reward=np.zeros(n, np.float32), done=np.arange(n) % 20 == 19,
                action_mask=mask, episode_lengths=np.array([20, 20]), episode_names=np.array(["a", "b"]),
                vae_sha256=np.array("0" * 64))


def test_series_with_nan_is_refused_before_m_trains(tmp_path, capsys):
    import rnn_train
    from series import Series
    good = tmp_path / "good.npz"
    np.savez(good, **series_arrays())
    assert Series(str(good)).z_size == 32
    for key in ("mu", "logvar", "reward"):
        arrays = series_arrays()
        arrays[key] = np.full_like(arrays[key], np.nan)
        path = tmp_path / f"nan_{key}.npz"
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=f"series file {path}: {key} holds non-finite values"):
            Series(str(path))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        rnn_train.main(["--series", str(tmp_path / "nan_mu.npz"), "--out_dir", str(tmp_path / "out")])
    assert e.value.code == 2 and "nan_mu.npz: mu holds non-finite values" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- CMA-ES state across a checkpoint

def test_a_pickled_cma_continues_as_the_live_one_with_its_random_draws_restored():
    """cma 4.5's TPA step size (from 300 parameters on) draws from numpy's global generator in every
    tell; train.py's checkpoint keeps that generator's state and rebinds the unpickled es to it."""
    import cma

    from train import resume_cma_draws

    def generation(es, g):
        x = np.asarray(es.ask())
        es.tell(list(x), list(np.random.default_rng(g).normal(size=len(x)) + (x ** 2).mean(1)))
        return x

    es = cma.CMAEvolutionStrategy(np.zeros(600), 0.1, {"popsize": 4, "seed": 12, "verbose": -9,
                                                       "CMA_diagonal": True})
    for g in range(4):
        generation(es, g)
    saved = pickle.dumps({"es": es, "np_random": np.random.get_state()})
    live = [generation(es, g) for g in range(4, 9)]
    np.random.seed(99)                                   # a new process: the global generator is elsewhere
    state = pickle.loads(saved)
    resume_cma_draws(state)
    resumed = [generation(state["es"], g) for g in range(4, 9)]
    assert all(np.array_equal(a, b) for a, b in zip(live, resumed))

    np.random.seed(99)                                   # without resume_cma_draws: the drift train.py had
    plain = pickle.loads(saved)["es"]
    drifted = [generation(plain, g) for g in range(4, 9)]
    assert not all(np.array_equal(a, b) for a, b in zip(live, drifted))
