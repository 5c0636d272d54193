// The gateway's dashboard: polls /api/v1 for sources, sinks and sessions, charts the live
// feed (/sse, else /ws). Plain JavaScript, no library, nothing fetched from elsewhere.
"use strict";

(() => {
  const TOKEN_KEY = "gateway.api.token";
  const POLL_MS = 1000;
  const WINDOW_S = 60; // the chart's time span
  const POINTS = 300; // per stream at most: one point per WINDOW_S / POINTS seconds
  const MAX_STREAMS = 24; // charts shown at most; readings of further streams are not drawn
  const MAX_FIELDS = 8; // numeric fields charted per stream
  const FEED_RETRY_MS = 3000; // a refused feed (401, 503) is tried again after this
  const COLORS = ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989",
    "#0a7b83", "#57606a"];

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY),
    waitingForToken: false,
    previous: null, // the last poll's counters, for rates
    streams: new Map(), // "device/stream" → chart state
    feed: null, // the open EventSource or WebSocket
    feedRetryAt: 0,
    drawPending: false,
    sinkNames: [],
    sessionsServed: true,
    timer: null,
  };

  const $ = (id) => document.getElementById(id);

  class ApiProblem extends Error {
    constructor(status, error, retryAfter) {
      super(error.message || `HTTP ${status}`);
      this.status = status;
      this.code = error.code || `http_${status}`;
      this.retryAfter = Number(retryAfter) || 0;
    }
  }

  // -- the API ------------------------------------------------------------------------------
  async function api(method, path, body) {
    const headers = {};
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(`/api/v1${path}`, init);
    const text = await response.text();
    let value = null;
    try {
      value = text ? JSON.parse(text) : null;
    } catch (_notJson) {
      value = null;
    }
    if (response.ok) return value;
    const error = (value && value.error) || { message: text };
    throw new ApiProblem(response.status, error, response.headers.get("Retry-After"));
  }

  function askForToken(why) {
    state.waitingForToken = true;
    closeFeed();
    $("token-message").textContent = why;
    $("token-form").hidden = false;
    $("token-input").focus();
  }

  function useToken(event) {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    state.token = token;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    $("token-form").hidden = true;
    state.waitingForToken = false;
    state.feedRetryAt = 0;
    schedule(0);
  }

  // A problem with the API as the page shows it; a 401 asks for a token.
  function report(error, doing, fromPolling) {
    if (error instanceof ApiProblem && error.status === 401) {
      const why = state.token
        ? "The token was not accepted; give another."
        : "This gateway needs an API token.";
      state.token = null;
      sessionStorage.removeItem(TOKEN_KEY);
      askForToken(why);
      return;
    }
    const what = error instanceof ApiProblem ? `${error.message} (${error.status})` : error.message;
    setMessage(`${doing}: ${what}`, fromPolling);
  }

  // What an action said stays until the next one; what polling said goes when it works again.
  function setMessage(text, fromPolling) {
    const message = $("message");
    if (fromPolling && !text && message.dataset.from !== "polling") return;
    message.textContent = text;
    message.dataset.from = fromPolling ? "polling" : "action";
  }

  // -- polling ------------------------------------------------------------------------------
  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(poll, delay);
  }

  async function poll() {
    if (state.waitingForToken) return; // useToken() starts again
    let delay = POLL_MS;
    try {
      const health = await api("GET", "/health");
      render(health);
      await refreshSessions();
      setMessage("", true);
      if (!state.feed && Date.now() >= state.feedRetryAt) openFeed();
    } catch (error) {
      if (error instanceof ApiProblem && error.status === 429) {
        delay = Math.max(POLL_MS, error.retryAfter * 1000);
      }
      report(error, "Reading the gateway's state", true);
    }
    if (!state.waitingForToken) schedule(delay);
  }

  function render(health) {
    const stats = health.stats || {};
    const now = performance.now() / 1000;
    const previous = state.previous;
    const seconds = previous ? now - previous.at : 0;
    const rate = (table, name, count) => {
      if (!previous || seconds <= 0 || !(name in previous[table])) return "";
      return Math.max(0, (count - previous[table][name]) / seconds).toFixed(1);
    };
    const current = { at: now, sources: {}, sinks: {} };

    $("gateway-id").textContent = stats.gateway || "";
    const badge = $("health");
    badge.textContent = health.status;
    badge.className = `badge ${classFor(health.status)}`;
    badge.title = Object.entries(health.reasons || {})
      .map(([component, why]) => `${component}: ${why}`)
      .join("\n");

    const sourceRows = Object.entries(stats.sources || {}).map(([name, source]) => {
      const readings = source.readings || 0;
      current.sources[name] = readings;
      const reason = (health.reasons || {})[`source:${name}`] || source.hint || "";
      return row([
        text(name),
        text(linkState(source), classFor(source.state), reason),
        text(source.device || "", "device", source.device),
        number(readings),
        number(rate("sources", name, readings)),
        number((source.parse_errors || 0) + (source.pipeline_errors || 0)),
      ], { source: name });
    });
    $("sources").tBodies[0].replaceChildren(...sourceRows);

    const delivered = (stats.totals && stats.totals.delivered) || {};
    const sinkRows = Object.entries(stats.sinks || {}).map(([name, sink]) => {
      const count = delivered[name] !== undefined ? delivered[name] : sink.delivered || 0;
      current.sinks[name] = count;
      const breaker = (sink.breaker && sink.breaker.state) || "";
      const buffer = sink.buffer || {};
      const connection = !sink.enabled ? "disabled" : sink.connected ? "connected" : "disconnected";
      const reason = (health.reasons || {})[`sink:${name}`] || sink.last_error || "";
      return row([
        text(name),
        text(sink.type),
        text(connection, classFor(connection), reason),
        text(breaker, classFor(breaker)),
        number(buffer.depth !== undefined ? buffer.depth : sink.queue_depth),
        number(count),
        number(rate("sinks", name, count)),
        number(dropped(sink)),
      ], { sink: name });
    });
    $("sinks").tBodies[0].replaceChildren(...sinkRows);
    updateSinkChoices(Object.keys(stats.sinks || {}));

    state.previous = current;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  // A COBS source says which device its link greeted and whether it is heard from.
  function linkState(source) {
    const remote = source.remote;
    if (!remote || typeof remote !== "object" || !remote.device) return source.state || "unknown";
    return `${source.state} (${remote.device} ${remote.online ? "online" : "offline"})`;
  }

  function dropped(sink) {
    let total = 0;
    const drops = (sink.buffer && sink.buffer.drops) || {};
    for (const value of Object.values(drops)) if (typeof value === "number") total += value;
    for (const [key, value] of Object.entries(sink)) {
      if (key.startsWith("dropped") && typeof value === "number") total += value;
    }
    return total;
  }

  function classFor(word) {
    const good = ["ok", "connected", "closed", "running", "alive"];
    const middling = ["degraded", "waiting", "half_open", "disabled", "starting", "stopping"];
    if (good.includes(word)) return "ok";
    if (middling.includes(word)) return "warn";
    return word ? "bad" : "";
  }

  function text(value, className, title) {
    const cell = document.createElement("td");
    cell.textContent = value === undefined || value === null ? "" : String(value);
    if (className) cell.className = className;
    if (title) cell.title = title;
    return cell;
  }

  function number(value) {
    return text(value, "number");
  }

  function row(cells, data) {
    const tr = document.createElement("tr");
    for (const [key, value] of Object.entries(data || {})) tr.dataset[key] = value;
    tr.append(...cells);
    return tr;
  }

  function updateSinkChoices(names) {
    if (names.join("\n") === state.sinkNames.join("\n")) return;
    state.sinkNames = names;
    const select = $("session-form").elements.sink;
    const chosen = select.value;
    const options = [new Option("(none)", "")].concat(names.map((name) => new Option(name, name)));
    select.replaceChildren(...options);
    select.value = names.includes(chosen) ? chosen : "";
  }

  // -- sessions -----------------------------------------------------------------------------
  async function refreshSessions() {
    if (!state.sessionsServed) return;
    let answer;
    try {
      answer = await api("GET", "/sessions");
    } catch (error) {
      if (error instanceof ApiProblem && error.status === 404) {
        state.sessionsServed = false;
        $("sessions-section").hidden = true;
        return;
      }
      throw error;
    }
    const sessions = Array.isArray(answer) ? answer : (answer && answer.sessions) || [];
    const rows = sessions.map((session) => {
      const stop = document.createElement("td");
      if (session.state === "running") {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = "Stop";
        button.className = "stop";
        button.addEventListener("click", () => stopSession(session, button));
        stop.append(button);
      }
      return row([
        text(session.name),
        text(session.state, classFor(session.state)),
        text(sessionCounters(session.counters), "wrap"),
        stop,
      ], { session: session.id });
    });
    $("sessions").tBodies[0].replaceChildren(...rows);
  }

  // "readings 120 · → mqtt 120 offered · run7-udp 118 delivered, 0 dropped"
  function sessionCounters(counters) {
    const parts = [];
    for (const [key, value] of Object.entries(counters || {})) {
      if (typeof value === "number") parts.push(`${key} ${value}`);
    }
    for (const route of (counters && counters.routes) || []) {
      const refused = route.refused ? `, ${route.refused} refused` : "";
      parts.push(`→ ${route.sink} ${route.offered || 0} offered${refused}`);
    }
    for (const [name, sink] of Object.entries((counters && counters.sinks) || {})) {
      if (sink && typeof sink === "object") {
        parts.push(`${name} ${sink.delivered || 0} delivered, ${sink.dropped || 0} dropped`);
      }
    }
    return parts.join(" · ");
  }

  async function startSession(event) {
    event.preventDefault();
    const form = event.target;
    const fields = form.elements;
    const name = fields.name.value.trim();
    const body = { name, routes: [] };
    const select = fields.select.value.split(",").map((part) => part.trim()).filter(Boolean);
    if (select.length) body.select = select;
    if (fields.sink.value) {
      const route = { sink: fields.sink.value };
      if (fields.topic.value.trim()) route.topic = fields.topic.value.trim();
      body.routes.push(route);
    }
    const udp = fields.udp.value.trim();
    if (udp) {
      const own = `${name}-udp`;
      body.sinks = { [own]: { type: "udp", targets: [udp] } };
      body.routes.push({ sink: own });
    }
    if (fields.duration.value.trim()) body.duration = fields.duration.value.trim();
    try {
      const session = await api("POST", "/sessions", body);
      setMessage(`Session ${session.name} started.`);
      form.reset();
      await refreshSessions();
    } catch (error) {
      report(error, "Starting the session");
    }
  }

  async function stopSession(session, button) {
    button.disabled = true;
    try {
      const ended = await api("DELETE", `/sessions/${encodeURIComponent(session.id)}`);
      setMessage(`Session ${ended.name} stopped: ${sessionCounters(ended.counters)}.`);
      await refreshSessions();
    } catch (error) {
      button.disabled = false;
      report(error, `Stopping session ${session.name}`);
    }
  }

  // -- the live feed ------------------------------------------------------------------------
  // What the listener said in the page: its live feeds, and whether it wants a token.
  function listener() {
    try {
      return JSON.parse(document.querySelector('meta[name="gateway-listener"]').content);
    } catch (_notRendered) {
      return {};
    }
  }

  function withToken(path) {
    return state.token ? `${path}?access_token=${encodeURIComponent(state.token)}` : path;
  }

  function openFeed() {
    const served = listener();
    if (served.sse && served.sse.length) return openEventSource(served.sse[0]);
    if (served.websocket && served.websocket.length) return openWebSocket(served.websocket[0]);
    setFeedState("", "live feed: none (configure an sse or websocket sink)");
    state.feedRetryAt = Infinity;
  }

  function closeFeed() {
    if (state.feed) state.feed.close();
    state.feed = null;
  }

  function feedLost(why) {
    closeFeed();
    state.feedRetryAt = Date.now() + FEED_RETRY_MS;
    setFeedState("bad", `live feed: ${why}`);
  }

  function openEventSource(path) {
    const source = new EventSource(withToken(path));
    state.feed = source;
    source.addEventListener("open", () => setFeedState("ok", `live feed: ${path}`));
    source.addEventListener("reading", (event) => addReadings([JSON.parse(event.data)]));
    source.addEventListener("batch", (event) => addReadings(JSON.parse(event.data)));
    source.addEventListener("gap", () => setFeedState("warn", `live feed: ${path} (gap)`));
    source.addEventListener("error", () => {
      // EventSource reconnects by itself (with Last-Event-ID) unless it was refused.
      if (source.readyState === EventSource.CLOSED) feedLost("refused, trying again");
      else setFeedState("warn", `live feed: ${path} reconnecting`);
    });
  }

  function openWebSocket(path) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}${withToken(path)}`);
    state.feed = socket;
    socket.addEventListener("open", () => setFeedState("ok", `live feed: ${path}`));
    socket.addEventListener("message", (event) => {
      const value = JSON.parse(event.data);
      addReadings(Array.isArray(value) ? value : [value]);
    });
    socket.addEventListener("close", () => {
      if (state.feed === socket) feedLost("closed, reconnecting");
    });
  }

  function setFeedState(className, label) {
    const badge = $("feed-state");
    badge.textContent = label;
    badge.className = `badge ${className}`;
  }

  // -- charts -------------------------------------------------------------------------------
  // One figure per stream; in it one line per numeric field, each on its own scale (a
  // pressure near 1013 and a temperature near 21 share no useful axis).
  function addReadings(readings) {
    for (const reading of readings) {
      if (!reading || typeof reading.data !== "object" || reading.data === null) continue;
      const key = `${reading.device}/${reading.stream}`;
      const stream = state.streams.get(key) || newStream(key);
      if (!stream) continue;
      const t = typeof reading.ts === "number" ? reading.ts : Date.now() / 1000;
      for (const [name, value] of Object.entries(reading.data)) {
        if (typeof value !== "number" || !Number.isFinite(value)) continue;
        const field = stream.fields.get(name) || newField(stream, name);
        if (field) addPoint(field.points, t, value);
      }
      stream.last = reading;
      stream.count += 1;
    }
    if (!state.drawPending) {
      state.drawPending = true;
      requestAnimationFrame(draw);
    }
  }

  function addPoint(points, t, value) {
    const last = points[points.length - 1];
    // One point per slot: a faster stream updates its latest point instead of adding more.
    if (last && t - last.t < WINDOW_S / POINTS && t >= last.t) last.v = value;
    else points.push({ t, v: value });
    while (points.length && points[points.length - 1].t - points[0].t > WINDOW_S) points.shift();
    if (points.length > POINTS) points.splice(0, points.length - POINTS);
  }

  function element(tag, className, text) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined) made.textContent = text;
    return made;
  }

  function newStream(key) {
    if (state.streams.size >= MAX_STREAMS) return null;
    const figure = element("figure");
    figure.dataset.stream = key;
    const seq = element("span", "seq muted");
    const count = element("span", "count muted");
    const caption = element("figcaption");
    caption.append(element("strong", "", key), seq, count);
    const fields = element("div", "fields");
    figure.append(caption, fields);
    $("charts").append(figure);
    $("charts-empty").hidden = true;
    const stream = { key, seq, countLabel: count, list: fields, fields: new Map(), count: 0 };
    stream.last = null;
    state.streams.set(key, stream);
    return stream;
  }

  function newField(stream, name) {
    if (stream.fields.size >= MAX_FIELDS) return null;
    const color = COLORS[stream.fields.size % COLORS.length];
    const entry = element("div", "field");
    entry.dataset.field = name;
    const swatch = element("i", "swatch");
    swatch.style.background = color;
    const label = element("span", "name");
    label.append(swatch, name);
    const value = element("b", "value", "–");
    const range = element("span", "range muted");
    const canvas = element("canvas");
    entry.append(label, value, canvas, range);
    stream.list.append(entry);
    const field = { name, color, value, range, canvas, points: [] };
    stream.fields.set(name, field);
    return field;
  }

  function draw() {
    state.drawPending = false;
    for (const stream of state.streams.values()) {
      const last = stream.last;
      stream.seq.textContent = last && last.seq !== undefined ? `seq ${last.seq}` : "";
      stream.countLabel.textContent = `${stream.count} readings`;
      for (const field of stream.fields.values()) {
        const latest = last && last.data ? last.data[field.name] : undefined;
        if (typeof latest === "number") field.value.textContent = String(latest);
        drawField(field);
      }
    }
  }

  function drawField(field) {
    const canvas = field.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, width, height);
    const points = field.points;
    if (!points.length) return;
    let low = Infinity;
    let high = -Infinity;
    for (const point of points) {
      low = Math.min(low, point.v);
      high = Math.max(high, point.v);
    }
    field.range.textContent = `${+low.toPrecision(5)} … ${+high.toPrecision(5)}`;
    const span = high - low || 1;
    const newest = points[points.length - 1].t;
    const oldest = Math.max(points[0].t, newest - WINDOW_S);
    const seconds = newest - oldest || 1; // fills the width from the first seconds on
    const pad = 2 * ratio;
    const x = (t) => pad + ((t - oldest) / seconds) * (width - 2 * pad);
    const y = (v) => height - pad - ((v - low) / span) * (height - 2 * pad);
    context.lineWidth = 1.5 * ratio;
    context.strokeStyle = field.color;
    context.beginPath();
    points.forEach((point, index) => {
      if (index) context.lineTo(x(point.t), y(point.v));
      else context.moveTo(x(point.t), y(point.v));
    });
    context.stroke();
  }

  // -- start --------------------------------------------------------------------------------
  $("token-form").addEventListener("submit", useToken);
  $("session-form").addEventListener("submit", startSession);
  if (listener().tokens && !state.token) askForToken("This gateway needs an API token.");
  else schedule(0);
})();
