"""The Hydra config tree, importable as imgexp.conf so it ships inside the wheel."""
