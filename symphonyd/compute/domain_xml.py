"""libvirt domain XML for symphonyd's instances: built from a `DomainSpec`, and read back.

Pure functions over text (no libvirt, no file system): `domain_xml` builds the whole
definition of one domain; `disk_xml`, `add_disk` and `remove_disk` make and edit one disk
(hot-plug, or a redefinition where the hypervisor cannot hot-plug); `parse_metadata` and
`parse_domain` read what `domains()` reports. Every user value goes through ElementTree,
never into a string by concatenation, so a name or a path cannot change the document.

What a domain looks like: named `symphonyd-<instance name>`, its UUID is the instance id,
and `<metadata>` carries `<sym:instance>` with the id and the name (the tag that tells the
domains symphonyd defined from the host's others). Virtio disks, the cloud-init seed as a
read-only SATA CD-ROM, the serial console written to a file, user or bridge networking,
ACPI (graceful shutdown and disk hot-plug need it) and no graphics at all (qemu rejects
`<graphics type='none'/>`).
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Collection
from dataclasses import dataclass

from symphonyd.compute.driver import DiskSpec, DomainSpec
from symphonyd.errors import Conflict, Invalid, NotFound

__all__ = [
    "NAMESPACE",
    "NAME_PREFIX",
    "VIRT_TYPES",
    "ParsedDomain",
    "add_disk",
    "disk_xml",
    "domain_name",
    "domain_uuid",
    "domain_xml",
    "parse_domain",
    "parse_metadata",
    "remove_disk",
]

NAMESPACE = "https://symphonyd.dev/xmlns/instance/1"
NAME_PREFIX = "symphonyd-"
VIRT_TYPES = ("kvm", "qemu", "test")

ET.register_namespace("sym", NAMESPACE)

_INSTANCE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SYM = f"{{{NAMESPACE}}}"


@dataclass(frozen=True)
class ParsedDomain:
    """What `domains()` reports of a domain, read from its XML."""

    instance_id: str | None  # None: the domain carries no symphonyd metadata
    vcpus: int  # current
    max_vcpus: int
    memory: int  # bytes, current
    max_memory: int  # bytes
    disks: tuple[str, ...]  # source paths of its disks (not CD-ROMs), in target order


def domain_name(name: str) -> str:
    """The libvirt name of an instance's domain."""
    return NAME_PREFIX + name


def domain_uuid(instance_id: str) -> str:
    """The domain's UUID: the instance id (32 hex digits) as 8-4-4-4-12."""
    if not isinstance(instance_id, str) or not _INSTANCE_ID_RE.match(instance_id):
        raise Invalid(f"an instance id is 32 lowercase hex digits, not {instance_id!r}")
    h = instance_id
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _disk_element(disk: DiskSpec, block: bool) -> ET.Element:
    if disk.format not in ("raw", "qcow2"):
        raise Invalid(f"disk format must be raw or qcow2, not {disk.format!r}")
    element = ET.Element("disk", {"type": "block" if block else "file", "device": "disk"})
    _sub(element, "driver", name="qemu", type=disk.format)
    if block:
        _sub(element, "source", dev=disk.path)
    else:
        _sub(element, "source", file=disk.path)
    _sub(element, "target", dev=disk.target, bus="virtio")
    if disk.serial:
        _sub(element, "serial", disk.serial)
    return element


def _is_block(path: str, block_devices: Collection[str] | None) -> bool:
    return path.startswith("/dev/") if block_devices is None else path in block_devices


def _interface(devices: ET.Element, network: str) -> None:
    if network == "user":
        interface = _sub(devices, "interface", type="user")
    elif network.startswith("bridge=") and len(network) > len("bridge="):
        interface = _sub(devices, "interface", type="bridge")
        _sub(interface, "source", bridge=network[len("bridge=") :])
    else:
        raise Invalid(f"network must be 'user' or 'bridge=NAME', not {network!r}")
    _sub(interface, "model", type="virtio")


def domain_xml(
    spec: DomainSpec,
    virt_type: str,
    machine: str | None,
    emulator: str | None = None,
    block_devices: Collection[str] | None = None,
) -> str:
    """The libvirt definition of `spec`'s domain. `block_devices`: which disk paths are
    block devices (`<source dev=...>`; the caller stats them); None: those under /dev/."""
    if virt_type not in VIRT_TYPES:
        raise Invalid(f"virt_type must be one of {', '.join(VIRT_TYPES)}, not {virt_type!r}")
    root = ET.Element("domain", {"type": virt_type})
    _sub(root, "name", domain_name(spec.name))
    _sub(root, "uuid", domain_uuid(spec.instance_id))
    metadata = _sub(root, "metadata")
    tag = _sub(metadata, f"{_SYM}instance")
    _sub(tag, f"{_SYM}id", spec.instance_id)
    _sub(tag, f"{_SYM}name", spec.name)
    _sub(root, "memory", str(max(spec.max_memory, spec.memory) // 1024), unit="KiB")
    _sub(root, "currentMemory", str(spec.memory // 1024), unit="KiB")
    _sub(root, "vcpu", str(max(spec.max_vcpus, spec.vcpus)), current=str(spec.vcpus))
    os_element = _sub(root, "os")
    os_type = _sub(os_element, "type", "hvm", arch="x86_64")
    if machine:
        os_type.set("machine", machine)
    _sub(os_element, "boot", dev="hd")
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    if emulator:
        _sub(devices, "emulator", emulator)
    targets = [disk.target for disk in spec.disks]
    if len(set(targets)) != len(targets):
        raise Invalid(f"disk targets must differ: {', '.join(targets)}")
    for disk in spec.disks:
        devices.append(_disk_element(disk, _is_block(disk.path, block_devices)))
    if spec.seed:
        cdrom = _sub(devices, "disk", type="file", device="cdrom")
        _sub(cdrom, "driver", name="qemu", type="raw")
        _sub(cdrom, "source", file=spec.seed)
        _sub(cdrom, "target", dev="sda", bus="sata")
        _sub(cdrom, "readonly")
    for kind in ("serial", "console"):
        console = _sub(devices, kind, type="file")
        _sub(console, "source", path=spec.console_log)
        if kind == "serial":
            _sub(console, "target", port="0")
        else:
            _sub(console, "target", type="serial", port="0")
    _interface(devices, spec.network)
    return ET.tostring(root, encoding="unicode")


def disk_xml(disk: DiskSpec, block: bool) -> str:
    """One `<disk>` element (what attachDeviceFlags takes)."""
    return ET.tostring(_disk_element(disk, block), encoding="unicode")


def _disk_of(devices: ET.Element, target: str) -> ET.Element | None:
    for disk in devices.findall("disk"):
        found = disk.find("target")
        if found is not None and found.get("dev") == target:
            return disk
    return None


def _devices(root: ET.Element) -> ET.Element:
    devices = root.find("devices")
    return devices if devices is not None else ET.SubElement(root, "devices")


def add_disk(xml: str, disk: DiskSpec, block: bool) -> str:
    """`xml` (a domain's definition) with `disk` added; Conflict if its target is taken."""
    root = ET.fromstring(xml)
    devices = _devices(root)
    if _disk_of(devices, disk.target) is not None:
        raise Conflict(f"the domain already has a disk {disk.target}")
    disks = devices.findall("disk")
    where = list(devices).index(disks[-1]) + 1 if disks else len(devices)
    devices.insert(where, _disk_element(disk, block))
    return ET.tostring(root, encoding="unicode")


def remove_disk(xml: str, target: str) -> tuple[str, str]:
    """`xml` without its disk `target`, and that disk's own XML; NotFound if it has none."""
    root = ET.fromstring(xml)
    devices = _devices(root)
    disk = _disk_of(devices, target)
    if disk is None:
        raise NotFound(f"the domain has no disk {target}")
    devices.remove(disk)
    return ET.tostring(root, encoding="unicode"), ET.tostring(disk, encoding="unicode")


def _metadata_id(root: ET.Element) -> str | None:
    found = root.find(f"metadata/{_SYM}instance/{_SYM}id")
    text = (found.text or "").strip() if found is not None else ""
    return text if _INSTANCE_ID_RE.match(text) else None


def parse_metadata(xml: str) -> str | None:
    """The instance id a domain's XML carries in symphonyd's metadata (None: it has none)."""
    return _metadata_id(ET.fromstring(xml))


def _target_order(target: str) -> tuple[int, str]:
    return (len(target), target)  # vda < vdb < ... < vdz < vdaa


def _memory(root: ET.Element, tag: str) -> int:
    element = root.find(tag)
    if element is None:
        return 0
    return int(element.text or 0) * _UNITS.get(element.get("unit", "KiB"), 1024)


@functools.lru_cache(maxsize=4096)
def parse_domain(xml: str) -> ParsedDomain:
    """The instance id, vcpus, memory and disk paths of a domain's XML. Kept by the XML's
    text (a node lists its domains on every pass; most have not changed since)."""
    root = ET.fromstring(xml)
    vcpu = root.find("vcpu")
    max_vcpus = int(vcpu.text or 0) if vcpu is not None else 0
    vcpus = int(vcpu.get("current") or max_vcpus) if vcpu is not None else 0
    max_memory = _memory(root, "memory")
    memory = _memory(root, "currentMemory") or max_memory
    disks: list[tuple[tuple[int, str], str]] = []
    for disk in root.findall("devices/disk"):
        source, target = disk.find("source"), disk.find("target")
        if disk.get("device", "disk") != "disk" or source is None:
            continue
        path = source.get("file") or source.get("dev") or source.get("name") or ""
        dev = target.get("dev", "") if target is not None else ""
        disks.append((_target_order(dev), path))
    paths = tuple(path for _, path in sorted(disks))
    return ParsedDomain(_metadata_id(root), vcpus, max_vcpus, memory, max_memory, paths)


_UNITS = {
    "b": 1,
    "bytes": 1,
    "KB": 1000,
    "k": 1024,
    "KiB": 1024,
    "MB": 1000**2,
    "M": 1024**2,
    "MiB": 1024**2,
    "GB": 1000**3,
    "G": 1024**3,
    "GiB": 1024**3,
}
