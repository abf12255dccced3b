"""The decode-once cache (imgexp/data/cache.py) on a folder of generated JPEGs of mixed sizes: its batches
equal the streamed ones, a second run decodes nothing, jobs started together build it once, a damaged,
stale or full cache is handled with one line, and kill -9 + resume=auto on it gives the uninterrupted run.
Also the batched random resized crop (imgexp/data/augment.py)."""
from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

import imgexp.data.cache
import imgexp.data.decode
import imgexp.data.sources
from imgexp.data import StreamLoader, TensorLoader, build
from imgexp.data.augment import build_augment, center_crop
from imgexp.data.schema import AugmentationConfig

from conftest import run_cli
from test_resume import runs, start, summary, wait_for

SIZES = [(48, 64), (64, 48), (56, 56), (80, 60), (40, 52)]  # (W, H): majority and odd sizes


def jpeg_folder(root: Path, per_class: int = 20, classes: int = 3) -> Path:
    """root/<class>/<i>.jpg: noise around a class colour, in mixed sizes (quality 90)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            w, h = SIZES[(i + c) % len(SIZES)]
            pixels = np.clip(rng.normal(60 + 70 * c, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return jpeg_folder(tmp_path_factory.mktemp("jpegs"))


MAPPED = ["data.image_size=24", "data.cache_size=32", "data.in_memory_max_px=16"]  # stored 32 px: mapped


def load(compose_cfg, root: Path, cache: Path, *overrides: str, workers: int = 0):
    cfg = compose_cfg("data=imagefolder", f"data.root={root}", f"data.cache_dir={cache}", f"data.num_workers={workers}",
                      "batch=8", "device=cpu", "augmentation=resized_crop_flip", *MAPPED, *overrides)
    return build(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, torch.device("cpu"))


def passes(data, epochs: int = 2) -> list[list[torch.Tensor]]:
    """Every batch (x and y) of ``epochs`` training passes, then of val and test."""
    out = [[t for batch in data.train for t in batch] for _ in range(epochs)]
    return out + [[t for batch in loader for t in batch] for loader in (data.val, data.test)]


def same(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> bool:
    return len(a) == len(b) and all(len(p) == len(q) and all(torch.equal(s, t) for s, t in zip(p, q))
                                    for p, q in zip(a, b))


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The paths read_image decodes (in this process: data.num_workers=0)."""
    seen: list[str] = []
    real = imgexp.data.decode.read_image

    def counted(path, *args):
        seen.append(path)
        return real(path, *args)

    monkeypatch.setattr(imgexp.data.decode, "read_image", counted)
    return seen


def test_cached_batches_equal_streamed_ones_and_a_second_run_decodes_nothing(compose_cfg, folder, tmp_path,
                                                                              decodes, caplog):
    with caplog.at_level(logging.INFO):
        mapped = load(compose_cfg, folder, tmp_path / "c")
    assert isinstance(mapped.train, TensorLoader) and mapped.train.mapped is not None
    assert "memory-mapped from the decode cache" in caplog.text and "converted 60 of 60 images" in caplog.text
    assert (mapped.info.height, mapped.info.width) == (24, 24) and mapped.train.x.shape[1:] == (3, 32, 32)
    assert len(decodes) == 60 == len(set(decodes))  # every file once; the statistics read the cache
    streamed = load(compose_cfg, folder, tmp_path / "s", "data.cache_max_gb=0", workers=2)
    assert isinstance(streamed.train, StreamLoader)
    in_memory = load(compose_cfg, folder, tmp_path / "c", "data.in_memory_max_px=64")
    assert in_memory.train.mapped is None and in_memory.train.x.device.type == "cpu"
    reference = passes(streamed)
    assert reference[0][0].shape == (8, 3, 24, 24) and not torch.equal(reference[0][0], reference[1][0])
    assert same(passes(mapped), reference) and same(passes(in_memory), reference)

    decodes.clear()
    again = load(compose_cfg, folder, tmp_path / "c")
    assert decodes == [] and same(passes(again), reference)
    assert len(list((tmp_path / "c").glob("*.u8"))) == 3 and not list((tmp_path / "c").glob(".*"))


def test_a_truncated_cache_is_rebuilt_with_one_line(compose_cfg, folder, tmp_path, decodes, caplog):
    reference = passes(load(compose_cfg, folder, tmp_path))
    biggest = max(tmp_path.glob("*.u8"), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 2)
    decodes.clear()
    with caplog.at_level(logging.WARNING):
        again = load(compose_cfg, folder, tmp_path)
    damaged = [r.getMessage() for r in caplog.records if "damaged" in r.getMessage()]
    assert len(damaged) == 1 and str(biggest) in damaged[0] and "decoding again" in damaged[0]
    assert len(decodes) == 42  # that split (train) only
    assert same(passes(again), reference)


def test_a_changed_or_new_file_rebuilds_and_unreadable_files_stay_skipped(compose_cfg, tmp_path, decodes, caplog):
    root = jpeg_folder(tmp_path / "imgs", per_class=8, classes=2)
    (root / "class1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    load(compose_cfg, root, tmp_path / "c")
    decodes.clear()
    with caplog.at_level(logging.WARNING):
        again = load(compose_cfg, root, tmp_path / "c")
    assert decodes == [] and "skipped 1 unreadable image files of 17" in caplog.text  # the count is cached too
    assert sum(len(y) for loader in (again.train, again.val, again.test) for _, y in loader) == 16
    stamp = (root / "class0" / "3.jpg").stat().st_mtime_ns + 10**9
    os.utime(root / "class0" / "3.jpg", ns=(stamp, stamp))
    load(compose_cfg, root, tmp_path / "c")
    assert str(root / "class0" / "3.jpg") in decodes  # the split holding it, decoded again
    decodes.clear()
    Image.new("RGB", (48, 64), (9, 9, 9)).save(root / "class1" / "new.jpg")
    load(compose_cfg, root, tmp_path / "c")
    assert str(root / "class1" / "new.jpg") in decodes
    decodes.clear()  # overwritten in place with other pixels, its size and modification time put back
    path = root / "class0" / "5.jpg"
    before, content = path.stat(), bytearray(path.read_bytes())
    content[-3] ^= 0xFF  # a byte of the entropy-coded data: other pixels, the same size
    path.write_bytes(bytes(content))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    load(compose_cfg, root, tmp_path / "c")
    assert str(path) in decodes


def test_a_full_disk_streams_with_one_line_and_leaves_no_temp_file(compose_cfg, folder, tmp_path, monkeypatch,
                                                                    caplog):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(imgexp.data.cache.os, "posix_fallocate", full)
    with caplog.at_level(logging.WARNING):
        data = load(compose_cfg, folder, tmp_path / "c")
    assert isinstance(data.train, StreamLoader) and isinstance(data.test, StreamLoader)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all("No space left on device): streaming" in line for line in lines)
    assert sorted(p.suffix for p in (tmp_path / "c").iterdir()) == [".lock"] * 3  # no temp file, no cache
    assert sum(len(y) for _, y in data.train) > 0


BUILD = textwrap.dedent("""
    import logging, sys, torch
    import imgexp.data.cache
    from imgexp.data.cache import cached_images
    imgexp.data.cache.PROGRESS_S = 0.0  # a progress line per batch of files (stderr is no terminal)
    from imgexp.data.folders import class_files, labelled
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    found = class_files(__import__("pathlib").Path(sys.argv[1]))
    files = labelled(found, sorted(found), sys.argv[1])
    cached = cached_images(files, (256, 256), 3, 0, sys.argv[2])
    print("rows", len(cached.y), int(cached.x.float().mean()))
""")


def decode_in_a_job(folder: str) -> int:
    """What a job of joblib's launcher does with an image folder: decode it with worker processes."""
    files = imgexp.data.sources.Files(sorted(str(p) for p in Path(folder).rglob("*.jpg")), torch.zeros(60).long())
    return len(imgexp.data.decode.decode_files(files, (16, 16), 3, num_workers=2)[0].y)


@pytest.mark.slow
def test_decoding_workers_start_inside_a_joblib_launchers_job(folder):
    """hydra/launcher=parallel runs jobs in loky's processes, whose start method a DataLoader cannot use: its
    workers are started the platform's own way (before the fix: "'Process' object has no attribute 'env'")."""
    from joblib import Parallel, delayed

    assert Parallel(n_jobs=2, backend="loky")(delayed(decode_in_a_job)(str(folder)) for _ in range(2)) == [60, 60]


@pytest.mark.slow
def test_jobs_started_together_build_the_cache_once(folder, tmp_path):
    cmd = [sys.executable, "-c", BUILD, str(folder), str(tmp_path / "c")]
    jobs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [job.communicate(timeout=300) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outs
    built = [err for _, err in outs if "decoded 60 images" in err]
    assert len(built) == 1, outs
    assert "decoding into the cache: 60 of 60 files" in built[0]  # progress lines, without a terminal
    assert len({out for out, _ in outs}) == 1 and outs[0][0].startswith("rows 60 ")
    assert len(list((tmp_path / "c").glob("*.u8"))) == 1


@pytest.mark.slow
def test_kill_9_in_epoch_2_then_resume_auto_gives_the_uninterrupted_runs_metrics(tmp_path):
    root = jpeg_folder(tmp_path / "imgs", per_class=150)
    run = ["data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", *MAPPED,
           "augmentation=resized_crop_flip", "epochs=3", "batch=16", "progress=false", "analysis=none"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference = run_cli(*run, cwd=tmp_path / "a", process=True)
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert "memory-mapped from the decode cache" in reference.stdout + reference.stderr
    client, (done,) = runs(tmp_path / "a")
    expected = summary(client, done)

    first = start(run, tmp_path / "b")
    wait_for("outputs/*/*/checkpoints/*/last.pt", tmp_path / "b", first)  # epoch 1 done: now in epoch 2
    first.send_signal(signal.SIGKILL)
    first.communicate()
    again = run_cli(*run, "resume=auto", cwd=tmp_path / "b", process=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming MLflow run" in again.stdout
    client, (resumed,) = runs(tmp_path / "b")
    assert summary(client, resumed) == expected


def test_resized_crop_draws_torchvisions_boxes_and_the_whole_image_is_a_plain_resize():
    whole = OmegaConf.structured(AugmentationConfig(crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0]))
    x = torch.rand(4, 3, 32, 32) * 255
    out = build_augment(whole, 0, torch.device("cpu"), (24, 24))(x)
    resized = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    assert out.shape == (4, 3, 24, 24) and torch.allclose(out, resized, atol=1e-3)

    cfg = AugmentationConfig(crop_scale=[0.08, 1.0])
    crops = imgexp.data.augment.resized_crops(cfg, 4000, 256, 256, torch.Generator().manual_seed(0))
    w, h = crops[:, 0, 0] * 256, crops[:, 1, 1] * 256
    area, aspect = w * h / 256**2, w / h
    assert area.min() >= 0.07 and area.max() <= 1.0 and aspect.min() >= 0.74 and aspect.max() <= 1.35
    assert 0.45 < area.mean() < 0.6  # uniform in [0.08, 1], less the tries that do not fit
    left = (crops[:, 0, 2] + 1) * 128 - w / 2  # the crop lies inside the image, on whole pixels
    assert left.min() >= -1e-3 and (left + w).max() <= 256 + 1e-3
    assert torch.allclose(left, left.round(), atol=1e-3)
    assert torch.equal(center_crop(torch.arange(36.0).view(1, 1, 6, 6), (4, 4))[0, 0, 0], torch.tensor([7.0, 8, 9, 10]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only")
def test_batches_from_the_cache_reach_the_gpu(compose_cfg, folder, tmp_path):
    cpu = passes(load(compose_cfg, folder, tmp_path))
    cfg = compose_cfg("data=imagefolder", f"data.root={folder}", f"data.cache_dir={tmp_path}", "data.num_workers=0",
                      "batch=8", "augmentation=none", *MAPPED)
    data = build(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, torch.device("cuda"))
    x, y = next(iter(data.test))
    assert x.device.type == "cuda" and y.device.type == "cuda"
    assert torch.allclose(x.cpu(), cpu[-1][0], atol=1e-4)
