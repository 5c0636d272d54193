"""The one place that talks to umqtt.simple: connect with a last will, publish, close.

umqtt.simple is blocking. Every socket operation here has a timeout, so a broker that went
away costs at most SOCKET_TIMEOUT_S of the event loop, then an OSError the sink counts as a
failure. Its packet id is not wrapped by umqtt.simple itself: it is kept in 1..65535 here.
"""

import socket

from umqtt.simple import MQTTClient, MQTTException

SOCKET_TIMEOUT_S = 2
# umqtt.simple writes a PUBLISH in five small writes; with Nagle's algorithm each waits for
# the broker's delayed ACK of the one before (about 40 ms). Linux and lwIP share the numbers;
# the unix port does not name them.
IPPROTO_TCP = getattr(socket, "IPPROTO_TCP", 6)
TCP_NODELAY = getattr(socket, "TCP_NODELAY", 1)


class MqttError(Exception):
    """The broker refused, did not answer, or the connection broke."""


class Connection:
    def __init__(self, options, will=None):
        self.options = options
        self.will = will  # (topic, payload) published retained by the broker if we vanish
        self.client = None

    def open(self):
        """Connect (clean session); raises MqttError."""
        options = self.options
        client = MQTTClient(
            options["client_id"],
            options["host"],
            port=options["port"],
            user=options.get("user"),
            password=options.get("password"),
            keepalive=options.get("keepalive", 0),
        )
        if self.will is not None:
            client.set_last_will(self.will[0], self.will[1], retain=True, qos=1)
        try:
            client.connect()
            client.sock.settimeout(SOCKET_TIMEOUT_S)
            _no_delay(client.sock)
        except (OSError, MQTTException, AssertionError, IndexError) as error:
            _close(client)
            raise MqttError("connect: " + _describe(error)) from None
        self.client = client

    def publish(self, topic, payload, qos, retain=False):
        """Send one message; with QoS 1 returns after its PUBACK. Raises MqttError."""
        client = self.client
        if client is None:
            raise MqttError("not connected")
        if client.pid >= 0xFFFF:
            client.pid = 0  # umqtt.simple would send packet id 65536 (0 on the wire)
        try:
            client.sock.settimeout(SOCKET_TIMEOUT_S)  # wait_msg() leaves it blocking
            client.publish(topic, payload, retain, qos)
        except (OSError, MQTTException, AssertionError, IndexError) as error:
            self.close()
            raise MqttError("publish: " + _describe(error)) from None

    def ping(self):
        """Keep the session alive while idle (the broker answers; the reply is read later)."""
        if self.client is None:
            return
        try:
            self.client.sock.settimeout(SOCKET_TIMEOUT_S)
            self.client.ping()
            while self.client.check_msg() is not None:
                pass
        except (OSError, MQTTException, AssertionError, IndexError) as error:
            self.close()
            raise MqttError("ping: " + _describe(error)) from None

    def disconnect(self):
        """A clean DISCONNECT: the broker drops the last will."""
        if self.client is not None:
            try:
                self.client.disconnect()
            except OSError:
                pass
        self.client = None

    def close(self):
        """Drop the connection without DISCONNECT: the broker publishes the last will."""
        if self.client is not None:
            _close(self.client)
        self.client = None


def _no_delay(sock):
    try:
        sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # a port without the option: slower, not wrong


def _close(client):
    try:
        if client.sock is not None:
            client.sock.close()
    except OSError:
        pass


def _describe(error):
    if isinstance(error, MQTTException):
        return f"refused (CONNACK code {error.args[0]})"
    if isinstance(error, OSError):
        return "socket error %s" % (error.args[0] if error.args else "")
    return "unexpected reply from the broker"
