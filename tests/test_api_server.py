"""The API listener: plain HTTP routes and WebSocket paths on one port."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.api.server import MAX_BODY, ApiServer, json_response, parse_listen
from gateway.config.api_schema import is_loopback


async def http_request(port: int, target: str, method: str = "GET") -> tuple[int, dict, bytes]:
    """One HTTP/1.1 request over a raw connection; returns (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    writer.write(request.encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)  # asked to, the server closes after answering
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def run_with_server(scenario, setup=None):
    """Start a server on a free port, let `setup` register routes, run the scenario, stop."""

    async def main():
        api = ApiServer("127.0.0.1:0")
        if setup:
            setup(api)
        await api.start()
        try:
            return await scenario(api)
        finally:
            await api.stop()

    return asyncio.run(main())


def test_listen_port_zero_binds_a_free_port():
    async def scenario(api):
        assert api.port > 0
        status, _, _ = await http_request(api.port, "/api/v1/health")
        return status

    assert run_with_server(scenario) == 200


def test_health_returns_json_ok():
    async def scenario(api):
        return await http_request(api.port, "/api/v1/health")

    status, headers, body = run_with_server(scenario)
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert json.loads(body) == {"status": "ok"}


def test_unknown_path_is_404_json():
    async def scenario(api):
        return await http_request(api.port, "/nowhere?x=1")

    status, headers, body = run_with_server(scenario)
    assert status == 404
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "not_found"
    assert "/nowhere" in error["message"]


def test_wrong_method_is_405_with_allow():
    async def scenario(api):
        return await http_request(api.port, "/api/v1/health", method="DELETE")

    status, headers, body = run_with_server(scenario)
    assert status == 405
    assert headers["allow"] == "GET"
    assert json.loads(body)["error"]["code"] == "method_not_allowed"


def test_query_string_is_split_and_decoded_keeping_plus():
    seen = {}

    def echo(request):
        seen.update(path=request.path, topics=request.query_values("topics"), x=request.query["x"])
        return json_response(200, {"ok": True})

    async def scenario(api):
        return await http_request(api.port, "/api/v1/echo?topics=gw/+/a/%23,b%2Fc&x=1")

    status, _, _ = run_with_server(scenario, lambda api: api.add_http("GET", "/api/v1/echo", echo))
    assert status == 200
    assert seen == {"path": "/api/v1/echo", "topics": ["gw/+/a/#,b/c"], "x": ["1"]}


def test_path_parameters_and_async_handlers():
    async def sink(request):
        await asyncio.sleep(0)
        return json_response(200, {"name": request.params["name"]})

    async def scenario(api):
        plain = await http_request(api.port, "/api/v1/sinks/mqtt")
        encoded = await http_request(api.port, "/api/v1/sinks/a%2Fb%20c")
        return plain, encoded

    setup = lambda api: api.add_http("GET", "/api/v1/sinks/{name}", sink)  # noqa: E731
    (status, _, body), (_, _, encoded) = run_with_server(scenario, setup)
    assert (status, json.loads(body)) == (200, {"name": "mqtt"})
    assert json.loads(encoded) == {"name": "a/b c"}


def test_a_route_can_be_replaced():
    def health(request):
        return json_response(200, {"status": "ok", "ready": False})

    async def scenario(api):
        return await http_request(api.port, "/api/v1/health")

    setup = lambda api: api.add_http("GET", "/api/v1/health", health)  # noqa: E731
    _, _, body = run_with_server(scenario, setup)
    assert json.loads(body) == {"status": "ok", "ready": False}


def test_failing_handler_is_500_json_and_server_keeps_serving():
    def broken(request):
        raise RuntimeError("boom")

    async def scenario(api):
        first = await http_request(api.port, "/api/v1/broken")
        second = await http_request(api.port, "/api/v1/health")
        return first, second

    setup = lambda api: api.add_http("GET", "/api/v1/broken", broken)  # noqa: E731
    (status, _, body), (after, _, _) = run_with_server(scenario, setup)
    assert status == 500
    assert json.loads(body)["error"] == {"code": "internal", "message": "RuntimeError: boom"}
    assert after == 200


def test_websocket_path_gets_the_connection_with_its_query():
    async def echo_path(websocket, request):
        await websocket.send_str(request.target)

    async def scenario(api):
        async with connect(f"ws://127.0.0.1:{api.port}/ws?topics=gw/+/a/%23") as client:
            return await asyncio.wait_for(client.recv(), 5)

    setup = lambda api: api.add_websocket("/ws", echo_path)  # noqa: E731
    assert run_with_server(scenario, setup) == "/ws?topics=gw/+/a/%23"


def test_websocket_check_can_refuse_the_handshake():
    def refuse(request):
        return json_response(400, {"error": {"code": "bad", "message": "no"}})

    async def never(websocket, request):
        raise AssertionError("handler must not run for a refused handshake")

    async def scenario(api):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{api.port}/ws"):
                pass
        return refused.value.response

    response = run_with_server(scenario, lambda api: api.add_websocket("/ws", never, refuse))
    assert response.status_code == 400
    assert json.loads(response.body)["error"]["code"] == "bad"


def test_plain_get_on_a_websocket_path_is_426_json():
    async def handler(websocket, request):
        pass

    async def scenario(api):
        return await http_request(api.port, "/ws")

    status, _, body = run_with_server(scenario, lambda api: api.add_websocket("/ws", handler))
    assert status == 426
    assert json.loads(body)["error"]["code"] == "upgrade_required"


def test_a_websocket_path_is_served_once():
    api = ApiServer("127.0.0.1:0")

    async def handler(websocket, request):
        pass

    api.add_websocket("/ws", handler)
    with pytest.raises(ValueError, match="already served"):
        api.add_websocket("/ws", handler)
    api.remove_websocket("/ws")
    api.add_websocket("/ws", handler)


def test_stop_closes_the_listener():
    async def main():
        api = ApiServer("127.0.0.1:0")
        await api.start()
        port = api.port
        await api.stop()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:0", ("::1", 0)),
        (":9000", ("127.0.0.1", 9000)),
    ],
)
def test_parse_listen(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["localhost", "127.0.0.1:http", "127.0.0.1:70000"])
def test_parse_listen_rejects_bad_values(listen):
    with pytest.raises(ValueError, match="api.listen"):
        parse_listen(listen)


def test_a_body_over_the_bound_is_413_json():
    async def scenario(api):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        body = b"x" * (MAX_BODY + 1)
        head = "POST /api/v1/echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return raw

    setup = lambda api: api.add_http("POST", "/api/v1/echo", lambda r: json_response(200, {}))  # noqa: E731
    raw = run_with_server(scenario, setup)
    assert raw.startswith(b"HTTP/1.1 413")
    assert json.loads(raw.partition(b"\r\n\r\n")[2])["error"]["code"] == "too_large"


def test_another_method_on_a_websocket_path_is_405():
    async def handler(websocket, request):
        pass

    async def scenario(api):
        return await http_request(api.port, "/ws", method="POST")

    status, headers, body = run_with_server(scenario, lambda api: api.add_websocket("/ws", handler))
    assert (status, headers["allow"]) == (405, "GET")
    assert json.loads(body)["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.0.2.7", False), ("", False)],
)  # fmt: skip
def test_which_addresses_count_as_this_machine(host, local):
    assert is_loopback(host) is local


def test_a_path_with_an_encoded_newline_still_gets_our_json_404():
    async def scenario(api):
        return await http_request(api.port, "/api/v1/sinks/a%0Ab")

    status, headers, body = run_with_server(scenario)
    assert (status, headers["content-type"]) == (404, "application/json")
    assert json.loads(body)["error"]["code"] == "not_found"


def test_a_handler_can_stream_its_answer():
    second_may_go = asyncio.Event()

    async def stream(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request.native)
        await response.write(b"data: first\n\n")
        await second_may_go.wait()  # the client has the first event before this one exists
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    async def scenario(api):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        writer.write(b"GET /api/v1/stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        received = b""
        while b"data: first" not in received:
            received += await asyncio.wait_for(reader.read(1024), 5)
        first_alone = b"second" not in received
        second_may_go.set()
        received += await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return first_alone, received

    setup = lambda api: api.add_http("GET", "/api/v1/stream", stream)  # noqa: E731
    first_alone, received = run_with_server(scenario, setup)
    assert first_alone
    assert b"text/event-stream" in received and b"data: second" in received
