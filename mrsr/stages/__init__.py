"""LightningModules: training logic for the three stages (networks live in ``mrsr.nets``)."""
