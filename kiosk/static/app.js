// Kiosk screens. Plain JS, no build step: the device serves these files as they are.
// The page holds only masked personal data, and forgets it when the session ends.
(() => {
  "use strict";
  const $ = (sel) => document.querySelector(sel);
  const screen = $("#screen");
  let lang = "zh";
  let ui = { idle_timeout_s: 60, countdown_s: 10, hospital_name: "" };
  let view = "attract";
  let ctx = {};           // per-session state: masked patient, chosen dept/slot, booking
  let lastActivity = Date.now();

  const t = (k) => (I18N[lang][k] || k);
  const other = () => (lang === "zh" ? "en" : "zh");
  const yuan = (fen) => "¥" + (fen / 100).toFixed(2);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

  async function api(method, path, body) {
    const r = await fetch("/api" + path, {
      method, headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    const data = await r.json().catch(() => ({}));
    if (!r.ok) { const e = new Error((data.error && data.error.code) || ("http_" + r.status)); e.detail = data.error || {}; e.status = r.status; throw e; }
    return data;
  }

  function message(kind, zh, en, extra = "") {
    // Errors are always shown in both languages: the main one large, the other below.
    const main = lang === "zh" ? zh : en, sub = lang === "zh" ? en : zh;
    return `<div class="card msg ${kind}" data-testid="message"><h2>${esc(main)}</h2><div class="en">${esc(sub)}</div>${extra}</div>`;
  }

  function render() {
    $("#lang").textContent = t("lang");
    $("#hospital").textContent = ui.hospital_name;
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    const r = renders[view] || renders.attract;
    screen.innerHTML = r();
    screen.dataset.view = view;
    bind();
  }

  const renders = {
    attract: () => `<div class="attract"><div class="big" data-testid="prompt">${t("insert")}</div>
      <div class="sub">${t("insert_sub")}</div><div class="slotpic">💳</div></div>`,
    reading: () => `<div class="attract"><div class="big">${t("reading")}</div><div class="spinner"></div></div>`,
    identifying: () => `<div class="attract"><div class="big">${t("identifying")}</div><div class="spinner"></div></div>`,
    menu: () => `${patientCard()}<div class="grid">
      <button class="tile" data-go="depts" data-testid="menu-register"><div class="t">${t("menu_register")}</div><div class="s">${t("menu_register_s")}</div></button></div>`,
    depts: () => `<h1>${t("choose_dept")}</h1><div class="grid">${(ctx.departments || []).map((d) =>
      `<button class="tile" data-dept="${esc(d.code)}"><div class="t">${esc(lang === "zh" ? d.name : d.name_en)}</div><div class="s">${esc(d.location)}</div></button>`).join("")}</div>
      <div class="actions"><button class="secondary" data-go="menu">${t("back")}</button></div>`,
    slots: () => `<h1>${t("choose_slot")}</h1><div class="days">${days().map((d) =>
      `<button class="chip-day ${d.iso === ctx.day ? "sel" : ""}" data-day="${d.iso}">${esc(d.label)}</button>`).join("")}</div><div class="grid">${(ctx.slots || []).length ? ctx.slots.map((s) =>
      `<button class="tile" data-slot="${esc(s.slot_id)}" ${s.remaining > 0 ? "" : "disabled"}>
        <div class="t">${esc(s.doctor_name)} · ${esc(s.title)}</div>
        <div class="s">${esc(s.date)} ${esc(s.start)}–${esc(s.end)} · ${t("remaining")} ${s.remaining} · ${yuan(s.fee_fen)}</div>
        <div class="s">${esc(s.specialty || "")}</div></button>`).join("") : `<div class="card">${t("none")}</div>`}</div>
      <div class="actions"><button class="secondary" data-go="depts">${t("back")}</button></div>`,
    confirm: () => { const s = ctx.slot, p = ctx.patient || {}; return `<h1>${t("confirm")}</h1><div class="card">
      ${row(t("patient"), p.name)}${row(t("dept"), ctx.deptName)}${row(t("doctor"), s.doctor_name + " " + s.title)}
      ${row(t("time"), `${s.date} ${s.start}–${s.end}`)}${row(t("fee"), yuan(s.fee_fen))}
      ${row(t("pay_prepaid"), `${t("balance")} ${yuan(p.balance_fen || 0)}`)}</div>
      <div class="actions"><button class="secondary" data-go="slots">${t("back")}</button>
      <button class="primary" data-action="book" data-testid="confirm">${t("confirm_btn")}</button></div>`; },
    booking: () => `<div class="attract"><div class="big">${t("booking")}</div><div class="spinner"></div></div>`,
    done: () => { const b = ctx.booking; const printed = ctx.print && ctx.print.state === "printed"; return `
      <div class="card msg" data-testid="done"><h2>${t("done")}</h2>
      <div class="queue" data-testid="queue">${esc(b.queue_no)}</div><div style="text-align:center">${t("queue")}</div>
      ${row(t("dept"), b.dept_name)}${row(t("doctor"), b.doctor_name)}${row(t("time"), `${b.date} ${b.start}–${b.end}`)}${row(t("location"), b.location)}</div>
      ${printed ? message("", I18N.zh.take_slip, I18N.en.take_slip) :
        message("warn", I18N.zh.print_failed, I18N.en.print_failed, `<div class="actions"><button class="primary" data-action="reprint">${t("reprint")}</button></div>`)}
      <div class="actions"><button class="secondary" data-action="end">${t("home")}</button></div>`; },
    unknown: () => message("warn", I18N.zh.confirming, I18N.en.confirming),
    error: () => { const d = ctx.error || {}; return message("err", d.message_zh || I18N.zh.error, d.message || I18N.en.error,
      `<div class="actions"><button class="secondary" data-go="${ctx.patient ? "menu" : "attract"}">${t("ok")}</button></div>`); },
    offline: () => message("err", I18N.zh.offline + "：" + I18N.zh.offline_sub, I18N.en.offline + ": " + I18N.en.offline_sub),
  };

  const row = (k, v) => `<div class="row"><span class="k">${esc(k)}</span><span class="v">${esc(v)}</span></div>`;
  const patientCard = () => { const p = ctx.patient || {}; return `<div class="card" data-testid="patient">
    <h2>${t("hello")}，<span data-testid="patient-name">${esc(p.name)}</span></h2>
    ${row("ID", p.id_number)}${row(t("balance"), yuan(p.balance_fen || 0))}</div>`; };

  function bind() {
    screen.querySelectorAll("[data-go]").forEach((b) => b.onclick = () => go(b.dataset.go));
    screen.querySelectorAll("[data-dept]").forEach((b) => b.onclick = () => pickDept(b.dataset.dept));
    screen.querySelectorAll("[data-slot]").forEach((b) => b.onclick = () => pickSlot(b.dataset.slot));
    screen.querySelectorAll("[data-day]").forEach((b) => b.onclick = () => pickDay(b.dataset.day));
    screen.querySelectorAll("[data-action]").forEach((b) => b.onclick = () => actions[b.dataset.action]());
  }

  function show(v) { view = v; render(); }
  function fail(e) { ctx.error = e.detail || { message: String(e), message_zh: I18N.zh.error }; show("error"); }

  async function go(v) {
    if (v === "depts" && !ctx.departments) {
      try { ctx.departments = (await api("GET", "/departments")).departments; } catch (e) { return fail(e); }
    }
    show(v);
  }

  // Today and the next 7 days: same-day registration or booking ahead.
  function days() {
    const out = [], wd = I18N[lang].weekdays;
    const [y, m, dd] = (ui.today || new Date().toISOString().slice(0, 10)).split("-").map(Number);
    for (let i = 0; i < 8; i++) {
      const d = new Date(y, m - 1, dd + i);
      const iso = `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
      const label = i === 0 ? t("today") : i === 1 ? t("tomorrow") : `${wd[d.getDay()]} ${iso.slice(5)}`;
      out.push({ iso, label });
    }
    return out;
  }

  async function loadSlots() {
    try {
      ctx.slots = (await api("GET", `/slots?dept=${encodeURIComponent(ctx.dept)}&day=${ctx.day}`)).slots;
    } catch (e) { return fail(e); }
    show("slots");
  }

  async function pickDept(code) {
    const d = ctx.departments.find((x) => x.code === code);
    ctx.dept = code; ctx.day = days()[0].iso;
    ctx.deptName = d ? (lang === "zh" ? d.name : d.name_en) : code;
    await loadSlots();
  }

  async function pickDay(iso) { ctx.day = iso; await loadSlots(); }

  function pickSlot(id) { ctx.slot = ctx.slots.find((s) => s.slot_id === id); show("confirm"); }

  const actions = {
    async book() {
      show("booking");
      try {
        const r = await api("POST", "/register", { slot_id: ctx.slot.slot_id, insured: !!(ctx.patient && ctx.patient.insured) });
        ctx.booking = r.booking; ctx.print = r.print; show("done");
      } catch (e) {
        if (e.status === 504) return show("unknown");     // outcome unknown: never offer to pay again
        fail(e);
      }
    },
    async reprint() {
      try { ctx.print = (await api("POST", "/reprint", ctx.booking)).print; show("done"); } catch (e) { fail(e); }
    },
    async end() { await api("POST", "/session/end").catch(() => {}); reset(); },
  };

  function reset() { ctx = {}; show("attract"); }

  async function onIdentity() {
    show("identifying");
    try { const r = await api("POST", "/identify"); ctx.patient = r.session.patient; show("menu"); }
    catch (e) { fail(e); }
  }

  function onEvent(kind, data) {
    lastActivity = Date.now();
    if (kind === "card.inserted") { ctx = {}; show("reading"); }
    else if (kind === "card.identity") onIdentity();
    else if (kind === "card.error") { ctx = {}; ctx.error = data.error; show("error"); }
    else if (kind === "card.removed" || kind === "session.ended") { if (view !== "attract") { reset(); } }
    else if (kind === "edge.offline") show("offline");
  }

  function connect() {
    const es = new EventSource("/api/events");
    ["card.inserted", "card.identity", "card.error", "card.removed", "session.ended", "edge.offline"].forEach((k) =>
      es.addEventListener(k, (m) => { let d = {}; try { d = JSON.parse(m.data).data; } catch (_) {} onEvent(k, d); }));
    es.onerror = () => { $("#net").className = "dot off"; };
    es.onopen = () => { $("#net").className = "dot on"; };
  }

  // Inactivity: after idle_timeout_s - countdown_s show a countdown, then end the session.
  function tick() {
    $("#clock").textContent = new Date().toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour: "2-digit", minute: "2-digit", timeZone: ui.timezone || "Asia/Shanghai" });
    const idle = (Date.now() - lastActivity) / 1000, cd = $("#countdown");
    if (view === "attract") { cd.hidden = true; return; }
    const left = Math.ceil(ui.idle_timeout_s - idle);
    if (left <= ui.countdown_s) { cd.hidden = false; cd.textContent = `${t("timeout")} ${Math.max(left, 0)}s`; }
    else cd.hidden = true;
    if (left <= 0) actions.end();
  }

  document.addEventListener("pointerdown", () => { lastActivity = Date.now(); });
  $("#lang").onclick = () => { lang = other(); render(); };

  (async () => {
    try { ui = (await api("GET", "/config")).ui; lang = ui.language; } catch (_) {}
    render();
    try {
      const st = await api("GET", "/state");
      if (!st.online) show("offline");
      else if (st.session && st.session.state === "ready") onIdentity();
    } catch (_) {}
    connect();
    setInterval(tick, 1000); tick();
  })();
})();
