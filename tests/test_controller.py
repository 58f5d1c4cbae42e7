"""C, the dream and CMA-ES training, on small random V and M (no training needed)."""
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import traceback

import numpy as np
import pytest

import baselines
from bin_packing_environment import PRESETS, episode_seeds
from controller import Controller

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = dict(PRESETS["perfect_pack"], time_horizon=25)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random VAE and a small random M on disk, plus initial z with masks."""
    from rnn.rnn import MDNRNN
    from vae.vae import ConvVAE
    d = tmp_path_factory.mktemp("models")
    ConvVAE(seed=0).save_json(str(d / "vae.json"))
    MDNRNN(hidden_size=16, seed=0).save_json(str(d / "rnn.json"))
    rng = np.random.default_rng(0)
    mask = np.zeros((5, 30), int)
    mask[:, 0] = 1
    json.dump({"mu": rng.normal(size=(5, 32)).tolist(), "logvar": (rng.normal(size=(5, 32)) - 2).tolist(),
               "action_mask": mask.tolist()}, open(d / "initial_z.json", "w"))
    return {k: str(d / f"{k}.json") for k in ("vae", "rnn", "initial_z")}


def test_controller_never_picks_a_masked_action():
    c = Controller(4, 6, 30)
    rng = np.random.default_rng(0)
    params = rng.normal(size=(3, c.num_params))
    x = rng.normal(size=(3, 5, 10))
    mask = rng.random((3, 5, 30)) < 0.3
    mask[..., 0] = True
    for sample in (None, rng):
        a = c.act(params, x, mask, sample)
        assert a.shape == (3, 5)
        assert np.take_along_axis(mask, a[..., None], -1).all()


def test_sampled_actions_follow_the_softmax_of_the_valid_logits():
    """Gumbel-max: argmax(logits + Gumbel noise) is a draw from softmax(logits)."""
    c = Controller(1, 1, 3)
    params = np.zeros((1, c.num_params))
    params[0, -3:] = [0.0, 1.0, 2.0]                       # bias only: logits 0, 1, 2
    n = 20000
    x, mask = np.zeros((1, n, 2)), np.ones((1, n, 3), bool)
    mask[0, n // 2:, 2] = False                            # second half: action 2 invalid
    a = c.act(params, x, mask, np.random.default_rng(0))[0]
    full = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    part = np.exp([0.0, 1.0]) / np.exp([0.0, 1.0]).sum()
    assert np.abs(np.bincount(a[:n // 2], minlength=3) / (n // 2) - full).max() < 0.02
    assert np.abs(np.bincount(a[n // 2:], minlength=3)[:2] / (n // 2) - part).max() < 0.02


def test_controller_with_rising_bias_is_best_fit(models):
    """W = 0 and b increasing in the level: exactly Best Fit, through V and M on the real env."""
    from controller import load_rnn, load_vae, rollout_real
    rnn, vae = load_rnn(models["rnn"]), load_vae(models["vae"])
    c = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = np.zeros(c.num_params)
    params[-30:] = np.arange(30)
    seeds = episode_seeds(0, 4, "eval")
    totals, steps = rollout_real(c, params, vae, rnn, SHORT, seeds)
    expected = baselines.evaluate_policy(baselines.best_fit, SHORT, 4, seed=0)
    assert steps == 4 * 25 and np.allclose(totals[0], expected)


def test_load_params_checks_size(tmp_path):
    from controller import load_params
    path = tmp_path / "p.json"
    path.write_text(json.dumps([[0.0] * 5, 1.0]))
    with pytest.raises(ValueError, match="parameters"):
        load_params(str(path), Controller())


def test_dream_is_reproducible_and_respects_the_horizon(models):
    from dream_env import BatchDream, load_initial_z, rollout_dream
    from controller import load_rnn
    rnn = load_rnn(models["rnn"])
    dream = BatchDream(rnn, load_initial_z(models["initial_z"]), temperature=1.0, time_horizon=12)
    c = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = np.random.default_rng(1).normal(size=(2, c.num_params)) * 0.1
    a, _ = rollout_dream(c, params, dream, 3, np.random.default_rng(5))
    assert dream.t <= 12 and np.isfinite(a).all() and a.shape == (2, 3)
    b, _ = rollout_dream(c, params, dream, 3, np.random.default_rng(5))
    assert (a == b).all()


def test_dream_z_noise_scales_only_the_gaussian(models):
    from dream_env import BatchDream, load_initial_z
    from controller import load_rnn
    rnn, initial_z = load_rnn(models["rnn"]), load_initial_z(models["initial_z"])

    def first_step(**kw):
        dream = BatchDream(rnn, initial_z, 1.0, 5, **kw)
        obs = dream.reset(6, np.random.default_rng(3))
        h, c, out = rnn.step(obs["z"], np.zeros(6, int), obs["h"], dream.c)
        return dream.step(np.zeros(6, int))[0]["z"], out
    default, out = first_step()
    same, _ = first_step(z_noise=1.0)
    quiet, _ = first_step(z_noise=0.0)
    assert np.array_equal(default, same) and not np.allclose(default, quiet)
    # with no noise each dimension is one of M's component means
    assert np.isclose(quiet[..., None], out["mu"], atol=1e-6).any(-1).all()
    with pytest.raises(ValueError, match="z_noise must be >= 0"):
        BatchDream(rnn, initial_z, 1.0, 5, z_noise=-0.5)


def test_dream_gym_env(models):
    from dream_env import BinPackingDream
    env = BinPackingDream(models["rnn"], models["initial_z"], models["vae"], time_horizon=5)
    obs = env.reset(seed=0)
    assert obs["real_obs"].shape == (64, 64, 3) and obs["action_mask"][0] == 1
    for _ in range(5):
        obs, r, done, info = env.step(0)
        assert obs["action_mask"][0] == 1 and np.isfinite(r)
    assert done
    with pytest.raises(ValueError):
        env.step(30)


def train_cmd(models, log_dir, *extra):
    return [sys.executable, "train.py", "--rnn", models["rnn"], "--vae", models["vae"],
            "--initial_z", models["initial_z"], "--log_dir", str(log_dir), "--popsize", "4",
            "--num_episode", "2", "--time_horizon", "6", "--eval_horizon", "6", "--eval_episodes", "3",
            "--eval_steps", "2", *extra]


def run(cmd, env=None):
    """A script run as `subprocess.run` would report it, but through its main(argv) in this process
    (TensorFlow, which loading V imports, is then imported once for the module, not once a run):
    runs on MPI workers and runs given an environment still go through a real subprocess."""
    script, argv = cmd[1], [str(a) for a in cmd[2:]]
    if env is not None or "--num_worker" in argv and argv[argv.index("--num_worker") + 1] != "1":
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    main = importlib.import_module(script.removesuffix(".py")).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except Exception:                                     # what the interpreter does with it
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(cmd, code, out.getvalue(), err.getvalue())


def test_train_writes_logs_and_resumes(models, tmp_path):
    proc = run(train_cmd(models, tmp_path, "--generations", "2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    base = tmp_path / "binpacking.cma.2.4"
    hist = json.load(open(f"{base}.hist.json"))
    assert [h[0] for h in hist] == [1, 2]
    best = json.load(open(f"{base}.best.json"))
    assert len(best[0]) == Controller(32, 16, 30).num_params and best[1] <= 0
    assert len(json.load(open(f"{base}.hist_best.json"))) == 1
    proc = run(train_cmd(models, tmp_path, "--generations", "3"))
    assert proc.returncode == 0 and "resuming" in proc.stdout + proc.stderr
    assert [h[0] for h in json.load(open(f"{base}.hist.json"))] == [1, 2, 3]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["generations"] == 3 and summary["real_steps"] > 0
    proc = run(train_cmd(models, tmp_path, "--generations", "4", "--weight_decay", "5"))   # another objective
    assert proc.returncode != 0 and "--weight_decay 0.01 (now 5.0)" in proc.stderr
    assert [h[0] for h in json.load(open(f"{base}.hist.json"))] == [1, 2, 3]               # logs untouched


def test_train_refuses_to_resume_on_a_retrained_m(models, tmp_path):
    rnn = tmp_path / "rnn.json"
    rnn.write_bytes(open(models["rnn"], "rb").read())
    cmd = train_cmd(dict(models, rnn=str(rnn)), tmp_path / "log", "--generations", "1", "--eval_steps", "5")
    assert run(cmd).returncode == 0
    with open(rnn, "a") as f:                       # same path, same weights, other bytes
        f.write("\n")
    proc = run(cmd[:-4] + ["--generations", "2", "--eval_steps", "5"])
    assert proc.returncode != 0 and "another --rnn file" in proc.stderr


def test_train_is_reproducible(models, tmp_path):
    for proc in (run(train_cmd(models, tmp_path / d, "--generations", "2")) for d in ("a", "b")):
        assert proc.returncode == 0, proc.stderr[-2000:]
    ha = json.load(open(tmp_path / "a" / "binpacking.cma.2.4.hist.json"))
    hb = json.load(open(tmp_path / "b" / "binpacking.cma.2.4.hist.json"))
    assert [h[2:5] for h in ha] == [h[2:5] for h in hb]


def test_train_in_the_real_env(models, tmp_path):
    proc = run(train_cmd(models, tmp_path, "--generations", "1", "--env", "real"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["real_steps"] >= 4 * 2 * 6


def test_validation_shares_come_back_in_episode_order():
    from train import join_shares
    totals = np.arange(7.0)
    mean, se, steps = join_shares([(totals[r::3], 10 * r) for r in range(3)])
    assert mean == 3.0 and se == pytest.approx(totals.std(ddof=1) / np.sqrt(7)) and steps == 30
    assert join_shares([(np.array([-4.0]), 6), (np.zeros(0), 0)])[:2] == (-4.0, 0.0)


def test_train_with_mpi_workers(models, tmp_path):
    proc = run(train_cmd(models, tmp_path, "--generations", "2", "--num_worker", "2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.load(open(tmp_path / "binpacking.cma.2.4.hist.json"))) == 2


def test_dead_worker_ends_the_run(models, tmp_path):
    env = dict(os.environ, TRAIN_FAULT_RANK="1")
    proc = run(train_cmd(models, tmp_path, "--generations", "2", "--num_worker", "2"), env=env)
    assert proc.returncode != 0


def test_weight_decay_pulls_the_mean_towards_zero(models, tmp_path):
    """With an overwhelming weight decay CMA-ES keeps the smallest candidates; without it, it does not."""
    norms = {}
    procs = [run(train_cmd(models, tmp_path / wd, "--generations", "3", "--eval_steps", "3", "--weight_decay", wd))
             for wd in ("0", "1e6")]
    for wd, proc in zip(("0", "1e6"), procs):
        assert proc.returncode == 0, proc.stderr[-2000:]
        mean = np.asarray(json.load(open(tmp_path / wd / "binpacking.cma.2.4.json"))[0])
        norms[wd] = float(np.mean(mean ** 2))
    assert norms["1e6"] < 0.5 * norms["0"]


def test_train_rejects_bad_flags(models, tmp_path):
    proc = run(train_cmd(models, tmp_path, "--popsize", "1"))
    assert proc.returncode == 2 and "--popsize" in proc.stderr
    proc = run(train_cmd(models, tmp_path, "--weight_decay", "-1"))
    assert proc.returncode == 2 and "--weight_decay" in proc.stderr
    proc = run([sys.executable, "train.py", "--rnn", str(tmp_path / "missing.json")])
    assert proc.returncode == 2 and "missing.json" in proc.stderr
    proc = run(train_cmd(models, tmp_path, "--picture_every", "5"))
    assert proc.returncode == 2 and "--picture_every needs --dream_reward picture" in proc.stderr
    proc = run(train_cmd(models, tmp_path, "--empty_start_fraction", "0.5"))
    assert proc.returncode == 2 and "--empty_start_fraction needs --dream_starts" in proc.stderr
    proc = run(train_cmd(models, tmp_path, "--empty_start_fraction", "1.5"))
    assert proc.returncode == 2 and "--empty_start_fraction must be in [0, 1]" in proc.stderr
    proc = run(train_cmd(models, tmp_path, "--z_noise", "-1"))
    assert proc.returncode == 2 and "--z_noise: must be a number >= 0" in proc.stderr


def test_notebook_runs_headless_on_a_tiny_log(models, tmp_path):
    assert run(train_cmd(models, tmp_path, "--generations", "2")).returncode == 0
    env = dict(os.environ, LOG_BASE=str(tmp_path / "binpacking.cma.2.4"))
    env.pop("MPLBACKEND", None)
    proc = run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                "plot_training_progress.ipynb", "--output", str(tmp_path / "out.ipynb")], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.load(open(tmp_path / "out.ipynb"))
    images = [o for c in out["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) == 2


def test_render_plays_one_episode_in_the_window(models):
    from controller import load_rnn, load_vae
    from model import render
    rnn, vae = load_rnn(models["rnn"]), load_vae(models["vae"])
    c = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = np.zeros(c.num_params)
    params[-30:] = np.arange(30)
    out = render(c, params, vae, rnn, SHORT, seed=0, fps=1000, max_frames=3)
    assert out["steps"] == 25 and out["total_reward"] == baselines.evaluate_policy(
        baselines.best_fit, SHORT, 1, seed=0)[0]


def test_keyboard_play_in_the_dream(models):
    import play
    from dream_env import BinPackingDream
    game = play.Game(BinPackingDream(models["rnn"], models["initial_z"], models["vae"], time_horizon=4), seed=0)
    assert game.state.shape == (31,)                   # read from V's picture of the dreamed z
    game.key("n")
    assert game.steps == 1
    valid = bool(game.mask[29])
    game.key("2"), game.key("9"), game.key("return")    # refused unless M says level 29 is valid
    assert game.steps == 1 + valid
    assert valid or "not a valid" in game.message


# ---------------------------------------------------------------- dreams begun at real states

def starts_cmd(models, out, *extra):
    return [sys.executable, "dream_starts.py", "--rnn", models["rnn"], "--vae", models["vae"], "--out", str(out),
            *extra]


@pytest.fixture(scope="module")
def tiny_series(models, tmp_path_factory):
    """Two recorded episodes (7 and 4 steps) as series.py writes them."""
    rng = np.random.default_rng(3)
    lengths = np.array([7, 4])
    mu = rng.normal(size=(11, 32)).astype(np.float16)
    mask = (rng.random((11, 30)) < 0.5).astype(np.uint8)
    path = tmp_path_factory.mktemp("series") / "series.npz"
    np.savez(path, mu=mu, logvar=mu, action=rng.integers(30, size=11).astype(np.int16), action_mask=mask,
             reward=np.zeros(11, np.float32), done=np.zeros(11, bool), episode_lengths=lengths,
             episode_names=np.array(["a", "b"]), vae_sha256=np.array("0" * 64))
    return str(path)


def test_dream_starts_from_the_series_are_m_states_along_the_episodes(models, tiny_series, tmp_path):
    from dream_env import load_dream_starts
    from controller import load_rnn
    proc = run(starts_cmd(models, tmp_path / "s.npz", "--series", tiny_series, "--per_episode", "5"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rnn = load_rnn(models["rnn"])
    starts = load_dream_starts(str(tmp_path / "s.npz"), rnn, models["rnn"])
    assert len(starts["z"]) == 5 + 4 and int(starts["real_steps"]) == 0
    s = np.load(tiny_series)
    by_hand = {}                                   # z row -> (h, c, mask) stepping M by hand
    for first, n in ((0, 7), (7, 4)):
        h, c = rnn.initial_state(1)
        for row in range(first, first + n):
            by_hand[s["mu"][row].tobytes()] = (h[0], c[0], s["action_mask"][row])
            h, c, _ = rnn.step(s["mu"][row][None].astype(np.float32), s["action"][row:row + 1].astype(np.int64), h, c)
    for z, h, c, mask in zip(starts["z"], starts["h"], starts["c"], starts["action_mask"]):
        want = by_hand[z.astype(np.float16).tobytes()]
        assert np.allclose(h, want[0], atol=2e-3) and np.allclose(c, want[1], atol=2e-3) and (mask == want[2]).all()
    # every step of the short episode was kept (it has fewer than --per_episode steps)
    kept = {z.astype(np.float16).tobytes() for z in starts["z"]}
    assert all(s["mu"][row].tobytes() in kept for row in range(7, 11))


def test_dream_starts_from_the_controller_count_their_real_steps(models, tmp_path):
    from controller import load_vae
    params = tmp_path / "c.json"
    params.write_text(json.dumps([np.zeros(Controller(32, 16, 30).num_params).tolist(), 0.0]))
    proc = run(starts_cmd(models, tmp_path / "s.npz", "--controller", str(params), "--episodes", "3",
                          "--per_episode", "100", "--time_horizon", "5", "--epsilon", "0", "--seed", "1"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["real_steps"] == 15
    starts = np.load(tmp_path / "s.npz")
    assert len(starts["z"]) == 15 and int(starts["real_steps"]) == 15
    first = np.abs(starts["h"].astype(np.float32)).sum(1) == 0       # the three t = 0 states: h = 0
    assert first.sum() == 3
    from bin_packing_environment import BatchBinPacking
    env = BatchBinPacking(dict(PRESETS["perfect_pack"], time_horizon=5), 3, pictures=True)
    z0, _ = load_vae(models["vae"]).encode_mu_logvar(env.reset(episode_seeds(1, 3, "starts"))["picture"])
    assert np.allclose(np.sort(starts["z"][first], 0), np.sort(z0, 0), atol=1e-5)


def test_epsilon_greedy_explores_only_valid_actions():
    from dream_starts import EpsilonGreedy
    c = Controller(4, 6, 30)
    rng = np.random.default_rng(0)
    params = rng.normal(size=(1, c.num_params))
    x, mask = rng.normal(size=(1, 50, 10)), rng.random((1, 50, 30)) < 0.3
    mask[..., 0] = True
    greedy = c.act(params, x, mask)
    assert (EpsilonGreedy(c, np.zeros(50), rng).act(params, x, mask) == greedy).all()
    explored = EpsilonGreedy(c, np.ones(50), rng).act(params, x, mask)
    assert np.take_along_axis(mask, explored[..., None], -1).all() and (explored != greedy).any()


def test_dream_begins_at_the_recorded_states(models, tiny_series, tmp_path):
    from dream_env import BatchDream, load_dream_starts, load_initial_z
    from controller import load_rnn
    assert run(starts_cmd(models, tmp_path / "s.npz", "--series", tiny_series, "--per_episode", "2")).returncode == 0
    rnn = load_rnn(models["rnn"])
    starts = load_dream_starts(str(tmp_path / "s.npz"), rnn, models["rnn"])
    dream = BatchDream(rnn, load_initial_z(models["initial_z"]), 1.0, 3, starts)
    obs = dream.reset(6, np.random.default_rng(0))
    rows = [int(np.flatnonzero((starts["z"] == z).all(1))[0]) for z in obs["z"]]
    assert np.array_equal(obs["h"], starts["h"][rows]) and np.array_equal(dream.c, starts["c"][rows])
    assert (obs["action_mask"][:, 1:] == starts["action_mask"][rows, 1:]).all()
    assert (obs["action_mask"][:, 0] == 1).all()
    h, _, out = rnn.step(obs["z"], np.zeros(6, int), starts["h"][rows], starts["c"][rows])
    _, reward, _, _ = dream.step(np.zeros(6, int))
    assert np.allclose(dream.h, h) and np.allclose(reward, out["reward"])


def test_a_share_of_dreams_begins_at_the_empty_packing(models, tiny_series, tmp_path):
    from dream_env import BatchDream, CommonRandomNumbers, load_dream_starts, load_initial_z
    from controller import load_rnn
    assert run(starts_cmd(models, tmp_path / "s.npz", "--series", tiny_series, "--per_episode", "5")).returncode == 0
    rnn = load_rnn(models["rnn"])
    starts = load_dream_starts(str(tmp_path / "s.npz"), rnn, models["rnn"])
    later = (starts["h"] != 0).any(1)       # drop recorded first steps: their h is zero as well
    starts = {k: v[later] if np.ndim(v) and len(v) == len(later) else v for k, v in starts.items()}
    initial_z = load_initial_z(models["initial_z"])

    def reset(fraction, n=400, rng=None):
        return BatchDream(rnn, initial_z, 1.0, 3, starts, fraction).reset(n, rng or np.random.default_rng(0))
    mixed = reset(0.25)
    empty = (mixed["h"] == 0).all(1)                # an empty packing starts from M's zero state
    assert 0.15 < empty.mean() < 0.35
    assert (mixed["action_mask"][empty, 1:] == 0).all()            # only a new bin is possible
    assert (reset(1.0)["h"] == 0).all() and not (reset(0.0)["h"] == 0).all(1).any()
    for key in ("z", "h", "action_mask"):                          # 0 draws exactly what it did before
        assert np.array_equal(reset(0.0)[key], BatchDream(rnn, initial_z, 1.0, 3, starts).reset(
            400, np.random.default_rng(0))[key])
    shared = reset(0.5, 8 * 4, CommonRandomNumbers(np.random.default_rng(1), 4))
    empty = (shared["h"] == 0).all(1).reshape(4, 8)               # the same dreams for every member
    assert (empty == empty[:1]).all() and empty.any() and not empty.all()
    with pytest.raises(ValueError, match="empty_start_fraction must be in"):
        BatchDream(rnn, initial_z, 1.0, 3, starts, -0.1)
    with pytest.raises(ValueError, match="it needs starts"):
        BatchDream(rnn, initial_z, 1.0, 3, None, 0.5)


def test_train_in_dreams_begun_at_real_states(models, tiny_series, tmp_path):
    from rnn.rnn import MDNRNN
    assert run(starts_cmd(models, tmp_path / "s.npz", "--series", tiny_series)).returncode == 0
    proc = run(train_cmd(models, tmp_path / "log", "--generations", "2", "--dream_starts", str(tmp_path / "s.npz")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["generations"] == 2 and summary["dream_starts_real_steps"] == 0
    # starts made with another M are refused, and so are a resume with other starts and a file that is not an npz
    MDNRNN(hidden_size=16, seed=1).save_json(str(tmp_path / "other_rnn.json"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    other_m, other_starts, not_npz = map(run, (
        train_cmd(dict(models, rnn=str(tmp_path / "other_rnn.json")), tmp_path / "log2", "--generations", "1",
                  "--dream_starts", str(tmp_path / "s.npz")),
        train_cmd(models, tmp_path / "log", "--generations", "3"),
        train_cmd(models, tmp_path / "log3", "--generations", "1", "--dream_starts", str(tmp_path / "bad.npz"))))
    assert other_m.returncode != 0 and "another M" in other_m.stderr
    assert other_starts.returncode != 0 and "--dream_starts" in other_starts.stderr
    assert not_npz.returncode != 0 and "cannot read dream starts file" in not_npz.stderr
    from dream_env import load_dream_starts
    (tmp_path / "cut.npz").write_bytes((tmp_path / "s.npz").read_bytes()[:3000])    # a truncated file
    with pytest.raises(ValueError, match="cannot read dream starts file"):
        load_dream_starts(str(tmp_path / "cut.npz"))


def test_dream_starts_rejects_bad_flags(models, tmp_path):
    proc = run(starts_cmd(models, tmp_path / "s.npz", "--series", str(tmp_path / "missing.npz")))
    assert proc.returncode == 2 and "missing.npz" in proc.stderr
    proc = run(starts_cmd(models, tmp_path / "s.npz", "--controller", "x.json", "--epsilon", "2"))
    assert proc.returncode == 2 and "--epsilon" in proc.stderr
    proc = run(starts_cmd(models, tmp_path / "s.npz"))
    assert proc.returncode == 2 and "--controller" in proc.stderr
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    proc = run(starts_cmd(models, tmp_path / "s.npz", "--series", str(tmp_path / "garbage.npz")))
    assert proc.returncode == 2 and "cannot read series file" in proc.stderr and not (tmp_path / "s.npz").exists()


def test_common_random_numbers_give_every_member_the_same_dreams(models):
    from dream_env import BatchDream, load_initial_z, rollout_dream
    from controller import load_rnn
    rnn = load_rnn(models["rnn"])
    dream = BatchDream(rnn, load_initial_z(models["initial_z"]), temperature=1.0, time_horizon=8)
    c = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    same = np.tile(np.random.default_rng(1).normal(size=c.num_params) * 0.1, (3, 1))
    shared, _ = rollout_dream(c, same, dream, 4, np.random.default_rng(5), sample_actions=True,
                              common_random_numbers=True)
    # same dreams per member, not per episode (up to BLAS rounding, which may differ between rows)
    assert np.allclose(shared, shared[0], rtol=1e-5, atol=1e-5) and len(set(shared[0].round(3))) > 1
    apart, _ = rollout_dream(c, same, dream, 4, np.random.default_rng(5), sample_actions=True)
    assert not np.allclose(apart, apart[0], rtol=1e-5, atol=1e-5)


def test_train_with_common_random_numbers_on_two_workers(models, tmp_path):
    """Two workers score the same dreams and share the same validation episodes as one worker does."""
    logs = {}
    for workers in ("2", "1"):
        proc = run(train_cmd(models, tmp_path / workers, "--generations", "1", "--eval_steps", "5",
                             "--num_worker", workers, "--common_random_numbers", "--eval_episodes", "5"))
        assert proc.returncode == 0, proc.stderr[-2000:]
        logs[workers] = [json.load(open(tmp_path / workers / f"binpacking.cma.2.4.{name}.json"))
                         for name in ("best", "hist_best")]
    (best2, hist2), (best1, hist1) = logs["2"], logs["1"]
    assert np.allclose(best2[0], best1[0]) and best2[1] == pytest.approx(best1[1], abs=1e-6)
    assert hist2[0][2:4] == pytest.approx(hist1[0][2:4], abs=1e-6) and hist2[0][5] == hist1[0][5] > 0
    tmp_path = tmp_path / "2"
    proc = run(train_cmd(models, tmp_path, "--generations", "2", "--eval_steps", "5"))
    assert proc.returncode != 0 and "--common_random_numbers" in proc.stderr


class PictureOfState:
    """A stand-in V whose decoder draws state number round(z[0]) of a list exactly (with `spread`,
    a number that changes with every coordinate of z, so that nearby z draw different states)."""

    def __init__(self, states, spread=None):
        from bin_packing_environment import encode_states
        self.pictures, self.spread = encode_states(np.asarray(states)), spread

    def decode(self, z):
        z, n = np.asarray(z), len(self.pictures)
        if self.spread:
            return self.pictures[(np.abs(z).sum(1) * self.spread).astype(int) % n]
        return self.pictures[np.clip(np.round(z[:, 0]).astype(int), 0, n - 1)]


def test_rewards_telescope_to_the_waste_read_off_the_pictures():
    """The premise of --dream_reward picture: real rewards over any window sum to the waste before
    minus the waste after, and picture_waste reads that waste off the picture."""
    from bin_packing_environment import BatchBinPacking
    from dream_env import picture_waste
    env = BatchBinPacking(dict(PRESETS["perfect_pack"], time_horizon=60), 5)
    obs = env.reset(episode_seeds(0, 5, "eval"))
    states, rewards = [obs["state"]], []
    rng = np.random.default_rng(0)
    for _ in range(60):
        obs, r, _, _ = env.step(baselines.random_valid_from_uniforms(obs["action_mask"], rng.random(5)))
        states.append(obs["state"])
        rewards.append(r)
    states, rewards = np.stack(states), np.stack(rewards)            # (61, 5, B + 1), (60, 5)
    flat = states.reshape(-1, states.shape[-1])
    waste = picture_waste(PictureOfState(flat), np.arange(len(flat), dtype=np.float32)[:, None], 30)
    waste = waste.reshape(61, 5)
    for start, end in ((0, 60), (7, 37), (20, 21)):
        assert np.allclose(rewards[start:end].sum(0), waste[start] - waste[end])


def test_picture_reward_of_a_dream_is_the_waste_difference(models):
    from dream_env import BatchDream, load_initial_z, picture_waste, rollout_dream
    from controller import load_rnn
    rnn = load_rnn(models["rnn"])
    states = np.zeros((40, 31), int)
    states[:, 1:30] = np.random.default_rng(0).integers(0, 4, size=(40, 29))
    states[:, -1] = 3
    vae = PictureOfState(states)
    dream = BatchDream(rnn, load_initial_z(models["initial_z"]), temperature=1.0, time_horizon=1)
    c = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = np.random.default_rng(1).normal(size=(2, c.num_params)) * 0.1
    pic, _ = rollout_dream(c, params, dream, 3, np.random.default_rng(5), picture_vae=vae)
    m, _ = rollout_dream(c, params, dream, 3, np.random.default_rng(5))
    last = dream.z                                   # one step: every dream ends at the same z as above
    first = BatchDream(rnn, load_initial_z(models["initial_z"]), 1.0, 1).reset(6, np.random.default_rng(5))["z"]
    expected = picture_waste(vae, first, 30) - picture_waste(vae, last, 30)
    assert np.allclose(pic.reshape(-1), expected) and not np.allclose(pic, m)


def test_picture_every_averages_the_waste_of_the_dreams_second_half(models):
    from dream_env import BatchDream, load_initial_z, picture_steps, picture_waste, rollout_dream
    from controller import load_rnn
    assert picture_steps(100, 0) == [100] and picture_steps(100, 5) == list(range(55, 101, 5))
    assert picture_steps(7, 2) == [5, 7]
    rnn = load_rnn(models["rnn"])
    states = np.zeros((40, 31), int)
    states[:, 1:30] = np.random.default_rng(0).integers(0, 4, size=(40, 29))
    states[:, -1] = 3
    vae, initial_z = PictureOfState(states, spread=100), load_initial_z(models["initial_z"])
    c = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = np.random.default_rng(1).normal(size=(2, c.num_params)) * 0.1
    pic, _ = rollout_dream(c, params, BatchDream(rnn, initial_z, 1.0, 6), 3, np.random.default_rng(5),
                           picture_vae=vae, picture_every=2)
    # the same dreams by hand: same draws, so the same z at steps 4 and 6
    dream, rng = BatchDream(rnn, initial_z, 1.0, 6), np.random.default_rng(5)
    obs = dream.reset(6, rng)
    first = last = obs["z"]
    seen, done = {}, np.zeros(6, bool)
    while not done.all():
        actions = c.act(params, np.concatenate([obs["z"], obs["h"]], 1).reshape(2, 3, -1),
                        obs["action_mask"].reshape(2, 3, -1)).reshape(-1)
        was_done = done
        obs, _, done, _ = dream.step(actions)
        last = np.where(was_done[:, None], last, obs["z"])
        seen[dream.t] = last
    end = [picture_waste(vae, seen.get(t, last), 30) for t in (4, 6)]
    assert not np.allclose(end[0], end[1])                    # so reading only the last would differ
    assert np.allclose(pic.reshape(-1), picture_waste(vae, first, 30) - np.mean(end, axis=0))


def test_train_with_the_picture_reward(models, tmp_path):
    proc = run(train_cmd(models, tmp_path, "--generations", "1", "--eval_steps", "5", "--dream_reward", "picture"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run(train_cmd(models, tmp_path, "--generations", "2", "--eval_steps", "5"))
    assert proc.returncode != 0 and "--dream_reward picture" in proc.stderr


# ---------------------------------------------------------------- the rules reward (--dream_reward rules)

@pytest.fixture(scope="module")
def mlp_rnn(tmp_path_factory):
    """A small random M with the mlp transition (its item head draws the dream's items)."""
    from rnn.rnn import MDNRNN
    path = tmp_path_factory.mktemp("mlp") / "rnn.json"
    MDNRNN(hidden_size=16, seed=0, transition="mlp", z_input="mean", transition_hidden=32, transition_layers=2,
           num_items=9).save_json(str(path))
    return str(path)


def test_rules_rewards_are_the_environments_for_valid_actions():
    from bin_packing_environment import BatchBinPacking
    from dream_env import rules_rewards
    env = BatchBinPacking(dict(PRESETS["perfect_pack"], time_horizon=80), 6)
    obs = env.reset(episode_seeds(0, 6, "eval"))
    rng = np.random.default_rng(0)
    for _ in range(80):
        actions = baselines.random_valid_from_uniforms(obs["action_mask"], rng.random(6))
        item = obs["state"][:, -1]
        obs, reward, _, _ = env.step(actions)
        assert np.array_equal(rules_rewards(item, actions, 30), reward)


def test_rules_reward_of_a_dream_counts_the_bins_c_opens(models, mlp_rnn):
    """The first item read off the start picture, then M's drawn items: the total is the items'
    sum minus the bin size for every new bin, replayed by hand on the same draws."""
    from dream_env import BatchDream, load_initial_z, rollout_dream
    from controller import load_rnn
    rnn, initial_z = load_rnn(mlp_rnn), load_initial_z(models["initial_z"])
    states = np.zeros((40, 31), int)
    states[:, 1:30] = np.random.default_rng(0).integers(0, 4, size=(40, 29))
    states[:, -1] = np.random.default_rng(1).integers(1, 10, size=40)
    vae = PictureOfState(states, spread=100)
    c = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = np.random.default_rng(1).normal(size=(2, c.num_params))
    rules, _ = rollout_dream(c, params, BatchDream(rnn, initial_z, 1.0, 8), 3, np.random.default_rng(5),
                             rules_vae=vae)
    m, _ = rollout_dream(c, params, BatchDream(rnn, initial_z, 1.0, 8), 3, np.random.default_rng(5))
    dream, rng = BatchDream(rnn, initial_z, 1.0, 8), np.random.default_rng(5)
    obs = dream.reset(6, rng)
    item = states[(np.abs(obs["z"]).sum(1) * 100).astype(int) % 40, -1]
    items, new_bins, done = np.zeros(6), np.zeros(6), np.zeros(6, bool)
    while not done.all():
        actions = c.act(params, np.concatenate([obs["z"], obs["h"]], 1).reshape(2, 3, -1),
                        obs["action_mask"].reshape(2, 3, -1)).reshape(-1)
        live = ~done
        items += np.where(live, item, 0)
        new_bins += live & (actions == 0)
        obs, _, done, info = dream.step(actions)
        assert set(np.unique(info["next_item"])) <= set(range(1, 10))
        item = info["next_item"]
    assert 0 < new_bins.sum() < 48                        # some new bins, some items into bins
    assert np.allclose(rules.reshape(-1), items - 30 * new_bins) and not np.allclose(rules, m)


def test_rules_reward_needs_the_mlp_transition(models, mlp_rnn, tmp_path):
    from dream_env import BatchDream, load_initial_z, rollout_dream
    from controller import load_rnn, load_vae
    rnn, vae = load_rnn(models["rnn"]), load_vae(models["vae"])
    c = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    dream = BatchDream(rnn, load_initial_z(models["initial_z"]), 1.0, 4)
    with pytest.raises(ValueError, match="mlp transition"):
        rollout_dream(c, np.zeros((1, c.num_params)), dream, 2, np.random.default_rng(0), rules_vae=vae)
    proc = run(train_cmd(models, tmp_path / "mdn", "--generations", "1", "--dream_reward", "rules"))
    assert proc.returncode != 0 and "--transition mlp" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(train_cmd(dict(models, rnn=mlp_rnn), tmp_path / "mlp", "--generations", "1", "--eval_steps", "5",
                         "--dream_reward", "rules", "--common_random_numbers"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(json.load(open(tmp_path / "mlp" / "binpacking.cma.2.4.hist.json"))) == 1
