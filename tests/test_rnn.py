"""Tests for M, the MDN-RNN: numpy/TensorFlow agreement, learning, sampling, JSON files."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnn.rnn import MDNRNN, RNNNumpy, weight_shapes, z_nll

BATCH, STEPS = 5, 8


@pytest.fixture(scope="module")
def model():
    """A default-sized M whose weights are all random, so biases matter too."""
    m = MDNRNN(seed=0)
    rng = np.random.default_rng(0)
    m.set_weights({name: 0.2 * rng.standard_normal(values.shape)
                   for name, values in m.get_weights().items()})
    return m


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(1)
    return (rng.standard_normal((BATCH, STEPS, 32)).astype(np.float32),
            rng.integers(0, 30, size=(BATCH, STEPS)))


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("rnn") / "rnn.json"
    model.save_json(path)
    return path


def test_parameter_count(model):
    assert model.num_params == 458_240 - 256 * 30 + (256 + 32) * 128 + 128 + 128 * 30
    assert [tuple(v.shape) for v in model.get_weights().values()] == list(weight_shapes(model.hp).values())


def test_numpy_step_matches_tensorflow(model, sequences):
    z, actions = sequences
    next_z = np.roll(z, -1, axis=1)
    expected = model.predict(z, actions, next_z)
    rnn = RNNNumpy.from_model(model)
    h, c = rnn.initial_state(BATCH)
    assert h.shape == c.shape == (BATCH, 256) and h.dtype == np.float32
    for t in range(STEPS):
        h, c, out = rnn.step(z[:, t], actions[:, t], h, c)
        out["mask_prob"] = rnn.mask_prob(h, next_z[:, t])
        assert set(out) == set(expected)
        for key, values in out.items():
            np.testing.assert_allclose(values, expected[key][:, t], atol=1e-4, err_msg=key)
    assert out["logmix"].shape == (BATCH, 32, 5)
    assert out["reward"].shape == out["done_prob"].shape == (BATCH,)
    assert out["mask_prob"].shape == (BATCH, 30)
    np.testing.assert_allclose(np.exp(out["logmix"]).sum(axis=-1), 1.0, rtol=1e-5)


def test_same_seed_gives_same_initial_weights():
    first, second, other = (MDNRNN(seed=s).get_weights() for s in (3, 3, 4))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert not np.array_equal(first["lstm/kernel"], other["lstm/kernel"])
    # Keras's unit_forget_bias: the forget-gate bias starts at one, the others at zero.
    np.testing.assert_array_equal(first["lstm/bias"], np.repeat([0.0, 1.0, 0.0, 0.0], 256))


def test_json_round_trip_is_exact(model, saved, sequences, tmp_path):
    loaded = MDNRNN.from_json(saved)
    assert loaded.hp == model.hp
    for name, values in model.get_weights().items():
        np.testing.assert_array_equal(loaded.get_weights()[name], values)
    again = tmp_path / "again.json"
    loaded.save_json(again)
    assert again.read_bytes() == saved.read_bytes()

    z, actions = sequences
    from_file, from_model = RNNNumpy.from_json(saved), RNNNumpy.from_model(model)
    state = from_file.initial_state(BATCH)
    out_file = from_file.step(z[:, 0], actions[:, 0], *state)[2]
    out_model = from_model.step(z[:, 0], actions[:, 0], *state)[2]
    for key in out_file:
        np.testing.assert_array_equal(out_file[key], out_model[key])


def _rewrite(saved, path, change):
    document = json.loads(saved.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return path


def test_bad_files_raise_clear_errors(saved, tmp_path):
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(saved.read_bytes()[:50_000])
    with pytest.raises(ValueError, match="truncated"):
        RNNNumpy.from_json(truncated)

    wrong_tag = _rewrite(saved, tmp_path / "tag.json", lambda d: d.update(format="convvae-v1"))
    with pytest.raises(ValueError, match="format is 'convvae-v1', expected 'mdnrnn-v2'"):
        MDNRNN.from_json(wrong_tag)

    missing = _rewrite(saved, tmp_path / "missing.json", lambda d: d.pop("reward_scale"))
    with pytest.raises(ValueError, match="missing key 'reward_scale'"):
        RNNNumpy.from_json(missing)

    def wrong_shape(document):
        document["weights"][3]["shape"] = [256, 150]
    with pytest.raises(ValueError, match="'mdn_logit/kernel': shape mismatch"):
        RNNNumpy.from_json(_rewrite(saved, tmp_path / "shape.json", wrong_shape))

    def short_data(document):
        document["weights"][2]["data"] = document["weights"][2]["data"][:8]
    with pytest.raises(ValueError, match="'lstm/bias': data has 6 bytes, expected 4096"):
        RNNNumpy.from_json(_rewrite(saved, tmp_path / "short.json", short_data))


def _toy_batch(rng, batch=4, steps=10):
    """Sequences where every target is a simple function of the inputs."""
    z = rng.standard_normal((batch, steps, 32)).astype(np.float32)
    actions = rng.integers(0, 30, size=(batch, steps))
    rewards = np.where(actions < 15, 5.0, -20.0)
    dones = np.zeros((batch, steps))
    dones[:, -1] = 1.0
    next_masks = np.zeros((batch, steps, 30))
    next_masks[..., ::2] = 1.0
    next_z = 0.5 * z
    return z, actions, rewards, dones, next_masks, next_z, np.ones((batch, steps))


def test_training_reduces_every_loss():
    model = MDNRNN(learning_rate=1e-2, seed=5)
    batch = _toy_batch(np.random.default_rng(5))
    losses = [model.train_step(*batch) for _ in range(40)]
    assert set(losses[0]) == {"z_nll", "reward_mse", "done_bce", "mask_bce", "total"}
    for key in losses[0]:
        assert losses[-1][key] < losses[0][key], key
    assert losses[-1]["total"] < 0.5 * losses[0]["total"]


def test_padding_is_ignored():
    z, actions, rewards, dones, next_masks, next_z, weights_mask = _toy_batch(np.random.default_rng(6))
    weights_mask[:, 6:] = 0.0
    garbage = [x.copy() for x in (z, rewards, next_z)]
    for x in garbage:
        x[:, 6:] = 99.0
    padded = MDNRNN(seed=6).train_step(garbage[0], actions, garbage[1], dones, next_masks, garbage[2],
                                       weights_mask)
    clean = MDNRNN(seed=6).train_step(z, actions, rewards, dones, next_masks, next_z, weights_mask)
    for key in clean:
        assert padded[key] == pytest.approx(clean[key], rel=1e-6), key


def test_sample_next_z(model, sequences):
    z, actions = sequences
    rnn = RNNNumpy.from_model(model)
    out = rnn.step(z[:, 0], actions[:, 0], *rnn.initial_state(BATCH))[2]

    sample = rnn.sample_next_z(out, 1.0, np.random.default_rng(7))
    assert sample.shape == (BATCH, 32) and sample.dtype == np.float32
    np.testing.assert_array_equal(sample, rnn.sample_next_z(out, 1.0, np.random.default_rng(7)))
    assert not np.array_equal(sample, rnn.sample_next_z(out, 1.0, np.random.default_rng(8)))

    # Near zero temperature the sample is the mean of the most likely component.
    cold = rnn.sample_next_z(out, 1e-6, np.random.default_rng(7))
    best = np.take_along_axis(out["mu"], out["logmix"].argmax(axis=-1)[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(cold, best, atol=1e-2)
    with pytest.raises(ValueError, match="temperature"):
        rnn.sample_next_z(out, 0.0, np.random.default_rng(7))

    # noise_scale 0: the mean of the component the same draws choose; 1 is World Models' sample
    np.testing.assert_array_equal(sample, rnn.sample_next_z(out, 1.0, np.random.default_rng(7), noise_scale=1.0))
    quiet = rnn.sample_next_z(out, 1.0, np.random.default_rng(7), noise_scale=0.0)
    u = np.random.default_rng(7).random(out["logmix"].shape[:2] + (1,))
    mix = np.exp(out["logmix"])
    chosen = np.minimum((np.cumsum(mix, -1) < u).sum(-1), mix.shape[-1] - 1)
    np.testing.assert_allclose(quiet, np.take_along_axis(out["mu"], chosen[..., None], -1)[..., 0], rtol=1e-6)
    half = rnn.sample_next_z(out, 1.0, np.random.default_rng(7), noise_scale=0.5)
    np.testing.assert_allclose(half - quiet, (sample - quiet) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="noise_scale"):
        rnn.sample_next_z(out, 1.0, np.random.default_rng(7), noise_scale=-1.0)


def test_sample_next_z_follows_the_mixture():
    # One dimension, two components with weights 0.2/0.8 at -10 and +10, sigma 1.
    out = {"logmix": np.log(np.array([[[0.2, 0.8]]] * 4000)),
           "mu": np.array([[[-10.0, 10.0]]] * 4000),
           "logsigma": np.zeros((4000, 1, 2))}
    samples = RNNNumpy.sample_next_z(out, 1.0, np.random.default_rng(9))[:, 0]
    assert abs(np.mean(samples > 0) - 0.8) < 0.03
    assert abs(np.std(samples[samples > 0]) - 1.0) < 0.1


def test_numpy_inference_does_not_import_tensorflow():
    code = "import sys, rnn.rnn; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def shared_model():
    """M with one mixture shared by all z dimensions, random weights."""
    m = MDNRNN(num_mixtures=7, mixture="shared", seed=0)
    rng = np.random.default_rng(2)
    m.set_weights({name: 0.2 * rng.standard_normal(values.shape) for name, values in m.get_weights().items()})
    return m


def test_shared_mixture_numpy_matches_tensorflow_and_round_trips(shared_model, sequences, tmp_path):
    z, actions = sequences
    next_z = np.roll(z, -1, axis=1)
    expected = shared_model.predict(z, actions, next_z)
    assert expected["logmix"].shape == (BATCH, STEPS, 1, 7) and expected["mu"].shape == (BATCH, STEPS, 32, 7)
    shared_model.save_json(tmp_path / "shared.json")
    assert json.loads((tmp_path / "shared.json").read_text())["mixture"] == "shared"
    rnn = RNNNumpy.from_json(tmp_path / "shared.json")
    h, c = rnn.initial_state(BATCH)
    for t in range(STEPS):
        h, c, out = rnn.step(z[:, t], actions[:, t], h, c)
        for key in ("logmix", "mu", "logsigma", "reward", "done_prob"):
            np.testing.assert_allclose(out[key], expected[key][:, t], atol=1e-4, err_msg=key)
    assert MDNRNN.from_json(tmp_path / "shared.json").hp == shared_model.hp


def test_per_dim_files_do_not_name_the_mixture(saved):
    """Files written before the shared mixture existed load, and per_dim ones are written as before."""
    assert "mixture" not in json.loads(saved.read_text())
    assert MDNRNN.from_json(saved).hp["mixture"] == "per_dim"


def test_a_shared_mixture_samples_one_component_for_the_whole_z():
    # Two components over 3 dimensions, weights 0.2/0.8, at -10 and +10 in every dimension.
    n = 4000
    out = {"logmix": np.log(np.array([[[0.2, 0.8]]] * n)), "mu": np.array([[[-10.0, 10.0]] * 3] * n),
           "logsigma": np.zeros((n, 3, 2))}
    samples = RNNNumpy.sample_next_z(out, 1.0, np.random.default_rng(9))
    positive = samples > 0
    assert (positive.all(1) | ~positive.any(1)).all()           # never mixes the components
    assert abs(positive[:, 0].mean() - 0.8) < 0.03
    # z_nll: the shared mixture's likelihood of a coherent z is that of one component
    y = np.full((1, 3), 10.0)
    one = {k: v[:1] for k, v in out.items()}
    expected = -(np.log(0.8) + 3 * -0.5 * np.log(2 * np.pi)) / 3
    np.testing.assert_allclose(z_nll(one["logmix"], one["mu"], one["logsigma"], y), [expected], rtol=1e-6)


def test_shared_mixture_training_reduces_every_loss():
    model = MDNRNN(learning_rate=1e-2, num_mixtures=4, mixture="shared", seed=5)
    batch = _toy_batch(np.random.default_rng(5))
    losses = [model.train_step(*batch) for _ in range(40)]
    for key in losses[0]:
        assert losses[-1][key] < losses[0][key], key


def test_an_m_trained_on_means_starts_dreams_from_the_mean(model, tmp_path):
    """z_input travels in the file; first_z then returns V's mean instead of a sample."""
    hp = dict(model.hp, z_input="mean")
    mean_m = MDNRNN(**hp)
    mean_m.set_weights(model.get_weights())
    mean_m.save_json(tmp_path / "mean.json")
    assert json.loads((tmp_path / "mean.json").read_text())["z_input"] == "mean"
    mu, logvar = np.ones((3, 32), np.float32), np.zeros((3, 32), np.float32)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(RNNNumpy.from_json(tmp_path / "mean.json").first_z(mu, logvar, rng), mu)
    sampled = RNNNumpy.from_model(model).first_z(mu, logvar, np.random.default_rng(0))
    np.testing.assert_allclose(sampled, mu + np.random.default_rng(0).standard_normal(mu.shape), rtol=1e-6)


# ---------------------------------------------------------------- the mlp transition (--transition mlp)

MLP_SIZES = dict(transition="mlp", z_input="mean", transition_hidden=32, transition_layers=2, num_items=9)


@pytest.fixture(scope="module")
def mlp_model():
    """M with the mlp transition (small), random weights."""
    m = MDNRNN(seed=0, **MLP_SIZES)
    rng = np.random.default_rng(3)
    m.set_weights({name: 0.2 * rng.standard_normal(values.shape) for name, values in m.get_weights().items()})
    return m


def test_mlp_transition_numpy_matches_tensorflow_and_round_trips(mlp_model, sequences, tmp_path):
    z, actions = sequences
    next_z = np.roll(z, -1, axis=1)
    items = np.random.default_rng(4).integers(-1, 9, size=actions.shape)     # -1: no label
    expected = mlp_model.predict(z, actions, next_z, items)
    assert expected["mu"].shape == expected["logsigma"].shape == (BATCH, STEPS, 32, 1)
    assert expected["item_logits"].shape == (BATCH, STEPS, 9)
    mlp_model.save_json(tmp_path / "mlp.json")
    header = json.loads((tmp_path / "mlp.json").read_text())
    assert {k: header[k] for k in MLP_SIZES} == MLP_SIZES
    assert MDNRNN.from_json(tmp_path / "mlp.json").hp == mlp_model.hp
    rnn = RNNNumpy.from_json(tmp_path / "mlp.json")
    h, c = rnn.initial_state(BATCH)
    for t in range(STEPS):
        h, c, out = rnn.step(z[:, t], actions[:, t], h, c)
        assert "logmix" not in out
        for key in ("reward", "done_prob", "item_logits"):
            np.testing.assert_allclose(out[key], expected[key][:, t], atol=1e-4, err_msg=key)
        np.testing.assert_allclose(rnn.mask_prob(h, next_z[:, t]), expected["mask_prob"][:, t], atol=1e-4)
        known = items[:, t] >= 0
        np.testing.assert_allclose(z[known, t] + rnn.transition_delta(z[known, t], actions[known, t], items[known, t]),
                                   expected["mu"][known, t, :, 0], atol=1e-4)
    with pytest.raises(ValueError, match="next_items"):
        mlp_model.predict(z, actions, next_z)


def test_mlp_transition_needs_v_means():
    with pytest.raises(ValueError, match="z_input 'mean'"):
        MDNRNN(**dict(MLP_SIZES, z_input="sample"))


def test_mlp_sample_next_z_draws_the_item_then_steps_deterministically(mlp_model):
    rnn = RNNNumpy.from_model(mlp_model)
    n = 3000
    rng = np.random.default_rng(5)
    z = rng.standard_normal((n, 32)).astype(np.float32)
    actions = rng.integers(0, 30, n)
    h, c, out = rnn.step(z, actions, *rnn.initial_state(n))
    logits = np.tile([0.0, np.log(3.0)] + [-50.0] * 7, (n, 1))        # items 1 and 2 at 1:3
    out["item_logits"] = logits
    quiet = rnn.sample_next_z(dict(out), 1.0, np.random.default_rng(7), noise_scale=0.0)
    drawn = dict(out)
    noisy = rnn.sample_next_z(drawn, 1.0, np.random.default_rng(7))
    assert set(np.unique(drawn["next_item"])) == {1, 2}
    assert abs((drawn["next_item"] == 2).mean() - 0.75) < 0.03
    np.testing.assert_allclose(quiet, z + rnn.transition_delta(z, actions, drawn["next_item"] - 1), atol=1e-5)
    # the noise is the learned scale times a normal draw made whatever the scale (the same stream)
    assert not np.allclose(noisy, quiet)
    np.testing.assert_array_equal(noisy, rnn.sample_next_z(dict(out), 1.0, np.random.default_rng(7)))
    # a temperature near 0 takes the likelier item
    cold = dict(out)
    rnn.sample_next_z(cold, 1e-3, np.random.default_rng(8), noise_scale=0.0)
    assert (cold["next_item"] == 2).all()
    # the mixture's sampler is untouched (a static method of the class)
    with pytest.raises(ValueError, match="temperature"):
        rnn.sample_next_z(dict(out), 0.0, np.random.default_rng(7))


def test_mlp_dream_z_stays_bounded_where_the_transition_runs_away(mlp_model):
    from rnn.rnn import Z_BOUND
    rnn = RNNNumpy.from_model(mlp_model)
    kernel, bias = rnn._t_layers[-1]
    rnn._t_layers[-1] = (kernel, bias + 1e30)                    # a step that would overflow float32
    n = 64
    z = np.zeros((n, 32), np.float32)
    actions = np.zeros(n, int)
    h, c = rnn.initial_state(n)
    for _ in range(3):
        h, c, out = rnn.step(z, actions, h, c)
        z = rnn.sample_next_z(out, 1.0, np.random.default_rng(0))
        assert np.isfinite(z).all() and np.abs(z).max() <= Z_BOUND
    assert np.isclose(np.abs(z).max(), Z_BOUND)


def test_mlp_training_reduces_every_loss():
    model = MDNRNN(learning_rate=3e-3, seed=5, **MLP_SIZES)
    z, actions, rewards, dones, next_masks, _, weights = _toy_batch(np.random.default_rng(5))
    items = np.random.default_rng(6).integers(0, 9, size=actions.shape)
    next_z = z + 0.1 * (actions[..., None] % 3) + 0.2 * items[..., None]   # depends on the action and item
    items[:, -1] = -1                                                     # no label: no z or item target
    losses = [model.train_step(z, actions, rewards, dones, next_masks, next_z, weights, items) for _ in range(60)]
    assert set(losses[0]) == {"z_nll", "reward_mse", "done_bce", "mask_bce", "total", "z_mse", "item_nll"}
    for key in losses[0]:
        assert losses[-1][key] < losses[0][key], key
    assert losses[-1]["z_mse"] < 0.2 * losses[0]["z_mse"]


def test_mdn_files_do_not_name_the_transition(saved):
    """Files of M's mixture transition are written and read as before the mlp option."""
    header = json.loads(saved.read_text())
    assert not {"transition", "transition_hidden", "transition_layers", "num_items"} & set(header)
    assert MDNRNN.from_json(saved).hp["transition"] == "mdn"
    assert RNNNumpy.from_json(saved).transition == "mdn"
