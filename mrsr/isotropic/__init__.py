"""Through-plane (isotropic) SR of one thick-slice scan, with no training set.

Self-supervised (SMORE, Zhao et al. 2020): a same-size SR network learns from the scan's own
in-plane slices, degraded along one in-plane axis like the thick axis was acquired, then
restores every slice that cuts across the thick axis. ``stage=throughplane``
(:mod:`mrsr.tasks.throughplane`) runs it; the parts are:

- :mod:`~mrsr.isotropic.geometry`: cell-centred re-sampled grids, which axis is thick (and
  whether it can be restored), affines of re-sampled grids;
- :mod:`~mrsr.isotropic.profile`: slice profiles (Gaussian, boxcar, measured);
- :mod:`~mrsr.isotropic.operators`: one-axis matrices: thick-slice sampling, cubic splines;
- :mod:`~mrsr.isotropic.estimate`: the slice profile estimated from the scan, and the spectral
  ratio of the over-sharpening self-check;
- :mod:`~mrsr.isotropic.datamodule`: the LightningDataModule of training pairs from the in-plane
  slices;
- :mod:`~mrsr.isotropic.restore`: applying the trained network to the scan, and the self-check;
- :mod:`~mrsr.isotropic.simulate`: thick slices made independently of the stage's operators,
  and the ideal low-pass bound (for measuring it; the measurement itself is
  :mod:`mrsr.protocols.throughplane`).
"""
