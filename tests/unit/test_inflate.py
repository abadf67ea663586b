"""Tune-A-Video inflation on tiny diffusers UNets, against float64 references written here."""

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

from references import TINY_UNET
from smooth_core.inflate import (
    FrameAttnProcessor, FrameLayout, VideoUNet, forward_in_chunks, inflate_unet, is_inflated,
)

# Tune-A-Video's trainable set, by name (the code selects it by module): modules whose names end
# in attn1.to_q, attn2.to_q or attn_temp; not norm_temp.
TRAINABLE_NAME = re.compile(r"\.(attn1\.to_q|attn2\.to_q|attn_temp\.[\w.]+)\.(weight|bias)$")

# Equalities that hold in exact arithmetic are checked in float64, where outputs of ~1 carry
# rounding of ~1e-15 whatever the CPU kernels: 1e-10 is far above it and far below any real
# difference. (In float32 the kernels' summation order alone gives ~1e-6.)
EXACT = dict(atol=1e-10, rtol=0)


def tiny_unet(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY_UNET).eval().to(dtype)  # initialised in float32, then cast


def perturb_temporal(video_unet, seed=1):
    """Non-zero temporal output projections, so the temporal branch does something (the same
    values for a float64 model as for a float32 one)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in video_unet.unet.named_parameters():
            if ".attn_temp.to_out." in name or ".norm_temp." in name:
                p.add_(0.3 * torch.randn(p.shape, dtype=torch.float32).to(p))


def per_frame_2d(unet, video, t, context):
    """The 2D model on every frame: video (b, f, c, h, w), t (b,), context (b, n, d)."""
    b, f = video.shape[:2]
    out = unet(video.flatten(0, 1), t.repeat_interleave(f), context.repeat_interleave(f, dim=0)).sample
    return out.unflatten(0, (b, f))


def random_inputs(b=2, f=4, seed=3, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, f, 4, 8, 8, generator=g).to(dtype)
    context = torch.randn(b, 5, 32, generator=g).to(dtype)
    return video, torch.tensor([17, 640])[:b], context


# ---------------------------------------------------------------- equality with the 2D model at init


@pytest.mark.parametrize("mode", ["sparse_causal", "cross_frame"])
def test_fresh_inflation_equals_2d_per_frame_on_identical_frames(mode):
    unet2d = tiny_unet(dtype=torch.float64)
    video_unet = inflate_unet(copy.deepcopy(unet2d), attention=mode, group_norm="per_frame")
    video, t, context = random_inputs(dtype=torch.float64)
    video = video[:, :1].expand_as(video).contiguous()  # every frame the same: anchors == own frame
    with torch.no_grad():
        torch.testing.assert_close(video_unet(video, t, context), per_frame_2d(unet2d, video, t, context),
                                   **EXACT)  # float64: equal in exact arithmetic


def test_temporal_only_inflation_equals_2d_per_frame_on_a_random_video():
    unet2d = tiny_unet(dtype=torch.float64)
    video_unet = inflate_unet(copy.deepcopy(unet2d), group_norm="per_frame")
    video_unet.unet.set_attn_processor(AttnProcessor2_0())  # plain per-frame self-attention
    video, t, context = random_inputs(dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(video_unet(video, t, context), per_frame_2d(unet2d, video, t, context),
                                   **EXACT)  # float64: equal in exact arithmetic


# ---------------------------------------------------------------- frame attention vs float64 brute force


def reference_frame_attention(attn, x, num_frames, mode):
    """softmax(Q K^T / sqrt(d)) V per video, frame and head, keys/values of the anchor frames."""

    def linear(layer, v):
        return v @ layer.weight.T + (layer.bias if layer.bias is not None else 0)

    q, k, v = linear(attn.to_q, x), linear(attn.to_k, x), linear(attn.to_v, x)
    d = q.shape[-1] // attn.heads
    out = torch.empty_like(q)
    for video in range(x.shape[0] // num_frames):
        for i in range(num_frames):
            anchors = [0, max(i - 1, 0)] if mode == "sparse_causal" else [0]
            keys = torch.cat([k[video * num_frames + j] for j in anchors])
            values = torch.cat([v[video * num_frames + j] for j in anchors])
            for h in range(attn.heads):
                s = slice(h * d, (h + 1) * d)
                weights = torch.softmax(q[video * num_frames + i][:, s] @ keys[:, s].T / math.sqrt(d), dim=-1)
                out[video * num_frames + i][:, s] = weights @ values[:, s]
    out = linear(attn.to_out[0], out)
    if attn.residual_connection:
        out = out + x
    return out / attn.rescale_output_factor


@pytest.mark.parametrize("mode", ["sparse_causal", "cross_frame"])
@pytest.mark.parametrize(
    "settings", [dict(heads=8, dim_head=4), dict(heads=2, dim_head=16, bias=True, residual_connection=True,
                                                  rescale_output_factor=2.0)],
    ids=["sd1", "bias-residual-rescale"],
)
def test_frame_attention_matches_float64_reference(mode, settings):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, **settings).double()
    layout = FrameLayout(num_frames=5)
    attn.set_processor(FrameAttnProcessor(layout, mode))
    x = torch.randn(2 * 5, 6, 32, dtype=torch.float64)  # 2 videos of 5 frames, 6 tokens each
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference_frame_attention(attn, x, 5, mode), atol=1e-12, rtol=1e-12)


def test_sparse_causal_frame_zero_attends_to_itself_twice_which_is_plain_self_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=8, dim_head=4).double()
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    with torch.no_grad():
        plain = attn(x)
        attn.set_processor(FrameAttnProcessor(FrameLayout(num_frames=1), "sparse_causal"))
        torch.testing.assert_close(attn(x), plain, atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode, changed, unchanged", [("sparse_causal", 2, [0, 1]), ("cross_frame", 2, [0, 1, 3])])
def test_changing_a_frame_leaves_frames_that_do_not_attend_to_it_unchanged(mode, changed, unchanged):
    # A fresh per-frame inflation: the temporal branch outputs zero, so only frame attention mixes frames.
    video_unet = inflate_unet(tiny_unet(dtype=torch.float64), attention=mode, group_norm="per_frame")
    video, t, context = random_inputs(b=1, dtype=torch.float64)
    edited = video.clone()
    edited[:, changed] += 1.0
    with torch.no_grad():
        before, after = video_unet(video, t, context), video_unet(edited, t, context)
    torch.testing.assert_close(after[:, unchanged], before[:, unchanged], **EXACT)  # float64: unchanged exactly
    assert (after[:, changed] - before[:, changed]).abs().max() > 1e-3
    if mode == "sparse_causal":  # frame 3 reads frame 2 as its former frame
        assert (after[:, 3] - before[:, 3]).abs().max() > 1e-3


# ---------------------------------------------------------------- temporal attention


def test_temporal_attention_runs_across_frames_at_each_token_position():
    video_unet = inflate_unet(tiny_unet())
    perturb_temporal(video_unet)
    block = next(m for m in video_unet.unet.modules() if isinstance(m, BasicTransformerBlock)).double()
    video_unet.layout.num_frames = 3
    x = torch.randn(2 * 3, 5, 32, dtype=torch.float64)  # 2 videos, 3 frames, 5 tokens
    with torch.no_grad():
        hooked = block(x)
        spatial = block.forward(x).unflatten(0, (2, 3))  # forward() bypasses the hook
        expected = torch.empty_like(spatial)
        for video in range(2):
            for token in range(5):
                sequence = spatial[video, :, token][None]  # (1, f, c)
                expected[video, :, token] = (sequence + block.attn_temp(block.norm_temp(sequence)))[0]
    torch.testing.assert_close(hooked, expected.flatten(0, 1), atol=1e-12, rtol=0)


def test_temporal_modules_sit_on_the_block_with_tune_a_video_names():
    video_unet = inflate_unet(tiny_unet())
    names = video_unet.trainable_state_dict().keys()
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn_temp.to_q.weight" in names
    assert "up_blocks.1.attentions.1.transformer_blocks.0.attn_temp.to_out.0.bias" in names
    assert "up_blocks.1.attentions.1.transformer_blocks.0.norm_temp.weight" in video_unet.unet.state_dict()
    block = video_unet.unet.mid_block.attentions[0].transformer_blocks[0]
    assert block.attn_temp.heads == block.attn1.heads


# ---------------------------------------------------------------- Tune-A-Video as published


def reference_resnet3d(resnet, video, temb):
    """Tune-A-Video's ResnetBlock3D in float64, from its description: nn.GroupNorm on the whole
    (b, c, f, h, w) video, the convolutions per frame. video (b, f, c, h, w), temb (b, d)."""
    def norm(layer, x):  # x (b, f, c, h, w) -> GroupNorm over (c/g, f, h, w) per group
        return F.group_norm(x.transpose(1, 2), layer.num_groups, layer.weight, layer.bias, layer.eps).transpose(1, 2)

    def per_frame(layer, x):
        return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    h = per_frame(resnet.conv1, F.silu(norm(resnet.norm1, video)))
    h = h + resnet.time_emb_proj(F.silu(temb))[:, None, :, None, None]
    h = per_frame(resnet.conv2, F.silu(norm(resnet.norm2, h)))
    shortcut = video if resnet.conv_shortcut is None else per_frame(resnet.conv_shortcut, video)
    return (shortcut + h) / resnet.output_scale_factor


@pytest.mark.parametrize("where", ["down_blocks.0.resnets.0", "up_blocks.1.resnets.1"])
def test_video_group_norm_spans_all_frames_of_each_video_as_tune_a_video(where):
    video_unet = inflate_unet(tiny_unet(dtype=torch.float64))
    assert video_unet.group_norm == "video"
    resnet = video_unet.unet.get_submodule(where)
    b, f = 2, 3
    g = torch.Generator().manual_seed(4)
    video = torch.randn(b, f, resnet.in_channels, 4, 4, generator=g, dtype=torch.float64) * 3 + 1
    temb = torch.randn(b, resnet.time_emb_proj.in_features, generator=g, dtype=torch.float64)
    video_unet.layout.num_frames = f
    with torch.no_grad():
        out = resnet(video.flatten(0, 1), temb.repeat_interleave(f, dim=0)).unflatten(0, (b, f))
        expected = reference_resnet3d(resnet, video, temb)
        per_frame = reference_resnet3d(resnet, video[:, :1], temb)
    torch.testing.assert_close(out, expected, **EXACT)  # float64: the same statistics in exact arithmetic
    assert (out[:, :1] - per_frame).abs().max() > 1e-3  # frame 0 alone has other statistics


def test_video_group_norm_covers_resnets_and_the_final_norm_not_the_transformers():
    unet = tiny_unet()
    inflate_unet(unet)
    hooked = {name for name, m in unet.named_modules() if isinstance(m, nn.GroupNorm) and m._forward_pre_hooks}
    resnet_norms = {f"{name}.norm{i}" for name, m in unet.named_modules() if type(m).__name__ == "ResnetBlock2D"
                    for i in (1, 2)}
    assert hooked == resnet_norms | {"conv_norm_out"}
    assert len(resnet_norms) == 2 * 8  # the tiny UNet: 2 down, 2 mid and 4 up resnets
    per_frame = tiny_unet()
    inflate_unet(per_frame, group_norm="per_frame")
    assert not any(m._forward_pre_hooks for m in per_frame.modules() if isinstance(m, nn.GroupNorm))


def test_temporal_init_is_tune_a_video_s_and_per_frame_starts_at_the_2d_model():
    # Tune-A-Video: nn.init.zeros_ on attn_temp.to_out[0].weight only; every other tensor keeps
    # torch's default init (Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); LayerNorm: ones, zeros).
    for mode in ("video", "per_frame"):
        video_unet = inflate_unet(tiny_unet(), group_norm=mode)
        for block in (m for m in video_unet.unet.modules() if isinstance(m, BasicTransformerBlock)):
            bound = 1 / math.sqrt(block.attn_temp.to_out[0].in_features)
            assert torch.all(block.attn_temp.to_out[0].weight == 0)
            bias = block.attn_temp.to_out[0].bias
            if mode == "video":
                assert bias.abs().max() <= bound and bias.abs().min() > 0 and bias.std() > bound / 4
            else:
                assert torch.all(bias == 0)
            for layer in (block.attn_temp.to_q, block.attn_temp.to_k, block.attn_temp.to_v):
                assert layer.bias is None and layer.weight.abs().max() <= bound and layer.weight.std() > bound / 4
            assert torch.all(block.norm_temp.weight == 1) and torch.all(block.norm_temp.bias == 0)


# ---------------------------------------------------------------- calling conventions


def test_videos_in_one_batch_do_not_mix_and_forward_frames_matches_forward():
    video_unet = inflate_unet(tiny_unet(dtype=torch.float64))
    perturb_temporal(video_unet)
    video, t, context = random_inputs(b=2, f=3, dtype=torch.float64)
    with torch.no_grad():
        both = video_unet(video, t, context)
        alone = video_unet(video[:1], t[:1], context[:1])
        frames = video_unet.forward_frames(video.flatten(0, 1), t.repeat_interleave(3),
                                           context.repeat_interleave(3, dim=0), num_frames=3)
        scalar_t = video_unet(video, 17, context)
    torch.testing.assert_close(both[:1], alone, **EXACT)  # float64: batch size changes only the rounding
    torch.testing.assert_close(frames.unflatten(0, (2, 3)), both, atol=0, rtol=0)  # the same call: bit for bit
    torch.testing.assert_close(scalar_t[:1], both[:1], **EXACT)  # t[0] == 17; float64: equal in exact arithmetic


def test_bad_calls_are_refused():
    video_unet = inflate_unet(tiny_unet())
    with pytest.raises(ValueError, match="whole number of 4-frame videos"):
        video_unet.forward_frames(torch.randn(6, 4, 8, 8), torch.zeros(6), torch.randn(6, 5, 32), num_frames=4)
    with pytest.raises(ValueError, match="attention mode"):
        video_unet.set_attention_mode("full")


def test_double_inflation_raises():
    unet = tiny_unet()
    assert not is_inflated(unet)
    inflate_unet(unet)
    assert is_inflated(unet)
    with pytest.raises(ValueError, match="already inflated"):
        inflate_unet(unet)


def test_attention_mode_can_be_switched():
    video_unet = inflate_unet(tiny_unet(dtype=torch.float64), group_norm="per_frame")
    video, t, context = random_inputs(b=1, dtype=torch.float64)
    with torch.no_grad():
        sparse = video_unet(video, t, context)
        video_unet.set_attention_mode("cross_frame")
        cross = video_unet(video, t, context)
    # Frames 0, 1 see only frame 0 (sparse-causal over [0, 0] is cross-frame over [0] in exact arithmetic: float64).
    torch.testing.assert_close(cross[:, :2], sparse[:, :2], **EXACT)
    assert (cross[:, 3] - sparse[:, 3]).abs().max() > 1e-3


# ---------------------------------------------------------------- training


def backward_once(video_unet):
    video, t, context = random_inputs(b=1, f=3, dtype=video_unet.unet.dtype)
    video_unet(video, t, context).square().mean().backward()


def test_gradients_reach_exactly_the_trainable_set():
    video_unet = inflate_unet(tiny_unet())
    perturb_temporal(video_unet)
    video_unet.mark_trainable()
    backward_once(video_unet)
    for name, p in video_unet.unet.named_parameters():
        if TRAINABLE_NAME.search(name):
            assert p.requires_grad and p.grad is not None and p.grad.abs().max() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    trainable = {id(p) for p in video_unet.trainable_parameters()}
    assert trainable == {id(p) for n, p in video_unet.unet.named_parameters() if TRAINABLE_NAME.search(n)}


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        video_unet = inflate_unet(tiny_unet(dtype=torch.float64))
        perturb_temporal(video_unet)
        video_unet.mark_trainable()
        if checkpointing:
            video_unet.enable_gradient_checkpointing()
        backward_once(video_unet)
        grads.append([p.grad for p in video_unet.trainable_parameters()])
    for plain, checkpointed in zip(*grads):
        # float64: recomputation is exact in exact arithmetic (gradients reach ~1e-2).
        torch.testing.assert_close(checkpointed, plain, atol=1e-14, rtol=1e-10)


def test_trainable_set_at_sd15_size_is_74m():
    # SD1.5: 859.5M UNet parameters, +49.6M temporal ones = 909.1M after inflation, of which
    # 74,354,880 (8.2%) are trainable: 16 transformer blocks, 6 dim^2 + dim each
    # (to_q of attn1 and attn2, attn_temp q/k/v/out + out bias; norm_temp is frozen).
    with torch.device("meta"):
        unet = UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768,
                                    attention_head_dim=8)
        video_unet = inflate_unet(unet)
    trainable = sum(p.numel() for p in video_unet.trainable_parameters())
    total = sum(p.numel() for p in video_unet.parameters())
    dims = [320] * 5 + [640] * 5 + [1280] * 6  # blocks per width: 2 down + 3 up (+1 mid at 1280)
    assert trainable == sum(6 * d * d + d for d in dims) == 74_354_880
    assert total == 909_120_004
    assert 0.08 < trainable / total < 0.085


def test_trainable_state_dict_round_trip():
    source = inflate_unet(tiny_unet())
    with torch.no_grad():  # only the trainables differ from a fresh inflation (norm_temp is not saved)
        for p in source.trainable_parameters():
            p.add_(0.01)
    saved = {k: v.clone() for k, v in source.trainable_state_dict().items()}
    assert all(TRAINABLE_NAME.search("." + k) for k in saved)

    target = inflate_unet(tiny_unet())
    target.load_trainable_state_dict(saved)
    for k, v in target.trainable_state_dict().items():
        assert torch.equal(v, saved[k]), k
    video, t, context = random_inputs(b=1)
    with torch.no_grad():
        torch.testing.assert_close(target(video, t, context), source(video, t, context), atol=0, rtol=0)

    key = "mid_block.attentions.0.transformer_blocks.0.attn_temp.to_q.weight"
    with pytest.raises(ValueError, match=f"missing \\['{re.escape(key)}'\\]"):
        target.load_trainable_state_dict({k: v for k, v in saved.items() if k != key})
    with pytest.raises(ValueError, match="unexpected \\['conv_in.weight'\\]"):
        target.load_trainable_state_dict(dict(saved, **{"conv_in.weight": torch.zeros(1)}))
    with pytest.raises(ValueError, match="wrong shapes"):
        target.load_trainable_state_dict(dict(saved, **{key: torch.zeros(3, 3)}))


def test_video_unet_is_a_module_holding_the_unet():
    unet = tiny_unet()
    video_unet = inflate_unet(unet)
    assert isinstance(video_unet, VideoUNet) and video_unet.unet is unet
    assert set(video_unet.state_dict()) == {f"unet.{k}" for k in unet.state_dict()}


def test_fork_shares_frozen_tensors_and_owns_trainables():
    video = inflate_unet(tiny_unet())
    fork = video.fork()
    trainable = {n for n, _ in video.trainable_state_dict().items()}
    ours = dict(video.unet.named_parameters())
    theirs = dict(fork.unet.named_parameters())
    assert ours.keys() == theirs.keys()
    for name, p in ours.items():
        same = p.data_ptr() == theirs[name].data_ptr()
        assert same != (name in trainable), name
    with torch.no_grad():
        for p in fork.trainable_parameters():
            p.add_(1.0)
    x = torch.randn(1, 3, 4, 8, 8)
    ctx = torch.randn(1, 4, 32)
    before = video(x, 10, ctx)
    assert not torch.allclose(before, fork(x, 10, ctx))
    # the fork has its own frame layout and processors
    assert fork.layout is not video.layout
    fork(torch.randn(1, 2, 4, 8, 8), 10, ctx)
    assert torch.equal(video(x, 10, ctx), before)


def test_inflation_is_reproducible_whatever_the_global_rng():
    torch.manual_seed(1)
    first = inflate_unet(tiny_unet()).trainable_state_dict()
    torch.manual_seed(2)
    torch.rand(100)
    second = inflate_unet(tiny_unet()).trainable_state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    state = torch.random.get_rng_state()
    inflate_unet(tiny_unet())
    assert torch.equal(state, torch.random.get_rng_state()), "inflation must not consume the global RNG"


# ---------------------------------------------------------------- training-free inflation (temporal=False)


def test_training_free_inflation_adds_no_parameters_and_no_hook():
    unet2d = tiny_unet()
    video_unet = inflate_unet(copy.deepcopy(unet2d), attention="cross_frame", temporal=False)
    assert set(video_unet.unet.state_dict()) == set(unet2d.state_dict())
    blocks = [m for m in video_unet.unet.modules() if isinstance(m, BasicTransformerBlock)]
    assert blocks and all(not block._forward_hooks for block in blocks)
    assert all(isinstance(block.attn1.processor, FrameAttnProcessor) for block in blocks)
    assert is_inflated(video_unet.unet) and not video_unet.has_temporal
    assert inflate_unet(tiny_unet()).has_temporal


def test_training_free_inflation_equals_a_fresh_temporal_one_on_a_random_video():
    # A fresh per-frame temporal branch outputs zero, so frame attention is all that differs from 2D in both.
    video, t, context = random_inputs(dtype=torch.float64)
    with torch.no_grad():
        without = inflate_unet(tiny_unet(dtype=torch.float64), attention="cross_frame", temporal=False)(video, t, context)
        with_temporal = inflate_unet(tiny_unet(dtype=torch.float64), attention="cross_frame",
                                     group_norm="per_frame")(video, t, context)
    torch.testing.assert_close(without, with_temporal, **EXACT)  # float64: equal in exact arithmetic


def test_training_free_inflation_equals_2d_per_frame_on_identical_frames():
    unet2d = tiny_unet(dtype=torch.float64)
    video_unet = inflate_unet(copy.deepcopy(unet2d), attention="cross_frame", temporal=False)
    video, t, context = random_inputs(dtype=torch.float64)
    video = video[:, :1].expand_as(video).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(video_unet(video, t, context), per_frame_2d(unet2d, video, t, context),
                                   **EXACT)  # float64: equal in exact arithmetic


def test_training_free_model_has_nothing_to_tune_and_says_so():
    video_unet = inflate_unet(tiny_unet(), attention="cross_frame", temporal=False)
    for call in (video_unet.trainable_parameters, video_unet.mark_trainable, video_unet.trainable_state_dict,
                 video_unet.fork, lambda: video_unet.load_trainable_state_dict({})):
        with pytest.raises(ValueError, match="no temporal attention .* nothing to tune: tune a model inflated with temporal=True"):
            call()


def test_training_free_inflation_cannot_be_inflated_again():
    unet = tiny_unet()
    inflate_unet(unet, attention="cross_frame", temporal=False)
    with pytest.raises(ValueError, match="already inflated"):
        inflate_unet(unet)


# ---------------------------------------------------------------- chunks anchored on frame 0 (Text2Video-Zero)


def cross_frame_toy(x, num_frames):
    """A float64 stand-in for a cross-frame model: every frame mixed with its group's first frame."""
    first = x.unflatten(0, (-1, num_frames))[:, :1]
    return (x.unflatten(0, (-1, num_frames)) * 2.0 + first.sin()).flatten(0, 1)


@pytest.mark.parametrize("frames, chunk_size, calls", [
    (7, 3, [[0, 1, 2], [0, 3, 4], [0, 5, 6]]),
    (6, 4, [[0, 1, 2, 3], [0, 4, 5]]),
    (5, 2, [[0, 1], [0, 2], [0, 3], [0, 4]]),
    (4, 8, [[0, 1, 2, 3]]),
    (8, 8, [[0, 1, 2, 3, 4, 5, 6, 7]]),
    (9, 8, [[0, 1, 2, 3, 4, 5, 6, 7], [0, 8]]),
])
def test_chunks_hold_at_most_chunk_size_frames_led_by_frame_zero(frames, chunk_size, calls):
    groups = 3  # InstructPix2Pix's dual CFG: three copies of the video in one batch
    frame_ids = torch.arange(frames, dtype=torch.float64).repeat(groups)  # ((g f),) frame number
    group_ids = torch.arange(groups, dtype=torch.float64).repeat_interleave(frames)
    x = torch.randn(groups * frames, 4, dtype=torch.float64)
    seen = []

    def fn(x_chunk, frame_chunk, group_chunk, n):
        seen.append(frame_chunk.unflatten(0, (groups, n)))
        assert torch.equal(group_chunk.unflatten(0, (groups, n)), torch.arange(groups, dtype=torch.float64)[:, None].expand(groups, n))
        return cross_frame_toy(x_chunk, n)

    out = forward_in_chunks(fn, (x, frame_ids, group_ids), frames, chunk_size)
    assert [chunk[0].long().tolist() for chunk in seen] == calls
    assert all(torch.equal(chunk[g], chunk[0]) for chunk in seen for g in range(groups))  # same frames in every group
    torch.testing.assert_close(out, cross_frame_toy(x, frames), atol=0, rtol=0)


@pytest.mark.parametrize("chunk_size", [2, 3, 5])
def test_chunked_cross_frame_unet_equals_the_whole_video_at_once(chunk_size):
    # Three groups of 6 frames with their own timestep and text, as ComfyUI batches dual CFG.
    video_unet = inflate_unet(tiny_unet(dtype=torch.float64), attention="cross_frame", temporal=False)
    groups, frames = 3, 6
    g = torch.Generator().manual_seed(5)
    x = torch.randn(groups * frames, 4, 8, 8, generator=g).double()
    t = torch.tensor([400.0, 400.0, 401.0]).repeat_interleave(frames)
    context = torch.randn(groups, 5, 32, generator=g).repeat_interleave(frames, dim=0).double()
    with torch.no_grad():
        whole = video_unet.forward_frames(x, t, context, frames)
        chunked = forward_in_chunks(video_unet.forward_frames, (x, t, context), frames, chunk_size)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, **EXACT)  # float64: equal in exact arithmetic


def test_chunking_with_sparse_causal_attention_is_not_the_whole_video():
    # Frame 3 attends to frame 2, which a chunk of [0, 3] lacks: chunking is for cross-frame attention.
    video_unet = inflate_unet(tiny_unet(dtype=torch.float64), attention="sparse_causal", temporal=False)
    x, t, context = torch.randn(4, 4, 8, 8).double(), torch.full((4,), 300.0), torch.randn(4, 5, 32).double()
    with torch.no_grad():
        whole = video_unet.forward_frames(x, t, context, 4)
        chunked = forward_in_chunks(video_unet.forward_frames, (x, t, context), 4, 2)
    torch.testing.assert_close(chunked[:2], whole[:2], **EXACT)  # float64: equal in exact arithmetic
    assert (chunked[2:] - whole[2:]).abs().max() > 1e-3


def test_bad_chunking_is_refused():
    x = torch.zeros(6, 2)
    with pytest.raises(ValueError, match="chunk_size must be at least 2"):
        forward_in_chunks(cross_frame_toy, (x,), 3, 1)
    with pytest.raises(ValueError, match="not whole groups of 4 frames"):
        forward_in_chunks(cross_frame_toy, (x,), 4, 2)
    with pytest.raises(ValueError, match=r"batch sizes \[6, 5\]"):
        forward_in_chunks(lambda a, b, n: a, (x, torch.zeros(5)), 3, 2)


def test_gradient_checkpointing_of_chosen_blocks_only():
    """Checkpointing the full-resolution level only: those blocks recompute, the others keep
    their activations, and the gradients are the same as without checkpointing."""
    x, t, context = random_inputs(dtype=torch.float64)
    grads = []
    for blocks in (False, ["down_blocks.0", "up_blocks.1"]):
        video = inflate_unet(tiny_unet(dtype=torch.float64))
        perturb_temporal(video)
        video.mark_trainable()
        if blocks:
            video.enable_gradient_checkpointing(blocks)
            flags = {n: m.gradient_checkpointing for n, m in video.unet.named_modules() if n and hasattr(m, "gradient_checkpointing")}
            assert {n for n, on in flags.items() if on} == {n for n in flags if n.startswith(("down_blocks.0", "up_blocks.1"))}
            assert any(not on for on in flags.values())
        # A transformer block of the checkpointed level, and a resnet of the other level that
        # the backward pass goes through (it follows trainable layers).
        calls = {"down_blocks.0.attentions.0.transformer_blocks.0": 0, "down_blocks.1.resnets.0": 0}
        for name in calls:
            def count(*_, name=name):
                calls[name] += 1
            # A pre-hook: a recomputation stops as soon as it has what the backward needs.
            video.unet.get_submodule(name).register_forward_pre_hook(count)
        video.train()
        video(x, t, context).square().mean().backward()
        # A checkpointed block runs again in the backward pass; the other one does not.
        assert list(calls.values()) == ([2, 1] if blocks else [1, 1])
        grads.append({n: p.grad.clone() for n, p in video.unet.named_parameters() if p.grad is not None})
    for name, grad in grads[0].items():
        # float64: recomputation is exact in exact arithmetic (gradients reach ~1e-2).
        torch.testing.assert_close(grads[1][name], grad, atol=1e-14, rtol=1e-10)
    for name in ("down_block.0", "conv_in", "down_blocks.0.resnets.0"):  # a typo; nothing checkpointed there
        with pytest.raises(ValueError, match=f"nothing to checkpoint in {re.escape(name)}: name UNet blocks"):
            inflate_unet(tiny_unet()).enable_gradient_checkpointing([name])
