"""Lab reports: list by card or by a scanned specimen barcode → print the selected ones.

A report already printed is marked and not printed again at a kiosk: a reprint needs staff
(at a desk terminal with a cashier signed in it prints as a marked copy).
"""

from __future__ import annotations

from typing import Any, ClassVar

from kiosk.edge_client import EdgeError
from kiosk.flows.base import Flow, text

__all__ = ["ReportsFlow", "printable"]


def printable(reports: list[dict[str, Any]], staff: bool) -> list[str]:
    """Reports selected to begin with: ready and not yet printed (or, for staff, ready)."""
    return [r["report_no"] for r in reports
            if r["status"] == "ready" and (staff or not r["printed"])]


class ReportsFlow(Flow):
    """取检验报告."""

    name = "reports"
    START = "start"
    BUSY = frozenset({"printing"})
    TRANSITIONS: ClassVar[dict[str, frozenset[str]]] = {
        "start": frozenset({"loading", "scan"}),
        "scan": frozenset({"loading", "scan"}),
        "loading": frozenset({"list", "none", "error", "scan"}),
        "list": frozenset({"list", "printing", "scan"}),
        "none": frozenset({"scan"}),
        "error": frozenset({"loading", "scan"}),
        "printing": frozenset({"printing", "done"}),
        "done": frozenset({"list", "scan"}),
    }

    @property
    def staff(self) -> bool:
        """A signed-in cashier may reprint."""
        return self.ctx.role == "cashier" and self.ctx.staff is not None

    async def start(self) -> None:
        """With a patient: list their reports; without: ask for the barcode."""
        if self.ctx.patient.get("patient_id"):
            await self._load({"patient_id": self.ctx.patient["patient_id"]}, None)
        else:
            self.to("scan")

    async def do_by_barcode(self) -> None:
        """Switch to scanning a specimen barcode."""
        self.expect("list", "none", "error", "done", "start")
        self.to("scan")

    async def on_scan(self, scan: dict[str, Any]) -> bool:
        """A specimen barcode lists its reports."""
        if scan.get("kind") != "specimen" or self.state in ("printing", "loading"):
            return False
        if self.state != "scan":
            self.to("scan")
        await self._load({"specimen_barcode": scan["value"]}, scan["value"])
        return True

    async def _load(self, body: dict[str, Any], barcode: str | None) -> None:
        self.to("loading", barcode=barcode)
        try:
            found = await self.edge.request("report.list", body)
            reports = [dict(r) for r in found["reports"]]
        except EdgeError as exc:
            if exc.reason == "not_found" or "not_found" in exc.message:
                self.to("scan", error=text(
                    "barcode_unknown", "No report for this barcode.", "未找到该条码的检验报告。",
                    todo="Check the barcode on your specimen slip and scan it again.",
                    todo_zh="请核对标本回执上的条码后重新扫描。"))
                return
            self.fail(exc)
            return
        if not reports:
            self.to("none", reports=[])
            return
        self.to("list", reports=reports, selected=printable(reports, self.staff),
                results={})

    async def do_retry(self) -> None:
        """Back to scanning after an error."""
        self.expect("error")
        self.to("scan")

    async def do_toggle(self, report_no: str) -> None:
        """Select/unselect a report; printed ones need staff, pending ones cannot print."""
        self.expect("list")
        r = next((x for x in self.data["reports"] if x["report_no"] == report_no), None)
        if r is None:
            return
        if r["status"] != "ready":
            self.to("list", error=text("not_ready", "This report is not ready yet.",
                                       "该报告尚未出具。", todo="Please come back later.",
                                       todo_zh="请稍后再来打印。"))
            return
        if r["printed"] and not self.staff:
            self.to("list", error=text(
                "reprint_needs_staff", "This report was printed already. A reprint needs "
                "staff.", "该报告已打印过，补打需要工作人员办理。",
                todo="Please ask at the lab or a staffed counter.",
                todo_zh="请到检验科或人工窗口补打。"))
            return
        sel = list(self.data["selected"])
        sel.remove(report_no) if report_no in sel else sel.append(report_no)
        self.to("list", selected=sel)

    async def do_print(self) -> None:
        """Print each selected report; each one's outcome is shown."""
        self.expect("list")
        if not self.data["selected"]:
            self.to("list", error=text("nothing_selected", "Select at least one report.",
                                       "请至少选择一份报告。"))
            return
        results: dict[str, Any] = {}
        for no in list(self.data["selected"]):
            self.to("printing", current=no, results=results)
            was_printed = next((r["printed"] for r in self.data["reports"]
                                if r["report_no"] == no), False)
            try:
                out = await self.edge.print_doc("lab_report", no, copy=bool(was_printed))
            except EdgeError as exc:
                out = {"state": "failed", "reason": exc.code, "message": exc.message,
                       "message_zh": exc.message_zh}
            results[no] = out
            if out.get("state") == "failed" and out.get("reason") in ("paper_out", "offline",
                                                                       "cover_open"):
                break  # the printer cannot go on: do not mark the rest as tried
        for r in self.data["reports"]:
            if results.get(r["report_no"], {}).get("state") == "printed":
                r["printed"] = True
        failed = [n for n, o in results.items() if o.get("state") != "printed"]
        err = None
        if failed:
            err = text("print_failed", "Some reports did not print.", "部分报告打印失败。",
                       todo="Please ask at a staffed counter to print them.",
                       todo_zh="请到人工窗口打印。")
        self.to("done", results=results, selected=[], error=err)

    async def do_more(self) -> None:
        """Back to the list after printing."""
        self.expect("done")
        self.to("list", selected=printable(self.data["reports"], self.staff))
