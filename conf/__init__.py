"""The package's Hydra configs (installed as ``mrsr.conf``). Hydra imports this package to find
them, which registers the resolvers they use; ``import mrsr`` itself stays free of OmegaConf."""

from omegaconf import OmegaConf


def _epochs_between_validations(val_check_interval: float | int) -> int | None:
    """``trainer.check_val_every_n_epoch`` for a ``val_check_interval``: an integer interval
    counts training batches across epochs (``None``), a fraction is per epoch (``1``)."""
    return (
        None
        if isinstance(val_check_interval, int) and not isinstance(val_check_interval, bool)
        else 1
    )


if not OmegaConf.has_resolver("mrsr.val_epochs"):
    OmegaConf.register_new_resolver("mrsr.val_epochs", _epochs_between_validations)
