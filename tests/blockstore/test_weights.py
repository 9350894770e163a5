"""Importing backbones: torchvision's cache, torchvision-format files, safetensors, and the blob metadata."""

from __future__ import annotations

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.resnet import BasicBlock, ResNet

from blockstore import (
    IMAGENET_NORMALIZATION,
    Backbone,
    BackboneConfig,
    BackboneError,
    DirStore,
    WeightsUnavailable,
    import_backbone,
    st_io,
    validate_backbone_bytes,
)


def _tv_resnet18(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict exactly as torchvision writes one (random weights: nothing is downloaded)."""
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()


def _tiny_state(stem_kernel: int = 3, classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=classes)
    if stem_kernel == 3:
        net.conv1 = torch.nn.Conv2d(3, 64, 3, 2, 1, bias=False)
    return net.state_dict()


def _same_weights(bb: Backbone, state: dict[str, torch.Tensor]) -> bool:
    got = bb.net.state_dict()
    return set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torchvision cache: $TORCH_HOME/hub/checkpoints is where torchvision looks first."""
    home = tmp_path / "torch-home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home / "hub" / "checkpoints"


def test_torchvision_weights_come_from_torchvisions_cache(torch_home):
    state = _tv_resnet18()
    torch.save(state, torch_home / "resnet18-f37072fd.pth")  # the file name torchvision's URL ends in
    bb = import_backbone("torchvision:ResNet18_Weights.IMAGENET1K_V1", size=32, download=False)
    assert bb.config == BackboneConfig("resnet18", "imagenet", 32, 1000)
    assert bb.source == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert bb.normalization == IMAGENET_NORMALIZATION
    assert _same_weights(bb, state)
    # The short form names the default variant; the blob keeps source and normalisation.
    again = Backbone.from_bytes(import_backbone("torchvision:resnet18", size=32, download=False).to_bytes())
    assert again.backbone_id == bb.backbone_id
    assert (again.source, again.normalization) == (bb.source, bb.normalization)


def test_torchvision_weights_offline_are_a_clear_error(torch_home):
    with pytest.raises(WeightsUnavailable, match="not in torchvision's cache"):
        import_backbone("torchvision:ResNet50_Weights.IMAGENET1K_V2", download=False)
    with pytest.raises(WeightsUnavailable, match="has no variant 'IMAGENET9K'"):
        import_backbone("torchvision:ResNet50_Weights.IMAGENET9K")
    with pytest.raises(BackboneError, match="adapts"):
        import_backbone("torchvision:VGG16_Weights")
    with pytest.raises(BackboneError, match="ImageNet stem"):
        import_backbone("torchvision:resnet18", stem="3x3s2")
    # A damaged cache entry cannot be loaded: the message says how to bring the file in by hand.
    (torch_home / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match=r"nettailor backbone import path/to/resnet18\.pth --arch resnet18"):
        import_backbone("torchvision:ResNet18_Weights.IMAGENET1K_V1")


def test_a_torchvision_format_state_dict_is_recognised(tmp_path):
    state = _tv_resnet18(seed=1)
    pth = tmp_path / "resnet18.pth"
    torch.save(state, pth)
    bb = import_backbone(str(pth), size=32)
    assert bb.config == BackboneConfig("resnet18", "imagenet", 32, 1000)
    assert _same_weights(bb, state)
    assert bb.source is not None and bb.source.startswith("file:resnet18.pth sha256=")
    assert bb.normalization is None  # a plain file says nothing about its normalisation ...
    bb = import_backbone(str(pth), size=32, normalization=IMAGENET_NORMALIZATION)
    assert bb.normalization == IMAGENET_NORMALIZATION  # ... unless the user does
    with pytest.raises(BackboneError, match="holds resnet18 weights, not resnet34"):
        import_backbone(str(pth), arch="resnet34")


def test_small_stems_wrapped_checkpoints_and_safetensors(tmp_path):
    state = _tiny_state()
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, ckpt)
    with pytest.raises(BackboneError, match="--stem 3x3s1 or --stem 3x3s2"):
        import_backbone(str(ckpt))
    bb = import_backbone(str(ckpt), stem="3x3s2")
    assert bb.config == BackboneConfig("resnet10", "3x3s2", 32, 10)
    assert _same_weights(bb, state)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    assert _same_weights(import_backbone(str(st), stem="3x3s2", size=28), state)
    blob = tmp_path / "blob.safetensors"
    blob.write_bytes(bb.to_bytes())
    assert import_backbone(str(blob)).backbone_id == bb.backbone_id  # a blob is stored as it is
    with pytest.raises(BackboneError, match="NetTailor backbone blob"):
        import_backbone(str(blob), size=64)


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        import_backbone(str(tmp_path / "missing.pth"))
    (tmp_path / "w.bin").write_bytes(b"1234")
    with pytest.raises(BackboneError, match="unknown weights file type"):
        import_backbone(str(tmp_path / "w.bin"))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(BackboneError, match="cannot read"):
        import_backbone(str(tmp_path / "junk.pth"))
    torch.save({"conv1.weight": torch.zeros(64, 3, 5, 5), "fc.weight": torch.zeros(10, 512)}, tmp_path / "odd.pth")
    with pytest.raises(BackboneError, match="none of"):
        import_backbone(str(tmp_path / "odd.pth"))
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    with pytest.raises(BackboneError, match="not a torchvision ResNet state dict"):
        import_backbone(str(tmp_path / "partial.pth"))


def test_metadata_is_optional_so_old_backbone_ids_stay(backbone):
    """A backbone without source or normalisation keeps the bytes it had before they existed."""
    meta = {"format": "nettailor-backbone/1", "config": st_io.read_metadata(backbone.to_bytes())["config"]}
    assert backbone.to_bytes() == st_io.dumps(backbone.net.state_dict(), meta)
    again = Backbone.from_bytes(backbone.to_bytes())
    assert (again.source, again.normalization) == (None, None)


@pytest.fixture(params=["dir", pytest.param("redis", marks=pytest.mark.redis)])
def store(request, tmp_path):
    if request.param == "dir":
        return DirStore(tmp_path / "store", poll_interval=0.05)
    return request.getfixturevalue("redis_store")


def test_put_backbone_refuses_anything_but_a_backbone_blob(store, backbone, other_backbone, make_pack, tmp_path):
    pth = tmp_path / "w.pth"
    torch.save(backbone.net.state_dict(), pth)
    bad = {"a .pth": pth.read_bytes(), "a pack": make_pack().to_bytes(), "garbage": b"\x00" * 64,
           "truncated": backbone.to_bytes()[:-10]}
    for data in bad.values():
        with pytest.raises(BackboneError, match="backbone"):
            store.put_backbone(data)
    assert store.list_backbones() == [] and store.default_backbone_id() is None  # nothing was kept
    store.put_backbone(backbone.to_bytes(), make_default=False)
    store.put_backbone(other_backbone.to_bytes())
    assert store.list_backbones() == sorted([backbone.backbone_id, other_backbone.backbone_id])
    assert store.default_backbone_id() == other_backbone.backbone_id
    assert validate_backbone_bytes(store.get_backbone()).backbone_id == other_backbone.backbone_id
