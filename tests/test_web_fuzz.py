"""Property-based fuzz of the HTTP API from its own OpenAPI schema (schemathesis):
whatever the request, the answer is never a 5xx and matches the documented responses."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from tests.test_web_api import FakeService, _tiny_net
from ultrares_stream.models.checkpoint import save_checkpoint
from ultrares_stream.web.app import create_app


# Built at import: schemathesis parametrizes from the schema at collection time.
# (schemathesis.pytest.from_fixture does not work with this pytest version.)
_WEIGHTS = tempfile.TemporaryDirectory(prefix="ultrares-fuzz-")  # removed at interpreter exit


def _app():
    folder = Path(_WEIGHTS.name)
    save_checkpoint(_tiny_net(1), folder / "a.safetensors")
    save_checkpoint(_tiny_net(2), folder / "b.safetensors")
    return create_app(FakeService(), default_model=f"{folder / 'a.safetensors'}+{folder / 'b.safetensors'}",
                      device="cpu", max_upload_bytes=256 * 1024, max_pixels=256 * 256, request_timeout=20)


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@pytest.mark.timeout(120)
def test_api_never_answers_5xx(case):
    # An upload can match the schema and still not be an image or a clip (random bytes, a size
    # string that is not a preset, a box outside the frame): the schema cannot say "a decodable
    # PNG", so for these operations a 4xx answer to schema-valid data is right, not a failure.
    excluded = [positive_data_acceptance] if case.operation.path in ("/api/v1/upscale", "/api/v1/zoom") else []
    case.call_and_validate(excluded_checks=excluded)
    # A random camera name is a 404 before any camera code runs: send the same request to
    # the real cameras too (one with frames, one without), so their code is fuzzed as well.
    if case.path_parameters and "name" in case.path_parameters:
        for camera in ("north", "cold"):
            case.path_parameters["name"] = camera
            case.call_and_validate(excluded_checks=excluded)
