// The jetcron console: a page set over the control API. Every read and
// action is a control API request the console server makes on the signed-in
// person's behalf (POST /api/call/<endpoint>); the live feed is the events
// and results subjects, as server-sent events (GET /api/feed).
"use strict";

const FAILED = ["failed", "timed_out", "expired", "dead"];
const FEED_KEPT = 200;

const app = {
  me: null,
  feed: [],
  source: null,
  feedKey: null,
  page: null,
};

// ---- DOM ---------------------------------------------------------------

// el("td", {class: "x"}, "text", child): an element; text is never parsed
// as HTML.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v === true) e.setAttribute(k, "");
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function notice(text, isError) {
  const n = document.getElementById("notice");
  n.textContent = text;
  n.className = isError ? "error" : "";
  n.hidden = !text;
}

function stateCell(state, extra) {
  return el("span", { class: "state " + state }, state, extra ? " " : null, extra || null);
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function ago(iso) {
  const s = Math.round((Date.now() - new Date(iso)) / 1000);
  if (isNaN(s)) return "";
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function runKind(run) {
  if (!run) return "";
  if (run.shell !== undefined) return "shell";
  if (run.http !== undefined) return "http";
  if (run.handler !== undefined) return "handler " + run.handler;
  return JSON.stringify(run);
}

// ---- requests ------------------------------------------------------------

class Refused extends Error {}

async function request(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { "x-jetcron": "1" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let j;
  try {
    j = await r.json();
  } catch (_) {
    j = { ok: false, error: { message: "HTTP " + r.status } };
  }
  if (r.status === 401 && path !== "/login") {
    signedOut();
    throw new Refused("not signed in");
  }
  if (!j.ok) throw new Refused((j.error && j.error.message) || "HTTP " + r.status);
  return j;
}

// A control API call.
function api(endpoint, body) {
  return request("POST", "/api/call/" + endpoint, body || {});
}

// Runs an action, then shows what it did or why it failed.
async function act(button, what, fn) {
  button.disabled = true;
  try {
    const done = await fn();
    notice(what + (done ? ": " + done : ""), false);
  } catch (e) {
    notice(what + " failed: " + e.message, true);
  } finally {
    button.disabled = false;
  }
}

// ---- sign in ---------------------------------------------------------------

async function start() {
  document.getElementById("logout").addEventListener("click", async () => {
    await request("POST", "/logout").catch(() => {});
    signedOut();
  });
  window.addEventListener("hashchange", route);
  const r = await fetch("/api/session", { credentials: "same-origin" });
  const j = await r.json();
  if (j.ok) signedIn(j);
  else loginPage(j.login);
}

function signedIn(me) {
  app.me = me;
  document.getElementById("bar").hidden = false;
  document.getElementById("who").textContent = me.name + " (" + me.role + ")";
  route();
}

function signedOut() {
  app.me = null;
  if (app.source) app.source.close();
  app.source = null;
  app.feedKey = null;
  document.getElementById("bar").hidden = true;
  document.getElementById("who").textContent = "";
  fetch("/api/session", { credentials: "same-origin" })
    .then((r) => r.json())
    .then((j) => loginPage(j.login));
}

function loginPage(ways) {
  notice("", false);
  const form = el("div", { class: "login" }, el("h1", {}, "Sign in to jetcron"));
  const error = el("p", { id: "login-error", class: "state failed" });
  const go = async (body) => {
    error.textContent = "";
    try {
      const me = await request("POST", "/login", body);
      const s = await (await fetch("/api/session", { credentials: "same-origin" })).json();
      signedIn(s.ok ? s : me);
    } catch (e) {
      error.textContent = e.message;
    }
  };
  if (ways && ways.token) {
    const token = el("input", { id: "token", type: "password", autocomplete: "off" });
    form.append(
      el("label", { for: "token" }, "Console token"),
      token,
      el("p", {}, el("button", { id: "token-login", class: "primary", onclick: () => go({ token: token.value }) }, "Sign in")),
    );
  }
  if (ways && ways.token && ways.nats) form.append(el("div", { class: "or" }, "or, as a NATS user"));
  if (ways && ways.nats) {
    const user = el("input", { id: "user", autocomplete: "username" });
    const password = el("input", { id: "password", type: "password", autocomplete: "current-password" });
    form.append(
      el("label", { for: "user" }, "NATS user"),
      user,
      el("label", { for: "password" }, "Password"),
      password,
      el("p", {}, el("button", { id: "nats-login", class: "primary", onclick: () => go({ user: user.value, password: password.value }) }, "Sign in")),
    );
  }
  form.append(error);
  show(form);
}

// ---- live feed ---------------------------------------------------------------

// One feed at a time: a job's page follows its job only, the other pages
// every job. What arrives is kept (the events page shows it) and handed to
// the page shown.
function openFeed(job) {
  const key = job || "*";
  if (app.source && app.feedKey === key) return;
  if (app.source) app.source.close();
  const source = new EventSource("/api/feed" + (job ? "?job=" + encodeURIComponent(job) : ""));
  const keep = (kind, data) => {
    app.feed.unshift({ kind, data });
    app.feed.length = Math.min(app.feed.length, FEED_KEPT);
    if (app.page && app.page.live) app.page.live(kind, data);
  };
  const take = (kind) => (m) => {
    let data;
    try {
      data = JSON.parse(m.data);
    } catch (_) {
      return;
    }
    keep(kind, data);
  };
  source.addEventListener("event", take("event"));
  source.addEventListener("result", take("result"));
  source.addEventListener("dropped", (m) => keep("dropped", { count: Number(m.data), at: new Date().toISOString() }));
  source.addEventListener("open", () => document.body.setAttribute("data-feed", "open"));
  source.addEventListener("error", () => document.body.setAttribute("data-feed", "retrying"));
  app.source = source;
  app.feedKey = key;
}

// Calls fn `ms` after a call, once for every call in between: a page
// follows a busy job at most once per `ms`, and never misses the last call.
function throttle(fn, ms) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      fn();
    }, ms);
  };
}

// ---- pages -------------------------------------------------------------

function route() {
  if (!app.me) return;
  const hash = location.hash || "#/jobs";
  const parts = hash.slice(2).split("/");
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("current", a.dataset.nav === parts[0] || (parts[0] === "job" && a.dataset.nav === "jobs"));
  }
  notice("", false);
  const job = parts[0] === "job" && parts[1] ? decodeURIComponent(parts.slice(1).join("/")) : null;
  openFeed(job);
  if (job) app.page = jobPage(job);
  else if (parts[0] === "workers") app.page = workersPage();
  else if (parts[0] === "events") app.page = eventsPage();
  else app.page = jobsPage();
}

function jobsPage() {
  const page = { cursor: null, ids: new Set() };
  const state = el("select", { id: "filter-state" },
    el("option", { value: "" }, "every state"),
    el("option", { value: "active" }, "active"),
    el("option", { value: "paused" }, "paused"),
    el("option", { value: "invalid" }, "invalid"));
  const group = el("input", { id: "filter-group", placeholder: "group" });
  const body = el("tbody");
  const more = el("button", { id: "more", hidden: true }, "More");
  const table = el("table", { id: "jobs" },
    el("thead", {}, el("tr", {}, ["Job", "Schedule", "Zone", "Next fires", "State", "Last fire"].map((h) => el("th", {}, h)))),
    body);
  const load = async (append) => {
    const q = new URLSearchParams();
    if (state.value) q.set("state", state.value);
    if (group.value) q.set("group", group.value);
    if (append && page.cursor) q.set("cursor", page.cursor);
    let j;
    try {
      j = await request("GET", "/api/jobs?" + q);
    } catch (e) {
      notice("Cannot list jobs: " + e.message, true);
      return;
    }
    if (!append) {
      body.replaceChildren();
      page.ids.clear();
    }
    for (const job of j.jobs) {
      page.ids.add(job.id);
      body.append(jobRow(job));
    }
    if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No jobs.")));
    page.cursor = j.next || null;
    more.hidden = !page.cursor;
  };
  state.addEventListener("change", () => load(false));
  group.addEventListener("change", () => load(false));
  more.addEventListener("click", () => load(true));
  const reload = throttle(() => load(false), 3000);
  page.live = (kind, data) => {
    if (kind === "dropped" || (data && page.ids.has(data.job))) reload();
  };
  show(el("h1", {}, "Jobs"), el("div", { class: "filters" }, state, group), table, el("p", {}, more));
  load(false);
  return page;
}

function jobRow(job) {
  const st = job.invalid ? "invalid" : job.paused ? "paused" : "active";
  const next = (job.next_instants || []).map((i) => el("div", {}, i.local || when(i.utc)));
  const last = job.last_fire
    ? [stateCell(job.last_fire.state), el("div", { class: "muted" }, when(job.last_fire.instant))]
    : el("span", { class: "muted" }, "never");
  return el("tr", { "data-job": job.id },
    el("td", {}, el("a", { href: "#/job/" + encodeURIComponent(job.id) }, job.id)),
    el("td", {}, el("code", {}, job.schedule || "")),
    el("td", {}, job.timezone || ""),
    el("td", {}, st === "active" ? next : el("span", { class: "muted" }, "none")),
    el("td", { class: "job-state" }, stateCell(st), job.invalid ? el("div", { class: "muted" }, job.invalid) : null),
    el("td", { class: "last" }, last));
}

function jobPage(id) {
  const page = {};
  const head = el("div");
  const runs = el("tbody");
  const table = el("table", { id: "runs" },
    el("thead", {}, el("tr", {}, ["Fire", "Instant", "Cause", "State", ""].map((h) => el("th", {}, h)))),
    runs);
  const operator = app.me && app.me.role === "operator";

  // The actions are built once, so a live update never wipes what is
  // being typed into the trigger form; loading the head only shows or
  // hides pause and resume.
  const pause = el("button", { id: "pause", hidden: true }, "Pause");
  const resume = el("button", { id: "resume", hidden: true }, "Resume");
  const facts = el("div", { class: "card" });
  const loadHead = async () => {
    const [got, next] = await Promise.all([
      api("job.get", { id }),
      api("job.next", { id, count: 5 }).catch(() => null),
    ]);
    const spec = got.job;
    const st = got.invalid ? "invalid" : spec && spec.paused ? "paused" : "active";
    const list = el("dl", {},
      el("dt", {}, "State"), el("dd", { id: "job-state" }, stateCell(st)),
      el("dt", {}, "Schedule"), el("dd", {}, el("code", {}, spec ? spec.schedule : "")),
      el("dt", {}, "Zone"), el("dd", {}, spec ? spec.timezone : ""),
      el("dt", {}, "Group"), el("dd", {}, spec ? spec.group : ""),
      el("dt", {}, "Shards"), el("dd", {}, spec ? JSON.stringify(spec.shards) : ""),
      el("dt", {}, "Runs"), el("dd", {}, spec ? runKind(spec.run) : ""),
      el("dt", {}, "Next fires"), el("dd", { id: "next" },
        next && !next.paused && next.instants.length
          ? next.instants.map((i) => el("div", {}, i.local))
          : el("span", { class: "muted" }, "none")),
      el("dt", {}, "Revision"), el("dd", {}, got.revision));
    if (got.invalid) list.append(el("dt", {}, "Error"), el("dd", { class: "state invalid" }, got.invalid));
    facts.replaceChildren(list);
    pause.hidden = st !== "active";
    resume.hidden = st !== "paused";
  };

  const actions = () => {
    pause.addEventListener("click", () => act(pause, "Paused " + id, async () => { await api("job.pause", { id }); await loadHead(); }));
    resume.addEventListener("click", () => act(resume, "Resumed " + id, async () => {
      const r = await api("job.resume", { id });
      await loadHead();
      return r.skipped ? r.skipped + " instants skipped while paused" : "";
    }));
    const bar = el("div", { class: "actions" }, pause, resume);
    const shards = el("input", { id: "trigger-shards", placeholder: "shards: all, or 0,2", size: 16 });
    const payload = el("textarea", { id: "trigger-payload", placeholder: "payload (JSON); empty: the job's own" });
    const trigger = el("button", { id: "trigger", class: "primary" }, "Trigger");
    trigger.addEventListener("click", () => act(trigger, "Triggered " + id, async () => {
      const body = { id };
      if (shards.value.trim()) {
        body.shards = shards.value.split(",").map((s) => s.trim()).filter((s) => s).map(Number);
        if (body.shards.some((n) => !Number.isInteger(n) || n < 0)) throw new Error("shards: give numbers such as 0,2");
      }
      if (payload.value.trim()) {
        try {
          body.payload = JSON.parse(payload.value);
        } catch (e) {
          throw new Error("payload: not JSON: " + e.message);
        }
      }
      const r = await api("job.trigger", body);
      loadRuns();
      return "fire " + r.fire_id + ", shards " + r.shards.join(",");
    }));
    const del = el("button", { id: "delete", class: "danger" }, "Delete");
    del.addEventListener("click", () => {
      if (del.dataset.armed !== "yes") {
        del.dataset.armed = "yes";
        del.textContent = "Really delete " + id + "?";
        del.id = "delete-confirm";
        return;
      }
      act(del, "Deleted " + id, async () => {
        await api("job.delete", { id });
        location.hash = "#/jobs";
      });
    });
    bar.append(del);
    return el("div", {}, bar, el("div", { class: "card" },
      el("strong", {}, "Trigger a fire now"),
      el("div", { class: "actions" }, shards, trigger), payload));
  };

  const loadRuns = async () => {
    let r;
    try {
      r = await api("job.runs", { id, limit: 20 });
    } catch (e) {
      notice("Cannot read the runs: " + e.message, true);
      return;
    }
    runs.replaceChildren();
    for (const fire of r.runs) {
      let retry = null;
      if (operator && FAILED.includes(fire.state)) {
        retry = el("button", { class: "retry" }, "Retry failed shards");
        retry.addEventListener("click", () => act(retry, "Retried " + fire.fire_id, async () => {
          const x = await api("job.retry", { id, fire_id: fire.fire_id });
          loadRuns();
          return "fire " + x.fire_id + ", shards " + x.shards.join(",");
        }));
      }
      runs.append(el("tr", { class: "fire", "data-fire": fire.fire_id, "data-state": fire.state },
        el("td", {}, el("code", {}, fire.fire_id), fire.retry_of ? el("div", { class: "muted" }, "retry of " + fire.retry_of) : null),
        el("td", {}, when(fire.instant)),
        el("td", {}, fire.cause),
        el("td", {}, stateCell(fire.state)),
        el("td", {}, retry)));
      for (const s of fire.shards) {
        const detail = [
          s.attempts ? "attempt " + s.attempts : null,
          s.worker ? "on " + s.worker : null,
          s.duration_ms !== undefined && s.duration_ms !== null ? s.duration_ms + " ms" : null,
          s.exit_code !== undefined && s.exit_code !== null ? "exit " + s.exit_code : null,
        ].filter((x) => x).join(" · ");
        runs.append(el("tr", { class: "shard", "data-shard": s.shard, "data-state": s.state },
          el("td", {}, "shard " + s.shard),
          el("td", { colspan: 4 }, stateCell(s.state), " ", el("span", { class: "muted" }, detail),
            s.error ? el("div", { class: "state failed" }, s.error) : null,
            s.output_tail ? el("pre", { class: "output" }, s.output_tail) : null)));
      }
    }
    if (!r.runs.length) runs.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "No fires yet.")));
  };

  const reload = throttle(() => {
    loadRuns();
    loadHead().catch(() => {});
  }, 500);
  page.live = (kind, data) => {
    if (kind === "dropped" || (data && data.job === id)) reload();
  };
  show(el("h1", { id: "job-title" }, id), head, el("h2", {}, "Runs ", el("span", { class: "live" }, "live")), table);
  head.replaceChildren(facts, operator ? actions() : null);
  loadHead().catch((e) => notice("Cannot read " + id + ": " + e.message, true));
  loadRuns();
  return page;
}

function workersPage() {
  const page = {};
  const replicas = el("tbody");
  const groups = el("tbody");
  const workers = el("tbody");
  const load = async () => {
    let status, w;
    try {
      [status, w] = await Promise.all([api("status"), api("workers")]);
    } catch (e) {
      notice("Cannot read the workers: " + e.message, true);
      return;
    }
    replicas.replaceChildren(...status.replicas.map((r) => el("tr", {},
      el("td", {}, r.id), el("td", {}, r.host),
      el("td", {}, r.leader ? "leader" : r.warm ? "standby (warm)" : "standby"),
      el("td", {}, ago(r.last_heartbeat)))));
    groups.replaceChildren(...status.groups.map((g) => el("tr", {},
      el("td", {}, g.group), el("td", {}, g.jobs), el("td", {}, g.workers),
      el("td", {}, g.pending), el("td", {}, g.in_flight),
      el("td", {}, g.oldest_pending_age_ms ? Math.round(g.oldest_pending_age_ms / 1000) + " s" : ""))));
    const sorted = w.workers.slice().sort((a, b) => (a.group + a.id).localeCompare(b.group + b.id));
    workers.replaceChildren(...sorted.map((x) => el("tr", { "data-worker": x.id },
      el("td", {}, x.group), el("td", {}, x.id), el("td", {}, x.host),
      el("td", {}, x.running + " / " + x.concurrency),
      el("td", {}, (x.handlers || []).join(", ")),
      el("td", {}, ago(x.last_heartbeat)))));
    if (!sorted.length) workers.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No workers.")));
  };
  const table = (id, heads, body) => el("table", { id }, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))), body);
  show(
    el("h1", {}, "Workers"),
    table("workers", ["Group", "Worker", "Host", "Running", "Handlers", "Heartbeat"], workers),
    el("h2", {}, "Groups"),
    table("groups", ["Group", "Jobs", "Workers", "Waiting", "In flight", "Oldest waiting"], groups),
    el("h2", {}, "Schedulers"),
    table("replicas", ["Replica", "Host", "Role", "Heartbeat"], replicas));
  load();
  const timer = setInterval(() => {
    if (app.page === page) load();
    else clearInterval(timer);
  }, 5000);
  return page;
}

function feedRow(item) {
  const d = item.data || {};
  if (item.kind === "dropped") {
    return el("tr", { class: "dropped" },
      el("td", {}, when(d.at)), el("td", {}, "…"), el("td", {}),
      el("td", { class: "muted" }, d.count + " more in that second, not shown (the feed carries at most 100 a second)"));
  }
  if (item.kind === "result") {
    return el("tr", { class: "result", "data-job": d.job },
      el("td", {}, when(d.finished_at)),
      el("td", {}, "result"),
      el("td", {}, d.job),
      el("td", {}, stateCell(d.status), " shard " + d.shard + ", attempt " + d.attempt + " on " + d.worker,
        d.error ? el("div", { class: "state failed" }, d.error) : null));
  }
  const rest = Object.assign({}, d);
  delete rest.at;
  delete rest.kind;
  delete rest.job;
  return el("tr", { class: "event", "data-job": d.job || "" },
    el("td", {}, when(d.at)),
    el("td", {}, d.kind),
    el("td", {}, d.job || ""),
    el("td", {}, el("code", {}, JSON.stringify(rest))));
}

function eventsPage() {
  const page = {};
  const body = el("tbody");
  body.append(...app.feed.map(feedRow));
  page.live = (kind, data) => {
    body.prepend(feedRow({ kind, data }));
    while (body.children.length > FEED_KEPT) body.lastChild.remove();
  };
  show(
    el("h1", {}, "Events ", el("span", { class: "live" }, "live")),
    el("p", { class: "muted" }, "Events and results as they are stored, newest first."),
    el("table", { id: "feed", class: "feed" },
      el("thead", {}, el("tr", {}, ["Time", "Kind", "Job", "Detail"].map((h) => el("th", {}, h)))),
      body));
  return page;
}

start();
