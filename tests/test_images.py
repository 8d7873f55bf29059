"""Image discovery, in-place archive reading, the one preprocessing function, error kinds, caps."""

from __future__ import annotations

import io

import numpy as np
import pytest
from images_kit import broken_variants, valid_variants, write_files, write_tar

from medai.images import (
    MAX_BYTES,
    ImageError,
    decode_image,
    discover_images,
    error_kind,
    iter_archive,
    iter_members,
    read_bytes,
)


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


def test_a_list_names_sources_relative_to_its_own_folder(tmp_path, monkeypatch):
    write_files(tmp_path / "lists" / "sub", {"near.png": b"1"})
    write_files(tmp_path / "far", {"far.png": b"2"})
    listing = tmp_path / "lists" / "arrivals.txt"
    listing.write_text(f"sub/near.png\n{tmp_path / 'far' / 'far.png'}\nnot_yet.png\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory plays no part
    assert discover_images([str(listing)]).files == (
        str(tmp_path / "lists" / "sub" / "near.png"),
        str(tmp_path / "far" / "far.png"),
        str(tmp_path / "lists" / "not_yet.png"),  # kept: a read-error row until it arrives
    )
    uri = discover_images([f"file://{listing}"])
    assert uri.files[0] == f"file://{tmp_path / 'lists' / 'sub' / 'near.png'}"
    assert read_bytes(uri.files[0]) == b"1"


@pytest.mark.parametrize("name", ["test_list.txt", "train_val_list.txt"])
def test_an_nih_split_list_is_refused_with_what_to_give_instead(tmp_path, name):
    (tmp_path / name).write_text("00000001_000.png\n")
    with pytest.raises(ImageError, match="is an NIH split list.*Give the folder of the tarballs"):
        discover_images([str(tmp_path / name)])


def test_archive_members_read_in_place(tmp_path):
    files = valid_variants()
    archive = write_tar(tmp_path / "images_001.tar.gz", files)
    members = dict(iter_archive(str(archive)))
    assert set(members) == {f"images/{n}" for n in files}
    assert read_bytes(f"{archive}::images/gray.png") == files["gray.png"]
    assert list(tmp_path.iterdir()) == [archive]  # nothing extracted beside it
    assert dict(iter_archive(str(archive), wanted={"rgb.png"})).keys() == {"images/rgb.png"}


def test_decode_errors_are_final_kind_with_stable_texts():
    for name, data in broken_variants().items():
        texts = set()
        for _ in range(2):
            with pytest.raises(ImageError) as err:
                decode_image(data, 64)
            assert err.value.kind == "decode", name
            texts.add(err.value.text)
        # PIL names the BytesIO by its memory address; the stored text must not carry it.
        assert len(texts) == 1 and "0x" not in texts.pop(), name
    assert error_kind("decode error: empty file") == "decode"
    assert error_kind("read error: cannot read x") == "read"
    assert error_kind("not a decodable image: old text") is None and error_kind(None) is None


def test_read_failures_are_read_kind(tmp_path):
    with pytest.raises(ImageError) as missing:
        read_bytes(str(tmp_path / "gone.png"))
    assert missing.value.kind == "read" and missing.value.text.startswith("read error: ")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError) as folder:
        read_bytes(str(tmp_path / "folder.png"))
    assert folder.value.kind == "read"
    archive = write_tar(
        tmp_path / "a.tar.gz", {f"p{i}.png": valid_variants()["gray.png"] for i in range(20)}
    )
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ImageError) as truncated:
        read_bytes(f"{archive}::images/p19.png")
    assert truncated.value.kind == "read" and "unreadable archive" in str(truncated.value)
    (tmp_path / "garbage.tar.gz").write_bytes(b"not gzip at all" * 100)
    for archive in (tmp_path / "garbage.tar.gz", tmp_path / "gone.tar.gz"):
        with pytest.raises(ImageError) as unreadable:
            read_bytes(f"{archive}::images/p1.png")
        assert unreadable.value.kind == "read", unreadable.value


def test_a_bug_in_reading_an_archive_is_not_a_read_error(tmp_path, monkeypatch):
    import medai.images

    def buggy(*args, **kwargs):
        raise TypeError("a bug in medai, not a bad archive")

    monkeypatch.setattr(medai.images, "iter_members", buggy)
    with pytest.raises(TypeError, match="a bug in medai"):
        read_bytes(f"{tmp_path / 'a.tar.gz'}::images/p1.png")


def test_file_above_the_size_cap_is_refused_without_reading(tmp_path):
    import tracemalloc

    big = tmp_path / "huge.png"
    with big.open("wb") as handle:
        handle.truncate(MAX_BYTES + 1)  # sparse: no disk, no time
    tracemalloc.start()
    try:
        with pytest.raises(ImageError) as err:
            read_bytes(str(big))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.kind == "decode" and "too large" in str(err.value)
    assert peak < MAX_BYTES // 64, f"{peak} bytes allocated refusing a file by its size"
    small = tmp_path / "small.png"
    small.write_bytes(valid_variants()["gray.png"])
    with pytest.raises(ImageError, match="too large"):
        read_bytes(str(small), max_bytes=100)


def test_archive_member_above_the_cap_is_an_error_row_and_the_rest_is_read(tmp_path):
    from medai.datasets import read_unit

    files = {"big.png": valid_variants()["rgb.png"], "ok.png": valid_variants()["gray.png"]}
    archive = write_tar(tmp_path / "images_001.tar.gz", files)
    cap = len(files["ok.png"]) + 1
    members = {m.name: m for m in iter_members(str(archive), max_bytes=cap)}
    assert (
        members["images/big.png"].error.kind == "decode" and members["images/big.png"].data == b""
    )
    assert (
        members["images/ok.png"].error is None and members["images/ok.png"].data == files["ok.png"]
    )
    loose = write_files(
        tmp_path / "loose", {"large.png": files["big.png"], "fine.png": files["ok.png"]}
    )
    batch = {"archive": [str(archive), ""], "files": [[], [str(p) for p in loose]]}
    rows = [
        r
        for block in read_unit(batch, max_bytes=cap)
        for r in zip(block["image_id"], block["error"], strict=True)
    ]
    errors = dict(rows)
    assert errors["big.png"].startswith("decode error: file too large") and errors["ok.png"] == ""
    assert (
        errors["large.png"].startswith("decode error: file too large") and errors["fine.png"] == ""
    )


def test_missing_source_of_a_list_is_a_read_error_row_not_a_refusal(tmp_path):
    from medai.datasets import read_unit

    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'later.png'}\n")
    found = discover_images([str(listing)])
    assert found.files == (str(tmp_path / "later.png"),)
    (block,) = read_unit({"archive": [""], "files": [list(found.files)]})
    assert block["error"][0].startswith("read error: cannot read")


def _sixteen_bit_png(height: int, width: int) -> tuple[bytes, np.ndarray]:
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    array = (20 + 60000 * (x + y) / (height + width)).astype(np.uint16)  # smooth, full range
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue(), array


def test_sixteen_bit_decodes_without_a_full_size_float_copy():
    import tracemalloc

    from PIL import Image

    data, array = _sixteen_bit_png(2000, 1600)
    tracemalloc.start()
    try:
        image = decode_image(data, 75)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A float64 copy of this image is 4x its 16-bit bytes; even one full-size copy would show.
    assert peak < array.nbytes // 4, f"{peak} bytes allocated decoding {array.nbytes} bytes"
    full = array.astype(np.float64) * (255.0 / array.max())
    reference = Image.fromarray(full.astype(np.uint8)).resize((75, 75), Image.Resampling.BILINEAR)
    difference = np.abs(image[:, :, 0].astype(int) - np.asarray(reference, dtype=int))
    assert image.max() >= 250 and difference.max() <= 2
