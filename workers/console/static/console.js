// kvlog console: live line charts on <canvas>, fed by polling the console's JSON feeds.
// Each .chart element names its feed (data-feed) and what it plots (data-kind):
//   rate: records/s per topic, from two successive samples of summed log end offsets;
//   lag:  a group's lag per partition, as the feed reports it;
//   latency: the round trips (ms) of the console's own requests for those samples.
"use strict";

const POINTS = 120;
const PERIOD_MS = 1000;
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

function seriesFromSample(kind, sample, previous) {
  const out = {};
  if (kind === "rate") {
    if (!previous) return null;
    const dt = (sample.t - previous.t) / 1000;
    if (dt <= 0) return null;
    for (const [topic, end] of Object.entries(sample.topics)) {
      const before = previous.topics[topic];
      if (before !== undefined) out[topic] = Math.max(0, (end - before) / dt);
    }
  } else if (kind === "latency") {
    Object.assign(out, sample.latency_ms);
  } else {
    for (const row of sample.partitions) {
      if (row.lag !== null) out[row.topic + "-" + row.partition] = row.lag;
    }
  }
  return out;
}

function draw(canvas, history, unit) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 60, bottom = 20;
  ctx.clearRect(0, 0, w, h);
  const names = [...new Set(history.flatMap((p) => Object.keys(p.values)))].sort();
  let max = 1;
  for (const p of history) for (const v of Object.values(p.values)) max = Math.max(max, v);
  ctx.strokeStyle = "#d1d5db";
  ctx.fillStyle = "#6b7280";
  ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = (h - bottom) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(Math.round((max * i) / 4).toString(), 4, Math.max(10, y - 2));
  }
  ctx.fillText(unit + ", one point a second", left + 4, h - 6);
  names.forEach((name, i) => {
    ctx.strokeStyle = COLORS[i % COLORS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    history.forEach((p, j) => {
      const v = p.values[name];
      if (v === undefined) return;
      const span = Math.min(POINTS, Math.max(history.length, 30)); // short runs fill a part
      const x = left + ((w - left) * (j + span - history.length)) / (span - 1);
      const y = (h - bottom) * (1 - v / max);
      if (started) ctx.lineTo(x, y); else { ctx.moveTo(x, y); started = true; }
    });
    ctx.stroke();
  });
  return names;
}

// The group page's tables follow the feed too, so they never contradict the chart.
function showGroup(sample) {
  const dash = (v) => (v === null || v === undefined ? "-" : String(v));
  const state = document.getElementById("group-state");
  if (state) state.textContent = sample.state;
  for (const row of sample.partitions) {
    const tr = document.querySelector(`tr[data-tp="${CSS.escape(row.topic + "-" + row.partition)}"]`);
    if (!tr) continue;
    tr.querySelector(".committed").textContent = dash(row.committed_offset);
    tr.querySelector(".end").textContent = dash(row.log_end_offset);
    const lag = tr.querySelector(".lag");
    // A committed offset outside the log has no lag (ipc/cluster_reports.py).
    lag.textContent = row.problem ? "out of range" : dash(row.lag);
    lag.title = row.problem || "";
    tr.querySelector(".client").textContent = row.client_id || "";
  }
  const problems = document.getElementById("problems");
  if (problems) {
    problems.replaceChildren(...sample.partitions.filter((row) => row.problem).map((row) => {
      const p = document.createElement("p");
      p.className = "problem";
      p.textContent = row.topic + "-" + row.partition + ": " + row.problem;
      return p;
    }));
  }
  const body = document.querySelector("#members tbody");
  if (!body) return;
  const rows = sample.members.map((m) => {
    const tr = document.createElement("tr");
    for (const text of [m.member_id, m.client_id, m.assignment.join(", ")]) {
      const td = document.createElement("td");
      td.textContent = text || "";
      tr.appendChild(td);
    }
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = 3;
    td.textContent = "No members: the group is empty.";
    tr.appendChild(td);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function startChart(el) {
  const canvas = el.querySelector("canvas");
  const legend = el.querySelector(".legend");
  const total = el.querySelector(".total");
  const kind = el.dataset.kind;
  const history = [];
  let previous = null;
  async function tick() {
    try {
      const reply = await fetch(el.dataset.feed, { headers: { Accept: "application/json" } });
      if (!reply.ok) throw new Error("HTTP " + reply.status);
      const sample = await reply.json();
      const values = seriesFromSample(kind, sample, previous);
      previous = sample;
      if (values) {
        history.push({ t: sample.t, values });
        if (history.length > POINTS) history.shift();
        const names = draw(canvas, history, el.dataset.unit);
        legend.replaceChildren(...names.map((name, i) => {
          const item = document.createElement("span");
          item.style.color = COLORS[i % COLORS.length];
          item.textContent = "\u25A0 " + name + " ";
          return item;
        }));
        const sum = Object.values(values).reduce((a, b) => a + b, 0);
        if (kind === "latency") total.textContent = Math.max(...Object.values(values)).toFixed(1);
        else total.textContent = kind === "rate" ? sum.toFixed(1) : String(sum);
        el.dataset.samples = String(history.length);
        if (kind === "lag") showGroup(sample);
      }
      el.classList.remove("stale");
    } catch (err) {
      el.classList.add("stale");
    }
    setTimeout(tick, PERIOD_MS);
  }
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".chart[data-feed]").forEach(startChart);
});
