// The annotation page: prompts -> /decode -> mask overlay -> refine -> accept -> /masks.
// Masks travel as COCO RLEs (column-major run lengths); in the page they are Uint8Arrays of
// height * width pixels in row-major order. No framework, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const PERSON_COLOURS = [[76, 175, 80], [156, 39, 176], [0, 188, 212], [205, 220, 57],
  [233, 30, 99], [121, 85, 72], [63, 81, 181], [0, 150, 136]];
const MODEL_COLOUR = [255, 152, 0];
const CURRENT_COLOUR = [30, 144, 255];

// One prompt state; every change makes a new one and pushes the old one on the undo stack.
const blank = () => ({ points: [], box: null, decode: null, selected: 0, overrides: null });

const state = {
  info: null, images: [], index: -1, loadId: 0, ready: false,
  image: null, width: 0, height: 0,
  saved: [], labels: null, savedLayer: null,
  cur: blank(), undo: [], started: null, decodeSeq: 0,
  tool: "prompt", brush: 10, drag: null, stroke: null, hover: null,
  curMask: null, curLayer: null, curImage: null,
};

// ------------------------------------------------------------------------------- server

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const json = (response.headers.get("Content-Type") || "").includes("json")
    ? await response.json() : null;
  if (!response.ok) {
    throw new Error((json && json.error) || `${response.status} ${response.statusText}`);
  }
  return json;
}

const imageUrl = (name, rest) => `/api/images/${encodeURIComponent(name)}/${rest}`;
const currentName = () => state.images[state.index].name;

function setStatus(code, text) {
  document.body.dataset.status = code;
  $("status").textContent = text;
}

// ---------------------------------------------------------------------------------- RLE

// Run lengths of a compressed COCO counts string (pycocotools' rleFrString).
function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// Calls visit(row-major index) for every foreground pixel of an RLE.
function forEachPixel(rle, visit) {
  const [h, w] = rle.size;
  const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
  let p = 0;
  counts.forEach((run, i) => {
    if (i % 2) {
      for (let q = p; q < p + run; q++) { const x = (q / h) | 0; visit((q - x * h) * w + x); }
    }
    p += run;
  });
}

function decodeRle(rle) {
  const mask = new Uint8Array(rle.size[0] * rle.size[1]);
  forEachPixel(rle, (i) => { mask[i] = 1; });
  return mask;
}

function encodeRle(mask, h, w) {  // uncompressed counts; the server compresses them
  const counts = [];
  let value = 0, run = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const bit = mask[y * w + x];
      if (bit !== value) { counts.push(run); run = 0; value = bit; }
      run++;
    }
  }
  counts.push(run);
  return { size: [h, w], counts };
}

// ------------------------------------------------------------------------------ drawing

function layer() {
  const c = document.createElement("canvas");
  c.width = state.width; c.height = state.height;
  return c;
}

function rebuildSaved() {  // the saved masks, later ones on top; model masks hatched
  const { width: w, height: h } = state;
  state.labels = new Int32Array(w * h).fill(-1);
  state.saved.forEach((ann, k) => forEachPixel(ann.segmentation, (i) => { state.labels[i] = k; }));
  const image = new ImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const k = state.labels[i];
    if (k < 0) continue;
    const model = state.saved[k].source === "model";
    const colour = model ? MODEL_COLOUR : PERSON_COLOURS[k % PERSON_COLOURS.length];
    const stripe = ((i % w) + ((i / w) | 0)) % 8 < 4;
    image.data[4 * i] = colour[0];
    image.data[4 * i + 1] = colour[1];
    image.data[4 * i + 2] = colour[2];
    image.data[4 * i + 3] = model ? (stripe ? 170 : 50) : 110;
  }
  state.savedLayer.getContext("2d").putImageData(image, 0, 0);
  const list = $("saved");
  list.replaceChildren(...state.saved.map((ann) => {
    const item = document.createElement("li");
    item.className = ann.source;
    const seconds = ann.seconds != null ? ` · ${ann.seconds} s` : "";
    item.textContent = `${ann.source} · ${ann.area} px${seconds}`;
    const remove = document.createElement("button");
    remove.textContent = "delete";
    remove.onclick = () => deleteSaved(ann.id);
    item.append(remove);
    return item;
  }));
  $("saved-count").textContent = `(${state.saved.length})`;
}

// The current mask: the selected candidate with brush (1) and eraser (2) strokes applied,
// recomputed within rect = [x0, y0, x1, y1] (default: everywhere).
function refreshCurrent(rect) {
  const { width: w, height: h, cur } = state;
  const [x0, y0, x1, y1] = rect || [0, 0, w, h];
  const base = cur.decode ? cur.decode.masks[cur.selected] : null;
  const overrides = cur.overrides, mask = state.curMask, data = state.curImage.data;
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) {
      const i = y * w + x;
      const o = overrides ? overrides[i] : 0;
      const value = o ? 2 - o : base ? base[i] : 0;
      mask[i] = value;
      data[4 * i] = CURRENT_COLOUR[0];
      data[4 * i + 1] = CURRENT_COLOUR[1];
      data[4 * i + 2] = CURRENT_COLOUR[2];
      data[4 * i + 3] = value ? 140 : 0;
    }
  }
  state.curLayer.getContext("2d").putImageData(state.curImage, 0, 0, x0, y0, x1 - x0, y1 - y0);
  if (!rect) renderCandidates();
  render();
}

function render() {
  if (!state.image) return;
  const scale = state.width / canvas.getBoundingClientRect().width || 1;
  ctx.clearRect(0, 0, state.width, state.height);
  ctx.drawImage(state.image, 0, 0);
  ctx.drawImage(state.savedLayer, 0, 0);
  ctx.drawImage(state.curLayer, 0, 0);
  ctx.lineWidth = 2 * scale;
  const box = state.drag && state.drag.moved ? state.drag.box : state.cur.box;
  if (box) {
    ctx.strokeStyle = "#ffeb3b";
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
  for (const [x, y, label] of state.cur.points) {
    ctx.beginPath();
    ctx.arc(x, y, 5 * scale, 0, 2 * Math.PI);
    ctx.fillStyle = label ? "#00e676" : "#ff1744";
    ctx.fill();
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
  if (state.tool !== "prompt" && state.hover) {
    ctx.beginPath();
    ctx.arc(state.hover[0], state.hover[1], state.brush, 0, 2 * Math.PI);
    ctx.strokeStyle = state.tool === "brush" ? "#fff" : "#f44";
    ctx.stroke();
  }
}

function renderCandidates() {
  const decode = state.cur.decode;
  $("candidates").replaceChildren(...(decode ? decode.scores : []).map((score, k) => {
    const button = document.createElement("button");
    button.textContent = `${k + 1}: score ${score.toFixed(3)} · ${decode.areas[k]} px`;
    button.classList.toggle("active", k === state.cur.selected);
    button.onclick = () => selectCandidate(k);
    return button;
  }));
}

function fit() {
  if (!state.image) return;
  const stage = $("stage").getBoundingClientRect();
  const zoom = Math.min(stage.width / state.width, stage.height / state.height);
  canvas.style.width = `${Math.floor(state.width * zoom)}px`;
  canvas.style.height = `${Math.floor(state.height * zoom)}px`;
  render();
}

// ------------------------------------------------------------------------------ prompts

function change(update) {  // a new prompt state; the old one goes on the undo stack
  if (state.started === null) state.started = performance.now();
  state.undo.push(state.cur);
  state.cur = { ...state.cur, ...update };
}

function addPoint(x, y, label) {
  const previous = state.cur.decode;
  change({ points: [...state.cur.points, [x, y, label]] });
  decode(previous ? { previous: previous.id, previous_candidate: state.cur.selected } : {});
}

function setBox(box) {
  change({ box });
  decode({});
}

async function decode(feedback) {
  const target = state.cur;
  if (!target.points.length && !target.box) return;
  const seq = ++state.decodeSeq;
  const multimask = target.points.length === 1 && !target.box;  // ambiguous: 3 candidates
  setStatus("decoding", "decoding…");
  try {
    const result = await api("POST", imageUrl(currentName(), "decode"),
      { points: target.points, box: target.box, multimask, ...feedback });
    if (seq !== state.decodeSeq || target !== state.cur) return;  // superseded
    const scores = result.candidates.map((c) => c.score);
    target.decode = {
      id: result.id, scores,
      masks: result.candidates.map((c) => decodeRle(c.mask)),
      areas: result.candidates.map((c) => c.area),
    };
    target.selected = scores.indexOf(Math.max(...scores));
    refreshCurrent();
    setStatus("mask", `decode ${result.latency_ms.toFixed(1)} ms (server)`);
  } catch (error) {
    setStatus("error", `decode failed: ${error.message}`);
  }
}

function selectCandidate(k) {
  if (!state.cur.decode || k >= state.cur.decode.masks.length) return;
  change({ selected: k });
  refreshCurrent();
}

function undo() {
  if (!state.undo.length) return;
  state.cur = state.undo.pop();
  refreshCurrent();
}

function clear() {
  if (!state.cur.points.length && !state.cur.box && !state.cur.overrides) return;
  change(blank());
  refreshCurrent();
}

// Brush (1) or eraser (2) discs from the stroke's last point to (x, y), into the overrides.
function strokeTo(x, y) {
  const value = state.tool === "brush" ? 1 : 2;
  const { width: w, height: h, brush: r } = state;
  const [lx, ly] = state.stroke;
  const steps = Math.max(1, Math.ceil(Math.hypot(x - lx, y - ly) / Math.max(1, r / 2)));
  const rect = [
    Math.max(0, Math.floor(Math.min(x, lx) - r)), Math.max(0, Math.floor(Math.min(y, ly) - r)),
    Math.min(w, Math.ceil(Math.max(x, lx) + r)), Math.min(h, Math.ceil(Math.max(y, ly) + r)),
  ];
  const o = state.cur.overrides;
  for (let s = 0; s <= steps; s++) {
    const cx = lx + (x - lx) * s / steps, cy = ly + (y - ly) * s / steps;
    for (let py = Math.max(0, Math.floor(cy - r)); py < Math.min(h, Math.ceil(cy + r)); py++) {
      for (let px = Math.max(0, Math.floor(cx - r)); px < Math.min(w, Math.ceil(cx + r)); px++) {
        if ((px + 0.5 - cx) ** 2 + (py + 0.5 - cy) ** 2 <= r * r) o[py * w + px] = value;
      }
    }
  }
  state.stroke = [x, y];
  refreshCurrent(rect);
}

function setTool(tool) {
  state.tool = state.tool === tool ? "prompt" : tool;
  $("tool-brush").classList.toggle("active", state.tool === "brush");
  $("tool-eraser").classList.toggle("active", state.tool === "eraser");
  canvas.style.cursor = state.tool === "prompt" ? "crosshair" : "none";
  render();
}

async function accept() {
  const mask = state.curMask;
  if (!mask || !mask.some((v) => v)) {
    setStatus("error", "nothing to accept: prompt a mask first");
    return;
  }
  const cur = state.cur;
  const seconds = state.started === null ? null
    : Math.round(performance.now() - state.started) / 1000;
  const body = {
    mask: encodeRle(mask, state.height, state.width),
    prompts: { points: cur.points, box: cur.box },
    seconds,
    source: "person",
    candidate: cur.decode ? cur.selected : null,
    score: cur.decode ? cur.decode.scores[cur.selected] : null,
    refined: cur.overrides !== null,
  };
  try {
    const saved = await api("POST", imageUrl(currentName(), "masks"), body);
    state.saved.push(saved);
    state.cur = blank(); state.undo = []; state.started = null;
    state.images[state.index].masks = state.saved.length;
    rebuildSaved(); refreshCurrent(); updateImageList(); refreshSession();
    setStatus("saved", `saved mask ${saved.id} (${saved.area} px, ${saved.seconds} s)`);
  } catch (error) {
    setStatus("error", `saving failed: ${error.message}`);
  }
}

async function deleteSaved(id) {
  try {
    await api("DELETE", `${imageUrl(currentName(), "masks")}/${id}`);
    state.saved = state.saved.filter((ann) => ann.id !== id);
    state.images[state.index].masks = state.saved.length;
    rebuildSaved(); render(); updateImageList(); refreshSession();
    setStatus("ready", `deleted mask ${id}`);
  } catch (error) {
    setStatus("error", `delete failed: ${error.message}`);
  }
}

// ------------------------------------------------------------------------------- mouse

function toImage(event) {
  const rect = canvas.getBoundingClientRect();
  const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
  const x = clamp((event.clientX - rect.left) * state.width / rect.width, state.width);
  const y = clamp((event.clientY - rect.top) * state.height / rect.height, state.height);
  return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
}

canvas.addEventListener("contextmenu", (event) => event.preventDefault());

canvas.addEventListener("mousedown", (event) => {
  if (!state.ready) return;
  event.preventDefault();
  const [x, y] = toImage(event);
  if (event.shiftKey && event.button === 0) {
    const k = state.labels[Math.min(Math.floor(y), state.height - 1) * state.width
      + Math.min(Math.floor(x), state.width - 1)];
    if (k >= 0) deleteSaved(state.saved[k].id);
  } else if (state.tool !== "prompt" && event.button === 0) {
    change({ overrides: state.cur.overrides ? state.cur.overrides.slice()
      : new Uint8Array(state.width * state.height) });
    state.stroke = [x, y];
    strokeTo(x, y);
  } else {
    state.drag = { button: event.button, start: [x, y], client: [event.clientX, event.clientY],
      moved: false, box: null };
  }
});

window.addEventListener("mousemove", (event) => {
  if (!state.ready) return;
  const [x, y] = toImage(event);
  state.hover = [x, y];
  if (state.stroke) { strokeTo(x, y); return; }
  const drag = state.drag;
  if (drag && drag.button === 0) {
    drag.moved ||= Math.hypot(event.clientX - drag.client[0], event.clientY - drag.client[1]) > 4;
    const [x0, y0] = drag.start;
    drag.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
  }
  render();
});

window.addEventListener("mouseup", (event) => {
  if (state.stroke) { state.stroke = null; return; }
  const drag = state.drag;
  state.drag = null;
  if (!drag || !state.ready) return;
  if (drag.moved) { setBox(drag.box); return; }
  const [x, y] = drag.start;
  if (drag.button === 0 || drag.button === 2) addPoint(x, y, drag.button === 0 ? 1 : 0);
});

// -------------------------------------------------------------------------------- keys

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
  const key = event.key;
  const actions = {
    1: () => selectCandidate(0), 2: () => selectCandidate(1), 3: () => selectCandidate(2),
    u: undo, Escape: clear, c: clear, Enter: accept, a: accept,
    b: () => setTool("brush"), e: () => setTool("eraser"),
    "[": () => setBrush(state.brush - 2), "]": () => setBrush(state.brush + 2),
    n: () => go(1), ArrowRight: () => go(1), p: () => go(-1), ArrowLeft: () => go(-1),
    d: toggleDone,
  };
  const action = (event.ctrlKey || event.metaKey) ? (key === "z" ? undo : null)
    : actions[key];
  if (!action) return;
  event.preventDefault();
  if (state.ready || key === "n" || key === "p" || key.startsWith("Arrow")) action();
});

function setBrush(size) {
  state.brush = Math.max(1, Math.min(80, size));
  $("brush-size").value = state.brush;
  render();
}

// ------------------------------------------------------------------------------ images

function updateImageList() {
  const select = $("image-list");
  select.replaceChildren(...state.images.map((image, i) => {
    const option = document.createElement("option");
    option.value = i;
    option.textContent = `${image.done ? "✓ " : ""}${image.name} (${image.masks})`;
    return option;
  }));
  select.value = state.index;
}

function go(step) {
  const next = state.index + step;
  if (next >= 0 && next < state.images.length) loadImage(next);
}

async function toggleDone() {
  const done = !state.images[state.index].done;
  try {
    await api("POST", imageUrl(currentName(), "done"), { done });
    $("done").checked = done;
    state.images[state.index].done = done;
    updateImageList();
  } catch (error) {
    setStatus("error", error.message);
  }
}

async function loadImage(index) {
  const loadId = ++state.loadId;
  state.index = index;
  state.ready = false;
  state.cur = blank(); state.undo = []; state.started = null;
  const { name, width, height } = state.images[index];
  updateImageList();
  setStatus("loading", `loading ${name}…`);
  try {
    const image = new Image();
    image.src = imageUrl(name, "pixels");
    await image.decode();
    if (loadId !== state.loadId) return;
    state.image = image; state.width = width; state.height = height;
    canvas.width = width; canvas.height = height;
    state.savedLayer = layer(); state.curLayer = layer();
    state.curImage = new ImageData(width, height);
    state.curMask = new Uint8Array(width * height);
    fit();
    const semi = state.info.mode === "semi";
    setStatus("embedding", semi ? "pre-filling with model masks, embedding…" : "embedding…");
    const embedded = await api("POST", imageUrl(name, "embed"));
    const masks = await api("GET", imageUrl(name, "masks"));
    if (loadId !== state.loadId) return;
    state.saved = masks.annotations;
    $("done").checked = masks.done;
    Object.assign(state.images[index], { masks: state.saved.length, done: masks.done });
    rebuildSaved(); refreshCurrent(); updateImageList();
    state.ready = true;
    const model = state.saved.filter((ann) => ann.source === "model").length;
    const fromModel = model ? ` (${model} from the model)` : "";
    setStatus("ready", `${name}: ${state.saved.length} masks${fromModel}` +
      ` · embedding ${embedded.cached} ${embedded.seconds.toFixed(2)} s`);
  } catch (error) {
    if (loadId === state.loadId) setStatus("error", `cannot open ${name}: ${error.message}`);
  }
}

async function refreshSession() {
  try {
    const stats = await api("GET", "/api/stats");
    const { annotator, session } = stats.current;
    const rows = stats.rows.filter((r) => r.annotator === annotator && r.session === session);
    const line = (r) => `${r.source}: ${r.masks} masks on ${r.images} images` +
      (r.seconds_per_mask != null ? `, ${r.seconds_per_mask.toFixed(1)} s/mask` : "");
    $("session").textContent = rows.length ? rows.map(line).join("; ") : "no masks yet";
  } catch (error) {
    $("session").textContent = error.message;
  }
}

async function start() {
  $("prev").onclick = () => go(-1);
  $("next").onclick = () => go(1);
  $("image-list").onchange = (event) => loadImage(Number(event.target.value));
  $("done").onchange = () => { $("done").checked = !$("done").checked; toggleDone(); };
  $("tool-brush").onclick = () => setTool("brush");
  $("tool-eraser").onclick = () => setTool("eraser");
  $("brush-size").oninput = (event) => setBrush(Number(event.target.value));
  $("accept").onclick = accept;
  $("undo").onclick = undo;
  $("clear").onclick = clear;
  window.addEventListener("resize", fit);
  try {
    state.info = await api("GET", "/api/info");
    $("mode").textContent = `${state.info.mode} · ${state.info.annotator}`;
    state.images = await api("GET", "/api/images");
  } catch (error) {
    setStatus("error", error.message);
    return;
  }
  refreshSession();
  if (!state.images.length) { setStatus("error", "the images folder has no images"); return; }
  loadImage(0);
}

start();
