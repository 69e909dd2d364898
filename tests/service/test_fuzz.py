"""Fuzz the service against its own OpenAPI schema (schemathesis, in-process): no input gets a 5xx.

Bounded: `MAX_EXAMPLES` cases per operation, no deadline, one started service for the module (an admin
key is sent, so the cases reach the engine, not only the auth layer). The whole module takes well under
a minute on two cores.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

from quantlm.service.app import create_app  # noqa: E402
from quantlm.service.auth import KeyStore  # noqa: E402
from quantlm.service.state import LiveService  # noqa: E402

MAX_EXAMPLES = 30
schema = schemathesis.openapi.from_dict(
    create_app(LiveService(None, None, "unused"), KeyStore("/nonexistent/keys.json")).openapi())


def _httpx_kwargs(case, headers: dict) -> dict:
    """The case as keyword arguments of an httpx (TestClient) request."""
    kw = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    out = {k: kw[k] for k in ("method", "url", "headers", "params", "cookies") if kw.get(k) is not None}
    if kw.get("json") is not None:
        out["json"] = kw["json"]
    elif kw.get("data") is not None:
        data = kw["data"]
        out["content" if isinstance(data, bytes | str) else "data"] = data
    if kw.get("files"):
        out["files"] = kw["files"]
    return out


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_no_input_gets_a_server_error(case, shared_client, keys):
    response = shared_client.request(**_httpx_kwargs(case, keys.headers("admin")))
    assert response.status_code < 500, (f"{case.method} {case.formatted_path} -> {response.status_code}: "
                                        f"{response.text[:500]}\n{case.as_curl_command()}")
