"""Measurement protocols of the results pages: a stage run as a user runs it, on inputs made
for the measurement, and scored against what it never saw.

- :mod:`~mrsr.protocols.unseen`: a trained model on volumes it never saw (``stage=predict``
  through the task registry), against bicubic and zero-filling: the README's tables;
- :mod:`~mrsr.protocols.throughplane`: ``stage=throughplane`` on a volume made thick
  (a child process), its gain over the cubic spline and its time.

They run stages, so they sit above the stages with the running layer (``mrsr.dispatch``,
``mrsr.stage_process``); the library below never imports them.
"""
