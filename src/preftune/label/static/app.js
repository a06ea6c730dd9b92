// preftune labelling page. Every model output is set with textContent: it is never parsed as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let annotator = params.get("annotator") || "";
let token = params.get("token") || "";
let task = null;
let choice = null;
let busy = false;

async function api(path, body) {
  const opts = body ? { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) } : {};
  const r = await fetch(path, opts);
  const data = await r.json();
  if (!r.ok) throw new Error(data.detail || r.statusText);
  return data;
}

function pick(value) {
  choice = value;
  for (const b of $("scale").children) b.setAttribute("aria-checked", String(Number(b.dataset.value) === value));
  $("next").disabled = false;
}

async function load() {
  $("error").textContent = "";
  const q = new URLSearchParams({ annotator, token });
  task = await api("/api/next?" + q);
  if (task.done) {
    $("task").hidden = true;
    $("done").hidden = false;
    $("progress").textContent = `Task ${task.total} of ${task.total}`;
    return;
  }
  $("task").hidden = false;
  $("progress").textContent = `Task ${task.index} of ${task.total}`;
  $("conversation").textContent = task.prompt;
  $("response-a").textContent = task.a;
  $("response-b").textContent = task.b;
  $("comment").value = "";
  $("scale").replaceChildren(...task.scale.map((label, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.value = String(i + 1);
    b.setAttribute("role", "radio");
    b.setAttribute("aria-checked", "false");
    b.textContent = `${i + 1}. ${label}`;
    b.addEventListener("click", () => pick(i + 1));
    return b;
  }));
  choice = null;
  $("next").disabled = true;
}

async function submit(skip) {
  if (busy || !task || task.done || (!skip && choice === null)) return;
  busy = true;
  try {
    await api("/api/label", { annotator, token, task_id: task.task_id, choice: skip ? null : choice, comment: $("comment").value });
    await load();
  } catch (e) {
    $("error").textContent = "Not saved: " + e.message + " (try again)";
  } finally {
    busy = false;
  }
}

document.addEventListener("keydown", (e) => {
  if (e.target === $("comment") || e.target.tagName === "INPUT") return;
  if (e.key >= "1" && e.key <= "8") pick(Number(e.key));
  else if (e.key === "Enter") { e.preventDefault(); submit(false); }
});

window.addEventListener("DOMContentLoaded", () => {
  $("next").addEventListener("click", () => submit(false));
  $("skip").addEventListener("click", () => submit(true));
  $("start").addEventListener("click", () => {
    annotator = $("name").value.trim();
    token = $("token").value.trim();
    if (annotator) { $("login").hidden = true; $("who").textContent = annotator; load().catch((e) => { $("error").textContent = e.message; }); }
  });
  if (annotator) { $("who").textContent = annotator; load().catch((e) => { $("error").textContent = e.message; }); }
  else $("login").hidden = false;
});
