"""The report templates, importable as imgexp.templates so they ship inside the wheel and Hydra finds them
(``imgexp -m -cn <name>``) from any directory."""
