"""PEFT LoRA on the fusion and decoder attention of a trained EIR model."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from configuration_eir import EIRConfig
from eir.data import load_study_records
from eir.hf_trainer import EIRDataCollator
from eir.lora import apply_lora, lora_target_modules
from modeling_eir import EIRForReportGeneration
from processing_eir import EIRProcessor


@pytest.fixture(scope="module")
def batch(trained_model_dir, data_root) -> dict[str, torch.Tensor]:
    processor = EIRProcessor.from_pretrained(trained_model_dir)
    records = [record for record in load_study_records("covid_chestxray", data_dir=data_root) if record["split"] == "train"][:2]
    return dict(EIRDataCollator(processor)(records))


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_target_modules_follow_config():
    config = EIRConfig(fusion="cross_modal", fusion_num_layers=2, num_hidden_layers=3)
    names = lora_target_modules(config)

    assert "encoder.fusion.stacks.history.1.cross_attn.out_proj" in names
    assert "encoder.fusion.stacks.graph.0.cross_attn.q_proj" in names
    assert "decoder.layers.2.encoder_attn.v_proj" in names
    assert len(names) == 2 * 2 * 4 + 3 * 2 * 4
    assert not any(".self_attn." in name and name.startswith("encoder.") for name in names)


def test_target_modules_without_fusion_blocks():
    names = lora_target_modules(EIRConfig(fusion="add_layernorm", num_hidden_layers=2))
    assert all(name.startswith("decoder.layers.") for name in names)
    assert len(names) == 2 * 2 * 4


def test_apply_lora_rejects_unknown_module(trained_model_dir):
    model = EIRForReportGeneration.from_pretrained(trained_model_dir)
    with pytest.raises(ValueError, match="no modules"):
        apply_lora(model, target_modules=["decoder.layers.99.self_attn.q_proj"])


def test_lora_training_save_reload_merge(trained_model_dir, batch, tmp_path):
    base = EIRForReportGeneration.from_pretrained(trained_model_dir)
    expected_targets = set(lora_target_modules(base.config))
    model = apply_lora(base, r=4, alpha=8, dropout=0.0)

    # 1. Only the LoRA matrices of the target modules are trainable.
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable
    assert all(".lora_A." in name or ".lora_B." in name for name in trainable), sorted(trainable)[:5]
    adapted = {name.removeprefix("base_model.model.").split(".lora_")[0] for name in trainable}
    assert adapted == expected_targets

    # 2. Training steps change the LoRA weights and nothing else.
    frozen_before = {name: parameter.detach().clone() for name, parameter in model.named_parameters() if not parameter.requires_grad}
    buffers_before = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    lora_before = {name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad}
    optimizer = torch.optim.AdamW([parameter for parameter in model.parameters() if parameter.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert torch.isfinite(torch.tensor(losses)).all()
    changed = [name for name, parameter in model.named_parameters() if parameter.requires_grad and not torch.equal(parameter, lora_before[name])]
    assert any(".lora_B." in name for name in changed)
    assert any(".lora_A." in name for name in changed)
    assert all(torch.equal(parameter, frozen_before[name]) for name, parameter in model.named_parameters() if not parameter.requires_grad)
    # BatchNorm running statistics of the frozen backbone are not in the adapter, so they must not move.
    assert all(torch.equal(buffer, buffers_before[name]) for name, buffer in model.named_buffers())
    adapted_logits = _logits(model, batch)
    assert not torch.allclose(adapted_logits, _logits(EIRForReportGeneration.from_pretrained(trained_model_dir), batch))

    # 3. The adapter folder holds only the adapter.
    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_config.json").is_file()
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert not (adapter_dir / "model.safetensors").exists()

    # 4. Reloading onto a fresh base gives the same logits.
    reloaded = PeftModel.from_pretrained(EIRForReportGeneration.from_pretrained(trained_model_dir), adapter_dir)
    torch.testing.assert_close(_logits(reloaded, batch), adapted_logits)

    generate_inputs = {key: value for key, value in batch.items() if key != "labels"}
    adapter_generated = reloaded.generate(**generate_inputs, max_new_tokens=6, num_beams=1)

    # 5. Merging gives a plain EIR model with the same logits that generates the same ids.
    merged = reloaded.merge_and_unload()
    assert isinstance(merged, EIRForReportGeneration)
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, batch), adapted_logits, atol=1e-4, rtol=1e-4)
    generated = merged.generate(**generate_inputs, max_new_tokens=6, num_beams=1)
    assert generated.shape[0] == 2
    assert generated.shape[1] <= 7
    assert (generated[:, 0] == merged.config.decoder_start_token_id).all()
    torch.testing.assert_close(generated, adapter_generated)
