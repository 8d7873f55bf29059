"""Synthetic "phantom" chest radiographs in the exact NIH ChestX-ray8 layout.

Each phantom is a dark thorax with two lung fields of smooth random texture, ribs and a
mediastinum; positives carry one bright, round, soft-edged lesion inside a lung field. The
archive mirrors NIH: ``images_NNN.tar.gz`` with members ``images/<Image Index>``, a
``Data_Entry_2017.csv`` with the real header quirks, and patient-level ``train_val_list.txt`` /
``test_list.txt``. A model can only separate the classes by finding the lesion, so a learnt
AUC proves that labels, shards, gradients and preprocessing line up.

With ``PhantomSpec(findings=("Mass", "Effusion", "Cardiomegaly"))`` each patient carries each
finding independently (probability ``positive_fraction``), every image gets a heart shadow, and
each finding has its own sign: Mass the round lesion, Effusion a haze rising from the base of
one or both lung fields, Cardiomegaly a heart shadow about 1.9 times as wide as a normal one.
Labels are written NIH-style (``Mass|Effusion``, ``No Finding`` when none). Without
``findings`` the generator is the single-finding one, byte for byte.

Distractors (:data:`DISTRACTORS`, the phantoms saliency maps are measured on): multi-finding
phantoms whose lesions may sit anywhere in the lung field (``lesion_spread``), so next to the
basal effusion haze and the heart's border, and some of whose images are AP views
(``ap_fraction``): fainter (their contrast about the mean scaled by :data:`AP_CONTRAST`) and
noisier (noise of :data:`AP_NOISE` grey levels instead of 4), labelled ``AP`` in the view
column. Both options are off by default, so existing seeds draw the same images.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "AP_CONTRAST",
    "AP_NOISE",
    "BBOX_HEADER",
    "DISTRACTORS",
    "LESION_PROFILES",
    "NIH_HEADER",
    "SIGNS",
    "Phantom",
    "PhantomSpec",
    "draw_phantom",
    "render_phantom",
    "write_phantom_archive",
]

# The findings a multi-finding phantom can carry, each with a sign of its own.
SIGNS = ("Mass", "Effusion", "Cardiomegaly")
LESION_PROFILES = ("flat", "sphere")
# AP views (portable, supine): lower contrast and more quantum noise than PA views.
AP_CONTRAST = 0.7
AP_NOISE = 10.0

NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
# NIH's BBox_List_2017.csv header, quirks included: "Bbox [x,y,w,h]" is unquoted, so it is four
# columns, and three empty ones follow (each row ends in ",,,").
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
_OTHER_FINDINGS = (
    "No Finding",
    "No Finding",
    "No Finding",
    "Effusion",
    "Atelectasis",
    "Cardiomegaly",
)


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate.

    Attributes:
        n_patients: Number of patients; each has 1-3 images.
        positive_fraction: Fraction of patients whose images all carry the finding (with
            ``findings``: each patient's probability of carrying each finding).
        size: Width and height of the PNGs in pixels.
        lesion_radius: Lesion radius as a fraction of ``size``.
        lesion_contrast: Lesion brightness above the lung, in 0-255 grey levels.
        finding: The NIH finding written for positives.
        test_fraction: Fraction of patients put on the test list.
        images_per_archive: Images per ``images_NNN.tar.gz``.
        seed: Seed of everything random.
        first_patient: Patient id of the first patient (distinct ranges make distinct archives,
            e.g. a later day's arrivals).
        archive_number: Number of the first ``images_NNN.tar.gz``.
        findings: Several findings drawn independently per patient, each from :data:`SIGNS`;
            empty for the single-finding phantoms (``finding``, the lesion).
        exposure_jitter: Per-image exposure variation: grey levels are scaled by a gain drawn
            from ``1 +- exposure_jitter`` and shifted by up to ``100 * exposure_jitter``.
        lesion_profile: ``"flat"``: a flat-topped disc with a soft edge (the box then marks
            where it falls to 37% of its peak); ``"sphere"``: what a round mass of uniform
            density projects to, brightest at its centre and ending at its radius (the box is
            its whole extent).
        lesion_spread: How far from its lung field's centre a lesion may sit, as a fraction
            of the field's radii (0.45: the middle of the lung; up to 0.8 reaches the basal
            effusion haze and the heart's border).
        ap_fraction: Share of images drawn as AP views (fainter, noisier; ``AP`` in the
            labels' view column).
    """

    n_patients: int = 200
    positive_fraction: float = 0.5
    size: int = 256
    lesion_radius: float = 0.09
    lesion_contrast: float = 70.0
    finding: str = "Mass"
    test_fraction: float = 0.2
    images_per_archive: int = 10_000
    seed: int = 0
    first_patient: int = 1
    archive_number: int = 1
    findings: tuple[str, ...] = ()
    exposure_jitter: float = 0.0
    lesion_profile: str = "flat"
    lesion_spread: float = 0.45
    ap_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.lesion_spread <= 0.8:
            raise ValueError(f"lesion_spread must be in (0, 0.8], not {self.lesion_spread!r}")
        if not 0.0 <= self.ap_fraction <= 1.0:
            raise ValueError(f"ap_fraction must be in [0, 1], not {self.ap_fraction!r}")
        if self.lesion_profile not in LESION_PROFILES:
            raise ValueError(
                f"lesion_profile must be one of {LESION_PROFILES}, not {self.lesion_profile!r}"
            )
        unknown = [f for f in self.findings if f not in SIGNS]
        if unknown or len(set(self.findings)) != len(self.findings):
            raise ValueError(
                f"phantom findings must be distinct names from {SIGNS}, not {self.findings}"
            )


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    coarse = rng.standard_normal((scale, scale))
    from PIL import Image

    image = Image.fromarray(
        ((coarse - coarse.min()) / (np.ptp(coarse) + 1e-9) * 255).astype(np.uint8)
    )
    return (
        np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    )


@dataclass(frozen=True)
class Phantom:
    """One rendered phantom.

    Attributes:
        pixels: ``uint8 (size, size)``.
        lesion_box: The lesion's bounding box ``(x, y, width, height)`` in pixels (the square
            around its radius, where it is at least 37% of its peak contrast), or ``None``.
    """

    pixels: np.ndarray
    lesion_box: tuple[float, float, float, float] | None


def render_phantom(
    rng: np.random.Generator,
    size: int,
    lesion: bool,
    spec: PhantomSpec,
    signs: frozenset[str] | None = None,
    ap: bool = False,
) -> np.ndarray:
    """Render one phantom radiograph as a ``uint8`` array of shape ``(size, size)``.

    See :func:`draw_phantom`, which also returns where the lesion is.
    """
    return draw_phantom(rng, size, lesion, spec, signs, ap).pixels


def draw_phantom(
    rng: np.random.Generator,
    size: int,
    lesion: bool,
    spec: PhantomSpec,
    signs: frozenset[str] | None = None,
    ap: bool = False,
) -> Phantom:
    """Render one phantom radiograph and record its lesion's bounding box.

    Args:
        rng: Random generator (position, texture and noise come from it).
        size: Width and height in pixels.
        lesion: Whether to draw the lesion (the Mass sign).
        spec: Lesion radius and contrast.
        signs: Multi-finding phantoms only: the findings this image carries; a heart shadow
            is drawn (enlarged for Cardiomegaly) and an effusion haze for Effusion. ``None``
            draws the single-finding phantom (the Mass sign only).
        ap: Draw an AP view: contrast about the mean scaled by :data:`AP_CONTRAST`, noise of
            :data:`AP_NOISE` grey levels.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = 170.0 - 60.0 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)  # bright soft-tissue surround
    lungs = []
    for cx in (0.3, 0.7):
        cx += rng.uniform(-0.03, 0.03)
        cy, rx, ry = 0.5 + rng.uniform(-0.03, 0.03), rng.uniform(0.14, 0.17), rng.uniform(0.3, 0.36)
        lungs.append((cx, cy, rx, ry))
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0
        image = np.where(inside, 60.0 + 40.0 * _smooth_noise(rng, size, 12), image)
    ribs = 12.0 * np.maximum(0.0, np.sin(yy * np.pi * rng.uniform(16, 20) + rng.uniform(0, np.pi)))
    image += ribs
    image += 10.0 * _smooth_noise(rng, size, 40)
    if signs is not None:
        image = _heart_shadow(rng, image, xx, yy, enlarged="Cardiomegaly" in signs)
        if "Effusion" in signs:
            image = _effusion(rng, image, xx, yy, lungs)
    box = None
    if lesion:
        cx, cy, rx, ry = lungs[rng.integers(2)]
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, spec.lesion_spread)
        lx, ly = cx + dist * rx * np.cos(angle), cy + dist * ry * np.sin(angle)
        radius = spec.lesion_radius * rng.uniform(0.85, 1.15)
        d2 = ((xx - lx) ** 2 + (yy - ly) ** 2) / radius**2
        if spec.lesion_profile == "sphere":
            # X-ray attenuation adds up along the ray: a uniform ball's chord length.
            image += spec.lesion_contrast * np.sqrt(np.clip(1.0 - d2, 0.0, None))
        else:
            image += spec.lesion_contrast * np.exp(-(d2**2))  # flat-topped, soft edge
        # Pixel (col, row) sits at (col / size, row / size) in the coordinates above.
        box = tuple(float(v) for v in ((lx - radius) * size, (ly - radius) * size))
        box += (2.0 * radius * size, 2.0 * radius * size)
    return Phantom(_expose(rng, image, spec, ap), box)


def _expose(rng, image: np.ndarray, spec: PhantomSpec, ap: bool) -> np.ndarray:
    """The radiograph as exposed: view contrast, pixel noise, exposure jitter, ``uint8``."""
    if ap:
        image = image.mean() + AP_CONTRAST * (image - image.mean())
    image += rng.normal(0, AP_NOISE if ap else 4.0, image.shape)  # in place: stays float32
    if spec.exposure_jitter:
        # Exposure differs between radiographs: without it the lesion's small share of the
        # image's total brightness is a shortcut a network learns instead of the lesion.
        gain, offset = rng.uniform(1 - spec.exposure_jitter, 1 + spec.exposure_jitter), 0.0
        offset = rng.uniform(-100 * spec.exposure_jitter, 100 * spec.exposure_jitter)
        image = image * gain + offset
    return np.clip(image, 0, 255).astype(np.uint8)


# Multi-finding phantoms with distractors: Mass lesions anywhere in the lung (next to effusion
# haze and enlarged hearts), a third of the views AP; exposure jitter and sphere lesions so a
# model must find the lesion (tests/test_localization.py's slow test, benchmarks).
DISTRACTORS = PhantomSpec(
    n_patients=200,
    size=128,
    positive_fraction=0.4,
    findings=SIGNS,
    exposure_jitter=0.15,
    lesion_contrast=110.0,
    lesion_profile="sphere",
    lesion_spread=0.75,
    ap_fraction=0.35,
)


def _heart_shadow(rng, image: np.ndarray, xx, yy, enlarged: bool) -> np.ndarray:
    """A bright, soft-edged heart shadow low in the mediastinum, spilling into the left lung.

    A normal heart is about 0.22 of the image wide and stays mostly between the lung fields;
    an enlarged one (cardiomegaly: cardiothoracic ratio above one half) is about 0.42 wide,
    taller, and covers the inner part of both lungs.
    """
    half_width = rng.uniform(0.20, 0.22) if enlarged else rng.uniform(0.10, 0.12)
    cx, cy = 0.53 + rng.uniform(-0.015, 0.015), 0.68 + rng.uniform(-0.02, 0.02)
    half_height = (0.16 if enlarged else 0.14) + rng.uniform(-0.01, 0.01)
    d = ((xx - cx) / half_width) ** 2 + ((yy - cy) / half_height) ** 2
    weight = np.clip((1.0 - d) / 0.2, 0.0, 1.0)
    return image * (1.0 - weight) + rng.uniform(135.0, 150.0) * weight


def _effusion(rng, image: np.ndarray, xx, yy, lungs: list) -> np.ndarray:
    """A haze filling the base of one or both lung fields, brightest at the bottom."""
    sides = [lungs[int(rng.integers(2))]] if rng.random() < 0.6 else lungs
    for cx, cy, rx, ry in sides:
        inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0
        level = cy + ry * rng.uniform(0.25, 0.45)  # where the fluid's upper edge lies
        rise = np.clip((yy - level) / 0.06, 0.0, 1.0)
        image = image + np.where(inside, rng.uniform(50.0, 65.0) * rise, 0.0)
    return image


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def write_phantom_archive(out: str | Path, spec: PhantomSpec = PhantomSpec()) -> Path:
    """Write a phantom archive in the NIH layout.

    Besides the labels and split lists it writes ``BBox_List_2017.csv`` with every lesion's
    box (finding ``spec.finding``; NIH boxes only some images, phantoms box every lesion).

    Args:
        out: Folder to write into (created if needed).
        spec: What to generate.

    Returns:
        The path of the written ``Data_Entry_2017.csv``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    rows, train_val, test = [], [], []
    if spec.findings:
        carried = rng.random((spec.n_patients, len(spec.findings))) < spec.positive_fraction
        positive_patients = set()
    else:  # the single-finding draws, unchanged so that old seeds give the same archive
        n_positive = int(round(spec.n_patients * spec.positive_fraction))
        positive_patients = set(rng.permutation(spec.n_patients)[:n_positive].tolist())
    test_patients = set(
        rng.permutation(spec.n_patients)[
            : int(round(spec.n_patients * spec.test_fraction))
        ].tolist()
    )
    images: list[tuple[str, bool, frozenset[str] | None, bool]] = []
    for patient in range(spec.n_patients):
        patient_id = patient + spec.first_patient
        for follow_up in range(int(rng.integers(1, 4))):
            image_id = f"{patient_id:08d}_{follow_up:03d}.png"
            signs = None
            if spec.findings:
                signs = frozenset(
                    f for f, c in zip(spec.findings, carried[patient], strict=True) if c
                )
                labels = "|".join(f for f in spec.findings if f in signs) or "No Finding"
                positive = "Mass" in signs
            else:
                positive = patient in positive_patients
                labels = spec.finding if positive else str(rng.choice(_OTHER_FINDINGS))
                if positive and rng.random() < 0.2:
                    labels = f"Effusion|{spec.finding}"
            age, sex = int(rng.integers(20, 80)), "MF"[int(rng.integers(2))]
            ap = bool(spec.ap_fraction) and bool(rng.random() < spec.ap_fraction)
            view = "AP" if ap else "PA"
            rows.append(
                f"{image_id},{labels},{follow_up},{patient_id},{age},{sex},{view},"
                "2500,2048,0.168,0.168"
            )
            (test if patient in test_patients else train_val).append(image_id)
            images.append((image_id, positive, signs, ap))
    boxes = _write_tarballs(out, images, spec, rng)
    return _write_tables(out, rows, boxes, train_val, test)


def _write_tarballs(out: Path, images: list, spec: PhantomSpec, rng) -> list[tuple]:
    """Draw every phantom (in order, from ``rng``) into tarballs; the lesions' boxes."""
    boxes = []
    for start in range(0, len(images), spec.images_per_archive):
        number = start // spec.images_per_archive + spec.archive_number
        with tarfile.open(out / f"images_{number:03d}.tar.gz", "w:gz", compresslevel=1) as tar:
            for image_id, positive, signs, ap in images[start : start + spec.images_per_archive]:
                phantom = draw_phantom(rng, spec.size, positive, spec, signs, ap)
                if phantom.lesion_box is not None:
                    lesion_finding = "Mass" if spec.findings else spec.finding
                    boxes.append((image_id, lesion_finding, *phantom.lesion_box))
                data = _png_bytes(phantom.pixels)
                info = tarfile.TarInfo(f"images/{image_id}")
                info.size, info.mtime = len(data), 1504999999
                tar.addfile(info, io.BytesIO(data))
    return boxes


def _write_tables(out: Path, rows: list[str], boxes: list, train_val: list, test: list) -> Path:
    """The labels, boxes and split lists beside the tarballs; the labels' path."""
    (out / "BBox_List_2017.csv").write_text(
        BBOX_HEADER
        + "\n"
        + "".join(f"{i},{f},{x:.4f},{y:.4f},{w:.4f},{h:.4f},,,\n" for i, f, x, y, w, h in boxes)
    )
    labels_path = out / "Data_Entry_2017.csv"
    labels_path.write_text(NIH_HEADER + "\n" + "\n".join(rows) + "\n")
    (out / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (out / "test_list.txt").write_text("\n".join(test) + "\n")
    return labels_path
