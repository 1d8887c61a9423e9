"""Settings of a node: built-in defaults < `/etc/symphonyd/symphonyd.toml` < environment
< command-line flags; and the layout of the data directory.

Data directory (`/var/lib/symphonyd` by default, `SYMPHONYD_DATA_DIR`):

    control.sock        local control socket (0600; root on the host needs no token)
    identity.json       this node's name, cluster id and membership (0600)
    secret              the cluster secret: Raft encryption key (0600)
    tls/cert.pem, tls/key.pem   the cluster certificate for the HTTPS API
    raft/               journal.log, journal.state, snapshot
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any

from symphonyd.block.driver import check_options
from symphonyd.compute.driver import check_options as check_compute_options
from symphonyd.errors import Invalid

DEFAULT_CONFIG_FILE = "/etc/symphonyd/symphonyd.toml"
DEFAULT_DATA_DIR = "/var/lib/symphonyd"
DEFAULT_API_PORT = 15760
DEFAULT_RAFT_PORT = 15761
API_DEFAULTS = {"header_timeout": 10.0, "max_connections": 512}  # [api] (api/connections.py)
# [store]: what the replicated store may weigh before new data is refused, and what of its
# Raft log and change history this node holds in RAM (see docs/configuration.md).
STORE_DEFAULTS = {
    "quota": 2 << 30,
    "log_max_bytes": 256 << 20,
    "history_max_bytes": 64 << 20,
    "disk_reserve": 64 << 20,
}


def default_data_dir() -> str:
    return os.environ.get("SYMPHONYD_DATA_DIR") or DEFAULT_DATA_DIR


def default_address(route_table: str = "/proc/net/route") -> str:
    """The IPv4 address of the interface that holds the default route (what peers on the
    host's network most likely reach it by), or 127.0.0.1. Reads the kernel's tables only:
    no packet is sent."""
    try:
        with open(route_table) as f:
            rows = [line.split() for line in f.read().splitlines()[1:]]
        interface = next(r[0] for r in rows if len(r) > 1 and r[1] == "00000000")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            request = struct.pack("256s", interface.encode()[:15])
            answer = fcntl.ioctl(probe.fileno(), 0x8915, request)  # SIOCGIFADDR
        return socket.inet_ntoa(answer[20:24])
    except (OSError, StopIteration):
        return "127.0.0.1"


@dataclass
class Settings:
    """Everything `symphonyd run` needs to know; see docs/configuration.md."""

    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0].lower())
    data_dir: str = field(default_factory=default_data_dir)
    address: str = field(default_factory=default_address)
    bind: str | None = None  # listen address for API and Raft; default: `address`
    api_port: int = DEFAULT_API_PORT
    raft_port: int = DEFAULT_RAFT_PORT
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json"
    raft: dict[str, Any] = field(default_factory=dict)  # pysyncobj tuning (SyncObjConf names)
    # What `service new` enables when not told: {driver, pool, options}; file driver, pool
    # "default" unless set.
    block: dict[str, Any] = field(default_factory=dict)
    # What `service new compute` enables when not told: {driver, options}; libvirt on this
    # node's own test driver unless `options.uri` is set (e.g. "qemu:///system").
    compute: dict[str, Any] = field(default_factory=dict)
    # Directories of lifecycle modules besides `<data-dir>/lifecycles/`.
    lifecycle_dirs: list[str] = field(default_factory=list)
    # Who lifecycle processes run as: "auto" (the user symphonyd-lifecycle where it
    # exists), a user name, or "" (the daemon's own user).
    lifecycle_user: str = "auto"
    # Limits of the API's connections: {header_timeout (s), max_connections}.
    api: dict[str, Any] = field(default_factory=dict)
    # Bounds of the store in bytes: {quota, log_max_bytes, history_max_bytes}.
    store: dict[str, Any] = field(default_factory=dict)

    @property
    def listen(self) -> str:
        return self.bind or self.address

    @property
    def raft_addr(self) -> str:
        return f"{self.address}:{self.raft_port}"

    @property
    def socket_path(self) -> str:
        return os.path.join(self.data_dir, "control.sock")

    def path(self, *parts: str) -> str:
        return os.path.join(self.data_dir, *parts)


def load_settings(config_file: str | None, overrides: dict[str, Any]) -> Settings:
    """Merge the settings file (if any) with flags; flags given as None are ignored."""
    values: dict[str, Any] = {}
    path = config_file or os.environ.get("SYMPHONYD_CONFIG") or DEFAULT_CONFIG_FILE
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise Invalid(f"cannot read settings file {path}: {exc}") from exc
        known = {f.name for f in fields(Settings)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise Invalid(f"{path}: unknown settings: {', '.join(unknown)}")
        values.update(data)
    elif config_file:
        raise Invalid(f"settings file {config_file} does not exist")
    values.update({k: v for k, v in overrides.items() if v is not None})
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    from symphonyd.validation import check_name

    check_name(settings.name, what="node name")
    for port_name in ("api_port", "raft_port"):
        port = getattr(settings, port_name)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise Invalid(f"{port_name} must be a port number, not {port!r}")
    if settings.api_port == settings.raft_port:
        raise Invalid("api_port and raft_port must differ")
    if settings.log_level not in ("debug", "info", "warning", "error"):
        raise Invalid(
            f"log_level must be debug, info, warning or error, not {settings.log_level!r}"
        )
    if settings.log_format not in ("text", "json"):
        raise Invalid(f"log_format must be text or json, not {settings.log_format!r}")
    if not isinstance(settings.block, dict):
        raise Invalid("block must be a table: [block] driver = ..., pool = ..., options = {...}")
    unknown = sorted(set(settings.block) - {"driver", "pool", "options"})
    if unknown:
        raise Invalid(f"[block]: unknown settings: {', '.join(unknown)} (driver, pool, options)")
    driver = settings.block.get("driver", "file")
    settings.block["options"] = check_options(driver, settings.block.get("options", {}))
    check_name(settings.block.get("pool", "default"), what="[block] pool")
    if not isinstance(settings.compute, dict):
        raise Invalid("compute must be a table: [compute] driver = ..., options = {...}")
    unknown = sorted(set(settings.compute) - {"driver", "options"})
    if unknown:
        raise Invalid(f"[compute]: unknown settings: {', '.join(unknown)} (driver, options)")
    settings.compute["options"] = check_compute_options(
        settings.compute.get("driver", "libvirt"), settings.compute.get("options", {})
    )
    if not isinstance(settings.lifecycle_dirs, list) or not all(
        isinstance(d, str) and os.path.isabs(d) for d in settings.lifecycle_dirs
    ):
        raise Invalid("lifecycle_dirs must be a list of absolute directory paths")
    if not isinstance(settings.lifecycle_user, str):
        raise Invalid('lifecycle_user must be a user name, "auto" or ""')
    from symphonyd.lifecycle.supervisor import run_as_user  # pwd; refuses a missing user

    run_as_user(settings.lifecycle_user)
    _check_api(settings.api)
    settings.store = _check_store(settings.store)
    if not settings.address or any(c.isspace() for c in settings.address):
        raise Invalid(f"invalid address {settings.address!r}")


def _check_store(store: object) -> dict[str, int]:
    """[store] with every bound filled in, in bytes ("2G", "256M" or a number of bytes)."""
    from symphonyd.validation import parse_size

    if not isinstance(store, dict):
        raise Invalid("store must be a table: [store] quota = ..., log_max_bytes = ...")
    unknown = sorted(set(store) - set(STORE_DEFAULTS))
    if unknown:
        raise Invalid(
            f"[store]: unknown settings: {', '.join(unknown)} ({', '.join(STORE_DEFAULTS)})"
        )
    bounds = {}
    for name, default in STORE_DEFAULTS.items():
        value = store.get(name, default)
        try:
            bounds[name] = parse_size(value)
        except Invalid as exc:
            raise Invalid(f"[store] {name}: {exc}") from None
        if bounds[name] < 1 << 20:
            raise Invalid(f"[store] {name} must be at least 1M, not {value!r}")
    return bounds


def _check_api(api: object) -> None:
    if not isinstance(api, dict):
        raise Invalid("api must be a table: [api] header_timeout = ..., max_connections = ...")
    unknown = sorted(set(api) - {"header_timeout", "max_connections"})
    if unknown:
        raise Invalid(
            f"[api]: unknown settings: {', '.join(unknown)} (header_timeout, max_connections)"
        )
    timeout = api.get("header_timeout", API_DEFAULTS["header_timeout"])
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise Invalid(f"[api] header_timeout must be seconds above 0, not {timeout!r}")
    limit = api.get("max_connections", API_DEFAULTS["max_connections"])
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise Invalid(f"[api] max_connections must be a whole number above 0, not {limit!r}")
