"""End-to-end tests of the training stages on six tiny episodes (full-size V and M, few steps).

record/ -> vae_train -> series -> rnn_train -> copy_models -> dream_fidelity, each through its
main(argv); plus resuming, determinism, unusable episode files and mismatched artifacts.
"""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest

import copy_models
from analysis import dream_fidelity
import rnn_train
import series
import vae_train
from baselines import best_fit, evaluate_policy, random_valid
from bin_packing_environment import PRESETS, BatchBinPacking, episode_seeds, write_episode_npz
from stages_common import holdout_mask, sha256_file

EPISODES, HORIZON, BAD_FILES = 6, 30, 3


def run(main, argv):
    """main(argv) with its stdout captured: (result, text)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = main([str(a) for a in argv])
    return result, out.getvalue()


def run_fails(main, argv, capsys):
    """main(argv) must exit with status 2 and one line on stderr; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def no_temp_files(directory):
    return not [p for p in directory.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """Six short episodes (best fit with random moves) and three unusable files."""
    directory = tmp_path_factory.mktemp("record")
    rng = np.random.default_rng(0)
    env = BatchBinPacking(dict(PRESETS["perfect_pack"], time_horizon=HORIZON), EPISODES, pictures=True)
    obs = env.reset(episode_seeds(0, EPISODES, "rollout"))
    steps = {k: [] for k in ("obs", "action", "reward", "done", "action_mask", "state")}
    done = np.zeros(EPISODES, bool)
    while not done.all():
        explore = rng.random(EPISODES) < 0.3
        actions = np.where(explore, random_valid(obs["state"], obs["action_mask"], rng),
                           best_fit(obs["state"], obs["action_mask"]))
        before = obs
        obs, reward, done, _ = env.step(actions)
        for key, value in (("obs", before["picture"]), ("action", actions), ("reward", reward), ("done", done),
                           ("action_mask", before["action_mask"]), ("state", before["state"])):
            steps[key].append(value)
    for i in range(EPISODES):
        write_episode_npz(directory, {k: np.stack(v, 1)[i] for k, v in steps.items()}, name=f"ep{i:02d}")
    (directory / "garbage.npz").write_bytes(b"not a zip file")
    (directory / "empty.npz").write_bytes(b"")
    good = (directory / "ep00.npz").read_bytes()
    (directory / "truncated.npz").write_bytes(good[:len(good) // 2])
    return directory


VAE_FLAGS = ["--frames_per_episode", 4, "--batch_size", 8, "--eval_frames", 30]


@pytest.fixture(scope="module")
def trained_vae(record, tmp_path_factory):
    """vae_train for one epoch, then again with --epochs 2 (resumes), and a fresh 2-epoch run."""
    out = tmp_path_factory.mktemp("tf_vae")
    first = run(vae_train.main, ["--record_dir", record, "--out_dir", out, "--epochs", 1] + VAE_FLAGS)
    second = run(vae_train.main, ["--record_dir", record, "--out_dir", out, "--epochs", 2] + VAE_FLAGS)
    fresh_dir = tmp_path_factory.mktemp("tf_vae_fresh")
    fresh = run(vae_train.main, ["--record_dir", record, "--out_dir", fresh_dir, "--epochs", 2] + VAE_FLAGS)
    return {"out": out, "first": first, "second": second, "fresh_dir": fresh_dir, "fresh": fresh}


def test_vae_train_writes_model_and_fidelity_report(trained_vae):
    out = trained_vae["out"]
    report, text = trained_vae["first"]
    assert (out / "vae.json").exists() and (out / "checkpoint" / "vae_checkpoint.npz").exists()
    assert report["epochs_completed"] == 1 and report["resumed_from"] is None
    assert report["train_episodes"] + len(report["heldout_episodes"]) == EPISODES
    assert report["frames_trained_this_run"] == 4 * report["train_episodes"]
    saved = json.loads((out / "vae_report.json").read_text())
    fid = saved["fidelity"]
    assert fid["frames"] == HORIZON * len(report["heldout_episodes"])
    for key in ("state_exact", "mask_exact", "item_exact", "state_exact_nearest_band", "mask_exact_nearest_band"):
        assert 0 <= fid[key] <= 1
    assert set(saved["targets_met"]) == {"mask_exact", "item_exact"}
    assert "held-out fidelity" in text and "mask exact" in text
    assert no_temp_files(out)


def test_unusable_episode_files_are_skipped_and_counted(trained_vae):
    report, text = trained_vae["first"]
    assert report["skipped_files"] == BAD_FILES
    assert f"skipped {BAD_FILES} unusable episode file(s)" in text


def test_vae_train_resumes_from_the_next_epoch_and_matches_an_uninterrupted_run(trained_vae):
    report, text = trained_vae["second"]
    assert "resuming from checkpoint" in text and "epoch 2 of 2" in text
    assert report["resumed_from"] == {"epoch": 2, "batch": 0}
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert report["frames_trained_this_run"] == 4 * report["train_episodes"]      # one epoch only
    assert (trained_vae["out"] / "vae.json").read_bytes() == (trained_vae["fresh_dir"] / "vae.json").read_bytes()


def test_vae_train_resumes_inside_an_epoch(record, trained_vae, tmp_path, monkeypatch):
    from vae.vae import ConvVAE
    original, calls = ConvVAE.train_step, []

    def killed_on_the_fifth_batch(self, batch):
        calls.append(1)
        if len(calls) == 5:                         # epoch 2, batch 2 (3 batches per epoch)
            raise KeyboardInterrupt
        return original(self, batch)

    argv = ["--record_dir", record, "--out_dir", tmp_path, "--epochs", 2, "--checkpoint_minutes", 1e-9] + VAE_FLAGS
    monkeypatch.setattr(ConvVAE, "train_step", killed_on_the_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        run(vae_train.main, argv)
    monkeypatch.setattr(ConvVAE, "train_step", original)
    report, text = run(vae_train.main, argv)
    assert report["resumed_from"] == {"epoch": 2, "batch": 1}
    assert (tmp_path / "vae.json").read_bytes() == (trained_vae["fresh_dir"] / "vae.json").read_bytes()


def test_vae_train_refuses_a_checkpoint_made_with_other_flags(record, trained_vae, capsys):
    line = run_fails(vae_train.main, ["--record_dir", record, "--out_dir", trained_vae["out"], "--epochs", 2,
                                      "--frames_per_episode", 5, "--batch_size", 8], capsys)
    assert "--frames_per_episode 4 (now 5)" in line and "--restart" in line
    line = run_fails(vae_train.main, ["--record_dir", record, "--out_dir", trained_vae["out"], "--epochs", 2,
                                      "--recon_loss", "bce"] + VAE_FLAGS, capsys)
    assert "--recon_loss l2 (now bce)" in line


def test_vae_train_resumes_a_checkpoint_made_before_the_newer_flags(record, trained_vae, tmp_path, capsys):
    """A checkpoint without recon_loss / init_from in its flags was an l2 run from random weights."""
    shutil.copytree(trained_vae["out"] / "checkpoint", tmp_path / "checkpoint")
    path = tmp_path / "checkpoint" / "vae_checkpoint.npz"
    with np.load(path) as ck:
        data = {k: ck[k] for k in ck.files}
    meta = json.loads(str(data["meta"]))
    del meta["recon_loss"], meta["init_from"]
    data["meta"] = np.array(json.dumps(meta))
    np.savez(path, **data)
    report, text = run(vae_train.main, ["--record_dir", record, "--out_dir", tmp_path, "--epochs", 3] + VAE_FLAGS)
    assert report["resumed_from"] == {"epoch": 3, "batch": 0} and report["epochs_completed"] == 3
    line = run_fails(vae_train.main, ["--record_dir", record, "--out_dir", tmp_path, "--epochs", 4,
                                      "--recon_loss", "bce"] + VAE_FLAGS, capsys)
    assert "--recon_loss l2 (now bce)" in line


def test_vae_train_with_the_cross_entropy_loss_writes_a_bce_vae(record, tmp_path):
    report, _ = run(vae_train.main, ["--record_dir", record, "--out_dir", tmp_path, "--epochs", 1,
                                     "--recon_loss", "bce"] + VAE_FLAGS)
    assert report["flags"]["recon_loss"] == "bce"
    assert json.loads((tmp_path / "vae.json").read_text())["recon_loss"] == "bce"


def test_vae_train_init_from_starts_at_the_given_weights(record, trained_vae, tmp_path, capsys):
    from vae.vae import ConvVAE
    source = trained_vae["fresh_dir"] / "vae.json"
    report, text = run(vae_train.main, ["--record_dir", record, "--out_dir", tmp_path, "--epochs", 1,
                                        "--init_from", source, "--learning_rate", 1e-12] + VAE_FLAGS)
    assert "starting from the weights of" in text and report["flags"]["init_from"] == str(source)
    tuned = ConvVAE.from_json(tmp_path / "vae.json").get_weights_flat()
    start = ConvVAE.from_json(source).get_weights_flat()
    random_start = ConvVAE(seed=0).get_weights_flat()          # where the run would start without the flag
    assert np.abs(tuned - start).max() < 1e-6 < np.abs(random_start - start).max()
    # a checkpoint made from another start is not resumed silently
    line = run_fails(vae_train.main, ["--record_dir", record, "--out_dir", tmp_path, "--epochs", 2,
                                      "--learning_rate", 1e-12] + VAE_FLAGS, capsys)
    assert "--init_from" in line
    line = run_fails(vae_train.main, ["--record_dir", record, "--out_dir", tmp_path / "bce", "--epochs", 1,
                                      "--init_from", source, "--recon_loss", "bce"] + VAE_FLAGS, capsys)
    assert "has recon_loss l2, this run has --recon_loss bce" in line
    line = run_fails(vae_train.main, ["--record_dir", record, "--out_dir", tmp_path / "none", "--epochs", 1,
                                      "--init_from", tmp_path / "missing.json"] + VAE_FLAGS, capsys)
    assert "missing.json: no such file" in line


@pytest.fixture(scope="module")
def series_file(record, trained_vae, tmp_path_factory):
    out = tmp_path_factory.mktemp("series") / "series.npz"
    result, text = run(series.main, ["--record_dir", record, "--vae", trained_vae["out"] / "vae.json",
                                     "--out", out, "--batch", 50])
    return out, result, text


def test_series_encodes_every_usable_episode(series_file, trained_vae, record):
    path, result, text = series_file
    assert result["skipped_files"] == BAD_FILES and f"skipped {BAD_FILES}" in text
    with np.load(path) as d:
        total = EPISODES * HORIZON
        for key, dtype, shape in (("mu", np.float16, (total, 32)), ("logvar", np.float16, (total, 32)),
                                  ("action", np.int16, (total,)), ("reward", np.float32, (total,)),
                                  ("done", np.bool_, (total,)), ("action_mask", np.uint8, (total, 30)),
                                  ("episode_lengths", np.int64, (EPISODES,))):
            assert d[key].dtype == dtype and d[key].shape == shape, key
        assert d["episode_lengths"].tolist() == [HORIZON] * EPISODES
        assert [str(n) for n in d["episode_names"]] == [f"ep{i:02d}" for i in range(EPISODES)]
        assert str(d["vae_sha256"]) == sha256_file(trained_vae["out"] / "vae.json")
        assert d["done"].reshape(EPISODES, HORIZON)[:, -1].all()
        # the encoding is V's mu of the recorded pictures
        from bin_packing_environment import load_episode_npz
        from vae.vae import ConvVAE
        vae = ConvVAE.from_json(trained_vae["out"] / "vae.json")
        mu, _ = vae.encode_mu_logvar(load_episode_npz(str(record / "ep00.npz"))["obs"])
        np.testing.assert_allclose(d["mu"][:HORIZON].astype(np.float32), mu, atol=2e-3, rtol=2e-3)


def test_series_refuses_a_vae_of_another_z_size(record, trained_vae, tmp_path, capsys):
    line = run_fails(series.main, ["--record_dir", record, "--vae", trained_vae["out"] / "vae.json",
                                   "--out", tmp_path / "s.npz", "--z_size", 16], capsys)
    assert "z_size 32, expected 16" in line
    assert not (tmp_path / "s.npz").exists()


def test_series_reads_several_record_dirs_and_refuses_repeated_names(series_file, record, trained_vae, tmp_path,
                                                                    capsys):
    import shutil
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(record / "ep00.npz", more / "later_ep00.npz")       # one of C's episodes of a later round
    result, _ = run(series.main, ["--record_dir", record, more, "--vae", trained_vae["out"] / "vae.json",
                                  "--out", tmp_path / "s.npz", "--batch", 50])
    assert result["episodes"] == EPISODES + 1 and result["skipped_files"] == BAD_FILES
    with np.load(tmp_path / "s.npz") as d, np.load(series_file[0]) as one:
        assert [str(n) for n in d["episode_names"]] == [f"ep{i:02d}" for i in range(EPISODES)] + ["later_ep00"]
        np.testing.assert_allclose(d["mu"][-HORIZON:].astype(np.float32), one["mu"][:HORIZON].astype(np.float32),
                                   atol=2e-3, rtol=2e-3)
    # the held-out split goes by name, so the same name in two directories is refused
    shutil.copy(record / "ep00.npz", more / "ep00.npz")
    line = run_fails(series.main, ["--record_dir", record, more, "--vae", trained_vae["out"] / "vae.json",
                                   "--out", tmp_path / "s2.npz"], capsys)
    assert "episode names repeat" in line and "ep00" in line and not (tmp_path / "s2.npz").exists()


RNN_FLAGS = ["--seq_len", 10, "--batch_size", 8, "--checkpoint_every", 2, "--eval_every", 2]


@pytest.fixture(scope="module")
def trained_rnn(series_file, tmp_path_factory):
    """rnn_train for 4 steps, resumed to 6, and a fresh 6-step run to compare with."""
    path = series_file[0]
    out = tmp_path_factory.mktemp("tf_rnn")
    first = run(rnn_train.main, ["--series", path, "--out_dir", out, "--steps", 4] + RNN_FLAGS)
    second = run(rnn_train.main, ["--series", path, "--out_dir", out, "--steps", 6] + RNN_FLAGS)
    fresh_dir = tmp_path_factory.mktemp("tf_rnn_fresh")
    fresh = run(rnn_train.main, ["--series", path, "--out_dir", fresh_dir, "--steps", 6] + RNN_FLAGS)
    return {"out": out, "first": first, "second": second, "fresh_dir": fresh_dir, "fresh": fresh}


def test_rnn_train_writes_model_initial_z_provenance_and_report(trained_rnn, trained_vae, series_file):
    out = trained_rnn["out"]
    from rnn.rnn import read_json
    hp, _ = read_json(out / "rnn.json")
    assert (hp["z_size"], hp["action_size"], hp["hidden_size"], hp["num_mixtures"]) == (32, 30, 256, 5)

    from dream_env import load_initial_z
    iz = load_initial_z(str(out / "initial_z.json"))
    prov = json.loads((out / "provenance.json").read_text())
    train = prov["train_episodes"]
    assert train + len(prov["heldout_episodes"]) == EPISODES
    assert iz["mu"].shape == iz["logvar"].shape == (train, 32)
    assert iz["action_mask"].shape == (train, 30)
    assert (iz["action_mask"][:, 0] == 1).all() and (iz["action_mask"][:, 1:] == 0).all()  # empty packing
    assert prov["vae_sha256"] == sha256_file(trained_vae["out"] / "vae.json")
    assert prov["rnn_sha256"] == sha256_file(out / "rnn.json")
    # the same episodes are held out from V and from M
    assert prov["heldout_episodes"] == trained_vae["first"][0]["heldout_episodes"]

    report = json.loads((out / "rnn_report.json").read_text())
    held = report["heldout"]
    assert held["steps"] == HORIZON * len(prov["heldout_episodes"])
    for key in ("reward_exact", "done_accuracy", "mask_action_accuracy", "mask_exact"):
        assert 0 <= held[key] <= 1
    assert np.isfinite(held["next_z_nll"]) and held["reward_mae"] >= 0
    assert [h["step"] for h in report["history"]] == [2, 4, 6]
    assert "heldout" in report["history"][0]
    assert no_temp_files(out)


def test_rnn_train_resumes_and_matches_an_uninterrupted_run(trained_rnn):
    report, text = trained_rnn["second"]
    assert "resuming from checkpoint" in text and "at step 4 of 6" in text
    assert report["resumed_from_step"] == 4 and report["steps_this_run"] == 2
    assert (trained_rnn["out"] / "rnn.json").read_bytes() == (trained_rnn["fresh_dir"] / "rnn.json").read_bytes()


def test_rnn_train_init_from_starts_at_the_given_weights(trained_rnn, series_file, tmp_path, capsys):
    from rnn.rnn import read_json
    path, source = series_file[0], trained_rnn["fresh_dir"] / "rnn.json"
    report, text = run(rnn_train.main, ["--series", path, "--out_dir", tmp_path, "--steps", 1, "--init_from", source,
                                        "--learning_rate", 1e-12] + RNN_FLAGS)
    assert "starting from the weights of" in text and report["flags"]["init_from"] == str(source)
    tuned, start = read_json(tmp_path / "rnn.json")[1], read_json(source)[1]
    assert max(np.abs(tuned[k] - start[k]).max() for k in start) < 1e-6
    other = tmp_path / "scratch"                    # without the flag, the same run starts elsewhere
    run(rnn_train.main, ["--series", path, "--out_dir", other, "--steps", 1, "--learning_rate", 1e-12] + RNN_FLAGS)
    assert max(np.abs(read_json(other / "rnn.json")[1][k] - start[k]).max() for k in start) > 1e-3
    # a checkpoint made from another start is not resumed silently
    line = run_fails(rnn_train.main, ["--series", path, "--out_dir", tmp_path, "--steps", 2,
                                      "--learning_rate", 1e-12] + RNN_FLAGS, capsys)
    assert "--init_from" in line
    line = run_fails(rnn_train.main, ["--series", path, "--out_dir", tmp_path / "shared", "--steps", 1,
                                      "--init_from", source, "--mixture", "shared"] + RNN_FLAGS, capsys)
    assert "has mixture per_dim, this run has shared" in line
    line = run_fails(rnn_train.main, ["--series", path, "--out_dir", tmp_path / "none", "--steps", 1,
                                      "--init_from", tmp_path / "missing.json"] + RNN_FLAGS, capsys)
    assert "missing.json: no such file" in line


def test_rnn_train_resumes_a_checkpoint_made_before_init_from(trained_rnn, series_file, tmp_path):
    shutil.copytree(trained_rnn["out"] / "checkpoint", tmp_path / "checkpoint")
    path = tmp_path / "checkpoint" / "rnn_checkpoint.npz"
    with np.load(path) as ck:
        data = {k: ck[k] for k in ck.files}
    meta = json.loads(str(data["meta"]))
    del meta["init_from"]
    data["meta"] = np.array(json.dumps(meta))
    np.savez(path, **data)
    report, text = run(rnn_train.main, ["--series", series_file[0], "--out_dir", tmp_path, "--steps", 7] + RNN_FLAGS)
    assert report["resumed_from_step"] == 6 and report["steps_this_run"] == 1


def test_training_windows_cover_episode_ends():
    """Windows padded after an episode's end; the last step keeps its reward and done."""
    class Fake(series.Series):
        def __init__(self):
            self.lengths = np.array([3, 5])
            self.offsets = np.array([0, 3])
            self.mu = np.arange(8, dtype=np.float16)[:, None].repeat(2, 1)
            self.logvar = np.full((8, 2), -20, np.float16)            # z = mu up to 5e-5
            self.action = np.arange(8, dtype=np.int32)
            self.reward = np.arange(8, dtype=np.float32)
            self.done = np.array([0, 0, 1, 0, 0, 0, 0, 1], np.float32)
            self.action_mask = np.eye(8, dtype=np.uint8)
            self.item = None                                            # a series without item labels
    s = Fake()
    w = s.windows(np.array([0, 1]), np.array([0, 2]), np.array([3, 3]), 4, np.random.default_rng(0))
    assert w["weights"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0]]
    z, next_z = np.rint(w["z"][..., 0]), np.rint(w["next_z"][..., 0])
    assert z[0, :3].tolist() == [0, 1, 2] and z[1, :3].tolist() == [5, 6, 7]
    assert next_z[0, :3].tolist() == [1, 2, 2]                   # last step: z_t stands in for z_{t+1}
    assert next_z[1, :3].tolist() == [6, 7, 7]
    np.testing.assert_array_equal(w["next_z"][:, :1], w["z"][:, 1:2])   # the same sample, WM style
    assert w["dones"][0, :3].tolist() == [0, 0, 1] and w["dones"][1, :3].tolist() == [0, 0, 1]
    assert w["next_masks"][0, :3].argmax(-1).tolist() == [1, 2, 2]
    assert w["has_next"].tolist() == [[True, True, False, False], [True, True, False, False]]
    batch = s.sample(np.array([0, 1]), 64, 4, np.random.default_rng(1))
    assert batch["dones"][batch["weights"] > 0].sum() > 0            # episode ends are trained on


@pytest.fixture(scope="module")
def installed(trained_vae, trained_rnn, tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    out = trained_rnn["out"]
    run(copy_models.main, ["--vae", trained_vae["out"] / "vae.json", "--rnn", out / "rnn.json",
                           "--initial_z", out / "initial_z.json", "--out_root", root])
    return root


def test_copy_models_installs_the_checked_set(installed, trained_vae, trained_rnn):
    out = trained_rnn["out"]
    for src, dst in ((trained_vae["out"] / "vae.json", "vae/vae.json"), (out / "rnn.json", "rnn/rnn.json"),
                     (out / "initial_z.json", "initial_z/initial_z.json"),
                     (out / "provenance.json", "rnn/provenance.json")):
        assert (installed / dst).read_bytes() == src.read_bytes(), dst
    assert no_temp_files(installed)


def test_copy_models_refuses_mismatched_artifacts(trained_vae, trained_rnn, tmp_path, capsys):
    from rnn.rnn import MDNRNN
    from vae.vae import ConvVAE
    out = trained_rnn["out"]
    vae_json = trained_vae["out"] / "vae.json"
    base = ["--initial_z", out / "initial_z.json", "--out_root", tmp_path / "root"]

    small = tmp_path / "rnn16.json"
    MDNRNN(z_size=16, hidden_size=8).save_json(small)
    line = run_fails(copy_models.main, ["--vae", vae_json, "--rnn", small, "--provenance", out / "provenance.json"]
                     + base, capsys)
    assert "z_size 16" in line and "z_size 32" in line

    other = tmp_path / "other_vae.json"
    ConvVAE(seed=7).save_json(other)
    line = run_fails(copy_models.main, ["--vae", other, "--rnn", out / "rnn.json"] + base, capsys)
    assert "another VAE" in line and "vae_sha256" in line

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "rnn.json").write_bytes((out / "rnn.json").read_bytes())
    line = run_fails(copy_models.main, ["--vae", vae_json, "--rnn", lonely / "rnn.json"] + base, capsys)
    assert "provenance" in line and "not found" in line
    assert not (tmp_path / "root").exists()                  # nothing was copied


def test_dream_fidelity_reports_horizons_within_the_episodes(installed, record, tmp_path, capsys):
    out = tmp_path / "fidelity.json"
    no_ranking = ["--ranking_horizons", ""]                   # test_dream_fidelity_ranks_... covers it
    result, text = run(dream_fidelity.main, ["--record_dir", record, "--vae", installed / "vae" / "vae.json",
                                             "--rnn", installed / "rnn" / "rnn.json", "--out", out] + no_ranking)
    prov = json.loads((installed / "rnn" / "provenance.json").read_text())
    assert result["episodes"] == prov["heldout_episodes"]
    assert [r["horizon"] for r in result["horizons"]] == [1, 10]          # episodes are 30 steps long
    for row in result["horizons"]:
        for key in ("decoded_mask_exact", "head_mask_exact", "reward_exact"):
            assert 0 <= row[key] <= 1
    assert result["horizons"][1]["frames"] == 10 * len(result["episodes"])
    assert "| horizon k |" in text and "correlation" in text
    legal = result["one_step_legal"]
    assert legal["steps"] == 29 * len(result["episodes"]) and 0 <= legal["m"] <= 1 and 0 <= legal["v"] <= 1
    assert "V's reading of the real step" in text
    assert json.loads(out.read_text())["total_reward"]["episodes"] == len(result["episodes"])

    assert result["policy_ranking"] is None
    again, _ = run(dream_fidelity.main, ["--record_dir", record, "--vae", installed / "vae" / "vae.json",
                                         "--rnn", installed / "rnn" / "rnn.json", "--out", tmp_path / "b.json"]
                   + no_ranking)
    assert again["horizons"] == result["horizons"]                        # same seed, same numbers
    # without provenance.json the same episodes come from the --holdout split of seed 0
    split, _ = run(dream_fidelity.main, ["--record_dir", record, "--vae", installed / "vae" / "vae.json",
                                         "--rnn", installed / "rnn" / "rnn.json", "--out", tmp_path / "c.json",
                                         "--no_provenance"] + no_ranking)
    assert split["episodes"] == result["episodes"] and "--holdout" in split["episodes_source"]


def test_one_step_legality_is_exact_for_a_v_that_reads_pictures_exactly():
    from bin_packing_environment import decode_pictures, encode_states
    from rnn.rnn import MDNRNN, RNNNumpy

    class ExactV:                         # z is the state itself: V reads and draws every picture exactly
        def encode_mu_logvar(self, frames):
            states = decode_pictures(frames).astype(np.float32)
            return states, np.zeros_like(states)

        def decode(self, z):
            states = np.maximum(np.rint(z), 0).astype(np.int64)
            states[:, -1] = np.minimum(states[:, -1], 9)
            return encode_states(states)

    env = BatchBinPacking("perfect_pack", num_envs=2, pictures=True)
    obs = env.reset(episode_seeds(0, 2))
    rng = np.random.default_rng(0)
    frames, actions = [], []
    for _ in range(20):
        frames.append(obs["picture"])
        actions.append(random_valid(obs["state"], obs["action_mask"], rng))
        obs, _, _, _ = env.step(actions[-1])
    episodes = [{"obs": np.stack(frames)[:, i], "action": np.stack(actions)[:, i]} for i in range(2)]
    rnn = RNNNumpy.from_model(MDNRNN(z_size=31, hidden_size=8, mixture="shared", z_input="mean"))
    legal = dream_fidelity.one_step_legality(ExactV(), rnn, episodes, 1.0, np.random.default_rng(0))
    assert legal["steps"] == 2 * 19 and legal["v"] == 1.0      # an untrained M, though, breaks the rules
    assert legal["m"] < 0.5


def worst_fit(states, masks, rng=None):
    """The emptiest open bin the item fits in (lowest valid level >= 1); a new bin only if none fits."""
    levels = np.arange(masks.shape[1])
    lowest = np.where(masks.astype(bool) & (levels >= 1), levels, masks.shape[1]).min(-1)
    return np.where(lowest < masks.shape[1], lowest, 0)


def test_dream_fidelity_ranks_fixed_policies(installed, record, tmp_path):
    out = tmp_path / "fidelity.json"
    argv = ["--record_dir", record, "--vae", installed / "vae" / "vae.json", "--rnn", installed / "rnn" / "rnn.json",
            "--out", out, "--ranking_horizons", "10,5", "--ranking_episodes", 4, "--ranking_real_episodes", 2,
            "--ranking_real_horizon", HORIZON,
            "--coherence_dreams", 3, "--coherence_horizon", 10]
    result, text = run(dream_fidelity.main, argv)
    ranking = json.loads(out.read_text())["policy_ranking"]
    coherence = ranking["coherence"]                 # Best Fit, closed loop
    assert coherence["dreams"] == 3 and [r["step"] for r in coherence["steps"]] == [0, 1, 2, 5, 10]
    assert all(0 <= r["mask_agrees"] <= 1 and r["waste"] >= 0 for r in coherence["steps"])
    assert 0 <= coherence["invalid_by_picture"] <= 1 and 0 <= coherence["new_bins_per_step"] <= 1
    assert 0 <= coherence["legal_steps"] <= 1 and "legal_step" not in coherence["steps"][0]
    assert all(0 <= r["legal_step"] <= 1 for r in coherence["steps"][1:])
    # the two parts of the pictured waste's change add up to it
    assert np.isfinite(coherence["waste_by_actions_per_step"] + coherence["waste_by_illegal_steps_per_step"])
    change = (coherence["steps"][-1]["waste"] - coherence["steps"][0]["waste"]) / 10
    assert abs(coherence["waste_by_actions_per_step"] + coherence["waste_by_illegal_steps_per_step"] - change) < 1e-6
    assert "does the dream stay a packing?" in text
    assert ranking == result["policy_ranking"]
    assert ranking["initial_z"] == str(installed / "initial_z" / "initial_z.json")   # beside rnn/, as in pipeline.py
    assert [r["horizon"] for r in ranking["horizons"]] == [5, 10]
    real_order = np.sign(ranking["real"]["best_fit"] - ranking["real"]["worst_fit"])   # 0: a tie
    for row in ranking["horizons"]:
        assert set(row["dream"]) == {"best_fit", "worst_fit"} and isinstance(row["agrees"], bool)
        assert all(np.isfinite(v) for v in row["dream"].values())
        assert row["agrees"] == (np.sign(row["dream"]["best_fit"] - row["dream"]["worst_fit"]) == real_order)
    # the bias-only controllers are exactly Best Fit and Worst Fit, on validation seeds
    for name, policy in (("best_fit", best_fit), ("worst_fit", worst_fit)):
        expected = evaluate_policy(policy, dict(PRESETS["perfect_pack"], time_horizon=HORIZON), 2, seed=0,
                                   stream="validation").mean()
        assert ranking["real"][name] == pytest.approx(expected)
    assert ranking["real_horizon"] == HORIZON
    assert "| dream horizon |" in text and "order as real?" in text
    m_order = np.sign(ranking["m_on_real"]["best_fit"] - ranking["m_on_real"]["worst_fit"])
    assert ranking["m_on_real_agrees"] == (m_order == real_order) and "| M on the real episodes |" in text

    again, _ = run(dream_fidelity.main, argv[:6] + ["--out", tmp_path / "b.json"] + argv[8:])
    assert again["policy_ranking"]["horizons"] == ranking["horizons"]          # same seed, same numbers


def test_legal_moves_accepts_the_real_transitions_and_nothing_else():
    env = BatchBinPacking("perfect_pack", num_envs=50)
    obs = env.reset(episode_seeds(0, 50))
    rng = np.random.default_rng(0)
    for _ in range(40):                          # random play leaves varied packings
        before, actions = obs["state"], random_valid(obs["state"], obs["action_mask"], rng)
        obs, _, _, _ = env.step(actions)
        assert dream_fidelity.legal_moves(before, actions, obs["state"]).all()
    after = obs["state"].copy()
    after[:5, 3] += 1                            # a phantom bin
    assert dream_fidelity.legal_moves(before, actions, after).tolist() == [False] * 5 + [True] * 45
    # an action the picture does not allow must leave the bins alone
    assert dream_fidelity.legal_moves(before, actions, before, allowed=np.zeros(50, bool)).all()
    assert not dream_fidelity.legal_moves(before, actions, obs["state"], allowed=np.zeros(50, bool)).all()


def test_dream_fidelity_ranks_controller_files(installed, record, tmp_path):
    """A controller file that is Best Fit in disguise scores Best Fit's real reward (through V and M)."""
    bf = np.zeros(30 * (32 + 256) + 30)
    bf[-30:] = np.arange(30)
    (tmp_path / "bf.json").write_text(json.dumps([bf.tolist(), 0.0]))
    argv = ["--record_dir", record, "--vae", installed / "vae" / "vae.json", "--rnn", installed / "rnn" / "rnn.json",
            "--out", tmp_path / "f.json", "--ranking_horizons", "5", "--ranking_episodes", 4,
            "--ranking_real_episodes", 2, "--ranking_real_horizon", HORIZON,
            "--ranking_controllers", tmp_path / "bf.json",
            "--dream_reward", "picture", "--picture_every", "2", "--coherence_dreams", 0]
    result, text = run(dream_fidelity.main, argv)
    r = result["policy_ranking"]
    name = str(tmp_path / "bf.json")
    assert r["policies"] == ["best_fit", "worst_fit", name] and r["picture_every"] == 2
    assert r["real"][name] == pytest.approx(r["real"]["best_fit"])
    row = r["horizons"][0]
    real, dream = (np.array([d[k] for k in r["policies"]]) for d in (r["real"], row["dream"]))
    assert row["pairs_in_real_order"] == dream_fidelity.pairs_in_order(dream, real)
    assert "| pairs in the real order |" in text and name in text
    (tmp_path / "short.json").write_text(json.dumps([[0.0, 1.0], 0.0]))
    with pytest.raises(SystemExit):
        dream_fidelity.main([str(a) for a in argv[:-6]] + ["--ranking_controllers", str(tmp_path / "short.json")])


def test_dream_fidelity_paired_ranking_gives_best_fit_in_disguise_the_same_dreams(installed, record, tmp_path):
    """On common random numbers a controller that plays as Best Fit dreams exactly Best Fit's dreams."""
    bf = np.zeros(30 * (32 + 256) + 30)
    bf[-30:] = np.arange(30)
    (tmp_path / "bf.json").write_text(json.dumps([bf.tolist(), 0.0]))
    argv = ["--record_dir", record, "--vae", installed / "vae" / "vae.json", "--rnn", installed / "rnn" / "rnn.json",
            "--ranking_horizons", "6", "--ranking_episodes", 8, "--ranking_real_episodes", 2,
            "--ranking_real_horizon", HORIZON, "--coherence_dreams", 0,
            "--ranking_controllers", tmp_path / "bf.json"]
    name = str(tmp_path / "bf.json")
    paired, text = run(dream_fidelity.main, argv + ["--out", tmp_path / "p.json", "--ranking_paired"])
    row = paired["policy_ranking"]["horizons"][0]
    # the same actions on the same draws: equal up to float rounding of the batched matrix products
    assert abs(row["minus_best_fit"][name]) < 1e-4 and row["minus_best_fit_sd"][name] < 1e-4
    assert row["sd"]["best_fit"] == pytest.approx(row["sd"][name], abs=1e-4) and row["sd"]["best_fit"] > 0.01
    assert "paired with Best Fit on common random numbers" in text
    unpaired, _ = run(dream_fidelity.main, argv + ["--out", tmp_path / "u.json"])
    row = unpaired["policy_ranking"]["horizons"][0]
    assert not unpaired["policy_ranking"]["paired"] and "minus_best_fit" not in row
    assert row["dream"][name] != row["dream"]["best_fit"]          # other dreams, other draws


def test_pairs_in_order():
    assert dream_fidelity.pairs_in_order(np.array([3.0, 2.0, 1.0]), np.array([30.0, 20.0, 10.0])) == 1.0
    assert dream_fidelity.pairs_in_order(np.array([1.0, 2.0, 3.0]), np.array([30.0, 20.0, 10.0])) == 0.0
    assert dream_fidelity.pairs_in_order(np.array([2.0, 3.0, 1.0]), np.array([30.0, 20.0, 10.0])) == 2 / 3


def test_dream_fidelity_ranks_in_dreams_begun_at_real_states(installed, record, series_file, tmp_path, capsys):
    import dream_starts
    rnn_json = installed / "rnn" / "rnn.json"
    series_file = series_file[0]
    run(dream_starts.main, ["--series", series_file, "--rnn", rnn_json, "--per_episode", 3,
                            "--out", tmp_path / "starts.npz"])
    argv = ["--record_dir", record, "--vae", installed / "vae" / "vae.json", "--rnn", rnn_json,
            "--out", tmp_path / "f.json", "--ranking_horizons", "5", "--ranking_episodes", 4,
            "--ranking_real_episodes", 2, "--ranking_real_horizon", HORIZON, "--episodes", 1, "--coherence_dreams", 0]
    plain, _ = run(dream_fidelity.main, argv)
    started, text = run(dream_fidelity.main, argv + ["--dream_starts", tmp_path / "starts.npz"])
    assert started["policy_ranking"]["dream_starts"] == str(tmp_path / "starts.npz") and "real states" in text
    assert started["policy_ranking"]["horizons"] != plain["policy_ranking"]["horizons"]
    assert started["policy_ranking"]["real"] == plain["policy_ranking"]["real"]
    pictured, _ = run(dream_fidelity.main,
                      argv + ["--dream_starts", tmp_path / "starts.npz", "--dream_reward", "picture"])
    assert pictured["policy_ranking"]["dream_reward"] == "picture"
    assert pictured["policy_ranking"]["horizons"] != started["policy_ranking"]["horizons"]
    from rnn.rnn import MDNRNN
    MDNRNN(hidden_size=8).save_json(tmp_path / "other.json")
    run(dream_starts.main, ["--series", series_file, "--rnn", tmp_path / "other.json", "--out", tmp_path / "o.npz"])
    err = run_fails(dream_fidelity.main, argv + ["--dream_starts", tmp_path / "o.npz"], capsys)
    assert "another M" in err or "width" in err


def test_dream_fidelity_fixed_policies_score_the_same_without_v_and_m(installed):
    """fixed_policy skips V and M; with W = 0 that cannot change a real total."""
    from controller import Controller, load_rnn, load_vae, rollout_real
    rnn, vae = load_rnn(str(installed / "rnn" / "rnn.json")), load_vae(str(installed / "vae" / "vae.json"))
    controller = Controller(rnn.z_size, rnn.hidden_size, rnn.action_size)
    params = dream_fidelity.fixed_policies(controller)
    config, seeds = dict(PRESETS["perfect_pack"], time_horizon=HORIZON), episode_seeds(1, 3, "validation")
    real, _ = rollout_real(controller, params, vae, rnn, config, seeds)
    for p, totals in zip(params, real):
        np.testing.assert_array_equal(evaluate_policy(dream_fidelity.fixed_policy(controller, p), config, 3, seed=1,
                                                      stream="validation"), totals)


def test_dream_fidelity_m_on_real_sums_m_rewards_along_the_real_episodes(installed):
    """Checked against M stepped by hand along Best Fit's real episodes (V's z, the actions taken)."""
    from controller import load_rnn, load_vae
    rnn, vae = load_rnn(str(installed / "rnn" / "rnn.json")), load_vae(str(installed / "vae" / "vae.json"))
    config, n = dict(PRESETS["perfect_pack"], time_horizon=HORIZON), 3
    initial_z = {"mu": np.zeros((1, rnn.z_size), np.float32), "logvar": np.zeros((1, rnn.z_size), np.float32)}
    ranking = dream_fidelity.rank_policies(rnn, initial_z, [], 1, n, config, seed=4, vae=vae)
    env = BatchBinPacking(config, n, pictures=True)
    obs = env.reset(episode_seeds(4, n, "validation"))
    h, c = rnn.initial_state(n)
    predicted, real, done = np.zeros(n), np.zeros(n), np.zeros(n, bool)
    while not done.all():
        z, _ = vae.encode_mu_logvar(obs["picture"])
        actions = best_fit(obs["state"], obs["action_mask"])
        h, c, out = rnn.step(z, actions, h, c)
        obs, reward, done, _ = env.step(actions)
        predicted += out["reward"]
        real += reward
    assert ranking["real"]["best_fit"] == pytest.approx(real.mean())
    assert ranking["m_on_real"]["best_fit"] == pytest.approx(predicted.mean(), rel=1e-5)


def test_dream_fidelity_initial_z_is_checked(installed, record, tmp_path, capsys):
    base = ["--record_dir", record, "--vae", installed / "vae" / "vae.json", "--out", tmp_path / "f.json",
            "--ranking_horizons", "5", "--ranking_episodes", 2, "--ranking_real_episodes", 1]
    rnn = ["--rnn", installed / "rnn" / "rnn.json"]
    line = run_fails(dream_fidelity.main, base + rnn + ["--initial_z", tmp_path / "missing.json"], capsys)
    assert "initial z file" in line and "missing.json not found" in line
    small = tmp_path / "z16.json"
    small.write_text(json.dumps({"mu": [[0.0] * 16], "logvar": [[0.0] * 16]}))
    line = run_fails(dream_fidelity.main, base + rnn + ["--initial_z", small], capsys)
    assert "z size 16" in line and "z_size 32" in line
    # not given and not beside rnn/: the ranking is skipped with a note, the rest still runs
    lonely = tmp_path / "models" / "rnn"
    lonely.mkdir(parents=True)
    for name in ("rnn.json", "provenance.json"):
        (lonely / name).write_bytes((installed / "rnn" / name).read_bytes())
    result, text = run(dream_fidelity.main, base + ["--rnn", lonely / "rnn.json"])
    assert result["policy_ranking"] is None and "no policy ranking" in text and result["horizons"]


def test_dream_fidelity_refuses_a_vae_m_was_not_trained_with(installed, record, tmp_path, capsys):
    from vae.vae import ConvVAE
    other = tmp_path / "other_vae.json"
    ConvVAE(seed=7).save_json(other)
    line = run_fails(dream_fidelity.main, ["--record_dir", record, "--vae", other,
                                           "--rnn", installed / "rnn" / "rnn.json"], capsys)
    assert "another VAE" in line


@pytest.mark.parametrize("main, argv, message", [
    (vae_train.main, ["--record_dir", "/nonexistent/record"], "record directory /nonexistent/record not found"),
    (vae_train.main, ["--holdout", "80%"], "must be in (0, 50%]"),
    (vae_train.main, ["--epochs", "0"], "must be >= 1"),
    (vae_train.main, ["--kl_tolerance", "-1"], "--kl_tolerance must be >= 0"),
    (series.main, ["--record_dir", "/nonexistent/record"], "not found"),
    (series.main, ["--vae", "/nonexistent/vae.json", "--record_dir", "."], "VAE file /nonexistent/vae.json not found"),
    (rnn_train.main, ["--series", "/nonexistent/series.npz"], "series file /nonexistent/series.npz not found"),
    (copy_models.main, ["--vae", "/nonexistent/vae.json"], "VAE file /nonexistent/vae.json not found"),
    (dream_fidelity.main, ["--record_dir", "/nonexistent/record"], "not found"),
    (dream_fidelity.main, ["--horizons", "10,x"], "--horizons"),
    (dream_fidelity.main, ["--ranking_horizons", "0"], "--ranking_horizons must be positive"),
    (dream_fidelity.main, ["--ranking_horizons", "abc"], "--ranking_horizons must be comma-separated"),
    (dream_fidelity.main, ["--ranking_episodes", "0"], "--ranking_episodes"),
    (dream_fidelity.main, ["--ranking_real_episodes", "x"], "--ranking_real_episodes"),
])
def test_clear_errors(main, argv, message, capsys):
    assert message in run_fails(main, argv, capsys)


def test_rnn_train_rejects_a_broken_series_file(tmp_path, capsys):
    path = tmp_path / "series.npz"
    np.savez(path, mu=np.zeros((3, 32), np.float16))
    line = run_fails(rnn_train.main, ["--series", path, "--out_dir", tmp_path / "out"], capsys)
    assert "lacks" in line and "series.py" in line
    path.write_bytes(b"garbage")                    # not an npz at all: numpy's error, with the file named
    line = run_fails(rnn_train.main, ["--series", path, "--out_dir", tmp_path / "out"], capsys)
    assert f"cannot read series file {path}" in line


def test_holdout_split_is_per_name_and_never_empty():
    names = [f"episode{i}" for i in range(200)]
    held = holdout_mask(names, 0.05, 0)
    assert 1 <= held.sum() <= 25
    more = holdout_mask(names + [f"new{i}" for i in range(50)], 0.05, 0)
    assert (more[:200] == held).all()                      # new files do not move old ones
    assert holdout_mask(names[:2], 0.05, 0).sum() == 1
    assert not (holdout_mask(names, 0.05, 1) == held).all()


def test_series_item_labels_read_the_item_of_v_s_picture():
    from bin_packing_environment import decode_pictures, encode_states

    class ExactV:                         # z is the state itself: V draws every picture exactly
        def decode(self, z):
            states = np.maximum(np.rint(z), 0).astype(np.int64)
            return encode_states(states)
    rng = np.random.default_rng(0)
    states = np.zeros((1000, 31), np.float32)                     # a few bins, and the item
    states[:, 1:30] = rng.integers(0, 2, (1000, 29)) * (rng.random((1000, 29)) < 0.1)
    states[:, -1] = rng.integers(1, 10, 1000)
    items, report = series.item_labels(ExactV(), states, 30, frames=500, hidden=16)
    assert items.dtype == np.int8 and items.shape == (1000,)
    assert report["decoded_frames"] == 500 and report["fitted"] == 400
    assert (decode_pictures(ExactV().decode(states[:5]))[:, -1] == states[:5, -1]).all()
    # far above chance (1/9) from 400 pictures; on the shipped V's z it reads 100% (docs/experiments_dream.md)
    assert report["heldout_accuracy"] > 0.7 and (items == states[:, -1]).mean() > 0.7


def test_rnn_train_with_the_mlp_transition_dreams(series_file, trained_vae, record, tmp_path, capsys):
    from bin_packing_environment import load_episode_npz
    from dream_env import BatchDream, load_initial_z
    from rnn.rnn import RNNNumpy
    path = tmp_path / "series.npz"
    shutil.copy(series_file[0], path)
    line = run_fails(rnn_train.main, ["--series", path, "--out_dir", tmp_path / "none", "--steps", 1,
                                      "--transition", "mlp", "--z_input", "mean"] + RNN_FLAGS, capsys)
    assert "item labels" in line and "--item_frames" in line
    run(series.main, ["--add_items", "--item_frames", 40, "--out", path, "--vae", trained_vae["out"] / "vae.json"])
    with np.load(path) as d:
        arrays = dict(d)
    assert arrays["item"].shape == (EPISODES * HORIZON,) and json.loads(str(arrays["item_probe"]))["fitted"] == 32
    # a V trained for two epochs draws no readable item: here the labels are the pictures' own items
    arrays["item"] = np.concatenate([load_episode_npz(str(record / f"ep{i:02d}.npz"))["state"][:, -1]
                                     for i in range(EPISODES)]).astype(np.int8)
    np.savez(path, **arrays)
    assert series.Series(str(path)).item is not None
    line = run_fails(rnn_train.main, ["--series", path, "--out_dir", tmp_path / "s", "--steps", 1,
                                      "--transition", "mlp"] + RNN_FLAGS, capsys)
    assert "--z_input mean" in line
    flags = ["--series", path, "--out_dir", tmp_path / "m", "--steps", 3, "--transition", "mlp", "--z_input", "mean",
             "--transition_hidden", 16, "--transition_layers", 2] + RNN_FLAGS
    report, _ = run(rnn_train.main, flags)
    assert {"z_mse", "item_nll"} <= set(report["history"][-1])
    rnn = RNNNumpy.from_json(tmp_path / "m" / "rnn.json")
    assert rnn.transition == "mlp" and rnn.num_items == int(arrays["item"].max())
    dream = BatchDream(rnn, load_initial_z(tmp_path / "m" / "initial_z.json"), z_noise=0.0)
    obs = dream.reset(4, np.random.default_rng(0))
    obs, reward, done, _ = dream.step(np.zeros(4, np.int64))
    assert obs["z"].shape == (4, 32) and np.isfinite(obs["z"]).all() and reward.shape == (4,)
    # input noise: the same run with noisy input z trains another M; the flag is the mlp transition's only
    noisy, _ = run(rnn_train.main, flags[:2] + ["--out_dir", tmp_path / "n"] + flags[4:] + ["--transition_input_noise", 0.1])
    assert noisy["history"][-1]["z_mse"] != report["history"][-1]["z_mse"]
    assert RNNNumpy.from_json(tmp_path / "n" / "rnn.json").transition == "mlp"
    line = run_fails(rnn_train.main, ["--series", path, "--out_dir", tmp_path / "d", "--steps", 1,
                                      "--transition_input_noise", 0.1] + RNN_FLAGS, capsys)
    assert "--transition_input_noise" in line
