"""The lvm driver with real lvm2 on loop devices, in metadata-only mode (this kernel has
no device-mapper), and the activating path's image writer on a loop device itself."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from symphonyd.block.driver import NoSuchVolume, NotSupported, PoolFull, VolumeExists, make_driver
from symphonyd.block.lvm import LvmDriver, LvmHost, write_image, zero_device
from symphonyd.errors import Conflict, DriverError, Invalid, NotFound

pytestmark = pytest.mark.privileged

MiB = 1024 * 1024
VID = "0123456789abcdef0123456789abcdef"
VID2 = "fedcba9876543210fedcba9876543210"


def vg_name(tmp_path: Path) -> str:
    """A name no other test (or earlier failed run) uses."""
    return f"sytest-{abs(hash(str(tmp_path))) % 10**8}"


def test_physical_volumes_and_groups(loop_devices: Callable[[int], str], tmp_path: Path) -> None:
    host = LvmHost(metadata_only=True)
    device = loop_devices(256 * MiB)
    pv = host.create_pv(device)
    assert pv.device == device and pv.size == 256 * MiB and pv.vg == ""
    with pytest.raises(Conflict, match="already a physical volume"):
        host.create_pv(device)
    name = vg_name(tmp_path)
    group = host.create_vg(name, [device])
    assert group.name == name and 0 < group.free <= 256 * MiB and group.lv_count == 0
    assert host.physical_volumes()[device].vg == name
    with pytest.raises(Conflict, match=f"already a physical volume of volume group {name}"):
        host.create_pv(device)
    with pytest.raises(Conflict, match="belongs to volume group"):
        host.remove_pv(device)
    with pytest.raises(Conflict, match="already exists"):
        host.create_vg(name, [device])
    host.remove_vg(name)
    assert name not in host.volume_groups()
    host.remove_pv(device)
    assert device not in host.physical_volumes()


def test_bad_devices_are_refused_before_lvm_runs(tmp_path: Path) -> None:
    host = LvmHost(metadata_only=True)
    with pytest.raises(NotFound, match="no device /dev/nonexistent-sy"):
        host.create_pv("/dev/nonexistent-sy")
    regular = tmp_path / "file"
    regular.write_bytes(b"x")
    with pytest.raises(Invalid, match="not a block device"):
        host.create_pv(str(regular))
    for bad in ("relative/dev", "/dev/../etc/passwd"):
        with pytest.raises(Invalid, match="not an absolute device path"):
            host.create_pv(bad)
    with pytest.raises(NotFound, match="not a physical volume"):
        host.create_vg("sytest-none", ["/dev/nonexistent-sy"])


def test_a_device_holding_a_filesystem_is_not_wiped(loop_devices: Callable[[int], str]) -> None:
    device = loop_devices(64 * MiB)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", device], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 is not available: {made.stderr}")
    with pytest.raises(DriverError, match=r"pvcreate .* failed"):
        LvmHost(metadata_only=True).create_pv(device)
    blkid = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", device], capture_output=True)
    assert blkid.stdout.strip() == b"ext4"


def test_volumes_in_metadata_only_mode(loop_devices: Callable[[int], str], tmp_path: Path) -> None:
    host = LvmHost(metadata_only=True)
    device = loop_devices(512 * MiB)
    host.create_pv(device)
    name = vg_name(tmp_path)
    host.create_vg(name, [device])
    driver = make_driver("lvm", pool=name, data_dir=str(tmp_path), metadata_only=True)
    assert isinstance(driver, LvmDriver)
    health = driver.check()
    assert health.ok and "metadata-only" in health.message
    free_before = driver.pool().free

    info = driver.create(VID, 100 * MiB)
    assert info.size == 100 * MiB and info.path == f"/dev/{name}/sy-{VID}"
    assert driver.volumes() == {VID: info}
    assert driver.pool().free == free_before - 100 * MiB
    odd = driver.create(VID2, 5 * MiB)  # rounded up to whole 4 MiB extents
    assert odd.size == 8 * MiB
    with pytest.raises(VolumeExists):
        driver.create(VID, MiB)
    with pytest.raises(PoolFull, match="bytes free"):
        driver.create("aa" * 16, 10 * 1024 * MiB)

    grown = driver.resize(VID, 200 * MiB)
    assert grown.size == 200 * MiB
    with pytest.raises(NotSupported, match="only grow"):
        driver.resize(VID, 100 * MiB)
    with pytest.raises(NotSupported, match="metadata-only"):
        driver.snapshot(VID, "before")
    image = tmp_path / "image.raw"
    image.write_bytes(b"x" * 4096)
    with pytest.raises(NotSupported, match="metadata-only"):
        driver.create("bb" * 16, 10 * MiB, str(image), "raw")
    assert set(driver.volumes()) == {VID, VID2}  # nothing half-made

    with pytest.raises(Conflict, match="still holds 2 logical volumes"):
        host.remove_vg(name)
    driver.delete(VID)
    driver.delete(VID2)
    with pytest.raises(NoSuchVolume):
        driver.delete(VID)
    assert driver.volumes() == {}
    host.remove_vg(name)
    assert driver.pool().free == 0 and "does not exist yet" in driver.check().message
    host.remove_pv(device)


def test_image_writer_zeroes_and_writes_a_block_device(
    loop_devices: Callable[[int], str], tmp_path: Path
) -> None:
    """What the activating path does into a fresh LV, done into a loop device full of old
    data: nothing of it may show through the image's holes."""
    size = 32 * MiB
    device = loop_devices(size)
    with open(device, "r+b") as f:
        f.write(b"\xaa" * size)
    rng = random.Random(7)
    image = tmp_path / "image.raw"
    with open(image, "wb") as f:
        f.truncate(20 * MiB)  # data, a hole, data, then a trailing hole
        f.write(rng.randbytes(3 * MiB))
        f.seek(10 * MiB)
        f.write(rng.randbytes(MiB + 17))
    zero_device(device, size)
    write_image(device, str(image), "raw", None)
    with open(device, "rb") as f:
        written = f.read()
    assert written[: 20 * MiB] == image.read_bytes()
    assert written[20 * MiB :] == bytes(12 * MiB)

    qcow2 = tmp_path / "image.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(image), str(qcow2)], check=True
    )
    with open(device, "r+b") as f:
        f.write(b"\x55" * size)
    zero_device(device, size)
    write_image(device, str(qcow2), "qcow2", "qemu-img")
    with open(device, "rb") as f:
        assert f.read(20 * MiB) == image.read_bytes()
        assert f.read() == bytes(12 * MiB)


def test_image_larger_than_the_device_is_refused(
    loop_devices: Callable[[int], str], tmp_path: Path
) -> None:
    device = loop_devices(4 * MiB)
    image = tmp_path / "big.raw"
    with open(image, "wb") as f:
        f.truncate(8 * MiB)
    with pytest.raises(Invalid, match="larger than the volume"):
        write_image(device, str(image), "raw", None)
    assert os.path.exists(device)


def test_a_kernel_without_device_mapper_needs_metadata_only(tmp_path: Path) -> None:
    """Issue 16, item 8: an lvm service was accepted (and healthy) without device-mapper,
    and the first LV then failed with lvm2's 'Required device-mapper target(s)'."""
    from symphonyd.block.lvm import device_mapper_present

    with_dm = tmp_path / "misc-dm"
    with_dm.write_text(" 60 device-mapper\n183 hw_random\n")
    without = tmp_path / "misc"
    without.write_text("183 hw_random\n")
    assert device_mapper_present(str(with_dm)) and not device_mapper_present(str(without))
    assert not device_mapper_present(str(tmp_path / "nonexistent"))
    if device_mapper_present():
        pytest.skip("this kernel has device-mapper: the refusal cannot be seen here")
    health = make_driver("lvm", pool="vg-x", data_dir=str(tmp_path)).check()
    assert not health.ok and "metadata_only=true" in health.message
    assert make_driver("lvm", pool="vg-x", data_dir=str(tmp_path), metadata_only=True).check().ok
