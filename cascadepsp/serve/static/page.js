// cascadepsp serve: the before/after page. Plain JavaScript, no build step, talks only to this server.
"use strict";

const $ = (id) => document.getElementById(id);
const TINT_COARSE = [255, 106, 0];
const TINT_REFINED = [0, 180, 255];

const state = {
  photo: null,        // ImageBitmap of the photo
  photoFile: null,
  maskFile: null,     // an uploaded mask file, or null
  drawn: false,       // the painted mask is in use
  maskCanvas: null,   // natural-size black/white painted mask
  coarseAlpha: null,  // Uint8Array: per-pixel coarse mask strength 0-255 (for display)
  refinedAlpha: null,
  resultUrl: null,
};

function setStatus(text, kind) {
  document.body.dataset.state = kind || "idle";
  $("status").textContent = text;
}

function sizeCanvas(canvas, w, h) {
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
}

// --------------------------------------------------------------------------------------------- drawing

function drawPhoto(canvas) {
  const { width: w, height: h } = state.photo;
  sizeCanvas(canvas, w, h);
  canvas.getContext("2d").drawImage(state.photo, 0, 0);
}

// The photo with a mask laid over it in `tint`, opacity proportional to the mask's strength.
function drawOverlay(canvas, alpha, tint) {
  drawPhoto(canvas);
  if (!alpha) return;
  const ctx = canvas.getContext("2d");
  const img = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const px = img.data;
  for (let i = 0, j = 0; j < alpha.length; i += 4, j++) {
    const a = (alpha[j] / 255) * 0.6;
    if (a === 0) continue;
    px[i] = px[i] * (1 - a) + tint[0] * a;
    px[i + 1] = px[i + 1] * (1 - a) + tint[1] * a;
    px[i + 2] = px[i + 2] * (1 - a) + tint[2] * a;
  }
  ctx.putImageData(img, 0, 0);
}

// Strength 0-255 per pixel of a mask image as the browser decodes it (grey level; 0/1 masks scaled up).
function maskAlpha(source, w, h) {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  ctx.drawImage(source, 0, 0, w, h);
  const px = ctx.getImageData(0, 0, w, h).data;
  const out = new Uint8Array(w * h);
  let max = 0;
  for (let i = 0, j = 0; j < out.length; i += 4, j++) {
    const v = Math.max(px[i], px[i + 1], px[i + 2]) * (px[i + 3] / 255);
    out[j] = v;
    if (v > max) max = v;
  }
  if (max > 0 && max <= 1) for (let j = 0; j < out.length; j++) out[j] = out[j] ? 255 : 0;
  return out;
}

function renderViews() {
  if (!state.photo) return;
  drawPhoto($("photo-view"));
  const paint = $("paint-view");
  sizeCanvas(paint, state.photo.width, state.photo.height);
  drawOverlay($("coarse-view"), state.coarseAlpha, TINT_COARSE);
  drawOverlay($("refined-view"), state.refinedAlpha, TINT_REFINED);
  drawOverlay($("compare-coarse"), state.coarseAlpha, TINT_COARSE);
  drawOverlay($("compare-refined"), state.refinedAlpha, TINT_REFINED);
  updateSlider();
}

function updateSlider() {
  const v = Number($("slider").value);
  $("compare-refined").style.clipPath = `inset(0 0 0 ${v}%)`;
  $("divider").style.left = `${v}%`;
}

function clearResult() {
  state.refinedAlpha = null;
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = null;
  $("refined-mask").hidden = true;
  $("refined-mask").removeAttribute("src");
  $("download").hidden = true;
  $("timing").textContent = "";
}

function describeMaskSource() {
  $("mask-source").textContent = state.maskFile ? `mask: ${state.maskFile.name}`
    : state.drawn ? "mask: painted" : "no mask yet";
}

// --------------------------------------------------------------------------------------------- inputs

async function onPhoto() {
  const file = $("image").files[0];
  if (!file) return;
  state.photoFile = file;
  clearResult();
  try {
    state.photo = await createImageBitmap(file);
  } catch (e) {   // e.g. TIFF: no views, but the server can still refine it
    state.photo = null;
    state.maskCanvas = null;
    state.drawn = false;
    for (const id of ["photo-view", "paint-view", "coarse-view", "refined-view", "compare-coarse", "compare-refined"]) {
      sizeCanvas($(id), 1, 1);
    }
    describeMaskSource();
    setStatus(`this browser cannot show ${file.name}; Refine still sends it (no painting, no views)`);
    return;
  }
  state.maskCanvas = document.createElement("canvas");
  state.maskCanvas.width = state.photo.width;
  state.maskCanvas.height = state.photo.height;
  const mctx = state.maskCanvas.getContext("2d");
  mctx.fillStyle = "#000";
  mctx.fillRect(0, 0, state.photo.width, state.photo.height);
  state.drawn = false;
  $("paint-view").getContext("2d").clearRect(0, 0, $("paint-view").width, $("paint-view").height);
  if (state.maskFile) await onMask();
  else state.coarseAlpha = null;
  $("brush").max = String(Math.max(10, Math.round(Math.max(state.photo.width, state.photo.height) / 8)));
  $("brush").value = String(Math.max(4, Math.round(Math.max(state.photo.width, state.photo.height) / 40)));
  renderViews();
  describeMaskSource();
  setStatus("");
}

async function onMask() {
  const file = $("mask").files[0];
  if (!file) return;
  state.maskFile = file;
  state.drawn = false;
  clearResult();
  if (state.photo) {
    $("paint-view").getContext("2d").clearRect(0, 0, $("paint-view").width, $("paint-view").height);
    try {
      const bmp = await createImageBitmap(file);
      state.coarseAlpha = maskAlpha(bmp, state.photo.width, state.photo.height);
    } catch (e) {
      state.coarseAlpha = null;
    }
    renderViews();
  }
  describeMaskSource();
}

function paintAt(points) {
  const paint = $("paint-view").getContext("2d");
  const mask = state.maskCanvas.getContext("2d");
  const erase = $("erase").checked;
  const width = Number($("brush").value);
  for (const [ctx, colour] of [[paint, "rgba(255, 40, 40, 0.55)"], [mask, "#fff"]]) {
    ctx.save();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = width;
    if (ctx === paint) {
      ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
      ctx.strokeStyle = erase ? "#000" : colour;
    } else {
      ctx.strokeStyle = erase ? "#000" : colour;
    }
    ctx.beginPath();
    ctx.moveTo(points[0][0], points[0][1]);
    for (const [x, y] of points.slice(1)) ctx.lineTo(x, y);
    if (points.length === 1) ctx.lineTo(points[0][0] + 0.01, points[0][1]);
    ctx.stroke();
    ctx.restore();
  }
}

function setupPainting() {
  const canvas = $("paint-view");
  let last = null;
  const toPhoto = (ev) => {
    const r = canvas.getBoundingClientRect();
    return [(ev.clientX - r.left) * (canvas.width / r.width), (ev.clientY - r.top) * (canvas.height / r.height)];
  };
  canvas.addEventListener("pointerdown", (ev) => {
    if (!state.photo) { setStatus("choose a photo first", "error"); return; }
    canvas.setPointerCapture(ev.pointerId);
    if (state.maskFile) {   // painting replaces an uploaded mask
      state.maskFile = null;
      $("mask").value = "";
    }
    state.drawn = true;
    last = toPhoto(ev);
    paintAt([last]);
    clearResult();
    describeMaskSource();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!last) return;
    const p = toPhoto(ev);
    paintAt([last, p]);
    last = p;
  });
  const end = () => {
    if (!last) return;
    last = null;
    state.coarseAlpha = maskAlpha(state.maskCanvas, state.photo.width, state.photo.height);
    renderViews();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", () => {
    if (!state.photo) return;
    const mctx = state.maskCanvas.getContext("2d");
    mctx.fillStyle = "#000";
    mctx.fillRect(0, 0, state.photo.width, state.photo.height);
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    state.drawn = false;
    if (!state.maskFile) state.coarseAlpha = null;
    clearResult();
    renderViews();
    describeMaskSource();
  });
}

// --------------------------------------------------------------------------------------------- refine

async function maskBlob() {
  if (state.maskFile) return [state.maskFile, state.maskFile.name];
  if (state.drawn) {
    const blob = await new Promise((resolve) => state.maskCanvas.toBlob(resolve, "image/png"));
    return [blob, "painted_mask.png"];
  }
  return [null, null];
}

async function onSubmit(ev) {
  ev.preventDefault();
  if (!state.photoFile) { setStatus("choose a photo first", "error"); return; }
  const [mask, maskName] = await maskBlob();
  if (!mask) { setStatus("choose a mask file or paint one on the photo", "error"); return; }
  const body = new FormData();
  body.append("image", state.photoFile, state.photoFile.name);
  body.append("mask", mask, maskName);
  body.append("fast", $("fast").checked ? "true" : "false");
  body.append("L", $("L").value || "900");
  if ($("threshold").value !== "") body.append("threshold", $("threshold").value);
  body.append("output", "png");
  clearResult();
  setStatus("refining...", "busy");
  $("refine").disabled = true;
  const t0 = performance.now();
  try {
    const res = await fetch("/v1/refine", { method: "POST", body });
    if (!res.ok) {
      let detail = `${res.status} ${res.statusText}`;
      try { detail = `${res.status}: ${(await res.json()).detail}`; } catch (e) { /* not JSON */ }
      setStatus(detail, "error");
      return;
    }
    const blob = await res.blob();
    state.resultUrl = URL.createObjectURL(blob);
    const img = $("refined-mask");
    await new Promise((resolve, reject) => {
      img.onload = resolve;
      img.onerror = () => reject(new Error("the result is not a PNG the browser can show"));
      img.src = state.resultUrl;
    });
    img.hidden = false;
    if (state.photo) {
      const bmp = await createImageBitmap(blob);
      state.refinedAlpha = maskAlpha(bmp, state.photo.width, state.photo.height);
      renderViews();
    }
    const stem = state.photoFile.name.replace(/\.[^.]*$/, "") || "image";
    const link = $("download");
    link.href = state.resultUrl;
    link.download = `${stem}_mask.png`;
    link.hidden = false;
    const timing = res.headers.get("Server-Timing") || "";
    $("timing").textContent = `${((performance.now() - t0) / 1000).toFixed(1)} s round trip` +
      (timing ? ` (server: ${timing})` : "");
    const note = res.headers.get("X-Cascadepsp-Note");
    setStatus(note ? `done; note: ${note}` : "done", "done");
  } catch (e) {
    setStatus(`request failed: ${e.message}`, "error");
  } finally {
    $("refine").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("image").addEventListener("change", onPhoto);
  $("mask").addEventListener("change", onMask);
  $("form").addEventListener("submit", onSubmit);
  $("slider").addEventListener("input", updateSlider);
  setupPainting();
  updateSlider();
  document.body.dataset.ready = "1";
});
