"""The patient's screen in a real headless Chromium (Debian package), driven over CDP.

Each sample state is pushed through the bus exactly as the counter flow does;
the page must render it (checked on the DOM) and a screenshot of every state is
kept under artifacts/screens/ for a person to look at.
"""
from __future__ import annotations

import re
import time

import cv2
import pytest

from kiosk.app.screen import ScreenState
from kiosk.app.screen.samples import samples
from kiosk.app.screen.texts import LABELS, REASONS, prompt_for

from .conftest import ARTIFACTS, open_screen

SAMPLES = samples()
SCORE_WORDS = re.compile(r"score|similarity|confidence|相似度|分数|得分|置信|匹配度", re.I)
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def page(screen, browser, tmp_path_factory):
    url, bus, token = screen
    bus.publish(ScreenState())
    open_screen(browser, url, token, tmp_path_factory.mktemp("launch"))
    browser.wait_for("Number(document.body.dataset.seq) >= 0")
    # the secret is gone from the address bar once traded for the session cookie
    assert browser.eval("location.href") == url + "/screen/" and browser.eval("window.kiosk.session") is True
    return browser, bus


@pytest.fixture(scope="module")
def face_frame(shared_dir):
    img = cv2.imread(str(shared_dir / "data" / "faces" / "misc" / "examples_knn_examples_test_obama1.jpg"))
    assert img is not None
    return img


OVERFLOW_JS = """(function(){
  var f = document.querySelector('footer').getBoundingClientRect(), bad = [];
  document.querySelectorAll('main > *:not([hidden]), header > *:not([hidden])').forEach(function(e){
    var r = e.getBoundingClientRect();
    if (r.width && (r.bottom > f.top + 1 || r.right > innerWidth + 1 || r.left < -1)) bad.push(e.id || e.tagName);
  });
  if (f.bottom > innerHeight + 1) bad.push('footer');
  return bad;
})()"""


def show(page, state: ScreenState) -> ScreenState:
    b, bus = page
    new = bus.publish(state)
    b.wait_for(f"document.body.dataset.seq === '{new.seq}'")
    return new


def prompt_text(b) -> str:
    return b.eval("document.getElementById('prompt').textContent")


@pytest.mark.parametrize("name", list(SAMPLES))
def test_each_state_renders_in_chinese_and_is_screenshotted(page, face_frame, name):
    b, bus = page
    st = SAMPLES[name]
    if b.eval("document.body.dataset.lang") != "zh":
        b.click("#lang")
    show(page, st)
    if st.camera:
        bus.publish_frame(face_frame)
        # the preview reloads every ~60 ms; a frame scaled to 640 px wide must arrive
        b.wait_for("document.getElementById('preview').naturalWidth === 640", timeout=5)
        assert b.eval("!document.getElementById('camera').hidden")
    else:
        assert b.eval("document.getElementById('camera').hidden")
    b.screenshot(ARTIFACTS / f"{name}.png")
    assert b.eval(OVERFLOW_JS) == [], "content runs under the status bar or off screen"

    text = b.text()
    assert b.eval("document.documentElement.lang") == "zh-CN"
    assert prompt_text(b) == prompt_for(st.phase, st.reason, st.prompt).zh
    assert CJK.search(text)
    assert not SCORE_WORDS.search(b.html())
    p = st.peripherals
    for dev in ("printer", "keypad", "network", "camera"):
        assert b.eval(f"document.getElementById('dev-{dev}').dataset.status") == getattr(p, dev)
        assert LABELS[dev].zh in text
    if st.phase in ("confirm", "success"):
        a = st.amounts
        for part, v in [("total", a.medfee_sumamt), ("fund", a.fund_pay_sumamt), ("account", a.acct_pay)]:
            assert b.eval(f"document.querySelector('tr[data-part={part}] td.money').textContent") == "¥" + v
        if a.credit_draw != "0.00":
            key = "credit_family" if st.payer == "family" else "credit"
            row = b.eval(f"document.querySelector('tr[data-part={key}]').innerText")
            assert LABELS[key].zh in row and "¥" + a.credit_draw in row
            if a.credit_holder:
                assert a.credit_holder in row
        if a.acct_mulaid_pay != "0.00":
            assert "¥" + a.acct_mulaid_pay in text and LABELS["family_aid"].zh in text
    if st.phase == "bill":
        assert "¥" + st.amounts.medfee_sumamt in text
        assert all(line.name in text for line in st.bill_lines)
    if st.phase == "success":
        assert "支付成功" in text and st.setl_id in text
        assert ("凭条已打印" in text) == bool(st.receipt_printed)
    if st.phase in ("failure", "cancelled"):
        assert "✗" in text and REASONS[st.reason].zh in text
    if st.phase == "pending":  # not known yet: never the failure's cross or "not paid"
        assert LABELS["pending"].zh in text and "✗" not in text and LABELS["not_paid"].zh not in text
    if st.keypad:
        shown = b.eval("Array.from(document.querySelectorAll('#digits span')).map(s => s.textContent).join('')")
        assert shown == st.keypad.masked
        assert b.eval("document.querySelectorAll('#digits span').length") == st.keypad.expected
    if st.deadline_s:
        assert re.search(r"\d+ 秒后超时", text)


def test_english_on_the_toggle_and_chinese_again_for_the_next_patient(page):
    b, _ = page
    show(page, SAMPLES["confirm"])
    assert b.eval("document.body.dataset.lang") == "zh"
    b.click("#lang")
    b.wait_for("document.body.dataset.lang === 'en'")
    text = b.text()
    b.screenshot(ARTIFACTS / "confirm.en.png")
    assert b.eval("document.documentElement.lang") == "en"
    assert prompt_text(b).startswith("Please check the amounts")
    for key in ("total", "fund", "account", "family_aid", "credit"):
        assert LABELS[key].en in text
    assert "¥36.30" in text and not CJK.search(b.eval("document.getElementById('main').innerText"))
    # the language stays for this patient's next states ...
    show(page, SAMPLES["failure_spoof"])
    assert prompt_text(b) == REASONS["spoof_suspected"].en
    b.screenshot(ARTIFACTS / "failure_spoof.en.png")
    # ... and the next patient starts in Chinese again
    show(page, SAMPLES["idle"])
    assert b.eval("document.body.dataset.lang") == "zh" and CJK.search(prompt_text(b))


def test_each_new_prompt_is_spoken_and_announced(page):
    b, _ = page
    before = b.eval("window.kiosk.spoken.length")
    show(page, SAMPLES["face_two_people"])
    spoken = b.eval("window.kiosk.spoken")
    assert len(spoken) == before + 1
    assert spoken[-1] == {"lang": "zh", "text": REASONS["multiple_faces"].zh}
    assert b.eval("document.getElementById('prompt').getAttribute('aria-live')") == "assertive"
    assert b.eval("typeof window.speechSynthesis.speak") == "function"
    # the same prompt again (a countdown tick) is not repeated aloud
    show(page, SAMPLES["face_two_people"].model_copy(update={"deadline_s": 20.0}))
    assert b.eval("window.kiosk.spoken.length") == before + 1


def test_the_screen_reacts_to_each_state_within_100_ms(page):
    b, bus = page
    names = ["face", "face_off_centre", "liveness", "matching", "confirm", "processing", "success", "idle"]
    lat = []
    for i in range(40):
        st = SAMPLES[names[i % len(names)]]
        t = time.time() * 1000
        new = bus.publish(st)
        b.wait_for(f"document.body.dataset.seq === '{new.seq}'", interval=0.002)
        lat.append(b.eval(f"window.kiosk.renderedAt[{new.seq}]") - t)
    lat.sort()
    p50, p95 = lat[len(lat) // 2], lat[int(len(lat) * 0.95) - 1]
    print(f"screen reaction: p50 {p50:.1f} ms, p95 {p95:.1f} ms (publish -> DOM rendered, n={len(lat)})")
    assert p95 < 100, lat


def test_a_peripheral_fault_shows_in_the_status_bar(page):
    b, bus = page
    show(page, SAMPLES["idle"])
    new = bus.set_peripherals(printer="error", printer_detail="paper_out", network="offline")
    b.wait_for(f"document.body.dataset.seq === '{new.seq}'")
    assert b.eval("document.getElementById('dev-printer').innerText").endswith("故障")
    assert b.eval("document.getElementById('dev-printer').title") == "paper_out"
    assert b.eval("document.getElementById('dev-network').innerText").endswith("离线")
    b.screenshot(ARTIFACTS / "status_faults.png")


@pytest.mark.parametrize("name", ["face", "confirm_family", "success", "id_entry", "failure_locked"])
def test_a_portrait_screen_fits_too(page, face_frame, name):
    b, bus = page
    b.send("Emulation.setDeviceMetricsOverride", {"width": 800, "height": 1280, "deviceScaleFactor": 1, "mobile": False})
    try:
        show(page, SAMPLES[name])
        if SAMPLES[name].camera:
            bus.publish_frame(face_frame)
            b.wait_for("document.getElementById('preview').naturalWidth === 640", timeout=5)
        b.screenshot(ARTIFACTS / f"{name}.portrait.png")
        assert b.eval(OVERFLOW_JS) == []
    finally:
        b.send("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})


CONTRAST_JS = """(function(sel){
  var out = [];
  document.querySelectorAll(sel).forEach(function(e){
    if (!e.offsetParent && e.tagName !== 'BODY') return;
    var bg = 'rgba(0, 0, 0, 0)', n = e;
    while (n && (bg === 'rgba(0, 0, 0, 0)' || bg === 'transparent')) { bg = getComputedStyle(n).backgroundColor; n = n.parentElement; }
    out.push([e.id || e.className || e.tagName, getComputedStyle(e).color, bg, parseFloat(getComputedStyle(e).fontSize)]);
  });
  return out;
})(%s)"""


def _luminance(css: str) -> float:
    r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])

    def ch(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * ch(r) + 0.7152 * ch(g) + 0.0722 * ch(b)


@pytest.mark.parametrize("name", ["confirm", "failure_spoof", "id_entry", "success"])
def test_text_is_large_and_high_contrast_for_elderly_readers(page, name):
    import json as _json

    b, _ = page
    show(page, SAMPLES[name])
    rows = b.eval(CONTRAST_JS % _json.dumps("#prompt, .outcome, td, .dev, #lang, .digits span, .attempts, h1"))
    assert rows
    for what, fg, bg, size in rows:
        l1, l2 = sorted((_luminance(fg), _luminance(bg)), reverse=True)
        ratio = (l1 + 0.05) / (l2 + 0.05)
        assert ratio >= 7.0, f"{what}: contrast {ratio:.1f}:1 ({fg} on {bg}) below WCAG AAA"
        assert size >= 20, f"{what}: {size}px text is too small"


def test_a_return_shows_the_split_before_and_after_and_return_texts(page):
    """An item-level return at the confirm key and at its end: each amount "before -> after", the
    return's own prompt and outcome, never a payment prompt (zh, then en)."""
    from kiosk.app.screen.model import Amounts
    from kiosk.app.screen.texts import RETURN_PHASE_PROMPTS

    b, _ = page
    if b.eval("document.body.dataset.lang") != "zh":
        b.click("#lang")
    old = Amounts(medfee_sumamt="104.00", fund_pay_sumamt="70.00", acct_pay="15.00", credit_draw="19.00")
    new = Amounts(medfee_sumamt="85.50", fund_pay_sumamt="55.20", acct_pay="15.00", credit_draw="15.30")
    show(page, ScreenState(phase="confirm", state="confirm", session_id="R1", kind="return", amounts=new,
                           amounts_old=old, deadline_s=60))
    b.screenshot(ARTIFACTS / "return_confirm.png")
    assert b.eval(OVERFLOW_JS) == []
    assert prompt_text(b) == RETURN_PHASE_PROMPTS["confirm"].zh
    cell = "document.querySelector('tr[data-part={}] td.money').textContent"
    assert b.eval(cell.format("total")) == "¥104.00 → ¥85.50"
    assert b.eval(cell.format("fund")) == "¥70.00 → ¥55.20" and b.eval(cell.format("credit")) == "¥19.00 → ¥15.30"
    assert b.eval("document.getElementById('title').textContent") == LABELS["return_title"].zh
    show(page, ScreenState(phase="success", state="done", session_id="R1", kind="return", amounts=new,
                           amounts_old=old, setl_id="S2", receipt_printed=True))
    head = b.eval("document.getElementById('outcome-head').textContent")
    assert head == LABELS["returned"].zh and prompt_text(b) == RETURN_PHASE_PROMPTS["success"].zh
    b.click("#lang")
    b.wait_for("document.body.dataset.lang === 'en'")
    assert b.eval("document.getElementById('outcome-head').textContent") == "Returned"
    assert not any(w in prompt_text(b) for w in ("pay", "Pay", "charged"))
    show(page, ScreenState(phase="idle", state="idle"))  # the next patient: a payment page, in Chinese
    assert b.eval("document.getElementById('title').textContent") == LABELS["title"].zh


def test_a_revocation_lists_the_mandates_that_end_and_a_lost_answer_reads_pending(page):
    """A revocation by face: the confirm step shows each mandate that ends (institution, caps, until);
    when the bank's answer was lost the outcome reads pending (…), never "not revoked" / "not paid"."""
    from kiosk.app.screen.model import MandateItem, Text

    b, _ = page
    if b.eval("document.body.dataset.lang") != "zh":
        b.click("#lang")
    ms = [MandateItem(fixmedins_code="H37020200001", per_visit="500.00", per_day="1000.00", until="2027-03-04"),
          MandateItem(fixmedins_code="H37029900009", per_visit="300.00", per_day="600.00", until="2099-01-01")]
    show(page, ScreenState(phase="confirm", state="confirm", session_id="V1", kind="revoke", mandates=ms,
                           prompt=Text(zh="您有 2 项无感支付授权", en="You have 2 mandates"), deadline_s=60))
    b.screenshot(ARTIFACTS / "revoke_confirm.png")
    assert b.eval(OVERFLOW_JS) == [] and b.eval("document.getElementById('mandates').hidden") is False
    rows = b.eval("Array.from(document.querySelectorAll('#mandate-rows tr')).map(function(r){"
                  "return Array.from(r.cells).map(function(c){return c.textContent;}).join('|');})")
    assert rows == ["H37020200001|¥500.00|¥1000.00|2027-03-04", "H37029900009|¥300.00|¥600.00|2099-01-01"]
    assert b.eval("document.getElementById('title').textContent") == LABELS["revoke_title"].zh
    assert b.eval("document.getElementById('amounts').hidden") is True
    show(page, ScreenState(phase="pending", state="pending", session_id="V1", kind="revoke", reason="revoke_pending",
                           prompt=Text(zh="撤销已发出，银行尚未确认", en="Sent; the bank has not confirmed yet.")))
    assert b.eval("document.getElementById('outcome').hidden") is False
    assert b.eval("document.getElementById('outcome-head').textContent") == LABELS["pending"].zh
    assert b.eval("document.getElementById('outcome-icon').textContent") == "…"
    assert b.eval("document.getElementById('mandates').hidden") is True
    b.click("#lang")
    b.wait_for("document.body.dataset.lang === 'en'")
    assert b.eval("document.getElementById('outcome-head').textContent") == "Pending"
    show(page, ScreenState(phase="idle", state="idle"))
    assert b.eval("document.getElementById('title').textContent") == LABELS["title"].zh
