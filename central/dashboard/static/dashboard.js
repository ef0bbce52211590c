"use strict";
// Central's staff dashboard: sign-in, fleet health overview, fleet management pages.
// The server decides who may do what (central/dashboard/auth.py); hiding a button from a
// role that may not use it is only a courtesy. Every request carries X-Requested-With: ykt
// (central refuses a cookie-authenticated write without it: CSRF). The page's automatic
// refreshes and long-polls also carry X-Ykt-Poll: 1, so they do not count as use: a page
// left open with nobody at it is signed out after the idle time like any other.
const $=id=>document.getElementById(id);
const esc=s=>String(s??"").replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
// Every time is shown in the site's zone (central's [central] timezone, from /api/status) as
// YYYY-MM-DD HH:MM:SS, like kiosks, receipts and ykt fw: never in this browser's own zone.
let TZ="Asia/Shanghai", FMT=null;
function setZone(z){ if(z&&(z!==TZ||!FMT)){TZ=z;FMT=null;} if(!FMT) FMT=new Intl.DateTimeFormat("en-CA",{timeZone:TZ,hourCycle:"h23",
  year:"numeric",month:"2-digit",day:"2-digit",hour:"2-digit",minute:"2-digit",second:"2-digit"}); }
function siteTime(d){ setZone(); const p=Object.fromEntries(FMT.formatToParts(d).map(x=>[x.type,x.value]));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`; }
const when=s=>s?siteTime(new Date(s)):"—";
function span(sec){ sec=Math.max(0,Math.round(sec)); const d=Math.floor(sec/86400),h=Math.floor(sec%86400/3600),m=Math.floor(sec%3600/60);
  if(d) return [`${d} 天 ${h} 小时`,`${d} d ${h} h`]; if(h) return [`${h} 小时 ${m} 分`,`${h} h ${m} min`];
  if(m) return [`${m} 分钟`,`${m} min`]; return [`${sec} 秒`,`${sec} s`]; }
function ago(s){ if(!s) return "—"; const [zh,en]=span((Date.now()-new Date(s))/1000); return `${zh}前 ${en} ago`; }
function left(s){ if(!s) return "—"; const t=(new Date(s)-Date.now())/1000; if(t<=0) return "已过期 expired";
  const [zh,en]=span(t); return `剩 ${zh} ${en} left`; }

// -- talking to central ---------------------------------------------------------------------
class ApiErr extends Error{constructor(status,text){super(text);this.status=status;}}
function errText(j,status){
  if(j&&j.error&&typeof j.error==="object") return `${j.error.message_zh||""} ${j.error.message||j.error.code}`.trim();
  if(j&&j.message) return `${j.message_zh||""} ${j.message}`.trim();
  if(j&&Array.isArray(j.detail)) return "输入无效 Invalid input: "+j.detail.map(d=>`${(d.loc||[]).slice(1).join(".")} ${d.msg}`).join("; ");
  if(j&&j.detail) return String(j.detail);
  return `HTTP ${status}`;
}
async function api(path,{method="GET",body,quiet401=false,poll=false}={}){
  const headers={"X-Requested-With":"ykt"};
  if(poll) headers["X-Ykt-Poll"]="1";
  if(body!==undefined) headers["Content-Type"]="application/json";
  const r=await fetch(path,{method,headers,credentials:"same-origin",body:body===undefined?undefined:JSON.stringify(body)});
  const j=await r.json().catch(()=>({}));
  if(r.status===401&&!quiet401){ showLogin("会话已结束，请重新登录 Your session ended: please sign in again"); throw new ApiErr(401,errText(j,401)); }
  if(!r.ok) throw new ApiErr(r.status,errText(j,r.status));
  return j;
}
function say(id,text,ok){ const el=$(id); el.textContent=text; el.className="msg "+(ok?"ok":"err"); }

// -- sign-in --------------------------------------------------------------------------------
const ROLE={viewer:"查看员 Viewer",technician:"技术员 Technician",administrator:"管理员 Administrator"};
const RANK={viewer:0,technician:1,administrator:2};
let ME=null, STATUS=null, VIEW=null, TIMER=null;
const may=r=>ME&&RANK[ME.role]>=RANK[r];
function showLogin(msg){
  ME=null; clearInterval(TIMER);
  document.body.className="";
  for(const v of document.querySelectorAll(".view")) v.hidden=true;
  $("nav").hidden=true; $("me").hidden=true; $("login-view").hidden=false;
  $("login-msg").textContent=msg||""; $("updated").textContent="";
  setTimeout(()=>$("login-user").focus(),0);
}
async function signIn(body){
  const r=await fetch("/api/login",{method:"POST",credentials:"same-origin",
    headers:{"Content-Type":"application/json","X-Requested-With":"ykt"},body:JSON.stringify(body)});
  const j=await r.json().catch(()=>({}));
  if(!r.ok){ $("login-msg").textContent=errText(j,r.status); $("login-pass").value=""; return; }
  $("login-pass").value=""; $("login-token").value="";
  await start();
}
$("login-form").addEventListener("submit",e=>{e.preventDefault();
  const u=$("login-user").value.trim(), p=$("login-pass").value;
  if(!u||!p){$("login-msg").textContent="请输入用户名和密码 Enter your user name and password";return;}
  signIn({username:u,password:p});});
$("login-token-btn").addEventListener("click",()=>{const t=$("login-token").value.trim(); if(t) signIn({token:t});});
$("signout").addEventListener("click",async()=>{ await api("/api/logout",{method:"POST",quiet401:true}).catch(()=>{}); showLogin("已退出 Signed out"); });

async function start(){
  STATUS=await fetch("/api/status",{credentials:"same-origin"}).then(r=>r.json());
  setZone(STATUS.timezone);
  $("site").textContent=STATUS.site_name+" · 设备监控 Fleet dashboard";
  $("login-site").textContent=STATUS.site_name;
  if(!STATUS.signed_in){ showLogin(""); return; }
  ME=await api("/api/me");
  document.body.className="role-"+ME.role;
  $("me-name").textContent=`${ME.name} (${ME.username})`;
  $("me-role").textContent=ROLE[ME.role]||ME.role;
  $("login-view").hidden=true; $("nav").hidden=false; $("me").hidden=false;
  for(const a of document.querySelectorAll("nav [data-fleet]")) a.hidden=!STATUS.fleet;
  route();
}

// -- pages ----------------------------------------------------------------------------------
const VIEWS={overview:refreshOverview,fleet:refreshFleet,enrollments:refreshEnrollments,device:refreshDevice,users:refreshUsers};
let DEVICE=null;
function route(){
  if(!ME) return;
  const h=location.hash.replace(/^#\/?/,"");
  let view="overview"; DEVICE=null;
  if(h.startsWith("device/")){view="device";DEVICE=decodeURIComponent(h.slice(7));}
  else if(VIEWS[h]) view=h;
  if(view!==VIEW) for(const v of document.querySelectorAll(".view")) v.hidden=v.id!==`${view}-view`;
  VIEW=view;
  for(const a of document.querySelectorAll("nav a")) a.classList.toggle("active",a.dataset.view===(view==="device"?"fleet":view));
  tick(true);
  clearInterval(TIMER); TIMER=setInterval(()=>tick(false),3000);
}
window.addEventListener("hashchange",route);
async function tick(first){
  try{
    await VIEWS[VIEW](first);
    if(STATUS&&STATUS.fleet) pendingBadge(first);
    $("updated").textContent=`更新于 Updated ${siteTime(new Date())} (${TZ})`;
  }catch(e){ if(!(e instanceof ApiErr&&e.status===401)) $("updated").textContent=e instanceof ApiErr?e.message:"无法连接 central / cannot reach central"; }
}
async function pendingBadge(first){
  const n=(await api("/api/enrollments?status=pending",{poll:!first})).enrollments.length; $("n-pending").textContent=n||"";
}

// -- overview (fleet health) ----------------------------------------------------------------
const PAPER={ok:["正常 OK","on"],near_end:["将尽 Near end","warn"],out:["缺纸 Out","off"],unknown:["未知 Unknown","muted"]};
const SAM={ok:["正常 OK","on"],not_opened:["待用 Idle","on"],disabled:["未启用 Off","muted"],pin_tries_low:["PIN 次数少 Tries low","warn"]};
const EVENT={"printer.status":"打印机状态 Printer status","print.done":"打印完成 Print done","print.failed":"打印失败 Print failed",
  "card.inserted":"插卡 Card inserted","card.removed":"拔卡 Card removed","card.read_failed":"读卡失败 Read failed","alarm":"告警 Alarm","audit":"审计 Audit"};
const has=(d,...codes)=>d.alarms.some(a=>codes.includes(a.code));
function paperCell(d){
  const p=d.health&&d.health.printer; if(!p) return `<td class="muted">—</td>`;
  const [t,c]=PAPER[p.paper]||[p.paper,"muted"];
  return `<td class="${c}">${t}${p.cover_open?` · <span class="off">上盖开 Cover open</span>`:""}</td>`;
}
function samCell(h){
  if(!h||!h.sam_state) return `<td class="muted">—</td>`;
  const [t,c]=SAM[h.sam_state]||["故障 "+h.sam_state,"off"]; return `<td class="${c}">${esc(t)}</td>`;
}
const mb=n=>n>=1024?(n/1024).toFixed(1)+" GB":n+" MB";
// Event details in words for every event type the fleet sends (yikatong/protocol/messages.py
// EVENTS); an unknown type or field still reads as "name value" pairs, never as JSON.
const DOC={receipt:"收据 receipt",registration:"挂号凭条 registration slip",report:"检验报告 lab report",lab_report:"检验报告 lab report",
  closing_report:"日结报表 closing report",refund:"退款凭条 refund slip",topup:"充值凭条 top-up slip",payment:"缴费凭条 payment slip"};
const REASON={paper_out:"缺纸 paper out",cover_open:"上盖开 cover open",offline:"打印机离线 printer offline",cutter_error:"切刀故障 cutter error",
  timeout:"超时 timed out",unknown:"原因不明 unknown"};
const CARDERR={card_blocked:"卡已挂失 card reported lost",card_expired:"卡已过期 card expired",card_auth_blocked:"卡片认证已锁定 card locked",
  not_a_health_card:"非健康卡 not a health card",card_removed:"读卡中拔卡 removed while reading",card_timeout:"读卡超时 read timed out",
  card_parameter_error:"参数错误 parameter error",
  card_data_error:"卡片数据错误 card data error",card_command_error:"卡片指令错误 card command error",card_auth_failed:"卡片认证失败 authentication failed",
  card_file_not_found:"卡片文件缺失 file missing on card",record_erased:"记录已擦除 record erased",photo_data_error:"照片数据错误 photo data error",
  card_error:"卡片故障 card fault",reader_unavailable:"读卡器不可用 reader unavailable",sam_error:"PSAM 故障 SAM fault",
  sam_unavailable:"PSAM 不可用 SAM unavailable",sam_pin_error:"PSAM PIN 错误 SAM PIN wrong",sam_pin_blocked:"PSAM 已锁 SAM locked",
  sam_pin_tries_low:"PSAM PIN 次数少 SAM tries low",card_service_unavailable:"读卡服务不可用 card service down",
  pcscd_error:"读卡服务故障 PC/SC fault",vpcd_connect_error:"虚拟读卡器故障 virtual reader fault"};
const SEV={info:"提示 info",warning:"警告 warning",error:"错误 error",critical:"严重 critical"};
const AUDIT={"card.read":"读卡成功 Card read","staff.login":"收费员登录 Staff sign-in","staff.logout":"收费员退出 Staff sign-out",
  "pay.create":"支付 Payment","pay.refund":"退款 Refund","pay.reverse":"冲正 Reversal","session.ended":"会话结束 Session ended"};
const FIELD={reader:"读卡器 reader",session_id:"会话 session",code:"代码 code",job_id:"任务 job",doc_kind:"单据 document",amount_fen:"金额 amount",
  card_masked:"卡号 card",badge:"工牌 badge",payment_id:"支付单 payment",state:"状态 state",reason:"原因 reason",dev:"设备 device"};
function words(v){
  if(v===null||v===undefined) return "—";
  if(typeof v==="boolean") return v?"是 yes":"否 no";
  if(Array.isArray(v)) return v.map(words).join(", ");
  if(typeof v==="object") return Object.entries(v).filter(([,x])=>x!==null&&x!==undefined).map(([k,x])=>`${FIELD[k]||k} ${words(x)}`).join(" · ");
  return String(v).replace(/[{}"]/g,"");
}
const reader=b=>b.reader?`读卡器 reader ${b.reader}`:"";
const join=(...p)=>esc(p.filter(Boolean).join(" · "));
function detail(e){
  const b=e.body||{};
  switch(e.type){
  case "printer.status": return join(`纸张 paper ${(PAPER[b.paper]||[b.paper])[0]}`, `上盖 cover ${b.cover_open?"开 open":"关 closed"}`,
    b.cutter_error?"切刀故障 cutter error":"", b.online?"在线 online":"离线 offline");
  case "print.done": return join(DOC[b.doc_kind]||b.doc_kind, b.copy?"补打 copy":"", `任务 job ${b.job_id}`);
  case "print.failed": return join(REASON[b.reason]||b.reason, `任务 job ${b.job_id}`);
  case "card.inserted": return join(reader(b), b.atr?`ATR ${b.atr}`:"");
  case "card.removed": return join(reader(b));
  case "card.read_failed": return join(CARDERR[b.code]||b.code, reader(b));
  case "alarm": return join(SEV[b.severity]||b.severity, b.code, b.message);
  case "audit": {const d=b.detail||{}; const rest=Object.fromEntries(Object.entries(d).filter(([k])=>k!=="reader"&&k!=="session_id"));
    return join(`#${b.seq}`, EVENT[b.action]||AUDIT[b.action]||b.action, Object.keys(rest).length?words(rest):"", d.reader?reader(d):"");}
  default: return esc(words(b).slice(0,160));
  }
}
const PAYSTATE={created:"已发起 Created",pending:"待支付 Pending",unknown:"结果未知 Unknown"};
const SEC={"request.forbidden":["越权请求 Request refused","off"],"message.unauthorized":["未授权消息 Unauthorized message","off"],
  "staff.signin_failed":["登录失败 Sign-in failed","warn"],"staff.signin_throttled":["登录受限 Sign-in throttled","off"],
  "staff.session_rejected":["会话无效 Staff session refused","warn"],"request.rate_limited":["查询过频 Too many look-ups","off"],
  "dashboard.signin_failed":["后台登录失败 Dashboard sign-in failed","warn"],"dashboard.signin_throttled":["后台登录受限 Dashboard sign-in throttled","off"],
  "dashboard.forbidden":["后台越权操作 Dashboard action refused","off"],"dashboard.csrf_refused":["跨站请求被拒 Cross-site request refused","off"]};
const REQ={"pay.create":"支付 payment","pay.refund":"退款 refund","staff.login":"收费员登录 staff sign-in","patient.identify":"患者查询 patient lookup",
  "pay.reverse":"冲正 reversal","pay.status":"支付查询 payment status","report.fetch":"报告 report","bill.list":"账单 bills"};
function secDetail(e){
  const d=e.detail||{}, parts=[];
  if(d.type) parts.push(REQ[d.type]||d.type);
  if(d.reason) parts.push(d.reason);
  if(d.badge) parts.push("工牌 badge "+d.badge);
  if(d.username) parts.push("用户 user "+d.username);
  if(d.path) parts.push(`${d.method||""} ${d.path}`);
  if(d.need) parts.push("需要 needs "+(ROLE[d.need]||d.need));
  if(d.ip) parts.push("来自 from "+d.ip);
  if(d.badge_failures!=null) parts.push(`连续失败 ${d.badge_failures} 次 failures`);
  if(d.failures!=null) parts.push(`连续失败 ${d.failures} 次 failures`);
  if(d.next_try_s) parts.push(`${d.next_try_s} 秒后可再试 next try in ${d.next_try_s} s`);
  if(d.topic && !d.type) parts.push(d.topic);
  return esc(parts.join(" · "));
}
async function refreshSecurity(first){
  const sec=await api("/api/security?limit=30",{poll:!first});
  $("security").innerHTML=sec.events.length?sec.events.map(e=>{const [t,c]=SEC[e.action]||[e.action,"muted"];
    return `<tr data-security="${esc(e.action)}"><td>${when(e.ts)}</td><td>${esc((e.detail||{}).dev||"—")}</td><td class="${c}">${esc(t)}</td><td>${secDetail(e)}</td></tr>`}).join("")
    :`<tr><td colspan="4" class="muted">无 None</td></tr>`;
  const th=sec.throttles.filter(t=>t.failures>0);
  const KIND={badge:"工牌 badge",device:"终端 desk",user:"后台用户 user"};
  $("throttles").innerHTML=th.length?"登录失败 Failed sign-ins: "+th.map(t=>`<span data-throttle="${esc(t.id)}">${KIND[t.kind]||esc(t.kind)} ${esc(t.id)} × ${t.failures}${t.wait_s?` (${t.wait_s} s)`:""}
    ${t.kind==="badge"?`<button data-reset="${esc(t.id)}" data-min-role="administrator">重置 Reset</button>`:""}</span>`).join(" · "):"";
}
// The Devices table shows one page of 100 (the API pages by id: ?limit, ?after = the last
// id of the page before, ?state, ?prefix); the counts and the alarm total are the whole
// fleet's, so the page costs the same at 10 devices and at 10,000 (docs/performance.md "Fleet").
const PAGE=100, ALARMS_SHOWN=100;
const DEVS={state:"",prefix:"",after:[null],at:0,next:null};
function devQuery(){
  const q=new URLSearchParams({limit:PAGE}), after=DEVS.after[DEVS.at];
  if(after) q.set("after",after); if(DEVS.state) q.set("state",DEVS.state); if(DEVS.prefix) q.set("prefix",DEVS.prefix);
  return "/api/devices?"+q;
}
function auditKpi(st){
  const c=st.audit_chain, k=st.audit_check||{}, every=Math.round((k.full_every_s||900)/60);
  $("k-audit").textContent=c.ok?"✓ 完整":"✗ 断裂 #"+c.broken_at;
  $("k-audit").parentElement.classList.toggle("bad",!c.ok);
  const last=k.full_at?siteTime(new Date(k.full_at)).slice(5,16):"—";
  $("k-audit-how").textContent=(k.full_pass?`全链复查中 re-checking #${k.checked_seq} · `:"")
    +`新记录每次刷新检查；全链每 ${every} 分钟复查，旧记录被改在复查时发现（上次 ${last}）。`
    +`New records: every refresh. Whole chain: every ${every} min, which finds a changed old record (last ${last}).`;
}
async function refreshOverview(first){
  const list=devQuery();
  // The alarms (the fleet's health rows, the slowest of these at 10,000 devices) are drawn
  // when they come: the counts and the table do not wait for them.
  const alarmsAsked=api(`/api/alarms?limit=${ALARMS_SHOWN}`,{poll:!first});
  alarmsAsked.catch(()=>{}); // awaited below; a failure there is this refresh's failure
  const [st,dv,ev]=await Promise.all(["/api/status",list,"/api/events?limit=20"].map(u=>api(u,{poll:!first})));
  STATUS=st; setZone(st.timezone);
  const n=dv.counts;
  $("k-total").textContent=n.total;
  $("k-online").textContent=n.online;
  $("k-offline").textContent=n.total-n.online;
  for(const b of $("dev-filter").querySelectorAll("button")) b.querySelector("b").textContent=b.dataset.state?n[b.dataset.state]:n.total;
  auditKpi(st);
  if(list===devQuery()) renderDevices(st,dv); // else the filter or page changed meanwhile
  await Promise.all([drawAlarms(alarmsAsked),drawPaymentsEvents(first,ev)]);
}
async function drawAlarms(asked){
  const al=await asked;
  const alarms=al.alarms, more=al.total-alarms.length;
  $("k-alarms").textContent=al.total;
  $("kpi-alarms").className="kpi"+(al.errors?" bad":al.total?" warn":"");
  $("alarms").innerHTML=alarms.length?alarms.map(a=>`<div class="alarm ${esc(a.severity)}" data-alarm="${esc(a.code)}" data-device="${esc(a.dev)}">
    <span>${a.severity==="error"?"●":"▲"}</span><span class="dev">${esc(a.dev)}</span><b>${esc(a.message_zh)}</b><span>${esc(a.message)}</span></div>`).join("")
    +(more>0?`<span class="muted" data-more="${more}">…… 另有 ${more} 条告警 and ${more} more alarms</span>`:"")
    :`<span class="none">✓ 无告警 No alarms</span>`;
}
function renderDevices(st,dv){
  const n=dv.counts, ds=dv.devices; DEVS.next=dv.next;
  const of=DEVS.prefix?"":` / ${DEVS.state?n[DEVS.state]:n.total}`;
  $("dev-range").textContent=ds.length?`第 ${DEVS.at+1} 页 page ${DEVS.at+1} · ${DEVS.at*PAGE+1}–${DEVS.at*PAGE+ds.length}${of}`:"";
  $("dev-prev").disabled=DEVS.at===0; $("dev-next").disabled=!dv.next;
  const devLink=id=>st.fleet?`<a href="#/device/${encodeURIComponent(id)}">${esc(id)}</a>`:esc(id);
  $("rows").innerHTML=ds.length?ds.map(d=>`<tr data-device="${esc(d.id)}"><td>${devLink(d.id)}</td><td>${d.role==="kiosk"?"自助机 Kiosk":"收费终端 Cashier"}</td>
    <td class="${d.online?"on":"off"}">${d.online?"在线 Online":"离线 Offline"}${d.enabled?"":" (停用 disabled)"}</td>
    ${paperCell(d)}
    <td class="${d.health&&d.health.reader_present!=null?(d.health.reader_present?"on":"off"):"muted"}">${d.health&&d.health.reader_present!=null?(d.health.reader_present?"已连接 Present":"未连接 Missing"):"—"}</td>
    ${samCell(d.health)}
    <td class="${has(d,"disk_low")?"warn":""}">${d.health&&d.health.disk_free_mb!=null?mb(d.health.disk_free_mb):"—"}</td>
    <td class="${has(d,"temp_high")?"warn":""}">${d.health&&d.health.cpu_temp_c!=null?d.health.cpu_temp_c+" °C":"—"}</td>
    <td class="${has(d,"backlog_high")?"warn":""}">${d.health&&d.health.outbox_depth!=null?d.health.outbox_depth:"—"}</td>
    <td>${esc(d.version||"—")}</td><td>${when(d.last_seen)}</td><td>${when(d.health&&d.health.telemetry_at)}</td>
    <td data-audit="${d.audit&&d.audit.count?(d.audit.audit_ok?"ok":"broken"):"none"}" class="${!d.audit||!d.audit.count?"muted":d.audit.audit_ok?"on":"off"}">${!d.audit||!d.audit.count?"—":d.audit.audit_ok?"✓ #"+d.audit.last_seq:"✗ #"+d.audit.first_bad_seq+" / "+d.audit.last_seq}</td></tr>`).join("")
    :`<tr><td colspan="13" class="muted">${DEVS.prefix?`没有以 “${esc(DEVS.prefix)}” 开头的设备 No device id starts with “${esc(DEVS.prefix)}”`:"无设备 No devices"}</td></tr>`;
}
async function drawPaymentsEvents(first,ev){
  const pays=(await api("/api/payments/unresolved",{poll:!first})).payments;
  $("pays").innerHTML=pays.length?pays.map(p=>`<tr><td>${when(p.created_at)}</td><td>${esc(p.dev)}</td>
    <td>¥${(p.amount_fen/100).toFixed(2)}</td><td>${esc(p.method)}</td><td class="off" data-state="${esc(p.state)}">${p.state==="approved"&&!p.device_told?"已扣款·终端未获知 Charged, terminal not told":esc(PAYSTATE[p.state]||p.state)}</td><td>${p.checks}</td><td>${when(p.deadline)}</td>
    <td class="muted">${esc(p.reason||"")}</td><td data-request="${esc(p.request_id)}" data-min-role="administrator">
    <button data-act="status" ${p.payment_id?"":"disabled"}>查询 Query</button><button data-act="reverse" ${p.payment_id?"":"disabled"}>冲正 Reverse</button><button data-act="resolve">标记 Resolve</button></td></tr>`).join("")
    :`<tr><td colspan="9" class="muted">无 None — 所有支付均已确认 every payment is resolved</td></tr>`;
  const evs=ev.events;
  $("events").innerHTML=evs.length?evs.map(e=>`<tr data-event="${esc(e.type)}"><td>${when(e.ts)}</td><td>${esc(e.dev)}</td><td>${esc(EVENT[e.type]||e.type)}</td><td class="muted">${detail(e)}</td></tr>`).join("")
    :`<tr><td colspan="4" class="muted">暂无事件 No events yet</td></tr>`;
  await refreshSecurity(first);
}
// Payment actions (administrator): each is audited under the signed-in user's name.
async function payAction(rid,act){
  let body={};
  if(act==="resolve"){
    const state=prompt("平台核实结果 Outcome found on the platform: approved / declined / reversed");
    if(!state) return;
    const reason=prompt("原因 Reason (required)");
    if(!reason) return;
    body={state:state.trim(),reason};
  }
  const msg=$("pay-msg");
  try{ const j=await api(`/api/payments/${encodeURIComponent(rid)}/${act}`,{method:"POST",body}); msg.textContent=`${rid}: ${j.payment.state}`; }
  catch(e){ msg.textContent=`${rid}: ${e.message}`; }
  tick(false);
}
$("pays").addEventListener("click",e=>{
  const b=e.target.closest("button[data-act]"); if(!b) return;
  payAction(b.parentElement.dataset.request,b.dataset.act);
});
$("throttles").addEventListener("click",async e=>{
  const b=e.target.closest("button[data-reset]"); if(!b) return;
  try{ await api(`/api/staff/${encodeURIComponent(b.dataset.reset)}/reset`,{method:"POST",body:{}});
    $("sec-msg").textContent=`工牌 ${b.dataset.reset} 已重置 badge reset`; }
  catch(err){ $("sec-msg").textContent=`重置失败 reset failed: ${err.message}`; }
  tick(false);
});

function devPage(reset){ if(reset){DEVS.after=[null];DEVS.at=0;} tick(true); }
$("dev-filter").addEventListener("click",e=>{
  const b=e.target.closest("button[data-state]"); if(!b) return;
  DEVS.state=b.dataset.state;
  for(const x of $("dev-filter").querySelectorAll("button")) x.classList.toggle("on",x===b);
  devPage(true);
});
let SEARCH_T=null;
$("dev-search").addEventListener("input",e=>{
  clearTimeout(SEARCH_T);
  SEARCH_T=setTimeout(()=>{ const p=e.target.value.trim().toLowerCase(); if(p!==DEVS.prefix){DEVS.prefix=p; devPage(true);} },250);
});
$("dev-next").addEventListener("click",()=>{ if(!DEVS.next) return; DEVS.after[DEVS.at+1]=DEVS.next; DEVS.at++; devPage(false); });
$("dev-prev").addEventListener("click",()=>{ if(DEVS.at>0){DEVS.at--; devPage(false);} });
$("k-audit-full").addEventListener("click",async e=>{
  e.target.disabled=true;
  try{ auditKpi(await api("/api/status?full=1")); }
  catch(err){ $("k-audit-how").textContent=err.message; }
  finally{ e.target.disabled=false; }
});

// -- fleet: sites and devices ---------------------------------------------------------------
const CFG={in_sync:"已同步 In sync",pending:"待同步 Pending",failed:"失败 Failed",unknown:"未知 Unknown"};
const stateTag=(s,t)=>`<span class="state s-${esc(s)}" data-state="${esc(s)}">${esc(t||s)}</span>`;
const ROLEDEV={kiosk:"自助机 Kiosk",cashier:"收费终端 Cashier"};
function certCell(t){ if(!t) return `<span class="muted">—</span>`; const days=(new Date(t)-Date.now())/864e5;
  return `<span class="${days<30?"warn":""}">${when(t)}</span>`; }
async function refreshFleet(first){
  const [sites,devs]=await Promise.all([api("/api/fleet/sites",{poll:!first}),api("/api/fleet/devices",{poll:!first})]);
  $("sites").innerHTML=sites.sites.length?sites.sites.map(s=>`<tr data-site="${esc(s.site)}"><td>${s.site?esc(s.site):`<span class="muted">未分配 No site</span>`}</td><td>${s.devices}</td>
    <td class="${s.in_sync===s.devices?"on":""}">${s.in_sync}</td><td class="${s.pending?"warn":"muted"}">${s.pending}</td><td class="${s.failed?"off":"muted"}">${s.failed}</td></tr>`).join("")
    :`<tr><td colspan="5" class="muted">无 None</td></tr>`;
  $("fleet-rows").innerHTML=devs.devices.length?devs.devices.map(d=>`<tr data-fleet-device="${esc(d.id)}"><td><a class="mono" href="#/device/${encodeURIComponent(d.id)}">${esc(d.id)}</a></td>
    <td>${esc(ROLEDEV[d.role]||d.role)}</td><td>${esc(d.site||"—")}</td><td>${certCell(d.cert_not_after)}</td>
    <td>${d.desired_version??"—"}</td><td>${d.reported_version??"—"}</td><td>${stateTag(d.config_state,CFG[d.config_state])}</td></tr>`).join("")
    :`<tr><td colspan="7" class="muted">无设备 No devices</td></tr>`;
}

// -- enrollments ----------------------------------------------------------------------------
const FACT={model:"型号 Model",mac:"MAC",hostname:"主机名 Host",version:"版本 Version",reader:"读卡器 Reader",printer:"打印机 Printer",sam_terminal:"PSAM 终端号 SAM terminal"};
const ENR={pending:"待批准 Pending",approved:"已批准 Approved",rejected:"已拒绝 Rejected",expired:"已过期 Expired"};
let ENROLL_SIG="";
function reqCard(r,sites){
  const f=r.facts||{};
  const facts=Object.entries(FACT).filter(([k])=>f[k]).map(([k,l])=>`<dt>${l}</dt><dd class="${k==="mac"||k==="sam_terminal"?"mono":""}">${esc(f[k])}</dd>`).join("");
  const role=/cashier|收费/i.test(f.model||"")?"cashier":"kiosk";
  return `<div class="req${r.duplicate?" dup":""}" data-code="${esc(r.code)}">
   <div class="head"><span class="code">${esc(r.code)}</span>${r.duplicate?`<span class="dupflag" data-dup>⚠ 重复申请 Duplicate — 同一序列号有两个密钥 two keys for one serial</span>`:""}
    ${r.reenroll_of?`<span class="dupflag">重新注册 Re-enrolment of ${esc(r.reenroll_of)}</span>`:""}</div>
   <div>序列号 Serial <b class="mono">${esc(r.serial)}</b></div>
   <dl class="facts">${facts}</dl>
   <div class="muted" style="font-size:14px">收到 Received <span data-ago="${esc(r.created_at)}">${ago(r.created_at)}</span> · 有效至 Expires ${when(r.expires_at)} (<span data-left="${esc(r.expires_at)}">${left(r.expires_at)}</span>)</div>
   <form class="approve" data-min-role="technician">
    <label>设备名 Device id<input name="device_id" required pattern="[a-z0-9][a-z0-9\\-]{2,62}" placeholder="${role}-004" autocomplete="off"></label>
    <label>类型 Role<select name="role"><option value="kiosk"${role==="kiosk"?" selected":""}>自助机 Kiosk</option><option value="cashier"${role==="cashier"?" selected":""}>收费终端 Cashier</option></select></label>
    <label>院区 Site<input name="site" required list="site-list" value="${esc(sites[0]||"")}" autocomplete="off"></label>
    <button class="primary" type="submit">批准 Approve</button></form>
   <form class="reject" data-min-role="technician">
    <label>拒绝原因 Reason<input name="reason" required minlength="2" maxlength="200" placeholder="例如 e.g. 不是本院设备 not one of ours"></label>
    <button class="danger" type="submit">拒绝 Reject</button></form>
  </div>`;
}
async function refreshEnrollments(first){
  const [all,sites]=await Promise.all([api("/api/enrollments",{poll:!first}),api("/api/fleet/sites",{poll:!first})]);
  const siteNames=sites.sites.map(s=>s.site).filter(Boolean);
  $("site-list").innerHTML=siteNames.map(s=>`<option value="${esc(s)}">`).join("");
  const pending=all.enrollments.filter(r=>r.status==="pending");
  const sig=JSON.stringify(pending.map(r=>[r.code,r.duplicate,r.expires_at]));
  // Re-render the cards only when the requests change: a technician may be typing in one.
  if(sig!==ENROLL_SIG){ ENROLL_SIG=sig;
    $("enroll-pending").innerHTML=pending.length?pending.map(r=>reqCard(r,siteNames)).join("")
      :`<div class="panel muted">没有待批准的申请 No pending requests</div>`; }
  else{ for(const el of document.querySelectorAll("[data-ago]")) el.textContent=ago(el.dataset.ago);
    for(const el of document.querySelectorAll("[data-left]")) el.textContent=left(el.dataset.left); }
  const done=all.enrollments.filter(r=>r.status!=="pending");
  $("enroll-history").innerHTML=done.length?done.map(r=>`<tr data-enrollment="${esc(r.code)}"><td class="mono">${esc(r.code)}</td><td class="mono">${esc(r.serial)}</td>
    <td>${stateTag(r.status,ENR[r.status])}</td><td>${r.device_id?`<a class="mono" href="#/device/${encodeURIComponent(r.device_id)}">${esc(r.device_id)}</a>`:"—"}</td>
    <td>${esc(r.decided_by||"—")}</td><td>${when(r.decided_at)}</td><td>${esc(r.reason||"")}</td></tr>`).join("")
    :`<tr><td colspan="7" class="muted">无 None</td></tr>`;
}
$("enroll-pending").addEventListener("submit",async e=>{
  e.preventDefault();
  const form=e.target, card=form.closest("[data-code]"), code=card.dataset.code;
  const data=Object.fromEntries(new FormData(form));
  const approve=form.classList.contains("approve");
  for(const b of form.querySelectorAll("button")) b.disabled=true;
  try{
    const j=await api(`/api/enrollments/${encodeURIComponent(code)}/${approve?"approve":"reject"}`,{method:"POST",body:data});
    say("enroll-msg",approve?`${code} 已批准为 approved as ${j.enrollment.device_id}`:`${code} 已拒绝 rejected`,true);
    ENROLL_SIG=""; tick(false);
  }catch(err){ say("enroll-msg",`${code}: ${err.message}`,false); for(const b of form.querySelectorAll("button")) b.disabled=false; }
});

// -- device detail --------------------------------------------------------------------------
const CMD={"printer.test":"测试打印 Test print","reader.selftest":"读卡器自检 Reader self-test","logs.collect":"收集日志 Collect logs",
  "cert.rotate":"更换证书 Rotate certificate","log.level":"日志级别 Log level","hotlist.refresh":"刷新黑名单 Refresh hot list",
  "reboot":"重启设备 Reboot","service.restart":"重启服务 Restart service"};
const CST={queued:"排队 Queued",delivered:"已送达 Delivered",waiting:"等待空闲 Waiting for idle",in_progress:"执行中 In progress",
  succeeded:"成功 Succeeded",failed:"失败 Failed",expired:"已过期 Expired",rejected:"被拒绝 Rejected"};
const FINAL=new Set(["succeeded","failed","expired","rejected"]);
const REP={applied:"已应用 Applied",failed:"失败 Failed",rejected:"被拒绝 Rejected"};
const short=h=>h?`<span class="mono" title="${esc(h)}">${esc(h.slice(0,12))}…</span>`:"—";
function flat(o,p=""){ const out=[]; for(const [k,v] of Object.entries(o||{})){ const key=p?`${p}.${k}`:k;
  if(v&&typeof v==="object"&&!Array.isArray(v)) out.push(...flat(v,key)); else out.push([key,v]); } return out; }
function cmdRow(c){
  const out=Object.keys(c.output||{}).length?words(c.output):"";
  const res=[c.code,c.message,out].filter(Boolean).join(" · ");
  const args=Object.keys(c.args||{}).length?` <span class="muted">${esc(words(c.args))}</span>`:"";
  return `<tr data-command="${esc(c.command_id)}" data-cmd-name="${esc(c.name)}"><td>${when(c.created_at)}</td><td>${esc(CMD[c.name]||c.name)}${args}</td>
    <td>${stateTag(c.state,CST[c.state])}</td><td>${esc(c.created_by||"—")}</td><td>${when(c.updated_at)}</td><td class="muted">${esc(res)}</td></tr>`;
}
let CMDS=[];
function renderCommands(){
  $("dev-cmdlist").innerHTML=CMDS.length?CMDS.map(cmdRow).join(""):`<tr><td colspan="6" class="muted">暂无命令 No commands yet</td></tr>`;
}
async function refreshDevice(first){
  const dev=DEVICE;
  if(first){ $("dev-title").textContent=dev; $("cmd-msg").textContent=""; $("dev-admin-msg").textContent=""; }
  const d=(await api(`/api/fleet/devices/${encodeURIComponent(dev)}`,{poll:!first})).device;
  if(dev!==DEVICE) return;
  $("dev-badges").innerHTML=[d.online?`<span class="state s-in_sync">在线 Online</span>`:`<span class="state s-failed">离线 Offline</span>`,
    d.enabled?"":`<span class="state s-failed">已停用 Disabled</span>`,
    `<span class="state s-unknown">${esc(ROLEDEV[d.role]||d.role)}</span>`,`<span class="state s-unknown">${esc(d.site||"—")}</span>`].join(" ");
  const c=d.cert, f=d.facts||{};
  $("dev-ident").innerHTML=[["类型 Role",esc(ROLEDEV[d.role]||d.role)],["院区 Site",esc(d.site||"—")],
    ["序列号 Serial",`<span class="mono">${esc(d.serial||"—")}</span>`],["型号 Model",esc(f.model||"—")],["软件版本 Version",esc(f.version||"—")],
    ["证书 Certificate",c?`<span class="mono">${esc(c.serial)}</span>${c.revoked?` <span class="state s-revoked">已吊销 Revoked</span>`:""}`:"—"],
    ["证书到期 Expires",c?`${certCell(c.not_after)} <span class="muted">(${left(c.not_after)})</span>`:"—"]]
    .map(([k,v])=>`<dt>${k}</dt><dd>${v}</dd>`).join("");
  const des=d.desired||{}, rep=d.reported||{};
  const row=(label,a,b,cmp)=>`<tr><th>${label}</th><td>${a}</td><td class="${cmp&&a!==b?"diff":""}">${b}</td></tr>`;
  $("dev-sync").innerHTML=d.in_sync?stateTag("in_sync",CFG.in_sync):d.reported?stateTag(rep.status==="applied"?"pending":"failed",rep.status==="applied"?CFG.pending:CFG.failed):stateTag("unknown",CFG.unknown);
  $("dev-config").innerHTML=row("版本 Version",String(des.version??"—"),String(rep.version??"—"),true)
    +row("哈希 Hash",short(des.hash),short(rep.hash),true)
    +row("状态 Status","—",rep.status?stateTag(rep.status,REP[rep.status]):`<span class="muted">未报告 never reported</span>`)
    +row("时间 At","—",when(rep.at))
    +(rep.code||rep.message?row("原因 Reason","—",esc([rep.code,rep.message].filter(Boolean).join(" · "))):"");
  const kv=flat(des.settings);
  $("dev-settings").innerHTML=kv.length?kv.map(([k,v])=>`<tr><td class="mono">${esc(k)}</td><td>${esc(words(v))}</td></tr>`).join("")
    :`<tr><td class="muted">设备自身设置 the device's own settings</td></tr>`;
  $("dev-disable").disabled=!d.enabled; $("dev-revoke").disabled=!c||c.revoked;
  CMDS=d.commands||[]; renderCommands();
}
async function follow(id){
  // Long-poll one command until it reaches a final state; the list shows every change.
  for(let i=0;i<120;i++){
    let c; try{ c=(await api(`/api/commands/${id}?wait=5`,{poll:true})).command; }catch(e){ return; }
    const k=CMDS.findIndex(x=>x.command_id===id); if(k>=0) CMDS[k]=c; else CMDS.unshift(c);
    if(VIEW==="device"&&DEVICE===c.dev) renderCommands();
    if(FINAL.has(c.state)){ if(VIEW==="device"&&DEVICE===c.dev) say("cmd-msg",`${CMD[c.name]||c.name}: ${CST[c.state]}`,c.state==="succeeded"); return; }
  }
}
$("dev-cmds").addEventListener("click",async e=>{
  const b=e.target.closest("button[data-cmd]"); if(!b) return;
  const name=b.dataset.cmd, dev=DEVICE; let args={};
  if(name==="log.level") args={level:$("cmd-level").value};
  if(name==="service.restart") args={service:$("cmd-service").value};
  if(name==="logs.collect") args={lines:500};
  if(name==="reboot"&&!confirm(`重启设备 ${dev}？正在服务的患者会等到设备空闲。\nReboot ${dev}? It waits until no patient is using it.`)) return;
  if(name==="service.restart"&&!confirm(`重启 ${dev} 的 ${args.service} 服务？ Restart ${args.service} on ${dev}?`)) return;
  try{
    const c=(await api(`/api/fleet/devices/${encodeURIComponent(dev)}/commands`,{method:"POST",body:{name,args}})).command;
    say("cmd-msg",`${CMD[name]||name}: ${CST[c.state]||c.state}`,true);
    CMDS.unshift(c); renderCommands(); follow(c.command_id);
  }catch(err){ say("cmd-msg",`${CMD[name]||name}: ${err.message}`,false); }
});
$("dev-disable").addEventListener("click",async()=>{
  if(!confirm(`停用 ${DEVICE}？它将不能再连接。 Disable ${DEVICE}? It can no longer connect.`)) return;
  try{ await api(`/api/fleet/devices/${encodeURIComponent(DEVICE)}/disable`,{method:"POST",body:{}}); say("dev-admin-msg","已停用 Disabled",true); tick(false); }
  catch(err){ say("dev-admin-msg",err.message,false); }
});
$("dev-revoke").addEventListener("click",async()=>{
  if(!confirm(`吊销 ${DEVICE} 的证书？设备需重新注册。 Revoke ${DEVICE}'s certificate? It must enroll again.`)) return;
  try{ await api(`/api/fleet/devices/${encodeURIComponent(DEVICE)}/revoke`,{method:"POST",body:{}}); say("dev-admin-msg","证书已吊销 Certificate revoked",true); tick(false); }
  catch(err){ say("dev-admin-msg",err.message,false); }
});

// -- device telemetry charts (central/dashboard/telemetry_api.py) ---------------------------
// The device page's last 6 hours / 2 days / 30 days: one plain SVG chart per metric (the page
// is served offline: no chart library). Gauges: the average as a line over a min–max band;
// reconnects: a bar per bucket. Fetched when the page opens, on a range switch and every 30 s.
const TELE={range:"6h",dev:null,at:0};
const TELE_UNIT={level:"",msgs:"条 msgs",MB:"MB","°C":"°C","":"",times:"次 times"};
const TELE_COLOR={paper:"#0b4f6c",backlog:"#b54708",disk:"#067647",temp:"#b42318",load:"#6941c6",reconnects:"#475467"};
const TELE_PAPER={0:"缺纸 out",1:"将尽 near end",2:"正常 ok"};
const TELE_TIER={raw:"原始采样 raw samples",minute:"分钟汇总 per-minute",hour:"小时汇总 per-hour"};
function teleTicks(lo,hi,n,whole){
  if(hi<=lo) hi=lo+1;
  const raw=(hi-lo)/n, mag=10**Math.floor(Math.log10(raw)), f=raw/mag;
  const step=Math.max(whole?1:0,(f<=1?1:f<=2?2:f<=2.5?2.5:f<=5?5:10)*mag), out=[];
  for(let v=Math.ceil(lo/step)*step; v<=hi+step*1e-9; v+=step) out.push(+v.toFixed(6));
  return out;
}
const teleNum=v=>Math.abs(v)>=1e4?(v/1e3).toFixed(0)+"k":Math.abs(v)>=100?v.toFixed(0):+v.toFixed(2)+"";
function teleTime(ms,range){ const s=siteTime(new Date(ms)); return range==="6h"?s.slice(11,16):range==="2d"?s.slice(5,13)+"时":s.slice(5,10); }
function teleChart(m,from,to,step,range){
  const W=400,H=170,L=46,R=8,T=8,B=24, w=W-L-R, h=H-T-B;
  // free disk in GB once it is that large
  const gb=m.name==="disk"&&m.points.some(p=>p[3]>=2048), pts=gb?m.points.map(p=>[p[0],p[1]/1024,p[2]/1024,p[3]/1024]):m.points;
  const x=t=>L+(t-from)/(to-from)*w;
  let lo,hi;
  if(m.name==="paper"){lo=0;hi=2;}
  else if(pts.length){ lo=Math.min(...pts.map(p=>p[2])); hi=Math.max(...pts.map(p=>p[3]));
    if(m.kind==="counter"||m.name==="backlog") lo=0;
    const pad=(hi-lo)*0.08||Math.max(1,Math.abs(hi)*0.05); if(lo!==0) lo-=pad; hi+=pad; }
  else{lo=0;hi=1;}
  const y=v=>T+h-(v-lo)/(hi-lo)*h;
  const yt=m.name==="paper"?[0,1,2]:teleTicks(lo,hi,4,m.kind==="counter");
  const xt=[], span=to-from, tstep=range==="6h"?3600e3:range==="2d"?12*3600e3:7*864e5;
  for(let t=Math.ceil(from/tstep)*tstep;t<to;t+=tstep) if(x(t)>L+24&&x(t)<W-R-24) xt.push(t);
  let g=yt.map(v=>`<line class="grid" x1="${L}" x2="${W-R}" y1="${y(v)}" y2="${y(v)}"/><text x="${L-4}" y="${y(v)+4}" text-anchor="end">${m.name==="paper"?esc(TELE_PAPER[v].split(" ")[0]):teleNum(v)}</text>`).join("");
  g+=xt.map(t=>`<line class="grid" x1="${x(t)}" x2="${x(t)}" y1="${T}" y2="${T+h}"/><text x="${x(t)}" y="${H-6}" text-anchor="middle">${esc(teleTime(t,range))}</text>`).join("");
  g+=`<line class="axis" x1="${L}" x2="${W-R}" y1="${T+h}" y2="${T+h}"/><line class="axis" x1="${L}" x2="${L}" y1="${T}" y2="${T+h}"/>`;
  const c=TELE_COLOR[m.name]||"#0b4f6c";
  let body="";
  if(!pts.length) body=`<text class="none" x="${L+w/2}" y="${T+h/2}" text-anchor="middle">无数据 No data</text>`;
  else if(m.kind==="counter"){
    const bw=Math.max(1.5,(step?step*1000:span/pts.length)/span*w*0.8);
    body=pts.filter(p=>p[1]>0).map(p=>`<rect x="${(x(p[0])-bw/2).toFixed(1)}" y="${y(p[1]).toFixed(1)}" width="${bw.toFixed(1)}" height="${(T+h-y(p[1])).toFixed(1)}" fill="${c}"/>`).join("");
  }else{
    // a gap longer than three buckets (or samples) breaks the line: the device said nothing
    const dts=pts.slice(1).map((p,i)=>p[0]-pts[i][0]).sort((a,b)=>a-b);
    const gap=3*Math.max(step*1000,dts.length?dts[dts.length>>1]:0);
    const segs=[[]]; pts.forEach((p,i)=>{ if(i&&p[0]-pts[i-1][0]>gap) segs.push([]); segs[segs.length-1].push(p); });
    for(const s of segs){
      const line=s.map(p=>`${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
      if(step&&s.length>1) body+=`<polygon points="${s.map(p=>`${x(p[0]).toFixed(1)},${y(p[3]).toFixed(1)}`).join(" ")} ${s.slice().reverse().map(p=>`${x(p[0]).toFixed(1)},${y(p[2]).toFixed(1)}`).join(" ")}" fill="${c}" fill-opacity=".15"/>`;
      body+=s.length>1?`<polyline points="${line}" fill="none" stroke="${c}" stroke-width="1.6"/>`:`<circle cx="${x(s[0][0]).toFixed(1)}" cy="${y(s[0][1]).toFixed(1)}" r="2" fill="${c}"/>`;
    }
  }
  const unit=gb?"GB":TELE_UNIT[m.unit]??m.unit, last=pts.length?pts[pts.length-1][1]:null;
  const latest=last===null?"":m.kind==="counter"?`共 ${pts.reduce((a,p)=>a+p[1],0)} 次 total`
    :m.name==="paper"?`最新 latest ${esc(TELE_PAPER[Math.round(last)]||last)}`:`最新 latest ${teleNum(last)} ${esc(unit)}`;
  return `<div class="chart" data-metric="${esc(m.name)}"><h3><span>${esc(m.label_zh)} ${esc(m.label)}${unit&&m.name!=="paper"?` <span class="muted">(${esc(unit)})</span>`:""}</span><span class="muted">${latest}</span></h3>
    <svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(m.label)}" data-points="${pts.length}">${g}${body}</svg></div>`;
}
async function refreshTelemetry(first){
  const dev=DEVICE; if(!dev) return;
  if(TELE.dev!==dev){ TELE.dev=dev; TELE.at=0; $("tele-charts").innerHTML=""; $("tele-msg").textContent=""; }
  if(!first&&Date.now()-TELE.at<30000) return;
  TELE.at=Date.now();
  const range=TELE.range;
  let j;
  try{ j=await api(`/api/devices/${encodeURIComponent(dev)}/telemetry?range=${range}`,{poll:!first}); }
  catch(e){ if(e instanceof ApiErr&&e.status===401) throw e; if(dev===DEVICE) say("tele-msg",e.message,false); return; }
  if(dev!==DEVICE||range!==TELE.range) return;
  const from=Date.parse(j.from), to=Date.parse(j.to);
  $("tele-tier").textContent=`${TELE_TIER[j.tier]||j.tier}${j.step_s?` · ${j.step_s>=3600?j.step_s/3600+" 小时 h":j.step_s/60+" 分钟 min"}`:""}`;
  $("tele-charts").innerHTML=j.metrics.map(m=>teleChart(m,from,to,j.step_s,range)).join("");
  $("tele-msg").textContent="";
}
$("tele-range").addEventListener("click",e=>{
  const b=e.target.closest("button[data-range]"); if(!b) return;
  TELE.range=b.dataset.range; TELE.at=0;
  for(const x of $("tele-range").querySelectorAll("button")) x.classList.toggle("on",x===b);
  refreshTelemetry(true).catch(()=>{});
});
{ const deviceView=VIEWS.device; // the device page also draws the charts (after its own parts)
  VIEWS.device=async first=>{ const r=await Promise.allSettled([deviceView(first),refreshTelemetry(first)]);
    for(const x of r) if(x.status==="rejected") throw x.reason; }; }

// -- staff accounts (administrator) ---------------------------------------------------------
async function refreshUsers(first){
  const us=(await api("/api/users",{poll:!first})).users;
  $("users").innerHTML=us.length?us.map(u=>`<tr data-user="${esc(u.username)}"><td class="mono">${esc(u.username)}</td><td>${esc(u.name)}</td><td>${esc(ROLE[u.role]||u.role)}</td>
    <td>${u.disabled?`<span class="state s-failed">已停用 Disabled</span>`:`<span class="state s-in_sync">有效 Active</span>`}</td><td>${when(u.created_at)} <span class="muted">${esc(u.created_by)}</span></td>
    <td><button data-uact="${u.disabled?"enable":"disable"}">${u.disabled?"启用 Enable":"停用 Disable"}</button><button data-uact="password">设密码 Set password</button></td></tr>`).join("")
    :`<tr><td colspan="6" class="muted">还没有账号 No accounts yet</td></tr>`;
}
$("users").addEventListener("click",async e=>{
  const b=e.target.closest("button[data-uact]"); if(!b) return;
  const u=b.closest("tr").dataset.user, act=b.dataset.uact; let body={};
  if(act==="password"){ const p=prompt(`${u} 的新密码（至少 10 个字符）New password for ${u} (10 characters or more)`); if(!p) return; body={password:p}; }
  try{ await api(`/api/users/${encodeURIComponent(u)}/${act}`,{method:"POST",body}); say("user-msg",`${u}: ✓`,true); }
  catch(err){ say("user-msg",`${u}: ${err.message}`,false); }
  tick(false);
});
$("user-form").addEventListener("submit",async e=>{
  e.preventDefault(); const data=Object.fromEntries(new FormData(e.target));
  try{ await api("/api/users",{method:"POST",body:data}); say("user-msg",`${data.username} 已添加 added`,true); e.target.reset(); }
  catch(err){ say("user-msg",err.message,false); }
  tick(false);
});

// -- rollouts: staged software updates (docs/updates.md "Rollouts") -------------------------
VIEWS.rollouts=refreshRollouts;
const RST={scheduled:"已计划 Scheduled",running:"进行中 Running",paused:"已暂停 Paused",completed:"已完成 Completed",cancelled:"已取消 Cancelled"};
const UST={queued:"排队 Queued",sent:"已下发 Sent",downloading:"下载中 Downloading",downloaded:"已下载 Downloaded",verified:"已校验 Verified",
  installing:"安装中 Installing",awaiting_health:"健康检查 Health check",committed:"已更新 Committed",rolled_back:"已回滚 Rolled back",failed:"失败 Failed",skipped:"已跳过 Skipped"};
let ROLLOUT=null;
function roTarget(t){ t=t||{}; const p=[];
  if(t.site) p.push(`院区 site ${esc(t.site)}`); if(t.role) p.push(esc(ROLEDEV[t.role]||t.role));
  if((t.from_versions||[]).length) p.push(`从 from ${esc(t.from_versions.join(", "))}`);
  if((t.devices||[]).length) p.push(t.devices.length<=3?t.devices.map(esc).join(", "):`${t.devices.length} 台 devices`);
  return p.join(" · ")||"全部设备 All devices"; }
// Done first (green), then on the way, then failures (red), then still to go (grey).
const UBAR=["committed","awaiting_health","installing","verified","downloaded","downloading","sent","rolled_back","failed","queued","skipped"];
function roBar(r){ const n=r.devices||1;
  return UBAR.filter(s=>r.counts[s]).map(s=>`<span class="u-${s}" style="width:${100*r.counts[s]/n}%" title="${UST[s]}: ${r.counts[s]}"></span>`).join(""); }
async function refreshRollouts(first){
  const list=(await api("/api/rollouts",{poll:!first})).rollouts;
  if(!ROLLOUT&&list.length) ROLLOUT=list[0].rollout_id;
  $("ro-rows").innerHTML=list.length?list.map(r=>`<tr data-rollout="${esc(r.rollout_id)}" class="${r.rollout_id===ROLLOUT?"sel":""}"><td class="mono">${esc(r.version)}</td>
    <td>${stateTag(r.state,RST[r.state])}</td><td>${roTarget(r.target)}</td><td><div class="ro-bar">${roBar(r)}</div></td>
    <td>${r.done}/${r.devices}</td><td class="${r.failed?"off":"muted"}">${r.failed}</td><td>${when(r.created_at)}</td><td>${esc(r.created_by)}</td></tr>`).join("")
    :`<tr><td colspan="8" class="muted">还没有发布任务 No rollouts yet</td></tr>`;
  $("ro-detail").hidden=!ROLLOUT;
  if(!ROLLOUT) return;
  const id=ROLLOUT, r=(await api(`/api/rollouts/${id}`,{poll:!first})).rollout;
  if(id!==ROLLOUT) return;
  $("ro-title").textContent=r.version; $("ro-state").innerHTML=stateTag(r.state,RST[r.state]); $("ro-id").textContent=r.rollout_id;
  $("ro-reason").hidden=!r.reason;
  $("ro-reason").textContent=r.reason?`${r.reason_code==="failure_threshold"?"已达失败阈值，自动暂停 Paused at its failure threshold: ":""}${r.reason}`:"";
  const thr=[r.failure_threshold!=null?`${r.failure_threshold} 台失败 failed`:"",r.failure_ratio!=null?`${Math.round(r.failure_ratio*100)}% (≥${r.min_finished} 台完成 finished)`:""].filter(Boolean).join(" / ");
  $("ro-facts").innerHTML=[["目标 Target",roTarget(r.target)+(r.allow_downgrade?` <span class="warn">允许降级 downgrade allowed</span>`:"")],
    ["速率 Rate",`每分钟最多 ${r.max_per_minute} 台 per minute · 同时最多 ${r.max_in_flight} 台 at once`],["暂停阈值 Pauses at",thr||"—"],
    ["创建 Created",`${when(r.created_at)} · ${esc(r.created_by)}`],["开始 Started",when(r.started_at)],["结束 Ended",when(r.finished_at)],
    ["进度 Progress",`${r.done}/${r.devices} 完成 done · ${r.in_flight} 进行中 in flight · <span class="${r.failed?"off":""}">${r.failed} 失败 failed</span>`],
    ...(r.notes?[["说明 Notes",esc(r.notes)]]:[])].map(([k,v])=>`<dt>${k}</dt><dd>${v}</dd>`).join("");
  $("ro-bar").innerHTML=roBar(r);
  $("ro-legend").innerHTML=UBAR.filter(s=>r.counts[s]).map(s=>`<span data-count="${s}"><i class="u-${s}"></i>${UST[s]} <b>${r.counts[s]}</b></span>`).join("");
  for(const b of document.querySelectorAll("[data-ro-act]")){ const a=b.dataset.roAct;
    b.disabled=!(a==="pause"?["running","scheduled"]:a==="resume"?["paused","scheduled"]:["running","paused","scheduled"]).includes(r.state); }
  $("ro-devs").innerHTML=r.device_rows.map(d=>`<tr data-ro-dev="${esc(d.dev)}"><td><a class="mono" href="#/device/${encodeURIComponent(d.dev)}">${esc(d.dev)}</a></td>
    <td>${stateTag(d.state,UST[d.state])}</td><td class="mono">${esc(d.from_version||"—")}</td><td class="mono">${esc(d.running_version||"—")}</td>
    <td>${d.bytes_total?`${Math.round(100*(d.bytes_done||0)/d.bytes_total)}%`:"—"}</td><td>${when(d.updated_at)}</td>
    <td class="mono">${esc(d.code||"")}</td><td class="muted">${esc(d.message||"")}</td></tr>`).join("");
}
$("ro-rows").addEventListener("click",e=>{ const tr=e.target.closest("tr[data-rollout]"); if(!tr) return; ROLLOUT=tr.dataset.rollout; $("ro-msg").textContent=""; tick(true); });
$("ro-detail").addEventListener("click",async e=>{
  const b=e.target.closest("button[data-ro-act]"); if(!b||!ROLLOUT) return;
  const act=b.dataset.roAct, body={};
  if(act!=="resume"){ const why=prompt(act==="pause"?"暂停原因（可不填）Why pause? (optional)":"取消原因（可不填）取消后不能恢复。Why cancel? (optional) It cannot be undone.");
    if(why===null) return; if(why.trim().length>=2) body.reason=why.trim(); }
  try{ const r=(await api(`/api/rollouts/${ROLLOUT}/${act}`,{method:"POST",body})).rollout; say("ro-msg",`${r.version}: ${RST[r.state]}`,true); tick(true); }
  catch(err){ say("ro-msg",err.message,false); }
});
$("ro-form").addEventListener("submit",async e=>{
  e.preventDefault(); const f=Object.fromEntries(new FormData(e.target));
  const body={version:f.version.trim(),max_per_minute:+f.max_per_minute,max_in_flight:+f.max_in_flight,failure_threshold:+f.failure_threshold};
  if(f.site.trim()) body.site=f.site.trim(); if(f.role) body.role=f.role; if(f.notes.trim()) body.notes=f.notes.trim();
  if(!confirm(`开始向${roTarget(body)}发布 ${body.version}？ Start installing ${body.version}?`)) return;
  try{ const r=(await api("/api/rollouts",{method:"POST",body})).rollout; ROLLOUT=r.rollout_id;
    say("ro-create-msg",`${r.version}: ${r.counts.queued} 台排队 queued, ${r.counts.skipped} 台跳过 skipped`,true); e.target.reset(); tick(true); }
  catch(err){ say("ro-create-msg",err.message,false); }
});

start().catch(()=>{ $("updated").textContent="无法连接 central / cannot reach central"; });
