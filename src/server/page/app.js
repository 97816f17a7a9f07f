"use strict";
// The qseek page: plain DOM calls over the JSON API, no framework, no build step.
//
// A search is one plain object (`blank()` lists its fields), and the page's address
// holds it in the API's own parameter names (`?q=a+dog&not=people&after=2023&sort=date`),
// so a link or a reload runs it again. Every new search pushes a history entry; Back and
// Forward restore the search and the inputs. Only the latest request's answer is shown.
const $ = (id) => document.getElementById(id);
const PAGE = 24;
const MAX_RERANK = 256; // the server's limits
const MAX_K = 1000;
const FILTERS = ["after", "before", "camera", "under", "near"];

let current = null; // the search shown (or being fetched)
let shown = null; // { next: the next offset, more: whether there may be more }
let detailHit = null; // the result shown in the dialog
let seq = 0; // the latest request's number: older answers are dropped
let controller = null; // aborts the request in flight when a newer one starts
let loading = false;

// Photos dropped or picked: not in the address, kept for Back and Forward in this tab.
const uploads = new Map();
let uploadCount = 0;

// Photo names (id → file name) seen in results, for the headings and chips of searches
// by photo (the API names an indexed query photo by its id only).
const names = new Map(JSON.parse(sessionStorage.getItem("qseek-names") || "[]"));
function remember(id, path) {
  if (id === null || !path) return;
  names.delete(id);
  names.set(id, path.split(/[\\/]/).pop());
}
function saveNames() {
  const all = [...names].slice(-500);
  try { sessionStorage.setItem("qseek-names", JSON.stringify(all)); } catch (e) { /* full: keep in memory */ }
}
const nameOf = (id) => names.get(Number(id)) || `photo #${id}`;

function blank() {
  return {
    q: "", also: [], like: [], not: [], notProb: "", texts: null, upload: null,
    after: "", before: "", camera: "", under: "", near: "", undated: false,
    sort: "score", minProb: 0, pages: 1,
  };
}

// `2:golden retriever` → [2, "golden retriever"], as the server splits weights.
function splitWeight(term) {
  const m = /^([+-]?(?:\d+\.?\d*|\.\d+)):(.+)$/.exec(term);
  if (!m || /^\d/.test(m[2])) return [1, term];
  return [parseFloat(m[1]), m[2]];
}
const likeId = (term) => splitWeight(term)[1].replace(/^id:/, "").trim();

// ---- The address ----------------------------------------------------------------

function toParams(s) {
  const p = new URLSearchParams();
  if (s.texts !== null) { p.set("id", s.texts); p.set("texts", "true"); }
  if (s.q) p.set("q", s.q);
  for (const t of s.also) p.append("also", t);
  for (const t of s.like) p.append("like", t);
  for (const t of s.not) p.append("not", t);
  if (s.notProb) p.set("not_prob", s.notProb);
  for (const f of FILTERS) if (s[f]) p.set(f, s[f]);
  if (s.undated) p.set("undated", "true");
  if (s.sort !== "score") p.set("sort", s.sort);
  if (s.minProb > 0) p.set("min_prob", s.minProb);
  if (s.pages > 1) p.set("page", s.pages);
  return p;
}

function fromParams(p) {
  const s = blank();
  const id = p.get("id");
  if (id && p.get("texts") === "true") s.texts = id;
  else if (id) s.like.push(id);
  s.q = (p.get("q") || "").trim();
  s.also = p.getAll("also").filter(Boolean);
  s.like.push(...p.getAll("like").filter(Boolean));
  s.not = p.getAll("not").filter(Boolean);
  s.notProb = p.get("not_prob") || "";
  for (const f of FILTERS) s[f] = (p.get(f) || "").trim();
  s.undated = p.get("undated") === "true";
  s.sort = p.get("sort") === "date" ? "date" : "score";
  s.minProb = Math.min(1, Math.max(0, parseFloat(p.get("min_prob")) || 0));
  s.pages = Math.min(Math.ceil(MAX_K / PAGE), Math.max(1, parseInt(p.get("page"), 10) || 1));
  return s;
}

function addressOf(s) {
  if (s.upload) return location.pathname;
  const p = toParams(s).toString();
  return location.pathname + (p ? "?" + p : "");
}

// What the search searches by (without it, the filters alone find nothing).
const hasSubject = (s) => s.texts !== null || !!s.upload || !!s.q || s.also.length > 0 || s.like.length > 0;

// A lone extra text becomes the sentence, which a search by text needs.
function normalize(s) {
  s = { ...s, also: [...s.also], like: [...s.like], not: [...s.not] };
  if (!s.q && !s.like.length && s.also.length && s.texts === null && !s.upload) s.q = s.also.shift();
  return s;
}

// ---- The inputs -----------------------------------------------------------------

function fill(s) {
  $("q").value = s.q;
  $("not").value = s.not.join(", ");
  for (const f of ["after", "before", "camera", "under"]) $(f).value = s[f];
  $("sort").value = s.sort;
  $("min-prob").value = s.minProb;
  showMinProb();
  countFilters();
}

// At phone width the filters fold away behind a button that counts those in use.
function countFilters() {
  const used = ["not", "after", "before", "camera", "under"].filter((id) => $(id).value.trim()).length
    + ($("sort").value !== "score") + (parseFloat($("min-prob").value) > 0);
  $("filters-toggle").textContent = used ? `Filters (${used})` : "Filters";
}

function showMinProb() {
  const v = parseFloat($("min-prob").value);
  $("min-prob-value").textContent = v > 0 ? v.toFixed(2) : "off";
}

// A search from the form: its sentence, "without" terms and filters; the photo and
// extra terms of `base` stay (they are chips: removed one by one).
function fromForm(base, keepUpload) {
  const s = blank();
  s.q = $("q").value.trim();
  s.not = $("not").value.split(",").map((t) => t.trim()).filter(Boolean);
  for (const f of ["after", "before", "camera", "under"]) s[f] = $(f).value.trim();
  s.sort = $("sort").value;
  s.minProb = parseFloat($("min-prob").value) || 0;
  if (base) {
    s.near = base.near; s.undated = base.undated; s.notProb = base.notProb;
    if (base.texts === null && !base.upload) { s.also = base.also; s.like = base.like; }
    if (keepUpload && base.upload) { s.upload = base.upload; s.q = ""; s.not = []; }
  }
  return s;
}

// ---- Searching ------------------------------------------------------------------

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

// The request for a search's results from `offset`, `k` of them.
function request(s, offset, k) {
  const p = new URLSearchParams({ k, offset });
  if (s.minProb > 0) p.set("min_prob", s.minProb);
  // Reranked candidates are the ones a minimum match or a "without" term can judge.
  if (s.minProb > 0 || s.not.length) p.set("rerank", Math.min(MAX_RERANK, Math.max(16, offset + k)));
  if (s.texts !== null) {
    p.set("id", s.texts);
    p.set("texts", "true");
    return ["/api/search/image?" + p];
  }
  for (const f of FILTERS) if (s[f]) p.set(f, s[f]);
  if (s.undated) p.set("undated", "true");
  if (s.sort !== "score") p.set("sort", s.sort);
  if (s.upload) return ["/api/search/image?" + p, { method: "POST", body: uploads.get(s.upload) }];
  if (s.q) p.set("q", s.q);
  for (const t of s.also) p.append("also", t);
  for (const t of s.like) p.append("like", t);
  for (const t of s.not) p.append("not", t);
  if (s.notProb) p.set("not_prob", s.notProb);
  return ["/api/search?" + p];
}

// Starts a new search: its inputs, its history entry (`push`: a new one), its results.
function go(s, push = true) {
  s = normalize(s);
  fill(s);
  const address = addressOf(s);
  const same = current && !current.upload && !s.upload && addressOf(current) === address;
  if (push && !same) history.pushState({ search: s }, "", address);
  else history.replaceState({ search: s }, "", address);
  if (same && loading) return; // the same search is on its way (a change, then a submit)
  run(s, false);
}

async function run(s, append) {
  const mine = ++seq;
  if (controller) controller.abort();
  controller = new AbortController();
  const signal = controller.signal;
  current = s;
  busy(true, !append);
  $("more").hidden = true;
  if (!append) {
    shown = null;
    summarize(s, null);
  }
  const gone = s.upload && !uploads.has(s.upload);
  if (!hasSubject(s) || gone) {
    busy(false);
    clearResults();
    $("status").textContent = gone ? "That photo is no longer here: drop it again." :
      isFiltered(s) ? "Type a sentence or drop a photo: the filters apply to its results." :
      "Type a sentence, or drop a photo anywhere on the page.";
    return;
  }
  const offset = append ? shown.next : 0;
  const k = append ? PAGE : Math.min(MAX_K, PAGE * s.pages);
  const [url, options] = request(s, offset, k);
  $("status").textContent = "Searching…";
  let doc;
  try {
    doc = await api(url, { ...options, signal });
  } catch (e) {
    if (mine !== seq) return; // a newer request took over
    busy(false);
    if (!append) clearResults();
    $("status").textContent = e.message;
    return;
  }
  if (mine !== seq) return; // an answer to an older request: not this search's
  shown = { next: offset + k, more: doc.results.length >= k };
  if (append) {
    s.pages = Math.ceil(shown.next / PAGE);
    history.replaceState({ search: s }, "", addressOf(s));
  }
  show(doc, append);
  summarize(s, doc);
  busy(false);
}

// While a request is on its way the results are marked busy, and those it will replace
// dimmed (`dim`; not those a next page adds to).
function busy(on, dim = on) {
  loading = on;
  $("grid").classList.toggle("busy", dim);
  $("grid").setAttribute("aria-busy", String(on));
}

function clearResults() {
  $("grid").replaceChildren();
  $("texts").replaceChildren();
  $("more").hidden = true;
}

// ---- Results --------------------------------------------------------------------

// `taken_at` as the camera recorded it (the photo's own local time, not this
// browser's): its parts, or null.
function takenParts(t) {
  const m = t && /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?(?:\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?/.exec(t);
  if (!m) return null;
  const [y, mo, d, h, mi] = m.slice(1, 6).map((x) => (x === undefined ? null : Number(x)));
  return { date: new Date(Date.UTC(y, mo - 1, d, h || 0, mi || 0)), time: h !== null, offset: m[7] || null };
}

function readableDate(t) {
  const p = takenParts(t);
  return p ? p.date.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric", timeZone: "UTC" }) : "";
}

function readableDateTime(t) {
  const p = takenParts(t);
  if (!p) return t || "";
  let s = p.date.toLocaleDateString(undefined, { weekday: "short", year: "numeric", month: "long", day: "numeric", timeZone: "UTC" });
  if (p.time) s += ", " + p.date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", timeZone: "UTC" });
  if (p.offset) s += p.offset === "Z" ? " (UTC)" : ` (UTC${p.offset})`;
  else if (p.time) s += " (local time)";
  return s;
}

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  e.append(...children.filter((c) => c !== null && c !== undefined && c !== ""));
  return e;
}

function show(doc, append) {
  const grid = $("grid"), texts = $("texts");
  if (!append) { grid.replaceChildren(); texts.replaceChildren(); }
  for (const hit of doc.results) {
    if (hit.text !== null) {
      const small = el("small", { textContent: `score ${hit.score.toFixed(3)}` + (hit.itm_prob !== null ? ` · match ${(hit.itm_prob * 100).toFixed(0)}%` : "") });
      texts.append(el("div", { className: "text-hit" }, hit.text, small));
      continue;
    }
    remember(hit.image_id, hit.path);
    const card = el("button", { className: "card", type: "button" });
    card.dataset.id = hit.image_id;
    const img = el("img", { loading: "lazy", src: hit.thumbnail_url, alt: hit.path || "" });
    const meta = el("div", { className: "meta" },
      el("span", { textContent: `#${hit.rank} ${hit.score.toFixed(3)}` }),
      hit.itm_prob !== null ? el("span", { className: "prob", textContent: `${(hit.itm_prob * 100).toFixed(0)}%` }) : null);
    const date = readableDate(hit.taken_at);
    const when = date ? el("time", { className: "date", dateTime: hit.taken_at, textContent: date }) : null;
    card.append(img, meta);
    if (when) card.append(when);
    card.addEventListener("click", () => openDetail(hit));
    grid.append(card);
  }
  saveNames();
  $("status").textContent = doc.notes.length ? doc.notes.join("; ") : (grid.children.length + texts.children.length ? "" : "No results.");
  $("more").hidden = !shown.more;
}

// ---- What is shown: the heading and the chips -----------------------------------

function isFiltered(s) {
  return FILTERS.some((f) => s[f]) || s.undated || s.minProb > 0 || s.not.length > 0 || s.sort !== "score";
}

const quoted = (t) => `“${t}”`;

function photoRef(id) {
  const img = el("img", { className: "term-thumb", src: `/api/images/${encodeURIComponent(id)}/thumbnail`, alt: "" });
  return el("span", { className: "photo-ref" }, img, nameOf(id));
}

function weighted(term, label) {
  const [w] = splitWeight(term);
  return w === 1 ? label : [`${w}× `, label].flat();
}

function dateWords(s) {
  if (s.after && s.before) return s.after === s.before ? `from ${s.after}` : `from ${s.after} to ${s.before}`;
  if (s.after) return `since ${s.after}`;
  if (s.before) return `until ${s.before}`;
  return "";
}

function nearWords(near) {
  const [lat, lon, km] = near.split(",").map((x) => x.trim());
  return `within ${km || 1} km of ${lat}, ${lon}`;
}

// The filters, in words (the heading's tail).
function filterWords(s) {
  const w = [];
  for (const t of s.not) w.push(`without ${quoted(splitWeight(t)[1])}`);
  const dates = dateWords(s);
  if (dates) w.push(dates);
  if (s.undated) w.push("without a date");
  if (s.camera) w.push(`by ${s.camera}`);
  if (s.near) w.push(nearWords(s.near));
  if (s.under) w.push(`in ${s.under}`);
  if (s.minProb > 0) w.push(`matching at least ${Math.round(s.minProb * 100)}%`);
  if (s.sort === "date") w.push("oldest first");
  return w;
}

function summarize(s, doc) {
  const heading = $("heading");
  heading.replaceChildren();
  if (!hasSubject(s) && !isFiltered(s)) {
    $("summary").hidden = true;
    return;
  }
  $("summary").hidden = false;
  // How many are shown ("24+": more to load), once they are.
  const count = doc ? $("grid").children.length + $("texts").children.length : null;
  const plus = doc && shown && shown.more ? "+" : "";
  if (!hasSubject(s)) {
    // Filters alone search nothing: their chips stay, to be used or removed.
  } else if (s.texts !== null) {
    const what = count === null ? "Texts" : `${count}${plus} text${count === 1 && !plus ? "" : "s"}`;
    heading.append(el("strong", { textContent: what }), " for ", photoRef(s.texts));
  } else {
    const what = count === null ? "Photos" : `${count}${plus} photo${count === 1 && !plus ? "" : "s"}`;
    heading.append(el("strong", { textContent: what }));
    const terms = [];
    if (s.upload) terms.push(["like", "the dropped photo"]);
    for (const t of s.like) terms.push(["like", weighted(t, photoRef(likeId(t)))]);
    if (s.q) terms.push(["for", weighted(s.q, quoted(splitWeight(s.q)[1]))]);
    for (const t of s.also) terms.push(["for", weighted(t, quoted(splitWeight(t)[1]))]);
    terms.forEach(([how, label], i) => {
      if (i === 0) heading.append(` ${how} `);
      else heading.append(how === "like" ? " + like " : " + ");
      heading.append(...[label].flat());
    });
    const words = filterWords(s);
    if (words.length) heading.append((terms.length ? ", " : " ") + words.join(", "));
  }
  chips(s);
}

// Each term and filter of the search, removable.
function chips(s) {
  const list = $("chips");
  list.replaceChildren();
  const chip = (kind, label, name, without) => {
    const remove = el("button", { type: "button", className: "remove", textContent: "×" });
    remove.setAttribute("aria-label", `Remove ${name}`);
    remove.addEventListener("click", () => go({ ...without(), pages: 1 }));
    const li = el("li", { className: "chip " + kind });
    li.append(...[label].flat(), remove);
    li.dataset.chip = name;
    list.append(li);
  };
  const minus = (key, i) => () => ({ ...s, [key]: s[key].filter((_, j) => j !== i) });
  if (s.texts !== null) {
    chip("term", ["texts for ", photoRef(s.texts)], `texts for ${nameOf(s.texts)}`, () => ({ ...s, texts: null }));
    return; // photo filters do not apply to texts
  }
  if (s.upload) chip("term", "the dropped photo", "the dropped photo", () => ({ ...blank(), ...s, upload: null }));
  s.like.forEach((t, i) => chip("term", weighted(t, ["like ", photoRef(likeId(t))]), `like ${nameOf(likeId(t))}`, minus("like", i)));
  if (s.q) chip("term", quoted(s.q), quoted(s.q), () => ({ ...s, q: "" }));
  s.also.forEach((t, i) => chip("term", ["+ ", quoted(t)], quoted(t), minus("also", i)));
  s.not.forEach((t, i) => chip("not", `without ${quoted(t)}`, `without ${quoted(t)}`, minus("not", i)));
  const dates = dateWords(s);
  if (s.after) chip("filter", s.before ? `from ${s.after}` : dates, `from ${s.after}`, () => ({ ...s, after: "" }));
  if (s.before) chip("filter", s.after ? `to ${s.before}` : dates, `to ${s.before}`, () => ({ ...s, before: "" }));
  if (s.undated) chip("filter", "without a date", "without a date", () => ({ ...s, undated: false }));
  if (s.camera) chip("filter", `camera: ${s.camera}`, `camera ${s.camera}`, () => ({ ...s, camera: "" }));
  if (s.near) chip("filter", nearWords(s.near), "near", () => ({ ...s, near: "" }));
  if (s.under) chip("filter", `in ${s.under}`, `folder ${s.under}`, () => ({ ...s, under: "" }));
  if (s.minProb > 0) chip("filter", `match ≥ ${Math.round(s.minProb * 100)}%`, "minimum match", () => ({ ...s, minProb: 0 }));
  if (s.sort === "date") chip("filter", "oldest first", "sort by date", () => ({ ...s, sort: "score" }));
}

// ---- The detail view ------------------------------------------------------------

function mapLink(lat, lon) {
  const la = lat.toFixed(5), lo = lon.toFixed(5);
  const a = el("a", {
    href: `https://www.openstreetmap.org/?mlat=${la}&mlon=${lo}#map=16/${la}/${lo}`,
    target: "_blank", rel: "noopener noreferrer", className: "map-link",
    textContent: `${la}, ${lo}`,
  });
  a.title = "Open this place on OpenStreetMap (leaves this machine)";
  return el("span", {}, a, el("small", { textContent: " on OpenStreetMap ↗" }));
}

function openDetail(hit) {
  detailHit = hit;
  $("detail-img").src = hit.image_url;
  $("detail-img").alt = hit.path || "";
  $("detail-title").textContent = hit.path ? hit.path.split(/[\\/]/).pop() : `photo #${hit.image_id}`;
  const px = hit.width && hit.height ? `${hit.width} × ${hit.height} px (${(hit.width * hit.height / 1e6).toFixed(1)} MP)` : "–";
  const rows = [
    ["Taken", hit.taken_at ? el("time", { dateTime: hit.taken_at, textContent: readableDateTime(hit.taken_at) }) : "–"],
    ["Camera", hit.camera || "–"],
    ["Lens", hit.lens || "–"],
    ["Size", px],
    ["Place", hit.gps ? mapLink(hit.gps[0], hit.gps[1]) : "–"],
    ["Path", hit.path],
    ["Copies", hit.copies.length ? hit.copies.join("\n") : "none"],
    ["Score", hit.score.toFixed(4)],
    ["ITC", hit.itc === null ? "–" : hit.itc.toFixed(4)],
    ["ITM logit", hit.itm_logit === null ? "–" : hit.itm_logit.toFixed(3)],
    ["Match", hit.itm_prob === null ? "–" : (hit.itm_prob * 100).toFixed(1) + "%"],
  ];
  const nots = current && current.not.length && Array.isArray(hit.not_probs) ? hit.not_probs : [];
  nots.forEach((p, i) => rows.push([`Matches “${splitWeight(current.not[i] || "")[1]}”`, (p * 100).toFixed(1) + "%"]));
  const dl = $("detail-meta");
  dl.replaceChildren();
  for (const [k, v] of rows) dl.append(el("dt", { textContent: k }), el("dd", {}, v));
  $("like-and-q").value = "";
  whyOff();
  $("why").hidden = whyTerms().length === 0;
  $("detail").showModal();
}

// ---- Why? The ITM head's heat map over the photo ----------------------------------

// The search's sentences, as `GET /api/explain` takes them: q, then also, then not.
function whyTerms() {
  if (!current || current.texts !== null) return [];
  const terms = [];
  if (current.q) terms.push(["q", current.q]);
  for (const t of current.also) terms.push(["also", t]);
  for (const t of current.not) terms.push(["not", t]);
  return terms;
}
let why = null; // the explanation shown: { id, doc }

function whyOff() {
  why = null;
  $("why").setAttribute("aria-pressed", "false");
  $("why-panel").hidden = true;
  $("detail-heat").hidden = true;
}

async function whyOn() {
  const hit = detailHit, terms = whyTerms();
  const p = new URLSearchParams({ id: String(hit.image_id) });
  for (const [k, v] of terms) p.append(k, v);
  $("why").setAttribute("aria-pressed", "true");
  $("why-panel").hidden = false;
  $("why-term").hidden = true;
  $("why-text").textContent = "Looking where the model looked…";
  let doc;
  try {
    const response = await fetch(`/api/explain?${p}`);
    doc = await response.json();
    if (!response.ok) throw new Error(doc.error ? doc.error.message : response.statusText);
  } catch (e) {
    if (detailHit === hit) $("why-text").textContent = `No explanation: ${e.message}`;
    return;
  }
  if (detailHit !== hit || $("why").getAttribute("aria-pressed") !== "true") return;
  why = { id: hit.image_id, doc };
  const select = $("why-term");
  select.replaceChildren(...doc.terms.map((t, i) => el("option", {
    value: String(i), textContent: (t.weight < 0 ? "not: " : "") + t.text,
  })));
  select.hidden = doc.terms.length < 2;
  drawWhy(0);
}

// A jet-like colour for t in [0, 1] (the server's overlay uses the same).
function heatColour(t) {
  const ramp = (c) => Math.round(Math.min(1, Math.max(0, 1.5 - Math.abs(4 * t - c))) * 255);
  return [ramp(3.5), ramp(2), ramp(0.5)];
}

function drawWhy(i) {
  if (!why) return;
  const t = why.doc.terms[i], g = why.doc.grid;
  const canvas = $("detail-heat"), img = $("detail-img");
  canvas.width = g;
  canvas.height = g;
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(g, g);
  for (let r = 0; r < g; r++) {
    for (let c = 0; c < g; c++) {
      const v = t.heat_max > 0 ? t.heat[r][c] / t.heat_max : 0;
      const [red, green, blue] = heatColour(v);
      const o = (r * g + c) * 4;
      data.data.set([red, green, blue, Math.round(0.7 * v * v * 255)], o);
    }
  }
  ctx.putImageData(data, 0, 0);
  // Over the photo as it is drawn inside its box (`object-fit: contain`); BLIP-2 sees it
  // squashed to a square, so the grid covers all of it.
  const w = img.clientWidth, h = img.clientHeight;
  const scale = Math.min(w / (img.naturalWidth || w), h / (img.naturalHeight || h)) || 1;
  const cw = (img.naturalWidth || w) * scale, ch = (img.naturalHeight || h) * scale;
  Object.assign(canvas.style, {
    left: `${img.offsetLeft + (w - cw) / 2}px`, top: `${img.offsetTop + (h - ch) / 2}px`,
    width: `${cw}px`, height: `${ch}px`,
  });
  canvas.hidden = false;
  const ru = t.itc.runner_up;
  $("why-text").textContent =
    `ITC ${t.itc.best.similarity.toFixed(4)} from query vector ${t.itc.best.query}` +
    (ru ? ` (runner-up ${ru.query}: ${ru.similarity.toFixed(4)})` : "") +
    `\nITM match ${(t.itm_prob * 100).toFixed(1)}% (logit ${t.itm_logit.toFixed(3)})` +
    `\nHeat: Grad-CAM of layer ${why.doc.layer}'s cross-attention; hottest patch row ${t.hottest[0]}, column ${t.hottest[1]}` +
    (why.doc.stored_features ? "" : " (the photo went through the image encoder)");
}

$("why").addEventListener("click", () => {
  if ($("why").getAttribute("aria-pressed") === "true") whyOff();
  else whyOn();
});
$("why-term").addEventListener("change", (e) => drawWhy(Number(e.target.value)));
const redrawWhy = () => { if (why && !$("detail-heat").hidden) drawWhy(Number($("why-term").value) || 0); };
window.addEventListener("resize", redrawWhy);
$("detail-img").addEventListener("load", redrawWhy);

// A new search about the photo in the dialog: the form's filters stay.
function aboutPhoto(change) {
  $("detail").close();
  remember(detailHit.image_id, detailHit.path);
  const s = fromForm(null);
  Object.assign(s, { q: "", near: current ? current.near : "", undated: current ? current.undated : false }, change);
  go(s);
}

// ---- Events ---------------------------------------------------------------------

function searchByFile(file) {
  if (!file) return;
  const key = ++uploadCount;
  uploads.set(key, file);
  go({ ...fromForm(null), q: "", not: [], upload: key });
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const s = fromForm(current && current.texts === null ? current : null);
  if (!hasSubject(s)) {
    $("status").textContent = "Type a sentence, or drop a photo anywhere on the page.";
    $("q").focus();
    return;
  }
  go(s);
});
// A filter changed: the search shown runs again with it (texts take no photo filter).
const refilter = () => {
  if (!current || current.texts !== null) return;
  go(fromForm(current, true));
};
for (const id of ["not", "after", "before", "camera", "under", "sort", "min-prob"]) $(id).addEventListener("change", refilter);
$("min-prob").addEventListener("input", showMinProb);
$("filters").addEventListener("input", countFilters);
$("filters-toggle").addEventListener("click", () => {
  const open = $("filters").classList.toggle("open");
  $("filters-toggle").setAttribute("aria-expanded", String(open));
});
$("more").addEventListener("click", () => more());
function more() {
  if (!current || loading || !shown || !shown.more) return;
  run(current, true);
}
$("pick").addEventListener("change", (e) => { searchByFile(e.target.files[0]); e.target.value = ""; });
$("like-this").addEventListener("click", () => aboutPhoto({ like: [String(detailHit.image_id)] }));
$("texts-for").addEventListener("click", () => {
  $("detail").close();
  remember(detailHit.image_id, detailHit.path);
  // The form's filters stay for the next search of photos (texts take none).
  go({ ...fromForm(null), q: "", texts: String(detailHit.image_id) });
});
$("like-and").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("like-and-q").value.trim();
  aboutPhoto({ like: [String(detailHit.image_id)], q: text });
});

window.addEventListener("popstate", (e) => {
  const s = e.state && e.state.search ? e.state.search : fromParams(new URLSearchParams(location.search));
  fill(s);
  if ($("detail").open) $("detail").close();
  run(s, false);
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
  if (entries.some((en) => en.isIntersecting)) more();
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

// ---- Duplicates -----------------------------------------------------------------
//
// Its own view (the address's `#duplicates`): groups of near-duplicate photos side by
// side, each photo with its size, date, similarity to the group's first and its folder.
// The page only lists them: qseek never deletes a photo.
const DUP_PAGE = 20;
let dups = null; // { threshold, under, next, total }: the groups shown
let dupSeq = 0;

function showDupsView(on) {
  $("dups").hidden = !on;
  document.querySelector("main").hidden = on;
  $("dups-open").setAttribute("aria-pressed", String(on));
  if (on && location.hash !== "#duplicates") history.pushState(history.state, "", location.pathname + location.search + "#duplicates");
  if (!on && location.hash === "#duplicates") history.pushState(history.state, "", location.pathname + location.search);
}

function folderLink(folder) {
  const a = el("a", { className: "folder", href: "file://" + folder.split("/").map(encodeURIComponent).join("/") + "/", textContent: folder });
  a.title = "Its folder (the browser may only let you copy this address into a file manager)";
  return a;
}

function dupMember(m, first) {
  remember(m.image_id, m.path);
  const name = m.path.split(/[\\/]/).pop();
  const photo = el("a", { className: "dup-photo", href: m.image_url, target: "_blank", rel: "noopener" },
    el("img", { loading: "lazy", src: m.thumbnail_url, alt: name }));
  const sim = first ? el("span", { className: "best", textContent: "best copy" })
    : el("span", { className: "sim", textContent: `similarity ${m.similarity.toFixed(3)}` });
  const date = readableDate(m.taken_at);
  const caption = el("figcaption", {},
    el("strong", { className: "name", textContent: name }),
    sim,
    el("span", { textContent: `${m.width} × ${m.height} px` }),
    date ? el("time", { dateTime: m.taken_at, textContent: date }) : el("span", { className: "undated", textContent: "no date" }),
    folderLink(m.folder),
    m.copies.length ? el("span", { className: "copies", textContent: `+ ${m.copies.length} identical ${m.copies.length === 1 ? "copy" : "copies"}`, title: m.copies.join("\n") }) : null);
  const fig = el("figure", { className: "dup-member" }, photo, caption);
  fig.dataset.id = m.image_id;
  return fig;
}

async function loadDups(append) {
  const mine = ++dupSeq;
  if (!append) {
    const t = $("dups-threshold").value.trim();
    dups = { threshold: t, under: $("dups-under").value.trim(), next: 0, total: 0 };
    $("dup-groups").replaceChildren();
  }
  const p = new URLSearchParams({ offset: dups.next, limit: DUP_PAGE });
  if (dups.threshold) p.set("threshold", dups.threshold);
  if (dups.under) p.set("under", dups.under);
  $("dups-status").textContent = "Looking for near-duplicates…";
  $("dups-more").hidden = true;
  let doc;
  try {
    doc = await api("/api/duplicates?" + p);
  } catch (e) {
    if (mine === dupSeq) $("dups-status").textContent = e.message;
    return;
  }
  if (mine !== dupSeq) return;
  for (const g of doc.groups) {
    const files = g.members.reduce((n, m) => n + 1 + m.copies.length, 0);
    const title = g.members.length === 1 ? `${files} identical files` : `${g.members.length} near-duplicates`;
    const group = el("section", { className: "dup-group" },
      el("h3", { textContent: title }),
      el("div", { className: "dup-row" }, ...g.members.map((m, i) => dupMember(m, i === 0))));
    $("dup-groups").append(group);
  }
  saveNames();
  dups.next = doc.offset + doc.groups.length;
  dups.total = doc.total_groups;
  $("dups-status").textContent = doc.total_groups
    ? `${doc.total_groups} group${doc.total_groups === 1 ? "" : "s"} among ${doc.images} photos (similarity ≥ ${doc.threshold})`
    : `No near-duplicates among ${doc.images} photos at similarity ≥ ${doc.threshold}.`;
  $("dups-more").hidden = dups.next >= dups.total;
}

$("dups-open").addEventListener("click", () => {
  const on = $("dups").hidden;
  showDupsView(on);
  if (on && !dups) loadDups(false);
});
$("dups-close").addEventListener("click", () => showDupsView(false));
$("dups-form").addEventListener("submit", (e) => { e.preventDefault(); loadDups(false); });
$("dups-more").addEventListener("click", () => loadDups(true));
window.addEventListener("hashchange", () => {
  const on = location.hash === "#duplicates";
  if (on !== !$("dups").hidden) showDupsView(on);
  if (on && !dups) loadDups(false);
});

// The search in the address, if any (a link, a reload).
{
  const s = normalize(fromParams(new URLSearchParams(location.search)));
  history.replaceState({ search: s }, "", addressOf(s));
  if (hasSubject(s) || isFiltered(s)) { fill(s); run(s, false); }
}
if (location.hash === "#duplicates") { showDupsView(true); loadDups(false); }
