"""The NoCloud seed of an instance: the small ISO image cloud-init reads on first boot.

The compute driver attaches the seed to the guest as a read-only CD-ROM. cloud-init's
NoCloud datasource in the guest looks for a filesystem labelled `cidata` (blkid
LABEL=cidata), mounts it and reads from its root:

    meta-data       YAML: instance-id (a new one means "first boot") and local-hostname
    user-data       what the user asked for: #cloud-config, a #! script, MIME multipart, ...
    network-config  optional, a version-2 (netplan-style) network config, no `network:` key

The image is built in pure Python with pycdlib, no genisoimage on the host. Each name is
written three times: ISO9660 level 1 (`METADATA.;1`), Rock Ridge and Joliet (`meta-data`),
so that Linux (which shows Rock Ridge names) and other readers of Joliet both see the names
cloud-init opens.

This module also checks what a user hands the seed (user-data, SSH keys, network config):
each check raises `Invalid` with a message the user can act on. It knows nothing of
instances, the store or libvirt: plain strings and dicts in, a file out.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pycdlib
import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pycdlib.pycdlibexception import PyCdlibException

from symphonyd.durable import write_file_durably
from symphonyd.errors import DriverError, Invalid

__all__ = [
    "MAX_USER_DATA",
    "build_seed",
    "check_network_config",
    "check_ssh_key",
    "check_user_data",
    "default_user_data",
    "meta_data",
    "read_seed",
]

MAX_USER_DATA = 64 * 1024
VOLUME_LABEL = "cidata"

# Rock Ridge / Joliet name -> ISO9660 level-1 name (8.3 of d-characters, ';1' version).
_ISO_NAMES = {
    "meta-data": "/METADATA.;1",
    "user-data": "/USERDATA.;1",
    "network-config": "/NETCONF.;1",
}
_FILE_MODE = 0o100444  # a regular file, read-only for all (Rock Ridge PX entry)

# Key types the guest's sshd accepts; DSA (ssh-dss) is gone from OpenSSH.
_SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_MIN_RSA_BITS = 1024  # OpenSSH's own floor (RequiredRSASize)
_KEY_TYPE_RE = re.compile(r"^[a-z0-9@.-]{1,64}$")
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$",
    re.IGNORECASE,
)
_KEY_EXAMPLE = (
    "one line like 'ssh-ed25519 AAAA... you@host' (the contents of ~/.ssh/id_ed25519.pub)"
)


# --- what the user gives -----------------------------------------------------------------


def check_user_data(data: bytes) -> str:
    """The user-data as text, or `Invalid`.

    Any cloud-init format that is text is accepted as it is (#cloud-config, #! scripts,
    #include, #cloud-boothook, MIME multipart); a `#cloud-config` document must also be a
    YAML mapping, so a typo is reported now rather than ignored in the guest on boot.
    """
    text = _text(data, "user-data")
    first_line = text.split("\n", 1)[0].rstrip(" \t\r")
    # Exactly the header: '#cloud-config-archive' and '#cloud-config-jsonp' are other formats.
    if first_line == "#cloud-config":
        doc = _load_yaml(text, "user-data")
        if doc is not None and not isinstance(doc, dict):
            raise Invalid(
                "user-data: a #cloud-config document must be a YAML mapping (key: value lines), "
                f"not {_yaml_kind(doc)}"
            )
    return text


def check_ssh_key(text: str) -> str:
    """One or more OpenSSH public keys, one a line, as `<type> <base64> [comment]` lines.

    Blank lines and `#` comments are skipped, duplicates dropped. Nothing the user gave is
    ever repeated in an error, so a secret pasted by mistake does not end up in a log.
    """
    if len(text) > MAX_USER_DATA:
        raise Invalid(f"SSH keys are {len(text)} characters; the limit is {MAX_USER_DATA}")
    if "PRIVATE KEY" in text or "PuTTY-User-Key-File" in text:
        raise Invalid(
            "that is a PRIVATE key: give its public half instead, the .pub file next to it "
            "(e.g. ~/.ssh/id_ed25519.pub); do not send the private key anywhere"
        )
    if "BEGIN SSH2 PUBLIC KEY" in text:
        raise Invalid(
            "that is an RFC 4716 (SSH2) public key: convert it with 'ssh-keygen -i -f FILE' "
            f"and give {_KEY_EXAMPLE}"
        )
    if "-----BEGIN" in text:
        raise Invalid(
            "that is a PEM key: convert it with 'ssh-keygen -i -m PKCS8 -f FILE' "
            f"and give {_KEY_EXAMPLE}"
        )
    keys: list[str] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            key = _check_key_line(line, number)
            if key not in keys:
                keys.append(key)
    if not keys:
        raise Invalid(f"no SSH public key given: expected {_KEY_EXAMPLE}")
    return "\n".join(keys)


def check_network_config(data: bytes) -> dict[str, Any]:
    """A version-2 network config, as the mapping that goes to the `network-config` file."""
    text = _text(data, "network-config")
    doc = _load_yaml(text, "network-config")
    if not isinstance(doc, dict):
        raise Invalid(
            f"network-config must be a YAML mapping with 'version: 2', not {_yaml_kind(doc)}"
        )
    if "network" in doc:
        raise Invalid(
            "network-config must not have a top-level 'network:' key: the file name already "
            "says it is network configuration, and cloud-init before 22.2 fails on it; remove "
            "the 'network:' line and unindent what was under it"
        )
    version = doc.get("version")
    if type(version) is not int or version != 2:
        raise Invalid(
            f"network-config needs 'version: 2' (the netplan-style format), not version {version!r}"
        )
    return doc


# --- what symphonyd writes ---------------------------------------------------------------


def default_user_data(ssh_keys: list[str], hostname: str) -> str:
    """The `#cloud-config` used when the user gives none: set the hostname and install the
    keys for the image's default user (`ubuntu`, `debian`, `fedora`, ...)."""
    doc: dict[str, Any] = {"hostname": _check_hostname(hostname)}
    if ssh_keys:
        # Checked again: a key holding a newline would add a line to authorized_keys.
        doc["ssh_authorized_keys"] = check_ssh_key("\n".join(ssh_keys)).split("\n")
    return "#cloud-config\n" + _dump_yaml(doc)


def meta_data(instance_id: str, hostname: str) -> str:
    """The `meta-data` file: the instance id cloud-init keys its first boot on, and the
    hostname."""
    return _dump_yaml(
        {
            "instance-id": _check_instance_id(instance_id),
            "local-hostname": _check_hostname(hostname),
        }
    )


def build_seed(
    path: str,
    instance_id: str,
    hostname: str,
    user_data: str,
    network_config: dict[str, Any] | None = None,
) -> None:
    """Write the seed ISO to `path` atomically (temp file in the same folder, fsync, rename),
    mode 0600 since user-data may hold secrets. `user_data` is written as given: check it
    with `check_user_data` when it comes in. `DriverError` if the file can not be written."""
    files = {"meta-data": meta_data(instance_id, hostname), "user-data": user_data}
    if network_config is not None:
        files["network-config"] = _dump_yaml(network_config)
    image = _master({name: text.encode("utf-8") for name, text in files.items()})
    try:
        write_file_durably(path, image)
    except OSError as err:
        raise DriverError(
            f"cannot write the cloud-init seed {path}: {err.strerror or err}", path=path
        ) from err


def read_seed(path: str) -> dict[str, str]:
    """The files at the root of a seed, {Rock Ridge (or Joliet) name: text}; for tests and
    debugging. `DriverError` if it can not be read as an ISO."""
    iso = pycdlib.PyCdlib()
    try:
        iso.open(path)
    except (OSError, PyCdlibException) as err:
        raise DriverError(f"cannot read the cloud-init seed {path}: {_one_line(err)}") from err
    try:
        if iso.has_rock_ridge():
            by = "rr_path"
        elif iso.has_joliet():
            by = "joliet_path"
        else:
            by = "iso_path"
        files: dict[str, str] = {}
        for record in iso.list_children(**{by: "/"}):
            if not record.is_file():
                continue
            name = iso.full_path_from_dirrecord(record, rockridge=by == "rr_path").lstrip("/")
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, **{by: "/" + name})
            files[name] = out.getvalue().decode("utf-8", errors="replace")
        return files
    except (OSError, PyCdlibException) as err:
        raise DriverError(f"cannot read the cloud-init seed {path}: {_one_line(err)}") from err
    finally:
        iso.close()


# --- helpers -----------------------------------------------------------------------------


def _master(files: dict[str, bytes]) -> bytes:
    """The ISO image holding `files` at its root, in memory (a seed is a few dozen KiB)."""
    iso = pycdlib.PyCdlib()
    try:
        iso.new(interchange_level=1, vol_ident=VOLUME_LABEL, joliet=3, rock_ridge="1.09")
        for name, data in files.items():
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                iso_path=_ISO_NAMES[name],
                rr_name=name,
                joliet_path="/" + name,
                file_mode=_FILE_MODE,
            )
        out = io.BytesIO()
        iso.write_fp(out)
        iso.close()
    except PyCdlibException as err:
        raise DriverError(f"cannot build the cloud-init seed: {_one_line(err)}") from err
    return out.getvalue()


def _text(data: bytes, what: str) -> str:
    if len(data) > MAX_USER_DATA:
        raise Invalid(
            f"{what} is {len(data)} bytes; the limit is {MAX_USER_DATA} bytes (64 KiB)",
            size=len(data),
        )
    nul = data.find(b"\0")
    if nul >= 0:
        raise Invalid(
            f"{what} must be text, but byte {nul} is NUL (binary or gzip-compressed "
            f"{what} is not accepted)"
        )
    if data.startswith(b"\xef\xbb\xbf"):
        raise Invalid(
            f"{what} starts with a UTF-8 byte order mark, which hides its first line from "
            "cloud-init: save it without BOM"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise Invalid(
            f"{what} must be UTF-8 text, but byte {err.start} is not (save it as UTF-8)"
        ) from None


def _load_yaml(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        # The problem's line first; where the enclosing thing began if that is elsewhere
        # ("while parsing a flow sequence" opened two lines up).
        mark, context = err.problem_mark or err.context_mark, err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = _one_line(err.problem or err.context or "syntax error")
        if err.problem and err.context and context and mark and context.line != mark.line:
            problem += f" ({_one_line(err.context)} at line {context.line + 1})"
        details = {"line": mark.line + 1} if mark else {}
        raise Invalid(f"{what} is not valid YAML{where}: {problem}", **details) from None
    except yaml.YAMLError as err:
        raise Invalid(f"{what} is not valid YAML: {_one_line(err)}") from None
    except RecursionError:
        raise Invalid(f"{what} is nested too deeply to be read") from None


def _dump_yaml(doc: dict[str, Any]) -> str:
    # A wide line: a 4096-bit RSA key stays on one line instead of being folded.
    text: str = yaml.safe_dump(doc, default_flow_style=False, sort_keys=False, width=1 << 16)
    return text


def _check_key_line(line: str, number: int) -> str:
    fields = line.split(None, 2)
    kind = fields[0]
    if kind == "ssh-dss":
        raise Invalid(f"line {number}: DSA (ssh-dss) keys are refused by OpenSSH; use ed25519")
    if len(fields) < 2 or not _KEY_TYPE_RE.match(kind):
        raise Invalid(f"line {number} is not an OpenSSH public key: expected {_KEY_EXAMPLE}")
    if kind not in _SSH_KEY_TYPES:
        raise Invalid(
            f"line {number}: unsupported key type {kind!r}; use ssh-ed25519, ssh-rsa or ecdsa"
        )
    try:
        key = serialization.load_ssh_public_key(f"{kind} {fields[1]}".encode("ascii"))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
        raise Invalid(
            f"line {number} is not a valid {kind} public key (damaged or cut short?): "
            f"expected {_KEY_EXAMPLE}"
        ) from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        raise Invalid(
            f"line {number}: a {key.key_size}-bit RSA key is too small for sshd; "
            "use ed25519 or RSA of 3072 bits or more"
        )
    comment = fields[2].strip() if len(fields) > 2 else ""
    if not comment.isprintable():
        raise Invalid(f"line {number}: the key's comment holds control characters")
    # The original type and blob, not a re-encoding: cryptography reads an
    # sk-ssh-ed25519@openssh.com key as a plain Ed25519 key, and sshd would then
    # want a plain signature the security key can not make.
    return " ".join(part for part in (kind, fields[1], comment) if part)


def _check_hostname(hostname: str) -> str:
    if not isinstance(hostname, str) or not _HOSTNAME_RE.match(hostname):
        raise Invalid(
            f"invalid hostname {hostname!r}: use labels of 1-63 letters, digits and '-', "
            "separated by dots, at most 253 characters"
        )
    return hostname


def _check_instance_id(instance_id: str) -> str:
    if (
        not isinstance(instance_id, str)
        or not 0 < len(instance_id) <= 255
        or not instance_id.isprintable()
        or instance_id != instance_id.strip()
    ):
        raise Invalid(
            f"invalid instance id {instance_id!r}: use 1-255 printable characters, "
            "no leading or trailing space"
        )
    return instance_id


def _yaml_kind(doc: object) -> str:
    if isinstance(doc, list):
        return "a list"
    if doc is None:
        return "an empty document"
    return f"a single {type(doc).__name__} value"


def _one_line(err: object) -> str:
    return " ".join(str(err).split())
