"""The HTTP API, the dashboard and the OpenAPI document, assembled as one Litestar app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Litestar, MediaType, Response, get
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, OpenAPIType, RequestBody, Schema, SecurityScheme
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from services.gateway.bodies import STRICT_BODIES
from services.gateway.errors import (
    AnyRequest,
    JsonRequest,
    api_key_guard,
    browser_guard,
    on_api_error,
    on_http_exception,
    on_unexpected,
)
from services.gateway.events import EventLog
from services.gateway.fleet import ApiError, Fleet
from services.gateway.history import History
from services.gateway.history_routes import history_routes
from services.gateway.live import LiveFeed
from services.gateway.metrics import Metrics
from services.gateway.ready import Readiness
from services.gateway.reference import reference_routes
from services.gateway.routes import ops_routes, read_routes, write_routes
from shared import asyncapi
from shared.config import Config
from shared.policy.web import allowed_hosts

STATIC_DIR = Path(__file__).parent / "static"
VERSION = "0.1.0"
DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def build_app(
    fleet: Fleet, feed: LiveFeed, metrics: Metrics, config: Config, history: History, events: EventLog
) -> Litestar:
    readiness = Readiness(fleet.bus)
    guards = [api_key_guard(config.api_key)] if config.api_key else []
    # Documented only when enforced, so the schema says what the server does.
    mutating: dict[str, Any] = {"guards": guards, "security": [{"bearer": []}] if config.api_key else None}
    live: dict[str, Any] = {
        "guards": [api_key_guard(config.api_key, query_param="key")] if config.api_key else [],
        "security": [{"bearer": []}] if config.api_key else None,
    }
    return Litestar(
        route_handlers=[
            *read_routes(fleet),
            *write_routes(fleet, mutating),
            *reference_routes(fleet, config, mutating),
            *ops_routes(fleet, feed, metrics, readiness, live),
            *history_routes(history, events),
            *dashboard_routes(),
        ],
        guards=[browser_guard(allowed_hosts(config.gateway_allowed_hosts, config.gateway_host))],
        on_startup=[_tighten_schema],
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_exception, Exception: on_unexpected},
        openapi_config=_openapi_config(),
        request_class=JsonRequest,
        request_max_body_size=config.max_body_bytes,
        logging_config=None,
        debug=False,
    )


def dashboard_routes() -> list[ControllerRouterHandler]:
    index_html = (STATIC_DIR / "index.html").read_bytes()

    @get("/", include_in_schema=False, media_type=MediaType.HTML)
    async def dashboard() -> Response[bytes]:
        return Response(index_html, media_type=MediaType.HTML, headers=DASHBOARD_HEADERS)

    @get("/openapi.json", include_in_schema=False)
    async def openapi(request: AnyRequest) -> dict[str, Any]:
        return request.app.openapi_schema.to_schema()

    asyncapi_yaml = asyncapi.render().encode()

    # The NATS side's contract, as /openapi.json is the HTTP side's (built from the same code as asyncapi.yaml).
    @get("/asyncapi.yaml", include_in_schema=False)
    async def asyncapi_document() -> Response[bytes]:
        return Response(asyncapi_yaml, media_type="application/yaml")

    static = create_static_files_router(path="/static", directories=[STATIC_DIR], include_in_schema=False)
    return [dashboard, openapi, asyncapi_document, static]


def _openapi_config() -> OpenAPIConfig:
    bearer = SecurityScheme(type="http", scheme="bearer", description="API_KEY; required on writes when it is set")
    return OpenAPIConfig(
        title="aceorch gateway",
        version=VERSION,
        description="Engines, selection and stream events for a fleet of AceStream engines.",
        path="/schema",  # Litestar's copy; /openapi.json is the documented address
        render_plugins=[JsonRenderPlugin()],
        components=Components(security_schemes={"bearer": bearer}),
    )


def _tighten_schema(app: Litestar) -> None:
    """Say in the schema what the decoders enforce: no unknown fields; select's body is optional."""
    schema = app.openapi_schema
    for kind in STRICT_BODIES:
        schema.components.schemas[kind.__name__].additional_properties = False
    assert schema.paths is not None, "Litestar documents every route"
    select = schema.paths["/engines/select"].post
    if select is not None and isinstance(select.request_body, RequestBody):
        select.request_body.required = False
    for component in schema.components.schemas.values():
        _numbers_once(component)


def _numbers_once(node: object) -> None:
    """`int | float` (an engine's `livepos` values) comes out as oneOf integer, number: an integer matches
    both, so every reply carrying one would break the schema's own oneOf. JSON Schema's number already
    includes the integers; the integer branch goes."""
    if not isinstance(node, Schema):
        return
    if node.one_of:
        types = {getattr(option, "type", None) for option in node.one_of}
        if OpenAPIType.INTEGER in types and OpenAPIType.NUMBER in types:
            node.one_of = [o for o in node.one_of if getattr(o, "type", None) != OpenAPIType.INTEGER]
    for child in (
        *(node.one_of or ()),
        *(node.any_of or ()),
        *(node.properties or {}).values(),
        node.additional_properties,
        node.items,
    ):
        _numbers_once(child)
