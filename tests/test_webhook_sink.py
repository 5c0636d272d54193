"""Webhook sink against a real aiohttp receiver: retries keep their key, 4xx is not retried."""

from __future__ import annotations

import asyncio
import collections
import ssl

import pytest

from gateway.config import ConfigError, loads
from gateway.sinks.udp import UdpSink
from gateway.sinks.webhook import WebhookSink
from tests.support.api import self_signed_cert
from tests.support.http_receiver import HookReceiver
from tests.support.udp import UdpCollector
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)


def reading(seq: int) -> dict:
    return {"gateway": "gw", "device": "d", "stream": "env", "seq": seq, "ts": 1.0 + seq}


def webhook(url: str, **options) -> WebhookSink:
    defaults = {
        "url": url,
        "timeout": 0.3,
        "batch": {"max_readings": 50},
        "retry": {"base": 0.01, "cap": 0.05},
        "breaker": {"failures": 5, "reset_after": 0.1},
    }
    return WebhookSink("hook", {**defaults, **options}, "gw")


async def run_sink(sink, scenario):
    task = asyncio.create_task(sink.run())
    try:
        return await scenario()
    finally:
        await sink.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_503s_then_timeouts_then_200_every_reading_arrives_and_repeats_keep_their_key():
    async def main():
        receiver = await HookReceiver([503] * 20 + ["hang"] * 2).start()
        sink = webhook(receiver.url, headers={"Authorization": "Bearer s3cret"})

        async def scenario():
            for seq in range(10):  # a short first POST: its retry must not grow
                sink.offer(reading(seq), {})
            await eventually(lambda: len(receiver.posts) >= 3, 10, "failing posts")
            for seq in range(10, 1000):
                sink.offer(reading(seq), {})
            await receiver.wait_for_accepted(1000)
            return sink.stats()

        try:
            return await run_sink(sink, scenario), receiver.posts
        finally:
            await receiver.stop()

    stats, posts = asyncio.run(main())
    answers = [post.answer for post in posts]
    assert answers[:22] == [503] * 20 + ["hang"] * 2 and set(answers[22:]) == {200}
    accepted = [r["seq"] for post in posts if post.answer == 200 for r in post.readings]
    assert accepted == list(range(1000))  # every reading once, in order, among the 200s
    keys_of = collections.defaultdict(set)
    for post in posts:
        for r in post.readings:
            keys_of[r["seq"]].add(post.key)
    # Every reading sent more than once went under one key each time.
    assert all(len(keys) == 1 for keys in keys_of.values())
    assert len({post.key for post in posts[:23]}) == 1  # 22 failures and the success: one batch
    assert posts[0].readings == [reading(seq) for seq in range(10)]
    assert all(post.headers["Authorization"] == "Bearer s3cret" for post in posts)
    assert stats["failures"] == 22 and stats["http_errors"] == 20
    assert stats["delivered"] == 1000 and stats["breaker"]["opened"] >= 4
    assert stats["queue_depth"] == 0


def test_a_400_receiver_rejects_without_retry_and_does_not_stall_other_sinks():
    collector = UdpCollector()

    async def main():
        receiver = await HookReceiver(status=400).start()
        sink = webhook(receiver.url)
        udp = UdpSink("udp", {"targets": [f"127.0.0.1:{collector.port}"]}, "gw")
        udp_task = asyncio.create_task(udp.run())

        async def scenario():
            for seq in range(2000):
                sink.offer(reading(seq), {})
                udp.offer(reading(seq), {})
                if seq % 20 == 19:
                    await asyncio.sleep(0.01)  # ≈ 2,000 readings/s
            await eventually(lambda: len(collector.readings) == 2000, 10, "udp")
            await eventually(lambda: sink.counters["rejected"] == 2000, 10, "rejections")
            return sink.stats()

        try:
            return await run_sink(sink, scenario), receiver.posts
        finally:
            await udp.stop()
            udp_task.cancel()
            await receiver.stop()

    try:
        stats, posts = asyncio.run(main())
    finally:
        collector.close()
    assert [r["seq"] for r in collector.readings] == list(range(2000))
    # Each reading was posted once: a 400 is an answer, not a failure.
    assert [r["seq"] for post in posts for r in post.readings] == list(range(2000))
    assert stats.get("failures", 0) == 0 and stats["breaker"]["state"] == "closed"
    assert stats["queue_depth"] == 0 and stats["rejected_posts"] == len(posts)
    assert stats["dropped_rejected"] == 2000


@pytest.mark.parametrize("encoding", ["json", "msgpack", "cbor"])
def test_each_encoding_posts_arrays_the_receiver_decodes(encoding):
    async def main():
        receiver = await HookReceiver().start()
        sink = webhook(receiver.url, encoding=encoding, batch={"max_readings": 7})

        async def scenario():
            for seq in range(20):
                sink.offer(reading(seq), {})
            await receiver.wait_for_accepted(20)

        try:
            await run_sink(sink, scenario)
            return receiver.posts
        finally:
            await receiver.stop()

    posts = asyncio.run(main())
    assert [len(post.readings) for post in posts] == [7, 7, 6]
    assert [r for post in posts for r in post.readings] == [reading(seq) for seq in range(20)]


def test_a_refused_connection_keeps_the_readings_and_they_arrive_once_it_is_up():
    async def main():
        receiver = await HookReceiver().start()
        await receiver.stop()  # the port is known, nothing listens on it
        sink = webhook(receiver.url)

        async def scenario():
            for seq in range(100):
                sink.offer(reading(seq), {})
            await eventually(lambda: sink.counters["failures"] >= 2, 10, "refusals")
            assert sink.depth == 100 and "connection refused" in sink.last_error
            await receiver.start()
            await receiver.wait_for_accepted(100)

        try:
            await run_sink(sink, scenario)
            return receiver.accepted()
        finally:
            await receiver.stop()

    assert asyncio.run(main()) == [reading(seq) for seq in range(100)]


@pytest.mark.parametrize(
    ("tls", "delivered"),
    [({}, False), ({"verify": False}, True), ({"ca": "CERT"}, True)],
    ids=["verified-unknown-ca", "verify-off", "own-ca"],
)
def test_tls_verification_options(tmp_path, tls, delivered):
    cert, key = self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    options = {name: str(cert) if value == "CERT" else value for name, value in tls.items()}

    async def main():
        receiver = await HookReceiver(tls=context).start()
        sink = webhook(receiver.url, **options)

        async def scenario():
            sink.offer(reading(1), {})
            # last_error, not the failure count: a reconnect clears the error until the next
            # send fails, and the check reads the error itself.
            await eventually(lambda: sink.counters["delivered"] or sink.last_error)
            return sink.counters["delivered"] == 1, sink.last_error

        try:
            return await run_sink(sink, scenario)
        finally:
            await receiver.stop()

    ok, error = asyncio.run(main())
    assert ok == delivered, error
    if not delivered:
        assert "certificate verify failed" in error


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('url = "ftp://x"', "sinks.hook.url: expected"),
        ('url = "http://x"\nverify = false', 'sinks.hook.verify: not used with an "http://" URL'),
        ('url = "https://x"\nkey = "k.pem"', "sinks.hook.cert: expected a file path"),
        ('url = "https://x"\nheaders = { A = 1 }', "sinks.hook.headers: expected a table"),
    ],
)
def test_bad_options_name_the_key(table, message):
    with pytest.raises(ConfigError) as raised:
        loads(f'[sinks.hook]\ntype = "webhook"\n{table}\n', environ={})
    assert any(line.startswith(message) for line in raised.value.errors), raised.value.errors
