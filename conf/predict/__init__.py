"""The config of ``python -m imgexp.predict``, in a folder of its own: its key ``model`` is not the model group."""
