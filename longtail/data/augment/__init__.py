"""Batched, on-device image augmentation.

Every op works on a whole float batch ``x`` of shape ``(N, C, H, W)`` with
values in ``[0, 1]`` at once, on whatever device ``x`` lives on, and draws an
independent random decision per image. Nothing here touches the global RNG:
all randomness comes from the explicit ``torch.Generator`` ``g`` (on the same
device as ``x``), so the engine can make a step reproducible by seeding ``g``
from ``(seed, epoch, step)``.

Each random op is split in two: a sampler that draws the per-image parameters
(``crop_offsets``, ``flip_mask``, ``resized_crop_boxes``, ...) and a
deterministic function that applies given parameters (``crop_with_offsets``,
``hflip_where``, ...). The public op is just the composition. The split lets
tests replay the very same draws through a per-image reference loop, and lets
methods reuse the parameters (e.g. the same crop for two views).

Where things are: ``geometry`` (crops, flips, resizes, rotations), ``color``
(jitter, grayscale, blur, noise, normalisation), ``perimage`` (the sizing op of
file datasets, whose decoded images differ in size, run per image with PIL) and
``pipeline`` (op parameters, presets, and :class:`Augment`, which chains ops
from a recipe's spec list and checks it up front).
"""
from .color import (JitterParams, blur_params, color_jitter, color_jitter_with, gaussian_blur, gaussian_blur_with,
                    gaussian_noise, grayscale, grayscale_mask, grayscale_where, hsv_to_rgb, jitter_params, normalize,
                    random_grayscale, rgb_to_hsv)
from .geometry import (center_crop, center_crop_resize, crop_offsets, crop_with_offsets, flip_mask, hflip_where,
                       random_crop, random_hflip, random_resized_crop, random_rotate90, resize, resized_crop_boxes,
                       resized_crop_with_boxes, rotate90)
from .checks import LUMA_WEIGHTS
from .perimage import ImageList, center_crop_resize_images, crop_resize_images, random_resized_crop_images
from .pipeline import OP_TABLE, PRESETS, Augment

__all__ = [
    "LUMA_WEIGHTS", "OP_TABLE", "PRESETS", "Augment", "ImageList", "JitterParams", "blur_params", "center_crop",
    "center_crop_resize", "center_crop_resize_images", "color_jitter", "color_jitter_with", "crop_offsets",
    "crop_resize_images", "crop_with_offsets", "flip_mask", "gaussian_blur", "gaussian_blur_with", "gaussian_noise",
    "grayscale", "grayscale_mask", "grayscale_where", "hflip_where", "hsv_to_rgb", "jitter_params", "normalize",
    "random_crop", "random_grayscale", "random_hflip", "random_resized_crop", "random_resized_crop_images",
    "random_rotate90", "resize", "resized_crop_boxes", "resized_crop_with_boxes", "rgb_to_hsv", "rotate90",
]
