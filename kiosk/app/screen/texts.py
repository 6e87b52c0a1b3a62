"""What the screen says, in Chinese and English, for each phase and reason code.

The flow may send its own prompt; when it sends only a reason code (or nothing)
the page uses these. Every failure reason tells the patient what to DO next,
in short sentences for elderly readers. No text mentions a score.
"""
from __future__ import annotations

from kiosk.app.screen.model import Text

PHASE_PROMPTS: dict[str, Text] = {
    "idle": Text(zh="欢迎使用医保刷脸支付", en="Welcome to face pay for medical insurance"),
    "bill": Text(zh="请核对费用，然后看向摄像头", en="Please check the bill, then look at the camera"),
    "face": Text(zh="请正对摄像头，把脸放进框内", en="Please face the camera and fit your face in the frame"),
    "liveness": Text(zh="请保持不动，正在确认本人", en="Please hold still while we confirm it is you"),
    "matching": Text(zh="正在核验身份，请稍候", en="Checking your identity, please wait"),
    "id_entry": Text(zh="首次使用：请在键盘上输入身份证号码，按确认键结束",
                     en="First visit: type your ID card number on the keypad, then press Confirm"),
    "phone_entry": Text(zh="请输入手机号码后四位", en="Please type the last 4 digits of your phone number"),
    "confirm": Text(zh="请核对支付金额，按键盘上的确认键支付，按取消键放弃",
                    en="Please check the amounts. Press Confirm on the keypad to pay, Cancel to stop"),
    "processing": Text(zh="正在支付，请勿离开", en="Paying now, please do not leave"),
    "success": Text(zh="请取走凭条，谢谢", en="Please take your receipt. Thank you"),
    "failure": Text(zh="本次没有扣款，请联系收银员", en="Nothing was charged. Please ask the cashier"),
    "cancelled": Text(zh="本次没有扣款", en="Nothing was charged"),
    "pending": Text(zh="结果待确认，终端会自动完成，请向收银员确认结果",
                    en="The result is not confirmed yet; the terminal completes it. Please check with the cashier"),
}

# reason code -> actionable advice. Codes come from the vision layer's quality
# gates, the flow, the bridge and the remote parties.
REASONS: dict[str, Text] = {
    # face capture / quality gates
    "no_face": Text(zh="没有看到人脸，请站到摄像头正前方", en="No face seen. Please stand right in front of the camera"),
    "multiple_faces": Text(zh="请只留一人在镜头前", en="Only one person, please"),
    "face_too_small": Text(zh="请再靠近一点", en="Please come a little closer"),
    "too_close": Text(zh="请稍微后退一点", en="Please step back a little"),
    "off_centre": Text(zh="请把脸移到框的中间", en="Please move your face to the centre of the frame"),
    "pose": Text(zh="请正视摄像头，不要侧脸或低头", en="Please look straight at the camera, not to the side or down"),
    "blurred": Text(zh="请保持不动", en="Please hold still"),
    "too_dark": Text(zh="光线太暗，请靠近一点或摘下帽子", en="Too dark. Please come closer or take off your hat"),
    "backlit": Text(zh="背光太强，请稍微转身避开强光", en="Too much light behind you. Please turn away from the bright light"),
    "occluded": Text(zh="请摘下口罩、墨镜或帽子", en="Please take off your mask, sunglasses or hat"),
    # liveness / match outcomes (never a score)
    # a manual channel for people who cannot pass liveness (the face-payment rules): always named
    "spoof_suspected": Text(zh="未能确认是本人在场，本次没有扣款。请本人正对摄像头重试（不要使用照片或屏幕），"
                               "或使用医保卡、联系收银员办理",
                            en="We could not confirm a live person. Nothing was charged. Please face the camera yourself "
                               "and try again (no photos or screens), or use your insurance card or ask the cashier"),
    "not_matched": Text(zh="未能识别您的身份，请重试，或使用医保卡/医保码支付",
                        en="We could not recognise you. Please try again, or pay with your insurance card or code"),
    "not_activated": Text(zh="您的医保码尚未激活，请输入身份证号码激活", en="Your insurance code is not activated yet. Please type your ID number to activate it"),
    "id_invalid": Text(zh="身份证号码有误，请检查后重新输入", en="That ID number is not valid. Please check and type it again"),
    "id_mismatch": Text(zh="身份证号码与人脸不一致，请重新输入", en="The ID number does not match your face. Please type it again"),
    "id_locked": Text(zh="输错次数过多，已暂时锁定，请稍后再试或联系收银员",
                      en="Too many wrong attempts; locked for a while. Please try later or ask the cashier"),
    "phone_mismatch": Text(zh="手机号后四位不正确，请联系收银员", en="Phone digits did not match. Please ask the cashier"),
    # money
    "insufficient_credit": Text(zh="信用额度不足，请用现金或其他方式支付剩余部分",
                                en="Not enough credit. Please pay the rest in cash or another way"),
    "credit_not_eligible": Text(zh="暂不能使用信用支付，请用现金支付自付部分", en="Credit pay is not available. Please pay your share in cash"),
    "family_not_bound": Text(zh="未找到绑定的家人额度，请联系收银员", en="No family credit line is bound to you. Please ask the cashier"),
    "bill_rejected": Text(zh="医保中心未受理这张单据，请联系收银员", en="The insurance centre did not accept this bill. Please ask the cashier"),
    # outside world
    "network_down": Text(zh="网络中断，本次没有扣款，请稍后重试或联系收银员",
                         en="Network is down. Nothing was charged. Please try again later or ask the cashier"),
    "centre_unavailable": Text(zh="医保中心暂时无法连接，本次没有扣款，请稍后重试",
                               en="The insurance centre cannot be reached. Nothing was charged. Please try again later"),
    "bank_unavailable": Text(zh="银行暂时无法连接，本次没有扣款，请稍后重试", en="The bank cannot be reached. Nothing was charged. Please try again later"),
    "paper_out": Text(zh="打印机缺纸，支付已完成，请向收银员索取凭条",
                      en="The printer is out of paper. Payment is done; please ask the cashier for your receipt"),
    "cover_open": Text(zh="打印机盖未关好，请联系收银员", en="The printer cover is open. Please ask the cashier"),
    "printer_offline": Text(zh="打印机离线，支付已完成，请向收银员索取凭条",
                            en="The printer is offline. Payment is done; please ask the cashier for your receipt"),
    "keypad_offline": Text(zh="键盘无法使用，请联系收银员", en="The keypad is not working. Please ask the cashier"),
    "camera_offline": Text(zh="摄像头无法使用，请使用医保卡或联系收银员", en="The camera is not working. Please use your insurance card or ask the cashier"),
    # cancel / timeout
    "timeout": Text(zh="等待超时，本次没有扣款，请重新开始", en="Timed out. Nothing was charged. Please start again"),
    "cancelled_by_patient": Text(zh="您已取消，本次没有扣款", en="You cancelled. Nothing was charged"),
    "cancelled_by_cashier": Text(zh="收银员已取消，本次没有扣款，有疑问请咨询收银员",
                                 en="The cashier cancelled. Nothing was charged. Please ask the cashier if in doubt"),
    "internal_error": Text(zh="系统故障，本次没有扣款，请联系收银员", en="System fault. Nothing was charged. Please ask the cashier"),
    "return_needs_staff": Text(zh="退货尚未全部完成，需要工作人员处理；请向收银员确认结果",
                               en="The return is not complete yet and needs staff. Please check with the cashier"),
    # an outcome not known yet (a party's answer lost): completed or reversed by the terminal, never twice
    "payment_pending": Text(zh="支付结果待确认，终端会自动完成或退回，不会重复扣款；请向收银员确认结果",
                            en="The result is not confirmed yet: the terminal completes or reverses it by itself, "
                               "never twice. Please check with the cashier"),
}

# An item-level return (ScreenState.kind 'return'): what the patient does and what happens, never "pay"
# or "charged"; phases not listed keep the texts above (the face steps say nothing about paying).
RETURN_PHASE_PROMPTS: dict[str, Text] = {
    "bill": Text(zh="退货：请核对退回的药品，然后看向摄像头", en="Return: please check what goes back, then look at the camera"),
    "confirm": Text(zh="请核对退货前后的金额，按键盘上的确认键办理退货，按取消键放弃",
                    en="Please check the amounts before and after the return. Press Confirm on the keypad to "
                       "return, Cancel to stop"),
    "processing": Text(zh="正在办理退货，请勿离开", en="Processing the return, please do not leave"),
    "success": Text(zh="退货完成，请取走退货凭条", en="Return complete. Please take your return receipt"),
    "failure": Text(zh="退货没有办理，请联系收银员", en="The return was not made. Please ask the cashier"),
    "cancelled": Text(zh="退货已取消，没有任何更改", en="Return cancelled. Nothing was changed. Please ask the cashier if in doubt"),
}
_CASHIER = Text(zh="收银员可以为您确认退货", en="the cashier can confirm the return for you")
RETURN_REASONS: dict[str, Text] = {
    "not_matched": Text(zh="未能识别您的身份，退货没有办理；" + _CASHIER.zh,
                        en="We could not recognise you; nothing was changed. Please ask the cashier: " + _CASHIER.en),
    "spoof_suspected": Text(zh="未能确认是本人在场，退货没有办理；" + _CASHIER.zh,
                            en="We could not confirm a live person; nothing was changed. Please ask the cashier: "
                               + _CASHIER.en),
    "phone_mismatch": Text(zh="手机号后四位不正确，退货没有办理；" + _CASHIER.zh,
                           en="Phone digits did not match; nothing was changed. Please ask the cashier: " + _CASHIER.en),
    "camera_offline": Text(zh="摄像头无法使用，退货没有办理；" + _CASHIER.zh,
                           en="The camera is not working; nothing was changed. Please ask the cashier: " + _CASHIER.en),
    "id_locked": Text(zh="输错次数过多，退货没有办理；" + _CASHIER.zh,
                      en="Too many wrong attempts; nothing was changed. Please ask the cashier: " + _CASHIER.en),
    "bill_rejected": Text(zh="医保中心未受理这次退货，没有任何更改，请联系收银员",
                          en="The insurance centre did not accept this return; nothing was changed. Please ask the cashier"),
    "centre_unavailable": Text(zh="医保中心暂时无法连接，退货没有办理，请稍后重试",
                               en="The insurance centre cannot be reached; nothing was changed. Please try again later"),
    "network_down": Text(zh="网络中断，退货没有办理，请稍后重试或联系收银员",
                         en="Network is down; nothing was changed. Please try again later or ask the cashier"),
    "paper_out": Text(zh="打印机缺纸，退货已完成，请向收银员索取退货凭条",
                      en="The printer is out of paper. The return is done; please ask the cashier for your receipt"),
    "printer_offline": Text(zh="打印机离线，退货已完成，请向收银员索取退货凭条",
                            en="The printer is offline. The return is done; please ask the cashier for your receipt"),
    "keypad_offline": Text(zh="键盘无法使用，退货没有办理，请联系收银员", en="The keypad is not working; nothing was changed. Please ask the cashier"),
    "timeout": Text(zh="等待超时，退货没有办理，请让收银员重新发起", en="Timed out; nothing was changed. Please ask the cashier to start again"),
    "cancelled_by_patient": Text(zh="您已取消退货，没有任何更改", en="You cancelled the return. Nothing was changed"),
    "cancelled_by_cashier": Text(zh="收银员已取消退货，没有任何更改，有疑问请咨询收银员",
                                 en="The cashier cancelled the return. Nothing was changed. Please ask the cashier if in doubt"),
    "internal_error": Text(zh="系统故障，退货没有办理，请联系收银员", en="System fault; nothing was changed. Please ask the cashier"),
    "return_needs_staff": Text(zh="退货尚未全部完成，需要工作人员处理；请向收银员确认结果",
                               en="The return is not complete yet and needs staff. Please check with the cashier"),
    "interrupted": Text(zh="退货没有在这里完成，请向收银员确认结果",
                        en="The return did not finish here. Please check the result with the cashier"),
}

# labels used by the page (so translations live in one place, served as JSON)
LABELS: dict[str, Text] = {
    "title": Text(zh="医保刷脸支付", en="Insurance face pay"),
    "total": Text(zh="费用合计", en="Bill total"),
    "fund": Text(zh="医保统筹支付", en="Insurance fund pays"),
    "account": Text(zh="个人账户支付", en="Your personal account"),
    "family_aid": Text(zh="家庭共济支付", en="Family account (mutual aid)"),
    "credit": Text(zh="信用支付（先看病后付费）", en="Credit line (pay later)"),
    "credit_family": Text(zh="亲情付（家人信用额度）", en="Family pay (relative's credit line)"),
    "cash": Text(zh="现金支付", en="Cash"),
    "you_pay_now": Text(zh="您现在需付现金", en="You pay in cash now"),
    "credit_left": Text(zh="信用额度剩余", en="Credit left"),
    "printer": Text(zh="打印机", en="Printer"),
    "keypad": Text(zh="键盘", en="Keypad"),
    "network": Text(zh="网络", en="Network"),
    "camera": Text(zh="摄像头", en="Camera"),
    "ok": Text(zh="正常", en="OK"),
    "warning": Text(zh="注意", en="Check"),
    "error": Text(zh="故障", en="Fault"),
    "offline": Text(zh="离线", en="Offline"),
    "unknown": Text(zh="未知", en="Unknown"),
    "paid": Text(zh="支付成功", en="Paid"),
    "not_paid": Text(zh="未支付", en="Not paid"),
    "cancelled": Text(zh="已取消", en="Cancelled"),
    "lang_toggle": Text(zh="English", en="中文"),
    "seconds_left": Text(zh="秒后超时", en="s left"),
    "receipt_printed": Text(zh="凭条已打印", en="Receipt printed"),
    "receipt_not_printed": Text(zh="凭条未打印", en="Receipt not printed"),
    "id_number": Text(zh="身份证号码", en="ID number"),
    "attempts_left": Text(zh="剩余次数", en="Attempts left"),
    "yuan": Text(zh="元", en="yuan"),
    "settlement_no": Text(zh="结算号", en="Settlement no."),
    "paid_by": Text(zh="额度所属", en="Line holder"),
    "return_title": Text(zh="医保退货", en="Insurance return"),
    "returned": Text(zh="退货完成", en="Returned"),
    "not_returned": Text(zh="退货未办理", en="Not returned"),
    "before_return": Text(zh="退货前", en="Before"),
    "after_return": Text(zh="退货后", en="After"),
    "pending": Text(zh="结果待确认", en="Pending"),
    "register_title": Text(zh="无感支付 就诊登记", en="Senseless pay: visit registration"),
    "registered": Text(zh="登记完成", en="Registered"),
    "not_registered": Text(zh="未登记", en="Not registered"),
    "revoke_title": Text(zh="撤销无感支付授权", en="Revoke senseless pay"),
    "revoke_done": Text(zh="撤销已办理", en="Revocation done"),
    "not_revoked": Text(zh="未撤销", en="Not revoked"),
    "mandates_to_end": Text(zh="将撤销以下授权", en="These mandates end"),
    "institution": Text(zh="医疗机构", en="Institution"),
    "per_visit": Text(zh="每次就诊上限", en="Per visit"),
    "per_day": Text(zh="每日上限", en="Per day"),
    "until": Text(zh="有效至", en="Until"),
}


def prompt_for(phase: str, reason: str | None, prompt: Text | None, kind: str = "pay") -> Text:
    """The sentence to show and speak: the flow's own, else the reason's advice, else the phase's (a
    return's own texts first)."""
    if prompt is not None:
        return prompt
    ret = kind == "return"
    if reason and ret and reason in RETURN_REASONS:
        return RETURN_REASONS[reason]
    if reason and reason in REASONS:
        return REASONS[reason]
    if ret and phase in RETURN_PHASE_PROMPTS:
        return RETURN_PHASE_PROMPTS[phase]
    return PHASE_PROMPTS.get(phase, PHASE_PROMPTS["idle"])


def catalogue() -> dict[str, dict[str, dict[str, str]]]:
    """Everything the page needs to translate, as plain JSON."""
    return {
        "phases": {k: v.model_dump() for k, v in PHASE_PROMPTS.items()},
        "reasons": {k: v.model_dump() for k, v in REASONS.items()},
        "labels": {k: v.model_dump() for k, v in LABELS.items()},
        "return_phases": {k: v.model_dump() for k, v in RETURN_PHASE_PROMPTS.items()},
        "return_reasons": {k: v.model_dump() for k, v in RETURN_REASONS.items()},
    }
