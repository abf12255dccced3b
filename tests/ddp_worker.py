"""One rank of a 2-rank training run for tests/test_ddp.py, started by torchrun (gloo, CPU): trains a tiny
model on images whose pixel is their index, and writes, per step, the indices this rank trained on and a
checksum of its parameters to <out>/rank<N>.json."""
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

if __name__ == "__main__":
    out = Path(sys.argv[1])
    ranks = Ranks.join("gloo")
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
    ranks.leave()
