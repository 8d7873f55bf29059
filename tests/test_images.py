"""Image discovery, in-place archive reading and the one preprocessing function."""

from __future__ import annotations

import numpy as np
import pytest
from images_kit import broken_variants, valid_variants, write_files, write_tar

from medai.images import ImageError, decode_image, discover_images, iter_archive, read_bytes


@pytest.mark.parametrize("name", sorted(valid_variants()))
def test_valid_variants_decode_to_uint8_single_channel(name):
    image = decode_image(valid_variants()[name], 80)
    assert image.shape == (80, 80, 1) and image.dtype == np.uint8
    assert 20 < image.mean() < 235  # real content, not a blank frame


def test_rgb_rgba_and_gray_give_the_same_pixels():
    variants = valid_variants()
    gray = decode_image(variants["gray.png"], 64)
    assert np.array_equal(decode_image(variants["rgb.png"], 64), gray)
    assert np.array_equal(decode_image(variants["rgba.png"], 64), gray)


def test_sixteen_bit_uses_full_range():
    image = decode_image(valid_variants()["sixteen.png"], 64)
    assert image.max() >= 250


@pytest.mark.parametrize("name", sorted(broken_variants()))
def test_broken_files_raise_image_error(name):
    with pytest.raises(ImageError) as err:
        decode_image(broken_variants()[name], 64)
    assert "\n" not in str(err.value)


def test_discover_folder_recursive_tarballs_lists_and_uris(tmp_path):
    write_files(tmp_path / "a" / "b", {"x.png": b"1", "y.jpg": b"2", "skip.csv": b"3"})
    write_tar(tmp_path / "images_001.tar.gz", {"z.png": b"4"})
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'a' / 'b' / 'x.png'}\n# comment\n")
    found = discover_images([str(tmp_path)])
    assert [p.rsplit("/", 1)[-1] for p in found.files] == ["x.png", "y.jpg"]
    assert found.archives == (str(tmp_path / "images_001.tar.gz"),)
    assert discover_images([str(listing)]).files == (str(tmp_path / "a" / "b" / "x.png"),)
    uri = discover_images([f"file://{tmp_path}/a"])
    assert uri.files[0].startswith("file://") and read_bytes(uri.files[0]) == b"1"
    with pytest.raises(ImageError, match="no such file"):
        discover_images([str(tmp_path / "missing")])


def test_archive_members_read_in_place(tmp_path):
    files = valid_variants()
    archive = write_tar(tmp_path / "images_001.tar.gz", files)
    members = dict(iter_archive(str(archive)))
    assert set(members) == {f"images/{n}" for n in files}
    assert read_bytes(f"{archive}::images/gray.png") == files["gray.png"]
    assert list(tmp_path.iterdir()) == [archive]  # nothing extracted beside it
    assert dict(iter_archive(str(archive), wanted={"rgb.png"})).keys() == {"images/rgb.png"}
