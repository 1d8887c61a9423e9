"""Settings: file < flags, unknown keys and bad values refused, the default address."""

from __future__ import annotations

from pathlib import Path

import pytest

from symphonyd.config import default_address, load_settings
from symphonyd.errors import Invalid


def test_flags_override_the_settings_file(tmp_path: Path) -> None:
    config = tmp_path / "s.toml"
    config.write_text('name = "from-file"\napi_port = 16000\naddress = "10.1.2.3"\n')
    settings = load_settings(str(config), {"api_port": 17000, "name": None})
    assert settings.name == "from-file"  # a flag given as None does not override
    assert settings.api_port == 17000
    assert settings.raft_addr == "10.1.2.3:15761"
    assert settings.socket_path.endswith("control.sock")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nmae = 'x'\n", "unknown settings: nmae"),
        ("api_port = 0\n", "api_port must be a port number"),
        ("api_port = 15761\n", "must differ"),
        ("name = 'Bad_Name'\n", "invalid node name"),
        ("name = \n", "cannot read settings file"),
        ("[api]\nheader_timeout = 0\n", "header_timeout must be seconds above 0"),
        ("[api]\nmax_connections = true\n", "max_connections must be a whole number"),
        ("[api]\nmax_conns = 5\n", r"\[api\]: unknown settings: max_conns"),
    ],
)
def test_bad_settings_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "s.toml"
    config.write_text(text)
    with pytest.raises(Invalid, match=message):
        load_settings(str(config), {})


def test_a_missing_settings_file_given_explicitly_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="does not exist"):
        load_settings(str(tmp_path / "nope.toml"), {})


def test_default_address_follows_the_default_route(tmp_path: Path) -> None:
    header = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
    via_lo = tmp_path / "route-lo"
    via_lo.write_text(header + "lo\t00000000\t00000000\t0003\t0\t0\t0\t00000000\n")
    assert default_address(str(via_lo)) == "127.0.0.1"
    no_default = tmp_path / "route-none"
    no_default.write_text(header + "eth9\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")
    assert default_address(str(no_default)) == "127.0.0.1"
    assert default_address(str(tmp_path / "missing")) == "127.0.0.1"
    real = default_address()
    assert real.count(".") == 3 and all(part.isdigit() for part in real.split("."))
