"""SD1.x UNet weights: ComfyUI / original-LDM layout <-> diffusers `UNet2DConditionModel`.

ComfyUI keeps the original latent-diffusion names (`input_blocks.1.1.proj_in.weight`);
the inflation and tuning code works on diffusers' model. The config comes from diffusers'
single-file loader (`create_unet_diffusers_config_from_ldm`) and the names from its
`convert_ldm_unet_checkpoint`, run on a checkpoint whose values are its own LDM key names:
that yields a diffusers -> LDM name map, used as is in one direction and inverted in the
other. For the inverse, the LDM key layout of a diffusers UNet is enumerated from its
modules. For SD1.x the converter only renames (no reshapes), so the round trip
LDM -> diffusers -> LDM gives back the same keys and bitwise the same tensors.
"""

from __future__ import annotations

import re

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    LDM_UNET_KEY,
    convert_ldm_unet_checkpoint,
    create_unet_diffusers_config_from_ldm,
)

__all__ = ["ldm_unet_to_diffusers", "diffusers_unet_to_ldm"]

SUPPORTED = "supported: SD1.x UNets (4 input channels, e.g. SD1.5) and InstructPix2Pix (8 input channels)"

# SD1.x uses 8 heads at every level; the head count cannot be read off the tensors.
SD1_NUM_HEADS = 8

_RESNET_LEAVES = ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3")
_ATTENTION_LEAVES = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")
_TRANSFORMER_BLOCK_LEAVES = (
    *(f"attn1.{leaf}" for leaf in _ATTENTION_LEAVES),
    *(f"attn2.{leaf}" for leaf in _ATTENTION_LEAVES),
    *(f"{m}.{p}" for m in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2") for p in ("weight", "bias")),
)


def ldm_unet_to_diffusers(ldm_state_dict: dict[str, torch.Tensor]) -> tuple[UNet2DConditionModel, dict]:
    """Build a diffusers UNet from an SD1.x UNet state dict in LDM / ComfyUI layout.

    Args:
        ldm_state_dict: UNet tensors keyed as ComfyUI's `model.diffusion_model.state_dict()`
            gives them (`input_blocks.0.0.weight`, ...), or with the `model.diffusion_model.`
            prefix (then keys without it, e.g. VAE or CLIP of a full checkpoint, are ignored).

    Returns:
        `(unet, info)`: the UNet holds copies of the tensors (same dtypes; the caller's
        tensors are never aliased); `info` describes the detected layout (`variant`,
        `in_channels`, `model_channels`, `channel_mult`, `num_res_blocks`,
        `attention_levels`, `transformer_depth`, `context_dim`) and the diffusers `config`.

    Raises:
        ValueError: SDXL, SD2, flow/DiT models and anything else that is not an SD1.x UNet.
    """
    sd = _strip_prefix(ldm_state_dict)
    unet, layout = _sd1_unet_on_meta(sd)
    key_map = _diffusers_to_ldm_key_map(list(sd), dict(unet.config))
    _check_key_map(key_map, expected_diffusers=set(unet.state_dict()), expected_ldm=set(sd))
    unet.load_state_dict(
        {d: sd[ldm].detach().clone() for d, ldm in key_map.items()}, strict=True, assign=True
    )
    left_on_meta = [n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise RuntimeError(f"tensors not set by the checkpoint: {left_on_meta[:5]}")
    info = {
        "variant": {8: "instruct_pix2pix", 9: "inpaint"}.get(layout["in_channels"], "sd1"),
        **layout,
        "config": dict(unet.config),
    }
    return unet, info


def diffusers_unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """State dict of an SD1.x-style diffusers UNet in LDM / ComfyUI layout, without prefix.

    The tensors are the UNet's own (`state_dict()` semantics: detached, sharing storage).
    Inverse of `ldm_unet_to_diffusers`: the round trip LDM -> diffusers -> LDM is exact.

    Raises:
        ValueError: the UNet has parameters with no LDM counterpart (e.g. the temporal
            layers of an inflated UNet: save those with `VideoUNet.trainable_state_dict`).
    """
    ldm_keys = _ldm_keys_of(unet)
    key_map = _diffusers_to_ldm_key_map(ldm_keys, dict(unet.config))
    diffusers_sd = unet.state_dict()
    _check_key_map(key_map, expected_diffusers=set(diffusers_sd), expected_ldm=set(ldm_keys))
    ldm_sd = {ldm: diffusers_sd[d] for d, ldm in key_map.items()}
    # Settings that no tensor shows (norm groups, heads, ...) must be SD1's, or the
    # exported weights would load into a different network.
    reference, _ = _sd1_unet_on_meta(ldm_sd)
    differing = {
        k: (v, reference.config[k])
        for k, v in unet.config.items()
        if not k.startswith("_") and k != "sample_size" and _plain(v) != _plain(reference.config.get(k))
    }
    if differing:
        raise ValueError(f"UNet config differs from SD1.x, as (this UNet, SD1.x): {differing}; {SUPPORTED}")
    return ldm_sd


def _sd1_unet_on_meta(sd: dict[str, torch.Tensor]) -> tuple[UNet2DConditionModel, dict]:
    """The diffusers UNet (parameters on the meta device) for an unprefixed LDM state dict."""
    layout = _detect_sd1_layout(sd)
    config = create_unet_diffusers_config_from_ldm(
        _original_ldm_config(layout), {LDM_UNET_KEY + k: v for k, v in sd.items()}
    )
    # The meta device skips a random init that the checkpoint overwrites anyway.
    with torch.device("meta"):
        return UNet2DConditionModel(**config), layout


def _plain(value):
    """Config values compare alike whether given as tuples or lists."""
    return list(value) if isinstance(value, (tuple, list)) else value


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith(LDM_UNET_KEY) for k in state_dict):
        return {k[len(LDM_UNET_KEY) :]: v for k, v in state_dict.items() if k.startswith(LDM_UNET_KEY)}
    return dict(state_dict)


def _detect_sd1_layout(sd: dict[str, torch.Tensor]) -> dict:
    """Read the SD1.x UNet hyper-parameters off the keys and tensor shapes; reject the rest."""
    if "input_blocks.0.0.weight" not in sd:
        raise ValueError(
            "not an SD1.x UNet: there is no 'input_blocks.0.0.weight' (flow / DiT models such as "
            f"Flux or SD3 have a different architecture); {SUPPORTED}"
        )
    if any(k.startswith("label_emb.") for k in sd):
        raise ValueError(f"SDXL-style UNet (it has 'label_emb' keys) is not supported; {SUPPORTED}")
    context_dims = {v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")}
    if not context_dims:
        raise ValueError(f"UNet has no cross-attention ('attn2.to_k.weight'); {SUPPORTED}")
    if 2048 in context_dims:
        raise ValueError(f"SDXL UNet (context_dim 2048) is not supported; {SUPPORTED}")
    if 1024 in context_dims:
        raise ValueError(
            f"SD2.x UNet (context_dim 1024) is not supported yet, v-prediction SD2 included; {SUPPORTED}"
        )
    if len(context_dims) > 1:
        raise ValueError(f"mixed cross-attention context sizes {sorted(context_dims)}; {SUPPORTED}")
    if any(v.ndim == 2 for k, v in sd.items() if k.endswith("proj_in.weight")):
        raise ValueError(
            f"UNet uses linear proj_in (use_linear_in_transformer, SD2 / SDXL style); {SUPPORTED}"
        )


    def shape(key):
        if key not in sd:
            raise ValueError(f"incomplete SD1.x UNet: no {key!r}; {SUPPORTED}")
        return sd[key].shape

    in_channels, model_channels = shape("input_blocks.0.0.weight")[1], shape("input_blocks.0.0.weight")[0]
    # Input blocks 1.. are res blocks (with an optional transformer) and, between levels,
    # a downsampler `input_blocks.i.0.op`.
    input_ids = sorted({int(m.group(1)) for k in sd if (m := re.match(r"input_blocks\.(\d+)\.", k))} - {0})
    levels: list[list[int]] = [[]]
    for i in input_ids:
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        else:
            levels[-1].append(i)
    res_counts = {len(ids) for ids in levels}
    if len(res_counts) != 1 or 0 in res_counts:
        raise ValueError(f"uneven res blocks per level {[len(ids) for ids in levels]}; {SUPPORTED}")
    channel_mult, attention_levels = [], []
    for ids in levels:
        channel_mult.append(shape(f"input_blocks.{ids[0]}.0.out_layers.3.weight")[0] // model_channels)
        with_attention = {f"input_blocks.{i}.1.proj_in.weight" in sd for i in ids}
        if len(with_attention) != 1:
            raise ValueError(f"attention on only some res blocks of a level; {SUPPORTED}")
        attention_levels.append(with_attention.pop())
    transformer_blocks: dict[str, set[str]] = {}
    for k in sd:
        if m := re.match(r"(.+)\.transformer_blocks\.(\d+)\.", k):
            transformer_blocks.setdefault(m.group(1), set()).add(m.group(2))
    depths = {len(ids) for ids in transformer_blocks.values()}
    if len(depths) != 1:
        raise ValueError(f"transformer depth differs between blocks {sorted(depths)}; {SUPPORTED}")
    if model_channels % SD1_NUM_HEADS:
        raise ValueError(f"model_channels {model_channels} is not divisible by {SD1_NUM_HEADS} heads")
    return {
        "in_channels": in_channels,
        "out_channels": shape("out.2.weight")[0],
        "model_channels": model_channels,
        "channel_mult": channel_mult,
        "num_res_blocks": res_counts.pop(),
        "attention_levels": attention_levels,
        "transformer_depth": depths.pop(),
        "context_dim": context_dims.pop(),
    }


def _original_ldm_config(layout: dict) -> dict:
    """The `v1-inference.yaml`-shaped dict that diffusers' config builder reads."""
    unet_params = {
        "in_channels": layout["in_channels"],
        "out_channels": layout["out_channels"],
        "model_channels": layout["model_channels"],
        "channel_mult": layout["channel_mult"],
        "num_res_blocks": layout["num_res_blocks"],
        # LDM names a level by its downsampling factor 1, 2, 4, ...
        "attention_resolutions": [2**i for i, on in enumerate(layout["attention_levels"]) if on],
        "transformer_depth": layout["transformer_depth"],
        "context_dim": layout["context_dim"],
        "num_heads": SD1_NUM_HEADS,
        "use_linear_in_transformer": False,
    }
    return {
        "model": {
            "params": {
                "unet_config": {"params": unet_params},
                "first_stage_config": {"params": {"ddconfig": {"ch_mult": [1, 2, 4, 4]}}},
            }
        }
    }


def _diffusers_to_ldm_key_map(ldm_keys: list[str], config: dict) -> dict[str, str]:
    """{diffusers key: LDM key}, by converting a checkpoint whose values are its own key names.

    The converter only moves values between dict keys for SD1.x, so a name in gives
    exactly where that tensor lands.
    """
    converted = convert_ldm_unet_checkpoint({LDM_UNET_KEY + k: k for k in ldm_keys}, config)
    not_names = [k for k, v in converted.items() if not isinstance(v, str)]
    if not_names:
        raise ValueError(f"conversion changed tensors, not only names, at {not_names[:5]}")
    return converted


def _check_key_map(key_map: dict[str, str], expected_diffusers: set[str], expected_ldm: set[str]) -> None:
    """The converter silently drops what it does not know: demand a one-to-one map."""
    missing = sorted(expected_diffusers - set(key_map))
    unexpected = sorted(set(key_map) - expected_diffusers)
    unused_ldm = sorted(expected_ldm - set(key_map.values()))
    if missing or unexpected or unused_ldm or len(set(key_map.values())) != len(key_map):
        raise ValueError(
            f"UNet conversion is not one-to-one ({len(key_map)} converted keys, "
            f"{len(expected_diffusers)} diffusers keys, {len(expected_ldm)} LDM keys): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, unconverted LDM keys {unused_ldm[:5]}; {SUPPORTED}"
        )


def _ldm_keys_of(unet: UNet2DConditionModel) -> list[str]:
    """The LDM / ComfyUI `UNetModel` state-dict keys of the network `unet` describes."""
    keys = list(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"].values())  # time_embed, conv in / out

    def resnet(prefix, block):
        leaves = [*_RESNET_LEAVES, *(["skip_connection"] if block.conv_shortcut is not None else [])]
        keys.extend(f"{prefix}.{leaf}.{p}" for leaf in leaves for p in ("weight", "bias"))

    def transformer(prefix, block):
        keys.extend(f"{prefix}.{name}.{p}" for name in ("norm", "proj_in", "proj_out") for p in ("weight", "bias"))
        for d in range(len(block.transformer_blocks)):
            keys.extend(f"{prefix}.transformer_blocks.{d}.{leaf}" for leaf in _TRANSFORMER_BLOCK_LEAVES)

    i = 1
    for down in unet.down_blocks:
        for j, block in enumerate(down.resnets):
            resnet(f"input_blocks.{i}.0", block)
            if hasattr(down, "attentions"):
                transformer(f"input_blocks.{i}.1", down.attentions[j])
            i += 1
        if down.downsamplers is not None:
            keys.extend(f"input_blocks.{i}.0.op.{p}" for p in ("weight", "bias"))
            i += 1
    resnet("middle_block.0", unet.mid_block.resnets[0])
    transformer("middle_block.1", unet.mid_block.attentions[0])
    resnet("middle_block.2", unet.mid_block.resnets[1])
    i = 0
    for up in unet.up_blocks:
        for j, block in enumerate(up.resnets):
            resnet(f"output_blocks.{i}.0", block)
            if hasattr(up, "attentions"):
                transformer(f"output_blocks.{i}.1", up.attentions[j])
            if j == len(up.resnets) - 1 and up.upsamplers is not None:
                slot = 2 if hasattr(up, "attentions") else 1
                keys.extend(f"output_blocks.{i}.{slot}.conv.{p}" for p in ("weight", "bias"))
            i += 1
    return keys
