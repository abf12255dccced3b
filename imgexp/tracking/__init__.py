"""Tracking: a thin layer that hands a run's params, metrics and files to MLflow (or to nothing), in three
layers, each module's first line naming its own:

- bottom: ``store.py`` (the only module that talks to MLflow directly: client, URI, retries, tag names,
  artifact deletion, dataset inputs) and ``schema.py`` (the tracking config group);
- middle, each using the bottom and nothing above it: ``spool.py``, ``liveness.py``, ``logged_model.py``,
  ``rebuild.py``, ``resume.py``, ``reuse.py``, ``trial.py``, ``pruning.py``, ``study_plots.py``,
  ``study_storage.py``;
- top: ``tracker.py`` (the :class:`~imgexp.tracking.tracker.Tracker` a run holds, and ``start_run``) and
  ``sweep.py`` (a sweep's parent run).

``tests/test_layers.py`` keeps this true.
"""
