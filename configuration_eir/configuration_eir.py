"""Configuration of EIR, a chest X-ray report generator.

EIR ("Enhanced Image Representations for Medical Report Generation", Sun et al., arXiv 2512.23185)
encodes the images of one study, the patient's clinical history and a knowledge graph built from
retrieved training reports, fuses the metadata into the image representation with cross-modal
transformers, and decodes a report. Every module is a switch in this configuration so that each
ablation is one field.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

logger = logging.get_logger(__name__)

VIEW_AGGREGATIONS = ("max", "mean", "attention", "concat")
FUSION_TYPES = ("cross_modal", "add_layernorm", "none")

# General chest nodes of the knowledge graph: organs and common observations of a chest radiograph.
# The graph of Li et al. (DCL, CVPR 2023) also uses 27 general nodes, but its node list is not
# reproduced here. NOTE: this list is a reconstruction; change it through the config.
DEFAULT_KNOWLEDGE_GRAPH_NODES = (
    "chest",
    "heart",
    "cardiomegaly",
    "mediastinum",
    "aorta",
    "hilum",
    "lung",
    "opacity",
    "consolidation",
    "pneumonia",
    "atelectasis",
    "edema",
    "nodule",
    "mass",
    "emphysema",
    "fibrosis",
    "granuloma",
    "pleura",
    "effusion",
    "pneumothorax",
    "thickening",
    "diaphragm",
    "bone",
    "fracture",
    "spine",
    "soft tissue",
    "device",
)

# Undirected edges between general nodes: organ to observation, plus every organ to "chest".
DEFAULT_KNOWLEDGE_GRAPH_EDGES = (
    ("chest", "heart"),
    ("chest", "mediastinum"),
    ("chest", "lung"),
    ("chest", "pleura"),
    ("chest", "diaphragm"),
    ("chest", "bone"),
    ("chest", "soft tissue"),
    ("chest", "device"),
    ("heart", "cardiomegaly"),
    ("mediastinum", "aorta"),
    ("mediastinum", "hilum"),
    ("mediastinum", "heart"),
    ("lung", "opacity"),
    ("lung", "consolidation"),
    ("lung", "pneumonia"),
    ("lung", "atelectasis"),
    ("lung", "edema"),
    ("lung", "nodule"),
    ("lung", "mass"),
    ("lung", "emphysema"),
    ("lung", "fibrosis"),
    ("lung", "granuloma"),
    ("lung", "hilum"),
    ("opacity", "consolidation"),
    ("opacity", "pneumonia"),
    ("nodule", "granuloma"),
    ("pleura", "effusion"),
    ("pleura", "pneumothorax"),
    ("pleura", "thickening"),
    ("bone", "fracture"),
    ("bone", "spine"),
)


def _expect(condition: bool, field: str, expected: str, got: Any) -> None:
    if not condition:
        raise ValueError(f"EIRConfig.{field}: expected {expected}, got {got!r}.")


class EIRConfig(PreTrainedConfig):
    r"""
    Configuration of [`EIRForReportGeneration`].

    The model has three modules. Encoding: a vision backbone (`vision_config`, ResNet family by
    default) encodes each view, the views are aggregated (`view_aggregation`), a transformer
    encoder reads the clinical history, and a graph-masked transformer encodes the knowledge
    graph (general chest nodes plus findings of the `retrieval_top_k` most similar training
    reports). Aggregation: `fusion` merges history and graph into the image tokens. Decoding: a
    transformer decoder with cross-attention to the fused image tokens writes the report.

    Args:
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision backbone, any transformers vision model whose output has
            `last_hidden_state` of shape (batch, channels, height, width). Defaults to a ResNet-50.
        vision_weights (`str`, *optional*):
            Where the backbone weights came from (a local file or folder), stored for provenance.
        image_size (`int`): side of the square input images, in pixels.
        max_views (`int`): maximum number of views per study.
        view_aggregation (`str`): `"max"` (element-wise max over views, as in CGI), `"mean"`,
            `"attention"` (learned weights per view) or `"concat"` (token concatenation with view
            embeddings).
        hidden_size (`int`): width of every transformer in the model.
        num_attention_heads (`int`): attention heads of every transformer.
        intermediate_size (`int`): width of the feed-forward layers.
        dropout (`float`), attention_dropout (`float`): dropout probabilities.
        use_history (`bool`): encode the clinical history.
        history_num_layers (`int`): layers of the history encoder.
        use_knowledge_graph (`bool`): encode the knowledge graph.
        knowledge_graph_nodes (`list[str]`): names of the general chest nodes.
        knowledge_graph_edges (`list[list[str]]`): undirected edges between general nodes, by name.
        knowledge_graph_num_layers (`int`): layers of the graph-masked transformer.
        retrieval_top_k (`int`): number of training reports retrieved per study.
        max_entities_per_report (`int`): entities kept per retrieved report.
        max_entity_length (`int`): tokens kept per entity.
        retrieval_bank_size (`int`): number of training reports in the retrieval bank; set when
            the bank is built and used to size its buffers when a saved model is loaded.
        fusion (`str`): `"cross_modal"` (image tokens query each metadata source through stacked
            pre-LayerNorm cross-attention blocks), `"add_layernorm"` (`LayerNorm(image + metadata)`)
            or `"none"` (image only).
        fusion_num_layers (`int`): depth of each cross-modal stack.
        num_hidden_layers (`int`): decoder layers.
        vocab_size (`int`): size of the shared report and history vocabulary.
        max_position_embeddings (`int`): maximum report and history length, in tokens.
        pad_token_id, bos_token_id, eos_token_id, unk_token_id (`int`): distinct special token ids.
        decoder_start_token_id (`int`): first decoder token; defaults to `bos_token_id`.
        tie_word_embeddings (`bool`): share the decoder input embedding with the output projection.
        initializer_range (`float`): standard deviation of the weight initialisation.
    """

    model_type = "eir"
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet"),
    }

    vision_config: PreTrainedConfig | dict | None = None
    vision_weights: str | None = None
    image_size: int = 224
    max_views: int = 2
    view_aggregation: str = "max"

    hidden_size: int = 256
    num_attention_heads: int = 8
    intermediate_size: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0

    use_history: bool = True
    history_num_layers: int = 2

    use_knowledge_graph: bool = True
    knowledge_graph_nodes: list[str] | tuple[str, ...] | None = None
    knowledge_graph_edges: list[list[str]] | tuple | None = None
    knowledge_graph_num_layers: int = 2
    retrieval_top_k: int = 3
    max_entities_per_report: int = 8
    max_entity_length: int = 16
    retrieval_bank_size: int = 0

    fusion: str = "cross_modal"
    fusion_num_layers: int = 2

    num_hidden_layers: int = 3
    vocab_size: int = 1000
    max_position_embeddings: int = 512
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    unk_token_id: int = 3
    decoder_start_token_id: int | None = None
    tie_word_embeddings: bool = True
    is_encoder_decoder: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.knowledge_graph_nodes is None:
            self.knowledge_graph_nodes = list(DEFAULT_KNOWLEDGE_GRAPH_NODES)
        if self.knowledge_graph_edges is None:
            self.knowledge_graph_edges = [list(edge) for edge in DEFAULT_KNOWLEDGE_GRAPH_EDGES]
        self.knowledge_graph_nodes = list(self.knowledge_graph_nodes)
        self.knowledge_graph_edges = [list(edge) for edge in self.knowledge_graph_edges]
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.bos_token_id
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise `ValueError` naming the first invalid field, what was expected and what was received."""
        _expect(
            self.view_aggregation in VIEW_AGGREGATIONS, "view_aggregation", f"one of {VIEW_AGGREGATIONS}",
            self.view_aggregation,
        )
        _expect(self.fusion in FUSION_TYPES, "fusion", f"one of {FUSION_TYPES}", self.fusion)
        for field in (
            "image_size", "max_views", "hidden_size", "num_attention_heads", "intermediate_size",
            "num_hidden_layers", "vocab_size", "max_position_embeddings",
        ):
            value = getattr(self, field)
            _expect(isinstance(value, int) and value > 0, field, "a positive integer", value)
        for field in ("history_num_layers", "knowledge_graph_num_layers", "fusion_num_layers", "retrieval_bank_size"):
            value = getattr(self, field)
            _expect(isinstance(value, int) and value >= 0, field, "a non-negative integer", value)
        for field in ("retrieval_top_k", "max_entities_per_report", "max_entity_length"):
            value = getattr(self, field)
            _expect(isinstance(value, int) and value > 0, field, "a positive integer", value)
        _expect(
            self.hidden_size % self.num_attention_heads == 0,
            "hidden_size",
            f"a multiple of num_attention_heads={self.num_attention_heads}",
            self.hidden_size,
        )
        for field in ("dropout", "attention_dropout"):
            value = getattr(self, field)
            _expect(0.0 <= value < 1.0, field, "a probability in [0, 1)", value)

        special = {
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "unk_token_id": self.unk_token_id,
        }
        for name, token_id in special.items():
            _expect(
                isinstance(token_id, int) and 0 <= token_id < self.vocab_size, name,
                f"an id in [0, vocab_size={self.vocab_size})", token_id,
            )
        _expect(
            len(set(special.values())) == len(special), "special token ids",
            "distinct ids for pad, bos, eos and unk", special,
        )

        nodes = self.knowledge_graph_nodes
        _expect(len(nodes) > 0 and len(set(nodes)) == len(nodes), "knowledge_graph_nodes", "a non-empty list of distinct names", nodes)
        for edge in self.knowledge_graph_edges:
            _expect(
                len(edge) == 2 and all(name in nodes for name in edge), "knowledge_graph_edges",
                "pairs of names from knowledge_graph_nodes", edge,
            )
        if self.fusion != "none" and not (self.use_history or self.use_knowledge_graph):
            raise ValueError(
                f"EIRConfig.fusion: expected 'none' when use_history and use_knowledge_graph are both False, "
                f"got {self.fusion!r}. Set fusion='none' or enable a metadata source."
            )
        if self.fusion == "cross_modal":
            _expect(self.fusion_num_layers > 0, "fusion_num_layers", "at least 1 layer for fusion='cross_modal'", self.fusion_num_layers)
        vision_channels = getattr(self.vision_config, "num_channels", None)
        _expect(vision_channels in (1, 3, None), "vision_config.num_channels", "1 or 3", vision_channels)

    @property
    def num_image_channels(self) -> int:
        """Number of input channels the vision backbone expects."""
        return int(getattr(self.vision_config, "num_channels", 3))


__all__ = ["EIRConfig"]
