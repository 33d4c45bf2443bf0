"""GET /openapi.json and GET /docs: the API description, generated from the code.

The routes Quart does not serve itself (the webhook) are added by
`sluice.http.webhook_docs`, from the same Structs the validator decodes with.

quart-schema builds the OpenAPI document from the routes and the msgspec Structs they are
documented with (`document_querystring` / `document_response`). /docs is Swagger UI
served from the swagger-ui-bundle-v2 wheel's files, never from a CDN (no internet needed).
"""

from __future__ import annotations

import functools
import importlib.metadata
from typing import TYPE_CHECKING, Any

from msgspec.json import schema_components
from quart import Blueprint, Quart, Response
from quart_schema import QuartSchema, hide
from quart_schema.openapi import OpenAPIProvider

from sluice.http.webhook_docs import describe_unseen_routes

if TYPE_CHECKING:
    from quart_schema.typing import Model

__all__ = ["install_docs"]

_REF = "#/components/schemas/{name}"
DESCRIPTION = (
    "sluice takes marketing and product events on its webhook and answers JSON reports "
    "over them. What each source (facebook, tiktok, generic) may send (every field with "
    "its type, range and meaning, what is rejected and why, the webhook's answers and an "
    "example of every event type) is in the repository's `docs/events.md`."
)
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}

docs_assets = Blueprint("docs_assets", __name__)


class _MsgspecProvider(OpenAPIProvider):
    """Schemas straight from msgspec, nested Structs and lists included.

    (quart-schema 0.25 keeps only the first msgspec component: nested Structs would be
    dangling references and a `list[Struct]` response would read as one object.)
    """

    def schema(self) -> dict[str, Any]:
        document = super().schema()
        describe_unseen_routes(document)
        return document

    def build_querystring_parameters(
        self, model: type[Model]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        (ref,), components = schema_components([model], ref_template=_REF)
        schema = components.pop(ref["$ref"].rsplit("/", 1)[1])
        required = set(schema.get("required", ()))
        parameters = []
        for name, prop in schema["properties"].items():
            param: dict[str, Any] = {"name": name, "in": "query", "schema": prop}
            if "description" in prop:
                param["description"] = prop.pop("description")
            if name in required:
                param["required"] = True
            parameters.append(param)
        return parameters, components

    def build_response_object(
        self, model: type[Model], headers_model: type[Model] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        (schema,), components = schema_components([model], ref_template=_REF)
        description = ""
        ref = schema.get("$ref") or schema.get("items", {}).get("$ref")
        if ref is not None:
            description = components[ref.rsplit("/", 1)[1]].get("description", "")
        response = {
            "content": {"application/json": {"schema": schema}},
            "description": description,
        }
        return response, components


def install_docs(app: Quart) -> None:
    """Serve /openapi.json and /docs (Swagger UI with local assets) on `app`."""
    try:
        version = importlib.metadata.version("sluice")
    except importlib.metadata.PackageNotFoundError:  # running from a bare checkout
        version = "0+unknown"
    QuartSchema(
        app,
        openapi_path="/openapi.json",
        swagger_ui_path="/docs",
        redoc_ui_path=None,  # these two load their scripts from CDNs
        scalar_ui_path=None,
        info={"title": "sluice", "version": version, "description": DESCRIPTION},
        openapi_provider_class=_MsgspecProvider,
    )
    app.config["QUART_SCHEMA_SWAGGER_JS_URL"] = "/docs/assets/swagger-ui-bundle.js"
    app.config["QUART_SCHEMA_SWAGGER_CSS_URL"] = "/docs/assets/swagger-ui.css"
    app.register_blueprint(docs_assets)


@docs_assets.get("/docs/assets/<name>")
@hide
async def asset(name: str) -> Response:
    if name not in _ASSETS:
        return Response(b'{"error": "not found"}', 404, content_type="application/json")
    return Response(
        _asset(name),
        200,
        content_type=_ASSETS[name],
        headers={"Cache-Control": "public, max-age=86400"},
    )


@functools.cache
def _asset(name: str) -> bytes:
    from swagger_ui_bundle import swagger_ui_path

    return (swagger_ui_path / name).read_bytes()  # type: ignore[no-any-return]
