"""The `libvirt` compute driver: this host's domains through libvirt-python.

`LibvirtDriver(uri, data_dir)` talks to `uri`; "" means this node's own, isolated libvirt
test driver (in-process, described by `<data_dir>/compute/libvirt-test.xml`, written on
first use; `test:///default` is refused: every connection of a process shares it). The
test driver keeps its domains in its connection: a reconnect finds it empty.

libvirt is imported on first use (`_libvirt()`), so symphonyd imports and runs on a host
without libvirt0. Every libvirt error leaves a public method as one line of the tree:
NoSuchDomain, NotSupported, Unreachable (the connection is reopened on the next call), or
DriverError. It must not import the store, Raft or the API.

Events: `watch()` runs on the event loop, and makes libvirt's events run there
(`libvirt_events`: one event implementation per process, a later loop takes it over once
the first is closed). Lifecycle callbacks run on the loop thread; the instance id comes
from a cache by UUID, or the domain's metadata. libvirt's numbers (states, reasons,
events) read as words through `libvirt_words`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import stat
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

from symphonyd.compute import domain_xml as dx
from symphonyd.compute import libvirt_words as words
from symphonyd.compute.driver import (
    Capabilities,
    DiskSpec,
    DomainEvent,
    DomainExists,
    DomainInfo,
    DomainSpec,
    HostInfo,
    NoSuchDomain,
    NotSupported,
    Unreachable,
)
from symphonyd.compute.libvirt_events import events_loop, events_on
from symphonyd.drivers import Health, host_error
from symphonyd.errors import DriverError, Invalid, SymphonyError

__all__ = ["LibvirtDriver"]

log = logging.getLogger("symphonyd.compute.libvirt")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
HOST_ATTEMPTS = 3  # tries of the host queries (libvirtd just started: see host())

_module: Any = None


def _libvirt() -> Any:
    """libvirt-python, imported on first use (its errors then stop printing to stderr)."""
    global _module
    if _module is None:
        try:
            import libvirt
        except ImportError as exc:
            message = "libvirt-python needs the host's libvirt0: apt-get install libvirt0"
            raise DriverError(f"{message} ({exc})") from exc
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _module = libvirt
    return _module


@contextlib.contextmanager
def _unless(*codes: str) -> Iterator[None]:
    """Ignore the libvirt errors of these codes (names of libvirt's VIR_ERR_*)."""
    lv = _libvirt()
    try:
        yield
    except lv.libvirtError as exc:
        if exc.get_error_code() not in [getattr(lv, code) for code in codes]:
            raise


def _bounded(fn: Callable[[], T], timeout: float) -> T:
    """`fn()` in a helper thread, waited for at most `timeout` s (then TimeoutError)."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append((True, fn()))
        except BaseException as exc:
            result.append((False, exc))

    thread = threading.Thread(target=run, name="libvirt-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise TimeoutError
    ok, value = result[0]
    if not ok:
        raise value
    return cast(T, value)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def _host_memory() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _test_node_xml(cpus: int, memory: int) -> str:
    """A test driver `<node>`: `cpus` CPUs (one socket, a core each), `memory` bytes."""
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    fields = dict(mhz=2000, model="x86_64", active=cpus, nodes=1, sockets=1, cores=cpus, threads=1)
    for tag, value in fields.items():
        ET.SubElement(cpu, tag).text = str(value)
    ET.SubElement(node, "memory").text = str(memory // 1024)  # KiB
    return ET.tostring(node, encoding="unicode") + "\n"


def _boundary(what: str) -> Callable[[F], F]:
    """Errors raised inside the decorated method leave it as errors of the tree."""

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def guarded(self: LibvirtDriver, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except SymphonyError:
                raise
            except Exception as exc:
                mapped = self._mapped(what, exc)
                if mapped is None:
                    raise
                raise mapped from exc

        return cast(F, guarded)

    return decorate


class LibvirtDriver:
    """The compute driver of one libvirt connection (see the module's docstring)."""

    name = "libvirt"
    open_timeout = 30.0  # s: to open the connection, and to answer check()

    def __init__(
        self,
        uri: str,
        data_dir: str,
        virt_type: str = "auto",
        machine: str | None = None,
        test_cpus: int = 0,
        test_memory: int = 0,
    ) -> None:
        if uri == "test:///default":
            raise Invalid("test:///default is shared by the whole process: leave uri empty")
        self.test_node = os.path.join(os.path.abspath(data_dir), "compute", "libvirt-test.xml")
        self.uri = uri or "test://" + urllib.parse.quote(self.test_node)
        self.test = self.uri.startswith("test:")
        self.virt_type = self._resolve(virt_type)
        self.machine = machine or None
        self.test_cpus, self.test_memory = test_cpus, test_memory
        real = not self.test
        self.capabilities = Capabilities(
            hotplug_disks=real, live_resize=True, graceful_shutdown=real
        )
        self._lock = threading.RLock()  # guards opening and dropping the connection
        self._conn: Any = None
        self._lost = False  # the connection broke: reopen it on the next call
        self._on_event: Callable[[DomainEvent | None], None] | None = None
        self._callback_id: int | None = None
        self._watch_loop: asyncio.AbstractEventLoop | None = None
        self._ids: dict[str, str | None] = {}  # UUID -> instance id (None: unmanaged)

    def _resolve(self, virt_type: str) -> str:
        if virt_type != "auto":
            if virt_type not in dx.VIRT_TYPES:
                raise Invalid(f"virt_type must be auto, kvm, qemu or test, not {virt_type!r}")
            return virt_type
        if self.test:
            return "test"
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        except OSError:
            return "qemu"
        return "kvm"

    # -- the connection --------------------------------------------------------------------

    @property
    def connection(self) -> Any:
        """The open libvirt connection (for tests: the test driver's state is in it)."""
        return self._connection()

    def _connection(self) -> Any:
        with self._lock:
            if self._conn is not None and self._lost:
                self._drop()
            if self._conn is None:
                self._conn, self._lost = self._open(), False
            if self._on_event is not None and self._callback_id is None:
                self._subscribe(self._conn)
            return self._conn

    def _open(self) -> Any:
        lv = _libvirt()
        if self.uri == "test://" + urllib.parse.quote(self.test_node):
            self._write_test_node()
        abandoned = threading.Event()

        def attempt() -> Any:
            conn = lv.open(self.uri)
            if abandoned.is_set():  # it answered after we gave up on it
                conn.close()
            return conn

        try:
            return _bounded(attempt, self.open_timeout)
        except TimeoutError:
            abandoned.set()
            raise Unreachable(f"{self.uri} did not answer within {self.open_timeout:g} s") from None
        except lv.libvirtError as exc:
            raise Unreachable(f"cannot connect to {self.uri}: {_one_line(exc)}") from exc

    def _write_test_node(self) -> None:
        if os.path.exists(self.test_node):
            return
        os.makedirs(os.path.dirname(self.test_node), mode=0o700, exist_ok=True)
        text = _test_node_xml(
            self.test_cpus or os.cpu_count() or 1, self.test_memory or _host_memory()
        )
        partial = f"{self.test_node}.{os.getpid()}.tmp"
        with open(partial, "w") as f:
            f.write(text)
        os.replace(partial, self.test_node)

    def _subscribe(self, conn: Any) -> None:
        lv = _libvirt()
        lifecycle = lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE
        self._callback_id = conn.domainEventRegisterAny(None, lifecycle, self._lifecycle, None)
        conn.registerCloseCallback(self._closed, None)
        self._watch_loop = events_loop()
        with _unless("VIR_ERR_NO_SUPPORT"):  # the test driver has no keepalive
            conn.setKeepAlive(5, 3)

    def _unsubscribe(self) -> None:
        lv, conn, callback_id = _libvirt(), self._conn, self._callback_id
        self._callback_id = self._watch_loop = None
        if conn is not None and callback_id is not None:
            with contextlib.suppress(lv.libvirtError):
                conn.domainEventDeregisterAny(callback_id)
            with contextlib.suppress(lv.libvirtError):
                conn.unregisterCloseCallback()

    def _drop(self) -> None:
        """Forget the connection (its callbacks first), closing it."""
        self._unsubscribe()
        conn, self._conn = self._conn, None
        self._ids.clear()
        if conn is not None:
            with contextlib.suppress(_libvirt().libvirtError):
                conn.close()

    def _mapped(self, what: str, exc: BaseException) -> SymphonyError | None:
        """The tree's error for `exc`, met while doing `what` (None: not a host error)."""
        lv = sys.modules.get("libvirt")
        if lv is not None and isinstance(exc, lv.libvirtError):
            code, domain = exc.get_error_code(), exc.get_error_domain()
            message = f"libvirt {what} failed: {_one_line(exc)}"
            if code == lv.VIR_ERR_NO_DOMAIN:
                return NoSuchDomain(message)
            if code in (lv.VIR_ERR_NO_SUPPORT, lv.VIR_ERR_OPERATION_UNSUPPORTED) or (
                code == lv.VIR_ERR_ARGUMENT_UNSUPPORTED
            ):
                return NotSupported(message)
            lost = (lv.VIR_ERR_NO_CONNECT, lv.VIR_ERR_INVALID_CONN, lv.VIR_ERR_RPC)
            if code in lost or domain in (lv.VIR_FROM_RPC, lv.VIR_FROM_REMOTE):
                self._lost = True
                return Unreachable(message)
            return DriverError(message, code=code)
        return host_error(f"libvirt {what}", exc) if isinstance(exc, OSError) else None

    def _domain(self, instance_id: str) -> Any:
        dom = self._lookup(self._connection().lookupByUUIDString, dx.domain_uuid(instance_id))
        if dom is None:
            raise NoSuchDomain(f"no domain for instance {instance_id}")
        return dom

    @staticmethod
    def _lookup(find: Callable[[str], Any], key: str) -> Any:
        """The domain `find(key)` names, or None when there is none."""
        try:
            return find(key)
        except _libvirt().libvirtError as exc:
            if exc.get_error_code() == _libvirt().VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _info(self, dom: Any) -> DomainInfo:
        parsed = dx.parse_domain(dom.XMLDesc(0))
        self._ids[dom.UUIDString()] = parsed.instance_id
        state, reason = words.domain_state(*dom.state())
        return DomainInfo(
            instance_id=parsed.instance_id,
            name=dom.name(),
            state=state,
            reason=reason,
            vcpus=parsed.vcpus,
            memory=parsed.memory,
            disks=parsed.disks,
        )

    # -- reading ---------------------------------------------------------------------------

    def check(self) -> Health:
        try:
            hypervisor = _bounded(self._hypervisor, self.open_timeout)
        except TimeoutError:
            self._lost = True
            return Health(False, f"{self.uri} did not answer within {self.open_timeout:g} s")
        except SymphonyError as exc:
            return Health(False, exc.message)
        return Health(True, f"{self.uri} answers: {hypervisor}, {self.virt_type} domains")

    @_boundary("check")
    def _hypervisor(self) -> str:
        conn = self._connection()
        v = conn.getVersion()
        return f"{conn.getType()} {v // 1000000}.{v // 1000 % 1000}.{v % 1000}"

    @_boundary("host")
    def host(self) -> HostInfo:
        lv = _libvirt()
        for attempt in range(HOST_ATTEMPTS):
            conn = self._connection()
            try:
                info = conn.getInfo()  # [model, MiB, cpus, mhz, nodes, sockets, cores, threads]
                memory = info[1] << 20
                with _unless("VIR_ERR_NO_SUPPORT"):  # the test driver: getInfo's MiB
                    stats = conn.getMemoryStats(lv.VIR_NODE_MEMORY_STATS_ALL_CELLS)
                    memory = stats["total"] * 1024
                break
            except lv.libvirtError:
                # A libvirtd that has just (re)started answers its first host queries
                # with "an error occurred, but the cause is unknown" at times (seen in CI).
                if attempt + 1 == HOST_ATTEMPTS:
                    raise
                time.sleep(0.5)
        return HostInfo(info[2], memory, self._hypervisor(), self.virt_type)

    @_boundary("list domains")
    def domains(self) -> list[DomainInfo]:
        found = []
        for dom in self._connection().listAllDomains(0):
            with _unless("VIR_ERR_NO_DOMAIN"):  # gone meanwhile
                found.append(self._info(dom))
        return sorted(found, key=lambda d: d.name)

    # -- changing --------------------------------------------------------------------------

    @_boundary("define")
    def define(self, spec: DomainSpec) -> DomainInfo:
        """Define or redefine (same UUID) the domain; a rename needs it stopped."""
        block = {d.path for d in spec.disks if _is_block_device(d.path)}
        xml = dx.domain_xml(spec, self.virt_type, self.machine, block_devices=block)
        name, uuid = dx.domain_name(spec.name), dx.domain_uuid(spec.instance_id)
        conn = self._connection()
        named = self._lookup(conn.lookupByName, name)
        if named is not None and named.UUIDString() != uuid:
            raise DomainExists(f"domain {name} exists for another UUID, {named.UUIDString()}")
        same = self._lookup(conn.lookupByUUIDString, uuid)
        if same is not None and same.name() != name:
            if same.isActive():
                raise DomainExists(f"instance {spec.instance_id} runs as {same.name()}")
            same.rename(name, 0)
        dom = conn.defineXML(xml)
        self._ids[uuid] = spec.instance_id
        return self._info(dom)

    @_boundary("start")
    def start(self, instance_id: str) -> None:
        """Start the domain; resume it when paused; nothing when it runs."""
        dom = self._domain(instance_id)
        if dom.state()[0] == _libvirt().VIR_DOMAIN_PAUSED:
            dom.resume()
        elif not dom.isActive():
            dom.create()

    @_boundary("shutdown")
    def shutdown(self, instance_id: str) -> None:
        """ACPI power-off (qemu, without a guest agent); nothing when it is off."""
        dom = self._domain(instance_id)
        if dom.isActive():
            dom.shutdown()

    @_boundary("destroy")
    def destroy(self, instance_id: str) -> None:
        dom = self._domain(instance_id)
        if dom.isActive():
            with _unless("VIR_ERR_OPERATION_INVALID"):  # it stopped meanwhile
                dom.destroy()

    @_boundary("reboot")
    def reboot(self, instance_id: str) -> None:
        self._domain(instance_id).reboot(0)

    @_boundary("undefine")
    def undefine(self, instance_id: str) -> None:
        """Destroy (if running) and undefine, dropping snapshot metadata and managed save."""
        lv, dom = _libvirt(), self._domain(instance_id)
        persistent = dom.isPersistent()
        self.destroy(instance_id)
        if persistent:
            flags = lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            try:
                dom.undefineFlags(flags | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
            except lv.libvirtError as exc:  # the test driver has no checkpoints
                if exc.get_error_code() != lv.VIR_ERR_INVALID_ARG:
                    raise
                dom.undefineFlags(flags)
        if self._on_event is None:  # else its `undefined` event still needs the id
            self._ids.pop(dx.domain_uuid(instance_id), None)

    @_boundary("set vcpus")
    def set_vcpus(self, instance_id: str, vcpus: int, live: bool) -> None:
        """Live (when `live` and it runs: up to its maximum) and in the definition (whose
        maximum grows when the change is not live)."""
        self._resize(instance_id, "vcpus", vcpus, live)

    @_boundary("set memory")
    def set_memory(self, instance_id: str, memory: int, live: bool) -> None:
        """Like set_vcpus, for memory (bytes)."""
        self._resize(instance_id, "memory", memory // 1024, live)

    def _resize(self, instance_id: str, what: str, value: int, live: bool) -> None:
        lv, dom = _libvirt(), self._domain(instance_id)
        if value < 1:
            raise Invalid(f"cannot set the {what} of instance {instance_id} to {value}")
        if what == "vcpus":
            change, maximum = dom.setVcpusFlags, lv.VIR_DOMAIN_VCPU_MAXIMUM
        else:
            change, maximum = dom.setMemoryFlags, lv.VIR_DOMAIN_MEM_MAXIMUM
        if live and dom.isActive():  # then apart: the test driver refuses LIVE|CONFIG
            change(value, lv.VIR_DOMAIN_AFFECT_LIVE)
        else:
            defined = dx.parse_domain(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE))
            if value > (defined.max_vcpus if what == "vcpus" else defined.max_memory // 1024):
                change(value, lv.VIR_DOMAIN_AFFECT_CONFIG | maximum)
        change(value, lv.VIR_DOMAIN_AFFECT_CONFIG)

    @_boundary("attach disk")
    def attach_disk(self, instance_id: str, disk: DiskSpec, live: bool) -> None:
        block = _is_block_device(disk.path)
        device = dx.disk_xml(disk, block)
        self._change_disk(
            instance_id, live, True, device, lambda xml: dx.add_disk(xml, disk, block)
        )

    @_boundary("detach disk")
    def detach_disk(self, instance_id: str, target: str, live: bool) -> None:
        lv, dom = _libvirt(), self._domain(instance_id)
        flags = 0 if live and dom.isActive() else lv.VIR_DOMAIN_XML_INACTIVE
        _, device = dx.remove_disk(dom.XMLDesc(flags), target)
        self._change_disk(
            instance_id, live, False, device, lambda xml: dx.remove_disk(xml, target)[0]
        )

    def _change_disk(
        self, instance_id: str, live: bool, attach: bool, device: str, edit: Callable[[str], str]
    ) -> None:
        """Hot-plug when `live` and running; else in the definition, redefined where the
        hypervisor cannot change a definition's devices (the test driver)."""
        lv, dom = _libvirt(), self._domain(instance_id)
        change = dom.attachDeviceFlags if attach else dom.detachDeviceFlags
        if live and dom.isActive():
            change(device, lv.VIR_DOMAIN_AFFECT_LIVE | lv.VIR_DOMAIN_AFFECT_CONFIG)
            return
        try:
            change(device, lv.VIR_DOMAIN_AFFECT_CONFIG)
        except lv.libvirtError as exc:
            if exc.get_error_code() != lv.VIR_ERR_NO_SUPPORT:
                raise
            inactive = dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE | lv.VIR_DOMAIN_XML_SECURE)
            self._connection().defineXML(edit(inactive))

    # -- events ----------------------------------------------------------------------------

    @_boundary("watch")
    def watch(self, on_event: Callable[[DomainEvent | None], None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise DriverError("watch() must be called on the running event loop") from None
        _libvirt()  # before libvirtaio imports it: a missing libvirt0 is a DriverError
        events_on(loop)
        with self._lock:
            self._on_event = on_event
            if self._conn is not None and self._watch_loop is not loop:
                if self.test:  # its domains live in this connection: keep it
                    self._unsubscribe()
                else:  # opened before events ran on this loop: its I/O is not watched
                    self._drop()
        # The connection is (re)opened and subscribed by the next call, in a worker thread:
        # opening one to a busy libvirtd takes seconds, never on the loop.

    def _lifecycle(self, conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        on_event = self._on_event
        if conn is not self._conn or on_event is None:
            return
        try:
            lv = _libvirt()
            uuid = dom.UUIDString()
            if event == lv.VIR_DOMAIN_EVENT_DEFINED or uuid not in self._ids:
                try:
                    dom.metadata(lv.VIR_DOMAIN_METADATA_ELEMENT, dx.NAMESPACE)
                    self._ids[uuid] = uuid.replace("-", "")  # ours: its UUID is its id
                except lv.libvirtError:
                    self._ids.setdefault(uuid, None)
            instance_id = self._ids.get(uuid)
            if event == lv.VIR_DOMAIN_EVENT_UNDEFINED:
                self._ids.pop(uuid, None)
            what, why = words.lifecycle_event(event, detail)
            on_event(DomainEvent(instance_id, dom.name(), what, why))
        except Exception:
            log.exception("libvirt: handling a lifecycle event failed")

    def _closed(self, conn: Any, reason: int, _opaque: Any) -> None:
        if conn is not self._conn:
            return
        self._lost = True
        why = words.close_reason(reason)
        log.warning("libvirt: the connection to %s closed (%s)", self.uri, why)
        if self._on_event is not None:
            try:
                self._on_event(None)
            except Exception:
                log.exception("libvirt: handling a lost connection failed")

    def close(self) -> None:
        with self._lock:
            self._on_event = None
            self._drop()
