"""``python -m imgexp --help``: the groups a user chooses from, their options, the templates and the
top-level keys, read from the shipped config tree (no torch, no MLflow: it answers at once)."""
from __future__ import annotations

from importlib.resources import files

USAGE = """imgexp: image-classification experiments with Hydra, PyTorch, MLflow and Optuna.

  python -m imgexp [group=option ...] [key=value ...]     one run (default: small_cnn on digits, no download)
  python -m imgexp -m epochs=30,50 batch=32,128            a grid sweep: one MLflow parent run, a child per job
  python -m imgexp -m hydra/sweeper=optuna ...             an Optuna search (see the README)
  python -m imgexp -m -cn <template> data.root=...         a report template
  python -m imgexp.compare sweep=latest                    compare runs from MLflow alone
  mlflow ui                                                browse every run

The composed config of a command: add --cfg job. Hydra's own options: --hydra-help."""
SWEEPERS = ("grid", "optuna")  # imgexp's, registered in code (imgexp.register)


def options(folder) -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


NOT_GROUPS = ("hydra", "predict", "__pycache__")  # folders of conf/ that are not groups of the training config
PRESETS = ("debug",)  # groups whose options set keys of other groups (``# @package _global_``), without a schema


def groups() -> dict[str, list[str]]:
    """``{group: options}`` of the config tree, with Hydra's launcher and sweeper groups as imgexp sets them."""
    conf = files("imgexp.conf")
    found = {p.name: options(p) for p in conf.iterdir() if p.is_dir() and p.name not in NOT_GROUPS}
    found["hydra/launcher"] = ["basic", *options(conf / "hydra" / "launcher")]
    found["hydra/sweeper"] = list(SWEEPERS)
    return dict(sorted(found.items()))


def top_level_keys(config: str = "config.yaml") -> list[str]:
    """A config's own keys with their comments (the lines between the defaults list and ``hydra:``)."""
    lines = (files("imgexp.conf") / config).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- _self_") + 1
    end = next(i for i, line in enumerate(lines) if line.startswith("hydra:"))
    return [line for line in lines[start:end] if line.strip()]


def stage_text(config: str) -> str:
    """``--help`` of ``python -m imgexp.compare``, ``.predict`` or ``.evaluate``: the header comment of its
    YAML (what it does, example commands) and every key with its comment."""
    lines = (files("imgexp.conf") / config).read_text().splitlines()
    header = [line.removeprefix("#").removeprefix(" ") for line in lines if line.startswith("#")]
    return "\n".join([*header, "", "Keys (key=value):", *(f"  {line}" for line in top_level_keys(config))])


def stage_help(config: str) -> bool:
    """Print :func:`stage_text` and say True when the command line asks for ``--help``."""
    import sys

    if "--help" not in sys.argv[1:] and "-h" not in sys.argv[1:]:
        return False
    print(stage_text(config))
    return True


MACHINES = ("nodes", "rendezvous", "rendezvous_timeout_s", "devices")  # trainer keys of one run over several


def schema_lines(folder: str, keys: tuple[str, ...], prefix: str) -> list[str]:
    """The lines of ``imgexp/<folder>/schema.py`` that declare ``keys`` (type, default, comment), as ``prefix.key``
    (read as text: importing the package would load torch)."""
    lines = (files("imgexp") / folder / "schema.py").read_text().splitlines()
    return [f"{prefix}.{line.strip()}" for line in lines if line.startswith(tuple(f"    {k}:" for k in keys))]


def text() -> str:
    width = max(map(len, groups()))
    parts = [USAGE, "", "Config groups (group=option):"]
    parts += [f"  {g:<{width}}  {', '.join(o)}" for g, o in groups().items()]
    parts += ["", "Report templates (-m -cn <name>): " + ", ".join(options(files("imgexp.templates"))), "",
              "Top-level keys (key=value):", *(f"  {line}" for line in top_level_keys()), "",
              "One run over several GPUs or machines (docs/gpus.md):",
              *(f"  {line}" for line in schema_lines("train", MACHINES, "trainer")), "",
              "Any key of a group: model.dropout=0.3, optimizer.lr=3e-4, data.root=/data/cifar10, ..."]
    return "\n".join(parts)
