"""Training features of the image encoder: stochastic depth (drop path) and activation
checkpointing. Both leave the weights and the eval-mode outputs as they are."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch
from sam_test_models import build_official, randomize_

from sam_lightning.modeling import build_sam, build_sam_custom, image_encoder
from sam_lightning.modeling.image_encoder import DropPath, ImageEncoderViT

#: 64-pixel input -> 4×4 tokens in 2×2 windows; block 1 is global.
TINY = {
    "encoder_embed_dim": 32,
    "encoder_depth": 3,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": (1,),
    "image_size": 64,
    "window_size": 2,
}


def tiny_encoder(
    drop_path_rate: float = 0.0, activation_checkpointing: bool = False, depth: int = 3
) -> ImageEncoderViT:
    """A tiny encoder with random weights (the same for every rate and flag)."""
    encoder = ImageEncoderViT(
        img_size=64,
        patch_size=16,
        embed_dim=32,
        depth=depth,
        num_heads=2,
        out_chans=16,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=2,
        global_attn_indexes=(1,),
        drop_path_rate=drop_path_rate,
        activation_checkpointing=activation_checkpointing,
    )
    return randomize_(encoder, seed=11)


def images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def run(encoder: ImageEncoderViT, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
    """Output and gradients (parameters and input) of a random linear loss, seeded."""
    encoder.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = encoder(x)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * weight).sum().backward()
    grads = {name: p.grad.clone() for name, p in encoder.named_parameters()}
    grads["<input>"] = x.grad.clone()
    return out.detach(), grads


def count_checkpoint_calls(monkeypatch, wrap: Callable | None = None) -> list[int]:
    """Replaces the encoder's ``checkpoint`` by a counting wrapper; returns the counter."""
    calls = [0]
    inner = wrap or image_encoder.checkpoint

    def counting(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    monkeypatch.setattr(image_encoder, "checkpoint", counting)
    return calls


def test_drop_path_rates_increase_linearly_over_depth():
    encoder = tiny_encoder(drop_path_rate=0.3, depth=4)
    rates = [block.drop_path.drop_prob for block in encoder.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert all(b.drop_path.drop_prob == 0.0 for b in tiny_encoder().blocks)

    model = build_sam("vit_tiny", image_size=64, drop_path_rate=0.2)
    rates = [block.drop_path.drop_prob for block in model.image_encoder.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.2, len(rates)).tolist())
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)

    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="drop_path_rate"):
            tiny_encoder(drop_path_rate=bad)


@torch.no_grad()
def test_drop_path_is_off_in_eval_mode_and_at_rate_zero():
    x = images()
    reference = tiny_encoder().eval()(x)
    assert torch.equal(tiny_encoder(drop_path_rate=0.5).eval()(x), reference)
    # default rate 0: training mode computes exactly what eval mode does (no dropout in SAM)
    assert torch.equal(tiny_encoder().train()(x), reference)


@torch.no_grad()
def test_drop_path_is_random_in_training_mode():
    x = images(batch=4)
    encoder = tiny_encoder(drop_path_rate=0.5)
    expected = encoder.eval()(x)
    encoder.train()
    torch.manual_seed(0)
    first = encoder(x)
    torch.manual_seed(0)
    assert torch.equal(encoder(x), first)  # seeded: reproducible
    assert not torch.allclose(first, expected, atol=1e-3)
    torch.manual_seed(1)
    assert not torch.allclose(encoder(x), first, atol=1e-3)


def test_drop_path_is_per_sample_and_rescaled():
    drop = DropPath(0.25).train()
    x = torch.ones(8000, 3, 5)
    torch.manual_seed(0)
    out = drop(x)
    per_sample = out[:, :1, :1]
    assert torch.equal(out, per_sample.expand_as(out))  # one draw per sample
    assert per_sample.unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    kept = (per_sample > 0).float().mean().item()
    assert kept == pytest.approx(0.75, abs=0.03)
    assert out.mean().item() == pytest.approx(1.0, abs=0.04)  # expectation preserved
    assert drop.eval()(x) is x and DropPath(0.0).train()(x) is x
    with pytest.raises(ValueError, match="drop_prob"):
        DropPath(1.0)


@torch.no_grad()
def test_encoder_drops_whole_images_not_windows():
    """Drop path acts on ``B×H×W×C`` tokens of whole images, also in windowed blocks."""
    encoder = tiny_encoder(drop_path_rate=0.5).train()
    batch_sizes = []
    for block in encoder.blocks:
        block.drop_path.register_forward_hook(lambda m, args, out: batch_sizes.append(args[0]))
    encoder(images(batch=3))
    assert len(batch_sizes) == 2 * len(encoder.blocks)
    assert {tuple(t.shape) for t in batch_sizes} == {(3, 4, 4, 32)}


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_checkpointing_gives_the_same_outputs_and_gradients(monkeypatch, rate):
    plain = tiny_encoder(drop_path_rate=rate).train()
    checkpointed = tiny_encoder(drop_path_rate=rate, activation_checkpointing=True).train()
    calls = count_checkpoint_calls(monkeypatch)
    x = images(batch=4)
    out, grads = run(plain, x, seed=3)
    assert calls[0] == 0
    out_ckpt, grads_ckpt = run(checkpointed, x, seed=3)
    assert calls[0] == len(checkpointed.blocks)
    torch.testing.assert_close(out_ckpt, out, atol=1e-6, rtol=0)
    assert grads_ckpt.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=0, msg=name)
    if rate:  # the drop path was active: some image lost a branch somewhere
        with torch.no_grad():
            assert not torch.allclose(plain.eval()(x), out, atol=1e-3)


def test_checkpointing_replays_the_drop_path_draws(monkeypatch):
    """Without RNG preservation the recomputed drop-path masks differ and so do the
    gradients: the comparison above would catch a checkpoint that does not replay them."""
    x = images(batch=4)
    _, grads = run(tiny_encoder(drop_path_rate=0.5).train(), x, seed=3)
    no_rng = partial(torch.utils.checkpoint.checkpoint, preserve_rng_state=False)
    count_checkpoint_calls(monkeypatch, wrap=no_rng)
    checkpointed = tiny_encoder(drop_path_rate=0.5, activation_checkpointing=True).train()
    _, broken = run(checkpointed, x, seed=3)
    assert any(not torch.allclose(broken[k], grads[k], atol=1e-6) for k in grads)


def test_checkpointing_only_when_training_with_gradients(monkeypatch):
    calls = count_checkpoint_calls(monkeypatch)
    model = build_sam_custom(**TINY, activation_checkpointing=True)  # built in eval mode
    assert model.image_encoder.activation_checkpointing is True
    x = images()
    model.image_encoder(x)
    assert calls[0] == 0  # eval mode
    model.train()
    with torch.no_grad():
        model.image_encoder(x)
    assert calls[0] == 0  # no gradients
    model.image_encoder(x)
    assert calls[0] == TINY["encoder_depth"]

    model.image_encoder.activation_checkpointing = False  # toggled after building
    model.image_encoder(x)
    assert calls[0] == TINY["encoder_depth"]
    default = build_sam("vit_tiny", image_size=64).train()
    assert default.image_encoder.activation_checkpointing is False
    default.image_encoder.activation_checkpointing = True
    default.image_encoder(x)
    assert calls[0] == TINY["encoder_depth"] + len(default.image_encoder.blocks)
    flagged = build_sam("vit_tiny", image_size=64, activation_checkpointing=True)
    assert flagged.image_encoder.activation_checkpointing is True


def test_state_dict_is_unchanged(tmp_path):
    plain = build_sam_custom(**TINY)
    featured = build_sam_custom(**TINY, drop_path_rate=0.3, activation_checkpointing=True)
    layout = {k: (v.shape, v.dtype) for k, v in plain.state_dict().items()}
    assert {k: (v.shape, v.dtype) for k, v in featured.state_dict().items()} == layout

    official = randomize_(build_official(**TINY), seed=2)
    path = tmp_path / "official.pth"
    torch.save(official.state_dict(), path)
    loaded = build_sam_custom(**TINY, checkpoint=path, drop_path_rate=0.3)  # strict load
    for key, value in official.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    featured.load_state_dict(plain.state_dict(), strict=True)
