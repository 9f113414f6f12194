// segdiff serve: the page's script. No library, nothing fetched from elsewhere.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "background") e.style.background = v; // CSSOM: allowed by the page's CSP, unlike a style attribute
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
};
const fmt = (v, digits = 4) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toFixed(digits) : String(v));
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(2) + " %");

let INFO = null;
// every progress value the page has shown, per job (read by the browser tests)
window.segdiffProgress = {};

async function getJSON(url, options) {
  const r = await fetch(url, options);
  let body = null;
  try { body = await r.json(); } catch (e) { body = { error: `${r.status} ${r.statusText}` }; }
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

// ---------------------------------------------------------------- tabs
function showTab() {
  let tab = location.hash.replace("#", "") || "predict";
  if (INFO && tab === "predict" && !INFO.predict && INFO.eval) tab = "eval";
  for (const name of ["predict", "eval"]) {
    $("#" + name).hidden = name !== tab;
    $("#tab-" + name).classList.toggle("active", name === tab);
  }
  if (tab === "eval" && INFO && INFO.eval && !EVAL) loadEval();
}
window.addEventListener("hashchange", showTab);

// ---------------------------------------------------------------- predict page
function setOptions(o) {
  $("#generations").value = o.generations;
  $("#steps").value = o.steps;
  $("#sampler").value = o.sampler;
  $("#variance").value = o.variance;
  samplerChanged();
}

// only DDPM has a variance to choose
function samplerChanged() {
  $("#variance").disabled = $("#sampler").value !== "ddpm";
}

function initPredict() {
  const m = INFO.model;
  if (!m) {
    $("#predict").replaceChildren(el("p", { class: "muted", text: "No model loaded: start segdiff serve with --checkpoint RUN to predict." }));
    return;
  }
  const kind = m.classes ? `${m.classes.length} classes` : "binary";
  $("#model-info").textContent = `run ${m.run} · ${m.weights} · ${m.device} · T = ${m.T} · ${m.size} px, ${m.predict_mode} · ${kind} · ${m.image_channels}-channel images`;
  for (const s of m.samplers) $("#sampler").append(el("option", { value: s, text: s }));
  for (const v of m.variances) $("#variance").append(el("option", { value: v, text: v }));
  $("#steps").max = m.T;
  $("#generations").max = INFO.limits.max_generations;
  const L = INFO.limits;
  const channels = m.image_channels === 3 ? "RGB or grey" : m.image_channels === 1 ? "one channel (grey)" : `${m.image_channels} channels (multi-channel TIFF)`;
  $("#limits").textContent = `PNG, JPEG or TIFF, ${channels} · up to ${L.max_images} images, ${L.max_upload_mb} MB per upload, ${(L.max_pixels / 1e6).toFixed(2)} M pixels per image`;
  if (m.classes) $("#opacity-label").firstChild.textContent = "Label opacity ";
  setOptions(m.defaults);
  $("#defaults").addEventListener("click", () => setOptions(m.defaults));
  $("#paper").addEventListener("click", () => setOptions(m.paper));
  $("#paper").textContent = `Paper protocol (${m.paper.generations} × ${m.paper.steps}, ${m.paper.sampler} ${m.paper.variance})`;
  $("#predict-form").addEventListener("submit", submitJob);
  $("#sampler").addEventListener("change", samplerChanged);
  $("#opacity").addEventListener("input", applyOpacity);
}

function applyOpacity() {
  const o = $("#opacity").value / 100;
  for (const img of document.querySelectorAll("img.over")) img.style.opacity = o;
}

async function submitJob(ev) {
  ev.preventDefault();
  $("#message").textContent = "";
  const files = $("#files").files;
  if (!files.length) { $("#message").textContent = "Choose one or more images first."; return; }
  const form = new FormData();
  for (const f of files) form.append("images", f, f.name);
  for (const k of ["generations", "steps", "sampler", "variance"]) if (!$("#" + k).disabled) form.append(k, $("#" + k).value);
  let job;
  try {
    job = await getJSON("/api/jobs", { method: "POST", body: form, headers: { "x-segdiff-client": "1" } });
  } catch (e) {
    $("#message").textContent = e.message;
    return;
  }
  const names = Array.from(files, (f) => f.name).join(", ");
  followJob(job, names);
}

function followJob(job, names) {
  const o = job.options;
  const panel = el("div", { class: "job", "data-job": job.id },
    el("h3", { text: `${names} — ${o.generations} generations × ${o.steps} steps, ${o.sampler}, ${o.variance} variance` }),
    el("div", { class: "status" }),
    el("progress", { max: "100", value: "0" }),
    el("div", { class: "results" }));
  $("#jobs").prepend(panel);
  window.segdiffProgress[job.id] = [];
  const tick = async () => {
    let s;
    try { s = await getJSON(`/api/jobs/${job.id}`); } catch (e) {
      panel.classList.add("error");
      $(".status", panel).textContent = e.message;
      return;
    }
    showStatus(panel, s);
    if (s.state === "queued" || s.state === "running") setTimeout(tick, 150);
  };
  showStatus(panel, job);
  setTimeout(tick, 100);
}

function showStatus(panel, s) {
  const status = $(".status", panel), bar = $("progress", panel);
  panel.dataset.state = s.state;
  if (s.state === "queued") {
    status.textContent = `Queued: position ${s.position} in the queue (${s.ahead} job${s.ahead === 1 ? "" : "s"} ahead)`;
  } else if (s.state === "running") {
    status.textContent = `Sampling image ${s.image + 1} of ${s.images}: ${s.done} of ${s.total} network calls (${s.percent.toFixed(1)} %)`;
  } else if (s.state === "done") {
    status.textContent = `Done in ${s.seconds.toFixed(1)} s (${s.total} network calls)`;
  } else if (s.state === "error") {
    panel.classList.add("error");
    status.textContent = `Failed: ${s.error}`;
  }
  bar.value = s.percent;
  panel.dataset.percent = s.percent;
  const log = window.segdiffProgress[s.id];
  if (log && log[log.length - 1] !== s.percent) log.push(s.percent);
  if (s.state === "done" && !panel.dataset.shown) {
    panel.dataset.shown = "1";
    bar.hidden = true;
    for (const r of s.results) $(".results", panel).append(resultView(r));
    applyOpacity();
  }
}

function figure(src, caption, cls = "") {
  return el("figure", {}, el("img", { src, alt: caption, class: "map " + cls }), el("figcaption", { text: caption }));
}

function resultView(r) {
  if (INFO.model.classes) return classResultView(r, INFO.model.classes);
  const f = r.files;
  const overlay = el("figure", {},
    el("div", { class: "overlay-box" },
      el("img", { src: f.input, alt: "image", class: "map" }),
      el("img", { src: f.overlay, alt: "mask overlay", class: "map over" })),
    el("figcaption", { text: "image + mask" }));
  const gens = el("div", { class: "generations" });
  r.generations.forEach((src, k) => gens.append(el("img", { src, alt: `generation ${k + 1}`, title: `generation ${k + 1}`, class: "generation" })));
  const stem = r.name.replace(/\.[^.]*$/, "");
  const link = (href, name, text) => el("a", { href, download: `${stem}_${name}`, class: "download", text });
  return el("div", { class: "result", "data-name": r.name },
    el("h4", { text: `${r.name} (${r.width} × ${r.height})` }),
    el("div", { class: "panels" },
      overlay,
      figure(f.mask, "mask", "mask"),
      figure(f.prob, "probability", "prob"),
      figure(f.uncertainty, "uncertainty (0 to 0.5)", "uncertainty")),
    el("div", {}, el("span", { class: "muted", text: `${r.generations.length} generations` }), gens),
    el("p", { class: "downloads" },
      "Download: ",
      link(f.mask, "mask.png", "mask (PNG)"),
      link(f.prob_tif, "prob.tif", "probability (TIFF)"),
      link(f.prob, "prob.png", "probability (PNG)"),
      link(f.uncertainty_tif, "uncertainty.tif", "uncertainty (TIFF)"),
      link(f.uncertainty, "uncertainty.png", "uncertainty (PNG)")));
}

// a legend of the classes: a swatch of each class's colour and its name
function classLegend(classes) {
  return el("p", { class: "class-legend" }, ...classes.flatMap((c, k) => [
    el("span", { class: "swatch", background: c.color, "data-class": String(k) }),
    el("span", { class: "class-name", text: c.name + (c.background ? " (background)" : "") })]));
}

// a K-class result: the label in the classes' colours over the image, the label with a legend, one class's
// probability (a class picker), entropy, disagreement, every generation's label; the files of segdiff predict
function classResultView(r, classes) {
  const f = r.files;
  const overlay = el("figure", {},
    el("div", { class: "overlay-box" },
      el("img", { src: f.input, alt: "image", class: "map" }),
      el("img", { src: f.overlay, alt: "label overlay", class: "map over" })),
    el("figcaption", { text: "image + label" }));
  const picker = el("select", { class: "class-picker", "aria-label": "class" });
  classes.forEach((c, k) => picker.append(el("option", { value: String(k), text: c.name })));
  const first = classes.findIndex((c) => !c.background);
  picker.value = String(first < 0 ? 0 : first);
  const probImg = el("img", { src: r.class_prob[Number(picker.value)], alt: "class probability", class: "map class-prob" });
  picker.addEventListener("change", () => { probImg.src = r.class_prob[Number(picker.value)]; });
  const gens = el("div", { class: "generations" });
  r.generations.forEach((src, k) => gens.append(el("img", { src, alt: `generation ${k + 1}`, title: `generation ${k + 1}`, class: "generation" })));
  const stem = r.name.replace(/\.[^.]*$/, "");
  const link = (href, name, text) => el("a", { href, download: `${stem}_${name}`, class: "download", text });
  const logK = Math.log(Math.max(classes.length, 2)).toFixed(2);
  return el("div", { class: "result", "data-name": r.name },
    el("h4", { text: `${r.name} (${r.width} × ${r.height})` }),
    el("div", { class: "panels" },
      overlay,
      figure(f.color, "label", "label"),
      el("figure", {}, probImg, el("figcaption", {}, "probability of ", picker, " (0 to 1)")),
      figure(f.uncertainty, `entropy (0 to log K = ${logK} nats)`, "uncertainty"),
      figure(f.disagreement, "disagreement of the generations (0 to 1)", "disagreement")),
    classLegend(classes),
    el("div", {}, el("span", { class: "muted", text: `${r.generations.length} generations (each one's label)` }), gens),
    el("p", { class: "downloads" },
      "Download: ",
      link(f.mask, "mask.png", "label (PNG, the masks' values)"),
      link(f.color, "color.png", "label in colours (PNG)"),
      link(f.prob_tif, "prob.tif", "class probabilities (TIFF, K pages)"),
      link(f.uncertainty_tif, "uncertainty.tif", "entropy (TIFF)"),
      link(f.uncertainty, "uncertainty.png", "entropy (PNG)"),
      link(f.disagreement_tif, "disagreement.tif", "disagreement (TIFF)"),
      link(f.disagreement, "disagreement.png", "disagreement (PNG)")));
}

// ---------------------------------------------------------------- evaluation browser
let EVAL = null;
let SORT = { key: "stem", dir: 1 };

async function loadEval() {
  try { EVAL = await getJSON("/api/eval"); } catch (e) { $("#eval-message").textContent = e.message; return; }
  const s = EVAL.summary;
  const rows = EVAL.kind === "classes" ? classSummaryRows(s) : [
    ["Summary", EVAL.file + (EVAL.policy ? ` (empty masks: ${EVAL.policy})` : "")],
    ["Images", s.n_images],
    ["IoU, per-image mean", pct(s.iou)], ["F1 / Dice, per-image mean", pct(s.f1)],
    ["IoU / F1, pooled over pixels", `${pct(s.iou_pooled)} / ${pct(s.f1_pooled)}`],
    ["BoundF, mean of 1-5 px", pct(s.boundf)], ["WCov", pct(s.wcov)],
  ];
  if (s.calibration !== undefined) rows.push(["Calibration (lower is better)", `${fmt(s.calibration, 5)} ± ${fmt(s.calibration_stderr, 5)}, ECE ${fmt(s.ece, 5)}`]);
  $("#eval-summary").replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) }))));
  if (EVAL.kind === "classes") showPerClass(EVAL.per_class);
  $("#eval-warnings").textContent = EVAL.warnings.join(" · ");
  const c = EVAL.colours;
  if (EVAL.kind === "classes") {
    $("#error-legend").replaceChildren("Error map:",
      el("span", { class: "swatch", background: c.wrong }), "wrong class",
      el("span", { class: "swatch", background: c.right }), "right class",
      el("span", { class: "swatch", background: c.ignored }), "ignored in the ground truth");
  } else {
    $("#error-legend").replaceChildren("Error map:",
      el("span", { class: "swatch", background: c.fp }), "false positive",
      el("span", { class: "swatch", background: c.fn }), "false negative",
      el("span", { class: "swatch", background: c.tp }), "true positive",
      el("span", { class: "swatch", background: c.tn }), "true negative");
  }
  // the table's columns come with the evaluation (K classes: one IoU column per class)
  $("#eval-table thead tr").replaceChildren(...EVAL.columns.map((col) => el("th", { "data-key": col.key, text: col.label })));
  for (const th of document.querySelectorAll("#eval-table th")) {
    th.addEventListener("click", () => {
      SORT = { key: th.dataset.key, dir: SORT.key === th.dataset.key ? -SORT.dir : 1 };
      renderTable();
    });
  }
  renderTable();
}

function renderTable() {
  const { key, dir } = SORT;
  const rows = [...EVAL.rows].sort((a, b) => {
    const x = a[key], y = b[key];
    if (x === y) return a.index - b.index;
    if (x === null || x === undefined) return 1; // missing values last
    if (y === null || y === undefined) return -1;
    return (typeof x === "string" ? x.localeCompare(y) : x - y) * dir;
  });
  for (const th of document.querySelectorAll("#eval-table th")) {
    if (th.dataset.key === key) th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
    else th.removeAttribute("aria-sort");
  }
  const digits = { stem: 0, calibration: 5, gt_pixels: 0, pred_pixels: 0 };
  const tbody = $("#eval-table tbody");
  tbody.replaceChildren(...rows.map((r) => {
    const tr = el("tr", { "data-index": r.index },
      ...EVAL.columns.map((col) => el("td", { text: col.key === "stem" ? r.stem : fmt(r[col.key], digits[col.key] ?? 4) })));
    tr.addEventListener("click", () => showRow(r));
    return tr;
  }));
}

function showRow(r) {
  for (const tr of document.querySelectorAll("#eval-table tbody tr")) tr.classList.toggle("selected", Number(tr.dataset.index) === r.index);
  $("#eval-detail").hidden = false;
  $("#eval-hint").hidden = true;
  const scores = EVAL.kind === "classes" ? `mIoU ${fmt(r.miou)}` + (r.miou_fg === undefined ? "" : `, without the background ${fmt(r.miou_fg)}`)
    : `IoU ${fmt(r.iou)}, F1 ${fmt(r.f1)}, BoundF ${fmt(r.boundf)}`;
  $("#eval-detail-title").textContent = `${r.stem}: ${scores}` + (r.calibration === null ? "" : `, calibration ${fmt(r.calibration, 5)}`);
  const names = { image: "image", gt: "ground truth", pred: "prediction", error: "error map", prob: "probability", uncertainty: "uncertainty" };
  if (EVAL.kind === "classes") Object.assign(names, { prob: "probability of the predicted class", uncertainty: "entropy" });
  $("#eval-panels").replaceChildren(...EVAL.kinds.map((k) => figure(`/api/eval/${r.index}/${k}`, names[k], "eval-" + k)));
}

// a K-class summary: the means over classes, with and without the background where it has one
function classSummaryRows(s) {
  const rows = [["Summary", EVAL.file], ["Images", s.n_images],
    ["mIoU / mDice, per-image means", `${pct(s.miou)} / ${pct(s.mdice)}`],
    ["mIoU / mDice, pooled over pixels", `${pct(s.miou_pooled)} / ${pct(s.mdice_pooled)}`]];
  if (s.background !== null && s.background !== undefined) {
    rows.push([`Without the background (${s.background})`, `mIoU ${pct(s.miou_fg)}, mDice ${pct(s.mdice_fg)}, pooled mIoU ${pct(s.miou_pooled_fg)}`]);
  } else {
    rows.push(["Background", s.foreground_means || "none"]);
  }
  rows.push(["BoundF, mean over classes", pct(s.boundf)], ["Pixel accuracy", pct(s.pixel_accuracy)], ["Ignored pixels", fmt(s.ignored_pixels, 0)]);
  return rows;
}

// the per-class scores of a K-class summary, each class with its colour
function showPerClass(classes) {
  const head = el("tr", {}, ...["Class", "IoU", "Dice", "IoU pooled", "Dice pooled", "BoundF", "GT pixels", "Predicted pixels"].map((t) => el("th", { text: t })));
  const body = classes.map((c) => el("tr", { "data-class": c.name },
    el("td", {}, el("span", { class: "swatch", background: c.color }), c.name),
    ...["iou", "dice", "iou_pooled", "dice_pooled", "boundf"].map((k) => el("td", { text: pct(c[k]) })),
    el("td", { text: fmt(c.gt_pixels, 0) }), el("td", { text: fmt(c.pred_pixels, 0) })));
  $("#eval-classes").replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
  $("#eval-classes").hidden = false;
}

// ---------------------------------------------------------------- start
async function start() {
  try { INFO = await getJSON("/api/info"); } catch (e) { $("#message").textContent = `cannot reach the server: ${e.message}`; return; }
  if (!INFO.eval) $("#tab-eval").classList.add("disabled");
  if (!INFO.predict) $("#tab-predict").classList.add("disabled");
  initPredict();
  document.body.dataset.ready = "1";
  showTab();
}
start();
