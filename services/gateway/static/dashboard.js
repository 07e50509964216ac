// aceorch dashboard: one EventSource on /api/live (snapshot, then engine/stream changes).
// Plain DOM, no framework, no build step. Values are always set with textContent, never
// as HTML: engine names and labels come from whoever registered the engine.
"use strict";

(() => {
  const HEALTH_ORDER = { unhealthy: 0, unknown: 1, healthy: 2 };
  const HEALTH_LABEL = { healthy: "Healthy", unhealthy: "Unhealthy", unknown: "Unknown" };
  const MAX_BACKOFF_MS = 15000;

  const state = {
    engines: new Map(),
    streams: new Map(),
    skewMs: 0,
    maxStreams: null,
    filter: "all",
    query: "",
  };
  const rows = new Map(); // container_id -> {tr, cells}
  // Other scripts (history.js) hear the live feed here: {snapshot, engine, stream, sample, event} -> [fn].
  const hooks = { snapshot: [], engine: [], stream: [], sample: [], event: [] };
  const notify = (name, value) => hooks[name].forEach((fn) => fn(value));
  let renderQueued = false;
  let backoffMs = 1000;
  let source = null;
  let apiKey = null;

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------ formatting

  function serverNow() {
    return Date.now() + state.skewMs;
  }

  function relTime(iso, nowMs) {
    if (!iso) return "Never";
    const at = Date.parse(iso);
    if (Number.isNaN(at)) return "Never";
    const s = Math.max(0, Math.round(((nowMs ?? serverNow()) - at) / 1000));
    if (s < 5) return "just now";
    if (s < 60) return `${s}s ago`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ago`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h}h ago`;
    return `${Math.floor(h / 24)}d ago`;
  }

  function clock(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour12: false });
  }

  function formatBytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value >= 10 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  // A cell showing "5m ago"; refreshed every second from its data-ts.
  function setAgo(node, iso) {
    node.dataset.ts = iso || "";
    node.title = iso ? new Date(iso).toLocaleString() : "";
    node.classList.toggle("never", !iso);
    setText(node, relTime(iso));
  }

  // ------------------------------------------------------------ engines table

  function createRow(id) {
    const tr = el("tr", "engine");
    tr.dataset.id = id;
    tr.addEventListener("click", () => {
      location.hash = `#/engines/${encodeURIComponent(id)}`;
    });
    const td = (label, className) => {
      const cell = el("td", className);
      cell.dataset.label = label;
      tr.appendChild(cell);
      return cell;
    };
    const cells = {};
    const nameCell = td("Engine");
    cells.name = nameCell.appendChild(el("span", "name"));
    cells.runtime = nameCell.appendChild(el("span", "tag"));
    cells.id = nameCell.appendChild(el("span", "minor"));

    const healthCell = td("Health");
    cells.health = healthCell.appendChild(el("span", "health"));
    cells.dot = cells.health.appendChild(el("span", "dot"));
    cells.healthText = cells.health.appendChild(el("span"));
    cells.error = healthCell.appendChild(el("span", "error"));

    cells.state = td("State").appendChild(el("span", "badge"));
    const streamsCell = td("Streams", "num");
    cells.streams = streamsCell.appendChild(el("span"));
    cells.reserved = streamsCell.appendChild(el("span", "minor"));

    const checkCell = td("Last check");
    cells.checked = checkCell.appendChild(el("span", "ago"));
    cells.checkedClock = checkCell.appendChild(el("span", "minor"));
    cells.used = td("Last used").appendChild(el("span", "ago"));
    cells.cache = td("Cache cleaned", "num");
    cells.cleaned = td("Last clean").appendChild(el("span", "ago"));
    const addrCell = td("Address");
    cells.addr = addrCell.appendChild(el("span", "addr"));
    cells.hostId = addrCell.appendChild(el("span", "minor host-id"));  // the host it runs on (HOST_ID)
    return { tr, cells };
  }

  function updateRow(row, engine) {
    const { tr, cells } = row;
    const health = engine.health_status || "unknown";
    tr.dataset.health = health;
    tr.dataset.state = engine.state || "active";

    setText(cells.name, engine.container_name || engine.container_id);
    setText(cells.runtime, engine.runtime || "");
    setText(cells.id, engine.container_name && engine.container_name !== engine.container_id ? engine.container_id : "");

    cells.health.dataset.health = health;
    cells.dot.className = `dot dot-${health}`;
    setText(cells.healthText, HEALTH_LABEL[health] || health);
    const error = health === "unhealthy" && engine.last_error ? engine.last_error : "";
    setText(cells.error, error);
    cells.error.title = error;
    const failures = engine.consecutive_failures || 0;
    cells.health.title = health === "unhealthy" ? `${failures} consecutive failed checks` : "";

    cells.state.dataset.state = engine.state || "active";
    setText(cells.state, engine.state || "active");

    const streams = (engine.streams || []).length;
    setText(cells.streams, state.maxStreams ? `${streams} / ${state.maxStreams}` : String(streams));
    const reserved = Object.keys(engine.reservations || {}).length;
    setText(cells.reserved, reserved ? `+${reserved} reserved` : "");

    setAgo(cells.checked, engine.last_health_check);
    setText(cells.checkedClock, clock(engine.last_health_check));
    setAgo(cells.used, engine.last_stream_usage);
    setText(cells.cache, formatBytes(engine.cache_size_bytes));
    setAgo(cells.cleaned, engine.last_cache_cleanup);
    setText(cells.addr, `${engine.host}:${engine.port}`);
    setText(cells.hostId, engine.host_id ? `on ${engine.host_id}` : "");
  }

  function visible(engine) {
    if (state.filter !== "all" && (engine.health_status || "unknown") !== state.filter) return false;
    if (!state.query) return true;
    const haystack =
      `${engine.container_name} ${engine.container_id} ${engine.host}:${engine.port} ${engine.host_id || ""}`.toLowerCase();
    return haystack.includes(state.query);
  }

  function byProblemsFirst(a, b) {
    const rank = (HEALTH_ORDER[a.health_status] ?? 1) - (HEALTH_ORDER[b.health_status] ?? 1);
    if (rank) return rank;
    return a.container_id < b.container_id ? -1 : a.container_id > b.container_id ? 1 : 0;
  }

  function renderEngines() {
    const tbody = $("engine-rows");
    const engines = [...state.engines.values()];
    const shown = engines.filter(visible).sort(byProblemsFirst);
    for (const [id, row] of rows) {
      if (!state.engines.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    let previous = null;
    for (const engine of shown) {
      let row = rows.get(engine.container_id);
      if (!row) {
        row = createRow(engine.container_id);
        rows.set(engine.container_id, row);
      }
      updateRow(row, engine);
      // Keep DOM order equal to `shown` while moving as few nodes as possible.
      const expected = previous ? previous.nextSibling : tbody.firstChild;
      if (expected !== row.tr) tbody.insertBefore(row.tr, expected);
      previous = row.tr;
    }
    const shownIds = new Set(shown.map((e) => e.container_id));
    for (const [id, row] of rows) {
      if (!shownIds.has(id) && row.tr.parentNode) row.tr.remove();
    }
    $("engines-empty").hidden = engines.length > 0;
    if (engines.length > 0 && shown.length === 0) {
      $("engines-empty").hidden = false;
      $("engines-empty").textContent = "No engine matches this filter.";
    } else {
      $("engines-empty").textContent =
        "No engines registered yet. They appear here as soon as the provisioner starts them or one is added with POST /engines.";
    }
  }

  // ------------------------------------------------------------ KPIs

  function renderKpis() {
    const engines = [...state.engines.values()];
    const count = { healthy: 0, unhealthy: 0, unknown: 0 };
    let busy = { cleaning: 0, draining: 0 };
    let cleanedBytes = 0;
    let lastClean = null;
    let freeSlots = 0;
    for (const e of engines) {
      count[e.health_status in count ? e.health_status : "unknown"] += 1;
      if (e.state in busy) busy[e.state] += 1;
      cleanedBytes += e.cache_size_bytes || 0;
      if (e.last_cache_cleanup && (!lastClean || e.last_cache_cleanup > lastClean)) lastClean = e.last_cache_cleanup;
      if (state.maxStreams && e.health_status === "healthy" && e.state === "active") {
        const load = (e.streams || []).length + Object.keys(e.reservations || {}).length;
        freeSlots += Math.max(0, state.maxStreams - load);
      }
    }
    const total = engines.length;
    setText($("kpi-healthy-total"), `${count.healthy} / ${total}`);
    const pct = (n) => (total ? `${(100 * n) / total}%` : "0%");
    $("meter-healthy").style.width = pct(count.healthy);
    $("meter-unhealthy").style.width = pct(count.unhealthy);
    $("meter-unknown").style.width = pct(count.unknown);
    setText(
      $("kpi-health-sub"),
      total ? `${count.unhealthy} unhealthy · ${count.unknown} not checked yet` : "No engines yet",
    );
    setText($("kpi-streams"), String(state.streams.size));
    setText($("kpi-capacity"), state.maxStreams ? `${freeSlots} free slots on healthy engines` : "\u00a0");
    setText($("kpi-busy"), String(busy.cleaning + busy.draining));
    setText(
      $("kpi-busy-sub"),
      busy.cleaning + busy.draining ? `${busy.cleaning} cleaning · ${busy.draining} draining` : "All engines active",
    );
    setText($("kpi-cache"), formatBytes(cleanedBytes));
    const cleanNode = $("kpi-clean");
    cleanNode.dataset.prefix = "last clean ";
    cleanNode.dataset.ts = lastClean || "";
    setText(cleanNode, lastClean ? `last clean ${relTime(lastClean)}` : "No clean yet");
    for (const key of ["all", "healthy", "unhealthy", "unknown"]) {
      const node = document.querySelector(`[data-count="${key}"]`);
      setText(node, String(key === "all" ? total : count[key]));
    }
    document.title = count.unhealthy ? `(${count.unhealthy} unhealthy) AceStream fleet` : "AceStream fleet";
  }

  // ------------------------------------------------------------ streams table

  function renderStreams() {
    const tbody = $("stream-rows");
    const streams = [...state.streams.values()].sort((a, b) =>
      (b.started_at || "").localeCompare(a.started_at || ""),
    );
    const fragment = document.createDocumentFragment();
    for (const s of streams) {
      const tr = el("tr", "stream");
      tr.dataset.id = s.stream_id;
      const td = (label) => {
        const cell = el("td");
        cell.dataset.label = label;
        tr.appendChild(cell);
        return cell;
      };
      td("Stream").appendChild(el("span", "addr", s.stream_id));
      const engine = state.engines.get(s.container_id);
      td("Engine").textContent = engine ? engine.container_name : s.container_id || "—";
      const content = td("Content");
      content.className = "content";
      content.textContent = s.content_key || "—";
      if (s.key_type) content.appendChild(el("span", "minor", s.key_type));
      setAgo(td("Started").appendChild(el("span", "ago")), s.started_at);
      const stats = s.stats || {};
      const peers = td("Peers");
      peers.className = "num";
      peers.textContent = stats.peers == null ? "—" : String(stats.peers);
      const speed = td("Speed");
      speed.className = "num";
      speed.textContent = stats.speed_down == null ? "—" : `${stats.speed_down} KiB/s`;
      if (stats.speed_up != null) speed.appendChild(el("span", "minor", `up ${stats.speed_up} KiB/s`));
      const type = td("Type");
      if (s.is_live === true) type.appendChild(el("span", "badge live", "live"));
      else if (s.is_live === false) type.appendChild(el("span", "badge vod", "VOD"));
      else type.textContent = "—";
      fragment.appendChild(tr);
    }
    tbody.replaceChildren(fragment);
    $("streams-empty").hidden = streams.length > 0;
  }

  function render() {
    renderQueued = false;
    renderEngines();
    renderKpis();
    renderStreams();
  }

  function schedule() {
    if (!renderQueued) {
      renderQueued = true;
      requestAnimationFrame(render);
    }
  }

  // Relative times move on without any event.
  function tick() {
    for (const node of document.querySelectorAll("[data-ts]")) {
      const iso = node.dataset.ts;
      if (node.dataset.prefix !== undefined) {
        if (iso) setText(node, `${node.dataset.prefix}${relTime(iso)}`);
      } else {
        setText(node, relTime(iso));
      }
    }
  }

  // ------------------------------------------------------------ live connection

  function setConnection(kind, text) {
    const node = $("conn");
    node.dataset.state = kind;
    setText($("conn-text"), text);
  }

  function applySnapshot(snapshot) {
    state.skewMs = snapshot.server_time ? Date.parse(snapshot.server_time) - Date.now() : 0;
    state.maxStreams = snapshot.max_streams_per_engine || null;
    state.engines = new Map(snapshot.engines.map((e) => [e.container_id, e]));
    state.streams = new Map(snapshot.streams.map((s) => [s.stream_id, s]));
    schedule();
  }

  function onEngine(change) {
    if (change.engine) state.engines.set(change.id, change.engine);
    else state.engines.delete(change.id);
    schedule();
  }

  function onStream(change) {
    if (change.stream && change.stream.status === "started") state.streams.set(change.id, change.stream);
    else state.streams.delete(change.id);
    schedule();
  }

  function listen(name, handler) {
    source.addEventListener(name, (event) => {
      try {
        handler(JSON.parse(event.data));
      } catch (err) {
        console.warn(`bad ${name} event`, err);
      }
    });
  }

  function connect() {
    // With API_KEY set, open the dashboard as /#key=<API_KEY>: a fragment never leaves the browser,
    // and EventSource cannot send an Authorization header, so the key goes in the query.
    // Remembered for reconnects: opening an engine's detail (#/engines/<id>) replaces the fragment.
    apiKey = new URLSearchParams(location.hash.slice(1)).get("key") || apiKey;
    source = new EventSource(apiKey ? `/api/live?key=${encodeURIComponent(apiKey)}` : "/api/live");
    listen("snapshot", (snapshot) => {
      applySnapshot(snapshot);
      notify("snapshot", snapshot);
      backoffMs = 1000;
      setConnection("live", "Live");
    });
    listen("engine", (change) => {
      onEngine(change);
      notify("engine", change);
    });
    listen("stream", (change) => {
      onStream(change);
      notify("stream", change);
    });
    listen("sample", (change) => notify("sample", change));
    listen("event", (change) => notify("event", change));
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (e.g. a non-200 answer): retry ourselves, with backoff.
        source.close();
        setConnection("offline", "Offline — retrying");
        setTimeout(connect, backoffMs);
        backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
      } else {
        setConnection("reconnecting", "Reconnecting…");
      }
    };
  }

  // ------------------------------------------------------------ controls

  function bindControls() {
    for (const chip of document.querySelectorAll(".chip")) {
      chip.addEventListener("click", () => {
        state.filter = chip.dataset.filter;
        for (const other of document.querySelectorAll(".chip")) {
          other.setAttribute("aria-pressed", String(other === chip));
        }
        schedule();
      });
    }
    $("search").addEventListener("input", (event) => {
      state.query = event.target.value.trim().toLowerCase();
      schedule();
    });
  }

  window.aceDashboard = { relTime, formatBytes, state, hooks, el, setText, setAgo, clock, HEALTH_LABEL };

  document.addEventListener("DOMContentLoaded", () => {
    bindControls();
    render();
    connect();
    setInterval(tick, 1000);
  });
})();
