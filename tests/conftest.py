"""Shared fixtures: a real local Ray, phantom archives in the NIH layout, real Keras models."""

from __future__ import annotations

import os
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
