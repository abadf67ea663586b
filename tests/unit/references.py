"""What the unit tests share: independent float64 references of the paper's formulas, written
as plainly as possible (Python floats and explicit loops), the tiny UNet configuration and
the float epsilons the tolerances are written in."""

import math

import torch

# Machine epsilons (spacing of floats at 1.0), the unit of the tests' float32 / half tolerances.
FLOAT32_EPS = torch.finfo(torch.float32).eps  # 1.19e-7
BF16_EPS = torch.finfo(torch.bfloat16).eps  # 7.8e-3
FP16_EPS = torch.finfo(torch.float16).eps  # 9.8e-4


def ref_alphas_cumprod() -> list[float]:
    """SD1.x `scaled_linear` schedule: beta linear in sqrt from 0.00085 to 0.012, T = 1000."""
    out, prod = [], 1.0
    for i in range(1000):
        beta = (math.sqrt(0.00085) + (math.sqrt(0.012) - math.sqrt(0.00085)) * i / 999) ** 2
        prod *= 1.0 - beta
        out.append(prod)
    return out


def ref_c(a_t: float, a_prev: float) -> float:
    """C of Eq. 2."""
    return math.sqrt(a_t) / (math.sqrt(a_t) * math.sqrt(1 - a_prev) - math.sqrt(a_prev) * math.sqrt(1 - a_t))


def ref_eq5(eps, x, c, lambda1, lambda3):
    """Eq. 5 frame by frame on (b, f, ...) tensors, every pair from the uncorrected eps, the
    last frame unchanged; c is one float for all videos or one per video."""
    out = eps.clone()
    for i in range(eps.shape[0]):
        c_i = float(c[i]) if hasattr(c, "__len__") else float(c)
        for n in range(eps.shape[1] - 1):
            d_eps = eps[i, n] - eps[i, n + 1]
            d_x = x[i, n] - x[i, n + 1]
            out[i, n] = eps[i, n] - lambda3 * (d_eps - c_i / lambda1 * d_x)
    return out


# A two-level diffusers UNet small enough for CPU tests, with SD1's 8 attention heads.
TINY_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
)
