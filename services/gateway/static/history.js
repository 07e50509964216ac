// aceorch dashboard, part two: history charts (uPlot, served by the gateway), the events list and
// an engine's detail at #/engines/<id>. Data from /api/history, /api/events, /engines, /streams and
// /api/engines/<id>/probes; kept live by the SSE feed dashboard.js holds (its `hooks`).
// Text is always set with textContent: event texts carry engine names, which anyone may choose.
"use strict";

(() => {
  const ace = window.aceDashboard;
  const { el, setText, setAgo, relTime, formatBytes, HEALTH_LABEL } = ace;
  const $ = (id) => document.getElementById(id);
  const EVENTS_SHOWN = 50;
  const REFETCH_MS = 2000; // samples arrive every HISTORY_INTERVAL_S; refetch at most this often
  const COLORS = {
    healthy: "#16a34a",
    unhealthy: "#dc2626",
    unknown: "#9ca3af",
    streams: "#1d4ed8",
    channels: "#0f766e",
    peers: "#b45309",
    viewers: "#7c3aed",
    p50: "#0f766e",
    p99: "#dc2626",
    selections: "#1d4ed8",
    refused: "#dc2626",
  };

  const charts = {}; // name -> {plot, points}
  let range = "1h";
  let refetchTimer = null;
  let lastFetch = 0;
  const events = [];
  const eventIds = new Set();
  let detailId = null;

  async function getJson(url) {
    const reply = await fetch(url, { headers: { Accept: "application/json" } });
    if (!reply.ok) throw new Error(`${url}: ${reply.status}`);
    return reply.json();
  }

  // ------------------------------------------------------------ charts

  const secondsOf = (iso) => Date.parse(iso) / 1000;

  function series(label, color, extra = {}) {
    return { label, stroke: color, width: 1.5, points: { show: false }, ...extra };
  }

  // Stacked areas: lines at the cumulative totals, each band filled down to the line below it (uPlot
  // bands), the lowest down to zero; the legend shows each band's own value, not the cumulative one.
  function stacked(points) {
    const h = points.map((p) => p.healthy);
    const hu = points.map((p) => p.healthy + p.unhealthy);
    const all = points.map((p) => p.healthy + p.unhealthy + p.unknown);
    return [all, hu, h];
  }

  const SPECS = {
    health: {
      series: [
        series("Unknown", COLORS.unknown, { value: (u, v, s, i) => own(i, "unknown") }),
        series("Unhealthy", COLORS.unhealthy, { value: (u, v, s, i) => own(i, "unhealthy") }),
        series("Healthy", COLORS.healthy, { fill: "rgba(22,163,74,.35)", value: (u, v, s, i) => own(i, "healthy") }),
      ],
      bands: [
        { series: [1, 2], fill: "rgba(156,163,175,.45)" },
        { series: [2, 3], fill: "rgba(220,38,38,.45)" },
      ],
      data: stacked,
    },
    streams: {
      series: [
        series("Streams", COLORS.streams),
        series("Viewers", COLORS.viewers),
        series("Channels", COLORS.channels),
        series("Peers", COLORS.peers),
      ],
      data: (points) => [
        points.map((p) => p.streams),
        points.map((p) => p.viewers),
        points.map((p) => p.channels),
        points.map((p) => p.peers),
      ],
    },
    latency: {
      series: [series("p50", COLORS.p50), series("p99", COLORS.p99)],
      data: (points) => [points.map((p) => p.probe_p50_ms), points.map((p) => p.probe_p99_ms)],
    },
    selections: {
      series: [series("Selected", COLORS.selections), series("No capacity (503)", COLORS.refused)],
      data: (points) => [points.map((p) => p.selections_per_s), points.map((p) => p.no_capacity_per_s)],
    },
  };
  let lastPoints = [];

  function own(index, key) {
    const point = lastPoints[index];
    if (!point || index == null) return "—";
    return point[key].toFixed(point[key] % 1 ? 1 : 0);
  }

  function chartWidth(node) {
    return Math.max(240, node.clientWidth || node.parentNode.clientWidth || 480);
  }

  function drawChart(name, points) {
    const node = $(`chart-${name}`);
    const spec = SPECS[name];
    const data = [points.map((p) => secondsOf(p.at)), ...spec.data(points)];
    const entry = charts[name];
    if (entry) {
      entry.plot.setData(data);
    } else {
      const plot = new uPlot(
        {
          width: chartWidth(node),
          height: 180,
          series: [{}, ...spec.series],
          bands: spec.bands || [],
          axes: [{ stroke: "#6b7280" }, { stroke: "#6b7280", size: 48 }],
          scales: { x: { time: true } },
          cursor: { drag: { x: false, y: false } },
        },
        data,
        node,
      );
      charts[name] = { plot };
    }
    node.dataset.points = String(points.length);
  }

  function drawCharts(points) {
    lastPoints = points;
    for (const name of Object.keys(SPECS)) drawChart(name, points);
    $("history-empty").hidden = points.length > 0;
  }

  async function loadHistory() {
    lastFetch = Date.now();
    try {
      const reply = await getJson(`/api/history?range=${range}`);
      drawCharts(reply.points);
    } catch (err) {
      console.warn("history", err);
    }
  }

  // A new sample (written by whichever gateway won its interval): refetch, at most every REFETCH_MS.
  function onSample() {
    if (refetchTimer) return;
    const wait = Math.max(0, REFETCH_MS - (Date.now() - lastFetch));
    refetchTimer = setTimeout(() => {
      refetchTimer = null;
      loadHistory();
    }, wait);
  }

  function resizeCharts() {
    for (const [name, entry] of Object.entries(charts)) {
      const node = $(`chart-${name}`);
      entry.plot.setSize({ width: chartWidth(node), height: 180 });
    }
    if (sparkline) sparkline.setSize({ width: chartWidth($("engine-sparkline")), height: 140 });
  }

  // ------------------------------------------------------------ events

  function eventItem(event) {
    const li = el("li", "event");
    li.dataset.id = event.id;
    li.dataset.kind = event.kind;
    li.dataset.level = event.level;
    const when = li.appendChild(el("span", "when ago"));
    setAgo(when, event.at);
    li.appendChild(el("span", "text", event.text));
    return li;
  }

  function renderEvents() {
    const list = $("event-list");
    list.replaceChildren(...events.slice(0, EVENTS_SHOWN).map(eventItem));
    $("events-empty").hidden = events.length > 0;
  }

  function addEvents(incoming) {
    for (const event of incoming) {
      if (eventIds.has(event.id)) continue;
      eventIds.add(event.id);
      events.push(event);
    }
    events.sort((a, b) => (a.at < b.at ? 1 : a.at > b.at ? -1 : 0));
    for (const gone of events.splice(EVENTS_SHOWN * 4)) eventIds.delete(gone.id);
    renderEvents();
  }

  async function loadEvents() {
    try {
      addEvents(await getJson(`/api/events?limit=${EVENTS_SHOWN}`));
    } catch (err) {
      console.warn("events", err);
    }
  }

  function onEvent(change) {
    addEvents([change.event]);
    if (detailId && change.event.container_id === detailId) loadDetail();
  }

  // ------------------------------------------------------------ engine detail

  let sparkline = null;

  function route() {
    const match = location.hash.match(/^#\/engines\/(.+)$/);
    detailId = match ? decodeURIComponent(match[1]) : null;
    $("overview").hidden = detailId !== null;
    $("engine-detail").hidden = detailId === null;
    if (detailId) {
      loadDetail();
    } else {
      resizeCharts();
    }
  }

  function idleText(engine) {
    if ((engine.streams || []).length) return `busy: ${engine.streams.length} stream(s)`;
    if (!engine.idle_since) return "Never used";
    return `idle since ${relTime(engine.idle_since)}`;
  }

  function renderRecord(engine) {
    const health = engine.health_status || "unknown";
    $("detail-dot").className = `dot dot-${health}`;
    setText($("detail-name"), engine.container_name || engine.container_id);
    setText($("detail-id"), engine.container_name !== engine.container_id ? engine.container_id : "");
    setText($("detail-error"), health === "unhealthy" && engine.last_error ? engine.last_error : "");
    const rows = [
      ["Health", HEALTH_LABEL[health] || health],
      ["State", engine.state || "active"],
      ["Address", `${engine.host}:${engine.port}`],
      ["Runtime", engine.runtime || "—"],
      ["Streams", String((engine.streams || []).length)],
      ["Idle", idleText(engine)],
      ["Last check", engine.last_health_check, true],
      ["Health since", engine.health_since, true],
      ["Last used", engine.last_stream_usage, true],
      ["Last clean", engine.last_cache_cleanup, true],
      ["Cache cleaned", formatBytes(engine.cache_size_bytes)],
      ["Failures in a row", String(engine.consecutive_failures || 0)],
      ["Version", engine.version || "—"],
      ["Created", engine.created_at, true],
    ];
    const fragment = document.createDocumentFragment();
    for (const [label, value, isTime] of rows) {
      fragment.appendChild(el("dt", "", label));
      const dd = fragment.appendChild(el("dd"));
      dd.dataset.label = label;
      if (isTime) setAgo(dd.appendChild(el("span", "ago")), value);
      else dd.textContent = value;
    }
    $("detail-record").replaceChildren(fragment);
  }

  function renderSparkline(probes) {
    const node = $("engine-sparkline");
    const xs = probes.map((p) => secondsOf(p.at));
    const ok = probes.map((p) => (p.ok ? p.latency_ms : null));
    const failed = probes.map((p) => (p.ok ? null : p.latency_ms));
    const data = [xs, ok, failed];
    if (sparkline && sparkline.root.parentNode !== node) sparkline = null;
    if (sparkline) {
      sparkline.setData(data);
    } else {
      sparkline = new uPlot(
        {
          width: chartWidth(node),
          height: 140,
          series: [
            {},
            series("Latency (ms)", COLORS.streams, { points: { show: true, size: 4 } }),
            series("Failed (ms)", COLORS.unhealthy, { width: 0, points: { show: true, size: 6 } }),
          ],
          axes: [{ stroke: "#6b7280" }, { stroke: "#6b7280", size: 48 }],
          scales: { x: { time: true } },
          cursor: { drag: { x: false, y: false } },
        },
        data,
        node,
      );
    }
    node.dataset.points = String(probes.length);
    const latencies = probes.filter((p) => p.latency_ms != null).map((p) => p.latency_ms);
    const worst = latencies.length ? Math.max(...latencies) : null;
    setText(
      $("spark-summary"),
      probes.length ? `last ${probes.length} probes · worst ${worst == null ? "—" : `${worst} ms`}` : "No probe seen yet",
    );
  }

  function renderList(node, items, empty) {
    node.replaceChildren(...(items.length ? items.map(eventItem) : [el("li", "none", empty)]));
  }

  function renderStreams(streams) {
    const rows = streams
      .sort((a, b) => (b.started_at || "").localeCompare(a.started_at || ""))
      .map((s) => {
        const tr = el("tr", "stream");
        tr.dataset.id = s.stream_id;
        const stats = s.stats || {};
        const cells = [
          ["Stream", s.stream_id],
          ["Content", s.content_key || "—"],
          ["Status", s.status === "ended" ? `ended${s.reason ? ` (${s.reason})` : ""}` : "playing"],
          ["Started", null],
          ["Peers", stats.peers == null ? "—" : String(stats.peers)],
          ["Speed", stats.speed_down == null ? "—" : `${stats.speed_down} KiB/s`],
        ];
        for (const [label, text] of cells) {
          const td = tr.appendChild(el("td", label === "Peers" || label === "Speed" ? "num" : ""));
          td.dataset.label = label;
          if (label === "Started") setAgo(td.appendChild(el("span", "ago")), s.started_at);
          else td.textContent = text;
        }
        return tr;
      });
    const none = el("tr");
    none.appendChild(el("td", "none", "No streams on this engine.")).colSpan = 6;
    $("detail-streams").replaceChildren(...(rows.length ? rows : [none]));
  }

  async function loadDetail() {
    const id = detailId;
    if (!id) return;
    const path = encodeURIComponent(id);
    try {
      const [engine, probes, history, streams] = await Promise.all([
        getJson(`/engines/${path}`),
        getJson(`/api/engines/${path}/probes`),
        getJson(`/api/events?limit=200&container_id=${path}`),
        getJson(`/streams?container_id=${path}`),
      ]);
      if (id !== detailId) return;
      renderRecord(engine);
      renderSparkline(probes);
      renderList(
        $("detail-transitions"),
        history.filter((e) => e.kind.startsWith("health.")),
        "No health change seen.",
      );
      renderList(
        $("detail-cleans"),
        history.filter((e) => e.kind.startsWith("engine.clean")),
        "No clean in the event log.",
      );
      renderStreams(streams);
    } catch (err) {
      setText($("detail-name"), id);
      setText($("detail-error"), `engine ${id} not found (${err.message})`);
    }
  }

  function onEngine(change) {
    if (detailId && change.id === detailId) loadDetail();
  }

  // ------------------------------------------------------------ start

  function bindRange() {
    for (const chip of document.querySelectorAll(".chip.range")) {
      chip.addEventListener("click", () => {
        range = chip.dataset.range;
        for (const other of document.querySelectorAll(".chip.range")) {
          other.setAttribute("aria-pressed", String(other === chip));
        }
        loadHistory();
      });
    }
  }

  window.aceCharts = {
    points: (name) => Number(($(name === "sparkline" ? "engine-sparkline" : `chart-${name}`) || {}).dataset?.points || 0),
  };

  document.addEventListener("DOMContentLoaded", () => {
    bindRange();
    ace.hooks.snapshot.push(() => {
      loadHistory();
      loadEvents();
      if (detailId) loadDetail();
    });
    ace.hooks.sample.push(onSample);
    ace.hooks.event.push(onEvent);
    ace.hooks.engine.push(onEngine);
    window.addEventListener("hashchange", route);
    window.addEventListener("resize", resizeCharts);
    setInterval(() => detailId && loadDetail(), 5000);
    route();
  });
})();
