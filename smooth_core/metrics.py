"""Video smoothness and CLIP metrics: the VL score (Eq. 6) and the LOVEU-TGVE CLIP scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import checks

_NORM_FLOOR = 1e-12


def vl_score(latents: torch.Tensor, k: int = 8) -> torch.Tensor:
    """Video latent score, Eq. 6.

    For each pair of adjacent frames (n-1, n), the centre crop of frame n,
    x[n][:, k/2 : k/2+h, k/2 : k/2+w] with h = H-k, w = W-k, is compared by cosine
    similarity (flattened c*h*w vectors) with the window of frame n-1 at each of the
    (k+1)^2 offsets; the maximum is kept, and the maxima are averaged over the F-1 pairs.

    Vectorised: all dot products of all pairs are one grouped convolution, and the window
    norms one box-filter convolution.

    Args:
        latents: VAE latents (distribution mean; scale does not matter), (b, f, c, H, W)
            or (f, c, H, W).
        k: the window slack in latent pixels (8 in the paper); k < min(H, W).

    Returns (b,) scores, or a 0-dim score for a single (f, c, H, W) video; float32, or
    float64 for float64 input.
    """
    single = isinstance(latents, torch.Tensor) and latents.dim() == 4
    if single:
        latents = latents.unsqueeze(0)
    checks.require_video("latents", latents, 2, "the VL score")
    k = int(k)
    b, f, c, H, W = latents.shape
    if k < 0 or k >= min(H, W):
        raise ValueError(
            f"k={k} does not fit latents of {H}x{W}: k must be >= 0 and smaller than "
            f"{min(H, W)} (the latent is the image size / 8); lower k or use larger frames"
        )
    checks.require_finite("latents", latents)
    x = latents.to(checks.compute_dtype(latents))
    h, w, half = H - k, W - k, k // 2
    pairs = b * (f - 1)
    previous = x[:, :-1].reshape(pairs, c, H, W)
    current = x[:, 1:, :, half : half + h, half : half + w].reshape(pairs, c, h, w)

    # dots[p, i, j] = <current[p], previous[p][:, i:i+h, j:j+w]>
    dots = F.conv2d(previous.reshape(1, pairs * c, H, W), current, groups=pairs).reshape(pairs, k + 1, k + 1)
    window_sq = F.conv2d(
        previous.square().sum(dim=1, keepdim=True), x.new_ones(1, 1, h, w)
    ).reshape(pairs, k + 1, k + 1)
    current_norm = current.flatten(1).norm(dim=1).view(pairs, 1, 1)
    cosine = dots / (window_sq.clamp_min(0.0).sqrt() * current_norm).clamp_min(_NORM_FLOOR)
    best = cosine.flatten(1).amax(dim=1).view(b, f - 1)
    scores = best.mean(dim=1)
    return scores[0] if single else scores


def _check_embeds(name: str, embeds: torch.Tensor, min_rows: int) -> None:
    if not isinstance(embeds, torch.Tensor) or embeds.dim() != 2:
        raise ValueError(f"{name} must have shape (frames, dim)")
    if embeds.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} frames, got {embeds.shape[0]}")
    checks.require_finite(name, embeds)


def clip_frame_consistency(image_embeds: torch.Tensor) -> torch.Tensor:
    """CLIP-F: mean cosine similarity of CLIP image embeddings over all ordered frame pairs i != j.

    image_embeds: (f, d) with f >= 2. Returns a 0-dim tensor.
    """
    _check_embeds("image_embeds", image_embeds, 2)
    e = F.normalize(image_embeds.to(checks.compute_dtype(image_embeds)), dim=1)
    f = e.shape[0]
    sim = e @ e.T
    return (sim.sum() - sim.diagonal().sum()) / (f * (f - 1))


def clip_text_alignment(image_embeds: torch.Tensor, text_embed: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """CLIP-T: mean over frames of scale * cos(image embedding, text embedding).

    image_embeds: (f, d); text_embed: (d,). scale is 100 (CLIPScore's w), or a CLIPModel's
    `logit_scale.exp()` for the mean of its `logits_per_image`. Returns a 0-dim tensor.
    """
    _check_embeds("image_embeds", image_embeds, 1)
    if not isinstance(text_embed, torch.Tensor) or text_embed.shape != image_embeds.shape[1:]:
        raise ValueError(
            f"text_embed must have shape ({image_embeds.shape[1]},) to match the image embeddings"
        )
    checks.require_finite("text_embed", text_embed)
    dtype = checks.compute_dtype(image_embeds, text_embed)
    e = F.normalize(image_embeds.to(dtype), dim=1)
    t = F.normalize(text_embed.to(dtype), dim=0)
    return scale * (e @ t).mean()
