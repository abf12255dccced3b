"""imgexp's report templates on Hydra's config search path: ``imgexp -m -cn report_d_ablation``."""
