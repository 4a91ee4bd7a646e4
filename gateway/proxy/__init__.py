"""The inline reverse proxy: canonical path → route → sanitised headers → upstream, streamed both ways.

The app calls, in order: ``normalise_path`` (before any decision), ``RouteTable.match``, ``client_address``,
``sanitise_request_headers`` (then adds the credential and the assertion), and ``UpstreamClient.forward`` or
``proxy_websocket``. Nothing here reads a session or makes a policy decision.
"""

from gateway.proxy.console_scope import ConsoleScope, console_scope
from gateway.proxy.forward import ForwardStats, ProxyResponse, StatsCallback, UpstreamClient, UpstreamTimeout
from gateway.proxy.headers import (
    HeadersTooLarge,
    check_header_size,
    client_address,
    is_identity_header,
    normalise_header_name,
    sanitise_request_headers,
    sanitise_response_headers,
)
from gateway.proxy.paths import normalise_path, strip_query_values
from gateway.proxy.routes import RouteMatch, RouteTable, upstream_path, upstream_url
from gateway.proxy.websocket import WebSocketRegistry, proxy_websocket, sendable_close_code

__all__ = [
    "ConsoleScope",
    "ForwardStats",
    "HeadersTooLarge",
    "ProxyResponse",
    "RouteMatch",
    "RouteTable",
    "StatsCallback",
    "UpstreamClient",
    "UpstreamTimeout",
    "WebSocketRegistry",
    "check_header_size",
    "client_address",
    "console_scope",
    "is_identity_header",
    "normalise_header_name",
    "normalise_path",
    "proxy_websocket",
    "sanitise_request_headers",
    "sanitise_response_headers",
    "sendable_close_code",
    "strip_query_values",
    "upstream_path",
    "upstream_url",
]
