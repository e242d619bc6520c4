"""Reporting: a run's results rows (:mod:`~mrsr.report.results`), committed records of
measurements (:mod:`~mrsr.report.records`) and the tables and figure of sweeps
(:mod:`~mrsr.report.tables`, ``python -m mrsr.report``)."""
