"""The figures (seaborn bar charts per metric, overlaid learning curves) and the self-contained HTML report:
every image inline as a base64 PNG, nothing fetched from elsewhere (a study's Optuna plots also link to their
full-size copies in the output directory)."""
from __future__ import annotations

import base64
import html
import io
import tempfile
from fnmatch import fnmatch
from pathlib import Path

import mlflow
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator
from PIL import Image

from imgexp.analysis.pyplot import plt
from imgexp.compare.stats import mean_ci
from imgexp.compare.select import Selection
from imgexp.compare.table import Table
from imgexp.redact import mask
from imgexp.tracking.store import REUSED_FROM_TAG
from imgexp.tracking.study_plots import FOLDER as STUDY_FOLDER

CURVES = ("train/acc", "val/acc", "train/loss", "val/loss")
# Plots shown first as thumbnails (patterns of artifact paths), then the rest by name.
PREFERRED = ("plots/learning_curves.png", "plots/tsne/final_*_2d.png", "plots/cam/correct_vs_wrong.png",
             "plots/cam/*", "plots/confusion_matrix.png")
# A study's Optuna plots on its parent run (imgexp.tracking.study_plots), in this order, then the rest by name.
STUDY_PREFERRED = tuple(f"{STUDY_FOLDER}/{name}.png" for name in (
    "optimization_history", "param_importances", "parallel_coordinate", "pareto_front"))


def bars_figure(values: pd.DataFrame, columns: list[str], labels: dict[str, str]):
    """One bar chart per metric: the mean over the seeds of each column (``values``: one value per seed, as
    :func:`imgexp.compare.table.merge_repeats` gives), error bars its t-based 95% CI."""
    data = values.dropna(subset=["value"]).assign(row=lambda d: d.metric.map(lambda m: labels.get(m, m)))
    rows = list(dict.fromkeys(data.row))
    grid = sns.catplot(data, kind="bar", x="column", y="value", col="row", col_order=rows, order=columns,
                       col_wrap=min(4, len(rows)), sharey=False, errorbar=mean_ci, capsize=0.2, height=2.8,
                       aspect=max(1.0, 0.35 * len(columns)))
    grid.map_dataframe(sns.stripplot, x="column", y="value", order=columns, color="black", size=3)
    grid.set_titles("{col_name}").set_axis_labels("", "")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", labelrotation=30 if len(columns) > 3 else 0)
    grid.figure.tight_layout()
    return grid.figure


def curves_frame(sel: Selection) -> pd.DataFrame:
    rows = [(run.run_id, run.column, step, *metric.split("/"), value)
            for _, run in sel.counted.iterrows() for metric in CURVES
            for step, value in sel.history(run.run_id, metric) if step > 0]
    return pd.DataFrame(rows, columns=["run", "column", "epoch", "split", "metric", "value"])


def curves_figure(curves: pd.DataFrame, columns: list[str], key: str):
    """Accuracy and loss per epoch of every counted run, coloured by column (legend: ``key``), solid train
    and dashed val; one legend, beside the plots, covering no line."""
    curves = curves.rename(columns={"column": key})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, metric in zip(axes, ("acc", "loss")):
        sns.lineplot(curves[curves.metric == metric], x="epoch", y="value", hue=key, hue_order=columns,
                     style="split", style_order=["train", "val"], units="run", estimator=None, marker="o", ax=ax)
        ax.set(title=metric, ylabel=metric)
        epochs = sorted(curves.epoch.unique())
        if len(epochs) <= 12:  # whole epochs only, also for a single one
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].get_legend().remove()
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")  # legends beside the axes stay in
    plt.close(fig)
    return buffer.getvalue()


def img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def plot_paths(sel: Selection, run_id: str, path: str = "plots") -> list[str]:
    """Every PNG artifact under ``plots/`` of a run."""
    found = []
    for item in sel.client.list_artifacts(run_id, path):
        if item.is_dir:
            found += plot_paths(sel, run_id, item.path)
        elif item.path.endswith(".png"):
            found.append(item.path)
    return found


def ranked(paths: list[str], preferred: tuple[str, ...]) -> list[str]:
    """``paths`` in the order of the first pattern of ``preferred`` each matches, the rest last; by name within."""
    def rank(path: str) -> tuple[int, str]:
        return next((i for i, p in enumerate(preferred) if fnmatch(path, p)), len(preferred)), path

    return sorted(paths, key=rank)


def shrunk(local: str | Path, size: tuple[int, int]) -> bytes:
    """The PNG at ``local``, downsized to fit ``size``."""
    with Image.open(local) as image:
        image.thumbnail(size)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def download(sel: Selection, run_id: str, path: str, into: str | Path) -> str:
    """The run's artifact file ``path``, downloaded into the folder ``into`` (file name only): its local path."""
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(into),
                                               tracking_uri=sel.uri)


def thumbnails(sel: Selection, run_id: str, limit: int, size: tuple[int, int] = (800, 600)) -> list[tuple[str, bytes]]:
    """Up to ``limit`` of the run's plots (preferred ones first), downsized to fit ``size``."""
    chosen = ranked(plot_paths(sel, run_id), PREFERRED)[:limit] if limit else []
    with tempfile.TemporaryDirectory() as tmp:
        return [(path, shrunk(download(sel, run_id, path, tmp), size)) for path in chosen]


def study_plots(sel: Selection, out: Path, size: tuple[int, int] = (800, 600)) -> dict[str, bytes]:
    """{path: PNG downsized to fit ``size``} of the Optuna plots (``optuna/*.png``) on the sweep's parent run,
    each also downloaded full size to ``out/<path>``; empty when the selection is no sweep or the parent has
    none (a grid sweep)."""
    if sel.parent is None:
        return {}
    run_id = sel.parent.info.run_id
    paths = [item.path for item in sel.client.list_artifacts(run_id, STUDY_FOLDER)
             if not item.is_dir and item.path.endswith(".png")]
    return {path: shrunk(download(sel, run_id, path, out / STUDY_FOLDER), size)
            for path in ranked(paths, STUDY_PREFERRED)}


def study_section(plots: dict[str, bytes]) -> str:
    """The report's "Optuna study" section: each plot inline, linked to its full-size copy (relative path)."""
    e = html.escape
    shots = "".join(f'<figure><a href="{e(path)}">{img(data, path)}</a><figcaption>{e(path)}</figcaption></figure>'
                    for path, data in plots.items())
    return f"<h2>Optuna study</h2>{shots}" if shots else ""


def run_url(sel: Selection, ui_url: str | None, run: pd.Series) -> str:
    base = ui_url or (sel.uri if sel.uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")
    return mask(f"{base.rstrip('/')}/#/experiments/{run.experiment_id}/runs/{run.run_id}")  # no URI password


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table.compare { border-collapse: collapse; margin: 1em 0; }
table.compare th, table.compare td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
table.compare td:first-child, table.compare th:first-child { text-align: left; }
figure { display: inline-block; margin: 0.3em; vertical-align: top; max-width: 48%; }
figcaption { font-size: 0.8em; color: #555; }
section.run { border-top: 1px solid #ddd; padding-top: 0.5em; }
img { max-width: 100%; }
"""


def html_report(sel: Selection, table: Table, epoch: str, figures: dict[str, bytes], thumbs: int,
                ui_url: str | None, study: dict[str, bytes] | None = None) -> str:
    """The report page: selection, table, notes, figures, a study's Optuna plots (``study``, as
    :func:`study_plots` gives), and per run a link and its plot thumbnails."""
    e = html.escape
    parts = [f"<h1>Comparison by {e(', '.join(sel.keys) or 'setting')}</h1>", f"<p>{e(sel.description)}</p>",
             f"<p>{e(table.caption(epoch))}</p>",
             table.frame().to_html(index=False, classes="compare", border=0, table_id="compare")]
    notes = table.notes()
    if notes:
        parts.append("<h2>Not counted</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    merged = table.merged()
    if merged:
        parts.append("<h2>Repeats merged</h2><ul>" + "".join(f"<li>{e(m)}</li>" for m in merged) + "</ul>")
    parts += [f"<h2>{e(title)}</h2>{img(data, title)}" for title, data in figures.items()]
    if study:
        parts.append(study_section(study))
    parts.append("<h2>Runs</h2>")
    for _, run in sel.runs.iterrows():
        status = run.excluded if isinstance(run.excluded, str) else run.status.lower()
        head = (f'<h3>{e(run.column)}: <a href="{e(run_url(sel, ui_url, run))}">{e(run.run_id)}</a> '
                f"{e(str(run.get('tags.mlflow.runName', '')))} ({e(status)})</h3>")
        trained = run.get(f"tags.{REUSED_FROM_TAG}")  # a reused run's plots are in the run that trained it
        trained = trained if isinstance(trained, str) and trained else run.run_id
        if trained != run.run_id:
            head = head.replace("</h3>", f" reused from {e(trained)}</h3>")
        shots = "".join(f"<figure>{img(data, path)}<figcaption>{e(path)}</figcaption></figure>"
                        for path, data in thumbnails(sel, trained, thumbs))
        parts.append(f'<section class="run">{head}{shots or ("<p>no plots</p>" if thumbs else "")}</section>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>imgexp comparison</title>'
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
