"""Schemathesis fuzzes every operation of `/v1/openapi.json` against a real node: whatever
it sends, the answer is never a server error, and refusals use the documented error shape.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.nodes import NodeSet

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_no_server_error_for_any_generated_request(tmp_path: Path) -> None:
    tool = shutil.which("schemathesis") or shutil.which("st")
    if tool is None:
        pytest.fail("schemathesis is not installed: run scripts/bootstrap --test")
    nodes = NodeSet(tmp_path / "nodes")
    try:
        (node,) = nodes.form(1)
        url = f"https://127.0.0.1:{node.api_port}"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(f"{url}/v1/openapi.json", context=context, timeout=10) as r:
            spec = json.load(r)
        # A blocking read waits up to `wait` (minutes when absent): keep the fuzzer's short.
        for operations in spec["paths"].values():
            for operation in operations.values():
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "wait":
                        parameter["required"] = True
                        parameter["schema"] = {"type": "string", "enum": ["0s", "200ms", "1s"]}
        spec_path = tmp_path / "openapi.json"
        spec_path.write_text(json.dumps(spec))
        result = subprocess.run(
            [
                tool,
                "run",
                str(spec_path),
                "--url",
                url,
                "-H",
                f"Authorization: Bearer {nodes.admin_token}",
                "--tls-verify",
                "false",
                "--max-examples",
                "25",
                "--checks",
                "not_a_server_error",
                "--exclude-path",
                "/v1/events",
                "--seed",
                "1",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert "passed" in result.stdout
        assert node.status()["has_quorum"], "the node must survive the fuzzing"
    finally:
        nodes.cleanup()
