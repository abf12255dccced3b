"""imgexp's grid sweeper (``hydra/sweeper=grid``, the default for ``python -m imgexp -m``)."""
