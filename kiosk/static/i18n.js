// Screen texts in Chinese (default) and English. Keys are stable; both languages always present.
window.I18N = {
  zh: {
    insert: "请插入您的居民健康卡", insert_sub: "或出示电子健康卡二维码", reading: "正在读卡，请勿拔卡…",
    identifying: "正在查询就诊信息…", hello: "您好", menu_register: "挂号", menu_register_s: "当日挂号 / 预约",
    choose_dept: "请选择科室", choose_slot: "请选择医生和时段", remaining: "剩余", fee: "挂号费",
    confirm: "请确认挂号信息", patient: "就诊人", dept: "科室", doctor: "医生", time: "时间", location: "地点",
    pay_prepaid: "从就诊卡余额支付", balance: "余额", confirm_btn: "确认挂号", back: "返回", home: "首页",
    booking: "正在挂号，请稍候…", done: "挂号成功", queue: "候诊号", take_slip: "请取走挂号单和您的健康卡",
    print_failed: "挂号已成功，但凭条打印失败", reprint: "补打凭条（副本）", confirming: "正在确认结果，请勿重复挂号",
    removed: "已取卡，会话结束", offline: "暂停服务", offline_sub: "网络连接中断，请到人工窗口办理",
    timeout: "长时间无操作，即将返回首页", closed: "已停诊", none: "暂无可挂号的时段", error: "出错了",
    lang: "English", ok: "好的", today: "今天", tomorrow: "明天",
    weekdays: ["周日", "周一", "周二", "周三", "周四", "周五", "周六"],
  },
  en: {
    insert: "Please insert your health card", insert_sub: "or show your e-health card QR code", reading: "Reading your card, do not remove it…",
    identifying: "Looking up your record…", hello: "Hello", menu_register: "Register", menu_register_s: "Today or book ahead",
    choose_dept: "Choose a department", choose_slot: "Choose a doctor and time", remaining: "left", fee: "Fee",
    confirm: "Please confirm", patient: "Patient", dept: "Department", doctor: "Doctor", time: "Time", location: "Location",
    pay_prepaid: "Pay from card balance", balance: "Balance", confirm_btn: "Confirm", back: "Back", home: "Home",
    booking: "Registering, please wait…", done: "Registered", queue: "Queue number", take_slip: "Please take your slip and your card",
    print_failed: "You are registered, but the slip did not print", reprint: "Reprint slip (copy)", confirming: "Confirming the result — do not register again",
    removed: "Card removed, session ended", offline: "Out of service", offline_sub: "Network is down; please go to a staffed counter",
    timeout: "No activity — returning to the start screen", closed: "Closed", none: "No slots available", error: "Something went wrong",
    lang: "中文", ok: "OK", today: "Today", tomorrow: "Tomorrow",
    weekdays: ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"],
  },
};
