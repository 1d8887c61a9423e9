"""The file block driver on real files (and real qemu-img for qcow2)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from symphonyd.block.driver import NoSuchVolume, NotSupported, VolumeExists, make_driver
from symphonyd.block.file import FileDriver
from symphonyd.errors import Invalid

MiB = 1024 * 1024
VID = "0123456789abcdef0123456789abcdef"
VID2 = "fedcba9876543210fedcba9876543210"


@pytest.fixture
def driver(tmp_path: Path) -> FileDriver:
    made = make_driver("file", pool="pool", data_dir=str(tmp_path))
    assert isinstance(made, FileDriver)
    return made


def raw_image(path: Path, size: int) -> bytes:
    data = random.Random(3).randbytes(size)
    with open(path, "wb") as f:
        f.truncate(4 * size)
        f.write(data)  # data at the start, a hole after it
    return data


def test_empty_volume_is_sparse_and_listed(driver: FileDriver) -> None:
    info = driver.create(VID, 100 * MiB)
    assert info.size == 100 * MiB and info.format == "raw" and info.allocated < MiB
    assert driver.volumes() == {VID: info}
    assert driver.check().ok and driver.pool().free > 0


def test_volume_from_a_raw_image_holds_the_image_then_zeros(
    driver: FileDriver, tmp_path: Path
) -> None:
    image = tmp_path / "img.raw"
    data = raw_image(image, 2 * MiB)
    info = driver.create(VID, 16 * MiB, image=str(image), image_format="raw")
    content = Path(info.path).read_bytes()
    assert content[: len(data)] == data and content[len(data) :] == bytes(16 * MiB - len(data))
    assert info.allocated < 4 * MiB  # the hole stayed a hole


def test_an_image_larger_than_the_volume_is_refused_and_nothing_is_left(
    driver: FileDriver, tmp_path: Path
) -> None:
    image = tmp_path / "img.raw"
    raw_image(image, 2 * MiB)  # 8 MiB logical
    with pytest.raises(Invalid, match="larger than the volume"):
        driver.create(VID, 4 * MiB, image=str(image), image_format="raw")
    assert driver.volumes() == {}


def test_resize_grows_only(driver: FileDriver) -> None:
    driver.create(VID, 10 * MiB)
    assert driver.resize(VID, 20 * MiB).size == 20 * MiB
    with pytest.raises(NotSupported, match="only grow"):
        driver.resize(VID, 5 * MiB)
    with pytest.raises(NoSuchVolume):
        driver.resize(VID2, 5 * MiB)


def test_snapshot_and_delete(driver: FileDriver, tmp_path: Path) -> None:
    image = tmp_path / "img.raw"
    data = raw_image(image, MiB)
    info = driver.create(VID, 8 * MiB, image=str(image), image_format="raw")
    snap = driver.snapshot(VID, "before-upgrade")
    assert Path(snap.path).read_bytes() == Path(info.path).read_bytes()
    assert Path(snap.path).read_bytes()[: len(data)] == data
    with pytest.raises(VolumeExists):
        driver.snapshot(VID, "before-upgrade")
    with pytest.raises(Invalid):
        driver.snapshot(VID, "../escape")
    with pytest.raises(VolumeExists):
        driver.create(VID, MiB)
    driver.delete(VID)
    assert driver.volumes() == {} and list(Path(driver.root).iterdir()) == []


def test_bad_input(driver: FileDriver) -> None:
    with pytest.raises(Invalid):
        driver.create("../../etc/passwd", MiB)
    with pytest.raises(Invalid):
        driver.create(VID, 0)
    assert driver.volumes() == {}


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (qemu-utils) missing")
def test_qcow2_images_convert_or_overlay(driver: FileDriver, tmp_path: Path) -> None:
    raw = tmp_path / "src.raw"
    data = raw_image(raw, MiB)
    qcow2 = tmp_path / "img.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    converted = driver.create(VID, 8 * MiB, image=str(qcow2), image_format="qcow2")
    assert converted.format == "raw"
    assert Path(converted.path).read_bytes()[: len(data)] == data
    overlay = driver.create(VID2, 8 * MiB, image=str(qcow2), image_format="qcow2", overlay=True)
    assert overlay.format == "qcow2" and overlay.size == 8 * MiB
    assert overlay.allocated < MiB  # copy-on-write: nothing copied
    assert driver.resize(VID2, 16 * MiB).size == 16 * MiB
    driver.snapshot(VID2, "s1")
    out = subprocess.run(
        ["qemu-img", "snapshot", "-l", overlay.path], capture_output=True, text=True, check=True
    ).stdout
    assert "s1" in out
    assert set(driver.volumes()) == {VID, VID2}
    assert os.path.exists(overlay.path)
