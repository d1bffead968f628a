"""Generative models (DCGAN, VAE, DDPM U-Net) and the diffusion math.

Submodules are imported explicitly (``from imagegen.models import unet``) so that importing this
package does not pull in Keras or a backend.
"""
