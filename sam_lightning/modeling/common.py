"""Small building blocks shared by the SAM modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLPBlock(nn.Module):
    """Two-layer feed-forward block ``lin2(act(lin1(x)))`` acting on the last dimension.

    Args:
        embedding_dim: input and output channels.
        mlp_dim: hidden channels.
        act: activation class, instantiated without arguments.
    """

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (none after the last).

    Args:
        input_dim, hidden_dim, output_dim: channels of the input, hidden and output layers.
        num_layers: number of linear layers (>= 1).
        sigmoid_output: apply a sigmoid to the output.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        *hidden, last = self.layers
        for layer in hidden:
            x = F.relu(layer(x))
        x = last(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of a ``B×C×H×W`` tensor (ConvNeXt style)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x_bchw: Tensor) -> Tensor:
        # One fused layer_norm on a channels-last view; the result stays channels-last,
        # which the following activation and transposed convolution also run faster on.
        x_bhwc = x_bchw.permute(0, 2, 3, 1)
        normed = F.layer_norm(x_bhwc, (x_bhwc.shape[-1],), self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2)
