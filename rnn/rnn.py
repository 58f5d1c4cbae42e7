"""M: the mixture-density recurrent network of World Models, for online bin packing.

At each step M reads the latent picture z_t (from V) and the action a_t (one-hot) and,
through an LSTM, predicts

* z_{t+1} as a mixture of ``num_mixtures`` Gaussians per latent dimension (MDN, as World
  Models), or with ``mixture="shared"`` as one mixture over the whole z: one component is chosen
  for all dimensions at once (a diagonal Gaussian each), so a sampled z is one coherent picture
  (for instance, one next item) instead of each dimension picking its own,
* the reward r_t of the action (regression on r_t / reward_scale, since the
  environment's rewards span roughly -29..+9),
* whether the episode ends after the action (a Bernoulli logit),
* which of the actions will be valid at step t+1 (one Bernoulli logit per action).
  The next mask depends on the next item, which is random, so this head reads the
  next z as well as h: ``mask_prob(h_{t+1}, z_{t+1})``, a small MLP applied once
  z_{t+1} has been sampled. Predicted from h alone, the mask could only be a blur
  over the possible next items.

so that a controller can be trained entirely inside M's "dream".

With ``transition="mlp"`` (a departure, rnn_train.py --transition mlp) the mixture heads are
replaced by a transition head with depth: an item head (a categorical over item sizes 1..num_items,
from h) draws the next item, and a deep MLP (transition_layers x transition_hidden, SiLU) over
[z_t, one-hot action, one-hot next item] gives z_{t+1} - z_t, trained with MSE on V's means
(z_input "mean"); one learned noise scale per latent dimension (trained on the MLP's residuals,
never pushing the MLP) gives the z-NLL and the dream's optional noise. A dream draws the item (one
uniform per dream, so common random numbers still hold) and takes z + MLP(z, a, item)
deterministically (plus that noise times the noise scale). The LSTM still reads [z, a] and gives h
for the controller and the reward, done, mask and item heads.

Two implementations share one set of weights:

* ``MDNRNN`` (TensorFlow/Keras) trains on padded batches of sequences;
* ``RNNNumpy`` runs M one step at a time for many sequences at once with numpy only.
  TensorFlow is imported only when an ``MDNRNN`` is used, so processes that only
  dream (e.g. evolution-strategy workers) load quickly and stay small.

Saved file format (JSON, written atomically through ``path + ".tmp"``)::

    {
      "format": "mdnrnn-v2",
      "z_size": 32, "action_size": 30, "hidden_size": 256, "num_mixtures": 5, "mask_hidden": 128,
      "mixture": "per_dim",       (optional, "per_dim" if absent; or "shared")
      "z_input": "sample",        (optional, "sample" if absent; "mean": trained on V's mean z)
      "transition": "mdn",        (optional, "mdn" if absent; or "mlp", which adds
      "transition_hidden": 512, "transition_layers": 3, "num_items": 10)
      "learning_rate": 0.001, "grad_clip": 1.0, "reward_scale": 10.0,
      "z_weight": 1.0, "reward_weight": 1.0, "done_weight": 1.0, "mask_weight": 1.0,
      "weights": [
        {"name": "lstm/kernel", "shape": [62, 1024], "data": "<base64>"},
        ...
      ]
    }

``data`` is the base64 encoding of the weight's values as little-endian float32 in C
order, so a save/load round trip is exact.  The weights, in order, are given by
``weight_shapes()``; the LSTM ones use Keras's layout (gates i, f, c, o).  The
optimizer state is not saved. Files of the mdn transition are unchanged by the mlp option.
"""

import numpy as np

import weights_json

FORMAT = "mdnrnn-v2"
_SAVED_DTYPE = np.dtype("<f4")
_HPARAM_DEFAULTS = {
    "z_size": 32, "action_size": 30, "hidden_size": 256, "num_mixtures": 5, "mask_hidden": 128,
    "learning_rate": 1e-3, "grad_clip": 1.0, "reward_scale": 10.0,
    "z_weight": 1.0, "reward_weight": 1.0, "done_weight": 1.0, "mask_weight": 1.0,
}
_INT_HPARAMS = ("z_size", "action_size", "hidden_size", "num_mixtures", "mask_hidden")
MIXTURES = ("per_dim", "shared")
Z_INPUTS = ("sample", "mean")
TRANSITIONS = ("mdn", "mlp")
# Optional header keys: written only when they differ from these (older files lack them).
_OPTIONAL_HPARAMS = {"mixture": "per_dim", "z_input": "sample", "transition": "mdn"}
# The mlp transition's dreamed z is kept within +-Z_BOUND: V's z of a picture lies within a few
# units of 0 (its prior is N(0, 1)), so the bound never touches a packing V can draw; it only stops
# a dream that has left them from growing until it overflows (seen open loop with M's noise on).
Z_BOUND = 10.0
# Sizes of the mlp transition head: in the header of (and only of) a transition "mlp" file.
MLP_HPARAMS = {"transition_hidden": 512, "transition_layers": 3, "num_items": 10}
# Output heads on top of the LSTM, in the order their weights are stored; the mask
# head (mask_hidden, then mask) follows them and reads [h, next z].
_HEADS = ("mdn_logit", "mdn_mu", "mdn_logsigma", "reward", "done")
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


def _head_sizes(hp):
    if hp.get("transition", "mdn") == "mlp":
        return {"reward": 1, "done": 1}
    mdn = hp["z_size"] * hp["num_mixtures"]
    logits = hp["num_mixtures"] if hp.get("mixture", "per_dim") == "shared" else mdn
    return {"mdn_logit": logits, "mdn_mu": mdn, "mdn_logsigma": mdn, "reward": 1, "done": 1}


def z_nll(logmix, mu, logsigma, y):
    """Negative log-likelihood of z (..., z_size) per latent dimension, numpy.

    logmix (..., z_size or 1, K): one mixture per dimension, or one shared by all (row of 1)."""
    log_normal = -0.5 * ((y[..., None] - mu) / np.exp(logsigma)) ** 2 - logsigma - _LOG_SQRT_2PI
    if logmix.shape[-2] == 1:                    # shared: a component explains all dimensions
        return -_logsumexp(logmix[..., 0, :] + log_normal.sum(-2))[..., 0] / mu.shape[-2]
    return -_logsumexp(logmix + log_normal)[..., 0].mean(-1)


def weight_shapes(hp):
    """Names and shapes of M's weights, in storage order, for hyper-parameters `hp`."""
    inputs, hidden = hp["z_size"] + hp["action_size"], hp["hidden_size"]
    shapes = {"lstm/kernel": (inputs, 4 * hidden),
              "lstm/recurrent_kernel": (hidden, 4 * hidden),
              "lstm/bias": (4 * hidden,)}
    for head, size in _head_sizes(hp).items():
        shapes[f"{head}/kernel"] = (hidden, size)
        shapes[f"{head}/bias"] = (size,)
    shapes["mask_hidden/kernel"] = (hidden + hp["z_size"], hp["mask_hidden"])
    shapes["mask_hidden/bias"] = (hp["mask_hidden"],)
    shapes["mask/kernel"] = (hp["mask_hidden"], hp["action_size"])
    shapes["mask/bias"] = (hp["action_size"],)
    if hp.get("transition", "mdn") == "mlp":
        shapes["item/kernel"] = (hidden, hp["num_items"])
        shapes["item/bias"] = (hp["num_items"],)
        fan_in = hp["z_size"] + hp["action_size"] + hp["num_items"]
        for k in range(hp["transition_layers"]):
            shapes[f"transition_{k}/kernel"] = (fan_in, hp["transition_hidden"])
            shapes[f"transition_{k}/bias"] = (hp["transition_hidden"],)
            fan_in = hp["transition_hidden"]
        shapes["transition_out/kernel"] = (fan_in, hp["z_size"])
        shapes["transition_out/bias"] = (hp["z_size"],)
        shapes["transition_logsigma/logsigma"] = (hp["z_size"],)
    return shapes


def read_json(path):
    """Hyper-parameters and weights {name: float32 array} from a saved M file.

    Raises ValueError naming the problem for a truncated file, a wrong format tag,
    a missing key or a weight of the wrong shape or size.
    """
    document = weights_json.read_document(path, FORMAT)
    hp = {key: weights_json.require(document, key, path) for key in _HPARAM_DEFAULTS}
    for key, allowed in (("mixture", MIXTURES), ("z_input", Z_INPUTS), ("transition", TRANSITIONS)):
        hp[key] = document.get(key, _OPTIONAL_HPARAMS[key])
        if hp[key] not in allowed:
            raise ValueError(f"{path}: {key} must be one of {allowed}, got {hp[key]!r}")
    mlp_keys = tuple(MLP_HPARAMS) if hp["transition"] == "mlp" else ()
    for key in mlp_keys:
        hp[key] = weights_json.require(document, key, path)
    for key in _INT_HPARAMS + mlp_keys:
        if not isinstance(hp[key], int) or hp[key] < 1:
            raise ValueError(f"{path}: {key} must be a positive integer, got {hp[key]!r}")
    return hp, weights_json.read_weights(document, path, weight_shapes(hp), _SAVED_DTYPE)


class MDNRNN:
    """Trainable M (TensorFlow/Keras).

    Training batches are padded sequences: every array has shape (batch, seq_len, ...)
    and ``weights_mask`` (batch, seq_len) is 1 on real steps and 0 on padding.  Padding
    must come after the real steps of a sequence (each sequence starts from a zero
    LSTM state), so that it cannot change the predictions for real steps.
    """

    def __init__(self, z_size=32, action_size=30, hidden_size=256, num_mixtures=5, mask_hidden=128,
                 learning_rate=1e-3, grad_clip=1.0, reward_scale=10.0,
                 z_weight=1.0, reward_weight=1.0, done_weight=1.0, mask_weight=1.0, seed=0, mixture="per_dim",
                 z_input="sample", transition="mdn", transition_hidden=MLP_HPARAMS["transition_hidden"],
                 transition_layers=MLP_HPARAMS["transition_layers"], num_items=MLP_HPARAMS["num_items"]):
        import keras
        import tensorflow as tf

        if mixture not in MIXTURES or z_input not in Z_INPUTS or transition not in TRANSITIONS:
            raise ValueError(f"mixture must be one of {MIXTURES}, z_input one of {Z_INPUTS} and transition one of "
                             f"{TRANSITIONS}, got {mixture!r}, {z_input!r}, {transition!r}")
        if transition == "mlp" and z_input != "mean":
            raise ValueError("transition 'mlp' learns z_{t+1} - z_t of V's means: it needs z_input 'mean'")
        self.hp = {"z_size": int(z_size), "action_size": int(action_size),
                   "hidden_size": int(hidden_size), "num_mixtures": int(num_mixtures), "mixture": mixture,
                   "z_input": z_input, "mask_hidden": int(mask_hidden),
                   "learning_rate": float(learning_rate), "grad_clip": float(grad_clip),
                   "reward_scale": float(reward_scale), "z_weight": float(z_weight),
                   "reward_weight": float(reward_weight), "done_weight": float(done_weight),
                   "mask_weight": float(mask_weight), "transition": transition}
        self.mlp = transition == "mlp"
        if self.mlp:
            self.hp.update(transition_hidden=int(transition_hidden), transition_layers=int(transition_layers),
                           num_items=int(num_items))
        self.reward_scale = self.hp["reward_scale"]
        # One independent seed per initializer: the initial weights depend on `seed` only.
        seeds = iter(int(s) for s in np.random.SeedSequence(seed).generate_state(4 + len(_HEADS)))
        inputs = keras.Input((None, self.hp["z_size"] + self.hp["action_size"]))
        next_z = keras.Input((None, self.hp["z_size"]))
        hidden = keras.layers.LSTM(
            self.hp["hidden_size"], return_sequences=True, name="lstm",
            kernel_initializer=keras.initializers.GlorotUniform(next(seeds)),
            recurrent_initializer=keras.initializers.Orthogonal(seed=next(seeds)),
            unit_forget_bias=True)(inputs)
        outputs = [keras.layers.Dense(size, name=head,
                                      kernel_initializer=keras.initializers.GlorotUniform(next(seeds)))(hidden)
                   for head, size in _head_sizes(self.hp).items()]
        mask_hidden = keras.layers.Dense(self.hp["mask_hidden"], activation="relu", name="mask_hidden",
                                         kernel_initializer=keras.initializers.GlorotUniform(next(seeds)))(
            keras.layers.Concatenate()([hidden, next_z]))
        mask_init = keras.initializers.GlorotUniform(next(seeds))
        outputs.append(keras.layers.Dense(self.hp["action_size"], name="mask", kernel_initializer=mask_init)(mask_hidden))
        model_inputs = [inputs, next_z]
        if self.mlp:
            model_inputs.append(keras.Input((None, self.hp["num_items"])))      # one-hot next item
            outputs += self._transition_head(keras, hidden, inputs, model_inputs[-1], seed)
        self.model = keras.Model(model_inputs, outputs, name="mdnrnn")
        # Stored in weight_shapes' order, whatever order Keras lists its layers in.
        by_path = {v.path.replace("lstm_cell/", "").split("mdnrnn/")[-1]: v for v in self.model.trainable_variables}
        self._variables = [by_path[name] for name in weight_shapes(self.hp)]
        actual = [tuple(v.shape) for v in self._variables]
        assert actual == list(weight_shapes(self.hp).values()), actual

        self.optimizer = keras.optimizers.Adam(self.hp["learning_rate"])
        self.optimizer.build(self._variables)
        z_spec = tf.TensorSpec((None, None, self.hp["z_size"]), tf.float32)
        steps_spec = tf.TensorSpec((None, None), tf.float32)
        actions_spec = tf.TensorSpec((None, None), tf.int32)
        if self.mlp:      # the next item (class = size - 1, -1: unknown) is an input of the transition
            self._forward_tf = tf.function(self._forward, input_signature=[z_spec, actions_spec, z_spec,
                                                                           actions_spec])
            self._train_step_tf = tf.function(self._train_step_mlp, jit_compile=True, input_signature=[
                z_spec, actions_spec, steps_spec, steps_spec,
                tf.TensorSpec((None, None, self.hp["action_size"]), tf.float32), z_spec, steps_spec, actions_spec])
            return
        self._forward_tf = tf.function(self._forward, input_signature=[z_spec, actions_spec, z_spec])
        self._train_step_tf = tf.function(self._train_step, input_signature=[
            z_spec, actions_spec, steps_spec, steps_spec,
            tf.TensorSpec((None, None, self.hp["action_size"]), tf.float32), z_spec, steps_spec])

    def _transition_head(self, keras, hidden, inputs, next_item, seed):
        """[item logits, z_{t+1} - z_t, log sigma] of the mlp transition (module docstring)."""
        hp = self.hp
        seeds = iter(int(s) for s in np.random.SeedSequence([seed, 1]).generate_state(2 + hp["transition_layers"]))
        item = keras.layers.Dense(hp["num_items"], name="item",
                                  kernel_initializer=keras.initializers.GlorotUniform(next(seeds)))(hidden)
        x = keras.layers.Concatenate()([inputs, next_item])
        for k in range(hp["transition_layers"]):
            x = keras.layers.Dense(hp["transition_hidden"], activation="silu", name=f"transition_{k}",
                                   kernel_initializer=keras.initializers.GlorotUniform(next(seeds)))(x)
        dz = keras.layers.Dense(hp["z_size"], name="transition_out",
                                kernel_initializer=keras.initializers.GlorotUniform(next(seeds)))(x)

        class LogSigma(keras.layers.Layer):
            """One learned log sigma per latent dimension, broadcast over (batch, time)."""

            def build(self, input_shape):
                self.logsigma = self.add_weight(name="logsigma", shape=(input_shape[-1],), initializer="zeros")

            def call(self, x):
                return keras.ops.zeros_like(x) + self.logsigma
        return [item, dz, LogSigma(name="transition_logsigma")(dz)]

    @property
    def num_params(self):
        return int(sum(np.prod(v.shape) for v in self._variables))

    def _forward(self, z, actions, next_z, next_items=None, training=False):
        """Raw head outputs; MDN ones reshaped to (batch, seq_len, z_size, num_mixtures), the
        mixture logits to (batch, seq_len, 1, num_mixtures) when shared."""
        import tensorflow as tf

        x = tf.concat([z, tf.one_hot(actions, self.hp["action_size"])], axis=-1)
        if self.mlp:
            return self._forward_mlp(z, x, next_z, next_items, training)
        logit, mu, logsigma, reward, done, mask = self.model([x, next_z], training=training)
        mdn_shape = tf.concat([tf.shape(z), [self.hp["num_mixtures"]]], axis=0)
        logmix = tf.reshape(logit, tf.concat([tf.shape(z)[:2], [1, self.hp["num_mixtures"]]], axis=0)
                            if self.hp["mixture"] == "shared" else mdn_shape)
        logmix -= tf.reduce_logsumexp(logmix, axis=-1, keepdims=True)
        return (logmix, tf.reshape(mu, mdn_shape), tf.reshape(logsigma, mdn_shape),
                reward[..., 0], done[..., 0], mask)

    def _forward_mlp(self, z, x, next_z, next_items, training):
        """_forward's outputs for the mlp transition, its z_{t+1} a mixture of one component (given
        the true next item), plus the item logits (batch, seq_len, num_items)."""
        import tensorflow as tf

        item_onehot = tf.one_hot(next_items, self.hp["num_items"])    # class -1: all zero
        reward, done, mask, item, dz, logsigma = self.model([x, next_z, item_onehot], training=training)
        shape = tf.concat([tf.shape(z)[:2], [1, 1]], axis=0)
        return (tf.zeros(shape), (z + dz)[..., None], logsigma[..., None], reward[..., 0], done[..., 0], mask, item)

    def _head_losses(self, reward, done_logit, mask_logit, rewards, dones, next_masks, weights_mask, n_steps):
        """Reward MSE, done and mask cross-entropies over the real steps: the heads both transitions share."""
        import tensorflow as tf
        hp = self.hp
        reward_mse = tf.reduce_sum(
            tf.square(reward - rewards / hp["reward_scale"]) * weights_mask) / n_steps
        done_bce = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=dones, logits=done_logit) * weights_mask) / n_steps
        mask_bce = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=next_masks, logits=mask_logit) * weights_mask[..., None]) / (n_steps * hp["action_size"])
        return reward_mse, done_bce, mask_bce

    def _apply_gradients(self, tape, total):
        """Gradient clipping by value, as in World Models, then one optimizer step."""
        import tensorflow as tf
        grads = tape.gradient(total, self._variables)
        grads = [tf.clip_by_value(g, -self.hp["grad_clip"], self.hp["grad_clip"]) for g in grads]
        self.optimizer.apply_gradients(zip(grads, self._variables))

    def _train_step_mlp(self, z, actions, rewards, dones, next_masks, next_z, weights_mask, next_items):
        import tensorflow as tf

        hp = self.hp
        with tf.GradientTape() as tape:
            _, mu, logsigma, reward, done_logit, mask_logit, item_logit = self._forward(
                z, actions, next_z, next_items, training=True)
            n_steps = tf.maximum(tf.reduce_sum(weights_mask), 1.0)
            # z and item targets only where the next frame exists and V's picture shows its item
            known = weights_mask * tf.cast(next_items >= 0, tf.float32)
            n_known = tf.maximum(tf.reduce_sum(known), 1.0)
            residual = next_z - mu[..., 0]
            z_mse = tf.reduce_sum(tf.reduce_mean(tf.square(residual), -1) * known) / n_known
            # the noise scale learns from the residuals without pulling the MLP (its mean)
            ls = logsigma[..., 0]
            gauss = 0.5 * tf.square(tf.stop_gradient(residual) / tf.exp(ls)) + ls + _LOG_SQRT_2PI
            z_nll = tf.reduce_sum(tf.reduce_mean(gauss, -1) * known) / n_known
            item_nll = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.maximum(next_items, 0), logits=item_logit) * known) / n_known
            reward_mse, done_bce, mask_bce = self._head_losses(reward, done_logit, mask_logit, rewards, dones,
                                                               next_masks, weights_mask, n_steps)
            total = (hp["z_weight"] * (z_mse + z_nll + item_nll) + hp["reward_weight"] * reward_mse
                     + hp["done_weight"] * done_bce + hp["mask_weight"] * mask_bce)
        self._apply_gradients(tape, total)
        return {"z_nll": z_nll, "reward_mse": reward_mse, "done_bce": done_bce,
                "mask_bce": mask_bce, "total": total, "z_mse": z_mse, "item_nll": item_nll}

    def _train_step(self, z, actions, rewards, dones, next_masks, next_z, weights_mask):
        import tensorflow as tf

        hp = self.hp
        with tf.GradientTape() as tape:
            logmix, mu, logsigma, reward, done_logit, mask_logit = self._forward(z, actions, next_z, training=True)
            n_steps = tf.maximum(tf.reduce_sum(weights_mask), 1.0)
            # Negative log-likelihood of z_{t+1}, averaged over latent dimensions and steps.
            y = next_z[..., None]
            log_normal = -0.5 * tf.square((y - mu) / tf.exp(logsigma)) - logsigma - _LOG_SQRT_2PI
            if hp["mixture"] == "shared":            # one component for the whole z
                z_nll = -tf.reduce_logsumexp(logmix[..., 0, :] + tf.reduce_sum(log_normal, axis=-2), axis=-1)
                z_nll = tf.reduce_sum(z_nll * weights_mask) / (n_steps * hp["z_size"])
            else:
                z_nll = -tf.reduce_logsumexp(logmix + log_normal, axis=-1)
                z_nll = tf.reduce_sum(z_nll * weights_mask[..., None]) / (n_steps * hp["z_size"])
            reward_mse, done_bce, mask_bce = self._head_losses(reward, done_logit, mask_logit, rewards, dones,
                                                               next_masks, weights_mask, n_steps)
            total = (hp["z_weight"] * z_nll + hp["reward_weight"] * reward_mse
                     + hp["done_weight"] * done_bce + hp["mask_weight"] * mask_bce)
        self._apply_gradients(tape, total)
        return {"z_nll": z_nll, "reward_mse": reward_mse, "done_bce": done_bce,
                "mask_bce": mask_bce, "total": total}

    def train_step(self, z, actions, rewards, dones, next_masks, next_z, weights_mask, next_items=None):
        """One Adam step on a padded batch; returns the losses before the step as floats.

        z, next_z: (batch, seq_len, z_size); actions: int (batch, seq_len);
        rewards (env units), dones, weights_mask: (batch, seq_len);
        next_masks: (batch, seq_len, action_size), 1 where the action is valid at t+1;
        next_items (transition "mlp" only): int (batch, seq_len), the next item's size - 1, -1 where
        unknown (no next frame, or V's picture shows no item): no z or item target there.
        """
        args = [np.asarray(z, np.float32), np.asarray(actions, np.int32), np.asarray(rewards, np.float32),
                np.asarray(dones, np.float32), np.asarray(next_masks, np.float32),
                np.asarray(next_z, np.float32), np.asarray(weights_mask, np.float32)]
        if self.mlp:
            args.append(self._items(next_items))
        losses = self._train_step_tf(*args)
        return {name: float(value) for name, value in losses.items()}

    def _items(self, next_items):
        if next_items is None:
            raise ValueError("transition 'mlp' needs next_items (the series' item key)")
        return np.asarray(next_items, np.int32)

    def predict(self, z, actions, next_z, next_items=None):
        """M's predictions for whole sequences from a zero state, as numpy arrays.

        Same keys as ``RNNNumpy.step``'s output plus "mask_prob" (read with the given
        next_z), with a time axis after the batch axis. For transition "mlp" (next_items
        given, as in train_step): the mixture keys hold one component, the MLP's z_{t+1} for
        the true next item, and "item_logits" the item head.
        """
        args = [np.asarray(z, np.float32), np.asarray(actions, np.int32), np.asarray(next_z, np.float32)]
        if self.mlp:
            args.append(self._items(next_items))
        logmix, mu, logsigma, reward, done_logit, mask_logit, *item = (t.numpy() for t in self._forward_tf(*args))
        out = {"logmix": logmix, "mu": mu, "logsigma": logsigma,
               "reward": reward * self.reward_scale,
               "done_prob": _sigmoid(done_logit), "mask_prob": _sigmoid(mask_logit)}
        if item:
            out["item_logits"] = item[0]
        return out

    def get_weights(self):
        """Weights {name: float32 array} in storage order (see ``weight_shapes``)."""
        return {name: v.numpy() for name, v in zip(weight_shapes(self.hp), self._variables)}

    def set_weights(self, weights):
        """Set all weights from {name: array} with the names and shapes of ``weight_shapes``."""
        shapes = weight_shapes(self.hp)
        if list(weights) != list(shapes):
            raise ValueError(f"expected weights named {list(shapes)}, got {list(weights)}")
        for v, (name, values) in zip(self._variables, weights.items()):
            values = np.asarray(values, np.float32)
            if values.shape != shapes[name]:
                raise ValueError(f"weight {name!r}: shape {values.shape}, expected {shapes[name]}")
            v.assign(values)

    def save_json(self, path):
        """Write the model to `path` in the format of the module docstring."""
        # optional keys at their defaults are left out, so such files stay as they always were
        header = {k: v for k, v in self.hp.items() if _OPTIONAL_HPARAMS.get(k, object()) != v}
        weights_json.write(path, FORMAT, header, self.get_weights(), _SAVED_DTYPE)

    @classmethod
    def from_json(cls, path):
        """Load a model written by save_json; raises ValueError naming what is wrong."""
        hp, weights = read_json(path)
        model = cls(**hp)
        model.set_weights(weights)
        return model


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # equals 1/(1+exp(-x)) without overflow warnings


class RNNNumpy:
    """M in numpy, stepping n sequences at once (for dreams and controller rollouts)."""

    def __init__(self, hp, weights):
        self.z_size, self.action_size = hp["z_size"], hp["action_size"]
        self.hidden_size, self.num_mixtures = hp["hidden_size"], hp["num_mixtures"]
        self.mixture = hp.get("mixture", "per_dim")
        self.z_input = hp.get("z_input", "sample")
        self.transition = hp.get("transition", "mdn")
        self.reward_scale = float(hp["reward_scale"])
        w = {name: np.asarray(values, np.float32) for name, values in weights.items()}
        kernel = w["lstm/kernel"]
        self._kernel_z = kernel[:self.z_size]
        # The action enters one-hot, so its contribution is one row of the kernel;
        # the bias is folded in here.
        self._kernel_a = kernel[self.z_size:] + w["lstm/bias"]
        self._recurrent = w["lstm/recurrent_kernel"]
        # All heads in one matrix product; _head_ends splits its columns again.
        heads = list(_head_sizes(hp))
        if self.transition == "mlp":
            heads.append("item")                       # the item logits, after reward and done
        self._heads_kernel = np.concatenate([w[f"{head}/kernel"] for head in heads], axis=1)
        self._heads_bias = np.concatenate([w[f"{head}/bias"] for head in heads])
        self._head_ends = np.cumsum([w[f"{head}/bias"].shape[0] for head in heads])[:-1]
        self._mask_hidden_kernel, self._mask_hidden_bias = w["mask_hidden/kernel"], w["mask_hidden/bias"]
        self._mask_kernel, self._mask_bias = w["mask/kernel"], w["mask/bias"]
        if self.transition == "mlp":
            self.num_items = hp["num_items"]
            first = w["transition_0/kernel"]
            z_end, a_end = self.z_size, self.z_size + self.action_size
            # one-hot action and item: one row of the first kernel each (the bias folded into the action's)
            self._t_first = (first[:z_end], first[z_end:a_end] + w["transition_0/bias"], first[a_end:])
            self._t_layers = [(w[f"transition_{k}/kernel"], w[f"transition_{k}/bias"])
                              for k in range(1, hp["transition_layers"])]
            self._t_layers.append((w["transition_out/kernel"], w["transition_out/bias"]))
            self._t_sigma = np.exp(w["transition_logsigma/logsigma"])
            self.sample_next_z = self._sample_next_z_mlp    # the instance's method shadows the mixture's

    @classmethod
    def from_json(cls, path):
        return cls(*read_json(path))

    @classmethod
    def from_model(cls, model):
        return cls(model.hp, model.get_weights())

    def first_z(self, mu, logvar, rng):
        """The z a dream starts from, given V's encoding of a real picture: a sample, or the mean
        for an M trained on means (rnn_train.py --z_input mean)."""
        if self.z_input == "mean":
            return np.array(mu, np.float32)
        return (mu + np.exp(logvar / 2) * rng.standard_normal(np.shape(mu))).astype(np.float32)

    def initial_state(self, n):
        """Zero LSTM state (h, c) for n sequences, each float32 (n, hidden_size)."""
        return (np.zeros((n, self.hidden_size), np.float32),
                np.zeros((n, self.hidden_size), np.float32))

    def step(self, z, a, h, c):
        """Advance n sequences by one step with Keras's LSTM equations.

        z: (n, z_size); a: int actions (n,); h, c: (n, hidden_size).
        Returns (h_new, c_new, out) with out = {"logmix", "mu", "logsigma": (n, z_size,
        num_mixtures), logmix (n, 1, num_mixtures) when shared; "reward": (n,) in env units;
        "done_prob": (n,)}. The next step's valid actions come from ``mask_prob(h_new, z_next)``
        once z_next is sampled. For transition "mlp", out has "item_logits" (n, num_items) and
        the step's "z" and "action" instead of the mixture: ``sample_next_z`` draws the item
        and runs the MLP (so a real-env rollout, which only needs h, never runs it).
        """
        gates = (np.asarray(z, np.float32) @ self._kernel_z + self._kernel_a[np.asarray(a)]
                 + h @ self._recurrent)
        i, f, g, o = np.split(gates, 4, axis=1)
        c_new = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h_new = (_sigmoid(o) * np.tanh(c_new)).astype(np.float32)
        c_new = c_new.astype(np.float32)

        heads = h_new @ self._heads_kernel + self._heads_bias
        if self.transition == "mlp":
            reward, done, item = np.split(heads, self._head_ends, axis=1)
            return h_new, c_new, {"reward": reward[:, 0] * self.reward_scale, "done_prob": _sigmoid(done[:, 0]),
                                  "item_logits": item, "z": np.asarray(z, np.float32), "action": np.asarray(a)}
        logit, mu, logsigma, reward, done = np.split(heads, self._head_ends, axis=1)
        mdn_shape = (len(heads), self.z_size, self.num_mixtures)
        logit = logit.reshape((len(heads), 1, self.num_mixtures) if self.mixture == "shared" else mdn_shape)
        logmix = logit - _logsumexp(logit)
        return h_new, c_new, {"logmix": logmix, "mu": mu.reshape(mdn_shape),
                              "logsigma": logsigma.reshape(mdn_shape),
                              "reward": reward[:, 0] * self.reward_scale,
                              "done_prob": _sigmoid(done[:, 0])}

    def mask_prob(self, h, z_next):
        """Probability (n, action_size) that each action is valid in the step showing z_next."""
        x = np.concatenate([h, np.asarray(z_next, np.float32)], axis=1)
        hidden = np.maximum(x @ self._mask_hidden_kernel + self._mask_hidden_bias, 0.0)
        return _sigmoid(hidden @ self._mask_kernel + self._mask_bias)

    def transition_delta(self, z, a, item):
        """The mlp transition's z_{t+1} - z_t for z (n, z_size), actions (n,) and item classes
        (n,) (size - 1), float32 (n, z_size)."""
        kz, ka, ki = self._t_first
        x = np.asarray(z, np.float32) @ kz + ka[np.asarray(a)] + ki[np.asarray(item)]
        for kernel, bias in self._t_layers:
            x = (x * _sigmoid(x)) @ kernel + bias                         # SiLU, then the next layer
        return x.astype(np.float32)

    def _sample_next_z_mlp(self, out, temperature, rng, noise_scale: float = 1.0):
        """sample_next_z of the mlp transition: the next item drawn from the item head (logits
        divided by the temperature; one uniform per row), then z + MLP(z, a, item), plus the
        learned per-dimension noise times sqrt(temperature) * noise_scale, within +-Z_BOUND. Sets
        out["next_item"] (the drawn size)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        logits = out["item_logits"] / temperature
        p = np.exp(logits - _logsumexp(logits))
        u = rng.random((len(p), 1))
        item = np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), self.num_items - 1)
        out["next_item"] = item + 1
        z = out["z"] + self.transition_delta(out["z"], out["action"], item)
        gauss = rng.standard_normal(z.shape)            # drawn whatever the scale: the same stream
        z = z + self._t_sigma * np.sqrt(temperature) * noise_scale * gauss
        return np.clip(z, -Z_BOUND, Z_BOUND).astype(np.float32)

    @staticmethod
    def sample_next_z(out, temperature, rng, noise_scale: float = 1.0):
        """Sample z_{t+1} (n, z_size) from step()'s output, as in World Models.

        The temperature divides the mixture logits (then renormalised) and multiplies
        the variance of each Gaussian; `rng` is a numpy Generator. `noise_scale` (a departure,
        1 in World Models) scales the Gaussian's spread alone: 0 gives the chosen component's
        mean, so the next picture is M's guess for that component, not a blurred copy of it.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if noise_scale < 0:
            raise ValueError(f"noise_scale must be >= 0, got {noise_scale}")
        logmix = out["logmix"] / temperature
        mix = np.exp(logmix - _logsumexp(logmix))
        # Inverse-CDF sampling of one mixture component per (sequence, dimension), or per
        # sequence when the mixture is shared (a row of 1, broadcast over the dimensions).
        u = rng.random(mix.shape[:2] + (1,))
        component = np.minimum((np.cumsum(mix, axis=-1) < u).sum(axis=-1), mix.shape[-1] - 1)
        pick = np.broadcast_to(component[..., None], out["mu"].shape[:2] + (1,))
        mu = np.take_along_axis(out["mu"], pick, axis=-1)[..., 0]
        logsigma = np.take_along_axis(out["logsigma"], pick, axis=-1)[..., 0]
        gauss = rng.standard_normal(mu.shape)          # drawn whatever the scale: the same stream
        return (mu + np.exp(logsigma) * np.sqrt(temperature) * noise_scale * gauss).astype(np.float32)


def _logsumexp(x):
    """log(sum(exp(x))) over the last axis, kept as a trailing axis of size 1."""
    top = x.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True))
