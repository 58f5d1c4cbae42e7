"""V: the convolutional variational autoencoder of World Models (Ha & Schmidhuber 2018).

V compresses each 64x64x3 observation into a small latent vector z (32 numbers) so
that the memory model M and the controller work on z instead of pixels.  The
architecture, the loss (summed squared reconstruction error plus a KL term with
"free bits" tolerance) and the defaults follow the original World Models code. The
reconstruction term may instead be the summed binary cross-entropy (``recon_loss="bce"``):
it charges far more than the squared error for drawing black where the picture is lit, the
error by which a squared-error V drops the lone bins the action mask depends on (README, "A
sharper loss for V").

Saved file format (JSON, written atomically through ``path + ".tmp"``)::

    {
      "format": "convvae-v1",
      "z_size": 32,
      "picture_shape": [64, 64, 3],
      "kl_tolerance": 0.5,
      "learning_rate": 0.0001,
      "recon_loss": "bce",         (only for a bce V; absent means "l2")
      "weights": [
        {"name": "enc_conv1/kernel", "shape": [4, 4, 3, 32], "data": "<base64>"},
        ...
      ]
    }

``data`` is the base64 encoding of the weight's values as little-endian float16 in
C order.  float16 halves the file size compared with float32, and the accuracy lost
is far below what V needs.  Because of that rounding, a loaded model equals the saved
one up to float16 precision; ``round_to_saved_precision()`` applies the same rounding
in memory when a script must keep using exactly what a later load would give.
The optimizer state is not saved.
"""


import numpy as np

import weights_json
from quiet import import_tensorflow

tf = import_tensorflow()     # TensorFlow's C++ start-up lines silenced (quiet.py), before keras imports it
import keras  # noqa: E402

FORMAT = "convvae-v1"
PICTURE_SHAPE = (64, 64, 3)
_SAVED_DTYPE = np.dtype("<f2")
_BATCH = 256  # frames per forward pass in encode/decode; bounds memory use
RECON_LOSSES = ("l2", "bce")
_BCE_EPS = 1e-7  # keeps log() finite where the sigmoid output saturates


def _as_float_frames(frames):
    """uint8 frames become float32 in [0, 1]; float frames are taken to be in [0, 1]."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1:] != PICTURE_SHAPE:
        raise ValueError(f"expected frames of shape (n, 64, 64, 3), got {frames.shape}")
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / 255.0
    return frames.astype(np.float32)


class ConvVAE:
    """World Models ConvVAE: 64x64x3 pictures <-> z_size latent Gaussians."""

    def __init__(self, z_size=32, kl_tolerance=0.5, learning_rate=1e-4, seed=0, recon_loss="l2"):
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {recon_loss!r}")
        self.recon_loss = recon_loss
        self.z_size = int(z_size)
        self.kl_tolerance = float(kl_tolerance)
        self.learning_rate = float(learning_rate)
        # One independent seed per layer: seeded Keras initializers make the initial
        # weights a function of `seed` alone, whatever the global random state.
        layer_seeds = iter(int(s) for s in np.random.SeedSequence(seed).generate_state(11))

        def dense(units, name):
            return keras.layers.Dense(
                units, name=name, kernel_initializer=keras.initializers.GlorotUniform(next(layer_seeds)))

        def conv(filters, kernel, name, layer=keras.layers.Conv2D, activation="relu"):
            return layer(filters, kernel, strides=2, padding="valid", activation=activation, name=name,
                         kernel_initializer=keras.initializers.GlorotUniform(next(layer_seeds)))

        picture = keras.Input(PICTURE_SHAPE)
        h = picture
        for i, filters in enumerate((32, 64, 128, 256), start=1):
            h = conv(filters, 4, f"enc_conv{i}")(h)
        h = keras.layers.Flatten()(h)
        self.encoder = keras.Model(picture, [dense(self.z_size, "enc_fc_mu")(h),
                                             dense(self.z_size, "enc_fc_logvar")(h)], name="encoder")

        z = keras.Input((self.z_size,))
        h = keras.layers.Reshape((1, 1, 1024))(dense(1024, "dec_fc")(z))
        deconv = keras.layers.Conv2DTranspose
        h = conv(128, 5, "dec_deconv1", deconv)(h)
        h = conv(64, 5, "dec_deconv2", deconv)(h)
        h = conv(32, 6, "dec_deconv3", deconv)(h)
        h = conv(3, 6, "dec_deconv4", deconv, activation="sigmoid")(h)
        self.decoder = keras.Model(z, h, name="decoder")

        self._variables = self.encoder.trainable_variables + self.decoder.trainable_variables
        self.optimizer = keras.optimizers.Adam(self.learning_rate)
        self.optimizer.build(self._variables)
        self._noise = tf.random.Generator.from_seed(seed)

        pictures_spec = tf.TensorSpec((None,) + PICTURE_SHAPE, tf.float32)
        self._encode_tf = tf.function(lambda x: self.encoder(x, training=False),
                                      input_signature=[pictures_spec])
        self._decode_tf = tf.function(lambda z: self.decoder(z, training=False),
                                      input_signature=[tf.TensorSpec((None, self.z_size), tf.float32)])
        self._train_step_tf = tf.function(self._train_step, input_signature=[pictures_spec])

    @property
    def num_params(self):
        return int(sum(np.prod(v.shape) for v in self._variables))

    # ----- inference -----------------------------------------------------------------

    def encode_mu_logvar(self, frames):
        """Mean and log-variance of q(z | frame) as float32 arrays of shape (n, z_size)."""
        x = _as_float_frames(frames)
        mus, logvars = [], []
        for start in range(0, len(x), _BATCH):
            mu, logvar = self._encode_tf(x[start:start + _BATCH])
            mus.append(mu.numpy())
            logvars.append(logvar.numpy())
        if not mus:
            empty = np.zeros((0, self.z_size), np.float32)
            return empty, empty.copy()
        return np.concatenate(mus), np.concatenate(logvars)

    def encode(self, frames, rng):
        """Sample z ~ q(z | frame) using the numpy Generator `rng`; shape (n, z_size)."""
        mu, logvar = self.encode_mu_logvar(frames)
        eps = rng.standard_normal(mu.shape).astype(np.float32)
        return mu + np.exp(logvar / 2) * eps

    def decode(self, z):
        """Pictures for latent vectors z (n, z_size), as uint8 (n, 64, 64, 3)."""
        z = np.asarray(z, np.float32).reshape(-1, self.z_size)
        pictures = [self._decode_tf(z[start:start + _BATCH]).numpy() for start in range(0, len(z), _BATCH)]
        if not pictures:
            return np.zeros((0,) + PICTURE_SHAPE, np.uint8)
        return np.round(np.concatenate(pictures) * 255.0).astype(np.uint8)

    # ----- training ------------------------------------------------------------------

    def _losses(self, x):
        mu, logvar = self.encoder(x, training=True)
        z = mu + tf.exp(logvar / 2) * self._noise.normal(tf.shape(mu))
        y = self.decoder(z, training=True)
        if self.recon_loss == "bce":
            y = tf.clip_by_value(y, _BCE_EPS, 1.0 - _BCE_EPS)
            per_number = -(x * tf.math.log(y) + (1.0 - x) * tf.math.log(1.0 - y))
        else:
            per_number = tf.square(x - y)
        r_loss = tf.reduce_mean(tf.reduce_sum(per_number, axis=[1, 2, 3]))
        kl = -0.5 * tf.reduce_sum(1 + logvar - tf.square(mu) - tf.exp(logvar), axis=1)
        # Free bits: KL below kl_tolerance * z_size costs nothing, so V keeps detail in z.
        kl_loss = tf.reduce_mean(tf.maximum(kl, self.kl_tolerance * self.z_size))
        return r_loss + kl_loss, r_loss, kl_loss

    def _train_step(self, x):
        with tf.GradientTape() as tape:
            loss, r_loss, kl_loss = self._losses(x)
        grads = tape.gradient(loss, self._variables)
        self.optimizer.apply_gradients(zip(grads, self._variables))
        return loss, r_loss, kl_loss

    def train_step(self, batch):
        """One Adam step on a batch of frames (n, 64, 64, 3): float in [0, 1] or uint8.

        Returns {"loss", "r_loss", "kl_loss"} as Python floats (values before the step).
        """
        loss, r_loss, kl_loss = self._train_step_tf(_as_float_frames(batch))
        return {"loss": float(loss), "r_loss": float(r_loss), "kl_loss": float(kl_loss)}

    # ----- weights -------------------------------------------------------------------

    def weight_names(self):
        return [v.path for v in self._variables]

    def get_weights_flat(self):
        """All weights, encoder then decoder, as one float32 vector."""
        return np.concatenate([v.numpy().ravel() for v in self._variables])

    def set_weights_flat(self, flat):
        flat = np.asarray(flat, np.float32)
        if flat.shape != (self.num_params,):
            raise ValueError(f"expected a flat vector of {self.num_params} weights, got shape {flat.shape}")
        start = 0
        for v in self._variables:
            size = int(np.prod(v.shape))
            v.assign(flat[start:start + size].reshape(v.shape))
            start += size

    def round_to_saved_precision(self):
        """Round the weights in memory to the float16 values save_json stores."""
        self.set_weights_flat(self.get_weights_flat().astype(_SAVED_DTYPE).astype(np.float32))

    # ----- json ----------------------------------------------------------------------

    def save_json(self, path):
        """Write the model to `path` in the format of the module docstring."""
        weights_json.write(path, FORMAT, {"z_size": self.z_size, "picture_shape": list(PICTURE_SHAPE),
                                          "kl_tolerance": self.kl_tolerance, "learning_rate": self.learning_rate,
                                          # only when not the default, so an l2 V's file is as before
                                          **({"recon_loss": self.recon_loss} if self.recon_loss != "l2" else {})},
                           {v.path: v.numpy() for v in self._variables}, _SAVED_DTYPE)

    @classmethod
    def from_json(cls, path):
        """Load a model written by save_json; raises ValueError naming what is wrong."""
        document = weights_json.read_document(path, FORMAT)
        picture_shape = weights_json.require(document, "picture_shape", path)
        if list(picture_shape) != list(PICTURE_SHAPE):
            raise ValueError(f"{path}: picture_shape is {picture_shape}, expected {list(PICTURE_SHAPE)}")
        model = cls(z_size=weights_json.require(document, "z_size", path),
                    kl_tolerance=weights_json.require(document, "kl_tolerance", path),
                    learning_rate=weights_json.require(document, "learning_rate", path),
                    recon_loss=document.get("recon_loss", "l2"))
        shapes = {v.path: tuple(v.shape) for v in model._variables}
        weights = weights_json.read_weights(document, path, shapes, _SAVED_DTYPE)
        for v, values in zip(model._variables, weights.values()):
            v.assign(values)
        return model
