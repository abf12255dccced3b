"""One comparison: select runs -> table -> Markdown, CSV, LaTeX, figures, HTML -> the sweep's parent run."""
from __future__ import annotations

import logging
from pathlib import Path

from imgexp.compare.config import CompareConfig
from imgexp.compare.report import (STUDY_FOLDER, bars_figure, curves_figure, curves_frame, html_report, png,
                                   study_plots)
from imgexp.compare.select import select
from imgexp.compare.table import Table, merge_repeats, run_values

log = logging.getLogger(__name__)
FILES = ("table.md", "table.csv", "table.tex", "bars.png", "curves.png", "report.html")


def compare(cfg: CompareConfig, output_dir: str | Path) -> str:
    """Write the outputs (``FILES``; the figures only when something was counted; a study's Optuna plots
    under ``optuna/``) into ``output_dir``, log ``FILES`` to the sweep's parent run under ``compare/`` if the
    selection is a sweep, and return the Markdown table."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sel = select(cfg)
    values = merge_repeats(run_values(sel, list(cfg.metrics), cfg.epoch))
    table = Table.build(sel, values, list(cfg.metrics), dict(cfg.labels), cfg.digits, cfg.baseline, cfg.test)
    markdown = table.markdown(cfg.epoch)
    (out / "table.md").write_text(markdown)
    table.numbers().to_csv(out / "table.csv", index=False)
    (out / "table.tex").write_text(table.latex(cfg.epoch))

    figures = {}  # file name -> (title, PNG)
    if not values.empty:
        figures["bars.png"] = ("Per metric (bars: mean, error bars: t-based 95% CI of the mean, dots: seeds)",
                               png(bars_figure(values, sel.columns, dict(cfg.labels))))
    curves = curves_frame(sel)
    if not curves.empty:
        figures["curves.png"] = ("Learning curves", png(curves_figure(curves, sel.columns, ", ".join(sel.keys))))
    for name, (_, data) in figures.items():
        (out / name).write_bytes(data)
    study = study_plots(sel, out)
    (out / "report.html").write_text(html_report(sel, table, cfg.epoch, dict(figures.values()), cfg.thumbnails,
                                                 cfg.ui_url, study))
    if study:
        log.info("Optuna study plots (%d) in report.html; full size in %s", len(study), out / STUDY_FOLDER)

    written = [out / name for name in FILES if name in figures or not name.endswith(".png")]
    if sel.parent is not None and cfg.log_to_parent:
        for path in written:
            sel.client.log_artifact(sel.parent.info.run_id, str(path), "compare")
        log.info("logged %s to parent run %s under compare/", ", ".join(p.name for p in written),
                 sel.parent.info.run_id)
    log.info("%d runs compared; outputs in %s", len(sel.runs), out)
    return markdown
