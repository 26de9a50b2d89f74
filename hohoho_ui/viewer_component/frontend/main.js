// HOHOHO browser viewer: scroll, cine, window, invert, zoom/pan and the chart cursor run
// here; the server is told only about study changes and (once scrolling pauses) the slice
// and window on screen. Streamlit's component protocol is written out by hand (no build
// step, no downloaded library). File and header strings are set with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const SYNC_MS = 1200; // report the slice to the server after this long without a step

const S = {
  key: null, meta: null, vol: null, n: 0, h: 0, w: 0,
  slice: 0, window: "brain", centre: 40, width: 80, invert: false,
  zoom: 1, panX: 0, panY: 0, playing: false, fps: 10, lastFrame: 0,
  token: null, pendingStart: null, seq: 0, synced: "", syncTimer: null,
  draws: 0, latencies: [], lut: null, lutKey: "",
};
window.__hohoho = S; // read by the tests and the load benchmark

// ------------------------------------------------------------------ Streamlit protocol

function send(type, data) {
  window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type }, data), "*");
}
function setValue(value) { send("streamlit:setComponentValue", { value, dataType: "json" }); }
let lastHeight = -1;
function fitHeight() {
  const h = Math.ceil(document.documentElement.scrollHeight);
  if (h !== lastHeight) { lastHeight = h; send("streamlit:setFrameHeight", { height: h }); }
}
function nextSeq() { S.seq = Math.max(S.seq + 1, Date.now()); return S.seq; }

window.addEventListener("message", (ev) => {
  const d = ev.data;
  if (!d || d.type !== "streamlit:render") return;
  applyTheme(d.theme);
  render(d.args).catch((err) => showMessage(`The viewer could not read the study: ${err}`));
});

function applyTheme(theme) {
  if (!theme) return;
  chartBase = null; // the chart takes its colours from the theme
  const r = document.documentElement.style;
  if (theme.backgroundColor) r.setProperty("--bg", theme.backgroundColor);
  if (theme.textColor) r.setProperty("--fg", theme.textColor);
  if (theme.primaryColor) r.setProperty("--accent", theme.primaryColor);
  if (theme.base === "light") { r.setProperty("--line", "#d6d6d9"); r.setProperty("--muted", "#6b6f76"); }
}

function showMessage(text) {
  $("msg").textContent = text; $("msg").hidden = false; fitHeight();
}

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Int16Array(await new Response(stream).arrayBuffer());
}

async function render(args) {
  const meta = args.meta, start = args.start || {};
  if (meta.key !== S.key) {
    const vol = await inflate(args.volume);
    const [n, h, w] = meta.shape;
    if (vol.length !== n * h * w) throw new Error(`expected ${n * h * w} voxels, got ${vol.length}`);
    Object.assign(S, { key: meta.key, meta, vol, n, h, w, token: null });
    stopCine();
    setupStudy();
  }
  if (start.token !== S.token) {
    S.token = start.token;
    S.slice = clamp(start.slice | 0);
    if (start.window) setWindow(start.window, start.centre, start.width, false);
    S.synced = syncKey();
  }
  $("msg").hidden = true; $("ui").hidden = false;
  document.body.dataset.study = S.key;
  document.body.dataset.ready = "1";
  draw();
  fitHeight();
}

// ------------------------------------------------------------------ study set-up

let img = null, imgData = null, px32 = null, chartBase = null;

function setupStudy() {
  const m = S.meta;
  img = document.createElement("canvas"); img.width = S.w; img.height = S.h;
  S.img = img; // the windowed slice at its own resolution, read by the browser tests
  imgData = img.getContext("2d").createImageData(S.w, S.h);
  px32 = new Uint32Array(imgData.data.buffer);
  const slider = $("slider"); slider.max = String(S.n); slider.disabled = S.n < 2;
  const bar = $("presets"); bar.textContent = "";
  for (const [name, [c, w]] of Object.entries(m.windows)) {
    const b = document.createElement("button");
    b.dataset.window = name;
    b.textContent = `${name[0].toUpperCase()}${name.slice(1)} (${m.preset_keys[name]})`;
    b.title = `centre ${c} / width ${w} HU`;
    b.addEventListener("click", () => { setWindow(name); draw(); scheduleSync(); });
    bar.appendChild(b);
  }
  for (const [id, label] of [["centre", "C"], ["width", "W"]]) {
    const l = document.createElement("label"); l.textContent = `${label} `;
    const inp = document.createElement("input");
    inp.type = "number"; inp.id = id; inp.step = "10";
    inp.min = id === "width" ? "1" : "-1024"; inp.max = id === "width" ? "4096" : "3071";
    inp.addEventListener("change", () => {
      const c = parseFloat($("centre").value), w = parseFloat($("width").value);
      if (Number.isFinite(c) && Number.isFinite(w) && w >= 1) {
        setWindow("custom", c, w); draw(); scheduleSync();
      }
    });
    l.appendChild(inp); bar.appendChild(l);
  }
  const rows = $("rows"); rows.textContent = "";
  S.cells = m.classes.map(() => {
    const tr = document.createElement("tr"), tds = [];
    for (let j = 0; j < 6; j++) { const td = document.createElement("td"); tr.appendChild(td); tds.push(td); }
    rows.appendChild(tr);
    return tds;
  });
  const hasPred = !!(m.cnn && m.thresholds);
  $("nextpos").disabled = !(m.positive && m.positive.some(Boolean));
  $("chartbox").hidden = !hasPred;
  layout();
}

function layout() {
  const avail = Math.max(260, Math.min(640, Math.floor(window.innerWidth * 0.6)));
  // Physical aspect: columns times column spacing across, rows times row spacing down.
  const physW = S.w * S.meta.spacing[1], physH = S.h * S.meta.spacing[0];
  const scale = avail / Math.max(physW, physH);
  const c = $("slice");
  c.width = Math.round(physW * scale); c.height = Math.round(physH * scale);
  $("view").style.width = `${c.width}px`; $("view").style.height = `${c.height}px`;
  $("slider").style.width = `${c.width}px`;
  const ch = $("chart");
  ch.width = Math.max(300, window.innerWidth - 8); ch.height = 230;
  chartBase = null;
}

// ------------------------------------------------------------------ drawing

function clamp(i) { return Math.min(Math.max(i | 0, 0), Math.max(S.n - 1, 0)); }
function fmt(p) { return p === null || p === undefined || !Number.isFinite(p) ? "—" : p.toFixed(2); }
function finalProb() { return S.meta.lstm || S.meta.cnn; }

function buildLut() {
  const k = `${S.centre}|${S.width}|${S.invert}`;
  if (k === S.lutKey) return;
  const lut = new Uint32Array(4096), lo = S.centre - S.width / 2;
  for (let i = 0; i < 4096; i++) {
    let v = Math.round(((i + S.meta.hu_min - lo) / S.width) * 255);
    v = v < 0 ? 0 : v > 255 ? 255 : v;
    if (S.invert) v = 255 - v;
    lut[i] = 0xff000000 | (v << 16) | (v << 8) | v; // RGBA little-endian: opaque grey
  }
  S.lut = lut; S.lutKey = k;
}

// Measured and not kept (2026-12-01, 8 users, a browser each, 2-core Xeon): the canvas at
// the slice's own resolution, scaled, zoomed and panned by a CSS transform, with a cache of
// windowed slices (worst p90 35 and 46 ms against 25-33 for this path: the compositor then
// redraws the scaled layer every frame), and the cache alone on this path (31-45 ms: no gain).
function drawImage() {
  buildLut();
  const lut = S.lut, off = -S.meta.hu_min, n = S.w * S.h, base = S.slice * n, vol = S.vol;
  for (let i = 0; i < n; i++) px32[i] = lut[vol[base + i] + off];
  img.getContext("2d").putImageData(imgData, 0, 0);
  const c = $("slice"), ctx = c.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, c.width, c.height);
  const cw = c.width * S.zoom, chh = c.height * S.zoom;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(img, (c.width - cw) / 2 + S.panX, (c.height - chh) / 2 + S.panY, cw, chh);
}

// Text and values are written only when they change: on a step most of them do not, and
// every write costs the renderer a style, layout and paint pass (measured: the side panel
// was a third of a step's renderer time).
function setText(el, text) { if (el.textContent !== text) el.textContent = text; }
function setInput(el, value) { if (el.value !== value) el.value = value; }
function setClass(el, name, on) { if (el.classList.contains(name) !== on) el.classList.toggle(name, on); }

function drawSide() {
  const m = S.meta, i = S.slice;
  setText($("heading"), `Slice ${i + 1} / ${S.n}`);
  setText($("where"), `Image ${m.image_ids[i]} · z = ${m.z[i].toFixed(1)} mm`);
  // The table's cells are made once per study (setupStudy); a step only changes their text.
  const final = finalProb();
  m.classes.forEach((cls, k) => {
    const lab = m.labels ? m.labels[i][k] : null;
    const p = final ? final[i][k] : null, thr = m.thresholds ? m.thresholds[k] : null;
    const call = p === null || thr === null ? "—" : p >= thr ? "POSITIVE" : "negative";
    const cells = [cls, lab === null || lab < 0 ? "—" : String(lab),
      fmt(m.cnn ? m.cnn[i][k] : null), fmt(m.lstm ? m.lstm[i][k] : null), fmt(thr), call];
    const tds = S.cells[k];
    cells.forEach((text, j) => setText(tds[j], text));
    setClass(tds[5], "pos", call === "POSITIVE");
  });
  setText($("tl"), `${i + 1} / ${S.n}\n${S.window} C ${S.centre} W ${S.width}`);
  setText($("br"), `zoom ${S.zoom.toFixed(2)}×${S.invert ? " · inverted" : ""}` +
    (S.playing ? ` · cine ${S.fps} fps` : ""));
  setInput($("slider"), String(i + 1));
  for (const b of $("presets").querySelectorAll("button")) {
    setClass(b, "on", b.dataset.window === S.window);
  }
  if (document.activeElement !== $("centre")) setInput($("centre"), String(S.centre));
  if (document.activeElement !== $("width")) setInput($("width"), String(S.width));
  setClass($("invert"), "on", S.invert);
  setClass($("play"), "on", S.playing);
  setText($("play"), S.playing ? "❚❚ Pause (C)" : "▶ Play (C)");
}

function chartGeom(c) { return { l: 44, r: 10, t: 12, b: 28, W: c.width - 54, H: c.height - 40 }; }
function xOf(g, i) { return g.l + (S.n > 1 ? (i / (S.n - 1)) * g.W : g.W / 2); }
function yOf(g, p) { return g.t + (1 - p) * g.H; }

function drawChartBase() {
  const c = $("chart"), m = S.meta;
  chartBase = c; // drawn once per study and size; a step only moves the cursor
  const ctx = c.getContext("2d"), g = chartGeom(c);
  ctx.clearRect(0, 0, c.width, c.height);
  const fg = getComputedStyle(document.documentElement).getPropertyValue("--muted") || "#9aa0a6";
  ctx.font = "11px sans-serif"; ctx.fillStyle = fg; ctx.strokeStyle = fg; ctx.lineWidth = 1;
  if (m.labels) { // slices labelled "any": shaded
    ctx.fillStyle = "rgba(213,94,0,0.13)";
    const step = S.n > 1 ? g.W / (S.n - 1) : g.W;
    m.labels.forEach((row, i) => {
      if (row[5] === 1) ctx.fillRect(xOf(g, i) - step / 2, g.t, step, g.H);
    });
    ctx.fillStyle = fg;
  }
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    ctx.globalAlpha = 0.25; ctx.beginPath(); ctx.moveTo(g.l, yOf(g, p)); ctx.lineTo(g.l + g.W, yOf(g, p)); ctx.stroke();
    ctx.globalAlpha = 1; ctx.fillText(p.toFixed(2), 4, yOf(g, p) + 4);
  }
  const every = Math.max(1, Math.ceil(S.n / 20));
  for (let i = 0; i < S.n; i += every) ctx.fillText(String(i + 1), xOf(g, i) - 4, g.t + g.H + 16);
  ctx.setLineDash([5, 4]);
  m.thresholds.forEach((thr, k) => {
    ctx.strokeStyle = m.colours[k]; ctx.globalAlpha = 0.7;
    ctx.beginPath(); ctx.moveTo(g.l, yOf(g, thr)); ctx.lineTo(g.l + g.W, yOf(g, thr)); ctx.stroke();
  });
  ctx.globalAlpha = 1;
  const stages = [[m.cnn, [2, 3], 1.3]];
  if (m.lstm) stages.push([m.lstm, [], 2.4]);
  for (const [prob, dash, lw] of stages) {
    m.classes.forEach((_, k) => {
      ctx.strokeStyle = m.colours[k]; ctx.lineWidth = lw; ctx.setLineDash(dash);
      ctx.beginPath();
      prob.forEach((row, i) => (i ? ctx.lineTo(xOf(g, i), yOf(g, row[k])) : ctx.moveTo(xOf(g, i), yOf(g, row[k]))));
      ctx.stroke();
    });
  }
  ctx.setLineDash([]);
  const leg = $("legend"); leg.textContent = "";
  m.classes.forEach((cls, k) => {
    const s = document.createElement("span"), i = document.createElement("i");
    i.style.background = m.colours[k]; s.appendChild(i); s.appendChild(document.createTextNode(cls));
    leg.appendChild(s);
  });
  const note = document.createElement("span");
  note.textContent = (m.lstm ? "solid: LSTM, dotted: CNN" : "CNN only (no LSTM)") +
    "; dashed: thresholds; white line: this slice" + (m.labels ? "; shaded: labelled 'any'" : "") +
    ". Click the chart to go to a slice.";
  leg.appendChild(note);
}

function drawChart() {
  if (!S.meta.cnn || !S.meta.thresholds) return;
  const c = $("chart"), g = chartGeom(c), cur = $("cursor");
  if (!chartBase) {
    drawChartBase();
    cur.style.top = `${g.t}px`; cur.style.height = `${g.H}px`;
  }
  cur.style.transform = `translateX(${(xOf(g, S.slice) - 1).toFixed(1)}px)`;
}

function draw(t0) {
  if (!S.vol) return;
  drawImage(); drawSide(); drawChart();
  S.draws += 1;
  const b = document.body.dataset;
  b.slice = String(S.slice); b.n = String(S.n); b.window = S.window; b.invert = S.invert ? "1" : "0";
  b.zoom = S.zoom.toFixed(3); b.playing = S.playing ? "1" : "0"; b.draws = String(S.draws);
  if (t0 !== undefined) {
    // Key press to the next frame after the draw: what the reader waits for.
    requestAnimationFrame(() => {
      const lat = performance.now() - t0;
      S.latencies.push(lat); b.latency = lat.toFixed(2);
      // Lets a test or benchmark wait for the frame without polling the page.
      window.dispatchEvent(new Event("hohoho:drawn"));
    });
  }
}

// ------------------------------------------------------------------ actions

function go(i, t0) {
  const j = clamp(i);
  if (j === S.slice && t0 === undefined) return;
  S.slice = j; draw(t0); scheduleSync();
}

function nextPositive() {
  const pos = S.meta.positive;
  if (!pos) return;
  for (let k = 1; k <= S.n; k++) {
    const j = (S.slice + k) % S.n;
    if (pos[j]) return j;
  }
  return undefined;
}

function setWindow(name, c, w, redraw = true) {
  if (name !== "custom" && S.meta.windows[name]) [c, w] = S.meta.windows[name];
  if (!Number.isFinite(c) || !Number.isFinite(w) || w < 1) return;
  S.window = name; S.centre = c; S.width = w;
  if (redraw) S.lutKey = "";
}

function zoomBy(f) { S.zoom = Math.min(Math.max(S.zoom * f, 0.5), 8); draw(); }
function resetView() { S.zoom = 1; S.panX = 0; S.panY = 0; draw(); }

function studyStep(step) {
  stopCine();
  clearTimeout(S.syncTimer); // a later sync must not replace this event before it is read
  setValue({ kind: "study", step, seq: nextSeq() });
}

function syncKey() { return `${S.slice}|${S.window}|${S.centre}|${S.width}`; }
function scheduleSync() {
  clearTimeout(S.syncTimer);
  if (S.playing) return; // during cine: reported on pause
  S.syncTimer = setTimeout(() => {
    const k = syncKey();
    if (k === S.synced) return;
    S.synced = k;
    setValue({ kind: "sync", slice: S.slice, window: S.window, centre: S.centre,
      width: S.width, seq: nextSeq() });
    document.body.dataset.reported = String(S.slice); // for tests: the report went out
  }, SYNC_MS);
}

function cineTick(now) {
  if (!S.playing) return;
  if (now - S.lastFrame >= 1000 / S.fps) {
    S.lastFrame = now;
    S.slice = S.slice + 1 >= S.n ? 0 : S.slice + 1; // loops, as cine does
    draw();
  }
  requestAnimationFrame(cineTick);
}
function startCine() {
  if (S.playing || S.n < 2) return;
  S.playing = true; S.lastFrame = performance.now(); draw();
  requestAnimationFrame(cineTick);
}
function stopCine() {
  if (!S.playing) return;
  S.playing = false; if (S.vol) draw(); scheduleSync();
}

// ------------------------------------------------------------------ input

function isTyping(target) {
  if (!target || !target.tagName) return false;
  const t = target.tagName.toLowerCase();
  return t === "input" || t === "textarea" || t === "select" || target.isContentEditable;
}

function onKey(e, fromParent) {
  if (!document.defaultView || !S.vol) return; // a removed frame, or nothing loaded
  if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || isTyping(e.target)) return;
  // The event's timeStamp counts from its own document's time origin.
  const perf = fromParent ? window.parent.performance : performance;
  const t0 = performance.now() - Math.max(0, perf.now() - e.timeStamp);
  const k = e.key;
  let done = true;
  if (k === "ArrowDown") go(S.slice + 1, t0);
  else if (k === "ArrowUp") go(S.slice - 1, t0);
  else if (k === "Home") go(0, t0);
  else if (k === "End") go(S.n - 1, t0);
  else if (k === "n" || k === "N") { const j = nextPositive(); if (j !== undefined) go(j, t0); }
  else if (k === "c" || k === "C") { S.playing ? stopCine() : startCine(); }
  else if (k === "i" || k === "I") { S.invert = !S.invert; S.lutKey = ""; draw(); }
  else if (k === "+" || k === "=") zoomBy(1.25);
  else if (k === "-" || k === "_") zoomBy(0.8);
  else if (k === "r" || k === "R") resetView();
  else if (k === "PageDown") studyStep(1);
  else if (k === "PageUp") studyStep(-1);
  else {
    const name = Object.keys(S.meta.preset_keys).find((w) => S.meta.preset_keys[w] === k);
    if (name) { setWindow(name); draw(); scheduleSync(); } else done = false;
  }
  if (done) e.preventDefault();
  return done;
}

window.addEventListener("keydown", (e) => onKey(e, false));
// Keys pressed anywhere on the page reach the viewer (the page, not this frame, usually
// has the focus). Caught on the page's window before its document sees them, and kept
// from Streamlit's own keys when used: "c" would open its clear-cache dialog, "r" rerun.
// The listener goes when this frame does.
const parentKey = (e) => { if (onKey(e, true)) e.stopImmediatePropagation(); };
try {
  window.parent.addEventListener("keydown", parentKey, true);
  window.addEventListener("pagehide", () => window.parent.removeEventListener("keydown", parentKey, true));
} catch (err) { /* another origin: keys work when the viewer has the focus */ }

$("slider").addEventListener("input", () => go(parseInt($("slider").value, 10) - 1));
$("play").addEventListener("click", () => (S.playing ? stopCine() : startCine()));
$("fps").addEventListener("change", () => { S.fps = parseInt($("fps").value, 10) || 10; draw(); });
$("invert").addEventListener("click", () => { S.invert = !S.invert; S.lutKey = ""; draw(); });
$("zoomin").addEventListener("click", () => zoomBy(1.25));
$("zoomout").addEventListener("click", () => zoomBy(0.8));
$("reset").addEventListener("click", resetView);
$("nextpos").addEventListener("click", () => { const j = nextPositive(); if (j !== undefined) go(j); });
$("prevstudy").addEventListener("click", () => studyStep(-1));
$("nextstudy").addEventListener("click", () => studyStep(1));

const canvas = $("slice");
canvas.addEventListener("wheel", (e) => {
  e.preventDefault();
  if (e.ctrlKey || e.metaKey) zoomBy(e.deltaY < 0 ? 1.1 : 1 / 1.1);
  else if (e.deltaY) go(S.slice + (e.deltaY > 0 ? 1 : -1), performance.now() - Math.max(0, performance.now() - e.timeStamp));
}, { passive: false });
let drag = null;
canvas.addEventListener("pointerdown", (e) => {
  drag = { x: e.clientX, y: e.clientY, px: S.panX, py: S.panY };
  canvas.setPointerCapture(e.pointerId); canvas.classList.add("dragging");
});
canvas.addEventListener("pointermove", (e) => {
  if (!drag) return;
  S.panX = drag.px + e.clientX - drag.x; S.panY = drag.py + e.clientY - drag.y; draw();
});
const endDrag = () => { drag = null; canvas.classList.remove("dragging"); };
canvas.addEventListener("pointerup", endDrag);
canvas.addEventListener("pointercancel", endDrag);
canvas.addEventListener("dblclick", resetView);

$("chart").addEventListener("click", (e) => {
  const c = $("chart"), g = chartGeom(c), r = c.getBoundingClientRect();
  const x = (e.clientX - r.left) * (c.width / r.width);
  const i = S.n > 1 ? Math.round(((x - g.l) / g.W) * (S.n - 1)) : 0;
  go(i);
});

window.addEventListener("resize", () => { if (S.vol) { layout(); draw(); fitHeight(); } });

send("streamlit:componentReady", { apiVersion: 1 });
