"""Gradients equal the official modules': one backward pass through the image encoder,
prompt encoder and mask decoder (our batched, fused attention paths included) gives the
official package's parameter and input gradients, same weights, same loss."""

from __future__ import annotations

import torch

P_PER_IMAGE = (2, 3)


def weighted_sum(tensor: torch.Tensor, seed: int) -> torch.Tensor:
    """A loss whose gradient is a fixed random tensor of ``tensor``'s shape."""
    weights = torch.randn(tensor.shape, generator=torch.Generator().manual_seed(seed))
    return (tensor * weights).sum()


def prompts(grid: int, size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    count = sum(P_PER_IMAGE)
    corners = torch.rand(count, 2, 2, generator=generator).sort(dim=1).values * (size - 1)
    return {
        "point_coords": torch.rand(count, 2, 2, generator=generator) * (size - 1),
        "point_labels": torch.tensor([[1, 0], [1, 1], [0, 1], [1, -1], [1, 0]]),
        "boxes": corners.reshape(count, 4),
        "mask_inputs": torch.randn(count, 1, 4 * grid, 4 * grid, generator=generator),
    }


def official_decode(official, embeddings, given, multimask):
    """The official prompt encoder and decoder, one call per image (its decoder repeats one
    image embedding for that image's prompts)."""
    logits, ious, start = [], [], 0
    for image, count in enumerate(P_PER_IMAGE):
        rows = slice(start, start + count)
        sparse, dense = official.prompt_encoder(
            points=(given["point_coords"][rows], given["point_labels"][rows]),
            boxes=given["boxes"][rows],
            masks=given["mask_inputs"][rows],
        )
        low_res, iou = official.mask_decoder(
            image_embeddings=embeddings[image : image + 1],
            image_pe=official.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        logits.append(low_res)
        ious.append(iou)
        start += count
    return torch.cat(logits), torch.cat(ious)


def assert_close_gradients(official, ours, prefixes):
    """Every official gradient of the parts named by ``prefixes`` equals ours to 1e-3 of its
    own largest value, or of 1e-4 of the largest gradient anywhere for gradients that are
    zero in exact arithmetic (key biases cancel in the softmax): returns how many."""
    ours_parameters = dict(ours.named_parameters())
    pairs = [
        (name, parameter.grad, ours_parameters[name].grad)
        for name, parameter in official.named_parameters()
        if name.startswith(prefixes) and parameter.grad is not None
    ]
    overall = max(theirs.abs().max() for _, theirs, _ in pairs)
    for name, theirs, mine in pairs:
        if mine is None:  # a path that does not use the parameter: its gradient must be 0
            mine = torch.zeros_like(theirs)
        scale = torch.maximum(theirs.abs().max(), 1e-4 * overall)
        assert (mine - theirs).abs().max() / scale < 1e-3, name
    return len(pairs)


def test_decoder_and_prompt_encoder_gradients_equal_the_official(small_pair):
    official, ours = small_pair
    official.train(), ours.train()
    grid = ours.prompt_encoder.image_embedding_size[0]
    size = ours.prompt_encoder.input_image_size[0]
    given = prompts(grid, size)
    image_index = torch.repeat_interleave(torch.arange(2), torch.tensor(P_PER_IMAGE))
    for multimask in (True, False):
        official.zero_grad(), ours.zero_grad()
        base = torch.randn(2, 256, grid, grid, generator=torch.Generator().manual_seed(2))
        theirs_input, ours_input = base.clone().requires_grad_(), base.clone().requires_grad_()
        logits, ious = official_decode(official, theirs_input, given, multimask)
        (weighted_sum(logits, 3) + weighted_sum(ious, 4)).backward()
        my_logits, my_ious = ours.decode(
            ours_input, multimask_output=multimask, image_index=image_index, **given
        )
        torch.testing.assert_close(my_logits, logits, atol=1e-4, rtol=1e-4)
        (weighted_sum(my_logits, 3) + weighted_sum(my_ious, 4)).backward()
        checked = assert_close_gradients(official, ours, ("mask_decoder", "prompt_encoder"))
        assert checked > 50
        scale = theirs_input.grad.abs().max()
        assert (ours_input.grad - theirs_input.grad).abs().max() / scale < 1e-4


def test_image_encoder_gradients_equal_the_official(small_pair, input_images):
    official, ours = small_pair
    official.train(), ours.train()
    official.zero_grad(), ours.zero_grad()
    size = ours.prompt_encoder.input_image_size[0]
    image = input_images[0].float()[None]
    image = torch.nn.functional.pad(image, (0, size - image.shape[-1], 0, size - image.shape[-2]))
    weighted_sum(official.image_encoder(image), 5).backward()
    weighted_sum(ours.image_encoder(image), 5).backward()
    assert assert_close_gradients(official, ours, ("image_encoder",)) > 20
