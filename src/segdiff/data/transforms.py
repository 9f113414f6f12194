"""Joint image/mask augmentation with an explicit generator per sample.

Written on torch (affine_grid + grid_sample) rather than with kornia so that every draw comes from the
per-sample generator keyed by (seed, step, global sample index): results do not depend on worker or
process count, and resuming needs no augmentation RNG state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugmentConfig


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _coin(g: torch.Generator) -> bool:
    return bool(torch.rand((), generator=g) < 0.5)


def geometric(
    image: torch.Tensor, mask: torch.Tensor, cfg: AugmentConfig, out_hw: tuple[int, int], g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, rotation, flips and crop, the same for image [C, H, W] and mask [M, H, W] (0/1 float).

    The output window of size out_hw is centred at a random point of the input (a random crop); pixels
    from outside the input are reflected. A binary mask (M = 1) is resampled bilinearly and thresholded at
    0.5; a one-hot mask (M > 1 channels) is resampled bilinearly per channel and set back to one-hot at
    the largest channel (for two channels the same as the 0.5 threshold, up to ties).
    """
    _, h, w = image.shape
    oh, ow = out_hw
    s = _uniform(g, *cfg.scale)
    a = math.radians(_uniform(g, -cfg.rotate, cfg.rotate)) if cfg.rotate else 0.0
    fx = -1.0 if cfg.hflip and _coin(g) else 1.0
    fy = -1.0 if cfg.vflip and _coin(g) else 1.0
    if s == 1.0 and a == 0.0 and oh <= h and ow <= w:  # a plain crop and flips: no resampling blur
        y0 = int(torch.randint(h - oh + 1, (), generator=g))
        x0 = int(torch.randint(w - ow + 1, (), generator=g))
        img, msk = image[:, y0 : y0 + oh, x0 : x0 + ow], mask[:, y0 : y0 + oh, x0 : x0 + ow]
        dims = [d for d, f in ((2, fx), (1, fy)) if f < 0]
        return (img.flip(dims), msk.flip(dims)) if dims else (img, msk)
    # window centre in input pixels, uniform over the positions where an unrotated window fits
    half_w, half_h = ow / (2 * s), oh / (2 * s)
    cx = _uniform(g, half_w, w - half_w) if w > 2 * half_w else w / 2
    cy = _uniform(g, half_h, h - half_h) if h > 2 * half_h else h / 2
    # output normalised (u, v) -> output pixel offset (u*ow/2, v*oh/2) -> input offset R*Flip*offset/s
    # -> input normalised coordinates for grid_sample
    cos, sin = math.cos(a), math.sin(a)
    theta = torch.tensor(
        [
            [cos * fx * half_w / (w / 2), -sin * fy * half_h / (w / 2), (cx - w / 2) / (w / 2)],
            [sin * fx * half_w / (h / 2), cos * fy * half_h / (h / 2), (cy - h / 2) / (h / 2)],
        ],
        dtype=torch.float32,
    )
    grid = F.affine_grid(theta[None], [1, 1, oh, ow], align_corners=False)
    both = torch.cat([image, mask], 0)[None].float()
    out = F.grid_sample(both, grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
    m = mask.shape[0]
    if m == 1:
        return out[:-1], (out[-1:] > 0.5).float()
    return out[:-m], F.one_hot(out[-m:].argmax(0), m).permute(2, 0, 1).float()


def colour_jitter(image: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter of an RGB image [3, H, W] in [0, 1].

    Images with another number of channels get brightness and contrast (about the mean of all channels)
    only: saturation and hue are colour notions.
    """
    if cfg.brightness:
        image = image * _uniform(g, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
    if image.shape[0] != 3:
        if cfg.contrast:
            mean = image.mean()
            image = mean + _uniform(g, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast) * (image - mean)
        return image.clamp(0.0, 1.0)
    if cfg.contrast:
        gray_mean = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).mean()
        image = gray_mean + _uniform(g, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast) * (image - gray_mean)
    if cfg.saturation:
        gray = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
        image = gray + _uniform(g, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation) * (image - gray)
    if cfg.hue:
        # rotate the chroma plane of YIQ by 2*pi*hue_shift (a hue shift that needs no HSV round trip)
        h = 2 * math.pi * _uniform(g, -cfg.hue, cfg.hue)
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        rot = torch.tensor([[1, 0, 0], [0, math.cos(h), -math.sin(h)], [0, math.sin(h), math.cos(h)]])
        m = torch.linalg.inv(to_yiq) @ rot @ to_yiq
        image = torch.einsum("ij,jhw->ihw", m, image)
    return image.clamp(0.0, 1.0)


def augment(
    image: torch.Tensor, mask: torch.Tensor, cfg: AugmentConfig, out_hw: tuple[int, int], g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    image, mask = geometric(image, mask, cfg, out_hw, g)
    return colour_jitter(image, cfg, g), mask


def resize_image(image: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, h, w], bilinear with antialiasing when shrinking."""
    if tuple(image.shape[-2:]) == tuple(hw):
        return image
    return F.interpolate(image, size=hw, mode="bilinear", align_corners=False, antialias=True)


def resize_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[B, 1, H, W] 0/1 -> [B, 1, h, w] 0/1 by area-weighted resampling and a 0.5 threshold."""
    if tuple(mask.shape[-2:]) == tuple(hw):
        return mask
    return (resize_image(mask.float(), hw) >= 0.5).float()


def resize_labels(label: torch.Tensor, hw: tuple[int, int], K: int) -> torch.Tensor:
    """[B, 1, H, W] class indices (uint8; K..255 = ignored) -> [B, 1, h, w]: each class's (and the ignore
    label's) one-hot channel resampled by area and the largest taken, as resize_mask does for two classes."""
    if tuple(label.shape[-2:]) == tuple(hw):
        return label
    onehot = F.one_hot(label[:, 0].long().clamp(max=K), K + 1).permute(0, 3, 1, 2).float()
    idx = resize_image(onehot, hw).argmax(1, keepdim=True)
    return torch.where(idx == K, 255, idx).to(label.dtype)


def normalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    """[B, C, H, W] in [0, 1] -> the network's input: per channel (image - mean) / std with the training
    set's statistics (data.mean, data.std), or image * 2 - 1 when the run has none."""
    if mean is None or std is None:
        return image * 2 - 1
    mean = torch.tensor(mean, device=image.device, dtype=image.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, device=image.device, dtype=image.dtype).view(1, -1, 1, 1)
    return (image - mean) / std
