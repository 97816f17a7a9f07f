"use strict";
// The qseek page: plain DOM calls over the JSON API, no framework, no build step.
const $ = (id) => document.getElementById(id);
const PAGE = 24;
const MAX_RERANK = 256; // the server's limit
let last = null; // { kind: "text" | "id" | "upload", value, offset }
let current = null; // the result shown in the dialog

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

function params(offset) {
  const p = new URLSearchParams({ k: PAGE, offset });
  const minProb = parseFloat($("min-prob").value);
  if (minProb > 0) { p.set("min_prob", minProb); p.set("rerank", Math.min(MAX_RERANK, Math.max(16, offset + PAGE))); }
  const under = $("under").value.trim();
  if (under) p.set("under", under);
  return p;
}

async function run(query, append) {
  const offset = append ? last.offset + PAGE : 0;
  const p = params(offset);
  let doc;
  $("status").textContent = "Searching…";
  try {
    if (query.kind === "text") {
      p.set("q", query.value);
      doc = await api("/api/search?" + p);
    } else if (query.kind === "id") {
      p.set("id", query.value);
      if (query.texts) p.set("texts", "true");
      doc = await api("/api/search/image?" + p);
    } else {
      doc = await api("/api/search/image?" + p, { method: "POST", body: query.value });
    }
  } catch (e) {
    $("status").textContent = e.message;
    return;
  }
  last = { ...query, offset };
  show(doc, append);
}

function show(doc, append) {
  const grid = $("grid"), texts = $("texts");
  if (!append) { grid.replaceChildren(); texts.replaceChildren(); }
  for (const hit of doc.results) {
    if (hit.text !== null) {
      const div = document.createElement("div");
      div.className = "text-hit";
      div.textContent = hit.text;
      const small = document.createElement("small");
      small.textContent = `score ${hit.score.toFixed(3)}` + (hit.itm_prob !== null ? ` · match ${(hit.itm_prob * 100).toFixed(0)}%` : "");
      div.append(small);
      texts.append(div);
      continue;
    }
    const card = document.createElement("button");
    card.className = "card";
    card.type = "button";
    card.dataset.id = hit.image_id;
    const img = document.createElement("img");
    img.loading = "lazy";
    img.src = hit.thumbnail_url;
    img.alt = hit.path || "";
    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.textContent = `#${hit.rank} ${hit.score.toFixed(3)}`;
    meta.append(score);
    if (hit.itm_prob !== null) {
      const prob = document.createElement("span");
      prob.className = "prob";
      prob.textContent = `${(hit.itm_prob * 100).toFixed(0)}%`;
      meta.append(prob);
    }
    card.append(img, meta);
    card.addEventListener("click", () => open(hit));
    grid.append(card);
  }
  const n = grid.children.length + texts.children.length;
  $("status").textContent = n ? `${n} results` + (doc.notes.length ? " — " + doc.notes.join("; ") : "") : "No results.";
  $("more").hidden = doc.results.length < PAGE;
}

function open(hit) {
  current = hit;
  $("detail-img").src = hit.image_url;
  const rows = [
    ["Path", hit.path],
    ["Copies", hit.copies.length ? hit.copies.join("\n") : "none"],
    ["Score", hit.score.toFixed(4)],
    ["ITC", hit.itc === null ? "–" : hit.itc.toFixed(4)],
    ["ITM logit", hit.itm_logit === null ? "–" : hit.itm_logit.toFixed(3)],
    ["Match", hit.itm_prob === null ? "–" : (hit.itm_prob * 100).toFixed(1) + "%"],
  ];
  const dl = $("detail-meta");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = k; dd.textContent = v;
    dl.append(dt, dd);
  }
  $("detail").showModal();
}

function searchByFile(file) {
  if (!file) return;
  $("q").value = "";
  run({ kind: "upload", value: file }, false);
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("q").value.trim();
  if (q) run({ kind: "text", value: q }, false);
});
$("more").addEventListener("click", () => last && run(last, true));
$("min-prob").addEventListener("input", () => {
  const v = parseFloat($("min-prob").value);
  $("min-prob-value").textContent = v > 0 ? v.toFixed(2) : "off";
});
$("min-prob").addEventListener("change", () => last && run(last, false));
$("under").addEventListener("change", () => last && run(last, false));
$("pick").addEventListener("change", (e) => searchByFile(e.target.files[0]));
$("like-this").addEventListener("click", () => {
  $("detail").close();
  run({ kind: "id", value: current.image_id }, false);
});
$("texts-for").addEventListener("click", () => {
  $("detail").close();
  run({ kind: "id", value: current.image_id, texts: true }, false);
});

// Drop a photo anywhere.
let dragDepth = 0;
document.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; $("drop-hint").hidden = false; });
document.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop-hint").hidden = true; } });
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  $("drop-hint").hidden = true;
  searchByFile(e.dataTransfer.files[0]);
});

// Infinite scroll: load the next page when the "more" button comes into view.
new IntersectionObserver((entries) => {
  if (entries.some((en) => en.isIntersecting) && !$("more").hidden && last) run(last, true);
}).observe($("more"));

// Indexing: start, cancel, and a live progress bar.
let polling = null;
async function poll() {
  let s;
  try { s = await api("/api/index"); } catch (e) { return; }
  const running = s.state === "running";
  $("progress").hidden = s.state === "idle";
  $("cancel").hidden = !running;
  $("progress-bar").max = Math.max(1, s.total);
  $("progress-bar").value = s.done;
  const eta = s.eta_seconds === null ? "" : ` · ETA ${Math.round(s.eta_seconds)} s`;
  $("progress-text").textContent = `${s.state}: ${s.done}/${s.total} · ${s.images_per_second.toFixed(1)} images/s${eta} · ${s.failures} failed` + (s.error ? ` · ${s.error}` : "");
  if (running && !polling) polling = setInterval(poll, 1000);
  if (!running && polling) { clearInterval(polling); polling = null; }
}
$("index-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await api("/api/index", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ folder: $("folder").value.trim() }) });
  } catch (err) {
    $("progress").hidden = false;
    $("progress-text").textContent = err.message;
    return;
  }
  poll();
});
$("cancel").addEventListener("click", async () => { await api("/api/index", { method: "DELETE" }); poll(); });
poll();
