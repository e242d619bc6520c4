"""mrsr: MR image super-resolution with a CNN GAN, a ViT and structure/texture disentanglement."""

__version__ = "0.7.0"
