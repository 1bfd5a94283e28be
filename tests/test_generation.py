"""`generate()` options on a small EIR trained on real COVID-19 collection studies."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import GenerationConfig, TextStreamer

from eir.data import load_study_records
from eir.hf_trainer import EIRDataCollator
from modeling_eir import EIRForReportGeneration
from processing_eir import EIRProcessor

MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def model(trained_model_dir) -> EIRForReportGeneration:
    return EIRForReportGeneration.from_pretrained(trained_model_dir).eval()


@pytest.fixture(scope="module")
def processor(trained_model_dir) -> EIRProcessor:
    return EIRProcessor.from_pretrained(trained_model_dir)


@pytest.fixture(scope="module")
def studies(data_root) -> list[dict]:
    """Three test studies: two with two views and a long history, one with one view and a short history."""
    records = [record for record in load_study_records("covid_chestxray", data_dir=data_root) if record["split"] == "test"]
    two_views = [record for record in records if len(record["image_paths"]) == 2][:2]
    one_view = [record for record in records if len(record["image_paths"]) == 1]
    one_view = sorted(one_view, key=lambda record: len(record["history"]))[:1]
    assert len(two_views) == 2, "expected two test studies with two views"
    assert len(one_view) == 1, "expected a test study with one view"
    return two_views + one_view


@pytest.fixture(scope="module")
def inputs(processor, studies) -> dict[str, torch.Tensor]:
    batch = EIRDataCollator(processor, with_labels=False)(studies)
    assert batch["pixel_mask"].tolist()[2] == [1, 0], "the one-view study must carry a padded view"
    assert batch["history_attention_mask"][2].sum() < batch["history_attention_mask"].shape[1], "expected padded history"
    return dict(batch)


@pytest.fixture(scope="module")
def greedy(model, inputs) -> torch.Tensor:
    """Greedy output with the key/value cache, shared by the tests that compare against it."""
    return model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=1, use_cache=True)


@pytest.fixture(scope="module")
def beam_search(model, inputs):
    """Beam search output (3 beams, with scores), shared by the tests that compare against it."""
    return model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=3, return_dict_in_generate=True, output_scores=True)


def _single(processor: EIRProcessor, study: dict) -> dict[str, torch.Tensor]:
    """Inputs of one study prepared on its own, so views and history carry no batch padding."""
    return dict(EIRDataCollator(processor, with_labels=False)([study]))


def _strip(ids: list[int], pad_token_id: int) -> list[int]:
    while ids and ids[-1] == pad_token_id:
        ids = ids[:-1]
    return ids


def _generated_part(ids: list[int], eos_token_id: int) -> list[int]:
    """Tokens after the start token, up to EOS."""
    body = ids[1:]
    return body[: body.index(eos_token_id)] if eos_token_id in body else body


def test_max_new_tokens_limits_length(model, inputs):
    output = model.generate(**inputs, max_new_tokens=5, num_beams=1)
    assert output.shape[0] == 3
    assert output.shape[1] <= 6
    assert (output[:, 0] == model.config.decoder_start_token_id).all()


def test_min_new_tokens_delays_eos(model, inputs):
    output = model.generate(**inputs, min_new_tokens=8, max_new_tokens=8, num_beams=1)
    assert output.shape[1] == 9
    assert not (output[:, 1:] == model.config.eos_token_id).any()


def test_greedy_same_with_and_without_cache(model, inputs, greedy):
    uncached = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=1, use_cache=False)
    assert torch.equal(greedy, uncached)


def test_beam_search_same_with_and_without_cache(model, inputs, beam_search):
    uncached = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=3, use_cache=False)
    assert torch.equal(beam_search.sequences, uncached)


def test_batched_beam_search_matches_single_studies(model, processor, studies, beam_search):
    settings = dict(max_new_tokens=MAX_NEW_TOKENS, num_beams=3, return_dict_in_generate=True, output_scores=True)
    batched = beam_search
    pad = model.config.pad_token_id
    for index in range(len(studies)):
        single = model.generate(**_single(processor, studies[index]), **settings)
        assert _strip(batched.sequences[index].tolist(), pad) == _strip(single.sequences[0].tolist(), pad), f"study {index}"
        torch.testing.assert_close(batched.sequences_scores[index], single.sequences_scores[0], atol=1e-4, rtol=1e-4)


def test_batched_encoder_matches_single_studies(model, processor, inputs, studies):
    with torch.no_grad():
        batched = model.get_encoder()(**inputs)
        for index in range(len(studies)):
            single = model.get_encoder()(**_single(processor, studies[index]))
            torch.testing.assert_close(batched.last_hidden_state[index], single.last_hidden_state[0], atol=1e-4, rtol=1e-4)
            assert torch.equal(batched.retrieved_indices[index], single.retrieved_indices[0])


def test_sampling_is_reproducible_with_seed(model, inputs):
    settings = dict(do_sample=True, temperature=1.5, top_p=0.95, max_new_tokens=MAX_NEW_TOKENS)
    torch.manual_seed(0)
    first = model.generate(**inputs, **settings)
    torch.manual_seed(0)
    second = model.generate(**inputs, **settings)
    torch.manual_seed(1)
    other_seed = model.generate(**inputs, **settings)

    assert torch.equal(first, second)
    assert not torch.equal(first, other_seed)


def test_tiny_top_p_equals_greedy(model, inputs, greedy):
    torch.manual_seed(0)
    # top_p keeps at least one token, so a tiny top_p leaves only the most likely one.
    nucleus = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, top_p=1e-6, num_beams=1)
    assert torch.equal(greedy, nucleus)


def test_no_repeat_ngram_size(model, inputs, greedy):
    eos = model.config.eos_token_id
    constrained = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=1, no_repeat_ngram_size=2)

    def bigrams(ids: list[int]) -> list[tuple[int, int]]:
        return list(zip(ids, ids[1:]))

    def sequence(row: list[int]) -> list[int]:
        return row[:1] + _generated_part(row, eos)

    # The undertrained model repeats bigrams when unconstrained, so the option is what prevents them.
    unconstrained = [sequence(row) for row in greedy.tolist()]
    assert any(len(set(bigrams(ids))) < len(bigrams(ids)) for ids in unconstrained)
    for ids in (sequence(row) for row in constrained.tolist()):
        assert len(set(bigrams(ids))) == len(bigrams(ids)), ids


def test_repetition_penalty_reduces_repeats(model, inputs, greedy):
    eos = model.config.eos_token_id
    plain = greedy
    penalised = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=1, repetition_penalty=5.0)

    def distinct_fraction(output: torch.Tensor) -> float:
        rows = [_generated_part(row, eos) for row in output.tolist()]
        return sum(len(set(row)) for row in rows) / max(1, sum(len(row) for row in rows))

    assert not torch.equal(plain, penalised)
    assert distinct_fraction(penalised) > distinct_fraction(plain)


def test_num_return_sequences(model, inputs, beam_search):
    best = beam_search.sequences
    several = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, num_beams=3, num_return_sequences=3)
    pad = model.config.pad_token_id

    assert several.shape[0] == 3 * 3
    for index in range(3):
        beams = [_strip(row, pad) for row in several[3 * index : 3 * index + 3].tolist()]
        assert beams[0] == _strip(best[index].tolist(), pad)
        assert len({tuple(beam) for beam in beams}) == 3


class _CapturingStreamer(TextStreamer):
    def __init__(self, tokenizer, **decode_kwargs):
        super().__init__(tokenizer, skip_prompt=True, **decode_kwargs)
        self.pieces: list[str] = []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.pieces.append(text)


def test_text_streamer_matches_returned_text(model, processor, inputs, studies):
    streamer = _CapturingStreamer(processor.tokenizer, skip_special_tokens=True)
    output = model.generate(**_single(processor, studies[0]), max_new_tokens=MAX_NEW_TOKENS, num_beams=1, streamer=streamer)

    assert len(streamer.pieces) >= 2
    assert "".join(streamer.pieces).strip() == processor.decode(output[0], skip_special_tokens=True).strip()


def test_saved_generation_config_matches_recipe(model, trained_model_dir):
    saved = json.loads((trained_model_dir / "generation_config.json").read_text())
    recipe = json.loads((trained_model_dir.parent / "recipe.json").read_text())
    assert recipe["generation"], "the training recipe should set generation defaults"
    for key, value in recipe["generation"].items():
        assert saved[key] == value, key
        assert getattr(model.generation_config, key) == value, key
    assert saved["decoder_start_token_id"] == model.config.decoder_start_token_id
    assert saved["eos_token_id"] == model.config.eos_token_id
    assert saved["pad_token_id"] == model.config.pad_token_id


def test_generate_uses_saved_generation_config(trained_model_dir, inputs, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained_model_dir, folder)
    defaults = GenerationConfig.from_pretrained(folder)
    defaults.max_new_tokens = 4
    defaults.num_beams = 2
    defaults.no_repeat_ngram_size = 2
    defaults.save_pretrained(folder)

    reloaded = EIRForReportGeneration.from_pretrained(folder).eval()
    from_defaults = reloaded.generate(**inputs)
    explicit = reloaded.generate(**inputs, max_new_tokens=4, num_beams=2, no_repeat_ngram_size=2)

    assert reloaded.generation_config.num_beams == 2
    assert from_defaults.shape[1] <= 5
    assert torch.equal(from_defaults, explicit)
    # An explicit argument overrides the saved default.
    assert reloaded.generate(**inputs, max_new_tokens=2, num_beams=1).shape[1] <= 3
