"""SD1.x UNet weights: LDM / ComfyUI layout <-> diffusers, checked against hand-written layouts."""


import pytest
import torch
from diffusers import UNet2DConditionModel

from smooth_core.convert import diffusers_unet_to_ldm, ldm_unet_to_diffusers
from smooth_core.tune import unet_fingerprint
from smooth_core.inflate import inflate_unet

PREFIX = "model.diffusion_model."

# The layout of the tiny SD1.5 checkpoints the integration tests use (ComfyUI UNetModel with
# model_channels 320, context_dim 768, channel_mult [1], num_res_blocks [1], depth 1, 8 heads).
ONE_LEVEL = dict(
    block_out_channels=(320,),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D",),
    up_block_types=("CrossAttnUpBlock2D",),
    cross_attention_dim=768,
    attention_head_dim=8,
)
TWO_LEVEL = dict(
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
)


def diffusers_unet(config, in_channels=4, seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=8, in_channels=in_channels, out_channels=4, **config).eval()


@pytest.fixture(scope="module")
def one_level_ldm():
    """A random LDM-layout state dict, fresh tensors (not views of any diffusers model)."""
    ldm = diffusers_unet_to_ldm(diffusers_unet(ONE_LEVEL))
    torch.manual_seed(1)
    return {k: torch.randn_like(v) for k, v in ldm.items()}


def hand_written_one_level_keys():
    """ComfyUI's `UNetModel.state_dict()` keys for the one-level layout, written out by hand."""
    resblock = ["in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3"]
    attention = ["attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn1.to_out.0.weight",
                 "attn1.to_out.0.bias", "attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight",
                 "attn2.to_out.0.weight", "attn2.to_out.0.bias", "ff.net.0.proj.weight", "ff.net.0.proj.bias",
                 "ff.net.2.weight", "ff.net.2.bias"]
    attention += [f"norm{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
    keys = [f"{m}.{p}" for m in ("time_embed.0", "time_embed.2", "input_blocks.0.0", "out.0", "out.2")
            for p in ("weight", "bias")]

    def res(prefix, skip):
        keys.extend(f"{prefix}.{m}.{p}" for m in resblock + ["skip_connection"] * skip for p in ("weight", "bias"))

    def spatial(prefix):
        keys.extend(f"{prefix}.{m}.{p}" for m in ("norm", "proj_in", "proj_out") for p in ("weight", "bias"))
        keys.extend(f"{prefix}.transformer_blocks.0.{leaf}" for leaf in attention)

    res("input_blocks.1.0", skip=False)
    spatial("input_blocks.1.1")
    res("middle_block.0", skip=False)
    spatial("middle_block.1")
    res("middle_block.2", skip=False)
    for i in (0, 1):  # output blocks take the skip connection concatenated: 640 -> 320 channels
        res(f"output_blocks.{i}.0", skip=True)
        spatial(f"output_blocks.{i}.1")
    return keys


def test_ldm_keys_are_comfyui_sd1_keys_for_the_tiny_layout():
    ldm = diffusers_unet_to_ldm(diffusers_unet(ONE_LEVEL))
    expected = hand_written_one_level_keys()
    assert len(expected) == len(set(expected)) == 168
    assert set(ldm) == set(expected)
    assert ldm["input_blocks.0.0.weight"].shape == (320, 4, 3, 3)
    assert ldm["input_blocks.1.1.proj_in.weight"].shape == (320, 320, 1, 1)  # conv, not linear
    assert ldm["output_blocks.0.0.skip_connection.weight"].shape == (320, 640, 1, 1)


def test_hand_picked_ldm_tensors_land_on_their_diffusers_names(one_level_ldm):
    unet, _ = ldm_unet_to_diffusers(one_level_ldm)
    params = unet.state_dict()
    for ldm_key, diffusers_key in [
        ("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
         "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"),
        ("out.2.weight", "conv_out.weight"),
        ("time_embed.0.weight", "time_embedding.linear_1.weight"),
        ("input_blocks.0.0.bias", "conv_in.bias"),
        ("input_blocks.1.0.in_layers.2.weight", "down_blocks.0.resnets.0.conv1.weight"),
        ("middle_block.1.proj_in.weight", "mid_block.attentions.0.proj_in.weight"),
        ("middle_block.2.emb_layers.1.weight", "mid_block.resnets.1.time_emb_proj.weight"),
        ("output_blocks.1.0.skip_connection.weight", "up_blocks.0.resnets.1.conv_shortcut.weight"),
        ("output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
         "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight"),
    ]:
        assert torch.equal(params[diffusers_key], one_level_ldm[ldm_key]), ldm_key


def test_two_level_layout_places_downsampler_and_upsampler():
    ldm = diffusers_unet_to_ldm(diffusers_unet(TWO_LEVEL))
    # level 0: res+attn (1), downsample (2); level 1: res only (3); up: 3 res blocks per level.
    assert "input_blocks.2.0.op.weight" in ldm and "input_blocks.3.1.proj_in.weight" not in ldm
    assert "output_blocks.1.1.conv.weight" in ldm  # upsampler after the last res block of level 1
    assert "output_blocks.3.1.proj_in.weight" in ldm
    unet, info = ldm_unet_to_diffusers(ldm)
    assert torch.equal(unet.state_dict()["down_blocks.0.downsamplers.0.conv.weight"], ldm["input_blocks.2.0.op.weight"])
    assert torch.equal(unet.state_dict()["up_blocks.0.upsamplers.0.conv.weight"], ldm["output_blocks.1.1.conv.weight"])
    assert info["channel_mult"] == [1, 2] and info["attention_levels"] == [True, False]
    assert info["context_dim"] == 32 and info["num_res_blocks"] == 1 and info["variant"] == "sd1"


@pytest.mark.parametrize(
    "config, in_channels", [(ONE_LEVEL, 4), (ONE_LEVEL, 8), (TWO_LEVEL, 4)], ids=["sd1", "ip2p", "two-level"]
)
def test_round_trip_ldm_diffusers_ldm_is_exact(config, in_channels):
    torch.manual_seed(2)
    ldm = {k: torch.randn_like(v) for k, v in diffusers_unet_to_ldm(diffusers_unet(config, in_channels)).items()}
    unet, info = ldm_unet_to_diffusers(ldm)
    assert info["in_channels"] == in_channels
    back = diffusers_unet_to_ldm(unet)
    assert back.keys() == ldm.keys()
    for k in ldm:
        assert back[k].dtype == ldm[k].dtype and torch.equal(back[k], ldm[k]), k


def test_forward_survives_diffusers_ldm_diffusers():
    source = diffusers_unet(TWO_LEVEL)
    unet, _ = ldm_unet_to_diffusers(diffusers_unet_to_ldm(source))
    x, context = torch.randn(2, 4, 8, 8), torch.randn(2, 7, 32)
    t = torch.tensor([3, 900])
    with torch.no_grad():
        assert torch.equal(unet(x, t, context).sample, source(x, t, context).sample)


def test_prefixed_full_checkpoint_keeps_only_the_unet(one_level_ldm):
    checkpoint = {PREFIX + k: v for k, v in one_level_ldm.items()}
    checkpoint["first_stage_model.decoder.conv_in.weight"] = torch.zeros(3)
    checkpoint["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.zeros(3)
    unet, info = ldm_unet_to_diffusers(checkpoint)
    assert info["variant"] == "sd1" and info["context_dim"] == 768 and info["model_channels"] == 320
    assert torch.equal(unet.conv_out.weight, one_level_ldm["out.2.weight"])


def test_unet_holds_copies_and_keeps_dtype(one_level_ldm):
    half = {k: v.half() for k, v in one_level_ldm.items()}
    unet, _ = ldm_unet_to_diffusers(half)
    assert unet.dtype == torch.float16
    with torch.no_grad():
        unet.conv_out.weight.add_(1)
    assert not torch.equal(unet.conv_out.weight, half["out.2.weight"])


def test_ip2p_eight_channel_input_is_detected(one_level_ldm):
    ldm = dict(one_level_ldm, **{"input_blocks.0.0.weight": torch.randn(320, 8, 3, 3)})
    unet, info = ldm_unet_to_diffusers(ldm)
    assert info["variant"] == "instruct_pix2pix" and unet.config.in_channels == 8
    out = unet(torch.randn(1, 8, 8, 8), 5, torch.randn(1, 3, 768)).sample
    assert out.shape == (1, 4, 8, 8)


def with_context_dim(ldm, dim):
    return {k: (torch.randn(v.shape[0], dim) if k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) else v)
            for k, v in ldm.items()}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda sd: dict(sd, **{"label_emb.0.0.weight": torch.zeros(1280, 2816)}), "SDXL"),
        (lambda sd: with_context_dim(sd, 2048), "SDXL"),
        (lambda sd: with_context_dim(sd, 1024), "SD2"),
        (lambda sd: {k: (v.flatten(1) if k.endswith("proj_in.weight") else v) for k, v in sd.items()}, "linear proj_in"),
        (lambda sd: {"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 3), "img_in.weight": torch.zeros(3, 64)},
         "input_blocks.0.0.weight"),
        (lambda sd: {}, "not an SD1.x UNet"),
        (lambda sd: {k: v for k, v in sd.items() if not k.startswith("out.")}, "incomplete SD1.x UNet: no 'out.2.weight'"),
    ],
    ids=["sdxl-label-emb", "sdxl-context", "sd2", "linear-proj-in", "flux-like", "empty", "incomplete"],
)
def test_unsupported_models_are_rejected_with_a_clear_message(one_level_ldm, make, message):
    with pytest.raises(ValueError, match=message) as error:
        ldm_unet_to_diffusers(make(one_level_ldm))
    assert "supported: SD1.x" in str(error.value)


def test_sd2_message_says_v_prediction_is_not_supported_yet(one_level_ldm):
    with pytest.raises(ValueError, match="not supported yet, v-prediction SD2"):
        ldm_unet_to_diffusers(with_context_dim(one_level_ldm, 1024))


def test_missing_or_unknown_keys_are_not_dropped_silently(one_level_ldm):
    missing = {k: v for k, v in one_level_ldm.items() if k != "middle_block.1.norm.bias"}
    with pytest.raises(ValueError, match="missing .*mid_block.attentions.0.norm.bias"):
        ldm_unet_to_diffusers(missing)
    extra = dict(one_level_ldm, **{"middle_block.1.transformer_blocks.0.attn_temp.to_q.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not one-to-one"):
        ldm_unet_to_diffusers(extra)


def test_export_refuses_what_sd1_cannot_hold():
    with pytest.raises(ValueError, match="norm_num_groups"):
        diffusers_unet_to_ldm(diffusers_unet(dict(TWO_LEVEL, norm_num_groups=8)))
    with pytest.raises(ValueError, match="attn_temp"):
        diffusers_unet_to_ldm(inflate_unet(diffusers_unet(TWO_LEVEL)).unet)


def test_fingerprint_tells_base_models_apart_and_ignores_the_prefix(one_level_ldm):
    same = unet_fingerprint({k: v.clone() for k, v in one_level_ldm.items()})
    assert unet_fingerprint(one_level_ldm) == same
    assert unet_fingerprint({"model.diffusion_model." + k: v for k, v in one_level_ldm.items()}) == same
    changed = dict(one_level_ldm)
    changed["time_embed.0.weight"] = changed["time_embed.0.weight"] + 1e-3
    assert unet_fingerprint(changed) != same
    assert unet_fingerprint(diffusers_unet_to_ldm(diffusers_unet(TWO_LEVEL))) != same


def test_fingerprint_is_the_same_for_a_float32_file_held_in_fp16(one_level_ldm):
    """ComfyUI holds a float32 checkpoint in float32 on a CPU and in fp16 on a GPU: both must
    fingerprint as one model, or weights tuned on one machine are refused on the other."""
    held_in_fp16 = {k: v.half() for k, v in one_level_ldm.items()}
    assert any(not torch.equal(v.float(), one_level_ldm[k]) for k, v in held_in_fp16.items())  # rounded
    assert unet_fingerprint(held_in_fp16) == unet_fingerprint(one_level_ldm)
    # An fp16 file held in float32 (a CPU) is the fp16 file too.
    assert unet_fingerprint({k: v.float() for k, v in held_in_fp16.items()}) == unet_fingerprint(held_in_fp16)
    # A change that survives fp16 rounding still tells the models apart.
    changed = dict(one_level_ldm)
    changed["time_embed.0.weight"] = changed["time_embed.0.weight"] * 1.01
    assert unet_fingerprint(changed) != unet_fingerprint(one_level_ldm)
