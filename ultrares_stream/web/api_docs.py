"""``/docs``: Swagger UI, served from the swagger-ui-bundle package (no CDN: camera networks are
often air-gapped).

The newest swagger-ui-bundle (1.1.0) carries Swagger UI 4.15, which reads OpenAPI 3.0 only and
shows "Unable to render this definition" for the 3.1 document FastAPI makes. So ``/docs`` reads
``/docs/openapi.json``: the same document rewritten as OpenAPI 3.0 (:func:`openapi_30`).
``/openapi.json`` stays 3.1 for clients and generators.
"""
from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles

DOCS_SCHEMA_URL = "/docs/openapi.json"
#: keys whose value maps names to objects (their keys are names, not schema keywords)
_NAME_MAPS = frozenset({"properties", "patternProperties", "schemas", "paths", "responses", "content",
                        "headers", "securitySchemes", "encoding", "callbacks", "links", "requestBodies",
                        "parameters", "webhooks"})
#: keys whose value is data (an example, a default), never rewritten
_VALUES = frozenset({"example", "default", "enum", "const"})


def install(app: FastAPI, security: dict[str, Any] | None = None) -> None:
    """Mount the Swagger UI files and add ``/docs`` and ``/docs/openapi.json``. ``security``: an
    OpenAPI security scheme every operation needs (the API token), or None."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    if security is not None:
        _require_security(app, security)

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(openapi_url=DOCS_SCHEMA_URL, title=f"{app.title} API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")

    @app.get(DOCS_SCHEMA_URL, include_in_schema=False)
    def docs_schema() -> JSONResponse:
        return JSONResponse(openapi_30(app.openapi()))


def _require_security(app: FastAPI, scheme: dict[str, Any]) -> None:
    """Declare ``scheme`` (as ``apiToken``) in the schema, required by every operation."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            doc.setdefault("components", {}).setdefault("securitySchemes", {})["apiToken"] = scheme
            doc["security"] = [{"apiToken": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


def openapi_30(doc: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI 3.1 document rewritten as 3.0.3: ``anyOf [X, null]`` and ``type: [X, "null"]``
    become ``nullable``, ``const`` an ``enum``, ``examples`` lists one ``example``, numeric
    ``exclusiveMinimum``/``Maximum`` the boolean form, ``contentMediaType`` a binary ``format``."""
    out = _walk(copy.deepcopy(doc))
    out["openapi"] = "3.0.3"
    out.pop("webhooks", None)
    out.pop("jsonSchemaDialect", None)
    return out


def _walk(node: Any, names: bool = False) -> Any:
    if isinstance(node, list):
        return [_walk(v) for v in node]
    if not isinstance(node, dict):
        return node
    if names:  # a map of names -> objects
        return {k: _walk(v) for k, v in node.items()}
    node = _schema_30(node)
    return {k: v if k in _VALUES else _walk(v, names=k in _NAME_MAPS and isinstance(v, dict))
            for k, v in node.items()}


def _schema_30(node: dict[str, Any]) -> dict[str, Any]:
    """One object's 3.1-only keywords in their 3.0 form (objects without them come back as they were)."""
    for key in ("anyOf", "oneOf"):
        options = node.get(key)
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            node = {k: v for k, v in node.items() if k != key}
            node["nullable"] = True
            if len(rest) == 1 and isinstance(rest[0], dict):
                node = {**rest[0], **node}
            elif rest:
                node[key] = rest
    if isinstance(node.get("type"), list):
        types = node["type"]
        real = [t for t in types if t != "null"]
        node = {**node, "type": real[0] if real else "string"}
        if "null" in types:
            node["nullable"] = True
    if "const" in node and "enum" not in node:
        node = {**{k: v for k, v in node.items() if k != "const"}, "enum": [node["const"]]}
    if isinstance(node.get("examples"), list):
        examples = node["examples"]
        node = {k: v for k, v in node.items() if k != "examples"}
        if examples:
            node["example"] = examples[0]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(bound)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node = {**node, plain: value, bound: True}
    if "contentMediaType" in node:
        node = {k: v for k, v in node.items() if k not in ("contentMediaType", "contentEncoding")}
        node.setdefault("format", "binary")
    return node
