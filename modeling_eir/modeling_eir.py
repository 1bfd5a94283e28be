"""EIR: chest X-ray report generation with enhanced image representations.

The model follows the three modules of EIR (Sun et al., "Enhanced Image Representations for
Medical Report Generation", arXiv 2512.23185):

1. Encoding: a vision backbone encodes each view of a study and the views are aggregated; a
   transformer encoder reads the clinical history; a graph-masked transformer encodes a knowledge
   graph of general chest nodes plus the findings of the training reports whose images are most
   similar to this study (retrieval bank saved with the model).
2. Aggregation: cross-modal transformers in the sense of MulT (Tsai et al., ACL 2019): the image
   tokens query each metadata source through stacked pre-LayerNorm cross-attention blocks. The
   "Add and LayerNorm" fusion it replaces is kept as an ablation.
3. Decoding: a transformer decoder with a key/value cache writes the report, cross-attending to
   the fused image tokens.

The encoder side is `EIREncoder`, which `generate()` runs once per batch; the decoder then runs
one step per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import ModelOutput
from transformers.utils import logging

try:  # flat files of a saved model folder (trust_remote_code)
    from .configuration_eir import EIRConfig
except ImportError:  # installed package layout
    from configuration_eir import EIRConfig

logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass
class EIREncoderOutput(ModelOutput):
    """
    Output of the encoding and aggregation modules.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch, memory_length, hidden_size)`):
            Fused image tokens the decoder attends to.
        memory_mask (`torch.LongTensor` of shape `(batch, memory_length)`):
            1 for tokens of real views, 0 for tokens of padding views.
        image_embeds (`torch.FloatTensor` of shape `(batch, hidden_size)`):
            Pooled, L2-normalised image embedding of the study, used for retrieval.
        retrieved_indices (`torch.LongTensor` of shape `(batch, retrieval_top_k)`, *optional*):
            Rows of the retrieval bank used for the knowledge graph; -1 where fewer were available.
        history_hidden_state (`torch.FloatTensor` of shape `(batch, history_length, hidden_size)`, *optional*)
        graph_hidden_state (`torch.FloatTensor` of shape `(batch, num_nodes, hidden_size)`, *optional*)
    """

    last_hidden_state: torch.FloatTensor | None = None
    memory_mask: torch.LongTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    retrieved_indices: torch.LongTensor | None = None
    history_hidden_state: torch.FloatTensor | None = None
    graph_hidden_state: torch.FloatTensor | None = None


@dataclass
class EIRReportGenerationOutput(ModelOutput):
    """
    Output of [`EIRForReportGeneration`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): token-level cross-entropy, returned
            when `labels` are given (positions labelled -100 are ignored).
        logits (`torch.FloatTensor` of shape `(batch, target_length, vocab_size)`)
        cache (`Cache`, *optional*): key/value cache of the decoder.
        encoder_last_hidden_state (`torch.FloatTensor` of shape `(batch, memory_length, hidden_size)`)
        encoder_memory_mask (`torch.LongTensor` of shape `(batch, memory_length)`)
        image_embeds (`torch.FloatTensor` of shape `(batch, hidden_size)`)
        retrieved_indices (`torch.LongTensor` of shape `(batch, retrieval_top_k)`, *optional*)
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_memory_mask: torch.LongTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    retrieved_indices: torch.LongTensor | None = None


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Turn a boolean mask (True = may attend) into an additive float mask.

    A large negative value instead of -inf keeps rows without any allowed key finite.
    """
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def _sinusoidal_positions_2d(height: int, width: int, dim: int, device, dtype) -> torch.Tensor:
    """Fixed 2D sine-cosine position codes of shape (height * width, dim), valid at any resolution."""
    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1)))
    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * frequencies  # (h, dim/4)
    cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * frequencies  # (w, dim/4)
    row_codes = torch.cat([rows.sin(), rows.cos()], dim=-1)[:, None, :].expand(height, width, 2 * quarter)
    col_codes = torch.cat([cols.sin(), cols.cos()], dim=-1)[None, :, :].expand(height, width, 2 * quarter)
    codes = torch.cat([row_codes, col_codes], dim=-1).reshape(height * width, 4 * quarter)
    if codes.shape[-1] < dim:
        codes = F.pad(codes, (0, dim - codes.shape[-1]))
    return codes.to(dtype)


class EIRAttention(nn.Module):
    """Multi-head attention with `q_proj`/`k_proj`/`v_proj`/`out_proj` (the names PEFT targets).

    Self-attention when `key_value_states` is None, cross-attention otherwise. With a cache, keys
    and values of self-attention are appended per step; those of cross-attention are computed
    once and reused.
    """

    def __init__(self, config: EIRConfig, layer_idx: int | None = None):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.dropout = config.attention_dropout
        self.layer_idx = layer_idx
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def _split_heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        is_cross_attention = key_value_states is not None
        query = self._split_heads(self.q_proj(hidden_states))  # (B, nh, Tq, hs)

        layer_cache = None
        reuse_cross = False
        if cache is not None:
            if isinstance(cache, EncoderDecoderCache):
                layer_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
                reuse_cross = is_cross_attention and bool(cache.is_updated.get(self.layer_idx))
            elif not is_cross_attention:
                layer_cache = cache

        if reuse_cross:
            key = layer_cache.layers[self.layer_idx].keys
            value = layer_cache.layers[self.layer_idx].values
        else:
            source = key_value_states if is_cross_attention else hidden_states
            key = self._split_heads(self.k_proj(source))  # (B, nh, Tk, hs)
            value = self._split_heads(self.v_proj(source))
            if layer_cache is not None:
                key, value = layer_cache.update(key, value, self.layer_idx)
                if is_cross_attention:
                    cache.is_updated[self.layer_idx] = True

        attended = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, Tq, hs)
        batch, _, length, _ = attended.shape
        attended = attended.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.out_proj(attended)


class EIRFeedForward(nn.Module):
    def __init__(self, config: EIRConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.activation = ACT2FN["gelu"]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(hidden_states))))


class EIREncoderLayer(nn.Module):
    """Pre-LayerNorm transformer encoder layer; the mask restricts attention (graph edges, padding)."""

    def __init__(self, config: EIRConfig):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size)
        self.self_attn = EIRAttention(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size)
        self.mlp = EIRFeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.self_attn(self.self_attn_layer_norm(hidden_states), attention_mask=attention_mask)
        hidden_states = residual + self.dropout(hidden_states)
        residual = hidden_states
        hidden_states = residual + self.dropout(self.mlp(self.final_layer_norm(hidden_states)))
        return hidden_states


class EIRCrossModalBlock(nn.Module):
    """Pre-LayerNorm cross-modal block of MulT: image tokens query one metadata source."""

    def __init__(self, config: EIRConfig):
        super().__init__()
        self.query_layer_norm = nn.LayerNorm(config.hidden_size)
        self.source_layer_norm = nn.LayerNorm(config.hidden_size)
        self.cross_attn = EIRAttention(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size)
        self.mlp = EIRFeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, image_tokens: torch.Tensor, source_tokens: torch.Tensor, source_mask: torch.Tensor
    ) -> torch.Tensor:
        residual = image_tokens
        attended = self.cross_attn(
            self.query_layer_norm(image_tokens),
            key_value_states=self.source_layer_norm(source_tokens),
            attention_mask=source_mask,
        )
        image_tokens = residual + self.dropout(attended)
        image_tokens = image_tokens + self.dropout(self.mlp(self.final_layer_norm(image_tokens)))
        return image_tokens


class EIRDecoderLayer(nn.Module):
    """Pre-LayerNorm decoder layer: causal self-attention, cross-attention to the memory, feed-forward."""

    def __init__(self, config: EIRConfig, layer_idx: int):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size)
        self.self_attn = EIRAttention(config, layer_idx=layer_idx)
        self.encoder_attn_layer_norm = nn.LayerNorm(config.hidden_size)
        self.encoder_attn = EIRAttention(config, layer_idx=layer_idx)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size)
        self.mlp = EIRFeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        self_attention_mask: torch.Tensor,
        memory: torch.Tensor,
        memory_attention_mask: torch.Tensor,
        cache: Cache | None,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.self_attn(
            self.self_attn_layer_norm(hidden_states), attention_mask=self_attention_mask, cache=cache
        )
        hidden_states = residual + self.dropout(hidden_states)

        residual = hidden_states
        hidden_states = self.encoder_attn(
            self.encoder_attn_layer_norm(hidden_states),
            key_value_states=memory,
            attention_mask=memory_attention_mask,
            cache=cache,
        )
        hidden_states = residual + self.dropout(hidden_states)

        hidden_states = hidden_states + self.dropout(self.mlp(self.final_layer_norm(hidden_states)))
        return hidden_states


# ---------------------------------------------------------------------------------------------
# Encoding module
# ---------------------------------------------------------------------------------------------


class EIRImageEncoder(nn.Module):
    """Encode each view with the vision backbone and aggregate the views of a study."""

    def __init__(self, config: EIRConfig):
        super().__init__()
        self.config = config
        self.backbone = AutoModel.from_config(config.vision_config)
        feature_size = self._backbone_feature_size(config)
        self.projection = nn.Linear(feature_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        if config.view_aggregation == "concat":
            self.view_embeddings = nn.Embedding(config.max_views, config.hidden_size)
        if config.view_aggregation == "attention":
            self.view_scorer = nn.Linear(config.hidden_size, 1)

    @staticmethod
    def _backbone_feature_size(config: EIRConfig) -> int:
        vision_config = config.vision_config
        for name in ("hidden_sizes", "hidden_size", "num_features", "embed_dim"):
            value = getattr(vision_config, name, None)
            if isinstance(value, (list, tuple)) and value:
                return int(value[-1])
            if isinstance(value, int):
                return value
        raise ValueError(
            f"EIRConfig.vision_config: expected a config with `hidden_sizes` or `hidden_size`, got "
            f"{type(vision_config).__name__}. Use a convolutional backbone config such as ResNetConfig."
        )

    def encode_views(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Encode a flat batch of views (N, C, H, W) into tokens (N, h * w, hidden_size) and their grid (h, w)."""
        return self.project_backbone_features(self.backbone(pixel_values=pixel_values).last_hidden_state)

    def project_backbone_features(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Project backbone outputs (N, C, h, w) or (N, T, C) to tokens (N, h * w, hidden_size), without positions.

        Returns the tokens and their grid (h, w); `forward` adds the position codes after pooling.
        """
        if features.dim() == 4:  # (N, C, h, w) from a convolutional backbone
            _, _, height, width = features.shape
            tokens = features.flatten(2).transpose(1, 2)  # (N, h*w, C)
        else:  # (N, T, C) from a transformer backbone
            height, width = 1, features.shape[1]
            tokens = features
        tokens = self.layer_norm(self.projection(tokens))  # (N, h*w, d)
        return tokens, (height, width)

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        pixel_mask: torch.Tensor,
        backbone_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return image tokens (B, T, d), their mask (B, T) and a pooled embedding (B, d).

        `backbone_features` (B, V, C, h, w), precomputed outputs of a frozen backbone, replace
        the backbone when `pixel_values` is None.
        """
        views = pixel_values if pixel_values is not None else backbone_features
        batch, num_views = views.shape[:2]
        view_is_real = pixel_mask.bool()  # (B, V)

        # 1. Encode only the real views.
        if pixel_values is not None:
            real_tokens, (height, width) = self.encode_views(pixel_values[view_is_real])  # (N_real, P, d)
        else:
            real_tokens, (height, width) = self.project_backbone_features(backbone_features[view_is_real])
        num_patches, hidden = real_tokens.shape[1:]

        # 2. Pooled embedding per study: mean over patches, then over real views. It is taken
        # before the position codes are added, which are the same for every study and would
        # otherwise dominate the cosine similarity used for retrieval.
        content = real_tokens.new_zeros(batch, num_views, num_patches, hidden)
        content[view_is_real] = real_tokens
        view_weights = view_is_real.to(content.dtype)  # (B, V)
        pooled_views = content.mean(dim=2)  # (B, V, d)
        study_embeds = (pooled_views * view_weights[..., None]).sum(1) / view_weights.sum(1, keepdim=True).clamp(min=1)

        positions = _sinusoidal_positions_2d(height, width, hidden, real_tokens.device, real_tokens.dtype)
        view_tokens = real_tokens.new_zeros(batch, num_views, num_patches, hidden)
        view_tokens[view_is_real] = real_tokens + positions  # (B, V, P, d)

        # 3. Aggregate the views.
        aggregation = self.config.view_aggregation
        if aggregation == "max":
            masked = view_tokens.masked_fill(~view_is_real[:, :, None, None], torch.finfo(view_tokens.dtype).min)
            tokens = masked.max(dim=1).values  # (B, P, d)
            token_mask = view_is_real.any(dim=1, keepdim=True).expand(batch, num_patches)
        elif aggregation == "mean":
            tokens = (view_tokens * view_weights[:, :, None, None]).sum(1) / view_weights.sum(1).clamp(min=1)[:, None, None]
            token_mask = view_is_real.any(dim=1, keepdim=True).expand(batch, num_patches)
        elif aggregation == "attention":
            scores = self.view_scorer(pooled_views).squeeze(-1)  # (B, V)
            scores = scores.masked_fill(~view_is_real, torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=1)  # (B, V)
            tokens = (view_tokens * weights[:, :, None, None]).sum(1)  # (B, P, d)
            token_mask = view_is_real.any(dim=1, keepdim=True).expand(batch, num_patches)
        else:  # concat
            view_ids = torch.arange(num_views, device=views.device)
            view_tokens = view_tokens + self.view_embeddings(view_ids)[None, :, None, :]
            tokens = view_tokens.reshape(batch, num_views * num_patches, hidden)  # (B, V*P, d)
            token_mask = view_is_real[:, :, None].expand(batch, num_views, num_patches).reshape(batch, -1)
        return tokens, token_mask.long(), F.normalize(study_embeds, dim=-1)


class EIRHistoryEncoder(nn.Module):
    """Transformer encoder over the tokens of the clinical history."""

    def __init__(self, config: EIRConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.no_history = nn.Embedding(1, config.hidden_size)
        self.layers = nn.ModuleList(EIREncoderLayer(config) for _ in range(config.history_num_layers))
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.max_positions = config.max_position_embeddings

    def forward(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if input_ids is None:  # no history given: one learned "no history" token per study
            tokens = self.no_history.weight[None].expand(batch_size, 1, -1)
            return tokens, torch.ones(batch_size, 1, dtype=torch.long, device=tokens.device)
        if input_ids.shape[1] > self.max_positions:
            raise ValueError(
                f"History input_ids: expected at most max_position_embeddings={self.max_positions} tokens, got "
                f"{input_ids.shape[1]}. Truncate the history in the processor (max_history_length)."
            )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden_states = self.embed_tokens(input_ids) + self.embed_positions(positions)[None]  # (B, L, d)
        key_allowed = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
        mask = _additive_mask(key_allowed, hidden_states.dtype)
        for layer in self.layers:
            hidden_states = layer(hidden_states, mask)
        return self.layer_norm(hidden_states), attention_mask.long()


class EIRKnowledgeGraph(nn.Module):
    """Knowledge graph of general chest nodes plus retrieved findings, encoded by a graph-masked transformer.

    The retrieval bank holds, for each training report, the study's image embedding, the patient
    group (so a study never retrieves its own patient), and the token ids of up to
    `max_entities_per_report` findings, each linked to one general node (-1 = padding entity).
    The bank lives in persistent buffers, so it is saved in the model weights.
    """

    def __init__(self, config: EIRConfig):
        super().__init__()
        self.config = config
        num_nodes = len(config.knowledge_graph_nodes)
        bank_size = config.retrieval_bank_size
        entities, entity_length = config.max_entities_per_report, config.max_entity_length
        self.node_embeddings = nn.Embedding(num_nodes, config.hidden_size)
        self.entity_type_embedding = nn.Embedding(1, config.hidden_size)
        self.rank_embeddings = nn.Embedding(config.retrieval_top_k, config.hidden_size)
        self.layers = nn.ModuleList(EIREncoderLayer(config) for _ in range(config.knowledge_graph_num_layers))
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.register_buffer("bank_embeddings", torch.zeros(bank_size, config.hidden_size))
        self.register_buffer("bank_group_ids", torch.zeros(bank_size, dtype=torch.long))
        self.register_buffer("bank_entity_ids", torch.zeros(bank_size, entities, entity_length, dtype=torch.int32))
        self.register_buffer("bank_entity_nodes", torch.full((bank_size, entities), -1, dtype=torch.long))

    def general_adjacency(self, device) -> torch.Tensor:
        """Boolean adjacency (G, G) of the general nodes, with self-loops."""
        names = self.config.knowledge_graph_nodes
        index = {name: i for i, name in enumerate(names)}
        adjacency = torch.eye(len(names), dtype=torch.bool, device=device)
        for first, second in self.config.knowledge_graph_edges:
            adjacency[index[first], index[second]] = True
            adjacency[index[second], index[first]] = True
        return adjacency

    def retrieve(self, image_embeds: torch.Tensor, group_ids: torch.Tensor | None) -> torch.Tensor:
        """Return the bank rows of the top-k most similar training studies (B, k); -1 = none."""
        batch = image_embeds.shape[0]
        top_k = self.config.retrieval_top_k
        bank_size = self.bank_embeddings.shape[0]
        if bank_size == 0:
            return torch.full((batch, top_k), -1, dtype=torch.long, device=image_embeds.device)
        similarity = image_embeds @ self.bank_embeddings.to(image_embeds.dtype).T  # (B, N)
        if group_ids is not None:
            same_patient = group_ids[:, None] == self.bank_group_ids[None, :]  # (B, N)
            similarity = similarity.masked_fill(same_patient, float("-inf"))
        scores, indices = similarity.topk(min(top_k, bank_size), dim=1)  # (B, k)
        indices = indices.masked_fill(torch.isinf(scores), -1)
        if indices.shape[1] < top_k:
            indices = F.pad(indices, (0, top_k - indices.shape[1]), value=-1)
        return indices

    def forward(
        self, retrieved: torch.Tensor, token_embeddings: nn.Embedding
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode the graph of each study; return node states (B, G + k*E, d) and node mask."""
        batch, top_k = retrieved.shape
        device = retrieved.device
        num_general = self.node_embeddings.num_embeddings
        entities = self.config.max_entities_per_report

        # 1. Gather the entities of the retrieved reports.
        if self.bank_entity_ids.shape[0] == 0:  # no bank yet: general nodes only
            entity_ids = torch.full(
                (batch, top_k, entities, self.config.max_entity_length), self.config.pad_token_id, device=device
            )
            entity_nodes = torch.full((batch, top_k, entities), -1, dtype=torch.long, device=device)
        else:
            safe_rows = retrieved.clamp(min=0)
            entity_ids = self.bank_entity_ids[safe_rows].long()  # (B, k, E, L)
            entity_nodes = self.bank_entity_nodes[safe_rows]  # (B, k, E)
            entity_nodes = entity_nodes.masked_fill(retrieved[:, :, None] < 0, -1)
        entity_is_real = entity_nodes >= 0  # (B, k, E)

        # 2. Node features: general nodes, and entities as mean token embeddings.
        token_is_real = (entity_ids != self.config.pad_token_id).to(token_embeddings.weight.dtype)  # (B, k, E, L)
        entity_features = (token_embeddings(entity_ids) * token_is_real[..., None]).sum(3)
        entity_features = entity_features / token_is_real.sum(3, keepdim=True).clamp(min=1)  # (B, k, E, d)
        ranks = self.rank_embeddings(torch.arange(top_k, device=device))[None, :, None, :]
        entity_features = entity_features + ranks + self.entity_type_embedding.weight
        general = self.node_embeddings.weight[None].expand(batch, -1, -1)  # (B, G, d)
        nodes = torch.cat([general, entity_features.reshape(batch, top_k * entities, -1)], dim=1)

        # 3. Graph mask: general edges, entity <-> its general node, entities of the same report.
        num_entities = top_k * entities
        total = num_general + num_entities
        adjacency = torch.zeros(batch, total, total, dtype=torch.bool, device=device)
        adjacency[:, :num_general, :num_general] = self.general_adjacency(device)
        flat_nodes = entity_nodes.reshape(batch, num_entities)  # (B, kE)
        flat_real = entity_is_real.reshape(batch, num_entities)
        link = F.one_hot(flat_nodes.clamp(min=0), num_general).bool() & flat_real[..., None]  # (B, kE, G)
        adjacency[:, num_general:, :num_general] = link
        adjacency[:, :num_general, num_general:] = link.transpose(1, 2)
        report_of_entity = torch.arange(top_k, device=device).repeat_interleave(entities)  # (kE,)
        same_report = report_of_entity[:, None] == report_of_entity[None, :]
        both_real = flat_real[:, :, None] & flat_real[:, None, :]
        adjacency[:, num_general:, num_general:] = same_report[None] & both_real
        adjacency |= torch.eye(total, dtype=torch.bool, device=device)[None]
        mask = _additive_mask(adjacency[:, None], nodes.dtype)  # (B, 1, N, N)

        for layer in self.layers:
            nodes = layer(nodes, mask)
        node_mask = torch.cat([torch.ones(batch, num_general, dtype=torch.bool, device=device), flat_real], dim=1)
        return self.layer_norm(nodes), node_mask.long()


# ---------------------------------------------------------------------------------------------
# Aggregation module
# ---------------------------------------------------------------------------------------------


class EIRFusion(nn.Module):
    """Merge the metadata sources into the image tokens (`cross_modal`, `add_layernorm` or `none`)."""

    def __init__(self, config: EIRConfig):
        super().__init__()
        self.fusion = config.fusion
        self.source_names = [
            name for name, used in (("history", config.use_history), ("graph", config.use_knowledge_graph)) if used
        ]
        if self.fusion == "cross_modal":
            self.stacks = nn.ModuleDict(
                {
                    name: nn.ModuleList(EIRCrossModalBlock(config) for _ in range(config.fusion_num_layers))
                    for name in self.source_names
                }
            )
            self.combine = nn.Linear(len(self.source_names) * config.hidden_size, config.hidden_size)
            self.layer_norm = nn.LayerNorm(config.hidden_size)
        elif self.fusion == "add_layernorm":
            self.layer_norm = nn.LayerNorm(config.hidden_size)

    def forward(self, image_tokens: torch.Tensor, sources: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        if self.fusion == "none":
            return image_tokens

        if self.fusion == "add_layernorm":
            # LayerNorm(image + metadata): each source is mean-pooled over its valid tokens.
            metadata = torch.zeros_like(image_tokens[:, 0])  # (B, d)
            for name in self.source_names:
                tokens, mask = sources[name]
                weights = mask.to(tokens.dtype)[..., None]
                metadata = metadata + (tokens * weights).sum(1) / weights.sum(1).clamp(min=1)
            return self.layer_norm(image_tokens + metadata[:, None, :])

        fused_per_source = []
        for name in self.source_names:
            tokens, mask = sources[name]
            attention_mask = _additive_mask(mask.bool()[:, None, None, :], image_tokens.dtype)  # (B, 1, 1, S)
            fused = image_tokens
            for block in self.stacks[name]:
                fused = block(fused, tokens, attention_mask)
            fused_per_source.append(fused)
        return self.layer_norm(self.combine(torch.cat(fused_per_source, dim=-1)))


class EIREncoder(nn.Module):
    """Encoding and aggregation modules: image, history and knowledge graph to fused image tokens."""

    main_input_name = "pixel_values"

    def __init__(self, config: EIRConfig):
        super().__init__()
        self.config = config
        self.image_encoder = EIRImageEncoder(config)
        uses_metadata = config.fusion != "none"
        needs_tokens = uses_metadata and (config.use_history or config.use_knowledge_graph)
        self.history_encoder = EIRHistoryEncoder(config) if needs_tokens else None
        self.knowledge_graph = EIRKnowledgeGraph(config) if uses_metadata and config.use_knowledge_graph else None
        self.fusion = EIRFusion(config)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        history_input_ids: torch.Tensor | None = None,
        history_attention_mask: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        backbone_features: torch.Tensor | None = None,
        **kwargs,
    ) -> EIREncoderOutput:
        # 1. Check the inputs. Precomputed backbone features stand in for the pixels when
        # pixel_values is None.
        if pixel_values is None:
            if backbone_features is None:
                raise ValueError("EIREncoder.forward: pass pixel_values, or backbone_features of a frozen backbone.")
            if backbone_features.dim() != 5:
                raise ValueError(
                    "backbone_features: expected shape (batch, views, channels, height, width), got "
                    f"{tuple(backbone_features.shape)}."
                )
            pixel_values_or_features = backbone_features
        else:
            if pixel_values.dim() == 4:  # (B, C, H, W): one view per study
                pixel_values = pixel_values[:, None]
            if pixel_values.dim() != 5:
                raise ValueError(
                    f"pixel_values: expected shape (batch, views, channels, height, width), got {tuple(pixel_values.shape)}."
                )
            pixel_values_or_features = pixel_values
        batch, num_views, channels = pixel_values_or_features.shape[:3]
        if pixel_values is not None and channels != self.config.num_image_channels:
            raise ValueError(
                f"pixel_values: expected {self.config.num_image_channels} channels (vision_config.num_channels), got "
                f"{channels}. Use the EIRImageProcessor saved with this model."
            )
        if num_views > self.config.max_views:
            raise ValueError(f"pixel_values: expected at most max_views={self.config.max_views} views, got {num_views}.")
        if pixel_mask is None:
            pixel_mask = torch.ones(batch, num_views, dtype=torch.long, device=pixel_values_or_features.device)
        if pixel_mask.shape != (batch, num_views):
            raise ValueError(f"pixel_mask: expected shape {(batch, num_views)}, got {tuple(pixel_mask.shape)}.")
        if not bool(pixel_mask.bool().any(dim=1).all()):
            raise ValueError("pixel_mask: every study needs at least one real view; drop studies without images.")

        # 2. Image tokens and the pooled embedding used for retrieval.
        image_tokens, memory_mask, image_embeds = self.image_encoder(pixel_values, pixel_mask, backbone_features)

        # 3. Metadata sources (skipped when the fusion ignores them).
        sources: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        history_states = graph_states = retrieved = None
        if self.config.use_history and self.history_encoder is not None:
            history_states, history_mask = self.history_encoder(history_input_ids, history_attention_mask, batch)
            sources["history"] = (history_states, history_mask)
        if self.knowledge_graph is not None:
            if group_ids is None and self.training and self.knowledge_graph.bank_embeddings.shape[0] > 0:
                logger.warning_once(
                    "Training with a retrieval bank but without `group_ids`: a training study can retrieve its own "
                    "report. Pass group_ids (the processor builds them from patient ids)."
                )
            retrieved = self.knowledge_graph.retrieve(image_embeds.detach(), group_ids)
            graph_states, graph_mask = self.knowledge_graph(retrieved, self.history_encoder.embed_tokens)
            sources["graph"] = (graph_states, graph_mask)

        # 4. Fuse metadata into the image tokens.
        fused = self.fusion(image_tokens, sources)
        return EIREncoderOutput(
            last_hidden_state=fused,
            memory_mask=memory_mask,
            image_embeds=image_embeds,
            retrieved_indices=retrieved,
            history_hidden_state=history_states,
            graph_hidden_state=graph_states,
        )


# ---------------------------------------------------------------------------------------------
# Decoding module
# ---------------------------------------------------------------------------------------------


class EIRDecoder(nn.Module):
    def __init__(self, config: EIRConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(EIRDecoderLayer(config, layer_idx=i) for i in range(config.num_hidden_layers))
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.max_positions = config.max_position_embeddings

    def forward(
        self,
        input_ids: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        batch, length = input_ids.shape
        past_length = cache.get_seq_length() if cache is not None else 0
        if past_length + length > self.max_positions:
            raise ValueError(
                f"Report length: expected at most max_position_embeddings={self.max_positions} tokens, got "
                f"{past_length + length}. Lower max_new_tokens or the label length."
            )
        positions = torch.arange(past_length, past_length + length, device=input_ids.device)
        hidden_states = self.dropout(self.embed_tokens(input_ids) + self.embed_positions(positions)[None])

        # Causal mask over past and current tokens (B, 1, T, past + T), plus padding of the keys.
        key_positions = torch.arange(past_length + length, device=input_ids.device)
        allowed = key_positions[None, :] <= positions[:, None]  # (T, past + T)
        allowed = allowed[None, None].expand(batch, 1, length, past_length + length)
        if attention_mask is not None:
            if attention_mask.shape != (batch, past_length + length):
                raise ValueError(
                    f"decoder_attention_mask: expected shape {(batch, past_length + length)} (past and current tokens), "
                    f"got {tuple(attention_mask.shape)}."
                )
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        self_attention_mask = _additive_mask(allowed, hidden_states.dtype)
        memory_attention_mask = _additive_mask(memory_mask.bool()[:, None, None, :], hidden_states.dtype)

        for layer in self.layers:
            hidden_states = layer(hidden_states, self_attention_mask, memory, memory_attention_mask, cache)
        return self.layer_norm(hidden_states)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class EIRPreTrainedModel(PreTrainedModel):
    config_class = EIRConfig
    base_model_prefix = "eir"
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    _no_split_modules = ["EIRDecoderLayer", "EIREncoderLayer", "EIRCrossModalBlock"]


class EIRForReportGeneration(EIRPreTrainedModel, GenerationMixin):
    """EIR report generator: `forward` computes the loss on `labels`; `generate()` writes reports.

    Inputs (all produced by `EIRProcessor`):
        pixel_values (`torch.FloatTensor` of shape `(batch, views, channels, height, width)`)
        pixel_mask (`torch.LongTensor` of shape `(batch, views)`): 1 for real views.
        backbone_features (`torch.FloatTensor` of shape `(batch, views, channels, h, w)`, *optional*):
            precomputed outputs of a frozen vision backbone (`eir.feature_cache`), used instead of
            `pixel_values` when those are None.
        history_input_ids, history_attention_mask (`torch.LongTensor` of shape `(batch, history_length)`):
            the clinical history.
        group_ids (`torch.LongTensor` of shape `(batch,)`, *optional*): patient ids hashed to
            integers; retrieval never returns a bank entry of the same group.
        labels (`torch.LongTensor` of shape `(batch, report_length)`): report token ids ending
            with EOS; -100 marks positions without loss.
    """

    _tied_weights_keys = {"lm_head.weight": "decoder.embed_tokens.weight"}
    # `forward` takes **kwargs but ignores `num_items_in_batch`: the loss is a per-batch mean.
    # Without this flag `Trainer` would assume the loss is already scaled for gradient
    # accumulation and skip its own division by the accumulation steps.
    accepts_loss_kwargs = False

    def __init__(self, config: EIRConfig):
        super().__init__(config)
        self.encoder = EIREncoder(config)
        self.decoder = EIRDecoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_encoder(self, modality: str | None = None):
        if modality in ("image", "video"):
            return self.encoder.image_encoder
        return self.encoder

    def get_decoder(self):
        return self.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.decoder.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # -- retrieval bank ---------------------------------------------------------------------

    @torch.no_grad()
    def set_retrieval_bank(
        self,
        embeddings: torch.Tensor,
        group_ids: torch.Tensor,
        entity_ids: torch.Tensor,
        entity_nodes: torch.Tensor,
    ) -> None:
        """Replace the retrieval bank with training-split entries.

        Args:
            embeddings: (N, hidden_size) image embeddings of the training studies (as returned in
                `EIREncoderOutput.image_embeds`).
            group_ids: (N,) patient group ids of those studies.
            entity_ids: (N, max_entities_per_report, max_entity_length) token ids of their findings,
                padded with `pad_token_id`.
            entity_nodes: (N, max_entities_per_report) general node index linked to each finding,
                -1 for padding.
        """
        graph = self.encoder.knowledge_graph
        if graph is None:
            raise ValueError(
                "set_retrieval_bank: this model has no knowledge graph (use_knowledge_graph=False or fusion='none'), "
                "so it has no retrieval bank."
            )
        size = embeddings.shape[0]
        expected = {
            "embeddings": (size, self.config.hidden_size),
            "group_ids": (size,),
            "entity_ids": (size, self.config.max_entities_per_report, self.config.max_entity_length),
            "entity_nodes": (size, self.config.max_entities_per_report),
        }
        received = {"embeddings": embeddings, "group_ids": group_ids, "entity_ids": entity_ids, "entity_nodes": entity_nodes}
        for name, shape in expected.items():
            if tuple(received[name].shape) != shape:
                raise ValueError(f"set_retrieval_bank: expected {name} of shape {shape}, got {tuple(received[name].shape)}.")
        device = graph.node_embeddings.weight.device
        graph.bank_embeddings = F.normalize(embeddings.float(), dim=-1).to(device)
        graph.bank_group_ids = group_ids.long().to(device)
        graph.bank_entity_ids = entity_ids.to(torch.int32).to(device)
        graph.bank_entity_nodes = entity_nodes.long().to(device)
        self.config.retrieval_bank_size = size

    # -- forward ------------------------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        history_input_ids: torch.Tensor | None = None,
        history_attention_mask: torch.Tensor | None = None,
        group_ids: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: EIREncoderOutput | tuple | None = None,
        labels: torch.Tensor | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        backbone_features: torch.Tensor | None = None,
        **kwargs,
    ) -> EIRReportGenerationOutput:
        # 1. Encode the study unless `generate()` already did.
        if encoder_outputs is None:
            if pixel_values is None and backbone_features is None:
                raise ValueError(
                    "EIRForReportGeneration.forward: pass pixel_values, backbone_features (B, V, C, h, w) or encoder_outputs."
                )
            encoder_outputs = self.encoder(
                pixel_values=pixel_values,
                backbone_features=backbone_features,
                pixel_mask=pixel_mask,
                history_input_ids=history_input_ids,
                history_attention_mask=history_attention_mask,
                group_ids=group_ids,
            )
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = EIREncoderOutput(*encoder_outputs)

        # 2. Teacher forcing: the decoder reads the labels shifted right behind the start token.
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = self._shift_right(labels)
        if decoder_input_ids is None:
            raise ValueError("EIRForReportGeneration.forward: pass labels or decoder_input_ids.")

        # 3. Decode.
        if use_cache and cache is None and not self.training:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        hidden_states = self.decoder(
            decoder_input_ids,
            memory=encoder_outputs.last_hidden_state,
            memory_mask=encoder_outputs.memory_mask,
            attention_mask=decoder_attention_mask,
            cache=cache,
        )
        logits = self.lm_head(hidden_states)  # (B, T, vocab)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)

        return EIRReportGenerationOutput(
            loss=loss,
            logits=logits,
            cache=cache,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_memory_mask=encoder_outputs.memory_mask,
            image_embeds=encoder_outputs.image_embeds,
            retrieved_indices=encoder_outputs.retrieved_indices,
        )

    def _shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        shifted = labels.new_full(labels.shape, self.config.pad_token_id)
        shifted[:, 1:] = labels[:, :-1]
        shifted[:, 0] = self.config.decoder_start_token_id
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self._shift_right(labels)

    def prepare_inputs_for_generation(
        self,
        decoder_input_ids: torch.Tensor,
        cache: Cache | None = None,
        encoder_outputs: EIREncoderOutput | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> dict:
        if cache is not None and cache.get_seq_length() > 0:
            decoder_input_ids = decoder_input_ids[:, -1:]
        return {
            "decoder_input_ids": decoder_input_ids,
            "encoder_outputs": encoder_outputs,
            "cache": cache,
            "use_cache": use_cache,
        }

    @torch.no_grad()
    def encode_images(
        self,
        pixel_values: torch.Tensor | None,
        pixel_mask: torch.Tensor | None = None,
        backbone_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the L2-normalised study embeddings (B, hidden_size) used for retrieval.

        `backbone_features` (B, V, C, h, w) replace the backbone when `pixel_values` is None.
        """
        if pixel_values is not None and pixel_values.dim() == 4:
            pixel_values = pixel_values[:, None]
        views = pixel_values if pixel_values is not None else backbone_features
        if views is None:
            raise ValueError("encode_images: pass pixel_values or backbone_features.")
        if pixel_mask is None:
            pixel_mask = torch.ones(views.shape[:2], dtype=torch.long, device=views.device)
        return self.encoder.image_encoder(pixel_values, pixel_mask, backbone_features)[2]


__all__ = ["EIRForReportGeneration", "EIRPreTrainedModel", "EIREncoderOutput", "EIRReportGenerationOutput"]
