// The operator console: polls /ui/api/state and draws it. Read-only; no build step.
//
// The admin token (when the gateway asks for one) lives in this tab's sessionStorage and goes
// out only as an Authorization header to this gateway: never in a URL, never in localStorage.
// Every value from the gateway is written with textContent, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "slm-console-token";
  const STATE_URL = "api/state"; // relative to /ui/
  const NO_DOMAIN = "none"; // the metrics' label for requests outside every domain
  const COLORS = {
    open: "#1f8a4c", closed: "#c0392b", none: "#7d8596", p50: "#4a7fd6", p95: "#1d3f8a",
    traffic: "#4a7fd6", mean: "#1d2330",
  };

  const $ = (id) => document.getElementById(id);
  let refreshMs = 5000;
  let timer = null;
  const charts = {};
  const cards = new Map();

  // ------------------------------------------------------------------ formatting
  const num = (x, digits = 3) => (x === null || x === undefined ? "–" : x.toFixed(digits));
  const signed = (x, digits = 3) =>
    x === null || x === undefined ? "–" : (x > 0 ? "+" : x < 0 ? "−" : "") + Math.abs(x).toFixed(digits);
  const ms = (s) => (s === null || s === undefined ? "–" : `${Math.round(s * 1000)} ms`);
  const minutes = (s) => (s >= 90 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`);
  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

  function el(tag, attrs = {}, text = null) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== null) node.textContent = text;
    return node;
  }

  function gateLabel(gate) {
    return gate === null ? "no adapter" : gate;
  }

  // ------------------------------------------------------------------ fetching and auth
  function setStatus(text, stale = false) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("stale", stale);
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(poll, refreshMs);
  }

  function showLogin(error) {
    $("console").hidden = true;
    $("login").hidden = false;
    $("login-error").hidden = !error;
    $("login-error").textContent = error || "";
    setStatus("admin token required");
    $("token").focus();
  }

  async function poll() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = { accept: "application/json" };
    if (token) headers.authorization = `Bearer ${token}`;
    let response;
    let body = null;
    try {
      response = await fetch(STATE_URL, { headers, cache: "no-store", credentials: "omit" });
      body = await response.json().catch(() => null);
    } catch (err) {
      setStatus(`gateway unreachable (${err.message}); retrying`, true);
      schedule();
      return;
    }
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(token ? "That token was not accepted." : null);
      return; // polling resumes once a token is entered
    }
    if (!response.ok) {
      const message = (body && body.error && body.error.message) || `HTTP ${response.status}`;
      if (response.status === 403) {
        $("fatal").textContent = message;
        $("fatal").hidden = false;
        $("console").hidden = true;
        setStatus("console disabled", true);
        return;
      }
      setStatus(`${message}; retrying`, true);
      schedule();
      return;
    }
    $("login").hidden = true;
    $("fatal").hidden = true;
    $("console").hidden = false;
    try {
      render(body);
    } catch (err) {
      setStatus(`could not draw the state: ${err.message}`, true);
      throw err;
    } finally {
      refreshMs = Math.max(250, (body.refresh_s || 5) * 1000);
      schedule();
    }
    setStatus(`updated ${clock(body.generated_at)} · every ${body.refresh_s} s · ` +
      `traffic over the last ${minutes(body.traffic.window_s)}`);
  }

  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    setStatus("checking token…");
    poll();
  });

  // ------------------------------------------------------------------ charts
  Chart.defaults.animation = false; // a dashboard that redraws every few seconds: no motion
  Chart.defaults.font.family = getComputedStyle(document.documentElement).fontFamily;
  Chart.defaults.maintainAspectRatio = false;

  function chart(id, config) {
    if (!charts[id]) charts[id] = new Chart($(id), config);
    return charts[id];
  }

  function drawDelta(domains, shadow) {
    const rows = domains.filter((d) => d.evidence && d.evidence.samples > 0);
    const conf = shadow ? `${Math.round(shadow.confidence * 100)}% interval` : "";
    $("ci-caption").textContent = shadow
      ? `(bar: ${conf}, green above 0, red below, grey undecided; dot: mean; the gate acts from ${shadow.min_samples} samples)`
      : "(shadow evaluator off)";
    const c = chart("chart-delta", {
      type: "bar",
      data: { labels: [], datasets: [
        { label: "interval", data: [], backgroundColor: [], barPercentage: 0.55, order: 2 },
        { type: "line", label: "mean", data: [], showLine: false, pointRadius: 4,
          pointBackgroundColor: COLORS.mean, borderColor: COLORS.mean, order: 1 },
      ] },
      options: {
        indexAxis: "y",
        plugins: { legend: { display: false }, tooltip: { callbacks: {
          label: (ctx) => (ctx.datasetIndex === 0
            ? `interval ${signed(ctx.raw[0])} … ${signed(ctx.raw[1])}`
            : `mean ${signed(ctx.raw)}`),
        } } },
        scales: { x: { title: { display: true, text: "score delta (adapter − general)" } },
          y: { ticks: { autoSkip: false } } },
      },
    });
    c.data.labels = rows.map((d) =>
      `${d.id} (n=${d.evidence.samples})${d.gate === "closed" ? " · GATE CLOSED" : ""}`);
    c.data.datasets[0].data = rows.map((d) => {
      const { low, high, mean } = d.evidence.delta;
      return low === null || high === null ? [mean, mean] : [low, high];
    });
    // Green: the adapter is better (whole interval above 0); red: worse; grey: undecided.
    c.data.datasets[0].backgroundColor = rows.map((d) => {
      const { low, high } = d.evidence.delta;
      const verdict = low !== null && low > 0 ? "open" : high !== null && high < 0 ? "closed" : "none";
      return COLORS[verdict] + "aa";
    });
    c.data.datasets[1].data = rows.map((d) => d.evidence.delta.mean);
    c.update();
  }

  function drawLatency(traffic) {
    const names = Object.keys(traffic.domains).filter((d) => traffic.domains[d].requests > 0);
    const c = chart("chart-latency", {
      type: "bar",
      data: { labels: [], datasets: [
        { label: "p50", data: [], backgroundColor: COLORS.p50 },
        { label: "p95", data: [], backgroundColor: COLORS.p95 },
      ] },
      options: {
        indexAxis: "y",
        plugins: { legend: { position: "bottom" } },
        scales: { x: { title: { display: true, text: "seconds (end to end)" }, beginAtZero: true },
          y: { ticks: { autoSkip: false } } },
      },
    });
    c.data.labels = names.map((d) => (d === NO_DOMAIN ? "general (no domain)" : d));
    c.data.datasets[0].data = names.map((d) => traffic.domains[d].latency_s.p50);
    c.data.datasets[1].data = names.map((d) => traffic.domains[d].latency_s.p95);
    c.update();
  }

  function drawFallbacks(traffic) {
    const reasons = Object.keys(traffic.fallbacks);
    const c = chart("chart-fallbacks", {
      type: "bar",
      data: { labels: [], datasets: [{ label: "requests", data: [], backgroundColor: COLORS.none }] },
      options: { plugins: { legend: { display: false } },
        scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } },
    });
    c.data.labels = reasons;
    c.data.datasets[0].data = reasons.map((r) => traffic.fallbacks[r]);
    c.options.plugins.title = { display: reasons.length === 0, text: "none in the window" };
    c.update();
  }

  // ------------------------------------------------------------------ the page
  function summaryCard(label, value) {
    const card = el("div", { class: "card" });
    card.append(el("div", { class: "label" }, label), el("div", { class: "value" }, value));
    return card;
  }

  function drawSummary(state) {
    const t = state.traffic;
    const total = Object.values(t.domains).reduce((a, d) => a + d.requests, 0);
    const fallbacks = Object.values(t.fallbacks).reduce((a, n) => a + n, 0);
    const gated = state.domains.filter((d) => d.gate !== null);
    const up = state.replicas.filter((r) => r.healthy).length;
    $("summary").replaceChildren(
      summaryCard(`requests, last ${minutes(t.window_s)}`, String(total)),
      summaryCard("requests / s", t.window_s > 0 ? (total / t.window_s).toFixed(2) : "–"),
      summaryCard("fallbacks", String(fallbacks)),
      summaryCard("quality gates closed", `${state.gated.length} / ${gated.length}`),
      summaryCard("replicas up", `${up} / ${state.replicas.length}`),
      summaryCard("suite items scored", state.shadow ? String(state.shadow.items_scored) : "off"),
    );
    for (const span of document.querySelectorAll(".window")) {
      span.textContent = `(last ${minutes(t.window_s)})`;
    }
  }

  function domainCard(id) {
    const card = el("article", { class: "domain", "data-domain": id });
    const title = el("h3");
    title.append(el("span", { class: "name" }, id), el("span", { class: "gate" }));
    const chartBox = el("div", { class: "chart" });
    const canvas = el("canvas", { "data-chart": "traffic", "aria-label": `${id} requests per second` });
    chartBox.append(canvas);
    card.append(title, el("div", { class: "versions" }), el("dl", { class: "facts" }), chartBox);
    $("domains").append(card);
    const traffic = new Chart(canvas, {
      type: "line",
      data: { labels: [], datasets: [{ label: "requests/s", data: [], borderColor: COLORS.traffic,
        backgroundColor: COLORS.traffic + "33", fill: true, pointRadius: 0, borderWidth: 1.5 }] },
      options: {
        plugins: { legend: { display: false }, title: { display: true, text: "requests / s",
          align: "start", font: { size: 11, weight: "normal" } } },
        scales: { x: { ticks: { maxTicksLimit: 4, font: { size: 10 } } },
          y: { beginAtZero: true, ticks: { maxTicksLimit: 3, font: { size: 10 } } } },
      },
    });
    const entry = { card, traffic };
    cards.set(id, entry);
    return entry;
  }

  function fact(dl, name, value, cls = null) {
    dl.append(el("dt", {}, name));
    const dd = el("dd", {}, value);
    if (cls) dd.className = cls;
    dl.append(dd);
  }

  function drawDomain(d, state) {
    const { card, traffic } = cards.get(d.id) || domainCard(d.id);
    const gate = d.gate === null ? "none" : d.gate;
    card.dataset.gate = gate;
    const badge = card.querySelector(".gate");
    badge.dataset.gate = gate;
    badge.textContent = gateLabel(d.gate);

    const versions = card.querySelector(".versions");
    versions.replaceChildren(...(d.versions.length ? d.versions.map((v) => el("span",
      { class: "version", "data-status": v.status },
      `${v.status} · ${v.name} v${v.version}${v.loaded_on.length ? ` @ ${v.loaded_on.join(",")}` : ""}`))
      : [el("span", { class: "muted" }, "no adapter: the general model serves it")]));

    const dl = card.querySelector(".facts");
    dl.replaceChildren();
    const e = d.evidence;
    if (e && e.samples > 0) {
      fact(dl, "score", `adapter ${num(e.score_adapter)} · general ${num(e.score_general)}`);
      const delta = e.delta;
      const interval = delta.low === null ? "" : ` [${signed(delta.low)}, ${signed(delta.high)}]`;
      fact(dl, "delta", `${signed(delta.mean)}${interval}`,
        delta.mean === null ? null : delta.mean >= 0 ? "pos" : "neg");
      fact(dl, "samples", state.shadow ? `${e.samples} (gate acts from ${state.shadow.min_samples})` : String(e.samples));
      for (const [name, s] of Object.entries(e.shadow || {})) {
        const vs = s.vs_active;
        fact(dl, `shadow v${s.version}`, `vs active ${signed(vs.mean)}` +
          (vs.low === null ? "" : ` [${signed(vs.low)}, ${signed(vs.high)}]`) + ` n=${vs.n}`);
      }
    } else if (d.gate !== null) {
      fact(dl, "evidence", state.shadow ? "none yet" : "shadow evaluator off");
    }
    const c = d.canary;
    if (c) {
      const vs = c.delta;
      fact(dl, `canary v${c.version}`, `${c.adapter} · ${c.state.replace("_", " ")} · share ` +
        `${Math.round(c.share * 100)}% · vs ${c.baseline ? "active" : "general"} ` +
        `${signed(vs.mean)}` + (vs.low === null ? "" : ` [${signed(vs.low)}, ${signed(vs.high)}]`) +
        ` n=${vs.n}`, c.state === "rolled_back" ? "neg" : c.state === "promoted" ? "pos" : null);
    }
    const t = state.traffic.domains[d.id];
    if (t && t.requests > 0) {
      fact(dl, "traffic", `${t.requests} requests · ${num(t.rate_per_s, 2)}/s`);
      fact(dl, "latency", `p50 ${ms(t.latency_s.p50)} · p95 ${ms(t.latency_s.p95)}`);
      const fb = Object.entries(t.fallbacks).map(([r, n]) => `${r} ${n}`).join(", ");
      if (fb) fact(dl, "fallbacks", fb);
      if (t.errors_5xx) fact(dl, "5xx", String(t.errors_5xx), "neg");
    } else {
      fact(dl, "traffic", "none in the window");
    }

    const series = state.traffic.series;
    traffic.data.labels = series.t.map(clock);
    traffic.data.datasets[0].data = series.requests_per_s[d.id] || series.t.map(() => 0);
    traffic.update();
  }

  function drawReplicas(replicas) {
    const body = $("replicas").querySelector("tbody");
    body.replaceChildren(...replicas.map((r) => {
      const row = el("tr", { "data-replica": r.name });
      const resident = Object.entries(r.resident).map(([n, v]) => `${n} v${v}`).join(", ") || "none";
      row.append(el("td", {}, r.name), el("td", {}, r.url),
        el("td", { class: r.healthy ? "up" : "down" }, r.healthy ? "up" : "down"),
        el("td", {}, r.breaker), el("td", {}, String(r.in_flight)), el("td", {}, resident));
      return row;
    }));
  }

  // Any object the gateway sends as `engine`: nested keys flattened to dotted names.
  function flatten(obj, prefix = "", out = []) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v !== null && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
      else out.push([key, Array.isArray(v) ? v.join(", ") : String(v)]);
    }
    return out;
  }

  function drawEngine(engine) {
    const body = $("engine").querySelector("tbody");
    body.replaceChildren(...flatten(engine).map(([k, v]) => {
      const row = el("tr");
      row.append(el("th", {}, k), el("td", {}, v));
      return row;
    }));
  }

  function render(state) {
    drawSummary(state);
    drawDelta(state.domains, state.shadow);
    drawLatency(state.traffic);
    drawFallbacks(state.traffic);
    for (const d of state.domains) drawDomain(d, state);
    drawReplicas(state.replicas);
    drawEngine(state.engine);
    document.body.dataset.updated = String(state.generated_at); // tests wait on this
  }

  poll();
})();
