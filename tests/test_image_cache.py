"""The JPEG cache of file images: reuse, resume after a failure, a full disk, two builders at once, the CLI."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longtail.cli import main
from longtail.data import filestore
from longtail.data.filestore import FileStore
from longtail.data.synthetic import make_jpeg_folder
from longtail.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path) -> tuple[Path, list[str]]:
    root = make_jpeg_folder(tmp_path / "jpegs", 10, classes=2, size=(80, 60))
    return root, sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def leftovers(where: Path) -> list[str]:
    return sorted(p.name for p in where.rglob("*") if ".tmp" in p.name)


def test_cache_holds_each_image_once_and_matches_the_files(folder, tmp_path):
    root, files = folder
    direct = FileStore(root, files, 48).load(range(10)).images
    store = FileStore(root, files, 48, tmp_path / "c")
    cached = store.load(range(10)).images
    meta = json.loads(store.cache().manifest_path.read_text())
    assert meta["count"] == 10 and meta["quality"] == 85 and meta["size"] == 48 and not meta["square"]
    for i, (a, b) in enumerate(zip(direct, cached)):
        # JPEG q85 on small 1/f noise (harder than photos); another image is ~4x further off
        assert a.shape == b.shape and min(a.shape[:2]) == 48 and np.abs(a.astype(int) - b).mean() < 7
        other = direct[(i + 2) % 10]
        if other.shape == a.shape:
            assert np.abs(other.astype(int) - b).mean() > 20
    assert meta["bytes"] == sum(p.stat().st_size for p in store.cache().dir.glob("shard-*.bin"))


def test_a_failed_build_resumes_at_its_first_missing_shard(folder, tmp_path, monkeypatch):
    root, files = folder
    monkeypatch.setattr(filestore, "SHARD", 4)  # shards of images 0-3, 4-7, 8-9
    encoded = []
    real = filestore.JpegCache._encode

    def failing(self, path):
        if path.name == Path(files[6]).name:
            raise OSError(errno.EIO, "Input/output error")
        encoded.append(path.name)
        return real(self, path)

    monkeypatch.setattr(filestore.JpegCache, "_encode", failing)
    store = FileStore(root, files, 32, tmp_path / "c")
    with pytest.raises(OSError):
        store.build_cache(progress=False)
    cache = store.cache()
    assert not cache.complete() and not cache.manifest_path.exists() and leftovers(tmp_path / "c") == []
    assert [p.name for p in sorted(cache.dir.glob("shard-*.idx.npy"))] == ["shard-00000.idx.npy"]

    encoded.clear()
    monkeypatch.setattr(filestore.JpegCache, "_encode", lambda self, p: encoded.append(p.name) or real(self, p))
    again = FileStore(root, files, 32, tmp_path / "c")  # a later run: shard 0 is kept
    assert len(again.load([0, 9])) == 2 and again.cache().complete()
    assert sorted(encoded) == sorted(Path(f).name for f in files[4:])


def test_a_cache_without_its_manifest_is_never_read(folder, tmp_path, monkeypatch):
    root, files = folder
    store = FileStore(root, files, 32, tmp_path / "c")
    store.build_cache(progress=False)
    store.cache().manifest_path.unlink()  # as if the build was killed before its last step
    reads = []
    monkeypatch.setattr(filestore.JpegCache, "get", lambda self, i: reads.append(i))
    fresh = FileStore(root, files, 32, tmp_path / "c")
    fresh.build_cache(progress=False)  # finds every shard done, writes the manifest only
    assert fresh.cache().complete() and reads == []


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(folder, tmp_path, monkeypatch):
    root, files = folder
    monkeypatch.setattr(filestore, "free_bytes", lambda d: 1000)
    store = FileStore(root, files, 32, tmp_path / "c")
    with pytest.raises(DataError, match=r"^image cache .*: the disk is full \(0\.00 GB free, about .* GB still to write\); "
                                        r"free space or set data\.cache_dir") as err:
        store.load([0])
    assert "\n" not in str(err.value) and not store.cache().manifest_path.exists()

    monkeypatch.setattr(filestore, "free_bytes", lambda d: 10**12)  # the space check passes, the write does not
    real = filestore._write

    def enospc(path, data):
        real(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(filestore, "_write", enospc)
    with pytest.raises(DataError, match="the disk is full"):
        FileStore(root, files, 32, tmp_path / "c").build_cache(progress=False)
    assert leftovers(tmp_path / "c") == [] and not list((tmp_path / "c").glob("*/shard-*.bin"))
    monkeypatch.setattr(filestore, "_write", real)
    assert FileStore(root, files, 32, tmp_path / "c").build_cache(progress=False).complete()  # space freed: it builds


def test_two_processes_building_one_cache(folder, tmp_path):
    root, files = folder
    script = textwrap.dedent(f"""
        import sys, time
        from longtail.data import filestore
        real = filestore.JpegCache._encode
        filestore.JpegCache._encode = lambda self, p: (time.sleep(0.05), real(self, p))[1]  # overlap the builds
        store = filestore.FileStore({str(root)!r}, {files!r}, 32, {str(tmp_path / 'c')!r})
        images = store.load(range({len(files)})).images
        print(sum(a.size for a in images))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert outs[0][0] == outs[1][0] and int(outs[0][0]) > 0  # both read the same complete cache
    (cache_dir,) = [p for p in (tmp_path / "c").iterdir() if p.is_dir()]
    assert leftovers(tmp_path / "c") == [] and len(list(cache_dir.glob("shard-*.bin"))) == 1
    assert json.loads((cache_dir / "manifest.json").read_text())["count"] == len(files)


def test_cli_data_cache_builds_every_split(tmp_path, capsys):
    root = make_jpeg_folder(tmp_path / "jpegs", 20, classes=2, size=(80, 60))  # 10 a class: 2 test, 1 val, 7 train
    argv = ["data", "cache", "folder", "--set", f"data.image_root={root}", "--set", f"data.cache_dir={tmp_path / 'c'}",
            "--set", "data.val_per_class=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "train: 14 images" in out and "val: 2 images" in out and "test: 4 images" in out and "total " in out
    assert len(list((tmp_path / "c").glob("*/manifest.json"))) == 3
    assert main(argv) == 0  # built: a second call only reports
    assert main(["data", "cache", "folder", "--set", "data.nope=1"]) == 2
    assert "data.nope" in capsys.readouterr().err


def test_grey_cmyk_and_png_images_cache_as_rgb(tmp_path):
    (tmp_path / "c0").mkdir()
    Image.new("L", (40, 30), 90).save(tmp_path / "c0" / "grey.jpg")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(tmp_path / "c0" / "cmyk.jpg")
    Image.new("RGBA", (40, 30), (10, 200, 30, 128)).save(tmp_path / "c0" / "alpha.png")
    names = ["c0/grey.jpg", "c0/cmyk.jpg", "c0/alpha.png"]
    images = FileStore(tmp_path, names, 24, tmp_path / "cache").load(range(3)).images
    assert [a.shape for a in images] == [(24, 32, 3)] * 3
    assert np.abs(images[0].astype(int) - 90).max() <= 3
    assert images[1][..., 0].mean() > 200 and images[1][..., 1].mean() < 60  # CMYK red stays red
    assert abs(int(images[2][..., 1].mean()) - 200) <= 4  # alpha dropped, colour kept


def test_gpu_decoding_is_chosen_only_where_it_works(folder, tmp_path, monkeypatch):
    import torch

    from longtail.errors import ConfigError

    root, files = folder
    store = FileStore(root, files, 32, tmp_path / "c")
    store.use_device(torch.device("cpu"))
    assert store.gpu is None
    monkeypatch.setattr(filestore, "gpu_decoder_available", lambda d: False)  # no torchvision / nvJPEG here
    store.use_device(torch.device("cuda", 1))
    assert store.gpu is None  # auto: the CPU decodes
    with pytest.raises(ConfigError, match="data.decode_device=cuda: decoding on cuda:1 needs data.cache and torchvision"):
        FileStore(root, files, 32, tmp_path / "c", decode_device="cuda").use_device(torch.device("cuda", 1))
    monkeypatch.setattr(filestore, "gpu_decoder_available", lambda d: True)
    store.use_device(torch.device("cuda", 1))
    assert store.gpu == torch.device("cuda", 1)
    FileStore(root, files, 32).use_device(torch.device("cuda", 1))  # no cache: nothing to hand the GPU


def test_the_gpu_decoder_probe_checks_real_sized_images_against_the_cpu(monkeypatch):
    """nvJPEG is trusted only if it decodes cache-sized 4:2:0 JPEGs of odd sizes as the CPU does (simulated
    here by a CPU decode into tensors); a decoder that corrupts rows, or cannot decode, is refused."""
    import io

    import torch
    from PIL import Image

    from longtail.data import decode

    def cpu_decode(blobs, device, corrupt=False):
        out = [torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1) for b in blobs]
        for t in out if corrupt else ():
            t[:, 100:140] = 0  # rows written over, as in the reported race
        return out

    probe = decode.gpu_decoder_available.__wrapped__
    monkeypatch.setattr(decode, "decode_jpegs_gpu", cpu_decode)
    assert probe("cuda:0") and not probe("cpu")
    monkeypatch.setattr(decode, "decode_jpegs_gpu", lambda blobs, device: cpu_decode(blobs, device, corrupt=True))
    assert not probe("cuda:0")
    monkeypatch.setattr(decode, "decode_jpegs_gpu", lambda blobs, device: 1 / 0)
    assert not probe("cuda:0")


def test_a_failed_device_decode_stays_on_the_cpu(folder, tmp_path, monkeypatch):
    """After nvJPEG failed once, the next stage's use_device (evaluation, the next stage) keeps the CPU."""
    import torch

    root, files = folder
    store = FileStore(root, files, 32, tmp_path / "c")
    store.build_cache(progress=False)
    monkeypatch.setattr(filestore, "gpu_decoder_available", lambda d: True)
    monkeypatch.setattr(filestore, "decode_jpegs_gpu", lambda blobs, device: 1 / 0)
    store.use_device(torch.device("cuda", 1))
    assert store.gpu == torch.device("cuda", 1)
    with pytest.warns(UserWarning, match="decoding on cuda:1 failed .*ZeroDivisionError.*on the CPU from now on"):
        images = store.load([0, 1])
    assert all(isinstance(a, np.ndarray) for a in images.images)
    store.use_device(torch.device("cuda", 1))
    assert store.gpu is None


def test_device_decoded_batches_match_the_cpu_ones_and_fall_back(folder, tmp_path, monkeypatch):
    """The device path (simulated on the CPU: nvJPEG replaced by a CPU decode into tensors) gives the same
    sizes and, after the crop, the same pixels within the filters' rounding; a failure falls back once."""
    import torch

    from longtail.data.augment import Augment
    from longtail.data.decode import decode_bytes

    root, files = folder
    cpu = FileStore(root, files, 32, tmp_path / "c")
    dev = FileStore(root, files, 32, tmp_path / "c")
    monkeypatch.setattr(filestore, "decode_jpegs_gpu", lambda blobs, device: [
        torch.from_numpy(decode_bytes(b, 32)).permute(2, 0, 1).contiguous() for b in blobs])
    cpu.build_cache(progress=False)
    dev.build_cache(progress=False)
    dev.gpu = torch.device("cpu")
    a, b = cpu.load(range(10)), dev.load(range(10))
    assert all(isinstance(t, torch.Tensor) for t in b.images) and list(zip(*a.sizes)) == list(zip(*b.sizes))
    for name in ("imagenet_jitter", "imagenet_eval"):
        aug = Augment.preset(name, (0.5,) * 3, (0.25,) * 3, size=24)
        x, y = aug.size_images(a, torch.Generator().manual_seed(0)), aug.size_images(b, torch.Generator().manual_seed(0))
        assert x.shape == y.shape == (10, 3, 24, 24) and (x.int() - y.int()).abs().float().mean() < 2.0, name

    def broken(blobs, device):
        raise RuntimeError("nvjpeg: out of memory")

    monkeypatch.setattr(filestore, "decode_jpegs_gpu", broken)
    with pytest.warns(UserWarning, match="decoding on cpu failed .*nvjpeg: out of memory.*decoding on the CPU"):
        c = dev.load(range(3))
    assert dev.gpu is None and all(isinstance(t, np.ndarray) for t in c.images)
