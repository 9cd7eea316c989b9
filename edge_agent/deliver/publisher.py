"""MQTT side of the agent: verdicts, alerts and events through the durable spool; state, availability, commands.

Topics, for ``p = <topic_prefix>/<device_id>`` (docs/architecture.md, "MQTT contract"; payloads: `messages`):

======================  ==========================================  ========  ======  ========
topic                   payload                                     QoS       retain  spooled
======================  ==========================================  ========  ======  ========
p/availability          ``online`` / ``offline`` (last will)        1         yes     no
p/state                 JSON: model, threshold, delegate, fps ...   1         yes     no (latest re-sent)
p/verdict               JSON, one per part, with ``epoch``, ``seq``  1         no      yes
p/alert                 JSON, anomalies only                        1         no      yes
p/alert/image           raw JPEG bytes                              0         no      no
p/retrain/images        JPEG: the current detector's training parts 1         yes     no (latest re-sent)
p/<event name>          JSON (e.g. ``retrain/progress``)            1         no      yes
p/cmd/<name>            JSON object or empty (to the device)        1         --      --
p/cmd/<name>/result     ``{"ok", "result"|"error", "request_id"}``  1         no      no
<ha>/.../config         Home Assistant discovery (`homeassistant`)  1         yes     no (re-sent on connect)
======================  ==========================================  ========  ======  ========

Delivery of spooled messages is *at least once*, in order: ``publish_verdict`` only commits the message to the
spool (so capture never waits on the network), and a sender thread hands a small window of them to paho while
connected and acks each one in the spool only after its PUBACK. paho keeps un-acknowledged QoS 1 messages and
resends them (DUP) after a reconnect, so an outage costs no duplicates within one process; a crash or a
restart between a PUBACK and the ack sends that window again. Subscribers drop duplicates by ``(epoch, seq)``:
``epoch`` is a random hex string, new each time the spool is opened (each agent start), and ``seq`` only ever
increases within it (it continues across restarts, but a power loss can roll it back, in a new epoch).

Commands arrive with a clean session: a command sent while the device is offline is not queued for it. A
handler may answer with a `Future` (a retrain, or a change the main loop must make): the reply is published when
it resolves, so the command thread never waits and ``status`` answers at once while a retrain runs.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edge_agent.config import MqttConfig
from edge_agent.deliver.homeassistant import BIRTH_PAYLOAD, Discovery
from edge_agent.deliver.messages import command_args, command_reply, to_json
from edge_agent.deliver.mqtt_client import default_client_id, make_client
from edge_agent.deliver.topics import Topics
from edge_agent.deliver.spool import Spool

log = logging.getLogger(__name__)

#: A command handler: ``(name, args) -> result``, or a `Future` of the result; raising means "refused".
CommandHandler = Callable[[str, dict[str, Any]], Any]

#: Spooled messages handed to paho before waiting for PUBACKs: enough to hide a round trip, small enough that
#: paho's in-memory queue stays tiny during an outage (the spool, not RAM, holds the backlog).
SEND_WINDOW = 20
#: Verdicts, alerts and events: at least once.
QOS = 1
#: Commands are small JSON objects: anything larger is refused unread, and a request id is echoed only if short.
MAX_COMMAND_BYTES = 64 * 1024
MAX_REQUEST_ID = 128
_POLL_S = 0.2
#: The sender is woken by new messages and by connects; this only bounds how long a missed wake-up could cost.
_IDLE_S = 1.0


def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """Log an exception from a paho callback: raised, it would end paho's network thread and all reconnects."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            callback(*args, **kwargs)
        except Exception:
            log.exception("MQTT: error in %s", callback.__name__)

    return wrapper


class Publisher:
    """Connects to the broker in the background and publishes the agent's messages (see the module docstring).

    Threads: paho's network thread (callbacks), a sender thread draining the spool, and a command thread that
    runs ``on_command`` so a slow handler (a retrain) never stalls keepalives or deliveries. Commands run one
    at a time, in arrival order. A Publisher is started once; make a new one to reconnect with new settings.
    """

    def __init__(self, settings: MqttConfig, device_id: str, spool: Spool,
                 on_command: CommandHandler | None = None, discovery: Discovery | None = None):
        self.topic = Topics(settings.topic_prefix, device_id)
        self.settings = settings
        self.spool = spool
        self.on_command = on_command
        self.discovery = discovery
        self._discovery_configs: dict[str, bytes] = {}  # Home Assistant's, from the latest state; under _state_lock
        # Message ids of the empty configs that take stale entities back. Only paho's network thread (on_connect,
        # on_publish) touches it; on_publish runs under paho's message lock, so it must not take _state_lock.
        self._clearing: set[int] = set()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._state_lock = threading.Lock()
        self._retained: dict[str, bytes] = {}  # the latest state and pictures, re-sent on every (re)connect
        self._online = False  # what the agent last said of itself; re-said on every (re)connect
        self._failing = False  # in a streak of failed connection attempts: log only its first one as WARNING
        self._commands: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self.client_id = default_client_id(settings, device_id)
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = make_client(self.settings, self.client_id)
        client.max_inflight_messages_set(SEND_WINDOW)
        client.reconnect_delay_set(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        client.will_set(self.topic("availability"), b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; returns at once, also when the broker is down (paho keeps retrying)."""
        if self._threads:
            raise RuntimeError("Publisher.start() may be called only once")
        if self.discovery is not None:
            self.discovery.remember()
        s = self.settings
        log.info("MQTT: connecting to %s:%d as %s", s.host, s.port, self.client_id)
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive)
        self._client.loop_start()
        self._threads = [threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)]
        if self.on_command is not None:
            self._threads.append(threading.Thread(target=self._command_loop, name="mqtt-commands", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5) -> None:
        """Drain what the spool can send within ``timeout``, say ``offline`` (retained), disconnect, join.

        ``offline`` goes last so that it means "nothing more is coming"; what could not be sent stays in the
        spool for the next start.
        """
        deadline = time.monotonic() + timeout
        while len(self.spool) and self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stopping.set()
        self._wake.set()
        self._commands.put(None)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        info = self._say_availability(False)
        # Not sent (the connection just dropped): the broker publishes the last will, also "offline".
        if info is not None and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()
        self.spool.flush()  # acks and counters a full disk held back, written now if there is room
        log.info("MQTT: stopped (%d message(s) left in the spool)", len(self.spool))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stats(self) -> dict[str, Any]:
        return {"queued": len(self.spool), "dropped": self.spool.dropped, "connected": self.connected}

    # --- publishing ------------------------------------------------------------------------------------------

    def publish_availability(self, online: bool) -> None:
        """Retained ``online``/``offline``; ``online`` is said again after every reconnect (the broker may have
        published the last will meanwhile)."""
        self._say_availability(online)

    def _say_availability(self, online: bool) -> mqtt.MQTTMessageInfo | None:
        with self._state_lock:
            self._online = online
            if not self.connected:
                return None
            return self._client.publish(self.topic("availability"), b"online" if online else b"offline", qos=1,
                                        retain=True)

    def publish_verdict(self, verdict: dict[str, Any]) -> int:
        """Set ``verdict["seq"]`` to the next sequence number and ``verdict["epoch"]`` to the spool's epoch (if it
        has no ``seq`` yet), spool the verdict, return ``seq``. ``(epoch, seq)`` is never reused for another verdict.

        Only local disk work: it never waits for the network, so capture keeps its pace during an outage.
        """
        if "seq" not in verdict:
            verdict["seq"] = self.spool.next_sequence()
            verdict["epoch"] = self.spool.epoch
        self._spool("verdict", verdict)
        return verdict["seq"]

    def publish_alert(self, alert: dict[str, Any], image_jpeg: bytes | None = None) -> None:
        """Spool the alert JSON; send ``image_jpeg`` on ``alert/image`` (QoS 0) only if connected right now.

        Images are too big to keep on the device's disk for an outage of unknown length, so an image made while
        offline is dropped; and as it skips the spool it can arrive before its alert JSON.
        """
        self._spool("alert", alert)
        if image_jpeg is not None and self.connected:
            self._client.publish(self.topic("alert/image"), image_jpeg, qos=0)

    def publish_event(self, name: str, payload: dict[str, Any]) -> None:
        """Spool a non-retained QoS 1 message on ``<prefix>/<device>/<name>`` (e.g. ``retrain/progress``)."""
        self._spool(name, payload)

    def publish_state(self, state: dict[str, Any]) -> None:
        """Publish the retained state now if connected; the latest state is re-sent on every (re)connect. Home
        Assistant's configs, whose device block comes from the state, are sent again only when they change."""
        self._retain("state", to_json(state))
        if self.discovery is not None:
            configs = self.discovery.configs(state)
            with self._state_lock:
                if configs != self._discovery_configs:
                    self._discovery_configs = configs
                    if self.connected:
                        self._announce(self._client)

    def _announce(self, client: mqtt.Client) -> None:
        """Home Assistant's configs, retained (caller holds ``_state_lock``)."""
        for topic, payload in self._discovery_configs.items():
            client.publish(topic, payload, qos=1, retain=True)

    def publish_image(self, name: str, image_jpeg: bytes) -> None:
        """A retained picture (``retrain/images``), like the state: the latest is re-sent on every (re)connect,
        never spooled (a newer one replaces it)."""
        self._retain(name, image_jpeg)

    def publish_frame(self, image: Any, verdict: dict[str, Any] | None) -> None:
        pass  # frames stay on the device: a live view is the web page's (edge_agent.deliver.web)

    def _retain(self, name: str, payload: bytes) -> None:
        with self._state_lock:
            self._retained[name] = payload
            if self.connected:
                self._client.publish(self.topic(name), payload, qos=1, retain=True)

    def _spool(self, name: str, payload: dict[str, Any]) -> None:
        self.spool.put(self.topic(name), to_json(payload), qos=QOS)
        self._wake.set()

    # --- paho callbacks (network thread) ---------------------------------------------------------------------

    def _log_failure(self, msg: str, *args: Any) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, msg + "; retrying with backoff %s-%s s", *args, self.settings.reconnect_min_s,
                self.settings.reconnect_max_s)

    @_guarded
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: mqtt.ReasonCode, properties: mqtt.Properties | None) -> None:
        if reason_code.is_failure:
            self._log_failure("MQTT: %s:%d refused the connection: %s", self.settings.host, self.settings.port,
                              reason_code)
            return
        self._failing = False
        log.info("MQTT: connected to %s:%d", self.settings.host, self.settings.port)
        if self.on_command is not None:
            client.subscribe(self.topic.command("+"), qos=1)
        if self.discovery is not None and self.discovery.enabled:
            client.subscribe(self.discovery.status_topic, qos=1)
        with self._state_lock:
            self._connected.set()
            if self._online:
                client.publish(self.topic("availability"), b"online", qos=1, retain=True)
            for name, payload in self._retained.items():
                client.publish(self.topic(name), payload, qos=1, retain=True)
            self._announce(client)
            if self.discovery is not None:
                # Entities no longer announced: an empty retained payload removes each; forgotten on PUBACK.
                self._clearing = {client.publish(topic, b"", qos=1, retain=True).mid
                                  for topic in self.discovery.stale()}
        self._wake.set()

    @_guarded
    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._log_failure("MQTT: cannot reach %s:%d", self.settings.host, self.settings.port)

    @_guarded
    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: mqtt.ReasonCode, properties: mqtt.Properties | None) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._stopping.is_set():
            log.info("MQTT: disconnected (%s)", reason_code)
        elif was_connected:
            log.warning("MQTT: connection lost (%s); spooling until it is back", reason_code)

    @_guarded
    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: mqtt.ReasonCode,
                    properties: mqtt.Properties) -> None:
        if mid in self._clearing:
            self._clearing.discard(mid)
            if not self._clearing and self.discovery is not None:
                self.discovery.forget_stale()

    @_guarded
    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self.discovery is not None and self.discovery.enabled and message.topic == self.discovery.status_topic:
            if message.payload == BIRTH_PAYLOAD:  # Home Assistant (re)started: it needs the configs again
                log.info("MQTT: Home Assistant is online; sending its discovery configs")
                with self._state_lock:
                    self._announce(client)
            return
        if message.retain:
            # A retained command would run again on every reconnect (a retrain at each network blip).
            log.warning("MQTT: ignoring retained command on %s; publish commands without retain", message.topic)
            return
        self._commands.put(message)

    # --- worker threads --------------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        """Keep up to SEND_WINDOW spooled messages in paho's hands while connected; ack them in order on PUBACK."""
        pending: deque[tuple[int, mqtt.MQTTMessageInfo]] = deque()
        last_id = 0  # the newest spool id handed to paho
        while not self._stopping.is_set():
            try:
                if self.connected and len(pending) < SEND_WINDOW:
                    last_id = self._hand_over(pending, last_id)
                if pending:
                    pending[0][1].wait_for_publish(_POLL_S)
                    done = []
                    while pending and pending[0][1].is_published():
                        done.append(pending.popleft()[0])
                    self.spool.ack(done)
                else:
                    self._wake.wait(_IDLE_S)
                    self._wake.clear()
            except Exception:
                log.exception("MQTT sender: unexpected error; resending from the oldest unsent message")
                pending.clear()
                last_id = 0
                self._stopping.wait(1.0)

    def _hand_over(self, pending: deque[tuple[int, mqtt.MQTTMessageInfo]], last_id: int) -> int:
        """Publish the spooled messages after ``last_id`` that fit in the window; return the new ``last_id``."""
        for item in self.spool.peek(len(pending) + SEND_WINDOW):
            if len(pending) >= SEND_WINDOW:
                break
            if item.id <= last_id:
                continue
            info = self._client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                # Lost the connection just now: paho may still send it, but we cannot track it; start over
                # from the spool once reconnected (a possible duplicate, never a loss).
                log.info("MQTT sender: publish failed (%s); will resend", mqtt.error_string(info.rc))
                pending.clear()
                return 0
            pending.append((item.id, info))
            last_id = item.id
        return last_id

    def _command_loop(self) -> None:
        """One command at a time, for the life of the publisher: whatever one command does, the next is heard."""
        while (message := self._commands.get()) is not None:
            try:
                self._run_command(message.topic.rsplit("/", 1)[-1], message.payload)
            except Exception:
                log.exception("MQTT command on %s failed unanswered", message.topic)

    def _run_command(self, name: str, payload: bytes) -> None:
        """Decode and run the handler; its result (now, or when its `Future` resolves) or its refusal is the reply."""
        assert self.on_command is not None
        if len(payload) > MAX_COMMAND_BYTES:
            return self._reply(name, {}, error=f"payload is {len(payload)} bytes; commands take at most "
                                               f"{MAX_COMMAND_BYTES}")
        try:
            args = command_args(payload)
        except ValueError as exc:
            log.warning("MQTT command %r: %s", name, exc)
            return self._reply(name, {}, error=str(exc))
        request_id = args.get("request_id")
        if request_id is not None and not (
                (isinstance(request_id, int) and not isinstance(request_id, bool))
                or (isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID)):
            return self._reply(name, {}, error=f"request_id must be an integer or a string of at most "
                                               f"{MAX_REQUEST_ID} characters")
        try:
            result = self.on_command(name, args)
        except Exception as exc:
            return self._reply(name, args, error=exc)
        if isinstance(result, Future):
            result.add_done_callback(lambda done: self._reply(name, args, *_outcome(done)))
        else:
            self._reply(name, args, result)

    def _reply(self, name: str, args: dict[str, Any], result: Any = None,
               error: BaseException | str | None = None) -> None:
        if isinstance(error, BaseException):
            log.error("MQTT command %r refused: %s", name, error, exc_info=not isinstance(error, ValueError))
        try:
            try:
                body = to_json(command_reply(args, result, error))
            except (TypeError, ValueError) as exc:  # a result that cannot be sent is the handler's failure
                log.exception("MQTT command %r: result is not JSON", name)
                body = to_json(command_reply(args, error=exc))
            self._client.publish(self.topic.command_result(name), body, qos=1)
        except Exception:
            log.exception("MQTT command %r: could not reply", name)


def _outcome(future: Future) -> tuple[Any, BaseException | None]:
    error = future.exception()
    return (None, error) if error is not None else (future.result(), None)
