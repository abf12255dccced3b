"""A 2-rank training run for tests/test_ddp.py and tests/test_nodes.py: trains a tiny model on images whose pixel
is their index, and writes, per step, the indices each rank trained on and a checksum of its parameters to
<out>/rank<N>.json. Started by torchrun (``python ddp_worker.py OUT``, gloo, CPU), or as the job of imgexp's
launcher over several nodes (``python ddp_worker.py OUT RENDEZVOUS``, one rank per node)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from imgexp.data.loader import Shard, TensorLoader
from imgexp.train import Schedule, Trainer
from imgexp.train.ranks import Ranks

N, BATCH, EPOCHS = 201, 20, 2  # 201 % 20 = 1 image: fewer than the ranks, so each epoch's last batch is dropped


def train_and_record(out: Path, ranks: Ranks) -> None:
    """Train on this rank's shard and write what it saw and its parameters after every step."""
    torch.manual_seed(0)
    x, y = torch.arange(N, dtype=torch.float32).view(N, 1, 1, 1), torch.arange(N) % 3
    shard = Shard(ranks.rank, ranks.world)
    train = TensorLoader(x, y, BATCH, lambda b: b, shuffle=True, seed=0, shard=shard)
    val_rows = shard.rows(N)
    val = TensorLoader(x[val_rows], y[val_rows], 16, lambda b: b)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = Trainer(model, nn.CrossEntropyLoss(), optimizer, Schedule(optimizer, None), train, val, val,
                      epochs=EPOCHS, checkpoint_dir=out / "checkpoints", progress=False, ranks=ranks)
    steps, step = [], trainer.step

    def recorded(xb, yb):
        result = step(xb, yb)
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        steps.append({"epoch": trainer.epoch + 1, "ids": xb.flatten().long().tolist(),
                      "params": params.double().sum().item(), "first": params[:4].tolist()})
        return result

    trainer.step = recorded
    result = trainer.fit()
    (out / f"rank{ranks.rank}.json").write_text(json.dumps({"steps": steps, "val_acc": trainer.history[-1]["val/acc"],
                                                            "test_n": len(result.test_targets)}))


def check_records(out: Path) -> None:
    """The two ranks' records: equal parameters after every step, disjoint shards covering every image once an
    epoch, the same evaluation."""
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(r0["steps"]) == len(r1["steps"]) == 2 * 10
    for a, b in zip(r0["steps"], r1["steps"]):
        assert a["params"] == b["params"] and a["first"] == b["first"], "DDP keeps the ranks' weights equal"
        assert set(a["ids"]).isdisjoint(b["ids"]) and abs(len(a["ids"]) - len(b["ids"])) <= 1
    for epoch in (1, 2):
        seen = [i for s in r0["steps"] + r1["steps"] if s["epoch"] == epoch for i in s["ids"]]
        assert len(seen) == len(set(seen)) == 200, "every image once, but the one of a last batch of 1"
    assert r0["val_acc"] == r1["val_acc"] and r0["test_n"] == r1["test_n"] == 201, "evaluation: every row once"


def node_job(cfg, output_dir: Path, overrides, ranks: Ranks, device, gpus) -> None:
    """The job imgexp's launcher runs on each rank (``imgexp.elastic.launch_ranks``)."""
    train_and_record(output_dir, ranks)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    if len(sys.argv) == 2:
        ranks = Ranks.join("gloo")
        train_and_record(out, ranks)
        ranks.leave()
    else:
        from omegaconf import OmegaConf

        from imgexp.elastic import launch_ranks

        cfg = OmegaConf.create({"device": "cpu", "trainer": {"nodes": 2, "rendezvous": sys.argv[2],
                                                             "rendezvous_timeout_s": 120}})
        launch_ranks(node_job, cfg, out, [], 1, [])
