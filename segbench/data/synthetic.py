"""Seeded synthetic stand-ins for every dataset, in the same convention as prepared real data.

Skin-like images (ISIC stand-ins) show a darker brown, mottled lesion on a textured skin-coloured
background; polyp-like images show a shaded, bulging pinkish blob with a specular highlight on a
reddish mucosa texture. Lesion outlines are irregular (a radius that varies with the angle), and
size, contrast, colour and image size vary from image to image, with sides that are mostly not
multiples of 32 so the resize step is exercised. Masks are 0/255.

The polyp test sets differ from the training distribution the way the real ones do (a domain per
dataset, ``POLYP_DOMAINS``), so the polyp protocol shows a generalisation gap: Kvasir-SEG and
CVC-ClinicDB are drawn like the training set (the real training set is 900 Kvasir + 550 ClinicDB
images); CVC-ColonDB has low-contrast polyps that blend into the mucosa; ETIS-LaribPolypDB has
small polyps; CVC-300 (EndoScene) has another colour cast.

Each dataset draws from its own generator (seed + dataset name), so preparing one dataset does not
change another. Streams are numpy's PCG64: identical for a given numpy version.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

from segbench.data.registry import get_dataset


@dataclasses.dataclass(frozen=True)
class PolypDomain:
    """How one polyp stand-in draws its images (ranges are uniform draws per image)."""

    radius: tuple[float, float] = (0.12, 0.34)  # polyp radius as a fraction of the shorter side
    contrast: tuple[float, float] = (0.45, 0.8)  # how strongly the polyp is shaded against the mucosa
    tint_strength: float = 1.0  # 0: the polyp has the mucosa's colour; 1: its own pinkish tint
    glare: float = 90.0  # brightness of the specular highlight
    colour_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain of the whole image


TRAINING_DOMAIN = PolypDomain()
POLYP_DOMAINS = {
    "polyp_train": TRAINING_DOMAIN,
    "kvasir": TRAINING_DOMAIN,
    "clinicdb": TRAINING_DOMAIN,
    "colondb": PolypDomain(contrast=(0.2, 0.4), tint_strength=0.5, glare=40.0),
    "etis": PolypDomain(radius=(0.07, 0.14)),
    "cvc300": PolypDomain(colour_cast=(0.8, 1.05, 1.3)),
}


@dataclasses.dataclass(frozen=True)
class SyntheticSettings:
    seed: int = 0
    n_train: int = 24
    n_test: int = 8
    n_isic: int | None = None  # None: n_train + n_test
    min_side: int = 80
    max_side: int = 128

    def __post_init__(self):
        if not 16 <= self.min_side <= self.max_side:
            raise ValueError(
                f"synthetic sides: expected 16 <= min_side <= max_side, found min_side={self.min_side}, "
                f"max_side={self.max_side}; fix data.synthetic in the config"
            )
        if min(self.n_train, self.n_test, 1 if self.n_isic is None else self.n_isic) < 1:
            raise ValueError(f"synthetic counts must be >= 1, found n_train={self.n_train}, n_test={self.n_test}, "
                             f"n_isic={self.n_isic}")


def synthetic_count(dataset: str, settings: SyntheticSettings) -> int:
    """ISIC stand-ins hold train and test images (the split code cuts 7:3); polyp sets one kind."""
    spec = get_dataset(dataset)
    if spec.kind == "isic":
        return settings.n_isic or settings.n_train + settings.n_test
    return settings.n_train if spec.is_training_set else settings.n_test


def _rng(dataset: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(dataset.encode())])


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    field = Image.fromarray(grid, mode="F").resize((width, height), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(field), -1.0, 1.0)


def _blob(rng: np.random.Generator, height: int, width: int, polyp: bool, radius_range=(0.12, 0.34)):
    """An irregular blob: mask, normalised radial distance r/R(theta), and offsets in radii."""
    side = min(height, width)
    radius = side * rng.uniform(*radius_range)
    margin = radius * 0.6
    cy = rng.uniform(margin, height - margin)
    cx = rng.uniform(margin, width - margin)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    theta = np.arctan2(dy, dx)
    # Polyps are rounder; skin lesions have ragged borders (more, stronger harmonics).
    harmonics = range(2, 5) if polyp else range(2, 9)
    strength = 0.12 if polyp else 0.22
    profile = np.ones_like(theta)
    for k in harmonics:
        profile += rng.uniform(0, strength) / (k ** 0.5) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    stretch = rng.uniform(0.7, 1.3)
    distance = np.sqrt((dx * stretch) ** 2 + (dy / stretch) ** 2) / (radius * np.clip(profile, 0.35, None))
    return distance <= 1.0, distance, dx / radius, dy / radius


def _skin_image(rng: np.random.Generator, height: int, width: int):
    skin = np.array([rng.uniform(185, 235), rng.uniform(135, 185), rng.uniform(105, 155)], np.float32)
    texture = 14 * _smooth_noise(rng, height, width, 5) + 5 * _smooth_noise(rng, height, width, 24)
    image = skin + texture[..., None] + rng.normal(0, 3, (height, width, 3)).astype(np.float32)
    mask, distance, _, _ = _blob(rng, height, width, polyp=False)
    contrast = rng.uniform(0.35, 0.8)
    lesion = np.array([rng.uniform(70, 140), rng.uniform(35, 85), rng.uniform(20, 60)], np.float32)
    mottling = 25 * _smooth_noise(rng, height, width, 12)
    blend = np.clip((1.0 - distance) * rng.uniform(4, 12), 0, 1)[..., None] * contrast / 0.8
    image = image * (1 - blend) + (lesion + mottling[..., None]) * blend
    return image, mask


def _polyp_image(rng: np.random.Generator, height: int, width: int, domain: PolypDomain = TRAINING_DOMAIN):
    mucosa = np.array([rng.uniform(170, 225), rng.uniform(70, 120), rng.uniform(60, 105)], np.float32)
    folds = 22 * _smooth_noise(rng, height, width, 6) + 8 * _smooth_noise(rng, height, width, 20)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    vignette = 1.0 - 0.45 * (((yy / height - 0.5) ** 2 + (xx / width - 0.5) ** 2) * 2)
    image = (mucosa + folds[..., None]) * vignette[..., None]
    mask, distance, across, down = _blob(rng, height, width, polyp=True, radius_range=domain.radius)
    dome = np.sqrt(np.clip(1.0 - distance**2, 0, 1))
    tint = np.array([rng.uniform(0.95, 1.15), rng.uniform(0.75, 1.05), rng.uniform(0.75, 1.0)], np.float32)
    tint = 1.0 + domain.tint_strength * (tint - 1.0)
    contrast = rng.uniform(*domain.contrast)
    shaded = image * tint * (1 - contrast + contrast * (0.6 + 0.7 * dome[..., None]))
    highlight_x, highlight_y = rng.uniform(-0.45, 0.45, 2)
    glare = np.exp(-((across - highlight_x) ** 2 + (down - highlight_y) ** 2) * rng.uniform(25, 60))
    shaded += (domain.glare * glare * mask)[..., None]
    image = np.where(mask[..., None], shaded, image)
    image += rng.normal(0, 3, (height, width, 3)).astype(np.float32)
    return image * np.array(domain.colour_cast, np.float32), mask


def generate(dataset: str, settings: SyntheticSettings) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(id, image uint8 HxWx3, mask uint8 HxW 0/255)`` for every synthetic image of ``dataset``."""
    spec = get_dataset(dataset)
    rng = _rng(dataset, settings.seed)
    if spec.kind == "isic":
        draw = _skin_image
    else:
        def draw(generator, height, width):
            return _polyp_image(generator, height, width, POLYP_DOMAINS[dataset])
    for index in range(synthetic_count(dataset, settings)):
        height, width = rng.integers(settings.min_side, settings.max_side + 1, size=2)
        image, mask = draw(rng, int(height), int(width))
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        yield f"{dataset}_{index:04d}", image, (mask.astype(np.uint8) * 255)


def generate_shapes(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in for ImageNet pretraining data: ``count`` images (N, size, size, 3) uint8 of one generic
    object (a polygon, star or ellipse in a random colour, often textured) on a random textured
    background of another colour, with masks (N, size, size) 0/255. Neither skin nor mucosa: models
    pretrained on it learn generic "segment the object" features, as ImageNet encoders bring generic
    features to the medical tasks."""
    from PIL import ImageDraw

    rng = np.random.default_rng([seed, zlib.crc32(b"shapes")])
    images = np.empty((count, size, size, 3), np.uint8)
    masks = np.empty((count, size, size), np.uint8)
    for index in range(count):
        background = rng.uniform(20, 235, 3).astype(np.float32)
        foreground = np.clip(background + rng.choice([-1, 1], 3) * rng.uniform(40, 120, 3), 0, 255)
        canvas = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(canvas)
        cy, cx = rng.uniform(0.25, 0.75, 2) * size
        radius = rng.uniform(0.1, 0.35) * size
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([cx - radius, cy - radius * rng.uniform(0.5, 1.0), cx + radius,
                          cy + radius * rng.uniform(0.5, 1.0)], fill=255)
        else:
            corners = int(rng.integers(3, 9)) * (2 if kind == 2 else 1)
            angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
            radii = radius * (np.where(np.arange(corners) % 2, 0.45, 1.0) if kind == 2 else rng.uniform(0.6, 1.0, corners))
            draw.polygon([(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for r, a in zip(radii, angles)],
                         fill=255)
        mask = np.asarray(canvas) >= 128
        texture = 25 * _smooth_noise(rng, size, size, int(rng.integers(3, 12)))[..., None]
        detail = rng.uniform(0, 30) * _smooth_noise(rng, size, size, int(rng.integers(8, 24)))[..., None]
        image = np.where(mask[..., None], foreground + detail, background + texture)
        image += rng.normal(0, 4, image.shape)
        images[index] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        masks[index] = mask.astype(np.uint8) * 255
    return images, masks
