"""Backbone adapters: split, shapes, FLOPs and parameter counts, weights and serialisation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from blockstore import Backbone, BackboneConfig, BackboneError, UnsupportedFormat, WeightsUnavailable, load_backbone

from ..conftest import TINY

# Hand-checked against torchvision's published figures (params without the 1000-way classifier;
# FLOPs are multiply-accumulates of convs + fc at 224 px, as torchvision's "GFLOPS" column).
FIGURES = {
    # arch: (params without fc, total GFLOPs, universal blocks, last channels)
    "resnet18": (11_176_512, 1.814, 8, 512),
    "resnet34": (21_284_672, 3.664, 16, 512),
    "resnet50": (23_508_032, 4.089, 16, 2048),
}


@pytest.fixture(scope="module", params=sorted(FIGURES))
def imagenet_spec(request):
    return request.param, Backbone(BackboneConfig(arch=request.param)).spec


def test_counts_match_published_figures(imagenet_spec):
    arch, spec = imagenet_spec
    params, gflops, layers, channels = FIGURES[arch]
    assert spec.stem_params + spec.blocks_params == params
    assert spec.total_flops / 1e9 == pytest.approx(gflops, rel=1e-3)
    assert spec.num_layers == layers
    assert spec.nodes[-1].channels == channels
    assert spec.nodes[-1].size == 7 and spec.nodes[0].size == 56


def test_resnet34_matches_the_paper():
    """The paper: ResNet-34 has 21.29 M parameters and about 3.58 GFLOPs in its prunable blocks."""
    spec = Backbone(BackboneConfig(arch="resnet34")).spec
    assert (spec.stem_params + spec.blocks_params) / 1e6 == pytest.approx(21.29, rel=0.01)
    assert spec.blocks_flops / 1e9 == pytest.approx(3.58, rel=0.01)


def test_block_specs_record_shapes_and_strides():
    spec = Backbone(BackboneConfig(arch="resnet18")).spec
    got = [(b.in_channels, b.out_channels, b.stride, b.out_size) for b in spec.blocks]
    assert got == [(64, 64, 1, 56), (64, 64, 1, 56), (64, 128, 2, 28), (128, 128, 1, 28),
                   (128, 256, 2, 14), (256, 256, 1, 14), (256, 512, 2, 7), (512, 512, 1, 7)]
    # layer2's first block: 3x3 64->128 at 28x28, 3x3 128->128 at 28x28, 1x1 downsample 64->128.
    assert spec.blocks[2].flops == 28 * 28 * (64 * 128 * 9 + 128 * 128 * 9 + 64 * 128)
    assert sum(spec.complexity(l) for l in range(1, 9)) == pytest.approx(spec.blocks_flops / spec.total_flops)
    assert [n.scale for n in spec.nodes] == [1, 1, 1, 2, 2, 4, 4, 8, 8]


@pytest.mark.parametrize(("stem", "size0"), [("3x3s1", 32), ("3x3s2", 16), ("imagenet", 8)])
def test_small_image_stems(stem, size0):
    bb = Backbone(BackboneConfig(arch="resnet18", stem=stem, input_size=32, num_classes=10))
    assert bb.spec.nodes[0].size == size0
    assert bb(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    if stem != "imagenet":
        assert bb.net.conv1.kernel_size == (3, 3)


def test_odd_input_sizes_keep_proxy_and_block_shapes_aligned():
    bb = Backbone(BackboneConfig(arch="resnet10", stem="3x3s2", input_size=28, num_classes=3))
    assert [n.size for n in bb.spec.nodes] == [14, 14, 7, 4, 2]


def test_unknown_arch_and_stem_are_clear_errors():
    with pytest.raises(BackboneError, match="unknown arch"):
        BackboneConfig(arch="vgg16")
    with pytest.raises(BackboneError, match="unknown stem"):
        BackboneConfig(stem="5x5")


def test_bytes_round_trip_is_deterministic_and_identified(backbone):
    data = backbone.to_bytes()
    assert data == backbone.to_bytes()
    again = Backbone.from_bytes(data)
    assert again.backbone_id == backbone.backbone_id == __import__("hashlib").sha256(data).hexdigest()
    assert again.config == backbone.config
    x = torch.randn(2, 3, 32, 32)
    # Close, not bit-equal: the session's backbone may have been made channels-last by an executor
    # (server tests), which picks other convolution kernels than the fresh copy's.
    assert torch.allclose(again.eval()(x), backbone.eval()(x), atol=1e-5)


def test_from_bytes_refuses_garbage_and_packs(backbone, make_pack):
    with pytest.raises(BackboneError):
        Backbone.from_bytes(b"\x00" * 100)
    with pytest.raises(UnsupportedFormat):
        Backbone.from_bytes(make_pack().to_bytes())


def test_random_weights_are_seeded():
    cfg = BackboneConfig(arch="resnet10", stem="3x3s2", input_size=32, num_classes=10)
    assert load_backbone(cfg, seed=3).backbone_id == load_backbone(cfg, "random", seed=3).backbone_id
    assert load_backbone(cfg, seed=3).backbone_id != load_backbone(cfg, seed=4).backbone_id


def test_local_weight_files(tmp_path, backbone):
    cfg = backbone.config
    pth, st, blob = tmp_path / "w.pth", tmp_path / "w.safetensors", tmp_path / "b.safetensors"
    torch.save(backbone.net.state_dict(), pth)
    save_file({k: v.contiguous() for k, v in backbone.net.state_dict().items()}, st)
    blob.write_bytes(backbone.to_bytes())
    for path in (pth, st, blob):
        assert load_backbone(cfg, str(path)).backbone_id == backbone.backbone_id
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_backbone(cfg, str(tmp_path / "missing.pth"))
    with pytest.raises(BackboneError, match="does not fit"):
        load_backbone(BackboneConfig(arch="resnet18", stem="3x3s2", input_size=32, num_classes=10), str(pth))
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(BackboneError, match="not a readable safetensors"):
        load_backbone(cfg, str(tmp_path / "junk.safetensors"))


def test_torchvision_weights_need_the_imagenet_stem():
    with pytest.raises(BackboneError, match="stem='imagenet'"):
        load_backbone(BackboneConfig(arch="resnet18", stem="3x3s2", input_size=32), "torchvision")


def test_spec_is_measured_at_construction_not_on_first_use(backbone):
    """A lazily cached spec would first be computed in whatever thread asked (a server worker)."""
    assert "spec" in vars(backbone)
    bb = Backbone(TINY)
    assert vars(bb)["spec"] == backbone.spec
    assert bb.freeze().spec is bb.spec
