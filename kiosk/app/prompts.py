"""What the patient reads (and hears) in each state and after each failure.

Every failure reason says what the patient can do next, in Chinese first (the
screen's default) and English. Texts are data, not code paths: the screen and
the POS answer carry the reason code; the screen shows `zh`/`en`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    zh: str
    en: str

    def format(self, **kw: object) -> "Prompt":
        return Prompt(self.zh.format(**kw), self.en.format(**kw))


# What the screen says while a state is active.
STATE_PROMPTS: dict[str, Prompt] = {
    "bill_received": Prompt("已收到账单，请看向摄像头", "Bill received. Please look at the camera."),
    "face_capture": Prompt("请正对摄像头，保持不动", "Please face the camera and hold still."),
    "liveness": Prompt("正在进行活体检测，请保持不动", "Checking that you are present. Please hold still."),
    "match": Prompt("正在核验身份", "Verifying your identity."),
    "phone_entry": Prompt("请在键盘上输入您手机号码的后四位，按确认键结束",
                          "Please type the last 4 digits of your phone number, then press Enter."),
    "id_entry": Prompt("首次使用：请在键盘上输入您的身份证号码，按确认键结束",
                       "First visit: type your national ID number on the keypad, then press Enter."),
    "activation": Prompt("正在激活医保电子凭证", "Activating your insurance e-voucher."),
    "presettled": Prompt("正在计算医保报销金额", "Calculating the insurance share."),
    "confirm": Prompt("请核对金额，按确认键支付，按取消键放弃",
                      "Please check the amounts. Press Enter to pay, Cancel to stop."),
    "settling": Prompt("正在支付，请稍候", "Paying, please wait."),
    "printing": Prompt("正在打印凭条", "Printing your receipt."),
    "done": Prompt("支付成功，请取走凭条", "Payment complete. Please take your receipt."),
    "failed": Prompt("未能完成支付", "The payment could not be completed."),
    "cancelled": Prompt("已取消，未扣款", "Cancelled. Nothing was charged."),
    "pending": Prompt("结果待确认，终端会自动完成", "The result is not confirmed yet; the terminal completes it by itself."),
}


# Failure (and warning) reasons: each tells the patient what to do next.
REASONS: dict[str, Prompt] = {
    # face capture quality
    "no_face": Prompt("未检测到人脸，请正对摄像头", "No face seen. Please look straight at the camera."),
    "multiple_faces": Prompt("画面中有多张人脸，请其他人离开镜头", "More than one face is in view. Please ask others to step aside."),
    "face_too_small": Prompt("请再靠近一些", "Please come a little closer."),
    "face_too_large": Prompt("请稍微后退", "Please move back a little."),
    # leaning in: the face fills the frame (a retry, never a spoof verdict)
    "too_close": Prompt("请稍微后退一点", "Please step back a little."),
    "blurred": Prompt("画面模糊，请保持不动", "The picture is blurred. Please hold still."),
    "off_centre": Prompt("请将脸部对准框内", "Please place your face inside the frame."),
    "too_dark": Prompt("光线太暗，请靠近灯光", "It is too dark. Please move into the light."),
    "backlit": Prompt("光线太强，请避开强光", "It is too bright. Please move out of the glare."),
    "pose": Prompt("请正视摄像头，不要侧脸或低头", "Please look straight ahead, not down or to the side."),
    "face_quality": Prompt("人脸不够清晰，请正对摄像头并保持不动",
                           "Your face is not clear enough. Please face the camera and hold still."),
    # liveness / match
    "spoof_suspected": Prompt("未通过活体检测：请本人直接面对摄像头，不要使用照片或屏幕；如需帮助请到人工窗口",
                              "Liveness check failed: the patient must face the camera in person (no photos or screens). "
                              "Staff at the counter can help."),
    "not_matched": Prompt("未能识别您的身份，请使用医保卡或到人工窗口办理",
                       "We could not recognise you. Please use your insurance card or ask staff at the counter."),
    "phone_mismatch": Prompt("手机号码后四位不符，请使用医保卡或到人工窗口办理",
                             "Those phone digits do not match. Please use your insurance card or ask staff."),
    # first-time activation
    "id_invalid": Prompt("身份证号码格式不正确，请重新输入（还可尝试 {left} 次）",
                         "That ID number is not valid. Please type it again ({left} tries left)."),
    "id_mismatch": Prompt("身份证号码与本人不符，请重新输入（还可尝试 {left} 次）",
                          "The ID number does not match you. Please type it again ({left} tries left)."),
    "id_locked": Prompt("输入错误次数过多，请 {minutes} 分钟后再试，或到人工窗口办理",
                        "Too many wrong ID numbers. Please try again in {minutes} minutes or ask staff at the counter."),
    "not_insured": Prompt("未查到有效参保信息，请到人工窗口咨询", "No active insurance was found. Please ask staff at the counter."),
    # money
    "bill_rejected": Prompt("账单无法结算，请联系收费员", "This bill cannot be settled. Please ask the cashier."),
    "insufficient_credit": Prompt("信用额度不足或不可用，请改用现金支付个人自付部分",
                              "The credit line cannot pay this. Please pay your share in cash at the counter."),
    "credit_not_eligible": Prompt("暂不能使用信用支付，未扣款；请改用现金支付个人自付部分",
                                  "Credit pay is not available to you; nothing was charged. Please pay your share in cash."),
    "credit_overdue": Prompt("信用支付已逾期，请先还款或改用现金支付",
                             "Your credit line is overdue. Please repay it first or pay in cash."),
    "family_cap_exceeded": Prompt("亲情付本月额度已用完，请联系绑定的亲属或改用现金",
                                  "The family-pay monthly cap is used up. Please contact your relative or pay in cash."),
    "centre_unavailable": Prompt("暂时无法连接医保中心，未扣款；请稍后重试或到人工窗口",
                                 "The insurance centre cannot be reached; nothing was charged. Please retry later or ask staff."),
    "bank_unavailable": Prompt("暂时无法连接银行，未扣款；请稍后重试或使用现金",
                               "The bank cannot be reached; nothing was charged. Please retry later or pay in cash."),
    "over_exposed": Prompt("画面过亮，请避开强光", "The picture is too bright. Please move out of the glare."),
    "occluded": Prompt("请摘下口罩、墨镜或帽子", "Please take off your mask, sunglasses or hat."),
    "camera_offline": Prompt("摄像头无法使用，未扣款；请使用医保卡或到人工窗口", "The camera is not working; nothing was charged. Please use your insurance card or ask staff."),
    "keypad_offline": Prompt("键盘无法使用，未扣款；请到人工窗口办理", "The keypad is not working; nothing was charged. Please ask staff at the counter."),
    "internal_error": Prompt("系统故障，未扣款；请到人工窗口办理", "System fault; nothing was charged. Please ask staff at the counter."),
    "device_fault": Prompt("终端设备故障，请到人工窗口办理", "The terminal has a fault. Please ask staff at the counter."),
    # peripherals after payment (warnings: the payment itself succeeded)
    "paper_out": Prompt("支付成功，但打印机缺纸；请向工作人员索取凭条",
                                   "Payment complete, but the printer is out of paper. Please ask staff for a receipt."),
    "printer_offline": Prompt("支付成功，但凭条未能打印；请向工作人员索取凭条",
                            "Payment complete, but the receipt did not print. Please ask staff for a receipt."),
    # senseless payment: the mandate's terms at registration (shown as the confirm step's hint)
    "mandate_terms": Prompt("无感支付授权：本院就诊的个人自付部分由信用额度自动支付，每次就诊不超过 {visit} 元，每日不超过 {day} 元，"
                            "有效至 {until}；每笔扣款都会通知您，可随时撤销。按确认键同意；输入 1-{n} 再按确认键选择较低额度；按取消键放弃",
                            "Senseless pay: your share of this hospital's bills is paid from your credit line without "
                            "your face, at most {visit} per visit and {day} per day, until {until}. You are told of every "
                            "charge and may revoke it at any time. Press Enter to agree; type 1-{n} then Enter for a "
                            "lower cap; Cancel to stop."),
    # the same with a family line in play: which lines it may use, the holder masked (last 4), and when the
    # patient has both her own and a family line, the keys to choose
    "mandate_terms_lines": Prompt("无感支付授权：本院就诊的个人自付部分由{line_zh}自动支付，每次就诊不超过 {visit} 元，每日不超过 {day} 元，"
                                  "有效至 {until}；每笔扣款都会通知您，可随时撤销。按确认键同意；输入 1-{n} 再按确认键选择较低额度"
                                  "{pick_zh}；按取消键放弃",
                                  "Senseless pay: your share of this hospital's bills is paid from {line_en} without "
                                  "your face, at most {visit} per visit and {day} per day, until {until}. You are told of "
                                  "every charge and may revoke it at any time. Enter agrees; 1-{n} then Enter: a lower "
                                  "cap{pick_en}; Cancel stops."),
    # the patient revoking her mandates by face at a terminal (kind 'revoke'): which, and that nothing is left
    "mandate_revoke_list": Prompt("您有 {n} 项无感支付授权（医疗机构 {which}）；按确认键全部撤销，按取消键保留",
                                  "You have {n} senseless-pay mandate(s) (at {which}). Press Enter to revoke them "
                                  "all, Cancel to keep them."),
    "no_mandates": Prompt("您没有有效的无感支付授权，无需撤销", "You have no senseless-pay mandate in force: nothing to revoke."),
    "revoke_unavailable": Prompt("暂时无法查询或撤销您的授权，未作任何更改；请稍后重试或到收费处",
                                 "Your mandates cannot be reached now; nothing was changed. Please retry later or ask "
                                 "the cashier."),
    "revoke_pending": Prompt("撤销已发出，银行尚未确认；终端会自动重试，结果请向收费员确认",
                             "Sent; the bank has not confirmed yet. The terminal retries by itself; the cashier can "
                             "tell you the result."),
    # a payment whose outcome is not known yet (a party's answer lost and not undone, or a fault while money
    # moved): the journal completes or reverses it by key, never twice
    "payment_pending": Prompt("支付结果待确认：终端会自动完成或退回，不会重复扣款；请向收费员确认结果",
                              "The payment's result is not confirmed yet: the terminal completes or reverses it by "
                              "itself, never twice. Please check the result with the cashier."),
    # a return whose parties disagree after the reversal (return_failed): staff settle it with the centre and bank
    "return_needs_staff": Prompt("退货尚未全部完成，需要工作人员处理；请向收银员确认结果",
                                 "The return is not complete yet and needs staff. Please check the result with the "
                                 "cashier."),
    # a registration whose party answer was lost (order 'opening'): recovery continues it by the same keys
    "register_pending": Prompt("登记已发出，尚未得到确认；终端会自动重试，结果请向收费员确认",
                               "Sent; not confirmed yet. The terminal retries by itself; the cashier can tell you "
                               "whether your visit is registered."),
    "mandate_reused": Prompt("您的无感支付授权仍有效（每次就诊不超过 {visit} 元，每日不超过 {day} 元，有效至 {until}）；按确认键登记本次就诊",
                             "Your senseless-pay mandate is still valid (at most {visit} per visit, {day} per day, "
                             "until {until}). Press Enter to register this visit."),
    # session control
    "cancelled_by_patient": Prompt("您已取消，未扣款", "You cancelled. Nothing was charged."),
    "cancelled_by_cashier": Prompt("收费员已取消本次支付，未扣款", "The cashier cancelled this payment. Nothing was charged."),
    "timeout": Prompt("操作超时，未扣款；如需继续请让收费员重新发起",
                      "Timed out; nothing was charged. Ask the cashier to start again if you wish to continue."),
    "interrupted": Prompt("支付被中断，已自动处理；请向收费员确认结果",
                          "The payment was interrupted and has been resolved automatically. Please check with the cashier."),
}


# A return session (kind 'return': the patient's face confirms; 'return_cashier': the cashier vouches for
# them) says what a return does: never "pay", never "charged". States not listed keep the texts above
# (the face and ID steps say nothing about paying).
RETURN_STATE_PROMPTS: dict[str, Prompt] = {
    "bill_received": Prompt("退货：请看向摄像头，确认是您本人", "Return: please look at the camera so we know it is you."),
    "presettled": Prompt("正在计算退货后的医保结算", "Working out the insurance split of what you keep."),
    "confirm": Prompt("请核对退货前后的金额，按确认键办理退货，按取消键放弃",
                      "Please check the amounts before and after the return. Press Enter to confirm the return, "
                      "Cancel to stop."),
    "settling": Prompt("正在办理退货，请稍候", "Processing the return, please wait."),
    "printing": Prompt("正在打印退货凭条", "Printing your return receipt."),
    "done": Prompt("退货完成，请取走凭条", "Return complete. Please take your receipt."),
    "failed": Prompt("退货未能完成", "The return could not be completed."),
    "cancelled": Prompt("已取消退货，未作任何更改", "Return cancelled. Nothing was changed."),
}
RETURN_CASHIER_STATE_PROMPTS: dict[str, Prompt] = {
    **RETURN_STATE_PROMPTS,
    "bill_received": Prompt("退货：由收银员为您确认", "Return: the cashier confirms it for you."),
    "confirm": Prompt("请核对退货前后的金额，按确认键办理退货（收银员确认），按取消键放弃",
                      "Please check the amounts before and after the return. Press Enter to confirm the return "
                      "(confirmed by the cashier), Cancel to stop."),
}
_CASHIER_CAN = ("收银员可为您确认退货", "The cashier can confirm the return for you.")
RETURN_REASONS: dict[str, Prompt] = {
    # the face could not confirm the patient: nothing changed, and the cashier fallback exists
    "not_matched": Prompt("未能识别您的身份，退货未办理；" + _CASHIER_CAN[0],
                          "We could not recognise you; nothing was changed. " + _CASHIER_CAN[1]),
    "spoof_suspected": Prompt("未能确认是本人在场，退货未办理；" + _CASHIER_CAN[0],
                              "We could not confirm a live person; nothing was changed. " + _CASHIER_CAN[1]),
    "phone_mismatch": Prompt("手机号码后四位不符，退货未办理；" + _CASHIER_CAN[0],
                             "Those phone digits do not match; nothing was changed. " + _CASHIER_CAN[1]),
    "id_locked": Prompt("输入错误次数过多，退货未办理；" + _CASHIER_CAN[0],
                        "Too many wrong ID numbers; nothing was changed. " + _CASHIER_CAN[1]),
    "camera_offline": Prompt("摄像头无法使用，退货未办理；" + _CASHIER_CAN[0],
                             "The camera is not working; nothing was changed. " + _CASHIER_CAN[1]),
    "not_insured": Prompt("未查到有效参保信息，退货未办理；请到人工窗口咨询",
                          "No active insurance was found; nothing was changed. Please ask staff at the counter."),
    "bill_rejected": Prompt("医保中心未受理这次退货，未作任何更改；请联系收银员",
                            "The insurance centre did not accept this return; nothing was changed. Please ask the cashier."),
    "centre_unavailable": Prompt("暂时无法连接医保中心，退货未办理；请稍后重试或到人工窗口",
                                 "The insurance centre cannot be reached; nothing was changed. Please retry later or ask staff."),
    "keypad_offline": Prompt("键盘无法使用，退货未办理；请到人工窗口办理",
                             "The keypad is not working; nothing was changed. Please ask staff at the counter."),
    "internal_error": Prompt("系统故障，退货未办理；请到人工窗口办理",
                             "System fault; nothing was changed. Please ask staff at the counter."),
    "device_fault": Prompt("终端设备故障，退货未办理；请到人工窗口办理",
                           "The terminal has a fault; nothing was changed. Please ask staff at the counter."),
    "paper_out": Prompt("退货完成，但打印机缺纸；请向工作人员索取退货凭条",
                        "Return complete, but the printer is out of paper. Please ask staff for your receipt."),
    "printer_offline": Prompt("退货完成，但凭条未能打印；请向工作人员索取退货凭条",
                              "Return complete, but the receipt did not print. Please ask staff for your receipt."),
    # the credit line's refusals: a return draws only after the patient confirmed (then the terminal, not the
    # session, answers); should one reach the screen it says nothing about paying
    "insufficient_credit": Prompt("信用额度不能承担退货后的自付部分，请到收银台处理",
                                  "The credit line cannot carry your share after the return. Please see the cashier."),
    "credit_not_eligible": Prompt("信用额度暂不可用，请到收银台处理", "The credit line is not available. Please see the cashier."),
    "credit_overdue": Prompt("信用额度已逾期，请到收银台处理", "The credit line is overdue. Please see the cashier."),
    "family_cap_exceeded": Prompt("亲情额度本月已用完，请到收银台处理", "The family line's monthly cap is used up. Please see the cashier."),
    "bank_unavailable": Prompt("暂时无法连接银行，退货未办理；请稍后重试或到人工窗口",
                               "The bank cannot be reached; nothing was changed. Please retry later or ask staff."),
    "cancelled_by_patient": Prompt("您已取消退货，未作任何更改", "You cancelled the return. Nothing was changed."),
    "cancelled_by_cashier": Prompt("收银员已取消退货，未作任何更改", "The cashier cancelled the return. Nothing was changed."),
    "timeout": Prompt("操作超时，退货未办理；如需继续请让收银员重新发起",
                      "Timed out; nothing was changed. Ask the cashier to start the return again if you wish."),
    # after the confirm key: pending at a party (completes by itself), refused (nothing changed, or an
    # operator's case): the cashier's POS shows which
    "payment_pending": Prompt("退货结果待确认，终端会自动完成；请向收银员确认结果",
                              "The return's result is not confirmed yet; the terminal completes it by itself. "
                              "Please check with the cashier."),
    "return_needs_staff": Prompt("退货尚未全部完成，需要工作人员处理；请向收银员确认结果",
                                 "The return is not complete yet and needs staff. Please check the result with the "
                                 "cashier."),
    "interrupted": Prompt("退货未能在此完成，请向收银员确认结果",
                          "The return did not finish here. Please check the result with the cashier."),
}


# A visit's registration (kind 'register', senseless payment: kiosk.app.visits) charges nothing: it records
# the patient's mandate and opens the visit. Its confirm step shows the terms as the reason (REGISTER_REASONS).
REGISTER_STATE_PROMPTS: dict[str, Prompt] = {
    "bill_received": Prompt("就诊登记：请看向摄像头", "Visit registration: please look at the camera."),
    "presettled": Prompt("正在查询可用的信用额度", "Checking what your credit line can cover."),
    "confirm": Prompt("请阅读无感支付授权条款，按确认键同意，按取消键放弃",
                      "Please read the senseless-pay terms. Press Enter to agree, Cancel to stop."),
    "settling": Prompt("正在登记本次就诊，请稍候", "Registering your visit, please wait."),
    "printing": Prompt("正在打印授权凭条", "Printing your mandate slip."),
    "done": Prompt("就诊已登记，请取走凭条；之后的费用将自动结算并通知您",
                   "Your visit is registered. Please take your slip; the visit's charges are settled "
                   "automatically and you are told of each."),
    "failed": Prompt("未能登记就诊，未作任何授权", "The visit could not be registered. Nothing was authorised."),
    "cancelled": Prompt("已取消，未作任何授权", "Cancelled. Nothing was authorised."),
    "pending": Prompt("登记结果待确认", "The registration is not confirmed yet."),
}
REGISTER_REASONS = ("mandate_terms", "mandate_terms_lines", "mandate_reused")  # shown only by a registration


# The patient revoking her senseless-pay mandates by face (kind 'revoke', POST /pos/v1/mandates/revoke;
# kiosk.app.visits): nothing is paid or charged, only authorisations end.
REVOKE_STATE_PROMPTS: dict[str, Prompt] = {
    "bill_received": Prompt("撤销无感支付授权：请看向摄像头", "Revoking senseless pay: please look at the camera."),
    "presettled": Prompt("正在查询您的无感支付授权", "Looking up your senseless-pay mandates."),
    "confirm": Prompt("按确认键撤销，按取消键保留", "Press Enter to revoke, Cancel to keep."),
    "settling": Prompt("正在撤销授权，请稍候", "Revoking, please wait."),
    "printing": Prompt("正在打印撤销凭条", "Printing your slip."),
    "done": Prompt("已办理，请取走凭条（列明每项授权是否已撤销）",
                   "Done. Please take your slip: it lists each mandate and whether it was revoked."),
    "failed": Prompt("未能撤销授权", "The mandates were not revoked."),
    "cancelled": Prompt("已取消，授权保持不变", "Cancelled. Your mandates stay as they were."),
    "pending": Prompt("撤销结果待确认", "The revocation is not confirmed yet."),
}
REVOKE_REASONS = ("mandate_revoke_list", "no_mandates", "revoke_unavailable", "revoke_pending")  # shown only by a revocation


def state_prompt(state: str, kind: str = "pay") -> Prompt:
    """The state's text for a payment session (kind 'pay'), a return ('return', 'return_cashier') or a
    visit's registration ('register')."""
    if kind == "register" and state in REGISTER_STATE_PROMPTS:
        return REGISTER_STATE_PROMPTS[state]
    if kind == "revoke" and state in REVOKE_STATE_PROMPTS:
        return REVOKE_STATE_PROMPTS[state]
    if kind == "return_cashier" and state in RETURN_CASHIER_STATE_PROMPTS:
        return RETURN_CASHIER_STATE_PROMPTS[state]
    if kind.startswith("return") and state in RETURN_STATE_PROMPTS:
        return RETURN_STATE_PROMPTS[state]
    return STATE_PROMPTS[state]


def reason_prompt(reason: str, *, kind: str = "pay", **kw: object) -> Prompt:
    p = RETURN_REASONS.get(reason, REASONS[reason]) if kind.startswith("return") else REASONS[reason]
    if kw:
        return p.format(**kw)
    return p
