"""LoRA adapters (PEFT) on the attention projections of the fusion blocks and the report decoder.

The targets are the `q_proj`, `k_proj`, `v_proj` and `out_proj` layers of

- the cross-modal fusion blocks, `encoder.fusion.stacks.<source>.<i>.cross_attn`, and
- the decoder layers, `decoder.layers.<i>.self_attn` and `decoder.layers.<i>.encoder_attn`.

The image backbone, the history encoder and the knowledge-graph encoder stay frozen. Their
BatchNorm layers are frozen too (see `freeze_batch_norm`). The retrieval bank lives in buffers of
the base model, so an adapter folder does not carry it: load the adapter onto the model folder it
was trained from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from peft import LoraConfig, PeftModel, get_peft_model
import torch
from torch import nn

from configuration_eir import EIRConfig

logger = logging.getLogger(__name__)

PROJECTION_NAMES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
DECODER_ATTENTION_NAMES: tuple[str, ...] = ("self_attn", "encoder_attn")


def lora_target_modules(config: EIRConfig, include_fusion: bool = True, include_decoder: bool = True) -> list[str]:
    """List the full names of the attention projections that LoRA adapts in a model built from `config`.

    Fusion blocks exist only with `fusion="cross_modal"`, one stack per metadata source in use
    (`history` when `use_history`, `graph` when `use_knowledge_graph`).
    """
    names: list[str] = []
    if include_fusion and config.fusion == "cross_modal":
        sources = [name for name, used in (("history", config.use_history), ("graph", config.use_knowledge_graph)) if used]
        for source in sources:
            for block in range(config.fusion_num_layers):
                names.extend(f"encoder.fusion.stacks.{source}.{block}.cross_attn.{projection}" for projection in PROJECTION_NAMES)
    if include_decoder:
        for layer in range(config.num_hidden_layers):
            for attention in DECODER_ATTENTION_NAMES:
                names.extend(f"decoder.layers.{layer}.{attention}.{projection}" for projection in PROJECTION_NAMES)
    if not names:
        raise ValueError(
            f"No LoRA target modules for fusion={config.fusion!r}, include_fusion={include_fusion}, "
            f"include_decoder={include_decoder}; enable at least the decoder."
        )
    return names


def _use_running_statistics(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    # Runs before each forward: the layer normalises with its stored statistics and never updates them.
    module.training = False


def freeze_batch_norm_layers(model: nn.Module) -> int:
    """Keep every BatchNorm layer without trainable parameters in inference mode, also under `model.train()`.

    In training mode a BatchNorm layer updates its running statistics even when its weights are
    frozen. Those buffers belong to the base model and are not in a LoRA adapter, so the adapter
    would no longer reproduce the fine-tuned model. Returns the number of layers frozen.
    """
    frozen = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(parameter.requires_grad for parameter in module.parameters()):
            module.register_forward_pre_hook(_use_running_statistics)
            module.training = False
            frozen += 1
    return frozen


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
    freeze_batch_norm: bool = True,
) -> PeftModel:
    """Wrap `model` in a `PeftModel` with LoRA adapters; only the adapter weights stay trainable.

    Args:
        model: an `EIRForReportGeneration`. PEFT changes it in place, so keep no other reference
            to it for full fine-tuning.
        r: rank of the update matrices.
        alpha: LoRA scaling numerator; the update is scaled by `alpha / r`.
        dropout: dropout on the input of the LoRA branch during training.
        target_modules: full module names to adapt; default `lora_target_modules(model.config)`.
        freeze_batch_norm: keep the frozen BatchNorm layers of the image backbone in inference
            mode (`freeze_batch_norm_layers`). The hooks stay on the modules after
            `merge_and_unload()`.

    `generate()`, `save_pretrained` (an adapter folder with `adapter_config.json` and
    `adapter_model.safetensors`) and `merge_and_unload()` work on the returned model.
    """
    if r < 1:
        raise ValueError(f"apply_lora: r must be a positive rank, got {r}.")
    targets = list(target_modules) if target_modules is not None else lora_target_modules(model.config)
    module_names = {name for name, _ in model.named_modules()}
    missing = [name for name in targets if name not in module_names]
    if missing:
        raise ValueError(
            f"apply_lora: the model has no modules {missing[:4]}{' ...' if len(missing) > 4 else ''}; "
            "expected names as returned by lora_target_modules(model.config)."
        )
    lora_config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    peft_model = get_peft_model(model, lora_config)
    if freeze_batch_norm:
        frozen = freeze_batch_norm_layers(peft_model)
        logger.info("Froze the running statistics of %d BatchNorm layers.", frozen)
    trainable = sum(parameter.numel() for parameter in peft_model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in peft_model.parameters())
    logger.info("LoRA on %d modules (r=%d, alpha=%d): %d of %d parameters trainable.", len(targets), r, alpha, trainable, total)
    return peft_model


__all__ = ["DECODER_ATTENTION_NAMES", "PROJECTION_NAMES", "apply_lora", "freeze_batch_norm_layers", "lora_target_modules"]
