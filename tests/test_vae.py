"""Tests for V, the ConvVAE: shapes, seeding, learning, and the JSON file format."""

import json

import numpy as np
import pytest

from vae.vae import ConvVAE


@pytest.fixture(scope="module")
def vae():
    return ConvVAE(seed=0)


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, size=(5, 64, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def saved(vae, tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "vae.json"
    vae.save_json(path)
    return path


def test_architecture_and_parameter_count(vae):
    assert vae.num_params == 4_348_547
    assert vae.get_weights_flat().shape == (vae.num_params,)
    assert vae.weight_names()[0] == "enc_conv1/kernel"


def test_encode_decode_shapes(vae, frames):
    mu, logvar = vae.encode_mu_logvar(frames)
    assert mu.shape == logvar.shape == (5, 32)
    assert mu.dtype == logvar.dtype == np.float32
    # uint8 input is scaled to [0, 1]; float input is taken as already scaled.
    mu_float, _ = vae.encode_mu_logvar(frames / 255.0)
    np.testing.assert_allclose(mu, mu_float, atol=1e-5)

    z = vae.encode(frames, np.random.default_rng(1))
    assert z.shape == (5, 32) and z.dtype == np.float32
    np.testing.assert_array_equal(z, vae.encode(frames, np.random.default_rng(1)))

    pictures = vae.decode(z)
    assert pictures.shape == (5, 64, 64, 3) and pictures.dtype == np.uint8
    assert vae.decode(np.zeros((0, 32))).shape == (0, 64, 64, 3)
    with pytest.raises(ValueError, match="shape"):
        vae.encode_mu_logvar(np.zeros((2, 32, 32, 3), np.uint8))


def test_same_seed_gives_same_initial_weights(vae):
    np.testing.assert_array_equal(ConvVAE(seed=0).get_weights_flat(), vae.get_weights_flat())
    assert not np.array_equal(ConvVAE(seed=1).get_weights_flat(), vae.get_weights_flat())


def test_training_reduces_loss():
    # Eight flat-coloured pictures: an easy target that a few steps already improve.
    colours = np.random.default_rng(2).random((8, 1, 1, 3), dtype=np.float32)
    batch = np.broadcast_to(colours, (8, 64, 64, 3)).copy()
    model = ConvVAE(learning_rate=1e-3, seed=2)
    losses = [model.train_step(batch) for _ in range(20)]
    assert set(losses[0]) == {"loss", "r_loss", "kl_loss"}
    assert np.mean([l["r_loss"] for l in losses[-3:]]) < 0.8 * losses[0]["r_loss"]
    assert all(l["kl_loss"] >= 0.5 * 32 - 1e-4 for l in losses)  # free bits floor


def test_json_round_trip_is_exact_at_float16(vae, saved, frames, tmp_path):
    loaded = ConvVAE.from_json(saved)
    rounded = vae.get_weights_flat().astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(loaded.get_weights_flat(), rounded)
    assert (loaded.z_size, loaded.kl_tolerance, loaded.learning_rate) == (32, 0.5, 1e-4)

    again = tmp_path / "again.json"
    loaded.save_json(again)
    assert again.read_bytes() == saved.read_bytes()
    assert not (tmp_path / "again.json.tmp").exists()

    in_memory = ConvVAE(seed=0)
    in_memory.round_to_saved_precision()
    np.testing.assert_array_equal(in_memory.encode_mu_logvar(frames)[0], loaded.encode_mu_logvar(frames)[0])


def _rewrite(saved, path, change):
    document = json.loads(saved.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return path


def test_bad_files_raise_clear_errors(saved, tmp_path):
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(saved.read_bytes()[:100_000])
    with pytest.raises(ValueError, match="truncated"):
        ConvVAE.from_json(truncated)

    wrong_tag = _rewrite(saved, tmp_path / "tag.json", lambda d: d.update(format="mdnrnn-v1"))
    with pytest.raises(ValueError, match="format is 'mdnrnn-v1', expected 'convvae-v1'"):
        ConvVAE.from_json(wrong_tag)

    missing = _rewrite(saved, tmp_path / "missing.json", lambda d: d.pop("kl_tolerance"))
    with pytest.raises(ValueError, match="missing key 'kl_tolerance'"):
        ConvVAE.from_json(missing)

    def wrong_shape(document):
        document["weights"][0]["shape"] = [4, 4, 3, 16]
    with pytest.raises(ValueError, match="'enc_conv1/kernel': shape mismatch"):
        ConvVAE.from_json(_rewrite(saved, tmp_path / "shape.json", wrong_shape))

    def short_data(document):
        document["weights"][1]["data"] = document["weights"][1]["data"][:8]
    with pytest.raises(ValueError, match="'enc_conv1/bias': data has 6 bytes, expected 64"):
        ConvVAE.from_json(_rewrite(saved, tmp_path / "short.json", short_data))


def test_bce_reconstruction_loss_trains_and_round_trips(tmp_path):
    colours = np.random.default_rng(3).random((8, 1, 1, 3), dtype=np.float32)
    batch = np.broadcast_to(colours, (8, 64, 64, 3)).copy()
    model = ConvVAE(learning_rate=1e-3, seed=2, recon_loss="bce")
    losses = [model.train_step(batch) for _ in range(30)]
    # The summed cross-entropy of these targets cannot fall below their entropy.
    floor = float(-(batch * np.log(batch) + (1 - batch) * np.log(1 - batch)).sum(axis=(1, 2, 3)).mean())
    assert all(l["r_loss"] >= floor - 1e-2 * floor for l in losses)
    assert np.mean([l["r_loss"] for l in losses[-3:]]) - floor < 0.8 * (losses[0]["r_loss"] - floor)

    path = tmp_path / "bce.json"
    model.save_json(path)
    assert json.loads(path.read_text())["recon_loss"] == "bce"
    assert ConvVAE.from_json(path).recon_loss == "bce"
    l2_path = tmp_path / "l2.json"
    ConvVAE(seed=0).save_json(l2_path)
    assert "recon_loss" not in json.loads(l2_path.read_text())      # l2 files stay as before
    assert ConvVAE.from_json(l2_path).recon_loss == "l2"

    with pytest.raises(ValueError, match="recon_loss must be one of"):
        ConvVAE(recon_loss="l1")
    with pytest.raises(ValueError, match="recon_loss must be one of"):
        ConvVAE.from_json(_rewrite(path, tmp_path / "l1.json", lambda d: d.update(recon_loss="l1")))
