// UltraRes Stream web page: upscale an image (before/after compare, zoom, download),
// watch/steer the live cameras, and zoom into a box of a camera's view or an uploaded clip. Plain ES2020, no build step; talks to /api/v1.
"use strict";

const API = "/api/v1";
const $ = (id) => document.getElementById(id);

const state = {
  info: null,
  models: [],
  file: null,
  fileURL: null,
  fileSize: null, // [w, h] of the original
  result: null, // {url, w, h, name, ...}
  zoom: null, // null = fit, else screen px per result px
  split: 0.5,
  xhr: null,
  timer: null,
  rerun: false,
};

// ------------------------------------------------------------------ helpers
function token() { return sessionStorage.getItem("ultrares-token") || ""; }
function authHeaders() { const t = token(); return t ? { Authorization: `Bearer ${t}` } : {}; }
function show(el, on = true) { el.hidden = !on; }
function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}
function clamp(v, lo, hi) { return Math.min(hi, Math.max(lo, v)); }

async function errorText(resp) {
  // Every API error is JSON {"error": "..."}; fall back to the status line.
  try {
    const body = await resp.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `${resp.status} ${resp.statusText || "error"}`;
}

async function getJSON(path) {
  const resp = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (!resp.ok) {
    const message = await errorText(resp);
    throw new Error(resp.status === 401 ? needToken(message) : message);
  }
  return resp.json();
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  show(el, !!message);
}

function needToken(message) {
  show($("token-panel"), true);
  $("token-input").focus();
  return `${message} Enter it in the API token field above, then try again.`;
}

// ------------------------------------------------------------------ tabs and token
function selectTab(name) {
  for (const tab of ["image", "cameras", "clip"]) {
    const on = tab === name;
    $(`tab-${tab}`).classList.toggle("active", on);
    $(`tab-${tab}`).setAttribute("aria-selected", String(on));
    show($(`view-${tab}`), on);
  }
  if (name === "cameras") Cameras.start(); else Cameras.stop();
  if (name === "image") layout();
}

function initToken() {
  $("token-button").addEventListener("click", () => show($("token-panel"), $("token-panel").hidden));
  $("token-input").value = token();
  const save = () => {
    sessionStorage.setItem("ultrares-token", $("token-input").value.trim());
    show($("token-panel"), false);
    showError("");
    if (!state.info) loadServerInfo(); // the first load was refused for want of the token
  };
  $("token-save").addEventListener("click", save);
  $("token-input").addEventListener("keydown", (e) => { if (e.key === "Enter") save(); });
}

// ------------------------------------------------------------------ models and limits
async function loadServerInfo() {
  try {
    const [info, models] = await Promise.all([getJSON(`${API}/info`), getJSON(`${API}/models`)]);
    state.info = info;
    state.models = models.models;
    if (info.token_required && !token()) show($("token-panel"), true);
    const select = $("model");
    select.innerHTML = "";
    const usable = models.models.filter((m) => m.available);
    for (const m of usable) {
      const opt = document.createElement("option");
      opt.value = m.name;
      const label = m.kind === "custom" ? `${m.label} (server default)` : m.name;
      opt.textContent = m.kind === "pair" || (m.psnr && m.gan) ? `${label} · pair` : label;
      opt.selected = m.name === models.default;
      select.appendChild(opt);
    }
    if (!usable.length) {
      showError("No model is available on this server yet (its weights are missing). Ask the operator to run " +
                "`ultrares models --fetch NAME` or start it with --model.");
    }
    updateModelNote();
    document.body.dataset.ready = "1";
  } catch (err) {
    showError(`Could not load the server's models: ${err.message}`);
  }
}

function selectedModel() { return state.models.find((m) => m.name === $("model").value); }

function updateModelNote() {
  const m = selectedModel();
  const single = m && !(m.psnr && m.gan);
  show($("alpha-note"), !!single);
  $("alpha").disabled = !!single;
  const scale = (m && m.scale) || 4;
  $("size").options[0].textContent = `Native (×${scale})`;
}

// ------------------------------------------------------------------ choosing a file
function chooseFile(file) {
  if (!file) return;
  showError("");
  const limit = state.info && state.info.max_upload_bytes;
  if (limit && file.size > limit) {
    showError(`${file.name} is ${fmtBytes(file.size)}; this server accepts up to ${fmtBytes(limit)}. Choose a smaller file.`);
    return;
  }
  if (state.fileURL) URL.revokeObjectURL(state.fileURL);
  clearResult();
  state.file = file;
  state.fileURL = URL.createObjectURL(file);
  state.fileSize = null;
  state.zoom = null;
  const img = $("before");
  img.onload = () => {
    state.fileSize = [img.naturalWidth, img.naturalHeight];
    $("file-info").textContent = `${file.name} · ${img.naturalWidth}×${img.naturalHeight} · ${fmtBytes(file.size)}`;
    show($("file-info"), true);
    show($("empty"), false);
    show($("canvas"), true);
    layout();
  };
  img.onerror = () => {
    // The browser cannot preview it (TIFF, say); the server may still read it.
    $("file-info").textContent = `${file.name} · ${fmtBytes(file.size)} (no preview in this browser)`;
    show($("file-info"), true);
  };
  img.src = state.fileURL;
  $("upscale-btn").disabled = false;
}

function initDropzone() {
  const zone = $("dropzone");
  const input = $("file-input");
  input.addEventListener("change", () => chooseFile(input.files[0]));
  zone.addEventListener("click", (e) => { if (e.target.tagName !== "LABEL" && e.target !== input) input.click(); });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) zone.addEventListener(ev, () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); chooseFile(e.dataTransfer.files[0]); });
  // Dropping anywhere else on the page should not navigate away from it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => { e.preventDefault(); if (e.dataTransfer.files[0]) chooseFile(e.dataTransfer.files[0]); });
}

// ------------------------------------------------------------------ settings
function sizeValue() {
  const v = $("size").value;
  if (v !== "custom") return v;
  return `${parseInt($("custom-w").value, 10) || 0}x${parseInt($("custom-h").value, 10) || 0}`;
}

function initSettings() {
  const alpha = $("alpha");
  alpha.addEventListener("input", () => { $("alpha-value").textContent = Number(alpha.value).toFixed(2); });
  const rerun = () => { if (state.result && state.file) upscale(); };
  alpha.addEventListener("change", rerun);
  $("model").addEventListener("change", () => { updateModelNote(); rerun(); });
  $("format").addEventListener("change", rerun);
  $("ensemble").addEventListener("change", rerun);
  $("size").addEventListener("change", () => { show($("custom-size"), $("size").value === "custom"); rerun(); });
  $("custom-w").addEventListener("change", rerun);
  $("custom-h").addEventListener("change", rerun);
  $("upscale-btn").addEventListener("click", upscale);
}

// ------------------------------------------------------------------ upscaling
function setProgress(text, fraction) {
  show($("progress"), true);
  $("progress-text").textContent = text;
  const bar = $("progress-bar");
  bar.classList.toggle("indeterminate", fraction == null);
  bar.style.width = fraction == null ? "" : `${Math.round(fraction * 100)}%`;
}

function stopProgress() {
  clearInterval(state.timer);
  state.timer = null;
  show($("progress"), false);
}

function clearResult() {
  if (state.result) URL.revokeObjectURL(state.result.url);
  state.result = null;
  show($("result-box"), false);
  $("result-info").textContent = "No result yet";
  document.querySelector(".stage-wrap").classList.remove("has-result");
  show($("after"), false);
  show($("divider"), false);
  $("after").removeAttribute("src");
}

function upscale() {
  if (!state.file) return;
  if (state.xhr) state.xhr.abort();
  showError("");
  const form = new FormData();
  form.append("image", state.file, state.file.name);
  if ($("model").value) form.append("model", $("model").value);
  form.append("alpha", $("alpha").value);
  form.append("size", sizeValue());
  form.append("format", $("format").value);
  form.append("ensemble", $("ensemble").value);
  const xhr = new XMLHttpRequest();
  state.xhr = xhr;
  xhr.open("POST", `${API}/upscale`);
  xhr.responseType = "blob";
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  const started = performance.now();
  $("upscale-btn").disabled = true;
  $("upscale-btn").textContent = "Working…";
  document.body.dataset.busy = "1";
  setProgress("Uploading…", 0);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) setProgress(`Uploading ${Math.round((100 * e.loaded) / e.total)}%`, e.loaded / e.total);
  };
  xhr.upload.onload = () => {
    clearInterval(state.timer);
    const tick = () => setProgress(`Upscaling… ${((performance.now() - started) / 1000).toFixed(1)} s`, null);
    tick();
    state.timer = setInterval(tick, 100);
  };
  const done = () => {
    if (state.xhr !== xhr) return false;
    state.xhr = null;
    stopProgress();
    $("upscale-btn").disabled = false;
    $("upscale-btn").textContent = "Upscale";
    delete document.body.dataset.busy;
    return true;
  };
  xhr.onerror = () => { if (done()) showError("Could not reach the server. Is it still running?"); };
  xhr.ontimeout = xhr.onerror;
  xhr.onload = async () => {
    if (!done()) return;
    if (xhr.status !== 200) {
      let message = `${xhr.status} ${xhr.statusText}`;
      try { message = JSON.parse(await xhr.response.text()).error || message; } catch (_) { /* keep */ }
      if (xhr.status === 401) message = needToken(message);
      const retry = xhr.getResponseHeader("Retry-After");
      if ((xhr.status === 429 || xhr.status === 503) && retry) message += ` (retry in ${retry} s)`;
      showError(message);
      return;
    }
    const disposition = xhr.getResponseHeader("Content-Disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    const [w, h] = (xhr.getResponseHeader("X-Ultrares-Output-Size") || "0x0").split("x").map(Number);
    showResult({
      url: URL.createObjectURL(xhr.response), bytes: xhr.response.size, w, h,
      name: match ? match[1] : "ultrares.png",
      model: xhr.getResponseHeader("X-Ultrares-Model"),
      alpha: xhr.getResponseHeader("X-Ultrares-Alpha"),
      passes: Number(xhr.getResponseHeader("X-Ultrares-Ensemble") || 1),
      seconds: Number(xhr.getResponseHeader("X-Ultrares-Seconds") || 0),
      format: $("format").value.toUpperCase(),
    });
  };
  xhr.send(form);
}

function showResult(result) {
  const keepZoom = state.result && state.result.w === result.w && state.result.h === result.h;
  clearResult();
  state.result = result;
  if (!keepZoom) state.zoom = null;
  const after = $("after");
  after.onload = () => {
    show(after, true);
    show($("divider"), true);
    document.querySelector(".stage-wrap").classList.add("has-result");
    show($("empty"), false);
    show($("canvas"), true);
    layout();
    document.body.dataset.result = String(Date.now());
  };
  after.src = result.url;
  const single = selectedModel() && !(selectedModel().psnr && selectedModel().gan);
  $("result-info").innerHTML = "";
  const sep = '<span class="sep">|</span>';
  const parts = [
    `<b>${result.w}×${result.h}</b> ${result.format}`, fmtBytes(result.bytes), escapeHTML(modelLabel(result.model || "")),
    ...(single ? [] : [`detail ${Number(result.alpha).toFixed(2)}`]),
    ...(result.passes > 1 ? [`${result.passes} passes`] : []), `${result.seconds.toFixed(2)} s`,
  ];
  $("result-info").innerHTML = parts.join(sep);
  $("result-info").title = $("result-info").textContent;
  const link = $("download");
  link.href = result.url;
  link.download = result.name;
  show($("result-box"), true);
}

function modelLabel(name) {
  const m = state.models.find((x) => x.name === name);
  return m ? m.label : name;
}

function escapeHTML(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

// ------------------------------------------------------------------ compare view: size, zoom, divider
function baseSize() {
  if (state.result) return [state.result.w, state.result.h];
  return state.fileSize || [0, 0];
}

function fitZoom() {
  const stage = $("stage");
  const [w, h] = baseSize();
  if (!w || !h) return 1;
  return Math.min((stage.clientWidth - 24) / w, (stage.clientHeight - 24) / h);
}

function currentZoom() { return state.zoom == null ? fitZoom() : state.zoom; }

function layout() {
  const [w, h] = baseSize();
  if (!w) return;
  const z = currentZoom();
  const canvas = $("canvas");
  canvas.style.width = `${Math.round(w * z)}px`;
  canvas.style.height = `${Math.round(h * z)}px`;
  // Pixels become visible squares when zoomed in, to inspect what the network made.
  canvas.classList.toggle("pixelated", z >= 2);
  $("zoom-level").textContent = state.zoom == null ? `Fit ${Math.round(z * 100)}%` : `${Math.round(z * 100)}%`;
  const stage = $("stage");
  stage.classList.toggle("pannable", stage.scrollWidth > stage.clientWidth || stage.scrollHeight > stage.clientHeight);
  setSplit(state.split);
}

function setZoom(z, anchorX, anchorY) {
  const stage = $("stage");
  const old = currentZoom();
  z = clamp(z, 0.05, 32);
  // keep the image point under the anchor (default: the stage centre) where it is
  const rect = stage.getBoundingClientRect();
  const ax = anchorX == null ? rect.width / 2 : anchorX - rect.left;
  const ay = anchorY == null ? rect.height / 2 : anchorY - rect.top;
  const canvas = $("canvas");
  const px = (stage.scrollLeft + ax - canvas.offsetLeft) / old;
  const py = (stage.scrollTop + ay - canvas.offsetTop) / old;
  state.zoom = z;
  layout();
  stage.scrollLeft = px * z + canvas.offsetLeft - ax;
  stage.scrollTop = py * z + canvas.offsetTop - ay;
}

function setSplit(fraction) {
  state.split = clamp(fraction, 0, 1);
  const pct = `${(state.split * 100).toFixed(2)}%`;
  $("divider").style.left = pct;
  $("after").style.clipPath = `inset(0 0 0 ${pct})`;
  $("divider-handle").setAttribute("aria-valuenow", String(Math.round(state.split * 100)));
}

function initViewer() {
  const stage = $("stage");
  const canvas = $("canvas");
  $("zoom-in").addEventListener("click", () => setZoom(currentZoom() * 1.5));
  $("zoom-out").addEventListener("click", () => setZoom(currentZoom() / 1.5));
  $("zoom-100").addEventListener("click", () => setZoom(1));
  $("zoom-fit").addEventListener("click", () => { state.zoom = null; layout(); });
  stage.addEventListener("wheel", (e) => {
    if (!baseSize()[0]) return;
    e.preventDefault();
    setZoom(currentZoom() * Math.pow(1.0015, -e.deltaY), e.clientX, e.clientY);
  }, { passive: false });
  window.addEventListener("resize", layout);

  let drag = null;
  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    const onDivider = e.target.closest("#divider");
    const overflowing = stage.scrollWidth > stage.clientWidth || stage.scrollHeight > stage.clientHeight;
    if (onDivider || !overflowing || !state.result) {
      drag = { mode: "divider" };
      if (!onDivider && state.result) moveDivider(e);
    } else {
      drag = { mode: "pan", x: e.clientX, y: e.clientY, left: stage.scrollLeft, top: stage.scrollTop };
      stage.classList.add("panning");
    }
    canvas.setPointerCapture(e.pointerId);
    e.preventDefault();
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!drag) return;
    if (drag.mode === "divider") moveDivider(e);
    else {
      stage.scrollLeft = drag.left - (e.clientX - drag.x);
      stage.scrollTop = drag.top - (e.clientY - drag.y);
    }
  });
  const end = () => { drag = null; stage.classList.remove("panning"); };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  $("divider-handle").addEventListener("keydown", (e) => {
    const step = e.shiftKey ? 0.1 : 0.02;
    if (e.key === "ArrowLeft") setSplit(state.split - step);
    else if (e.key === "ArrowRight") setSplit(state.split + step);
    else if (e.key === "Home") setSplit(0);
    else if (e.key === "End") setSplit(1);
    else return;
    e.preventDefault();
  });
}

function moveDivider(e) {
  const rect = $("canvas").getBoundingClientRect();
  if (rect.width > 0) setSplit((e.clientX - rect.left) / rect.width);
}

// ------------------------------------------------------------------ cameras
const Cameras = {
  running: false,
  pollTimer: null,
  cards: new Map(),

  start() {
    if (this.running) return;
    this.running = true;
    this.poll();
    for (const card of this.cards.values()) this.refreshSnapshot(card);
  },

  stop() {
    this.running = false;
    clearTimeout(this.pollTimer);
  },

  async poll() {
    if (!this.running) return;
    try {
      const body = await getJSON(`${API}/streams`);
      show($("cameras-error"), false);
      this.render(body.streams);
      $("cameras-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      $("cameras-error").textContent = `Could not read the cameras: ${err.message}`;
      show($("cameras-error"), true);
    }
    this.pollTimer = setTimeout(() => this.poll(), 2000);
  },

  render(streams) {
    show($("no-cameras"), streams.length === 0);
    const seen = new Set();
    for (const s of streams) {
      seen.add(s.name);
      let card = this.cards.get(s.name);
      if (!card) {
        card = this.createCard(s.name);
        this.cards.set(s.name, card);
        $("cameras").appendChild(card.el);
        this.refreshSnapshot(card);
      }
      this.update(card, s);
    }
    for (const [name, card] of this.cards) {
      if (!seen.has(name)) { card.el.remove(); this.cards.delete(name); }
    }
  },

  createCard(name) {
    const el = document.createElement("article");
    el.className = "panel camera";
    el.dataset.camera = name;
    const id = `cam-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    el.innerHTML = `
      <div class="camera-head"><span class="camera-name"></span><span class="badge">…</span></div>
      <div class="preview"><span class="waiting">waiting for the first frame…</span><img alt="" hidden draggable="false"><div class="zoom-box" hidden></div></div>
      <div class="zoom-panel">
        <p class="zoom-hint hint">Draw a box on the picture to zoom into it: ×4, fused from the camera's last 16 frames.</p>
        ${zoomPairHTML()}
      </div>
      <dl class="stats">
        <div><dt>Input</dt><dd data-k="input">–</dd></div>
        <div><dt>Output</dt><dd data-k="output">–</dd></div>
        <div><dt>FPS in / out</dt><dd data-k="fps">–</dd></div>
        <div><dt>Latency p50</dt><dd data-k="p50">–</dd></div>
        <div><dt>p95 / p99</dt><dd data-k="p95">–</dd></div>
        <div><dt>Drops</dt><dd data-k="drops">–</dd></div>
      </dl>
      <div class="camera-controls">
        <div class="field-head"><label for="${id}-alpha">Detail</label><output class="alpha-out">–</output></div>
        <input id="${id}-alpha" class="camera-alpha" type="range" min="0" max="1" step="0.05" value="0.5">
        <div class="range-ends"><span>faithful</span><span>detailed</span></div>
        <div class="camera-msg" aria-live="polite"></div>
      </div>`;
    el.querySelector(".camera-name").textContent = name;
    el.querySelector("img").alt = `latest enhanced frame of ${name}`;
    const card = { name, el, busyUntil: 0, snapTimer: null, shownIndex: null, inputSize: null };
    Zoom.attach(card);
    const slider = el.querySelector(".camera-alpha");
    slider.addEventListener("input", () => {
      card.busyUntil = Date.now() + 5000; // the poll must not move the slider under the user's hand
      el.querySelector(".alpha-out").textContent = Number(slider.value).toFixed(2);
    });
    slider.addEventListener("change", () => this.setAlpha(card, Number(slider.value)));
    return card;
  },

  async setAlpha(card, alpha) {
    const msg = card.el.querySelector(".camera-msg");
    msg.classList.remove("bad");
    msg.textContent = "applying…";
    try {
      const resp = await fetch(`${API}/streams/${encodeURIComponent(card.name)}`, {
        method: "PATCH",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ alpha }),
      });
      if (!resp.ok) {
        let message = await errorText(resp);
        if (resp.status === 401) message = needToken(message);
        throw new Error(message);
      }
      const status = await resp.json();
      card.busyUntil = 0;
      this.update(card, status);
      msg.textContent = `detail set to ${alpha.toFixed(2)}`;
    } catch (err) {
      msg.classList.add("bad");
      msg.textContent = err.message;
      card.busyUntil = 0;
    }
  },

  update(card, s) {
    const el = card.el;
    const badge = el.querySelector(".badge");
    const st = String(s.state || "unknown");
    badge.textContent = st;
    badge.className = `badge ${st.toLowerCase()}`;
    const set = (k, v) => { el.querySelector(`[data-k="${k}"]`).textContent = v; };
    set("input", res(pick(s, ["input_resolution", "input_size", "input"])));
    set("output", res(pick(s, ["output_resolution", "output_size", "output"])));
    set("fps", `${num(pick(s, ["fps_in"]), 1)} / ${num(pick(s, ["fps_out"]), 1)}`);
    const lat = s.latency && typeof s.latency === "object" ? s.latency : {};
    const p = (q) => ms(pick(s, [`latency_${q}`, `latency_${q}_s`, `${q}_latency`]) ?? lat[q]);
    set("p50", p("p50"));
    set("p95", `${p("p95")} / ${p("p99")}`);
    set("drops", num(pick(s, ["drops", "dropped", "frames_dropped"]), 0));
    if (Array.isArray(s.input_resolution)) card.inputSize = s.input_resolution;
    if (typeof s.alpha === "number" && Date.now() > card.busyUntil) {
      el.querySelector(".camera-alpha").value = String(s.alpha);
      el.querySelector(".alpha-out").textContent = s.alpha.toFixed(2);
    }
  },

  refreshSnapshot(card) {
    clearTimeout(card.snapTimer);
    if (!this.running || !document.body.contains(card.el)) return;
    const img = card.el.querySelector("img");
    const next = () => { card.snapTimer = setTimeout(() => this.refreshSnapshot(card), 1000); };
    // fetched (not <img src>) so that the request carries the API token
    fetch(`${API}/streams/${encodeURIComponent(card.name)}/snapshot.jpg`, { headers: authHeaders(), cache: "no-store" })
      .then((resp) => (resp.ok ? resp.blob().then((blob) => [blob, resp.headers.get("X-Ultrares-Frame-Index")]) : [null]))
      .then(([blob, index]) => {
        if (!blob) return; // no frame yet (or no token): keep the last one and try again
        const url = URL.createObjectURL(blob);
        const probe = new Image();
        probe.onload = () => {
          if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
          img.src = url;
          card.shownIndex = index == null ? null : Number(index); // the frame a zoom refers to
          show(img, true);
          show(card.el.querySelector(".waiting"), false);
        };
        probe.onerror = () => URL.revokeObjectURL(url);
        probe.src = url;
      })
      .catch(() => { /* the server is unreachable for now: try again */ })
      .finally(next);
  },
};

// ------------------------------------------------------------------ zoom: a box drawn on a picture (camera or clip)
const Zoom = {
  // the picture's drawn area inside its element (object-fit: contain letterboxes it)
  contentRect(el, naturalWidth, naturalHeight) {
    const b = el.getBoundingClientRect();
    const s = Math.min(b.width / naturalWidth, b.height / naturalHeight);
    const w = naturalWidth * s, h = naturalHeight * s;
    return { left: b.left + (b.width - w) / 2, top: b.top + (b.height - h) / 2, width: w, height: h };
  },

  // Box drawing on `surface` (the picture's container, holding `boxEl`): `target()` says where the
  // picture is ({rect, size: the frame's pixels, ref: what the box refers to}) or null when there is
  // none yet; `onBox(box, ref)` gets the box in the frame's pixels.
  drawOn(surface, boxEl, target, onBox) {
    let drag = null;
    const point = (e) => [clamp(e.clientX, drag.rect.left, drag.rect.left + drag.rect.width),
                          clamp(e.clientY, drag.rect.top, drag.rect.top + drag.rect.height)];
    const draw = (e) => {
      const [x, y] = point(e);
      const p = surface.getBoundingClientRect();
      Object.assign(boxEl.style, { left: `${Math.min(x, drag.x) - p.left}px`, top: `${Math.min(y, drag.y) - p.top}px`,
                                   width: `${Math.abs(x - drag.x)}px`, height: `${Math.abs(y - drag.y)}px` });
      show(boxEl, true);
    };
    surface.addEventListener("pointerdown", (e) => {
      const where = e.button === 0 ? target() : null;
      if (!where) return;
      drag = { ...where, x: 0, y: 0 };
      [drag.x, drag.y] = point(e);
      surface.setPointerCapture(e.pointerId);
      e.preventDefault();
      draw(e);
    });
    surface.addEventListener("pointermove", (e) => { if (drag) draw(e); });
    surface.addEventListener("pointerup", (e) => {
      if (!drag) return;
      const box = this.toFrame(drag, point(e));
      const ref = drag.ref;
      drag = null;
      if (box) onBox(box, ref); else show(boxEl, false);
    });
    surface.addEventListener("pointercancel", () => { drag = null; show(boxEl, false); });
  },

  attach(card) {
    const preview = card.el.querySelector(".preview");
    const img = preview.querySelector("img");
    const target = () => (img.hidden || !img.naturalWidth ? null : {
      rect: this.contentRect(img, img.naturalWidth, img.naturalHeight),
      // the box is in the camera's decoded pixels (the preview is its enhanced, larger picture)
      size: card.inputSize || [img.naturalWidth, img.naturalHeight], ref: card.shownIndex,
    });
    this.drawOn(preview, preview.querySelector(".zoom-box"), target, (box, index) => this.request(card, box, index));
  },

  // the drawn box in the frame's pixels
  toFrame(drag, [x1, y1]) {
    const r = drag.rect;
    const [fw, fh] = drag.size;
    const sx = fw / r.width, sy = fh / r.height;
    const x = Math.floor((Math.min(x1, drag.x) - r.left) * sx), y = Math.floor((Math.min(y1, drag.y) - r.top) * sy);
    const w = Math.min(fw - x, Math.round(Math.abs(x1 - drag.x) * sx)), h = Math.min(fh - y, Math.round(Math.abs(y1 - drag.y) * sy));
    return w >= 2 && h >= 2 ? [x, y, w, h] : null;
  },

  // a zoom's answer: {resp, blob} (the PNG) or {error, verdict} (the JSON refusal)
  async answer(resp) {
    if (resp.ok) return { resp, blob: await resp.blob() };
    let body = null;
    try { body = await resp.json(); } catch (_) { /* not JSON */ }
    const message = (body && body.error) || `${resp.status} ${resp.statusText || "error"}`;
    return { error: resp.status === 401 ? needToken(message) : message, verdict: body && body.verdict };
  },

  async fetchZoom(card, box, index, method) {
    const body = { box, frames: 16, method, ...(index == null ? {} : { reference: index }) };
    return this.answer(await fetch(`${API}/streams/${encodeURIComponent(card.name)}/zoom`, {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() }, body: JSON.stringify(body),
    }));
  },

  async request(card, box, index) {
    const n = this.start(card.el, box, `zooming into ${box.join(",")}…`);
    const [fused, single] = await Promise.all([this.fetchZoom(card, box, index, "fused"),
                                               this.fetchZoom(card, box, index, "single")]);
    if (n === Number(card.el.dataset.zoomRequest)) this.show(card.el, fused, single); // else a newer box was drawn
  },

  // a new zoom of `box` into the panel under `el`: its number (an older answer is then dropped)
  start(el, box, text) {
    const info = el.querySelector(".zoom-info");
    info.classList.remove("bad");
    info.textContent = text;
    el.dataset.zoomBox = box.join(",");
    el.dataset.zoomRequest = String(Number(el.dataset.zoomRequest || 0) + 1);
    return Number(el.dataset.zoomRequest);
  },

  // the fused crop beside the single frame, the provenance line, a link to save the PNG
  show(el, fused, single) {
    const info = el.querySelector(".zoom-info");
    this.showImage(el.querySelector(".zoom-single"), single.blob);
    this.showImage(el.querySelector(".zoom-fused"), fused.blob);
    show(el.querySelector(".zoom-pair"), !!(fused.blob || single.blob));
    const save = el.querySelector(".zoom-save");
    show(save, !!fused.blob);
    if (fused.blob) {
      const h = (k) => fused.resp.headers.get(`X-Ultrares-${k}`) || "";
      const match = /filename="([^"]+)"/.exec(fused.resp.headers.get("Content-Disposition") || "");
      save.href = el.querySelector(".zoom-fused").src;
      save.download = match ? match[1] : "zoom.png";
      info.textContent = `${h("Comment")} Frames ${h("Frames")}, median registration residual ${h("Residual")}, ` +
                         `${Number(h("Seconds")).toFixed(2)} s.`;
    } else {
      info.classList.add("bad");
      info.textContent = fused.verdict ? `Fused: ${fused.error}. Do not read characters from this box.` : fused.error;
    }
    el.dataset.zoom = el.dataset.zoomRequest;
  },

  showImage(img, blob) {
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    if (blob) img.src = URL.createObjectURL(blob); else img.removeAttribute("src");
    img.hidden = !blob;
  },
};

// ------------------------------------------------------------------ clip zoom: a box drawn on a frame of an uploaded clip
// The browser shows the clip (<video>, seeked to a time); the server fuses the box from the clip's
// frames around that time (POST /api/v1/zoom, the clip uploaded with each box).
/** The single-frame / fused pictures and the info line of a zoom (one markup for cameras and clips). */
function zoomPairHTML() {
  return $("zoom-pair").innerHTML;
}

const Clip = {
  file: null,
  url: null,
  shownTime: null, // the time of the frame the video shows (requestVideoFrameCallback), else currentTime

  init() {
    $("clip-zoom").innerHTML = zoomPairHTML();
    const video = $("clip-video");
    $("clip-input").addEventListener("change", () => this.choose($("clip-input").files[0]));
    video.addEventListener("loadedmetadata", () => this.loaded());
    video.addEventListener("error", () => this.fail());
    video.addEventListener("seeked", () => this.seeked());
    $("clip-time").addEventListener("input", () => this.seek(Number($("clip-time").value)));
    $("clip-at").addEventListener("change", () => {
      const t = parseFloat($("clip-at").value);
      if (Number.isFinite(t)) this.seek(t); // an emptied field is not a time
    });
    const target = () => (!this.file || !video.videoWidth ? null : {
      rect: Zoom.contentRect(video, video.videoWidth, video.videoHeight),
      size: [video.videoWidth, video.videoHeight], ref: this.shownTime ?? video.currentTime,
    });
    this.drawn = $("clip-box");
    Zoom.drawOn($("clip-stage"), this.drawn, target, (box, at) => this.request(box, at));
  },

  error(message) {
    $("clip-error").textContent = message;
    show($("clip-error"), !!message);
  },

  choose(file) {
    if (!file) return;
    this.error("");
    const limit = state.info && state.info.max_upload_bytes;
    if (limit && file.size > limit) {
      this.error(`${file.name} is ${fmtBytes(file.size)}; this server accepts up to ${fmtBytes(limit)}. ` +
                 "Cut the clip to the seconds around the vehicle first.");
      return;
    }
    if (this.url) URL.revokeObjectURL(this.url);
    this.file = file;
    this.url = URL.createObjectURL(file);
    this.shownTime = null;
    show(this.drawn, false);
    delete document.body.dataset.clipReady;
    $("clip-info").textContent = `${file.name} · ${fmtBytes(file.size)}`;
    $("clip-video").src = this.url;
  },

  loaded() {
    const video = $("clip-video");
    show($("clip-empty"), false);
    show(video, true);
    const time = $("clip-time");
    time.max = String(video.duration || 0);
    time.disabled = false;
    $("clip-at").disabled = false;
    $("clip-info").textContent = `${this.file.name} · ${video.videoWidth}×${video.videoHeight} · ` +
                                 `${(video.duration || 0).toFixed(2)} s · ${fmtBytes(this.file.size)}`;
    this.seek(0);
  },

  fail() {
    if (!this.file) return;
    show($("clip-video"), false);
    show($("clip-empty"), true);
    this.error(`This browser cannot show ${this.file.name} (its container or codec). Convert it to MP4 (H.264) ` +
               "or WebM, or zoom with `ultrares zoom` on the command line, which reads any format FFmpeg does.");
  },

  seek(t) {
    const video = $("clip-video");
    if (!video.videoWidth) return;
    video.currentTime = clamp(t, 0, video.duration || 0);
  },

  seeked() {
    const video = $("clip-video");
    const shown = (t) => {
      this.shownTime = t;
      $("clip-time").value = String(t);
      if (document.activeElement !== $("clip-at")) $("clip-at").value = t.toFixed(3); // not under the typing
      $("clip-time-value").textContent = `${t.toFixed(3)} s`;
      document.body.dataset.clipReady = t.toFixed(3);
    };
    this.shownTime = null;
    shown(video.currentTime);
    show(this.drawn, false); // a box belongs to the frame it was drawn on
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback((_, meta) => shown(meta.mediaTime));
  },

  async fetchZoom(box, at, method) {
    const form = new FormData();
    form.append("clip", this.file, this.file.name);
    form.append("at", at.toFixed(3));
    form.append("box", box.join(","));
    form.append("frames", $("clip-frames").value);
    form.append("method", method);
    try {
      return await Zoom.answer(await fetch(`${API}/zoom`, { method: "POST", headers: authHeaders(), body: form }));
    } catch (_) {
      return { error: "Could not reach the server. Is it still running?" };
    }
  },

  async request(box, at) {
    const el = $("clip-zoom");
    const n = Zoom.start(el, box, `zooming into ${box.join(",")} at ${at.toFixed(3)} s (uploading the clip)…`);
    const [fused, single] = await Promise.all([this.fetchZoom(box, at, "fused"), this.fetchZoom(box, at, "single")]);
    if (n === Number(el.dataset.zoomRequest)) Zoom.show(el, fused, single); // else a newer box was drawn
  },
};

function pick(obj, keys) {
  for (const k of keys) if (obj[k] !== undefined && obj[k] !== null) return obj[k];
  return undefined;
}
function res(v) {
  if (Array.isArray(v) && v.length === 2) return `${v[0]}×${v[1]}`;
  if (v && typeof v === "object" && "width" in v) return `${v.width}×${v.height}`;
  return v ? String(v).replace("x", "×") : "–";
}
function num(v, digits) { return typeof v === "number" ? v.toFixed(digits) : "–"; }
function ms(v) { return typeof v === "number" ? `${(v * 1000).toFixed(0)} ms` : "–"; }

// ------------------------------------------------------------------ start
document.addEventListener("DOMContentLoaded", () => {
  $("tab-image").addEventListener("click", () => selectTab("image"));
  $("tab-cameras").addEventListener("click", () => selectTab("cameras"));
  $("tab-clip").addEventListener("click", () => selectTab("clip"));
  if (location.hash === "#cameras") selectTab("cameras");
  if (location.hash === "#clip") selectTab("clip");
  initToken();
  initDropzone();
  initSettings();
  initViewer();
  Clip.init();
  setSplit(0.5);
  loadServerInfo();
});
