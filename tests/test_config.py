"""Every option of every config group composes, validates and builds; every YAML documents itself."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from omegaconf import OmegaConf

from imgexp.config import validate
from imgexp.register import schemas
from imgexp.build import build

from conftest import CONF, SLOW_MODELS, config_options

OPTIONS = config_options()
SCHEMAS = schemas()


def test_every_group_has_options():
    groups = {g for g, _ in OPTIONS}
    assert groups == set(SCHEMAS), "each schema group has YAML options and vice versa"


SLOW = {("model", name) for name in SLOW_MODELS} | {("data", "catsdogs"), ("data", "imagenet_subset")}  # 224 px


@pytest.mark.parametrize("group,option", [
    pytest.param(g, o, marks=pytest.mark.slow) if (g, o) in SLOW else (g, o) for g, o in OPTIONS
], ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_builds(compose_cfg, image_tree, tmp_path, group, option):
    extra = {
        "model": ["batch=8"],  # the big models stay quick on a CPU
        "data": ["batch=8", f"data.root={image_tree}", f"data.cache_dir={tmp_path}", "data.num_workers=0"],
        "trainer": ["trainer.compile=false"],  # compiling is tested on its own (test_trainer.py)
    }.get(group, [])
    cfg = compose_cfg(f"{group}={option}", "device=cpu", "tracking=none", *extra)
    # typed by its schema: a YAML without its `- /schema/<group>/...@_here_` line composes as a plain dict
    assert OmegaConf.get_type(cfg[group]) in SCHEMAS[group].values(), f"conf/{group}/{option}.yaml has no schema"
    validate(cfg)  # every option's values pass its schema's checks (run() validates before build)
    job = build(cfg, tmp_path)
    trainer = job.trainer
    x, y = next(iter(trainer.train))
    assert trainer.model.eval()(x).shape == (len(y), job.data.info.num_classes)
    trainer.model.train()
    loss_sum, _ = trainer.step(x, y)  # GoogLeNet adds its auxiliary losses
    trainer.schedule.after_epoch(loss_sum.item())
    assert torch.isfinite(loss_sum)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_yaml_starts_with_what_and_how(group, option):
    lines = (CONF / group / f"{option}.yaml").read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines[0]) > 10, "first line says what the option is"
    header = [line for line in lines if line.startswith("#")]
    assert any("python -m imgexp" in line for line in header), "a comment shows a command that uses it"


def test_primary_config_documents_itself():
    text = (CONF / "config.yaml").read_text()
    assert text.startswith("# ") and "python -m imgexp" in text.split("defaults:")[0]


def schema_defaults(schema: type) -> dict:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(schema)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_yaml_sets_only_what_differs_from_its_schema(group, option):
    """One source of defaults: the schema's dataclass (a model's, its builder's signature); a YAML adds its
    comment and what differs."""
    path = CONF / group / f"{option}.yaml"
    (schema_name,) = re.findall(rf"- /schema/{group}/(\w+)@_here_", path.read_text())
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    values.pop("defaults", None)
    defaults = schema_defaults(SCHEMAS[group][schema_name])
    assert [k for k, v in values.items() if k in defaults and defaults[k] == v] == []
