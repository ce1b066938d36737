"""Two-way transformer of the SAM mask decoder (tokens <-> image embedding)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from sam_lightning.modeling.common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the channels by
    ``downsample_rate`` (computed with ``scaled_dot_product_attention``).

    Args:
        embedding_dim: channels of the inputs and the output.
        num_heads: attention heads; must divide ``embedding_dim // downsample_rate``.
        downsample_rate: ratio of ``embedding_dim`` to the internal channels.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide {self.internal_dim} channels")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x_bnc: Tensor) -> Tensor:
        b, n, c = x_bnc.shape
        return x_bnc.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _combine_heads(self, x_bhnd: Tensor) -> Tensor:
        b, _, n, _ = x_bhnd.shape
        return x_bhnd.transpose(1, 2).reshape(b, n, self.internal_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Queries ``B×Nq×C`` attend to keys and values ``B×Nk×C`` -> ``B×Nq×C``.

        Either side may have batch size 1 and be shared by all B of the other (the mask
        decoder's first block, where every prompt sees the same image tokens). The paths
        below differ only in the order of operations, not in the result."""
        if q.shape[0] != k.shape[0] and k.shape[0] == 1:
            return self._shared_keys(q, k, v)
        if q.shape[0] != k.shape[0] and q.shape[0] == 1:
            return self._shared_queries(q, k, v)
        if q.shape[1] * self.num_heads < self.internal_dim < k.shape[1]:
            return self._few_queries(q, k, v)
        q_heads = self._separate_heads(self.q_proj(q))
        k_heads = self._separate_heads(self.k_proj(k))
        v_heads = self._separate_heads(self.v_proj(v))
        return self.out_proj(
            self._combine_heads(F.scaled_dot_product_attention(q_heads, k_heads, v_heads))
        )

    def _shared_keys(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """``B×Nq`` queries, one ``1×Nk`` key set: project the keys once and run the B
        query sets as one sequence of ``B*Nq`` queries."""
        b, n, _ = q.shape
        q_heads = self._separate_heads(self.q_proj(q))  # B×H×Nq×d
        q_heads = q_heads.transpose(0, 1).reshape(1, self.num_heads, b * n, -1)
        k_heads = self._separate_heads(self.k_proj(k))
        v_heads = self._separate_heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q_heads, k_heads, v_heads)
        out = out.reshape(self.num_heads, b, n, -1).transpose(0, 1)
        return self.out_proj(self._combine_heads(out))

    def _shared_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """One ``1×Nq`` query set for ``B`` key sets: project the queries once."""
        q_heads = self._separate_heads(self.q_proj(q)).expand(k.shape[0], -1, -1, -1)
        k_heads = self._separate_heads(self.k_proj(k))
        v_heads = self._separate_heads(self.v_proj(v))
        scores = q_heads @ k_heads.transpose(-1, -2) / math.sqrt(q_heads.shape[-1])
        return self.out_proj(self._combine_heads(scores.softmax(-1) @ v_heads))

    def _few_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Few queries over many keys: fold the key and value projections into the queries
        and the output instead of projecting every key. Per head ``h``,
        ``(q_h)(W_h k + b_h)^T = (q_h W_h) k^T + const`` (the constant cancels in the
        softmax) and ``softmax @ (W_h v + b_h) = (softmax @ v) W_h^T + b_h``."""
        b, n, _ = q.shape
        heads, dim = self.num_heads, self.internal_dim // self.num_heads
        q_heads = self._separate_heads(self.q_proj(q))  # B×H×Nq×d
        k_weight = self.k_proj.weight.reshape(heads, dim, -1)  # H×d×C
        q_folded = (q_heads @ k_weight).reshape(b, heads * n, -1) / math.sqrt(dim)
        weights = (q_folded @ k.transpose(1, 2)).softmax(-1)  # B×(H*Nq)×Nk
        pooled = (weights @ v).reshape(b, heads, n, -1)  # B×H×Nq×C
        v_weight = self.v_proj.weight.reshape(heads, dim, -1)  # H×d×C
        out = pooled @ v_weight.transpose(1, 2) + self.v_proj.bias.reshape(heads, 1, dim)
        return self.out_proj(self._combine_heads(out))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, token MLP and image->token
    cross-attention, each followed by a residual sum and LayerNorm.

    Args:
        embedding_dim: channels of tokens and image embedding.
        num_heads: attention heads.
        mlp_dim: hidden channels of the token MLP.
        activation: MLP activation class.
        attention_downsample_rate: channel reduction of the cross-attentions.
        skip_first_layer_pe: self-attention without the query position embedding and
            without the residual (first block).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Updates tokens ``B×N×C`` and image tokens ``B×HW×C`` (with their position
        embeddings ``query_pe`` ``B×N×C`` and ``key_pe`` ``1×HW×C`` or ``B×HW×C``)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        k = keys + key_pe
        queries = queries + self.cross_attn_token_to_image(q=queries + query_pe, k=k, v=keys)
        queries = self.norm2(queries)

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = keys + self.cross_attn_image_to_token(q=k, k=q, v=queries)
        keys = self.norm4(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` plus a final token->image attention.

    Args:
        depth: number of blocks.
        embedding_dim: channels of tokens and image embedding.
        num_heads: attention heads.
        mlp_dim: hidden channels of the token MLPs.
        activation: MLP activation class.
        attention_downsample_rate: channel reduction of the cross-attentions.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=i == 0,
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """
        Args:
            image_embedding: ``B×C×h×w``.
            image_pe: position encoding ``B×C×h×w`` or ``1×C×h×w`` (broadcast).
            point_embedding: tokens ``B×N×C`` (also their position embedding).

        Returns:
            Updated tokens ``B×N×C`` and image tokens ``B×(h*w)×C``.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe=point_embedding, key_pe=key_pe)

        attn_out = self.final_attn_token_to_image(
            q=queries + point_embedding, k=keys + key_pe, v=keys
        )
        return self.norm_final_attn(queries + attn_out), keys
