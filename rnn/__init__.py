"""M model: the World Models MDN-RNN, trainable in TensorFlow and runnable in numpy."""

from rnn.rnn import MDNRNN, RNNNumpy, read_json, weight_shapes

__all__ = ["MDNRNN", "RNNNumpy", "read_json", "weight_shapes"]
