"""Every option of every config group composes, validates and builds; every YAML documents itself."""
from __future__ import annotations

import pytest
import torch

from imgexp.config import SCHEMAS
from imgexp.run import build
from imgexp.train.loop import step_scheduler, training_loss

from conftest import CONF, config_options

OPTIONS = config_options()


def test_every_group_has_options():
    groups = {g for g, _ in OPTIONS}
    assert groups == set(SCHEMAS), "each schema group has YAML options and vice versa"


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_builds(compose_cfg, image_tree, tmp_path, group, option):
    extra = {
        "model": ["batch=8"],  # the big models stay quick on a CPU
        "data": ["batch=8", f"data.root={image_tree}", f"data.cache_dir={tmp_path}", "data.num_workers=0"],
    }.get(group, [])
    cfg = compose_cfg(f"{group}={option}", "device=cpu", "tracking=none", *extra)
    job = build(cfg)
    x, y = next(iter(job.data.train))
    loss, logits = training_loss(job.model(x), y, job.loss_fn)  # GoogLeNet adds its auxiliary losses
    assert logits.shape == (len(y), job.data.info.num_classes)
    loss.backward()
    job.optimizer.step()
    step_scheduler(job.scheduler, loss.item())
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in job.model.parameters())


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_yaml_starts_with_what_and_how(group, option):
    lines = (CONF / group / f"{option}.yaml").read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines[0]) > 10, "first line says what the option is"
    header = [line for line in lines if line.startswith("#")]
    assert any("python -m imgexp" in line for line in header), "a comment shows a command that uses it"


def test_primary_config_documents_itself():
    text = (CONF / "config.yaml").read_text()
    assert text.startswith("# ") and "python -m imgexp" in text.split("defaults:")[0]
