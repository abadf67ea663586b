"""ControlVideo's layers (thu-ml/controlvideo, libs/attention.py) in `smooth_core.video_layers`,
against float64 references written here from its code: key-frame attention (`KeyFrameAttention`:
every frame's query against key frame k's keys and values) and the temporal branch
(`attn_temp` over the frames at each token, then the zero-initialised 1x1 `conv_temp`)."""

import math

import pytest
import torch
import torch.nn.functional as F

from smooth_core import video_layers

EXACT = dict(atol=1e-10, rtol=0)  # float64: rounding ~1e-15, any real difference far above


def projected(b, f, n, heads, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b * f, n, heads * d, generator=g, dtype=torch.float64) for _ in range(3)]


def ref_key_frame_attention(q, k, v, heads, f, key_frame):
    """Per video, per frame, per head: softmax(q_i k_key^T / sqrt(d)) v_key, written as loops."""
    bf, n, inner = q.shape
    d = inner // heads
    out = torch.empty_like(q)
    for video in range(bf // f):
        kf = video * f + key_frame
        for i in range(f):
            row = video * f + i
            for h in range(heads):
                sl = slice(h * d, (h + 1) * d)
                scores = q[row, :, sl] @ k[kf, :, sl].T / math.sqrt(d)
                out[row, :, sl] = torch.softmax(scores, dim=-1) @ v[kf, :, sl]
    return out


@pytest.mark.parametrize("key_frame", [0, 2, 4])
def test_key_frame_attention_matches_float64_reference(key_frame):
    b, f, n, heads, d = 2, 5, 6, 2, 4
    q, k, v = projected(b, f, n, heads, d)
    out = video_layers.frame_attention(q, k, v, heads, f, video_layers.KEY_FRAME, key_frame=key_frame)
    assert torch.allclose(out, ref_key_frame_attention(q, k, v, heads, f, key_frame), **EXACT)


def test_key_frame_zero_is_cross_frame_attention():
    q, k, v = projected(1, 4, 3, 2, 4, seed=1)
    key = video_layers.frame_attention(q, k, v, 2, 4, video_layers.KEY_FRAME, key_frame=0)
    assert torch.allclose(key, video_layers.frame_attention(q, k, v, 2, 4, "cross_frame"), **EXACT)
    other = video_layers.frame_attention(q, k, v, 2, 4, video_layers.KEY_FRAME, key_frame=1)
    assert not torch.allclose(key, other, atol=1e-3)


@pytest.mark.parametrize("key_frame", [-1, 4])
def test_a_key_frame_outside_the_video_is_refused(key_frame):
    q, k, v = projected(1, 4, 3, 2, 4)
    with pytest.raises(ValueError, match=f"key_frame {key_frame} is not a frame of this 4-frame video"):
        video_layers.frame_attention(q, k, v, 2, 4, video_layers.KEY_FRAME, key_frame=key_frame)


def ref_temporal_branch(n, f, attn_state, heads, conv_weight, conv_bias):
    """ControlVideo's block: rearrange "(b f) d c -> (b d) f c", attn_temp (to_q/k/v, softmax,
    to_out), back to "(b f) d c", then conv_temp, a 1x1 convolution: per token, W x + b."""
    bf, t, c = n.shape
    d = c // heads
    out = torch.empty_like(n)
    for video in range(bf // f):
        for token in range(t):
            seq = n[video * f:(video + 1) * f, token]  # (f, c)
            q, k, v = (seq @ attn_state[f"to_{x}.weight"].T for x in "qkv")
            heads_out = []
            for h in range(heads):
                sl = slice(h * d, (h + 1) * d)
                heads_out.append(torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(d), dim=-1) @ v[:, sl])
            attended = torch.cat(heads_out, dim=-1) @ attn_state["to_out.0.weight"].T + attn_state["to_out.0.bias"]
            out[video * f:(video + 1) * f, token] = attended @ conv_weight[:, :, 0, 0].T + conv_bias
    return out


def temporal_layers(c, heads, seed=0):
    torch.manual_seed(seed)
    attn = video_layers.TemporalAttention(c, heads).double()
    conv = torch.nn.Conv2d(c, c, 1).double()
    return attn, conv


def test_temporal_branch_matches_float64_reference():
    b, f, t, c, heads = 2, 4, 3, 8, 2
    attn, conv = temporal_layers(c, heads)
    n = torch.randn(b * f, t, c, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = video_layers.key_frame_temporal(n, f, attn, conv)
    state = {k: v for k, v in attn.state_dict().items()}
    assert torch.allclose(out, ref_temporal_branch(n, f, state, heads, conv.weight, conv.bias), **EXACT)


def test_temporal_init_copies_attn1_and_zeroes_conv_temp():
    c, heads = 8, 2
    attn1, _ = temporal_layers(c, heads, seed=4)
    state = video_layers.key_frame_temporal_state(attn1.state_dict())
    assert sorted(state) == sorted([f"attn_temp.{k}" for k in attn1.state_dict()] + ["conv_temp.weight", "conv_temp.bias"])
    for key, tensor in attn1.state_dict().items():
        assert torch.equal(state[f"attn_temp.{key}"], tensor.float())
    assert state["conv_temp.weight"].shape == (c, c, 1, 1) and not state["conv_temp.weight"].any()
    assert not state["conv_temp.bias"].any()
    # so the untuned branch adds exactly nothing
    attn, conv = temporal_layers(c, heads)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
    n = torch.randn(4, 3, c, dtype=torch.float64)
    assert not video_layers.key_frame_temporal(n, 4, attn, conv).any()
