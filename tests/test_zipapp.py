"""The single-file zipapp: built from this checkout with shiv, run by the system's own
python3 in an environment that has nothing else (no virtual environment, PATH=/usr/bin:/bin):
a one-node cluster, init, an image import, status, and a clean stop."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nodes import NodeProcess, NodeSet, free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.cluster, pytest.mark.slow]
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="module")
def zipapp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else sys.executable
    output = tmp_path_factory.mktemp("dist") / "symphonyd.pyz"
    result = subprocess.run(
        [str(ROOT / "packaging" / "zipapp" / "build"), str(output)],
        env={**os.environ, "PYTHON": python},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output


class ZipappNode(NodeProcess):
    """A node run from the zipapp by the system's python3, with a bare environment."""

    pyz: Path
    home: Path

    @property
    def program(self) -> list[str]:
        python = SYSTEM_PYTHON if os.path.exists(SYSTEM_PYTHON) else sys.executable
        return [python, str(self.pyz)]

    def environment(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.home),
            "SHIV_ROOT": str(self.home / "shiv"),
            "PYTHONUNBUFFERED": "1",
        }


@pytest.fixture
def zip_nodes(zipapp: Path, tmp_path: Path) -> Iterator[NodeSet]:
    class ZipappNodeSet(NodeSet):
        def new(self, name: str, start: bool = True) -> NodeProcess:
            node = ZipappNode(self.base, name)
            node.pyz, node.home = zipapp, tmp_path / "home"
            node.home.mkdir(exist_ok=True)
            self.nodes.append(node)
            if start:
                node.start()
            return node

    nodes = ZipappNodeSet(tmp_path / "nodes")
    try:
        yield nodes
    finally:
        nodes.cleanup()


def test_the_zipapp_runs_a_cluster_with_only_the_system_python(
    zip_nodes: NodeSet, tmp_path: Path
) -> None:
    (node,) = zip_nodes.form(1)
    version = node.cli("--version")
    assert version.returncode == 0 and "symphonyd, version" in version.stdout
    image = tmp_path / "small.img"
    image.write_bytes(os.urandom(3 * 1024 * 1024))
    result = node.cli("image", "new", "a small image", "small", str(image))
    assert result.returncode == 0, result.stderr
    status = node.cli("status")
    assert status.returncode == 0 and "native" in status.stdout, status.stdout
    # compute too: libvirt-python and pycdlib are in the zipapp (the test driver, a seed)
    for args in (("service", "new"), ("service", "new", "compute")):
        made = node.cli(*args, timeout=120)
        assert made.returncode == 0, made.stderr
    vm = node.cli("instance", "create", "vm", "--image", "small", "--memory", "64M",
                  "--disk", "16M", "--json", timeout=120)  # fmt: skip
    assert vm.returncode == 0, vm.stderr
    assert json.loads(vm.stdout)["status"] == "running"
    seed = next((node.data_dir / "compute" / "instances").glob("*/seed.iso"))
    assert seed.read_bytes()[0x8001:0x8006] == b"CD001"  # an ISO 9660 image, from pycdlib
    removed = node.cli("instance", "rm", "vm", timeout=120)
    assert removed.returncode == 0, removed.stderr
    # the built-in lifecycles run their servers from the zipapp too
    site_port, proxy_port = free_port(), free_port()
    site = node.cli("deploy", "WebSite//start", "--yes", "--set", f"port={site_port}")
    assert site.returncode == 0, site.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{site_port}/", timeout=5) as response:
        assert b"<strong>n1</strong>" in response.read()
    proxy = node.cli("deploy", "Proxy//start", "--yes", "--set", f"port={proxy_port}")
    assert proxy.returncode == 0, proxy.stderr
    with pytest.raises(urllib.error.HTTPError) as no_backends:  # a proxy with no sites
        urllib.request.urlopen(f"http://127.0.0.1:{proxy_port}/", timeout=5)
    assert no_backends.value.code == 503
    # the web dashboard's static files are in the zipapp too
    unverified = ssl._create_unverified_context()  # the cluster's self-signed certificate
    with urllib.request.urlopen(f"https://127.0.0.1:{node.api_port}/ui/", context=unverified) as ui:
        assert b'src="app.js"' in ui.read()
    assert node.stop() == 0, node.log()  # SIGTERM: a clean stop
    leftovers = list((node.data_dir / "images" / "tmp").iterdir())
    assert leftovers == [] and not (node.data_dir / "control.sock").exists()
    # The compiled modules were extracted under SHIV_ROOT, not the caller's home.
    assert list((node.home / "shiv").glob("*/site-packages/symphonyd/image/_symcopy*.so"))


def test_the_zipapp_says_when_it_uses_the_fallback(zip_nodes: NodeSet) -> None:
    node = zip_nodes.new("n1", start=False)
    original = node.environment
    node.environment = lambda: {**original(), "SYMPHONYD_NATIVE": "0"}  # type: ignore[method-assign]
    node.start()
    status = node.cli("status", "--json")
    assert '"implementation": "python"' in status.stdout
