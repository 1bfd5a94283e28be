"""Shared checks of EIRForReportGeneration on tiny random configs."""

from __future__ import annotations

import itertools

import pytest
import torch

from configuration_eir import EIRConfig
from modeling_eir import EIRForReportGeneration

TINY_VISION = {"model_type": "resnet", "layer_type": "basic", "embedding_size": 8, "hidden_sizes": [16, 32], "depths": [1, 1]}
VOCAB = 99


def tiny_config(**overrides) -> EIRConfig:
    settings = dict(
        vision_config=TINY_VISION, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
        num_hidden_layers=2, history_num_layers=1, knowledge_graph_num_layers=1, fusion_num_layers=1,
        image_size=64, max_entities_per_report=3, max_entity_length=4, max_position_embeddings=64, dropout=0.0,
    )
    settings.update(overrides)
    return EIRConfig(**settings)


def tiny_inputs(batch: int = 2, views: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    pixel_mask = torch.ones(batch, views, dtype=torch.long)
    pixel_mask[-1, 1:] = 0  # the last study has one view
    history = torch.randint(4, VOCAB, (batch, 7), generator=generator)
    history_mask = torch.ones_like(history)
    history_mask[-1, 5:] = 0
    history[-1, 5:] = 0
    labels = torch.randint(4, VOCAB, (batch, 9), generator=generator)
    labels[-1, 6:] = -100
    return {
        "pixel_values": torch.randn(batch, views, 3, 64, 64, generator=generator),
        "pixel_mask": pixel_mask,
        "history_input_ids": history,
        "history_attention_mask": history_mask,
        "group_ids": torch.arange(batch) + 100,
        "labels": labels,
    }


def fill_bank(model: EIRForReportGeneration, size: int = 5, group_offset: int = 100) -> None:
    config = model.config
    generator = torch.Generator().manual_seed(1)
    model.set_retrieval_bank(
        torch.randn(size, config.hidden_size, generator=generator),
        torch.arange(size) + group_offset,
        torch.randint(4, VOCAB, (size, config.max_entities_per_report, config.max_entity_length), generator=generator),
        torch.tensor([[0, 5, -1]] * size),
    )


# Parameters that a given forward pass legitimately leaves unused.
ALWAYS_UNUSED = {"encoder.history_encoder.no_history.weight"}


@pytest.mark.parametrize(
    "aggregation,fusion", list(itertools.product(["max", "mean", "attention", "concat"], ["cross_modal", "add_layernorm", "none"]))
)
def test_forward_backward_every_switch(aggregation, fusion):
    torch.manual_seed(0)
    model = EIRForReportGeneration(tiny_config(view_aggregation=aggregation, fusion=fusion))
    if model.encoder.knowledge_graph is not None:
        fill_bank(model, group_offset=200)
    output = model(**tiny_inputs())

    assert output.logits.shape == (2, 9, VOCAB)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    without_gradient = {name for name, parameter in model.named_parameters() if parameter.grad is None}
    assert without_gradient <= ALWAYS_UNUSED, f"parameters without gradient: {sorted(without_gradient - ALWAYS_UNUSED)}"
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name


def test_fusion_none_builds_no_metadata_modules():
    model = EIRForReportGeneration(tiny_config(fusion="none"))
    assert model.encoder.history_encoder is None
    assert model.encoder.knowledge_graph is None


def test_labels_minus_100_ignored():
    torch.manual_seed(0)
    model = EIRForReportGeneration(tiny_config()).eval()
    inputs = tiny_inputs()
    loss = model(**inputs).loss
    padded = dict(inputs)
    padded["labels"] = torch.cat([inputs["labels"], torch.full((2, 4), -100)], dim=1)
    padded_loss = model(**padded).loss
    torch.testing.assert_close(loss, padded_loss)


def test_tied_embeddings():
    model = EIRForReportGeneration(tiny_config())
    assert model.lm_head.weight.data_ptr() == model.decoder.embed_tokens.weight.data_ptr()


def test_greedy_cache_matches_no_cache():
    torch.manual_seed(0)
    model = EIRForReportGeneration(tiny_config()).eval()
    fill_bank(model)
    inputs = tiny_inputs()
    inputs.pop("labels")
    with_cache = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    without_cache = model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without_cache)


def test_beam_search_returns_sequences():
    torch.manual_seed(0)
    model = EIRForReportGeneration(tiny_config()).eval()
    inputs = tiny_inputs()
    inputs.pop("labels")
    output = model.generate(**inputs, max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert output.shape[0] == 4
    assert (output[:, 0] == model.config.decoder_start_token_id).all()


def test_batched_greedy_equals_one_at_a_time():
    torch.manual_seed(0)
    model = EIRForReportGeneration(tiny_config()).eval()
    fill_bank(model)
    inputs = tiny_inputs(batch=3)
    inputs.pop("labels")
    batched = model.generate(**inputs, max_new_tokens=6)
    for row in range(3):
        views = int(inputs["pixel_mask"][row].sum())
        history_length = int(inputs["history_attention_mask"][row].sum())
        single = model.generate(
            pixel_values=inputs["pixel_values"][row : row + 1, :views],
            pixel_mask=inputs["pixel_mask"][row : row + 1, :views],
            history_input_ids=inputs["history_input_ids"][row : row + 1, :history_length],
            history_attention_mask=inputs["history_attention_mask"][row : row + 1, :history_length],
            group_ids=inputs["group_ids"][row : row + 1],
            max_new_tokens=6,
        )
        length = single.shape[1]
        assert torch.equal(batched[row, :length], single[0]), f"study {row} differs"


def test_save_load_same_generation(tmp_path):
    torch.manual_seed(0)
    model = EIRForReportGeneration(tiny_config()).eval()
    fill_bank(model, size=6)
    inputs = tiny_inputs()
    inputs.pop("labels")
    expected = model.generate(**inputs, max_new_tokens=8)
    model.save_pretrained(tmp_path)
    reloaded = EIRForReportGeneration.from_pretrained(tmp_path).eval()

    assert reloaded.config.retrieval_bank_size == 6
    torch.testing.assert_close(reloaded.encoder.knowledge_graph.bank_embeddings, model.encoder.knowledge_graph.bank_embeddings)
    assert torch.equal(reloaded.generate(**inputs, max_new_tokens=8), expected)


def test_retrieval_skips_same_patient():
    model = EIRForReportGeneration(tiny_config(retrieval_top_k=2)).eval()
    fill_bank(model, size=4, group_offset=100)  # groups 100..103
    graph = model.encoder.knowledge_graph
    query = graph.bank_embeddings[:1].clone()  # identical to bank row 0 (group 100)
    assert graph.retrieve(query, None)[0, 0].item() == 0
    retrieved = graph.retrieve(query, torch.tensor([100]))
    assert 0 not in retrieved[0].tolist()


def test_retrieval_pads_when_bank_small():
    model = EIRForReportGeneration(tiny_config(retrieval_top_k=3)).eval()
    fill_bank(model, size=2, group_offset=100)
    retrieved = model.encoder.knowledge_graph.retrieve(model.encoder.knowledge_graph.bank_embeddings[:1], torch.tensor([100]))
    assert retrieved[0].tolist() == [1, -1, -1]


def test_empty_bank_uses_general_nodes_only():
    model = EIRForReportGeneration(tiny_config()).eval()
    inputs = tiny_inputs()
    encoded = model.encoder(**{k: v for k, v in inputs.items() if k != "labels"})
    assert (encoded.retrieved_indices == -1).all()
    num_general = len(model.config.knowledge_graph_nodes)
    assert encoded.graph_hidden_state.shape[1] == num_general + 3 * model.config.max_entities_per_report


def test_set_retrieval_bank_checks_shapes():
    model = EIRForReportGeneration(tiny_config())
    with pytest.raises(ValueError, match="entity_ids of shape"):
        model.set_retrieval_bank(torch.randn(2, 32), torch.zeros(2, dtype=torch.long), torch.zeros(2, 3, 5), torch.zeros(2, 3))


def test_wrong_channel_count_named():
    model = EIRForReportGeneration(tiny_config())
    inputs = tiny_inputs()
    inputs["pixel_values"] = inputs["pixel_values"][:, :, :1]
    with pytest.raises(ValueError, match="expected 3 channels"):
        model(**inputs)


def test_study_without_view_rejected():
    model = EIRForReportGeneration(tiny_config())
    inputs = tiny_inputs()
    inputs["pixel_mask"][0] = 0
    with pytest.raises(ValueError, match="at least one real view"):
        model(**inputs)


def test_too_many_views_rejected():
    model = EIRForReportGeneration(tiny_config(max_views=1))
    with pytest.raises(ValueError, match="at most max_views=1"):
        model(**tiny_inputs())


def test_no_history_input_still_generates():
    model = EIRForReportGeneration(tiny_config()).eval()
    inputs = tiny_inputs()
    output = model.generate(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"], max_new_tokens=4)
    assert output.shape[0] == 2


def test_single_view_4d_pixel_values():
    model = EIRForReportGeneration(tiny_config()).eval()
    output = model.generate(pixel_values=torch.randn(2, 3, 64, 64), max_new_tokens=3)
    assert output.shape[0] == 2


def test_other_resolution_works():
    model = EIRForReportGeneration(tiny_config()).eval()
    output = model(pixel_values=torch.randn(1, 1, 3, 96, 80), labels=torch.tensor([[5, 6, 2]]))
    assert torch.isfinite(output.loss)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"fusion": "concat"}, "EIRConfig.fusion: expected one of"),
        ({"view_aggregation": "sum"}, "EIRConfig.view_aggregation"),
        ({"pad_token_id": 2}, "distinct ids"),
        ({"hidden_size": 30}, "multiple of num_attention_heads"),
        ({"knowledge_graph_edges": [["heart", "kidney"]]}, "pairs of names"),
        ({"dropout": 1.5}, "probability"),
        ({"vocab_size": 0}, "positive integer"),
        ({"use_history": False, "use_knowledge_graph": False}, "fusion='none'"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_round_trip(tmp_path):
    config = tiny_config(fusion="add_layernorm", view_aggregation="concat")
    config.save_pretrained(tmp_path)
    reloaded = EIRConfig.from_pretrained(tmp_path)
    assert reloaded.fusion == "add_layernorm"
    assert reloaded.view_aggregation == "concat"
    assert reloaded.vision_config.hidden_sizes == [16, 32]
    assert reloaded.decoder_start_token_id == reloaded.bos_token_id


def test_graph_mask_separates_reports():
    """Findings of one retrieved report never attend to findings of another report."""
    torch.manual_seed(0)
    model = EIRForReportGeneration(tiny_config(retrieval_top_k=2)).eval()
    graph = model.encoder.knowledge_graph
    retrieved = torch.tensor([[0, 1]])
    fill_bank(model, size=2)
    embeddings = model.encoder.history_encoder.embed_tokens
    before, _ = graph(retrieved, embeddings)
    graph.bank_entity_ids[1] = (graph.bank_entity_ids[1] + 7) % VOCAB  # change only report 1's findings
    after, _ = graph(retrieved, embeddings)
    num_general = len(model.config.knowledge_graph_nodes)
    entities = model.config.max_entities_per_report
    report_0 = slice(num_general, num_general + entities)
    report_1 = slice(num_general + entities, num_general + 2 * entities)
    # With one graph layer, report 0's findings see only themselves and their general nodes.
    torch.testing.assert_close(after[:, report_0], before[:, report_0])
    assert not torch.allclose(after[:, report_1], before[:, report_1])


def test_retrieval_embedding_ignores_position_codes():
    torch.manual_seed(0)
    model = EIRForReportGeneration(tiny_config()).eval()
    pixels = torch.randn(1, 1, 3, 64, 64)
    with torch.no_grad():
        content, _ = model.encoder.image_encoder.encode_views(pixels[:, 0])
        expected = torch.nn.functional.normalize(content.mean(dim=1), dim=-1)
        torch.testing.assert_close(model.encode_images(pixels), expected)


def test_decoder_mask_wrong_length_rejected():
    model = EIRForReportGeneration(tiny_config())
    inputs = tiny_inputs()
    with pytest.raises(ValueError, match="decoder_attention_mask"):
        model(**inputs, decoder_attention_mask=torch.ones(2, 3, dtype=torch.long))
