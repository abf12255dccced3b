"""The test images a run's analysis draws from: a fixed stratified sample, the same for every rank count."""
from __future__ import annotations

from typing import Iterable

import torch

from imgexp.data.split import stratified_subset
from imgexp.train.ranks import Ranks


def analysis_sample(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], points: int, seed: int,
                    ranks: Ranks = Ranks()) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed stratified sample of ``points`` (model-ready) images of a split, for the analysis plots: each
    rank's share of its rows, gathered."""
    xs, ys = zip(*batches)
    x, y = torch.cat(xs), torch.cat(ys)
    share = round(points * len(y) / sum(ranks.objects(len(y))))
    keep = torch.from_numpy(stratified_subset(y.cpu().numpy(), share, seed)).to(y.device)
    return ranks.gather_rows(x[keep]), ranks.gather_rows(y[keep])
