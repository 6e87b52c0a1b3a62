// The patient's screen. Renders the ScreenState the kiosk pushes over SSE
// (falls back to polling /screen/state), in Chinese by default or English,
// and reads each new prompt aloud (Web Speech API). No build step.
(function () {
  "use strict";
  var S = null;            // zh/en catalogue from /screen/strings
  var state = null;        // last ScreenState rendered
  var lang = "zh";
  var lastSpoken = "";
  var deadlineAt = null;   // epoch ms when the current state times out
  var camOn = false, camN = 0, camTimer = null;
  var pollTimer = null;
  // what was shown and said, for accessibility tools and the tests (text only, never an image)
  var kiosk = window.kiosk = { spoken: [], renderedAt: {}, history: [], lang: function () { return lang; } };
  var $ = function (id) { return document.getElementById(id); };

  function t(entry) { return entry ? (entry[lang] || entry.zh || "") : ""; }
  function label(key) { return S ? t(S.labels[key]) : ""; }

  function promptFor(st) {
    if (st.prompt) return st.prompt;
    var ret = st.kind === "return";
    if (st.reason && ret && S.return_reasons[st.reason]) return S.return_reasons[st.reason];
    if (st.reason && S.reasons[st.reason]) return S.reasons[st.reason];
    if (ret && S.return_phases[st.phase]) return S.return_phases[st.phase];
    return S.phases[st.phase] || S.phases.idle;
  }

  function money(y) { return "¥" + y; }

  function setLabels() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.body.dataset.lang = lang;
    document.title = label("title");
    var els = document.querySelectorAll("[data-label]");
    for (var i = 0; i < els.length; i++) els[i].textContent = label(els[i].dataset.label);
    $("status").setAttribute("aria-label", lang === "zh" ? "设备状态" : "Device status");
  }

  function row(tbody, key, amount, cls, note, before) {
    var tr = document.createElement("tr");
    if (cls) tr.className = cls;
    tr.dataset.part = key;
    var a = document.createElement("td"); a.textContent = note ? label(key) + " — " + note : label(key);
    var b = document.createElement("td"); b.className = "money";
    // a return: the original amount beside the new one ("before -> after")
    b.textContent = before != null ? money(before) + " → " + money(amount) : money(amount);
    tr.appendChild(a); tr.appendChild(b); tbody.appendChild(tr);
  }

  function nonzero(y) { return y && !/^0+\.00$/.test(y); }

  function renderAmounts(st) {
    var tb = $("amount-rows"); tb.textContent = "";
    var a = st.amounts;
    if (!a) return false;
    var o = st.kind === "return" && st.amounts_old ? st.amounts_old : null;
    var was = function (k) { return o ? o[k] : null; };
    if (o) {  // a return: the column heading "before -> after"
      var h = document.createElement("tr"); h.className = "sub"; h.dataset.part = "return_heading";
      var h1 = document.createElement("td"); h1.textContent = label("return_title");
      var h2 = document.createElement("td"); h2.className = "money";
      h2.textContent = label("before_return") + " → " + label("after_return");
      h.appendChild(h1); h.appendChild(h2); tb.appendChild(h);
    }
    row(tb, "total", a.medfee_sumamt, "total", null, was("medfee_sumamt"));
    row(tb, "fund", a.fund_pay_sumamt, null, null, was("fund_pay_sumamt"));
    row(tb, "account", a.acct_pay, null, null, was("acct_pay"));
    if (nonzero(a.acct_mulaid_pay) || (o && nonzero(o.acct_mulaid_pay)))
      row(tb, "family_aid", a.acct_mulaid_pay, null, null, was("acct_mulaid_pay"));
    if (nonzero(a.credit_draw) || st.payer === "family" || (o && nonzero(o.credit_draw)))
      row(tb, st.payer === "family" ? "credit_family" : "credit", a.credit_draw, null, a.credit_holder || "",
          was("credit_draw"));
    if (nonzero(a.cash_pay) || (o && nonzero(o.cash_pay)))
      row(tb, o ? "cash" : "you_pay_now", a.cash_pay, null, null, was("cash_pay"));
    if (a.credit_available) row(tb, "credit_left", a.credit_available, "sub");
    return true;
  }

  // a revocation by face: the mandates the confirm key ends (where, the caps, until)
  function renderMandates(st) {
    var tb = $("mandate-rows"); tb.textContent = "";
    var ms = st.mandates || [];
    ms.forEach(function (m) {
      var tr = document.createElement("tr"); tr.dataset.part = "mandate";
      [m.fixmedins_code, money(m.per_visit), money(m.per_day), m.until].forEach(function (v, i) {
        var td = document.createElement("td"); td.textContent = v; if (i === 1 || i === 2) td.className = "money";
        tr.appendChild(td);
      });
      tb.appendChild(tr);
    });
    return ms.length > 0;
  }

  var HEADS = {  // the outcome's heading by kind: [done, failed, cancelled]
    pay: ["paid", "not_paid", "cancelled"], "return": ["returned", "not_returned", "cancelled"],
    register: ["registered", "not_registered", "cancelled"], revoke: ["revoke_done", "not_revoked", "cancelled"]
  };

  function renderBill(st) {
    if (!st.amounts) return false;
    $("bill-total").textContent = money(st.amounts.medfee_sumamt);
    var ul = $("bill-lines"); ul.textContent = "";
    (st.bill_lines || []).forEach(function (l) {
      var li = document.createElement("li");
      var n = document.createElement("span"); n.textContent = l.name + (l.qty && l.qty !== "1" ? " ×" + l.qty : "");
      var m = document.createElement("span"); m.className = "money"; m.textContent = money(l.amount);
      li.appendChild(n); li.appendChild(m); ul.appendChild(li);
    });
    return true;
  }

  function renderKeypad(st) {
    var k = st.keypad || { masked: "", length: 0, expected: st.phase === "phone_entry" ? 4 : 18 };
    var d = $("digits"); d.textContent = "";
    var chars = (k.masked || "").split("");
    for (var i = 0; i < k.expected; i++) {
      var s = document.createElement("span");
      s.textContent = i < chars.length ? chars[i] : "";
      if (i < k.length) s.className = "filled";
      d.appendChild(s);
    }
    d.setAttribute("aria-label", k.length + " / " + k.expected);
    var lab = document.querySelector("#keypad .label");
    lab.textContent = st.phase === "phone_entry" ? t(S.phases.phone_entry) : label("id_number");
    $("attempts").textContent = k.attempts_left != null ? label("attempts_left") + ": " + k.attempts_left : "";
  }

  function renderStatus(p) {
    ["printer", "keypad", "network", "camera"].forEach(function (dev) {
      var el = $("dev-" + dev), s = p[dev] || "unknown";
      el.dataset.status = s;
      el.textContent = label(dev) + " " + label(s);
      var detail = p[dev + "_detail"];
      el.title = detail || "";
    });
  }

  function camera(on) {
    if (on === camOn) return;
    camOn = on;
    var img = $("preview");
    if (!on) { clearTimeout(camTimer); img.removeAttribute("src"); return; }
    var next = function () { if (camOn) img.src = "camera.jpg?n=" + (++camN); };
    img.onload = function () { camTimer = setTimeout(next, 60); };
    img.onerror = function () { camTimer = setTimeout(next, 200); };  // 204: no frame yet
    next();
  }

  var QUALITY = { no_face: 1, multiple_faces: 1, face_too_small: 1, off_centre: 1, pose: 1, blurred: 1,
                  too_dark: 1, backlit: 1, occluded: 1 };

  function speak(text) {
    kiosk.spoken.push({ lang: lang, text: text });
    try {
      if (!window.speechSynthesis || !window.SpeechSynthesisUtterance) return;
      window.speechSynthesis.cancel();
      var u = new SpeechSynthesisUtterance(text);
      u.lang = lang === "zh" ? "zh-CN" : "en-US";
      u.rate = 0.9;
      window.speechSynthesis.speak(u);
    } catch (e) { /* no voice on this device: the text stays on screen */ }
  }

  function render() {
    var st = state;
    if (!st || !S) return;
    var ph = st.phase;
    document.body.dataset.phase = ph;
    setLabels();
    if (st.kind === "return" || st.kind === "register" || st.kind === "revoke")
      $("title").textContent = document.title = label(st.kind + "_title");
    var p = t(promptFor(st));
    $("prompt").textContent = p;
    var showCam = !!st.camera;
    $("camera").hidden = !showCam;
    camera(showCam);
    document.body.dataset.guide = st.reason && QUALITY[st.reason] ? "adjust" : (ph === "liveness" ? "ok" : "");
    $("keypad").hidden = !(ph === "id_entry" || ph === "phone_entry");
    if (!$("keypad").hidden) renderKeypad(st);
    $("bill").hidden = !(ph === "bill" && renderBill(st));
    $("amounts").hidden = st.kind === "register" || st.kind === "revoke" ||
      !((ph === "confirm" || ph === "success") && renderAmounts(st));
    $("mandates").hidden = !(st.kind === "revoke" && ph === "confirm" && renderMandates(st));
    $("spinner").hidden = !(ph === "matching" || ph === "processing");
    var out = ph === "success" || ph === "failure" || ph === "cancelled" || ph === "pending";
    $("outcome").hidden = !out;
    var det = [];
    if (out) {
      // pending: the outcome is not known yet (never shown as failed); it completes by itself
      $("outcome-icon").textContent = ph === "success" ? "✓" : (ph === "pending" ? "…" : "✗");
      var heads = HEADS[st.kind] || HEADS.pay;
      $("outcome-head").textContent = label(ph === "pending" ? "pending"
        : heads[ph === "success" ? 0 : (ph === "failure" ? 1 : 2)]);
      if (st.receipt_printed === true) det.push(label("receipt_printed"));
      if (st.receipt_printed === false && ph === "success") det.push(label("receipt_not_printed"));
      if (st.setl_id && ph === "success") det.push(label("settlement_no") + " " + st.setl_id);
    }
    $("outcome-detail").textContent = det.join(" · ");
    $("outcome-detail").hidden = !det.length;
    renderStatus(st.peripherals || {});
    tick();
    if (p !== lastSpoken) { lastSpoken = p; speak(p); }
  }

  function tick() {
    var el = $("countdown");
    if (deadlineAt == null) { el.hidden = true; return; }
    var s = Math.max(0, Math.ceil((deadlineAt - Date.now()) / 1000));
    el.hidden = false;
    el.textContent = lang === "zh" ? s + " " + label("seconds_left") : s + label("seconds_left");
  }
  setInterval(tick, 250);

  function apply(st) {
    if (state && st.seq === state.seq) return;
    if (st.phase === "idle" && state && state.phase !== "idle") lang = "zh";  // next patient: default language
    state = st;
    deadlineAt = st.deadline_s != null ? Date.now() + st.deadline_s * 1000 : null;
    render();
    document.body.dataset.seq = String(st.seq);
    kiosk.renderedAt[st.seq] = Date.now();
    if (!kiosk.history.length || kiosk.history[kiosk.history.length - 1].state !== st.state)
      kiosk.history.push({ seq: st.seq, phase: st.phase, state: st.state });
  }

  function poll() {
    fetch("state", { cache: "no-store" }).then(function (r) { if (!r.ok) throw r; return r.json(); })
      .then(apply).catch(function () {});
  }

  function connect() {
    if (!window.EventSource) { pollTimer = setInterval(poll, 80); return; }
    var es = new EventSource("events");
    es.addEventListener("state", function (e) { apply(JSON.parse(e.data)); });
    es.onopen = function () { if (pollTimer) { clearInterval(pollTimer); pollTimer = null; } };
    es.onerror = function () { if (!pollTimer) pollTimer = setInterval(poll, 80); };
  }

  $("lang").addEventListener("click", function () {
    lang = lang === "zh" ? "en" : "zh";
    render();
  });

  // The kiosk browser's launcher opens this page as /screen/#k=<secret>: the fragment never reaches a
  // server or a log. Trade it once for the HttpOnly session cookie that state, events and the camera
  // need (EventSource and <img> cannot send a header), then drop it from the address and history.
  var secret = (/(?:^#|&)k=([0-9a-f]{64})(?:&|$)/.exec(location.hash) || [])[1] || null;
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);

  function session() {
    if (!secret) return Promise.resolve();
    return fetch("session", { method: "POST", cache: "no-store", headers: { "X-Screen-Token": secret } })
      .then(function (r) { if (r.ok) { secret = null; kiosk.session = true; } else kiosk.session = false; });
  }

  function start() {
    session().then(function () { return fetch("strings"); }).then(function (r) { return r.json(); }).then(function (s) {
      S = s; setLabels(); poll(); connect();
    }).catch(function () { setTimeout(start, 500); });
  }
  start();
})();
