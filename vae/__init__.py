"""V model: the World Models convolutional VAE."""

from vae.vae import ConvVAE

__all__ = ["ConvVAE"]
