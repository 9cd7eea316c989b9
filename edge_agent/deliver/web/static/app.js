// The operator's page: polls the agent's own server (no CDN, no framework) and sends commands with the
// session's CSRF token. Every action is a command, the same as over MQTT; the page changes nothing else.
"use strict";

const $ = (id) => document.getElementById(id);
const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
const CSRF = meta("csrf");
const LIVE_FPS = parseFloat(meta("live-fps")) || 4;
const KEEP = 1000;          // verdicts kept for the chart
const HISTORY_MS = 400;     // a verdict shows within this (plus the request) of reaching the server
const STATE_MS = 1500;
const GALLERY_MS = 2000;

const verdicts = [];        // {n, seq, score, threshold, verdict, captured_at, part_id, received_ms}
let lastN = 0;
let state = {};
let proposed = null;        // a threshold the slider proposes, not applied yet
let galleryShown = 0;
let lastAlert = null;
let trainingVersion = null;
// seq -> when the page first showed that verdict (ms since the epoch): the browser tests read it.
window.edgeSeen = {};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const fmt = (x) => (x === null || x === undefined ? "-" : Number(x).toPrecision(4).replace(/\.?0+$/, ""));
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "-");

async function getJSON(url) {
  const response = await fetch(url, {cache: "no-store"});
  if (response.status === 401) {
    location.href = "/login";
    throw new Error("logged out");
  }
  return response.json();
}

async function command(name, args) {
  const response = await fetch(`/api/command/${name}`, {
    method: "POST", cache: "no-store",
    headers: {"Content-Type": "application/json", "X-CSRF-Token": CSRF},
    body: JSON.stringify(args || {}),
  });
  try {
    return await response.json();
  } catch (e) {
    return {ok: false, error: `${response.status} ${response.statusText}`};
  }
}

// ---- live view: one frame at a time, the newest, no faster than LIVE_FPS --------------------------------------
async function live() {
  let frame = 0;
  const img = $("live");
  for (;;) {
    const started = performance.now();
    if (document.hidden) {
      await sleep(1000);
      continue;
    }
    try {
      const response = await fetch(`/api/frame.jpg?after=${frame}`, {cache: "no-store"});
      if (response.status === 401) {
        location.href = "/login";
        return;
      }
      if (response.status === 200) {
        frame = parseInt(response.headers.get("X-Frame"), 10) || frame;
        const old = img.src;
        img.onload = () => old.startsWith("blob:") && URL.revokeObjectURL(old);
        img.src = URL.createObjectURL(await response.blob());
        img.dataset.frame = frame;
        $("live-caption").textContent = `frame ${frame} at ${new Date().toLocaleTimeString()}`;
      }
    } catch (e) {
      await sleep(2000);
    }
    await sleep(Math.max(0, 1000 / LIVE_FPS - (performance.now() - started)));
  }
}

// ---- verdicts, rejects, progress ------------------------------------------------------------------------------
async function pollHistory() {
  const h = await getJSON(`/api/history?after=${lastN}`);
  if (h.last < lastN) {  // the agent restarted: start over
    verdicts.length = 0;
    lastN = 0;
    return;
  }
  const now = Date.now();
  for (const v of h.verdicts) {
    verdicts.push(v);
    if (!(v.seq in window.edgeSeen)) window.edgeSeen[v.seq] = now;
  }
  verdicts.splice(0, Math.max(0, verdicts.length - KEEP));
  // edgeSeen (when each verdict reached the page; the browser tests read it) keeps only what is drawn.
  const oldest = verdicts.length ? verdicts[0].seq : Infinity;
  for (const seq of Object.keys(window.edgeSeen)) if (Number(seq) < oldest) delete window.edgeSeen[seq];
  lastN = h.last;
  showRejects(h.rejects);
  showProgress(h.progress);
  showTraining(h.images["retrain/images"]);
  if (h.verdicts.length) draw();
}

// The gallery follows at most every GALLERY_MS and loads only the pictures it did not have: a line that rejects
// many parts a second must not make each browser fetch every picture.
function showRejects(rejects) {
  const now = Date.now();
  if (now - galleryShown < GALLERY_MS) return;
  galleryShown = now;
  const gallery = $("gallery");
  const keep = new Set(rejects.map((r) => String(r.id)));
  for (const figure of [...gallery.children]) if (!keep.has(figure.dataset.id)) figure.remove();
  const have = new Set([...gallery.children].map((f) => f.dataset.id));
  for (const r of rejects) {
    if (have.has(String(r.id))) continue;
    const figure = document.createElement("figure");
    figure.className = "reject";
    figure.dataset.id = r.id;
    figure.dataset.seq = r.seq;
    const caption = document.createElement("figcaption");
    caption.textContent = `#${r.seq} ${time(r.captured_at)} score ${fmt(r.score)} / ${fmt(r.threshold)}` +
      (r.part_id ? ` part ${r.part_id}` : "");
    if (r.image) {
      const img = document.createElement("img");
      img.src = `/api/reject/${r.id}.jpg`;
      img.alt = `reject ${r.seq}`;
      figure.append(img);
      figure.addEventListener("click", () => zoom(img.src, caption.textContent));
    }
    figure.append(caption);
    gallery.prepend(figure);  // newest first
  }
  const last = rejects[rejects.length - 1];
  if (last && last.image && lastAlert !== last.id) {
    lastAlert = last.id;
    $("last-alert").src = `/api/reject/${last.id}.jpg`;
    $("last-alert-caption").textContent = `last reject #${last.seq} at ${time(last.captured_at)}, score ` +
      `${fmt(last.score)} / ${fmt(last.threshold)}`;
  }
}

function showProgress(p) {
  const bar = $("progress-bar");
  if (!p) return;
  const text = {
    collecting: `collecting: ${p.collected} of ${p.n_images} good parts`,
    fitting: `fitting on ${p.collected} parts...`,
    done: `done: ${p.detector_file}, ${p.n_train} parts, threshold ${fmt(p.threshold)}`,
    failed: `failed: ${p.error}`,
  }[p.stage] || p.stage;
  $("progress").textContent = `${text} (${time(p.at)})`;
  $("progress").dataset.stage = p.stage;
  if (p.stage === "fitting") bar.removeAttribute("value");
  else bar.value = p.stage === "collecting" ? p.collected / p.n_images : 1;
}

function showTraining(version) {
  if (version === undefined || version === trainingVersion) return;
  trainingVersion = version;
  const img = $("training");
  img.onload = () => img.classList.remove("hidden");
  img.onerror = () => img.classList.add("hidden");  // none: fitted offline, or unfitted
  img.src = `/api/image/retrain/images.jpg?v=${version}`;
}

// ---- state ----------------------------------------------------------------------------------------------------
async function pollState() {
  const s = await getJSON("/api/state");
  state = s.state || {};
  $("device").textContent = state.device || "edge-agent";
  const status = $("status");
  status.textContent = state.status || "?";
  status.className = `badge ${state.status || ""}`;
  const broker = $("broker");
  broker.textContent = s.broker ? (s.broker.connected ? "broker connected" : "broker disconnected") : "MQTT off";
  broker.className = `badge ${s.broker && s.broker.connected ? "on" : "off"}`;
  $("c-inspected").textContent = state.inspected ?? "-";
  $("c-good").textContent = state.good ?? "-";
  $("c-rejected").textContent = state.rejected ?? "-";
  $("c-rate").textContent = state.reject_rate == null ? "-" : `${(state.reject_rate * 100).toFixed(1)} %`;
  $("f-model").textContent = state.model_id ? `${state.model_id} (${state.precision})` : "-";
  $("f-detector").textContent = state.detector || "unfitted";
  $("f-detector").dataset.file = state.detector_file || "";
  $("f-threshold").textContent = fmt(state.threshold);
  $("f-threshold").dataset.value = state.threshold ?? "";
  $("f-fitted").textContent = state.fitted_at ? new Date(state.fitted_at).toLocaleString() : "-";
  $("f-ntrain").textContent = state.n_train ?? "-";
  $("f-delegate").textContent = state.delegate || "-";
  $("f-fps").textContent = fmt(state.fps);
  $("f-spool").textContent = state.spool_queued ?? "-";
  $("retrain").disabled = state.status === "retraining";
  $("rollback").disabled = state.status === "retraining";
  showProgress(s.progress);
  draw();
}

// ---- the chart and the threshold slider -----------------------------------------------------------------------
function scoreRange() {
  const scores = verdicts.map((v) => v.score).filter((x) => x > 0);
  const t = state.threshold || (scores.length ? Math.max(...scores) : 1);
  const low = Math.min(t / 3, ...scores);
  const high = Math.max(t * 3, ...scores);
  return [Math.max(low, 1e-9), Math.max(high, low * 1.01)];
}

function sliderToValue(position) {
  const [low, high] = scoreRange();
  return low * Math.pow(high / low, position / 1000);
}

function valueToSlider(value) {
  const [low, high] = scoreRange();
  return Math.round(1000 * Math.log(value / low) / Math.log(high / low));
}

function draw() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth * ratio;
  const h = canvas.clientHeight * ratio;
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, w, h);
  const top = Math.max(state.threshold || 0, proposed || 0, ...verdicts.map((v) => v.score)) * 1.1 || 1;
  const y = (score) => h - (Math.min(score, top) / top) * (h - 8 * ratio) - 4 * ratio;
  const x = (i) => (verdicts.length < 2 ? w / 2 : 6 * ratio + (i * (w - 12 * ratio)) / (verdicts.length - 1));
  ctx.lineWidth = 2 * ratio;
  ctx.strokeStyle = "#f0a020";  // the threshold each part was judged against
  ctx.beginPath();
  verdicts.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v.threshold)) : ctx.moveTo(x(i), y(v.threshold))));
  if (!verdicts.length && state.threshold) {
    ctx.moveTo(0, y(state.threshold));
    ctx.lineTo(w, y(state.threshold));
  }
  ctx.stroke();
  verdicts.forEach((v, i) => {
    ctx.fillStyle = v.verdict === "anomalous" ? "#e62828" : "#28c83c";
    ctx.beginPath();
    ctx.arc(x(i), y(v.score), 2.5 * ratio, 0, 2 * Math.PI);
    ctx.fill();
  });
  if (proposed !== null) {
    ctx.strokeStyle = "#3d8bfd";
    ctx.setLineDash([8 * ratio, 6 * ratio]);
    ctx.beginPath();
    ctx.moveTo(0, y(proposed));
    ctx.lineTo(w, y(proposed));
    ctx.stroke();
    ctx.setLineDash([]);
  }
  showProposal();
}

function showProposal() {
  const slider = $("threshold-slider");
  const value = proposed ?? state.threshold;
  if (value && document.activeElement !== slider) slider.value = valueToSlider(value);
  $("threshold-apply").disabled = proposed === null;
  if (proposed === null) {
    $("threshold-proposed").textContent = `threshold ${fmt(state.threshold)}`;
    $("threshold-effect").textContent = "(move the slider to propose another)";
    return;
  }
  const now = verdicts.filter((v) => v.verdict === "anomalous").length;
  const would = verdicts.filter((v) => v.score >= proposed).length;
  $("threshold-proposed").textContent = `proposed ${fmt(proposed)} (now ${fmt(state.threshold)})`;
  $("threshold-effect").textContent = `would reject ${would} of the last ${verdicts.length} parts (rejected: ${now})`;
}

function summary(result) {
  if (!result || typeof result !== "object") return JSON.stringify(result);
  const parts = [];
  if (result.detector_file) parts.push(result.detector_file);
  if (result.n_train) parts.push(`${result.n_train} parts`);
  if (result.threshold !== undefined) parts.push(`threshold ${fmt(result.threshold)}`);
  return parts.length ? parts.join(", ") : JSON.stringify(result);
}

function report(id, reply, pendingText) {
  const target = $(id);
  target.textContent = reply.ok ? (reply.pending ? pendingText : `done: ${summary(reply.result)}`)
    : `refused: ${reply.error}`;
  target.dataset.ok = reply.ok;
}

function zoom(src, caption) {
  $("zoom-img").src = src;
  $("zoom-caption").textContent = caption;
  $("zoom").classList.remove("hidden");
}

function repeat(task, ms) {
  const run = async () => {
    try {
      await task();
    } catch (e) {
      // logged out or the agent restarting: the next round tries again
    }
    setTimeout(run, ms);
  };
  run();
}

document.addEventListener("DOMContentLoaded", () => {
  $("threshold-slider").addEventListener("input", (e) => {
    proposed = sliderToValue(Number(e.target.value));
    draw();
  });
  $("threshold-reset").addEventListener("click", () => {
    proposed = null;
    $("threshold-slider").blur();
    draw();
  });
  $("threshold-apply").addEventListener("click", async () => {
    const reply = await command("threshold", {value: proposed});
    report("threshold-result", reply, "waiting for the loop...");
    if (reply.ok) proposed = null;
    $("threshold-slider").blur();
    await pollState();
  });
  $("retrain").addEventListener("click", async () => {
    $("retrain").disabled = true;
    report("command-result", await command("retrain", {}), "retrain started: show the camera good parts");
    await pollState();
  });
  $("rollback").addEventListener("click", async () => {
    report("command-result", await command("rollback", {}), "rolling back...");
    await pollState();
  });
  $("last-alert").addEventListener("click", (e) => e.target.src && zoom(e.target.src, $("last-alert-caption").textContent));
  $("training").addEventListener("click", (e) => zoom(e.target.src, "training parts"));
  $("logout").addEventListener("click", async () => {
    await fetch("/logout", {method: "POST", headers: {"X-CSRF-Token": CSRF}});
    location.href = "/login";
  });
  $("zoom").addEventListener("click", () => $("zoom").classList.add("hidden"));
  window.addEventListener("resize", draw);
  repeat(pollState, STATE_MS);
  repeat(pollHistory, HISTORY_MS);
  live();
});
