"""mrsr: MR image super-resolution with a CNN GAN, a ViT and structure/texture disentanglement."""

from omegaconf import OmegaConf

__version__ = "0.7.0"


def _epochs_between_validations(val_check_interval: float | int) -> int | None:
    """``trainer.check_val_every_n_epoch`` for a ``val_check_interval``: an integer interval
    counts training batches across epochs (``None``), a fraction is per epoch (``1``)."""
    return None if isinstance(val_check_interval, int) and not isinstance(val_check_interval, bool) else 1


# Used by the stage configs (conf/stage/*.yaml); registered wherever mrsr.conf is loaded.
if not OmegaConf.has_resolver("mrsr.val_epochs"):
    OmegaConf.register_new_resolver("mrsr.val_epochs", _epochs_between_validations)
