// Kiosk and cashier screens. Plain JS, no build step: the device serves these files as they are.
// The server runs the flows and pushes the whole view model over /api/events; this page renders
// it and posts what the person did to /api/action. It holds only masked personal data.
(() => {
  "use strict";
  const $ = (sel) => document.querySelector(sel);
  const main = $("#screen");
  let lang = "zh", elder = false, page = 0, pageKey = "";
  let ui = { idle_timeout_s: 60, countdown_s: 10, hospital_name: "", staff_lock_s: 300 };
  let V = null;                    // the last view from the server
  let uiRev = 0;                   // revision of the screen settings in `ui` (/api/config)
  let lastActivity = Date.now(), stateSince = Date.now(), stateKey = "";

  const t = (k) => (I18N[lang][k] ?? k);
  const both = (k) => ({ main: I18N[lang][k], sub: I18N[lang === "zh" ? "en" : "zh"][k] });
  const yuan = (fen) => "¥" + (Number(fen || 0) / 100).toFixed(2);
  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const row = (k, v, tid) => `<div class="row"><span class="k">${esc(k)}</span><span class="v"${tid ? ` data-testid="${tid}"` : ""}>${esc(v)}</span></div>`;
  const btn = (label, attrs, cls = "secondary") => `<button class="${cls}" ${attrs}>${esc(label)}</button>`;
  const perPage = () => (elder ? 4 : 8);
  // The platform's vocabulary in English where the glossary knows it; names stay as they are.
  const tr = (s) => {
    if (lang === "zh" || s == null || s === "") return s;
    const g = (window.GLOSSARY || {})[s];
    if (g) return g;
    for (const [re, fn] of window.GLOSSARY_PATTERNS || []) { const m = re.exec(s); if (m) return fn(m); }
    return s;
  };
  const fmt = (k, vars) => t(k).replace(/\{(\w+)\}/g, (_, n) => String(vars[n] ?? ""));
  // Pictures as inline SVG: kiosks rarely have an emoji font.
  const ICON = {
    card: `<svg viewBox="0 0 160 110" width="200" height="140" aria-hidden="true"><rect x="20" y="8" width="120" height="78" rx="10" fill="#e8f5ef" stroke="currentColor" stroke-width="5"/>
      <rect x="36" y="26" width="26" height="20" rx="3" fill="#d4a72c"/><line x1="36" y1="64" x2="120" y2="64" stroke="currentColor" stroke-width="5"/>
      <path d="M80 92 v14 M68 96 l12 12 l12 -12" stroke="currentColor" stroke-width="5" fill="none"/></svg>`,
    cardOut: `<svg viewBox="0 0 160 110" width="200" height="140" aria-hidden="true"><rect x="20" y="24" width="120" height="78" rx="10" fill="#e8f5ef" stroke="currentColor" stroke-width="5"/>
      <rect x="36" y="42" width="26" height="20" rx="3" fill="#d4a72c"/><line x1="36" y1="80" x2="120" y2="80" stroke="currentColor" stroke-width="5"/>
      <path d="M80 20 v-14 M68 16 l12 -12 l12 12" stroke="currentColor" stroke-width="5" fill="none"/></svg>`,
    qr: `<svg viewBox="0 0 70 70" width="120" height="120" aria-hidden="true" fill="currentColor"><rect x="4" y="4" width="22" height="22"/><rect x="44" y="4" width="22" height="22"/><rect x="4" y="44" width="22" height="22"/>
      <rect x="10" y="10" width="10" height="10" fill="#fff"/><rect x="50" y="10" width="10" height="10" fill="#fff"/><rect x="10" y="50" width="10" height="10" fill="#fff"/>
      <rect x="32" y="6" width="6" height="6"/><rect x="32" y="20" width="6" height="10"/><rect x="44" y="34" width="8" height="6"/><rect x="32" y="36" width="6" height="6"/>
      <rect x="56" y="44" width="8" height="8"/><rect x="44" y="56" width="8" height="8"/><rect x="36" y="50" width="6" height="14"/><rect x="58" y="58" width="6" height="8"/></svg>`,
    barcode: `<svg viewBox="0 0 120 60" width="200" height="100" aria-hidden="true" fill="currentColor">${[4, 10, 14, 22, 26, 34, 38, 42, 50, 56, 60, 68, 74, 78, 86, 90, 98, 104, 110].map((x, i) => `<rect x="${x}" y="4" width="${i % 3 ? 2 : 4}" height="52"/>`).join("")}</svg>`,
  };

  // ---- talking to the server ----------------------------------------------------------
  async function act(action, args = {}) {
    lastActivity = Date.now();
    try {
      const r = await fetch("/api/action", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ action, args }) });
      const d = await r.json();
      if (d.view) show(d.view);
    } catch (_) { /* the event stream reports the terminal being down */ }
  }
  const flow = (doIt, args = {}) => act("flow", { do: doIt, args });

  let resync = false, netTimer = 0;
  const screenKey = (v) => v.screen + "/" + (v.flow ? v.flow.name + "/" + v.flow.state : "");
  function show(v) {
    clearTimeout(netTimer);
    if (V && v.v < V.v && !resync) return;    // an older view than the one on screen
    resync = false;
    // A card going in or out, a scan, any new screen: the patient is there (the idle clock
    // counts these as it counts touches, or the first patient after a quiet spell is timed
    // out the moment their card goes in).
    if (!V || v.activity !== V.activity || screenKey(v) !== screenKey(V)) lastActivity = Date.now();
    // Central changed the screen settings (language, idle timeout, countdown, voice): take
    // them again from /api/config; the view only says that they changed.
    if (v.ui_rev !== undefined && v.ui_rev !== uiRev) loadConfig(true);
    V = v; render();
  }

  // ---- messages: both languages, what happened and what to do ----------------------------
  function message(kind, err, extra = "") {
    if (!err) return "";
    const zh = err.message_zh || "", en = err.message || "";
    const todoZh = err.todo_zh || "", todoEn = err.todo || "";
    const [m, s, tm, ts] = lang === "zh" ? [zh, en, todoZh, todoEn] : [en, zh, todoEn, todoZh];
    return `<div class="card msg ${kind}" data-testid="message" role="alert"><h2>${esc(m)}</h2>
      ${tm ? `<div class="todo">${esc(tm)}</div>` : ""}<div class="en">${esc(s)}${ts ? " · " + esc(ts) : ""}</div>${extra}</div>`;
  }
  const fixed = (kind, k, todoK, extra = "") => {
    const a = both(k), b = todoK ? both(todoK) : { main: "", sub: "" };
    return message(kind, lang === "zh" ? { message_zh: a.main, message: a.sub, todo_zh: b.main, todo: b.sub }
      : { message: a.main, message_zh: a.sub, todo: b.main, todo_zh: b.sub }, extra);
  };
  // Honest waiting: any screen that waits on the hospital says so once it takes long (tick()).
  const SLOW_MS = 2500;
  const slowNote = () => `<div class="slow" data-testid="slow" role="status" ${Date.now() - stateSince > SLOW_MS ? "" : "hidden"}>${esc(t("slow"))}</div>`;
  const waiting = (k) => `<div class="attract wait"><div class="big">${esc(t(k))}</div><div class="spinner"></div>${slowNote()}</div>`;
  // A kiosk has no keyboard: typed fields get an on-screen keypad (a desk terminal has one).
  const keypad = (name, dot = false) => V.role === "cashier" ? "" : `<div class="keypad" data-keypad="${name}" data-testid="keypad-${name}">
    ${["1", "2", "3", "4", "5", "6", "7", "8", "9", dot ? "." : "clear", "0", "del"].map((k) =>
      `<button type="button" class="key${k.length > 1 ? " fn" : ""}" data-key="${k}" data-testid="key-${k}">${esc(k === "del" ? "⌫ " + t("key_del") : k === "clear" ? t("key_clear") : k)}</button>`).join("")}</div>`;
  const scanBox = (tid = "scan-input") => `<form class="scanbox" data-scan><input data-testid="${tid}" name="code" autocomplete="off" inputmode="numeric" placeholder="${esc(t("scan_here"))}">
    <button class="primary small" type="submit">${esc(t("scan_ok"))}</button></form>${keypad("code")}`;

  // ---- page-through lists (elder mode shows fewer per screen) ----------------------------
  function paged(key, items, n = perPage()) {
    if (key !== pageKey) { pageKey = key; page = 0; }
    const pages = Math.max(1, Math.ceil(items.length / n));
    page = Math.min(page, pages - 1);
    const nav = pages > 1 ? `<div class="pager">${btn(t("prev_page"), `data-page="-1" ${page ? "" : "disabled"}`)}
      <span>${page + 1} / ${pages}</span>${btn(t("next_page"), `data-page="1" ${page < pages - 1 ? "" : "disabled"}`)}</div>` : "";
    return { items: items.slice(page * n, page * n + n), nav };
  }

  // ---- screens ----------------------------------------------------------------------
  const patientCard = () => {
    const p = V.patient || {}, i = V.identity || {};
    return `<div class="card patient" data-testid="patient"><div><h2>${esc(t("hello"))}${esc(t("comma"))}<span data-testid="patient-name">${esc(p.name || i.name)}</span></h2>
      <div class="muted">${esc(t("id_no"))} ${esc(p.id_number || i.id_number || "")}</div></div>
      ${p.balance_fen != null ? `<div class="bal"><div class="muted">${esc(t("balance"))}</div><div class="money" data-testid="balance">${yuan(p.balance_fen)}</div></div>` : ""}</div>`;
  };
  const tile = (k, attrs, extra = "") => `<button class="tile" ${attrs}><div class="t">${esc(t("menu_" + k))}</div><div class="s">${esc(t("menu_" + k + "_s"))}</div>${extra}</button>`;

  const screens = {
    locked: () => `<div class="card login"><h1>${esc(t("login_title"))}</h1>
      ${message("err", V.error)}
      <form data-login><label>${esc(t("badge"))}<input name="badge" data-testid="badge" autocomplete="off" value="${esc((V.notice && V.notice.badge) || "")}"></label>
      <label>${esc(t("pin"))}<input name="pin" data-testid="pin" type="password" inputmode="numeric" autocomplete="off"></label>
      <button class="primary" type="submit" data-testid="login">${esc(t("login"))}</button></form>
      <div class="muted">${esc(t("locked_sub"))}</div></div>${V.notice && V.notice.what === "shift_report" ? fixed("", "handover_done") : ""}`,
    // 交班: what the handover report will list; printing it signs the cashier out.
    shift: () => {
      const sh = (V.notice && V.notice.shift) || { lines: [] }, hm = (iso) => String(iso || "").slice(0, 16).replace("T", " ");
      const lines = sh.lines.map((x) => `<tr><td>${esc(t("m_" + x.method))}</td><td>${x.payment_count}</td><td>${yuan(x.payment_fen)}</td><td>${x.topup_count}</td><td>${yuan(x.topup_fen)}</td><td>${x.refund_count}</td><td>${yuan(-x.refund_fen)}</td><td><b>${yuan(x.net_fen)}</b></td></tr>`).join("");
      const net = sh.lines.reduce((a, x) => a + x.net_fen, 0);
      return `<h1>${esc(t("shift_title"))}</h1>${message("err", V.error)}<div class="card">${row(t("cashier"), sh.cashier)}${row(t("shift_from"), hm(sh.period_start))}${row(t("shift_to"), hm(sh.period_end))}</div>
        <div class="card"><table class="shift" data-testid="shift-lines"><tr><th>${esc(t("paid_by"))}</th><th colspan="2">${esc(t("menu_bills"))}</th><th colspan="2">${esc(t("menu_topup"))}</th><th colspan="2">${esc(t("menu_refund"))}</th><th>${esc(t("net"))}</th></tr>
        ${lines || `<tr><td colspan="8">${esc(t("shift_none"))}</td></tr>`}</table>${row(t("net_total"), yuan(net), "shift-net")}</div>${fixed("", "handover_note")}
        <div class="actions">${btn(t("back"), 'data-top="shift" data-show="0"')}${btn(t("handover_print"), 'data-top="handover" data-testid="handover-confirm"', "primary")}</div>`;
    },
    attract: () => V.role === "cashier" ? `<div class="attract"><div class="big" data-testid="prompt">${esc(t("wait_card"))}</div>
        <div class="sub">${esc(V.staff ? V.staff.name : "")}</div><div class="slotpic">${ICON.card}</div></div>${staffTools()}` :
      `<div class="attract"><div class="big" data-testid="prompt">${esc(t("insert"))}</div>
      <div class="sub">${esc(t("insert_sub"))}</div><div class="slotpic">${ICON.card}</div></div>
      ${V.online.platform ? "" : fixed("warn", "oos_sub", "oos_works")}
      <div class="actions">${btn(t("reports_nocard"), 'data-start="reports" data-testid="reports-nocard"', "secondary wide")}</div>`,
    reading: () => waiting("reading"),
    // Not enrolled yet: the pairing code a technician approves at central, big.
    pairing: () => {
      const p = V.pairing || {};
      const head = both(p.state === "rejected" ? "pair_rejected" : p.code ? "pair_title" : "pair_enrolling");
      const when = (iso) => { try { return new Date(iso).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB", { timeZone: ui.timezone || "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit" }); } catch (_) { return iso; } };
      const line = (k, v, tid) => `<div class="row"><span class="k">${esc(both(k).main)}<span class="en"> ${esc(both(k).sub)}</span></span><span class="v" data-testid="${tid}">${esc(v)}</span></div>`;
      const [m, s2] = lang === "zh" ? [p.message_zh, p.message] : [p.message, p.message_zh];
      const code = p.code ? `<div class="pair-label">${esc(both("pair_code").main)} <span class="en">${esc(both("pair_code").sub)}</span></div>
        <div class="pair-code" data-testid="pairing-code">${esc(p.code)}</div>` : (p.state === "rejected" ? "" : `<div class="spinner"></div>`);
      return `<div class="pairing" data-testid="pairing" role="status"><div class="pair-h">${esc(head.main)}</div><div class="pair-s">${esc(head.sub)}</div>${code}
        <div class="card pair-info">${p.serial ? line("pair_serial", p.serial, "pairing-serial") : ""}${p.expires_at && p.state === "pending" ? line("pair_expires", when(p.expires_at), "pairing-expires") : ""}
        ${p.retry_at && p.state === "rejected" ? line("pair_retry", when(p.retry_at), "pairing-retry") : ""}</div>
        ${m && p.state !== "pending" ? `<div class="card msg ${p.state === "rejected" ? "err" : ""}" data-testid="pairing-message"><h2>${esc(m)}</h2><div class="en">${esc(s2 || "")}</div></div>` : ""}
        ${p.state === "pending" ? `<div class="pair-todo">${esc(both("pair_todo").main)}<div class="en">${esc(both("pair_todo").sub)}</div></div>` : ""}</div>`;
    },
    // The session is over but the card is still in the slot: nothing else until it is out.
    take_card: () => `<div class="attract take" data-testid="take-card" role="alert"><div class="big">${esc(t("take_out"))}</div>
      <div class="sub">${esc(both("take_out").sub)}</div><div class="slotpic">${ICON.cardOut}</div></div>`,
    identifying: () => {
      const name = (V.identity || {}).name;
      return `<div class="attract wait">${name ? `<div class="big">${esc(t("hello"))}${esc(t("comma"))}<span data-testid="identity-name">${esc(name)}</span></div>
        <div class="sub">${esc(t("identifying"))}</div>` : `<div class="big">${esc(t("qr_identifying"))}</div>`}<div class="spinner"></div>${slowNote()}</div>`;
    },
    menu: () => {
      const tiles = [tile("register", 'data-start="register" data-testid="menu-register"'), tile("pickup", 'data-start="pickup" data-testid="menu-pickup"'),
        tile("bills", 'data-start="bills" data-testid="menu-bills"'), tile("topup", 'data-start="topup" data-testid="menu-topup"'),
        tile("reports", 'data-start="reports" data-testid="menu-reports"'), tile("cancel", 'data-start="cancel" data-testid="menu-cancel"')];
      if (V.role === "cashier") tiles.push(tile("refund", 'data-start="refund" data-testid="menu-refund"'), tile("receipts", 'data-start="receipts" data-testid="menu-receipts"'));
      const pg = paged("menu", tiles);
      return `${patientCard()}${notice()}<div class="grid menu">${pg.items.join("")}</div>${pg.nav}
        <div class="actions">${btn(t("finish"), 'data-top="end" data-testid="finish"')}</div>${V.role === "cashier" ? staffTools() : ""}`;
    },
    // The headline says the machine is down, loudest; what still works comes second, quieter.
    out_of_service: () => `${V.identity ? patientCard() : ""}<div class="oos" role="alert" data-testid="oos"><div class="oos-h">${esc(t("oos_headline"))}</div>
      <div class="oos-s">${esc(t("oos_sub"))}</div><div class="en">${esc(both("oos_headline").sub)}</div></div>
      <div class="card works"><h3>${esc(t("oos_works_title"))}</h3><div>${esc(t("oos_works_body"))}</div><div class="en">${esc(both("oos_works_title").sub)}: ${esc(both("oos_works_body").sub)}</div></div>
      <div class="actions">${btn(t("finish"), 'data-top="end"', "primary")}</div>`,
    error: () => `${message("err", V.error || { message: "Something went wrong", message_zh: "出错了" })}<div class="actions">${btn(t("ok"), 'data-top="dismiss" data-testid="ok"', "primary")}</div>`,
    flow: () => (V.patient && V.patient.name ? `<div class="pstrip" data-testid="patient-strip"><span>${esc(t("patient"))}${esc(t("colon"))}<b>${esc(V.patient.name)}</b></span>
      <span>${esc(t("balance"))} <b>${yuan(V.patient.balance_fen)}</b></span></div>` : "") + renderFlow(V.flow),
  };

  function notice() {
    const n = V.notice;
    if (!n || !n.printed) return "";
    const ok = n.printed.state === "printed";
    const k = n.what === "closing_report" ? "closing_done" : "reprint_done";
    return ok ? fixed("", k) : message("warn", n.printed);
  }
  const staffTools = () => `<div class="actions staff">${btn(t("closing"), 'data-top="closing" data-testid="closing"')}${btn(t("handover"), 'data-top="shift" data-testid="handover"')}
    ${btn(t("reprint_last"), 'data-top="reprint_last" data-testid="reprint-last"')}${btn(t("lock"), 'data-top="lock" data-testid="lock"')}</div>${V.screen === "attract" ? notice() : ""}`;

  // ---- flows ------------------------------------------------------------------------
  function days(list) {
    const wd = I18N[lang].weekdays;
    return list.map((iso, i) => {
      const [y, m, d] = iso.split("-").map(Number), dt = new Date(y, m - 1, d);
      return { iso, label: i === 0 ? t("today") : i === 1 ? t("tomorrow") : `${wd[dt.getDay()]} ${iso.slice(5)}` };
    });
  }
  const deptName = (d) => (lang === "zh" ? d.name : d.name_en || d.name);

  function payScreens(f) {
    const d = f.data, s = f.state;
    if (s === "pay_method") {
      const warn = d.printer_warning ? message("warn", d.printer_warning) : "";
      const ms = (d.methods || []).map((m) => `<button class="tile method" data-method="${m.method}" data-testid="method-${m.method}" ${m.ok ? "" : "disabled"}>
        <div class="t">${esc(t("m_" + m.method))}</div><div class="s">${m.method === "prepaid" ? esc(t("available")) + " " + yuan(m.balance_fen) : ""}
        ${m.ok ? "" : `<b class="why">${esc(lang === "zh" ? m.why_zh : m.why)}</b>`}</div></button>`).join("");
      const leave = f.name === "register" ? btn(t("abandon"), 'data-do="abandon"') : btn(t("back"), 'data-do="back"');
      const b = d.booking;   // what the money is for, when it is a registration fee
      const what = b ? `<div class="card what">${row(t("dept"), tr(b.dept_name))}${row(t("doctor"), `${b.doctor_name} ${tr(b.title) || ""}`)}${row(t("time"), `${b.date} ${b.start}–${b.end}`)}</div>` : "";
      return `<h1>${esc(t("choose_method"))}</h1>${warn}<div class="card due">${row(t("amount_due"), yuan(d.amount_fen), "amount-due")}</div>${what}
        ${message("warn", f.error)}<div class="grid">${ms}</div><div class="actions">${leave}</div>`;
    }
    if (s === "scan_code") return `<h1>${esc(t("scan_code"))}</h1><div class="card due">${row(t("amount_due"), yuan(d.amount_fen))}</div>
      ${message("warn", f.error)}<div class="attract compact"><div class="slotpic qr">${ICON.qr}</div><div class="sub">${esc(t("scan_code_sub"))}</div></div>${scanBox()}
      <div class="actions">${btn(t("back"), 'data-do="back"')}</div>`;
    if (s === "cash_tendered") return `<h1>${esc(t("m_cash"))}</h1><div class="card due">${row(t("amount_due"), yuan(d.amount_fen), "amount-due")}</div>
      ${message("warn", f.error)}<form class="card form" data-cash><label>${esc(t("tendered"))}<input name="tendered" data-testid="tendered" inputmode="decimal" autocomplete="off"></label>
      <div class="row"><span class="k">${esc(t("change"))}</span><span class="v" data-change>—</span></div>
      <button class="primary" type="submit" data-testid="cash-ok">${esc(t("cash_ok"))}</button></form><div class="actions">${btn(t("back"), 'data-do="back"')}</div>`;
    if (s === "paying") return waiting("paying");
    if (s === "confirming") return `<div class="attract wait"><div class="big warn-text" data-testid="confirming">${esc(lang === "zh" ? "正在确认支付结果，请勿重复支付" : "Payment being confirmed — do not pay again")}</div>
      <div class="sub">${esc(lang === "zh" ? "Payment being confirmed — do not pay again" : "正在确认支付结果，请勿重复支付")}</div><div class="spinner"></div>${slowNote()}</div>
      ${f.card_gone ? `<div class="card msg warn" data-testid="card-gone"><h2>${esc(t("card_gone_wait"))}</h2><div class="en">${esc(both("card_gone_wait").sub)}</div></div>` : ""}
      <div class="card due">${row(t("amount_due"), yuan(d.amount_fen))}${d.payment_id ? row(t("payment_id"), d.payment_id) : ""}</div>`;
    if (s === "declined") return `${message("err", f.error)}<div class="actions">${btn(t("choose_method"), 'data-do="back" data-testid="other-method"', "primary")}
      ${f.name === "register" ? btn(t("abandon"), 'data-do="abandon"') : btn(t("home"), 'data-top="home"')}</div>`;
    if (s === "unresolved") return `${message("err", f.error)}<div class="card due">${row(t("amount_due"), yuan(d.amount_fen))}
      ${d.payment_id ? row(t("payment_id"), d.payment_id, "payment-id") : ""}${d.order_no ? row(t("order_no"), d.order_no, "order-no") : ""}</div>
      <div class="actions">${btn(t("finish"), 'data-top="end" data-testid="finish"', "primary")}</div>`;
    if (s === "printing") return waiting("printing");
    if (s === "print_failed") {
      // Paid: the patient must leave with the queue number even without paper, and the
      // reprint is the obvious next step.
      const b = d.booking, p = d.payment || {};
      const what = b && b.queue_no != null ? `<div class="queue" data-testid="queue">${esc(b.queue_no)}</div><div class="center">${esc(t("queue"))}</div>
          ${row(t("dept"), tr(b.dept_name))}${row(t("time"), `${b.date} ${b.start}–${b.end}`)}${row(t("location"), tr(b.location))}`
        : `${row(t("total"), yuan(p.amount_fen))}${row(t("payment_id"), p.payment_id)}`;
      // No reprint button where none can work (refused here, card gone): the counter it is.
      const pr = d.print || {}, canReprint = !!pr.job_id && pr.reason !== "not_reprintable" && !f.card_gone;
      return `<div class="card msg warn" data-testid="print-failed"><h2>${esc(t("print_failed_title"))}</h2>${what}</div>
        ${canReprint ? message("warn", f.error) : f.card_gone ? message("warn", f.error) + fixed("", b && b.queue_no != null ? "show_queue" : "show_payment")
          : fixed("err", "reprint_at_counter", b && b.queue_no != null ? "show_queue" : "show_payment")}
        <div class="actions">${canReprint ? btn(t("finish"), 'data-top="end"') + btn(t("reprint_big"), 'data-do="reprint" data-testid="reprint"', "primary big")
          : btn(t("finish"), 'data-top="end" data-testid="finish"', "primary big")}</div>`;
    }
    return null;
  }

  function doneScreen(f) {
    const d = f.data;
    if (f.name === "register" || f.name === "pickup") {
      const b = d.booking || {};
      return `<div class="card msg" data-testid="done"><h2>${esc(t("done_register"))}</h2>
        <div class="queue" data-testid="queue">${esc(b.queue_no)}</div><div class="center">${esc(t("queue"))}</div>
        ${row(t("dept"), tr(b.dept_name))}${row(t("doctor"), `${b.doctor_name || ""} ${tr(b.title) || ""}`)}${row(t("time"), `${b.date} ${b.start}–${b.end}`)}${row(t("location"), tr(b.location))}
        ${row(t("fee"), yuan(b.fee_fen))}</div>${fixed("", "take_slip")}<div class="actions">${btn(t("finish"), 'data-top="end" data-testid="finish"', "primary")}</div>`;
    }
    const p = d.payment || {};
    const head = f.name === "bills" ? "done_bills" : f.name === "topup" ? "done_topup" : "done_refund";
    const r = d.refund || {};
    const rows = f.name === "refund" ? row(t("refunded"), yuan(r.amount_fen), "refund-amount") + (r.method ? row(t("refunded_to"), t("m_" + r.method), "refund-method") : "") + row(t("refund_no"), r.refund_id) + row(t("payment_id"), r.payment_id)
      : row(t("total"), yuan(p.amount_fen)) + (d.tendered_fen != null ? row(t("tendered_row"), yuan(d.tendered_fen), "tendered-done") : "")
        + row(t("payment_id"), p.payment_id, "payment-id") + (p.balance_fen != null ? row(t("new_balance"), yuan(p.balance_fen)) : "");
    // Cash at a desk: the change to hand back is the one number the cashier needs, so it is big.
    const change = d.change_fen != null ? `<div class="change-due"><span>${esc(t("change_due"))}</span><b data-testid="change">${yuan(d.change_fen)}</b></div>` : "";
    return `<div class="card msg" data-testid="done"><h2>${esc(t(head))}</h2>${change}${rows}</div>${fixed("", "take_receipt")}
      <div class="actions">${btn(t("home"), 'data-top="home"')}${btn(t("finish"), 'data-top="end" data-testid="finish"', "primary")}</div>`;
  }

  const flowRenders = {
    register(f) {
      const d = f.data, s = f.state;
      if (s === "loading_depts" || s === "loading_slots") return waiting("loading");
      if (s === "booking") return waiting("booking");
      if (s === "booking_unknown") return `${message("warn", f.error)}<div class="attract wait"><div class="spinner"></div>${slowNote()}</div>`;
      if (s === "depts") {
        const pg = paged("depts", d.departments.map((x) => `<button class="tile" data-dept="${esc(x.code)}"><div class="t">${esc(deptName(x))}</div><div class="s">${esc(tr(x.location))}</div></button>`));
        return `<h1>${esc(t("choose_dept"))}</h1><div class="grid">${pg.items.join("")}</div>${pg.nav}<div class="actions">${btn(t("home"), 'data-top="home"')}</div>`;
      }
      if (s === "slots") {
        const chips = days(d.days).map((x) => `<button class="chip-day ${x.iso === d.day ? "sel" : ""}" data-day="${x.iso}">${esc(x.label)}</button>`).join("");
        const pg = paged("slots" + d.day, (d.slots || []).map((x) => `<button class="tile slot" data-slot="${esc(x.slot_id)}" ${x.open ? "" : "disabled"}>
          <div class="t">${esc(x.doctor_name)} · ${esc(tr(x.title))}</div>
          <div class="s">${esc(x.start)}–${esc(x.end)} · ${esc(t("remaining"))} <b>${x.remaining}</b> · ${yuan(x.fee_fen)}</div>
          <div class="s">${x.open ? `${esc(t("closes"))} ${esc(x.closes_at)}` : `<b class="why tag">${esc(lang === "zh" ? x.why_zh : x.why)}</b>`}${x.specialty ? " · " + esc(tr(x.specialty)) : ""}</div></button>`));
        return `<h1>${esc(t("choose_slot"))} · ${esc(deptName(d.dept))}</h1><div class="days">${chips}</div>
          <div class="grid">${pg.items.join("") || `<div class="card">${esc(t("none_slots"))}</div>`}</div>${pg.nav}
          <div class="actions">${btn(t("back"), 'data-do="back"')}</div>`;
      }
      if (s === "confirm" || s === "printer_warning") {
        const x = d.slot, p = V.patient || {};
        // Self-pay / insured: a large two-way switch, the chosen side filled and ticked.
        const ins = d.can_insure ? `<div class="seg" role="radiogroup" aria-label="${esc(t("pay_type"))}">${[["0", "self_pay", !d.insured], ["1", "insured", !!d.insured]].map(([v, k, on]) =>
          `<button class="seg-b${on ? " on" : ""}" role="radio" aria-checked="${on}" data-insured="${v}" data-testid="insured-${v}"><span class="tick">${on ? "✓" : ""}</span>${esc(t(k))}</button>`).join("")}</div>`
          : `<div class="seg-fixed">${esc(t("self_pay"))}</div>`;
        const body = `<h1>${esc(t("confirm"))}</h1><div class="card">${row(t("patient"), p.name)}${row(t("dept"), deptName(d.dept))}
          ${row(t("doctor"), x.doctor_name + " " + tr(x.title))}${row(t("time"), `${x.date} ${x.start}–${x.end}`)}${row(t("fee"), yuan(d.due_fen ?? x.fee_fen), "fee")}${d.insurance_fen ? row(lang === "zh" ? "医保支付" : "Paid by insurance", yuan(d.insurance_fen), "insurance") : ""}
          <div class="paytype"><div class="k">${esc(t("pay_type"))}</div>${ins}</div></div>`;
        if (s === "printer_warning") return `${body}${message("warn", f.error)}<div class="actions">${btn(t("back"), 'data-do="back"')}${btn(t("continue_anyway"), 'data-do="confirm" data-anyway="1" data-testid="continue-anyway"', "primary")}</div>`;
        return `${body}<div class="actions">${btn(t("back"), 'data-do="back"')}${btn(t("confirm_btn"), 'data-do="confirm" data-testid="confirm"', "primary")}</div>`;
      }
      if (s === "cancelled") return `${fixed("", "cancelled")}<div class="actions">${btn(t("home"), 'data-top="home"', "primary")}</div>`;
      if (s === "error") return `${message("err", f.error)}<div class="actions">${btn(t("back"), 'data-do="back"')}${btn(t("retry"), 'data-do="retry" data-testid="retry"', "primary")}</div>`;
      return payScreens(f) || (s === "done" ? doneScreen(f) : "");
    },
    pickup(f) {
      const d = f.data, s = f.state;
      if (s === "loading") return waiting("loading");
      if (s === "checking_in") return waiting("printing");
      if (s === "done" && d.checkin_error) return message("warn", d.checkin_error) + doneScreen(f);
      if (s === "none") return `${fixed("", "none_pickup")}<div class="actions">${btn(t("home"), 'data-top="home"', "primary")}</div>`;
      if (s === "list") return `<h1>${esc(t("pickup_title"))}</h1><div class="grid one">${d.bookings.map((b) => `<button class="tile" data-booking="${esc(b.booking_id)}">
        <div class="t">${esc(tr(b.dept_name))} · ${esc(b.doctor_name)} ${esc(tr(b.title))}</div><div class="s">${esc(b.date)} ${esc(b.start)}–${esc(b.end)} · ${esc(tr(b.location))}</div>
        <div class="s">${yuan(b.fee_fen)} · ${b.status === "paid" ? `<b class="okc">✓ ${esc(t("fee_paid"))}</b>` : `<b class="duec">${esc(t("fee_due"))}</b>`}${b.slip_missing ? ` · <b class="duec" data-testid="slip-missing">${esc(lang === "zh" ? "凭条未打印，免费打印" : "Slip not printed yet — prints free")}</b>` : ""}${b.copy ? ` · <span data-testid="slip-copy">${esc(lang === "zh" ? "副本" : "COPY")}</span>` : ""}</div></button>`).join("")}</div>
        <div class="actions">${btn(t("home"), 'data-top="home"')}</div>`;
      if (s === "error") return `${message("err", f.error)}<div class="actions">${btn(t("home"), 'data-top="home"')}${btn(t("retry"), 'data-do="retry"', "primary")}</div>`;
      return payScreens(f) || (s === "done" ? doneScreen(f) : "");
    },
    bills(f) {
      const d = f.data, s = f.state;
      if (s === "loading") return waiting("loading");
      if (s === "none") return `${fixed("", "none_bills")}<div class="actions">${btn(t("home"), 'data-top="home"', "primary")}</div>`;
      if (s === "list" || s === "confirm") {
        const sel = new Set(d.selected);
        const list = (s === "confirm" ? d.bills.filter((b) => sel.has(b.bill_id)) : d.bills).map((b) => `<button class="tile bill ${sel.has(b.bill_id) ? "on" : ""} ${s === "confirm" ? "static" : ""}" data-bill="${esc(b.bill_id)}" ${s === "confirm" ? "disabled" : ""}>
          <div class="t">${s === "list" ? `<span class="box">${sel.has(b.bill_id) ? "☑" : "☐"}</span> ` : ""}${esc(tr(b.dept_name))} · ${yuan(b.total_fen)}</div>
          <div class="s">${esc(b.date)}</div><div class="items">${b.items.map((i) => `<div class="item"><span>${esc(tr(i.name))} ×${esc(i.qty)}</span><span>${yuan(i.amount_fen)}</span></div>`).join("")}</div>
          ${b.payable_here ? "" : `<div class="s"><b class="why">${esc(t("not_here"))}</b></div>`}</button>`);
        const pg = paged("bills" + s, list, elder ? 2 : 4);   // bills are tall: their lines show
        return `<h1>${esc(t(s === "list" ? "bills_title" : "confirm_bills"))}</h1>${message("warn", f.error)}<div class="grid one">${pg.items.join("")}</div>${pg.nav}
          <div class="card due">${row(fmt("sel_total", { n: d.selected.length }), yuan(d.total_fen), "total")}</div>
          <div class="actions">${s === "list" ? btn(t("home"), 'data-top="home"') + btn(t("next"), 'data-do="next" data-testid="next"', "primary")
            : btn(t("back"), 'data-do="back"') + btn(t("confirm_pay"), 'data-do="confirm" data-testid="confirm"', "primary")}</div>`;
      }
      if (s === "error") return `${message("err", f.error)}<div class="actions">${btn(t("home"), 'data-top="home"')}${btn(t("retry"), 'data-do="retry"', "primary")}</div>`;
      return payScreens(f) || (s === "done" ? doneScreen(f) : "");
    },
    topup(f) {
      const d = f.data, s = f.state;
      if (s === "amount") return `<h1>${esc(t("topup_title"))}</h1>${message("warn", f.error)}<div class="grid">${(d.amounts || []).map((a) =>
        `<button class="tile amount" data-amount="${a}" data-testid="amount-${a}"><div class="t money">${yuan(a)}</div></button>`).join("")}</div>
        <form class="card form custom" data-custom><label>${esc(t("other_amount"))}<span class="inline"><input name="amount" data-testid="custom-amount" inputmode="decimal" autocomplete="off">
        <button class="primary small" type="submit" data-testid="custom-next">${esc(t("next"))}</button></span></label>${keypad("amount", true)}</form><div class="actions">${btn(t("home"), 'data-top="home"')}</div>`;
      if (s === "error") return `${message("err", f.error)}<div class="actions">${btn(t("home"), 'data-top="home"', "primary")}</div>`;
      return payScreens(f) || (s === "done" ? doneScreen(f) : "");
    },
    reports(f) {
      const d = f.data, s = f.state;
      if (s === "start" || s === "loading") return waiting("loading");
      if (s === "scan") return `<h1>${esc(t("scan_specimen"))}</h1>${message("warn", f.error)}<div class="attract compact"><div class="slotpic">${ICON.barcode}</div></div>${scanBox()}
        <div class="actions">${btn(t("home"), 'data-top="home"')}</div>`;
      if (s === "none") return `${fixed("", "none_reports")}<div class="actions">${btn(t("by_barcode"), 'data-do="by_barcode"')}${btn(t("home"), 'data-top="home"', "primary")}</div>`;
      if (s === "list" || s === "done" || s === "printing") {
        const sel = new Set(d.selected || []), res = d.results || {};
        const list = d.reports.map((r) => {
          const o = res[r.report_no];
          const st = o ? (o.state === "printed" ? `<b class="okc">${esc(t("printed_ok"))}</b>` : `<b class="why">${esc(t("print_fail"))}</b>`)
            : r.status !== "ready" ? esc(t("pending")) : r.printed ? `<b>${esc(t("printed"))}</b>` : esc(t("ready"));
          // A checkbox only where the patient can still choose; once on paper it says so.
          const done = (o && o.state === "printed") || (r.printed && !sel.has(r.report_no));
          const mark = done ? `<span class="tag ok" data-testid="printed-tag">✓ ${esc(t("printed_tag"))}</span>`
            : o ? `<span class="tag bad">✗ ${esc(t("print_fail"))}</span>`
            : s === "list" && r.status === "ready" ? `<span class="box">${sel.has(r.report_no) ? "☑" : "☐"}</span>` : "";
          return `<button class="tile report ${sel.has(r.report_no) ? "on" : ""} ${s === "list" ? "" : "static"}" data-report="${esc(r.report_no)}" ${s === "list" ? "" : "disabled"}>
            <div class="t">${mark} ${esc(tr(r.title))}</div><div class="s">${esc(tr(r.specimen))} · ${esc(r.report_no)}${o && o.state === "printed" ? "" : " · " + st}</div></button>`;
        });
        const pg = paged("reports", list);
        const acts = s === "list" ? btn(t("home"), 'data-top="home"') + (V.patient ? btn(t("by_barcode"), 'data-do="by_barcode"') : "") + btn(t("print_btn"), `data-do="print" data-testid="print-reports" ${sel.size ? "" : "disabled"}`, "primary")
          : s === "done" ? btn(t("more"), 'data-do="more"') + btn(t("finish"), 'data-top="end" data-testid="finish"', "primary") : "";
        return `<h1>${esc(t("reports_title"))}</h1>${s === "printing" ? waiting("printing") : ""}${message(s === "done" ? "warn" : "warn", f.error)}
          ${s === "done" && !f.error ? fixed("", V.patient ? "take_report_card" : "take_report") : ""}<div class="grid one">${pg.items.join("")}</div>${pg.nav}<div class="actions">${acts}</div>`;
      }
      if (s === "error") return `${message("err", f.error)}<div class="actions">${btn(t("home"), 'data-top="home"')}${btn(t("retry"), 'data-do="retry"', "primary")}</div>`;
      return "";
    },
    cancel(f) {
      const d = f.data, s = f.state;
      if (s === "loading") return waiting("loading");
      if (s === "cancelling") return waiting("cancelling");
      if (s === "none") return `${fixed("", "none_cancel")}<div class="actions">${btn(t("home"), 'data-top="home"', "primary")}</div>`;
      if (s === "list") return `<h1>${esc(t("cancel_title"))}</h1><div class="grid one">${d.bookings.map((b) => `<button class="tile" data-booking="${esc(b.booking_id)}">
        <div class="t">${esc(tr(b.dept_name))} · ${esc(b.doctor_name)} ${esc(tr(b.title))}</div><div class="s">${esc(b.date)} ${esc(b.start)}–${esc(b.end)} · ${yuan(b.fee_fen)} · ${esc(t(b.status === "paid" ? "fee_paid" : "fee_due"))}</div></button>`).join("")}</div>
        <div class="actions">${btn(t("home"), 'data-top="home"')}</div>`;
      if (s === "confirm") { const b = d.booking; return `<h1>${esc(t("cancel_confirm"))}</h1><div class="card">${row(t("dept"), tr(b.dept_name))}${row(t("doctor"), `${b.doctor_name} ${tr(b.title) || ""}`)}
        ${row(t("time"), `${b.date} ${b.start}–${b.end}`)}${row(t("refunded"), yuan(d.refund_fen))}</div>${fixed("", d.refund_fen ? "refund_to_origin" : "no_refund")}
        <div class="actions">${btn(t("back"), 'data-do="back"')}${btn(t("cancel_confirm"), 'data-do="confirm" data-testid="confirm"', "primary")}</div>`; }
      if (s === "done") return `<div class="card msg" data-testid="done"><h2>${esc(t("cancel_done"))}</h2>${row(t("refunded"), yuan(d.refund_fen))}${d.refund_method ? row(t("refunded_to"), t("m_" + d.refund_method)) : ""}${d.balance_fen != null ? row(t("new_balance"), yuan(d.balance_fen), "new-balance") : ""}</div>
        ${d.refund_fen ? fixed("", "refund_to_origin") : ""}${(d.print || {}).state === "printed" ? fixed("", "cancel_slip_printed") : fixed("warn", "cancel_slip_failed")}<div class="actions">${btn(t("home"), 'data-top="home"')}${btn(t("finish"), 'data-top="end"', "primary")}</div>`;
      if (s === "unresolved" || s === "error") return `${message("err", f.error)}<div class="actions">${s === "error" ? btn(t("home"), 'data-top="home"') + btn(t("retry"), 'data-do="retry"') : ""}${btn(t("finish"), 'data-top="end"', "primary")}</div>`;
      return "";
    },
    refund(f) {
      const d = f.data, s = f.state;
      if (s === "loading") return waiting("loading");
      if (s === "list") {
        // The patient at the desk: only their own payments, each with what may still go back.
        const pg = paged("refund-list", (d.payments || []).map((p) => `<button class="tile pay" data-payment="${esc(p.payment_id)}" data-testid="payment-${esc(p.payment_id)}">
          <div class="t">${esc(p.when)} · ${esc(t("purpose_" + p.purpose))} · ${esc(t("m_" + p.method))}</div>
          <div class="s">${esc(t("paid_amount"))} <b>${yuan(p.amount_fen)}</b> · ${esc(t("refunded_already"))} ${yuan(p.refunded_fen)} · ${esc(t("refundable"))} <b>${yuan(p.refundable_fen)}</b> · ${esc(p.payment_id)}</div></button>`), 4);
        return `<h1>${esc(t("refund_pick"))}</h1>${message("warn", f.error)}<div class="grid one" data-testid="refund-list">${pg.items.join("") || `<div class="card">${esc(t("none_refundable"))}</div>`}</div>${pg.nav}
          <div class="actions">${btn(t("home"), 'data-top="home"')}</div>`;
      }
      if (s === "form") {
        const p = d.payment || {};
        // Side by side on a landscape desk: the payment on the left, the form on the right.
        return `<h1>${esc(t("refund_title"))}</h1><div class="cols2"><div class="card">${row(t("time"), p.when)}${row(t("purpose"), `${t("purpose_" + p.purpose)} · ${t("m_" + p.method)}`)}
          ${row(t("paid_amount"), yuan(p.amount_fen))}${row(t("refunded_already"), yuan(p.refunded_fen))}${row(t("refundable"), yuan(p.refundable_fen), "refundable")}${row(t("payment_id"), p.payment_id)}</div>
          <div>${message("warn", f.error)}<form class="card form" data-refund>
          <label>${esc(t("refund_amount"))}<input name="amount" data-testid="refund-amount" inputmode="decimal" autocomplete="off" value="${esc(d.amount_text || "")}"></label>
          <label>${esc(t("reason"))}<input name="reason" data-testid="refund-reason" autocomplete="off" value="${esc(d.reason || "")}"></label>
          <button class="primary" type="submit" data-testid="refund-next">${esc(t("next"))}</button></form></div></div><div class="actions">${btn(t("back"), 'data-do="reload"')}${btn(t("home"), 'data-top="home"')}</div>`;
      }
      if (s === "id_check") return `<h1>${esc(t("id_check_title"))}</h1><div class="card">${row(t("patient"), d.name)}${row(t("id_no"), d.id_number)}
        ${row(t("payment_id"), d.payment_id)}${row(t("refunded"), yuan(d.amount_fen))}${row(t("reason"), d.reason)}</div>
        <div class="actions">${btn(t("back"), 'data-do="back"')}${btn(t("id_checked"), 'data-do="id_checked" data-testid="id-checked"', "primary")}</div>`;
      if (s === "refunding") return waiting("refunding");
      if (s === "error") return `${message("err", f.error)}<div class="actions">${btn(t("home"), 'data-top="home"')}${btn(t("back"), 'data-do="reload"', "primary")}</div>`;
      if (s === "done") return doneScreen(f);
      return payScreens(f) || "";
    },
    receipts(f) {
      const d = f.data, s = f.state;
      if (s === "loading") return waiting("loading");
      if (s === "printing") return waiting("printing");
      if (s === "done") return `<div class="card msg" data-testid="done"><h2>${esc(t("reprint_done"))}</h2>${row(t("payment_id"), d.payment_id)}</div>
        <div class="actions">${btn(t("more"), 'data-do="reload"')}${btn(t("home"), 'data-top="home"')}${btn(t("finish"), 'data-top="end" data-testid="finish"', "primary")}</div>`;
      if (s === "error") return `${message("err", f.error)}<div class="actions">${btn(t("home"), 'data-top="home"')}${btn(t("retry"), 'data-do="reload"', "primary")}</div>`;
      const pg = paged("receipts", (d.payments || []).map((p) => `<div class="tile pay static"><div class="t">${esc(p.when)} · ${esc(t("purpose_" + p.purpose))} · ${esc(t("m_" + p.method))} · <b>${yuan(p.amount_fen)}</b>
        <span style="float:right">${btn(t("reprint_copy"), `data-reprint="${esc(p.payment_id)}" data-testid="reprint-${esc(p.payment_id)}"`, "primary small")}</span></div>
        <div class="s">${esc(t("payment_id"))} ${esc(p.payment_id)}</div></div>`), 4);
      return `<h1>${esc(t("receipts_title"))}</h1>${message("warn", f.error)}<form class="scanbox" data-reprint-no><input name="payment_id" data-testid="reprint-number" autocomplete="off" placeholder="${esc(t("payment_no"))}">
        <button class="primary small" type="submit" data-testid="reprint-by-number">${esc(t("reprint_copy"))}</button></form>
        <div class="grid one">${pg.items.join("") || `<div class="card">${esc(t("none_paid"))}</div>`}</div>${pg.nav}<div class="actions">${btn(t("home"), 'data-top="home"')}</div>`;
    },
  };

  function renderFlow(f) {
    const r = flowRenders[f.name];
    return (r && r(f)) || waiting("loading");
  }

  function render() {
    if (!V) return;
    const key = screenKey(V);
    // What was typed survives a re-render of the same screen (a pushed view, a language switch).
    const typed = {};
    if (key === stateKey) main.querySelectorAll("input[name]").forEach((i) => { if (i.value) typed[i.name] = i.value; });
    if (key !== stateKey) { stateKey = key; stateSince = Date.now(); voice(); }
    $("#lang").textContent = t("lang");
    $("#elder").textContent = elder ? t("elder_off") : t("elder");
    $("#hospital").textContent = ui.hospital_name;
    $("#net").className = "dot " + (V.online.edge && V.online.platform ? "on" : "off");
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.body.classList.toggle("elder", elder);
    document.body.dataset.role = V.role;
    const focused = document.activeElement && document.activeElement.name;
    const fn = V.online.edge ? (screens[V.screen] || screens.attract) : () => `<div class="oos" role="alert" data-testid="edge-down"><div class="oos-h">${esc(t("oos_headline"))}</div>
      <div class="oos-s">${esc(t("edge_down"))}</div><div class="en">${esc(both("edge_down").sub)}</div></div>`;
    main.innerHTML = fn();
    main.dataset.view = V.screen;
    main.dataset.state = V.flow ? V.flow.name + ":" + V.flow.state : "";
    bind(typed);
    const again = focused && main.querySelector(`input[name="${focused}"]`);
    (again || main.querySelector("[data-scan] input, [data-login] input:not([value='']), [data-login] input"))?.focus();
  }

  function bind(typed = {}) {
    const on = (sel, fn) => main.querySelectorAll(sel).forEach((el) => { el.onclick = (e) => { e.preventDefault(); fn(el); }; });
    on("[data-start]", (b) => act("start", { flow: b.dataset.start }));
    on("[data-top]", (b) => act(b.dataset.top, b.dataset.show === "0" ? { show: false } : {}));
    on("[data-payment]", (b) => flow("pick", { payment_id: b.dataset.payment }));
    on("[data-reprint]", (b) => flow("reprint", { payment_id: b.dataset.reprint }));
    on("[data-do]", (b) => flow(b.dataset.do, b.dataset.anyway ? { anyway: true } : {}));
    on("[data-dept]", (b) => flow("dept", { code: b.dataset.dept }));
    on("[data-day]", (b) => flow("day", { day: b.dataset.day }));
    on("[data-slot]", (b) => flow("slot", { slot_id: b.dataset.slot }));
    on("[data-insured]", (b) => flow("insured", { insured: b.dataset.insured === "1" }));
    on("[data-method]", (b) => flow("method", { method: b.dataset.method }));
    on("[data-bill]", (b) => flow("toggle", { bill_id: b.dataset.bill }));
    on("[data-report]", (b) => flow("toggle", { report_no: b.dataset.report }));
    on("[data-booking]", (b) => flow("pick", { booking_id: b.dataset.booking }));
    on("[data-amount]", (b) => flow("amount", { amount_fen: Number(b.dataset.amount) }));
    on("[data-page]", (b) => { page += Number(b.dataset.page); render(); });
    on("[data-key]", (b) => {
      const input = main.querySelector(`input[name="${b.closest("[data-keypad]").dataset.keypad}"]`);
      if (!input) return;
      const k = b.dataset.key;
      input.value = k === "del" ? input.value.slice(0, -1) : k === "clear" ? "" : input.value + k;
      input.dispatchEvent(new Event("input"));
    });
    const form = (sel, fn) => { const f = main.querySelector(sel); if (f) f.onsubmit = (e) => { e.preventDefault(); fn(new FormData(f)); }; };
    const fen = (v) => Math.round(parseFloat(String(v || "").replace(/[^0-9.]/g, "")) * 100) || 0;
    form("[data-scan]", (d) => { const c = String(d.get("code") || "").trim(); if (c) act("scan", { text: c }); });
    form("[data-login]", (d) => act("login", { badge: String(d.get("badge") || ""), pin: String(d.get("pin") || "") }));
    form("[data-cash]", (d) => flow("tendered", { tendered_fen: fen(d.get("tendered")) }));
    form("[data-custom]", (d) => flow("amount", { amount_fen: fen(d.get("amount")) }));
    form("[data-refund]", (d) => flow("submit", { amount: String(d.get("amount") || ""), reason: String(d.get("reason") || "") }));
    form("[data-reprint-no]", (d) => flow("reprint", { payment_id: String(d.get("payment_id") || "").trim() }));
    const cash = main.querySelector("[data-cash] input");
    // Enough cash typed: the change shows, and a "not enough" warning from before goes.
    if (cash) { cash.oninput = () => { const due = V.flow.data.amount_fen, c = fen(cash.value) - due; main.querySelector("[data-change]").textContent = c >= 0 ? yuan(c) : "—";
      const warn = main.querySelector("[data-testid=message]"); if (warn && V.flow.error && V.flow.error.code === "not_enough_cash") warn.hidden = c >= 0; }; }
    main.querySelectorAll("input[name]").forEach((i) => { if (typed[i.name] && !i.value) i.value = typed[i.name]; });
    // The refund form comes pre-filled (the refundable amount): what the cashier typed wins.
    main.querySelectorAll("[data-refund] input[name]").forEach((i) => { if (typed[i.name]) i.value = typed[i.name]; });
    if (cash && cash.value) cash.oninput();
  }

  // ---- a keyboard-wedge scanner types fast and ends with Enter ------------------------------
  let wedge = "", wedgeAt = 0;
  document.addEventListener("keydown", (e) => {
    if (e.target && e.target.tagName === "INPUT") return;   // typed into a field: the form handles it
    const now = Date.now();
    if (now - wedgeAt > 80) wedge = "";
    wedgeAt = now;
    if (e.key === "Enter") { if (wedge.length >= 6) act("scan", { text: wedge }); wedge = ""; }
    else if (e.key.length === 1) wedge += e.key;
  });

  // ---- voice prompts (optional, server-side synthesis) ------------------------------------
  function voice() {
    if (!ui.voice || !V) return;
    const f = V.flow, key = V.screen === "attract" && V.role === "kiosk" ? "insert" : V.screen === "take_card" ? "take_out" : f && f.state === "confirming" ? "confirming"
      : f && f.state === "scan_code" ? "scan_code" : f && f.state === "done" ? "take_card" : null;
    if (key) new Audio(`/api/voice/${key}_${lang}.wav`).play().catch(() => {});
  }

  // ---- inactivity: countdown, then end the session (kiosk) or lock the desk (cashier) -------
  function tick() {
    $("#clock").textContent = new Date().toLocaleTimeString(lang === "zh" ? "zh-CN" : "en-GB", { hour: "2-digit", minute: "2-digit", timeZone: ui.timezone || "Asia/Shanghai" });
    const cd = $("#countdown");
    if (Date.now() - stateSince > SLOW_MS) { const s = main.querySelector("[data-testid=slow]"); if (s) s.hidden = false; }
    if (!V) return;
    const cashier = V.role === "cashier";
    // Nothing to time out on the start screen or while the card is asked back; the clock
    // starts from when the screen is left, not from the last patient's last touch.
    const idleOk = V.screen === "pairing" || (cashier ? V.screen === "locked" : V.screen === "attract" || V.screen === "take_card");
    const ov = $("#overlay");
    if (idleOk || (V.flow && V.flow.busy)) { cd.hidden = ov.hidden = true; lastActivity = Date.now(); return; }
    const limit = cashier ? ui.staff_lock_s : ui.idle_timeout_s;
    const left = Math.ceil(limit - (Date.now() - lastActivity) / 1000);
    if (left <= ui.countdown_s) {
      // Said big, over the screen, with one large way to stay: a footer line goes unseen.
      cd.hidden = false; cd.textContent = `${t(cashier ? "lock_soon" : "timeout")} ${Math.max(left, 0)}s`;
      const head = t(cashier ? "lock_soon" : "timeout");
      if (ov.hidden || ov.dataset.head !== head) {   // built once, then only the number changes
        ov.dataset.head = head;
        ov.innerHTML = `<div class="ov-box" role="alertdialog" data-testid="timeout"><div class="ov-t">${esc(head)}</div>
          <div class="ov-n" data-testid="timeout-left"></div><div class="ov-u">${esc(t("seconds"))}</div>
          <button class="primary big" data-testid="stay">${esc(t("stay"))}</button></div>`;
        ov.querySelector("[data-testid=stay]").onclick = () => { lastActivity = Date.now(); ov.hidden = cd.hidden = true; };
        ov.hidden = false;
      }
      ov.querySelector("[data-testid=timeout-left]").textContent = String(Math.max(left, 0));
    } else cd.hidden = ov.hidden = true;
    if (left <= 0) { lastActivity = Date.now(); act(cashier ? "lock" : "end"); }
  }

  document.addEventListener("pointerdown", () => { lastActivity = Date.now(); });
  document.addEventListener("keydown", () => { lastActivity = Date.now(); });
  $("#lang").onclick = () => { lang = lang === "zh" ? "en" : "zh"; render(); };
  $("#elder").onclick = () => { elder = !elder; page = 0; render(); };

  function connect() {
    const es = new EventSource("/api/events");
    es.addEventListener("view", (m) => { try { show(JSON.parse(m.data)); } catch (_) {} });
    // After a reconnect the server sends its current view first; take it even if its version
    // is lower (the kiosk server restarted), or the page would keep a stale screen and dot.
    // A dropped stream reconnects by itself within a second or two: only a lasting loss turns
    // the dot red, and the next view turns it back (render()), so it never stays red stale.
    es.onopen = () => { resync = true; };
    es.onerror = () => { clearTimeout(netTimer); netTimer = setTimeout(() => { $("#net").className = "dot off"; }, 3000); };
  }

  let loading = null;
  async function loadConfig(changed) {
    if (loading) return loading;
    loading = (async () => {
      try {
        const c = await (await fetch("/api/config")).json();
        const before = ui.language;
        ui = c.ui; uiRev = c.ui_rev ?? 0;
        if (!changed) { lang = ui.language; elder = !!ui.elder_mode; }
        else if (ui.language !== before) { lang = ui.language; if (V) render(); }
      } catch (_) {}
    })();
    try { await loading; } finally { loading = null; }
  }

  (async () => {
    await loadConfig(false);
    connect();
    setInterval(tick, 500); tick();
  })();
})();
