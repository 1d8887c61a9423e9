"""The cloud-init NoCloud seed (symphonyd/compute/cloudinit.py): real ISOs built in tmp_path
and read back with pycdlib, and the checks of what a user gives the seed."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pycdlib
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from symphonyd.compute.cloudinit import (
    MAX_USER_DATA,
    build_seed,
    check_network_config,
    check_ssh_key,
    check_user_data,
    default_user_data,
    meta_data,
    read_seed,
)
from symphonyd.errors import DriverError, Invalid

NETWORK = {"version": 2, "ethernets": {"eth0": {"dhcp4": True}}}


def public_line(
    key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
) -> str:
    raw = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return raw.decode()


@pytest.fixture(scope="module")
def ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def iso_file(iso: pycdlib.PyCdlib, **path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue()


def names(iso: pycdlib.PyCdlib, **root: str) -> set[str]:
    return {
        iso.full_path_from_dirrecord(rec, rockridge="rr_path" in root).lstrip("/")
        for rec in iso.list_children(**root)
        if rec.is_file()
    }


# --- the seed ISO ------------------------------------------------------------------------


def test_a_seed_reads_back_by_its_names_label_and_bytes(tmp_path: Path) -> None:
    path = str(tmp_path / "seed.iso")
    user_data = (
        "#cloud-config\npackages: [curl]\nwrite_files:\n- path: /etc/motd\n  content: héllo\n"
    )
    build_seed(path, "i-0123", "web1", user_data, NETWORK)

    iso = pycdlib.PyCdlib()
    iso.open(path)
    try:
        # The label NoCloud finds the seed by, in the primary volume descriptor and in Joliet's.
        assert iso.pvd.volume_identifier.rstrip(b" ") == b"cidata"
        assert iso.joliet_vd is not None
        assert iso.joliet_vd.volume_identifier.decode("utf-16-be").rstrip() == "cidata"
        assert iso.has_rock_ridge() and iso.has_joliet()

        wanted = {"meta-data", "user-data", "network-config"}
        assert names(iso, rr_path="/") == wanted
        assert names(iso, joliet_path="/") == wanted
        assert names(iso, iso_path="/") == {"METADATA.;1", "USERDATA.;1", "NETCONF.;1"}

        expected = {
            "meta-data": b"instance-id: i-0123\nlocal-hostname: web1\n",
            "user-data": user_data.encode(),
            "network-config": yaml.safe_dump(NETWORK, sort_keys=False).encode(),
        }
        for name, data in expected.items():
            assert iso_file(iso, rr_path="/" + name) == data
            assert iso_file(iso, joliet_path="/" + name) == data
            assert iso.file_mode(rr_path="/" + name) == 0o100444
        assert iso_file(iso, iso_path="/METADATA.;1") == expected["meta-data"]
    finally:
        iso.close()

    seed = read_seed(path)
    assert seed == {name: data.decode() for name, data in expected.items()}
    assert yaml.safe_load(seed["network-config"]) == NETWORK
    assert os.stat(path).st_mode & 0o777 == 0o600  # user-data may hold secrets
    assert os.listdir(tmp_path) == ["seed.iso"]  # no temp file left behind


def test_a_seed_without_network_config_has_two_files(tmp_path: Path) -> None:
    path = str(tmp_path / "seed.iso")
    build_seed(path, "i-1", "db", "#!/bin/sh\necho hi\n")
    assert read_seed(path) == {
        "meta-data": "instance-id: i-1\nlocal-hostname: db\n",
        "user-data": "#!/bin/sh\necho hi\n",
    }


def test_building_again_replaces_the_seed(tmp_path: Path) -> None:
    path = str(tmp_path / "seed.iso")
    build_seed(path, "i-1", "db", "#!/bin/sh\necho one\n")
    build_seed(path, "i-2", "db", "#!/bin/sh\necho two\n", NETWORK)
    seed = read_seed(path)
    assert seed["user-data"] == "#!/bin/sh\necho two\n"
    assert "instance-id: i-2" in seed["meta-data"]
    assert "network-config" in seed


def test_a_seed_the_host_tools_recognise(tmp_path: Path) -> None:
    path = str(tmp_path / "seed.iso")
    build_seed(path, "i-1", "db", "#cloud-config\n{}\n")
    if not shutil.which("blkid") and not shutil.which("file"):
        pytest.skip("neither blkid nor file is installed")
    if shutil.which("blkid"):  # what cloud-init itself asks: blkid -t LABEL=cidata
        out = subprocess.run(
            ["blkid", "-p", "-o", "value", "-s", "LABEL", path], capture_output=True, text=True
        )
        assert out.stdout.strip() == "cidata"
    if shutil.which("file"):
        out = subprocess.run(["file", "-b", path], capture_output=True, text=True)
        assert "ISO 9660" in out.stdout and "'cidata'" in out.stdout


def test_write_and_read_failures_are_driver_errors(tmp_path: Path) -> None:
    with pytest.raises(DriverError) as err:
        build_seed(str(tmp_path / "missing" / "seed.iso"), "i-1", "db", "")
    assert "cannot write the cloud-init seed" in err.value.message
    assert "\n" not in err.value.message

    not_iso = tmp_path / "not.iso"
    not_iso.write_bytes(b"x" * 40000)
    for path in (not_iso, tmp_path / "absent.iso"):
        with pytest.raises(DriverError) as err:
            read_seed(str(path))
        assert "\n" not in err.value.message


# --- user-data ---------------------------------------------------------------------------


def test_user_data_up_to_64_kib() -> None:
    script = b"#!/bin/sh\n"
    exactly = script + b"#" * (MAX_USER_DATA - len(script))
    assert len(exactly) == 64 * 1024
    assert check_user_data(exactly) == exactly.decode()

    config = b"#cloud-config\nruncmd: []\n"
    assert check_user_data(config + b"#" * (MAX_USER_DATA - len(config)))

    with pytest.raises(Invalid, match="65537 bytes; the limit is 65536"):
        check_user_data(exactly + b"#")


def test_user_data_must_be_utf8_text() -> None:
    with pytest.raises(Invalid, match=r"UTF-8.*byte 15"):
        check_user_data(b"#!/bin/sh\necho \xff\n")
    with pytest.raises(Invalid, match="byte 9 is NUL"):
        check_user_data(b"#!/bin/sh\0\n")
    with pytest.raises(Invalid, match="byte order mark"):
        check_user_data(b"\xef\xbb\xbf#cloud-config\n")
    assert check_user_data("#!/bin/sh\necho héllo ✓\n".encode()) == "#!/bin/sh\necho héllo ✓\n"


def test_every_text_format_of_cloud_init_is_accepted() -> None:
    mime = (
        'Content-Type: multipart/mixed; boundary="XX"\nMIME-Version: 1.0\n\n--XX\n'
        "Content-Type: text/x-shellscript\n\n#!/bin/sh\necho hi\n--XX--\n"
    )
    for text in (
        "",
        "#cloud-config\n",  # header only: an empty config
        "#cloud-config\r\nhostname: a\r\n",
        "#!/bin/sh\necho 'key: [not yaml'\n",
        "#include\nhttps://example.com/user-data\n",
        "#cloud-boothook\n#!/bin/sh\necho early\n",
        "#cloud-config-archive\n- type: text/cloud-config\n  content: '{}'\n",  # a list
        mime,
    ):
        assert check_user_data(text.encode()) == text


def test_bad_cloud_config_is_refused_with_its_line() -> None:
    text = b"#cloud-config\npackages:\n  - curl\nhostname: a\n  bad: indent\n"
    with pytest.raises(Invalid) as err:
        check_user_data(text)
    assert "line 5" in err.value.message and "\n" not in err.value.message
    assert err.value.details == {"line": 5}

    with pytest.raises(Invalid, match=r"line 5.*flow sequence at line 4"):
        check_user_data(b"#cloud-config\npackages:\n  - curl\n  - [unclosed\nruncmd: []\n")
    with pytest.raises(Invalid, match="must be a YAML mapping"):
        check_user_data(b"#cloud-config\n- a\n- b\n")
    with pytest.raises(Invalid, match="line 2"):  # no python objects, safe_load only
        check_user_data(b"#cloud-config\na: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(Invalid, match="nested too deeply"):
        check_user_data(b"#cloud-config\na: " + b"[" * 20000)


# --- SSH keys ----------------------------------------------------------------------------


def test_real_public_keys_are_accepted(
    ed25519_key: ed25519.Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    ed, rs = public_line(ed25519_key), public_line(rsa_key)
    ecdsa = public_line(ec.generate_private_key(ec.SECP256R1()))
    assert ed.startswith("ssh-ed25519 ") and rs.startswith("ssh-rsa ")
    assert check_ssh_key(ed) == ed
    assert check_ssh_key(f"  {rs}   me@laptop  \n") == f"{rs} me@laptop"

    text = f"# my keys\n\n{ed} me@host\n{rs}\n{ecdsa}\n{ed} me@host\n\n"
    assert check_ssh_key(text) == f"{ed} me@host\n{rs}\n{ecdsa}"


def private_keys(ed25519_key: ed25519.Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey) -> list[str]:
    formats = serialization.PrivateFormat
    pem = serialization.Encoding.PEM
    none = serialization.NoEncryption()
    return [
        ed25519_key.private_bytes(pem, formats.OpenSSH, none).decode(),
        ed25519_key.private_bytes(pem, formats.PKCS8, none).decode(),
        rsa_key.private_bytes(pem, formats.TraditionalOpenSSL, none).decode(),
        rsa_key.private_bytes(pem, formats.OpenSSH, none).decode(),
    ]


def test_a_private_key_is_refused_and_never_echoed(
    ed25519_key: ed25519.Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    for secret in private_keys(ed25519_key, rsa_key):
        body = [line for line in secret.splitlines() if not line.startswith("-----")]
        for given in (secret, public_line(ed25519_key) + "\n" + secret):
            with pytest.raises(Invalid) as err:
                check_ssh_key(given)
            assert "PRIVATE key" in err.value.message
            assert not any(line[:16] in err.value.message for line in body)
            assert not any(line[:16] in str(err.value.to_dict()) for line in body)
        # Its body without the header lines is no key either, and is not echoed.
        with pytest.raises(Invalid) as err:
            check_ssh_key("\n".join(body))
        assert not any(line[:16] in err.value.message for line in body)


def test_garbage_is_refused_without_echo(ed25519_key: ed25519.Ed25519PrivateKey) -> None:
    good = public_line(ed25519_key)
    blob = good.split()[1]
    cases = {
        "": "no SSH public key given",
        "# only a comment\n\n": "no SSH public key given",
        "hunter2-my-password": "line 1 is not an OpenSSH public key",
        "ssh-ed25519": "line 1 is not an OpenSSH public key",
        f"{good}\nssh-ed25519 {blob[:-8]}": "line 2 is not a valid ssh-ed25519 public key",
        f"ssh-rsa {blob}": "line 1 is not a valid ssh-rsa public key",  # type and blob differ
        f"ssh-ed25519 {blob}AAAA": "line 1 is not a valid ssh-ed25519",
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP": "DSA",
        "ssh-foo AAAAB3NzaC1kc3MAAACBAP": "unsupported key type 'ssh-foo'",
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----": "PEM",
        "---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----": "RFC 4716",
        f"{good} comment\x1b[2J": "control characters",
    }
    for text, message in cases.items():
        with pytest.raises(Invalid, match=message) as err:
            check_ssh_key(text)
        assert "hunter2" not in err.value.message and blob[:30] not in err.value.message
        assert "\n" not in err.value.message


def test_a_tiny_rsa_key_is_refused() -> None:
    tiny = rsa.RSAPublicNumbers(65537, (1 << 511) + 1).public_key()
    line = tiny.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with pytest.raises(Invalid, match="512-bit RSA key is too small"):
        check_ssh_key(line.decode())


# --- network-config ----------------------------------------------------------------------


def test_a_version_2_network_config_is_accepted() -> None:
    text = b"version: 2\nethernets:\n  eth0:\n    addresses: [10.0.0.5/24]\n"
    assert check_network_config(text) == {
        "version": 2,
        "ethernets": {"eth0": {"addresses": ["10.0.0.5/24"]}},
    }


def test_a_network_config_must_be_version_2_without_network_key() -> None:
    with pytest.raises(Invalid, match="top-level 'network:' key") as err:
        check_network_config(b"network:\n  version: 2\n  ethernets: {}\n")
    assert "unindent" in err.value.message
    for text, message in (
        (b"version: 1\nconfig: []\n", "needs 'version: 2'"),
        (b"version: '2'\n", "needs 'version: 2'"),
        (b"ethernets: {}\n", "needs 'version: 2'"),
        (b"- version: 2\n", "must be a YAML mapping"),
        (b"", "must be a YAML mapping"),
        (b"version: 2\nethernets: {eth0\n", "not valid YAML at line"),
        (b"version: 2\n\xff", "UTF-8"),
        (b"version: 2\n" + b"#" * MAX_USER_DATA, "the limit is 65536"),
    ):
        with pytest.raises(Invalid, match=message):
            check_network_config(text)


# --- default user-data and meta-data -----------------------------------------------------


def test_default_user_data_round_trips(
    ed25519_key: ed25519.Ed25519PrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    keys = [public_line(ed25519_key) + " me@laptop", public_line(rsa_key)]
    text = default_user_data(keys, "web1.example.com")
    assert text.startswith("#cloud-config\n")
    assert yaml.safe_load(text) == {"hostname": "web1.example.com", "ssh_authorized_keys": keys}
    assert check_user_data(text.encode()) == text
    for key in keys:  # one line each, not folded
        assert f"- {key}" in text.splitlines()

    assert yaml.safe_load(default_user_data([], "db")) == {"hostname": "db"}


def test_hostile_values_can_not_inject_yaml(ed25519_key: ed25519.Ed25519PrivateKey) -> None:
    good = public_line(ed25519_key)
    for hostname in ("a\nb: c", "a: b", "-x", "", "a" * 64, "x y", "web1.", "#x"):
        with pytest.raises(Invalid, match="invalid hostname"):
            default_user_data([good], hostname)
        with pytest.raises(Invalid, match="invalid hostname"):
            meta_data("i-1", hostname)
    for instance_id in ("a\nb: c", "", " i-1", "a\tb", "x" * 256):
        with pytest.raises(Invalid, match="invalid instance id"):
            meta_data(instance_id, "web1")

    # Printable but YAML-looking: written by safe_dump, read back as the same plain string.
    for instance_id in ("x: y # z", "- a", "{b: c}", "&anchor *alias", "!!python/name:os", "'"):
        assert yaml.safe_load(meta_data(instance_id, "web1")) == {
            "instance-id": instance_id,
            "local-hostname": "web1",
        }

    # A key hiding a second line would add a line to authorized_keys: refused.
    with pytest.raises(Invalid, match="line 2"):
        default_user_data([good + "\nssh-rsa AAAAevil"], "web1")
    odd = f"{good} me: {{x}} #not-a-comment"
    assert yaml.safe_load(default_user_data([odd], "web1"))["ssh_authorized_keys"] == [odd]
