// rlhf-gym labeling page. Model text is untrusted: it is only ever set with
// textContent, never parsed as HTML.
"use strict";

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const $ = (id) => document.getElementById(id);

const state = {
  labeler: (params.get("labeler") || "").trim(),
  mode: "rank",
  item: null,   // {id, prompt, responses, skipped_before}
  picks: [],    // response indices picked so far, best first
  busy: false,  // a request is in flight: ignore input so nothing is sent twice
};

async function api(path, body) {
  const init = {headers: {}, cache: "no-store"};
  if (token) init.headers["X-Token"] = token;
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) throw new Error((data && data.error) || `HTTP ${res.status}`);
  return data;
}

// The full label to send: in rank mode the last response is implied once K-1 are picked.
function label() {
  const k = state.item.responses.length;
  if (state.mode === "best") return state.picks.slice();
  if (state.picks.length === k - 1) {
    const rest = [...Array(k).keys()].filter((i) => !state.picks.includes(i));
    return state.picks.concat(rest);
  }
  return state.picks.slice();
}

function complete() {
  if (!state.item) return false;
  const n = label().length;
  return state.mode === "best" ? n === 1 : n === state.item.responses.length;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function showProgress(labeled, total) {
  $("progress").textContent = `${state.labeler}: ${labeled} of ${total} labeled`;
}

// Every labeler's estimated flip rate (GET /api/progress), as text cells only.
async function showReliability() {
  const data = await api("/api/progress");
  const rows = data.reliability.labelers.map((r) => {
    const tr = document.createElement("tr");
    const flip = r.flip_rate === null ? "-" : r.flip_rate.toFixed(3) + (r.se === null ? "" : ` ± ${r.se.toFixed(3)}`);
    const labels = Object.hasOwn(data.labelers, r.labeler) ? data.labelers[r.labeler] : 0;
    const cells = [r.labeler, String(labels), flip + (r.adversarial ? " (adversarial)" : ""),
      r.weight.toFixed(2)];
    for (const text of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  });
  $("reliability").replaceChildren(...rows);
  $("reliability-box").hidden = rows.length === 0;
}

function render() {
  const ranking = label();
  for (const li of $("responses").children) {
    const i = Number(li.dataset.index);
    const pos = ranking.indexOf(i);
    li.classList.toggle("picked", pos >= 0);
    li.setAttribute("aria-pressed", String(pos >= 0));
    li.querySelector(".rank").textContent = pos < 0 ? "" : (state.mode === "best" ? "best" : `#${pos + 1}`);
  }
  $("submit").disabled = state.busy || !complete();
}

function pick(i) {
  if (state.busy || !state.item || i < 0 || i >= state.item.responses.length) return;
  if (state.mode === "best") {
    state.picks = state.picks[0] === i ? [] : [i];
  } else if (state.picks.includes(i)) {
    state.picks = state.picks.filter((j) => j !== i);
  } else if (label().length < state.item.responses.length) {
    state.picks.push(i);
  }
  render();
}

function showItem(item) {
  state.item = item;
  state.picks = [];
  $("prompt").textContent = item.prompt;
  $("skipped-note").hidden = !item.skipped_before;
  const list = $("responses");
  list.replaceChildren();
  item.responses.forEach((text, i) => {
    const li = document.createElement("li");
    li.className = "response";
    li.dataset.index = String(i);
    li.tabIndex = 0;
    li.setAttribute("role", "button");
    const head = document.createElement("div");
    head.className = "head";
    const key = document.createElement("kbd");
    key.textContent = String(i + 1);
    const rank = document.createElement("span");
    rank.className = "rank";
    head.append(key, rank);
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    li.append(head, body);
    li.addEventListener("click", () => pick(i));
    list.append(li);
  });
  render();
}

async function loadNext() {
  state.busy = true;
  try {
    const data = await api(`/api/next?labeler=${encodeURIComponent(state.labeler)}`);
    state.mode = data.mode;
    $("instructions").textContent = data.mode === "best"
      ? "Click the best response (or press its number), then Submit."
      : "Click the responses from best to worst (or press their numbers), then Submit.";
    $("help-digits").textContent = data.mode === "best"
      ? "pick the best response (or click it)"
      : "pick responses from best to worst (or click them); picking a ranked one again removes it";
    showProgress(data.labeled, data.total);
    if (data.labeled % 10 === 0 || $("reliability-box").hidden) showReliability().catch(() => {});
    $("work").hidden = data.item === null;
    $("done").hidden = data.item !== null;
    if (data.item === null) {
      state.item = null;
      $("done-text").textContent = `All ${data.total} items are labeled. Thank you, ${state.labeler}.`;
    } else {
      showItem(data.item);
    }
    setStatus("", false);
  } catch (e) {
    setStatus(`Could not load the next item: ${e.message}`, true);
  } finally {
    state.busy = false;
    if (state.item) render();
  }
}

async function send(path, body, doneText) {
  if (state.busy || !state.item) return;
  state.busy = true;
  render();
  try {
    await api(path, body);
    state.busy = false;
    await loadNext();
    setStatus(doneText, false);
  } catch (e) {
    setStatus(`Not saved: ${e.message}`, true);
  } finally {
    state.busy = false;
    if (state.item) render();
  }
}

function submit() {
  if (!complete()) return;
  send("/api/label", {item_id: state.item.id, labeler: state.labeler, ranking: label()}, "Saved.");
}

function skip() {
  send("/api/skip", {item_id: state.item && state.item.id, labeler: state.labeler}, "Skipped.");
}

function start(name) {
  state.labeler = name.trim();
  if (!state.labeler) return;
  params.set("labeler", state.labeler);
  history.replaceState(null, "", `?${params}`);  // a reload resumes as the same labeler
  $("labeler").value = state.labeler;
  $("labeler").blur();  // keys now label instead of typing into the name field
  loadNext();
}

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.target instanceof HTMLInputElement) return;
  if (!state.item || state.busy) return;
  if (/^[1-9]$/.test(ev.key)) pick(Number(ev.key) - 1);
  else if (ev.key === "Backspace") { state.picks.pop(); render(); }
  else if (ev.key === "Escape") { state.picks = []; render(); }
  else if (ev.key === "Enter") submit();
  else if (ev.key === "s" || ev.key === "S") skip();
  else return;
  ev.preventDefault();
});

document.addEventListener("DOMContentLoaded", () => {
  $("who").addEventListener("submit", (ev) => { ev.preventDefault(); start($("labeler").value); });
  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("undo").addEventListener("click", () => { if (!state.busy) { state.picks.pop(); render(); } });
  $("reset").addEventListener("click", () => { if (!state.busy) { state.picks = []; render(); } });
  if (state.labeler) start(state.labeler);
  else { setStatus("Enter your name to start.", false); $("labeler").focus(); }
});
