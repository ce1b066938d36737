"""Our TinyViT (MobileSAM ``vit_t`` encoder) against MobileSAM's reference: same state-dict
keys, same random weights, same outputs (eval and train mode), gradients, drop path and
layer-wise lr decay depths."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from mobile_sam_reference import import_mobile_sam, randomize_
from torch import nn

from sam_lightning.modeling.tiny_vit import TinyViT

TOL = {"atol": 1e-4, "rtol": 1e-4}
LR_DECAY = 0.8
# MobileSAM's build_sam_vit_t arguments (use_checkpoint and layer_lr_decay: reference only).
VIT_T = {
    "img_size": 1024,
    "in_chans": 3,
    "num_classes": 1000,
    "embed_dims": [64, 128, 160, 320],
    "depths": [2, 2, 6, 2],
    "num_heads": [2, 4, 5, 10],
    "window_sizes": [7, 7, 14, 7],
    "mlp_ratio": 4.0,
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
    "mbconv_expand_ratio": 4.0,
    "local_conv_size": 3,
}
NUM_BLOCKS = sum(VIT_T["depths"])
# The last MLP bias of a stage adds a per-channel constant that the PatchMerging's 1×1
# conv-BN removes again in training mode (batch statistics): zero gradient.
CANCELLED_BY_BATCH_NORM = {"layers.1.blocks.1.mlp.fc2.bias", "layers.2.blocks.5.mlp.fc2.bias"}


def build_reference(**overrides) -> nn.Module:
    tiny_vit_sam = import_mobile_sam().modeling.tiny_vit_sam
    kwargs = {**VIT_T, "use_checkpoint": False, "layer_lr_decay": LR_DECAY, **overrides}
    return tiny_vit_sam.TinyViT(**kwargs)


def build_ours(**overrides) -> TinyViT:
    return TinyViT(**{**VIT_T, **overrides})


@pytest.fixture(scope="module")
def pair() -> tuple[nn.Module, TinyViT]:
    """(reference with random weights, ours loaded strictly from it), both in eval mode."""
    reference = randomize_(build_reference())
    ours = build_ours()
    ours.load_state_dict(reference.state_dict(), strict=True)
    # After loading: the reference caches its gathered attention biases (``ab``) in eval().
    return reference.eval(), ours.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))


def bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".bn.running_" in k}


def test_state_dicts_match_and_load_strictly_both_ways(pair):
    reference, ours = pair
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    got = {k: v.shape for k, v in ours.state_dict().items()}
    assert got == expected
    assert len(got) == 302
    assert {k.split(".")[0] for k in got} == {"patch_embed", "layers", "norm_head", "head", "neck"}
    # The index tables and the reference's eval cache are non-persistent buffers.
    assert not [k for k in got if k.endswith(("attention_bias_idxs", ".ab"))]
    reference_copy = build_reference()
    reference_copy.load_state_dict(ours.state_dict(), strict=True)
    for key, value in reference_copy.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], rtol=0, atol=0)
    with torch.device("meta"):  # shapes only, as sam_lightning.export builds models
        on_meta = build_ours().state_dict()
    assert {k: v.shape for k, v in on_meta.items()} == expected


def test_randomized_weights_are_not_constant(pair):
    reference, _ = pair
    for name, tensor in reference.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            assert tensor.numel() > 1 and tensor.std() > 0.01, name
    attention_biases = [k for k in reference.state_dict() if k.endswith("attention_biases")]
    assert len(attention_biases) == NUM_BLOCKS - VIT_T["depths"][0]


def test_attention_bias_index_tables_match(pair):
    reference, ours = pair
    ours_buffers = dict(ours.named_buffers())
    tables = {k: v for k, v in reference.named_buffers() if k.endswith("attention_bias_idxs")}
    assert len(tables) == NUM_BLOCKS - VIT_T["depths"][0]
    for name, table in tables.items():
        assert torch.equal(ours_buffers[name], table), name
        num_offsets = reference.get_submodule(name.rsplit(".", 1)[0]).attention_biases.shape[1]
        assert table.unique().numel() == num_offsets  # every offset is used


@torch.no_grad()
def test_eval_outputs_match(pair, images):
    reference, ours = pair
    expected = reference(images)
    got = ours(images)
    assert got.shape == (2, 256, 64, 64)
    assert expected.std() > 0.5  # the tolerance below is meaningful
    torch.testing.assert_close(got, expected, **TOL)
    single = ours(images[:1])
    torch.testing.assert_close(single, expected[:1], **TOL)
    # Other weights, other outputs: one window-attention bias table changed (also shows
    # that ours gathers the biases at every call, where the reference caches them in eval).
    attention_biases = ours.layers[2].blocks[3].attn.attention_biases
    saved = attention_biases.clone()
    attention_biases.add_(torch.randn(saved.shape, generator=torch.Generator().manual_seed(3)))
    try:
        assert (ours(images[:1]) - single).abs().max() > 1e-2
    finally:
        attention_biases.copy_(saved)


def forward_backward(model: nn.Module, images: torch.Tensor) -> dict:
    """Training-mode output, parameter gradients and BatchNorm statistics of a copy."""
    model = copy.deepcopy(model).train()
    weights = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(2))
    out = model(images)
    (out * weights).sum().backward()
    return {
        "out": out.detach(),
        "grads": {k: p.grad for k, p in model.named_parameters()},
        "stats": bn_stats(model),
        "model": model,
    }


@pytest.fixture(scope="module")
def train_runs(pair, images) -> tuple[dict, dict]:
    reference, ours = pair
    return forward_backward(reference, images[:1]), forward_backward(ours, images[:1])


def test_train_mode_outputs_gradients_and_statistics_match(pair, images, train_runs):
    reference_run, ours_run = train_runs
    torch.testing.assert_close(ours_run["out"], reference_run["out"], **TOL)
    # BatchNorm normalises with batch statistics in training: other outputs than in eval.
    with torch.no_grad():
        assert (ours_run["out"] - pair[1](images[:1])).abs().max() > 1e-2
    unused = set(ours_run["model"].unused_parameters())
    assert unused == {"norm_head.weight", "norm_head.bias", "head.weight", "head.bias"}
    for name, expected in reference_run["grads"].items():
        got = ours_run["grads"][name]
        if name in unused:
            assert expected is None and got is None, name
        elif name in CANCELLED_BY_BATCH_NORM:  # exactly 0 but for rounding (other grads > 1)
            assert expected.abs().max() < 1e-2 and got.abs().max() < 1e-2, name
        else:
            scale = expected.abs().max().item()
            assert scale > 1.0, name
            torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * scale, msg=name)
    initial = bn_stats(pair[1])
    for name, expected in reference_run["stats"].items():
        assert not torch.equal(expected, initial[name]), name  # updated by the forward
        torch.testing.assert_close(ours_run["stats"][name], expected, **TOL)


def test_activation_checkpointing_keeps_results_and_statistics(pair, images, train_runs):
    _, ours = pair
    _, plain = train_runs
    checkpointed = copy.deepcopy(ours)
    checkpointed.activation_checkpointing = True
    calls = []  # a pre-hook: the recomputation stops early, before the block returns
    checkpointed.layers[2].blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    run = forward_backward(checkpointed, images[:1])
    assert len(calls) == 2  # forward, then recomputed in the backward pass
    torch.testing.assert_close(run["out"], plain["out"], rtol=0, atol=1e-6)
    for name, expected in plain["grads"].items():
        if expected is None:
            assert run["grads"][name] is None
        else:
            torch.testing.assert_close(run["grads"][name], expected, rtol=1e-5, atol=1e-7)
    # The recomputation does not update the running statistics a second time.
    for name, expected in plain["stats"].items():
        torch.testing.assert_close(run["stats"][name], expected, rtol=0, atol=0)
    before = ours.layers[2].blocks[0].local_conv.bn.num_batches_tracked
    after = run["model"].layers[2].blocks[0].local_conv.bn.num_batches_tracked
    assert after == before + 1


@torch.no_grad()
def test_drop_path_matches_with_the_same_seed(pair, images):
    weights = pair[0].state_dict()
    reference = build_reference(drop_path_rate=0.5)
    reference.load_state_dict(weights, strict=True)
    ours = build_ours(drop_path_rate=0.5)
    ours.load_state_dict(weights, strict=True)
    expected_rates = torch.linspace(0, 0.5, NUM_BLOCKS).tolist()
    reference_blocks = [b for layer in reference.layers for b in layer.blocks]
    ours_blocks = [b for layer in ours.layers for b in layer.blocks]
    reference_rates = [getattr(b.drop_path, "drop_prob", 0.0) for b in reference_blocks]
    assert [b.drop_path.drop_prob for b in ours_blocks] == reference_rates == expected_rates
    reference.train()
    ours.train()
    torch.manual_seed(7)
    expected = reference(images)
    torch.manual_seed(7)
    got = ours(images)
    torch.testing.assert_close(got, expected, **TOL)
    torch.manual_seed(8)
    assert (ours(images) - got).abs().max() > 1e-2  # the draws matter (same seed: same draws)


def test_block_depth_matches_reference_lr_scales(pair):
    reference, ours = pair
    assert ours.num_blocks == NUM_BLOCKS
    depths = {}
    for name, p in reference.named_parameters():
        depths[name] = ours.block_depth(name)
        if name.startswith("neck."):  # created after set_layer_lr_decay: default scale 1
            assert not hasattr(p, "lr_scale")
            expected = 1.0
        else:
            expected = p.lr_scale
        assert math.isclose(LR_DECAY ** (NUM_BLOCKS - depths[name] - 1), expected), name
        assert math.isclose(LR_DECAY ** ours.layer_decay_exponent(name), expected), name
    assert set(depths.values()) == set(range(NUM_BLOCKS))
    assert depths["patch_embed.seq.0.c.weight"] == depths["layers.0.blocks.0.conv1.c.weight"] == 0
    assert depths["layers.1.blocks.1.attn.qkv.weight"] == 3
    assert depths["layers.1.downsample.conv1.c.weight"] == 3
    assert depths["head.weight"] == depths["neck.0.weight"] == NUM_BLOCKS - 1
    for name in ("layers.3.downsample.conv1.c.weight", "layers.2.blocks.6.mlp.fc1.weight", "x"):
        with pytest.raises(ValueError, match="not a TinyViT parameter"):
            ours.block_depth(name)


def test_initialization_matches_reference():
    torch.manual_seed(0)
    reference = build_reference().state_dict()
    ours = build_ours().state_dict()
    for name, expected in reference.items():
        got = ours[name]
        if expected.numel() == 1 or (expected == expected.flatten()[0]).all():
            assert torch.equal(got, expected), name  # ones and zeros, MBConv's zero scale
        else:
            assert not (got == got.flatten()[0]).all(), name
            ratio = got.float().std() / expected.float().std()
            assert 0.8 < ratio < 1.25, name
    assert ours["layers.0.blocks.0.conv3.bn.weight"].abs().max() == 0


def test_rejects_other_image_sizes():
    with pytest.raises(ValueError, match="works at 1024 only"):
        build_ours(img_size=512)
    with pytest.raises(ValueError, match="64×64"):
        build_ours(embed_dims=[64, 128, 160, 256])
    with pytest.raises(ValueError, match="expects B×C×1024×1024"):
        build_ours()(torch.zeros(1, 3, 512, 512))
