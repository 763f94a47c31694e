// kubeml dashboard: polls the REST API (with the token kept in sessionStorage) and draws
// the chosen task's round points and epochs with uPlot. No build step, no framework.
"use strict";

const POLL_MS = 1000;
const LOG_LINES = 300;
const TOKEN_KEY = "kubeml-token";

// What the page holds; tests read window.kubemlDashboard to see the charts fill.
const state = {
  tasks: [], selected: null, rounds: [], epochs: [], roundsPerEpoch: null, task: null,
  logSince: 0, polls: 0, charts: {}, points: {},
};
window.kubemlDashboard = state;

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

async function api(method, path) {
  const headers = {};
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, { method, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    let text = body && body.error ? body.error.message : response.status + " " + response.statusText;
    if (response.status === 401) text = "This server needs its API token: enter it above. (" + text + ")";
    throw new Error(text);
  }
  return body;
}

function say(text) { $("message").textContent = text || ""; }

// -- formatting ---------------------------------------------------------------------------
const pct = (v) => (v === null || v === undefined ? "-" : v.toFixed(2) + "%");
const num = (v, d = 4) => (v === null || v === undefined ? "-" : v.toFixed(d));
function when(iso) { return iso ? new Date(iso).toLocaleString() : "-"; }
function duration(task) {
  if (!task.started_at) return "-";
  const end = task.finished_at ? new Date(task.finished_at) : new Date();
  const s = Math.max(0, (end - new Date(task.started_at)) / 1000);
  if (s < 60) return s.toFixed(1) + "s";
  const m = Math.floor(s / 60);
  return m < 60 ? m + "m" + String(Math.round(s % 60)).padStart(2, "0") + "s"
    : Math.floor(m / 60) + "h" + String(m % 60).padStart(2, "0") + "m";
}

// -- the task table -----------------------------------------------------------------------
function renderTasks() {
  const body = $("tasks").tBodies[0];
  body.replaceChildren();
  for (const t of state.tasks) {
    const row = body.insertRow();
    row.dataset.task = t.id;
    if (t.id === state.selected) row.className = "selected";
    const cells = [t.id, t.state, t.request.function, t.request.dataset,
      t.epoch + "/" + t.request.epochs, t.parallelism, t.request.k, pct(t.accuracy),
      when(t.started_at), duration(t)];
    cells.forEach((value, i) => {
      const cell = row.insertCell();
      if (i === 1) {
        const badge = document.createElement("span");
        badge.className = "state " + value;
        badge.textContent = value;
        cell.append(badge);
      } else cell.textContent = value;
    });
    row.addEventListener("click", () => select(t.id));
  }
  $("no-tasks").hidden = state.tasks.length > 0;
}

function select(id) {
  if (id === state.selected) return;
  state.selected = id;
  state.rounds = []; state.epochs = []; state.logSince = 0; state.task = null;
  $("log").textContent = "";
  history.replaceState(null, "", "#task=" + id);
  $("detail").hidden = false;
  $("detail-id").textContent = id;
  renderTasks();
  pollDetail().catch((error) => say(error.message));
}

// -- charts -------------------------------------------------------------------------------
// Rounds sit between epochs: round r of R in epoch e is at x = e - 1 + r / R; epoch e at x = e.
function roundX(p) {
  const done = state.epochs.find((e) => e.epoch === p.epoch);
  const total = done ? done.rounds : (state.roundsPerEpoch || p.round);
  return p.epoch - 1 + p.round / Math.max(total, p.round);
}

// uPlot wants one sorted x array with every series aligned to it (null where it has no point).
function aligned(series) {
  const xs = [...new Set(series.flatMap((s) => s.map((p) => p[0])))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const ys = series.map((s) => {
    const y = new Array(xs.length).fill(null);
    for (const [x, v] of s) if (v !== null && v !== undefined && isFinite(v)) y[index.get(x)] = v;
    return y;
  });
  return [xs, ...ys];
}

const CHARTS = {
  loss: {
    labels: ["train loss (round)", "train loss (epoch)", "validation loss"],
    colors: ["#9cb7e8", "#1f5fd1", "#d1501f"],
    series: () => [state.rounds.map((p) => [roundX(p), p.train_loss]),
      state.epochs.map((e) => [e.epoch, e.train_loss]),
      state.epochs.filter((e) => e.val_loss !== null).map((e) => [e.epoch, e.val_loss])],
  },
  accuracy: {
    labels: ["accuracy %"], colors: ["#1c9a4b"],
    series: () => [state.epochs.filter((e) => e.accuracy !== null).map((e) => [e.epoch, e.accuracy])],
  },
  parallelism: {
    labels: ["N (round)", "N (epoch)"], colors: ["#b98ad6", "#7b2fa8"],
    series: () => [state.rounds.map((p) => [roundX(p), p.parallelism]),
      state.epochs.map((e) => [e.epoch, e.parallelism])],
  },
  throughput: {
    labels: ["samples/s (round)", "samples/s (epoch)"], colors: ["#f0b27a", "#c0620e"],
    series: () => [state.rounds.filter((p) => p.samples_per_s !== null).map((p) => [roundX(p), p.samples_per_s]),
      state.epochs.map((e) => [e.epoch, e.samples_per_s])],
  },
};

// y axes: tick labels with the decimals their step needs (uPlot's default keeps three, so
// ticks 0.00025 apart all read "0.001"), on an axis as wide as its widest label (uPlot's
// default of 50 px cut "10,000" to "0,000"). uPlot measures its font in device pixels.
const AXIS_MARGIN = 4;
function stepDecimals(step) {
  for (let d = 0; d < 12; d++) {
    const scaled = step * 10 ** d;
    if (Math.abs(scaled - Math.round(scaled)) <= 1e-6 * scaled) return d;
  }
  return 12;
}
function tickLabels(u, splits, axisIndex, space, step) {
  const digits = stepDecimals(step);
  const format = { minimumFractionDigits: digits, maximumFractionDigits: digits };
  return splits.map((v) => (v === null ? null : v.toLocaleString(undefined, format)));
}
function axisWidth(u, values, axisIndex) {
  const axis = u.axes[axisIndex];
  u.ctx.font = axis.font[0];
  const widths = (values || []).map((v) => (v === null ? 0 : u.ctx.measureText(String(v)).width));
  const ticks = axis.ticks && axis.ticks.show ? axis.ticks.size : 0;
  return Math.ceil(Math.max(0, ...widths) / uPlot.pxRatio + ticks + axis.gap + AXIS_MARGIN);
}

function drawCharts() {
  for (const [name, spec] of Object.entries(CHARTS)) {
    const element = $("chart-" + name);
    const series = spec.series();
    const data = aligned(series);
    const count = series.reduce((n, s) => n + s.length, 0);
    state.points[name] = count;
    element.dataset.points = String(count);
    let chart = state.charts[name];
    if (!chart) {
      const width = Math.max(320, element.clientWidth || 440);
      chart = new uPlot({
        width, height: 220,
        // The x axis spans the whole run (0 to the task's epochs), ticks on whole epochs.
        scales: { x: { time: false, range: (u, lo, hi) => [0, Math.max(hi || 1, state.task ? state.task.request.epochs : 1)] } },
        axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500] }, { values: tickLabels, size: axisWidth }],
        series: [{ label: "epoch", value: (u, v) => (v === null ? "-" : v.toFixed(2)) },
          ...spec.labels.map((label, i) => ({
            label, stroke: spec.colors[i], width: i === 0 && spec.labels.length > 1 ? 1 : 2,
            spanGaps: true, points: { show: true, size: i === 0 && spec.labels.length > 1 ? 3 : 6 },
          }))],
      }, data, element);
      state.charts[name] = chart;
    } else chart.setData(data);
  }
}

// -- polling ------------------------------------------------------------------------------
function summary(p) {
  const t = p.task;
  const parts = [t.state, "epoch " + t.epoch + "/" + t.request.epochs];
  if (t.state === "running") parts.push("round " + t.round + "/" + (p.rounds_per_epoch ?? "?"));
  parts.push("N=" + t.parallelism, "K=" + t.request.k, "batch " + t.request.batch_size,
    "lr " + t.request.lr, "train loss " + num(t.train_loss), "accuracy " + pct(t.accuracy));
  if (t.error) parts.push("error: " + t.error);
  return parts.join(" · ");
}

async function pollDetail() {
  const id = state.selected;
  if (!id) return;
  const since = state.rounds.length ? state.rounds[state.rounds.length - 1].index + 1 : 0;
  const progress = await api("GET", "tasks/" + encodeURIComponent(id) + "/progress?since=" + since);
  const lines = await api("GET", "tasks/" + encodeURIComponent(id) + "/logs?since=" + state.logSince);
  if (id !== state.selected) return; // the user chose another task meanwhile
  state.task = progress.task;
  state.rounds.push(...progress.rounds);
  state.epochs = progress.epochs;
  state.roundsPerEpoch = progress.rounds_per_epoch;
  $("detail-state").textContent = progress.task.state;
  $("detail-state").className = "state " + progress.task.state;
  $("detail-summary").textContent = summary(progress);
  $("stop").disabled = ["succeeded", "failed", "stopped"].includes(progress.task.state);
  $("resume").disabled = !["failed", "stopped"].includes(progress.task.state);
  drawCharts();
  if (lines.length) {
    state.logSince = lines[lines.length - 1].index + 1;
    const log = $("log");
    const text = lines.map((l) => new Date(l.time).toLocaleTimeString() + " [" + l.source + "] " + l.message);
    const all = (log.textContent ? log.textContent.split("\n") : []).concat(text);
    log.textContent = all.slice(-LOG_LINES).join("\n");
    log.scrollTop = log.scrollHeight;
  }
}

async function poll() {
  try {
    state.tasks = await api("GET", "tasks");
    state.tasks.sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    renderTasks();
    if (!state.selected) {
      const wanted = new URLSearchParams(location.hash.slice(1)).get("task");
      const first = state.tasks.find((t) => t.id === wanted) || state.tasks[0];
      if (first) select(first.id);
    } else await pollDetail();
    state.polls += 1;
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    say("");
  } catch (error) {
    say(error.message);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function act(verb) {
  try {
    const task = await api("POST", "tasks/" + encodeURIComponent(state.selected) + "/" + verb);
    say("");
    $("detail-summary").textContent = "task " + task.id + ": " + task.state +
      (verb === "stop" && task.state === "running" ? " (stops at its next round boundary)" : "");
  } catch (error) {
    say(verb + " failed: " + error.message);
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  $("token").placeholder = token() ? "token set for this tab" : "only if the server has one";
  say("");
});
$("token").placeholder = token() ? "token set for this tab" : "only if the server has one";
window.addEventListener("hashchange", () => {  // a link or the address bar names a task
  const wanted = new URLSearchParams(location.hash.slice(1)).get("task");
  if (wanted) select(wanted);
});
$("stop").addEventListener("click", () => act("stop"));
$("resume").addEventListener("click", () => act("resume"));
$("server").textContent = location.host;
poll();
