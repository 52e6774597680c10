"""``model.pretrained: imagenet``: download once into the hub cache, verify the hash, fail offline in one line.

A local HTTP server stands in for download.pytorch.org (``LONGTAIL_WEIGHTS_URL``); no test reaches the internet."""
import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

from longtail.config import load_recipe
from longtail.errors import ConfigError, LongtailError
from longtail.models import pretrained
from longtail.models.pretrained import URL_ENV, WEIGHTS, WeightsError, weight_name
from longtail.models.resnet import load_torchvision_state_dict, resnet10, resnet18


class Server:
    """Serves one folder on 127.0.0.1 from a thread and counts the requests."""

    def __init__(self, folder: Path):
        self.hits = 0
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                super().do_GET()

            def log_message(self, *args):  # keep pytest's output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty hub cache, and no default URL: a test that forgot its server fails instead of going online."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # restored after the test
    torch.hub.set_dir(str(tmp_path / "hub"))
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9")
    return tmp_path / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real resnet18 in torchvision's format (with its fc), named as torchvision names files: by its sha256."""
    folder = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    sd = resnet18().state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}  # as the published files have it
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.zeros(1000)
    tmp = folder / "tmp.pth"
    torch.save(sd, tmp)
    name = f"resnet18-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(folder / name)
    server = Server(folder)
    yield server, folder, name, sd
    server.close()


def _serve(monkeypatch, served):
    server, folder, name, sd = served
    monkeypatch.setitem(WEIGHTS, "resnet18", name)
    monkeypatch.setenv(URL_ENV, server.url)
    server.hits = 0
    return server, folder, name, sd


def _weights_equal(model, sd):
    own = model.state_dict()
    return all(torch.equal(own[k], v) for k, v in sd.items() if not k.startswith("fc."))


def test_imagenet_downloads_once_into_the_hub_cache_and_loads(hub, served, monkeypatch):
    server, _, name, sd = _serve(monkeypatch, served)
    model = resnet18()
    assert not _weights_equal(model, sd)
    assert sorted(load_torchvision_state_dict(model, "imagenet")) == ["fc.bias", "fc.weight"]
    assert _weights_equal(model, sd)
    assert server.hits == 1 and [p.name for p in hub.iterdir()] == [name]
    again = resnet18()
    load_torchvision_state_dict(again, "ResNet18_Weights.IMAGENET1K_V1")  # torchvision's spelling, same file
    assert _weights_equal(again, sd) and server.hits == 1  # read from the cache, no second request


def test_a_corrupt_download_fails_its_hash_and_leaves_nothing(hub, served, monkeypatch, tmp_path):
    _, folder, name, _ = served
    bad = tmp_path / "bad"
    bad.mkdir()
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / name).write_bytes(bytes(data))
    server = Server(bad)
    try:
        monkeypatch.setitem(WEIGHTS, "resnet18", name)
        monkeypatch.setenv(URL_ENV, server.url)
        with pytest.raises(WeightsError) as e:
            load_torchvision_state_dict(resnet18(), "imagenet")
    finally:
        server.close()
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "sha256" in msg and name.split("-")[1][:8] in msg
    assert f"{server.url}/{name}" in msg
    assert list(hub.iterdir()) == []  # not even the .partial file


def test_offline_is_one_line_naming_the_url_and_the_place(hub, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{port}/")
    with pytest.raises(WeightsError) as e:
        load_torchvision_state_dict(resnet18(), "resnet18.imagenet1k_v1")
    msg = str(e.value)
    assert isinstance(e.value, LongtailError) and len(msg.splitlines()) == 1
    assert f"http://127.0.0.1:{port}/resnet18-f37072fd.pth" in msg
    assert str(hub / "resnet18-f37072fd.pth") in msg
    assert not hub.exists() or list(hub.iterdir()) == []


def test_a_file_placed_by_hand_is_used_and_checked(hub, served, monkeypatch):
    server, folder, name, sd = _serve(monkeypatch, served)
    hub.mkdir(parents=True)
    (hub / name).write_bytes((folder / name).read_bytes())
    model = resnet18()
    load_torchvision_state_dict(model, "imagenet")
    assert _weights_equal(model, sd) and server.hits == 0
    (hub / name).write_bytes((folder / name).read_bytes()[:-10])  # truncated
    with pytest.raises(WeightsError, match="sha256 does not start with"):
        load_torchvision_state_dict(resnet18(), "imagenet")


def test_a_local_path_still_loads_without_any_request(hub, served, monkeypatch, tmp_path):
    server, _, _, sd = _serve(monkeypatch, served)
    torch.save(sd, tmp_path / "imagenet1k_v1.pth")
    model = resnet18()
    load_torchvision_state_dict(model, tmp_path / "imagenet1k_v1.pth")
    assert _weights_equal(model, sd) and server.hits == 0


def test_weight_names_and_mismatches(hub):
    names = ("imagenet", "IMAGENET1K_V1", "resnet50.imagenet1k_v1", "ResNeXt50_32X4D_Weights.IMAGENET1K_V1")
    assert [weight_name(s) for s in names] == ["", "", "resnet50", "resnext50_32x4d"]
    assert [weight_name(s) for s in ("resnet18.pth", "weights/imagenet", "imagenet.pt")] == [None, None, None]
    with pytest.raises(ConfigError, match="names resnet50 weights, but the backbone is resnet18"):
        load_torchvision_state_dict(resnet18(), "resnet50.IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="not for resnet10"):
        load_torchvision_state_dict(resnet10(), "imagenet")


def test_the_url_table_is_torchvisions():
    assert set(WEIGHTS) == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d"}
    for arch, file in WEIGHTS.items():
        stem, _, digest = file.removesuffix(".pth").rpartition("-")
        assert stem == arch and len(digest) == 8 and int(digest, 16) >= 0
    assert pretrained.BASE_URL == "https://download.pytorch.org/models"


def test_the_folder_recipe_starts_from_imagenet():
    recipe = load_recipe("folder/pretrained")
    assert recipe.model.pretrained == "imagenet" and recipe.model.backbone in WEIGHTS
    assert recipe.stage("ce").optim.groups == {"backbone": 0.1}


def test_the_folder_pretrained_recipe_trains_end_to_end_from_the_served_weights(hub, served, monkeypatch, tmp_path):
    """folder/pretrained as a user runs it (shrunk: 32 px, one epoch): one download, every stage finishes, and
    the fine-tuned backbone is still the served one, some SGD steps away from it, not a fresh start."""
    from longtail.data.synthetic import make_example_folder
    from longtail.engine.checkpoint import load_checkpoint
    from longtail.engine.pipeline import run_recipe

    server, _, _, sd = _serve(monkeypatch, served)
    root, _ = make_example_folder(tmp_path / "photos", classes=4, max_per_class=60, imbalance=4)  # a validation split for tau
    recipe = load_recipe("folder/pretrained", ["runtime.progress=false", "runtime.report_features=0", "data.crop_size=32",
                                               "runtime.tensorboard=false"])
    for st in recipe.stages:
        st.epochs, st.batch_size = min(st.epochs, 1), 16
    res = run_recipe(recipe, tmp_path / "run", data_root=str(root))
    assert server.hits == 1 and set(res["stages"]) == {"ce", "tau_norm", "logit_adjust"}
    trained = load_checkpoint(tmp_path / "run" / "ce" / "final.pt")["model"]
    for key in ("conv1.weight", "layer4.1.conv2.weight"):
        w, w0 = trained[f"backbone.{key}"].float().flatten(), sd[key].flatten()
        # fine-tuned from the served weights: moved, yet still aligned with them (an independent start: cos ~ 0)
        assert not torch.equal(w, w0) and torch.nn.functional.cosine_similarity(w, w0, dim=0) > 0.8, key
