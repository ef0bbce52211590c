"""The site-in-a-box's people and cards: demo patients, the cashier's badge, card faults.

Data only, shared by the site (demo.py) and its hardware panel (panel.py).
"""

from __future__ import annotations

__all__ = ["CARD_VARIANTS", "DEMO_BADGE", "DEMO_LOST_PATIENT", "DEMO_PATIENTS",
           "DEMO_STAFF_PIN", "SAM_PIN"]

# Patients the platform knows and the panel can insert as virtual cards. ID numbers carry a
# valid GB 11643 check digit; card numbers follow the 18-character health card number form.
DEMO_PATIENTS: tuple[dict[str, str], ...] = (
    {"name": "张三", "sex": "1", "ethnicity": "01", "birth_date": "19800101",
     "id_number": "110101198001010037", "card_number": "110100000000000001",
     "phone": "13812345678"},
    {"name": "李秀英", "sex": "2", "ethnicity": "01", "birth_date": "19650312",
     "id_number": "310104196503120022", "card_number": "310100000000000002",
     "phone": "13987654321"},
    {"name": "欧阳娜娜", "sex": "2", "ethnicity": "01", "birth_date": "19991231",
     "id_number": "440106199912310025", "card_number": "440100000000000003",
     "phone": "13711112222"},
)

# Demo-only secrets: written to 0600 files for the processes, never into a TOML.
SAM_PIN = "123456"
DEMO_STAFF_PIN = "2468"  # the seeded cashier badges (S1001 …) log in with this PIN
DEMO_BADGE = "S1001"  # 收费员一, the cashier a new user signs in as (printed at start)

# A card the platform has on its lost-card list (the panel's "挂失卡 lost card").
DEMO_LOST_PATIENT: dict[str, str] = {
    "name": "王建国", "sex": "1", "ethnicity": "01", "birth_date": "19720815",
    "id_number": "110105197208150011", "card_number": "110100000000000009",
    "phone": "13600001111"}

#: Card faults the panel can insert besides a good card, with the simulator's fault
#: (as ``ykt sim card insert --expired / --fault corrupt-tlv=…``).
CARD_VARIANTS: dict[str, str] = {
    "expired": "过期卡 Expired card",
    "lost": "挂失卡 Lost card (blocked)",
    "faulty": "故障卡 Faulty card",
}
