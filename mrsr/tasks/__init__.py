"""The command tasks, one per ``stage.name`` (registered in :data:`mrsr.dispatch.TASKS`); the
training stages ``vit``, ``disent`` and ``sr`` run the library's
:func:`mrsr.training.train_stage` directly.

A task reads its config, calls library modules and writes and logs what it made. Tasks import
library modules only, never another task (``tests/test_layers.py``).
"""
