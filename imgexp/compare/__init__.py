"""The comparison stage: rebuild a report's comparison table (rows: metrics, columns: a config key's values,
cells: mean ± std over seeds) from MLflow runs alone, as Markdown, CSV, LaTeX and an HTML report."""
