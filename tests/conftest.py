"""Shared fixtures: a real local Ray, phantom archives in the NIH layout, real Keras models."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chestxray8-sample"
PHANTOM_SIZE = 128
# Validation AUC 0.98-0.99 after epoch 3 in the three recorded runs of this fixture; a 4th epoch
# costs 50 s on a 2-core AVX2 host.
TRAINED_EPOCHS = 3
MULTI_FINDINGS = ("Mass", "Effusion", "Cardiomegaly")
MULTI_SIZE = 96


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray for the whole test session (2 CPUs, like the CI machine)."""
    import ray

    from medai.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def phantom_archive(tmp_path_factory) -> Path:
    """A phantom archive in the NIH layout: images_001.tar.gz, Data_Entry_2017.csv, lists."""
    from medai.phantoms import PhantomSpec, write_phantom_archive

    folder = tmp_path_factory.mktemp("phantoms")
    write_phantom_archive(folder, PhantomSpec(n_patients=200, size=PHANTOM_SIZE, seed=1))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """An untrained model saved in the model-directory format (75 px, the smallest input)."""
    return save_untrained_model(tmp_path_factory.mktemp("tiny-model"), image_size=75, seed=0)


def save_untrained_model(
    out: Path, image_size: int = 75, seed: int = 0, threshold: float = 0.5
) -> Path:
    """Build a random-weight model and save it as a model directory."""
    import keras

    from medai.artifact import save_model_dir
    from medai.model import ModelSpec, build_model

    keras.utils.set_random_seed(seed)
    model = build_model(ModelSpec(image_size, "gap", "none"))
    save_model_dir(
        model,
        out,
        {
            "finding": "Mass",
            "image_size": image_size,
            "head": "gap",
            "weights": "none",
            "threshold": threshold,
        },
    )
    return out


@pytest.fixture(scope="session")
def trained_model(ray_session, phantom_archive, tmp_path_factory) -> tuple[Path, dict]:
    """A model trained on phantoms with 2 Ray Train workers, from random weights."""
    folder = tmp_path_factory.mktemp("trained")
    return train_phantoms(phantom_archive, folder, epochs=TRAINED_EPOCHS)


def train_phantoms(archive: Path, folder: Path, **options) -> tuple[Path, dict]:
    """Train a 2-worker model from random weights on a phantom archive into ``folder/model``.

    Args:
        archive: A folder written by :func:`medai.phantoms.write_phantom_archive`.
        folder: Where the model directory goes.
        options: TrainConfig fields that differ from the phantom defaults (epochs, ...).
    """
    from medai.train import TrainConfig, run_training

    out = folder / "model"
    defaults = {
        "batch_size": 16,
        "image_size": PHANTOM_SIZE,
        "weights": "none",
        "num_workers": 2,
        "seed": 0,
    }
    card = run_training(
        TrainConfig(
            labels=str(archive / "Data_Entry_2017.csv"),
            images=(str(archive),),
            out=str(out),
            **(defaults | options),
        )
    )
    return out, card


@pytest.fixture(scope="session")
def multi_phantom_archive(tmp_path_factory) -> Path:
    """Phantoms carrying Mass, Effusion and Cardiomegaly independently (NIH layout)."""
    from medai.phantoms import PhantomSpec, write_phantom_archive

    folder = tmp_path_factory.mktemp("multi-phantoms")
    spec = PhantomSpec(
        n_patients=240, size=PHANTOM_SIZE, seed=3, positive_fraction=0.4, findings=MULTI_FINDINGS
    )
    write_phantom_archive(folder, spec)
    return folder


@pytest.fixture(scope="session")
def multi_trained_model(ray_session, multi_phantom_archive, tmp_path_factory) -> tuple[Path, dict]:
    """One model with an output per finding of :data:`MULTI_FINDINGS`, 2 Ray Train workers."""
    return train_phantoms(
        multi_phantom_archive,
        tmp_path_factory.mktemp("multi-trained"),
        finding=",".join(MULTI_FINDINGS),
        epochs=5,
        image_size=MULTI_SIZE,
    )


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The shared real ChestX-ray8 sample; tests using it skip when it is absent."""
    if not (SAMPLE / "images_001.tar.gz").is_file():
        pytest.skip(f"real ChestX-ray8 sample not found at {SAMPLE}")
    return SAMPLE


def _rewrite_members(archive: Path, replace: dict[str, bytes]) -> None:
    """Rewrite a tarball with some members' bytes replaced (corrupt images)."""
    with tarfile.open(archive) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    with tarfile.open(archive, "w:gz") as tar:
        for member, data in members:
            data = replace.get(Path(member.name).name, data)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def _readable_members(archive: Path) -> list[str]:
    """Image ids a streaming reader gets from an archive before any fault."""
    names = []
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                if member.isfile():
                    tar.extractfile(member).read()
                    names.append(Path(member.name).name)
    except (tarfile.TarError, EOFError, OSError):
        pass
    return names


@pytest.fixture(scope="session")
def messy_archive(tmp_path_factory) -> dict:
    """Phantoms in three tarballs: three corrupt train/val members in the first, the second
    truncated to 60% of its bytes (a broken download)."""
    from medai.labels import read_split_list
    from medai.phantoms import PhantomSpec, write_phantom_archive

    folder = tmp_path_factory.mktemp("messy")
    spec = PhantomSpec(n_patients=44, size=96, seed=5, images_per_archive=32)
    labels = write_phantom_archive(folder, spec)
    first, second, *_ = sorted(folder.glob("images_*.tar.gz"))
    train_val = set(read_split_list(folder / "train_val_list.txt"))
    in_first = [name for name in _readable_members(first) if name in train_val]
    corrupt = in_first[:3]
    _rewrite_members(
        first,
        {
            corrupt[0]: b"not an image",
            corrupt[1]: b"\x89PNG\r\n\x1a\n" + b"\0" * 30,
            corrupt[2]: b"",
        },
    )
    in_second = [name for name in _readable_members(second) if name in train_val]
    data = second.read_bytes()
    second.write_bytes(data[: int(len(data) * 0.6)])
    survived = [name for name in _readable_members(second) if name in train_val]
    assert 0 < len(survived) < len(in_second)
    return {
        "folder": folder,
        "labels": labels,
        "corrupt": corrupt,
        "truncated": second,
        "lost": sorted(set(in_second) - set(survived)),
    }
