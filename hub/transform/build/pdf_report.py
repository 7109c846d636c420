"""A readable PDF of a lab report, rendered by the hub when the laboratory sends none (CR-BIO 2024.01 requires the
FR-Document-PDF-copie section in every report).

Rendered with ReportLab (`reportlab`, the PDF library; no PDF syntax written here) from the structured `LabReport`:
laboratory, patient (names, birth date, sex, INS), prescriber, dates, every result with its value, unit, second value,
reference range and flags (a preliminary one "provisoire", one to come "en cours", a cancelled one "non réalisé", a
withdrawn one "annulé par le laboratoire" without its value; "Compte rendu partiel" under the title when the report is),
comments, and who validated it. A4, Helvetica (bold lines are Helvetica filled and outlined: one font object per PDF,
not two), as many pages as the results need (numbered). ReportLab's open-source edition does not write PDF/A (that needs
embedded fonts and an output intent, only in its commercial edition), so this is a plain PDF 1.4; the text is what the
CDA says, so the GP's software shows the same report whether it reads the structured entries or the copy.

Deterministic: the same report gives the same bytes (`invariant`: no creation date nor random id), so the XDM ids
derived from the input stay stable. Pure; reads no settings.
"""

from __future__ import annotations

import io

from reportlab import rl_config
from reportlab.lib.pagesizes import A4
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfgen import canvas

from hub.transform.build.cda_bio import PARTIAL_NOTE, date_display, measured, shown_value, with_unit
from hub.transform.model import NOT_ASKED, LabReport, Patient

rl_config.useA85 = 0          # binary Flate streams: smaller, and no ASCII85 pass (only the hub uses ReportLab)
TITLE = "Compte rendu d'examens biologiques"
SEX = {"M": "Masculin", "F": "Féminin", "U": "Inconnu"}
FLAGS = {"L": "bas", "H": "haut", "LL": "critique bas", "HH": "critique haut", "A": "anormal",
         "AA": "critique anormal", "N": ""}
_WIDTH, _HEIGHT = A4
_LEFT, _RIGHT, _TOP, _BOTTOM = 42, _WIDTH - 42, _HEIGHT - 48, 54
_LINE = 12.5
_GUTTER = 6                                # between two columns
_BOLD_STROKE = 0.35                        # points: the outline that makes Helvetica bold (~ Helvetica-Bold's weight)
_COLUMNS = (_LEFT, 235, 355, 465)          # analyte, result, reference, flags
# (column origins, text widths) of a one-cell row and of a result row
_ONE = ((_LEFT,), (_RIGHT - _LEFT,))
_FOUR = (_COLUMNS, tuple(right - left - _GUTTER for left, right in zip(_COLUMNS, (*_COLUMNS[1:], _RIGHT + _GUTTER))))


def _latin(text: str) -> str:
    """Helvetica (a standard PDF font) covers Windows-1252: anything else shows as '?'."""
    return text if text.isascii() else text.encode("cp1252", "replace").decode("cp1252")


# the two fonts' glyph widths (1/1000 em) by Windows-1252 code: pdfmetrics.stringWidth's result, 10x cheaper
_WIDTHS = {name: pdfmetrics.getFont(name).widths for name in ("Helvetica",)}


def _width(text: str, font: tuple[str, float]) -> float:
    """The width of `text` (already Windows-1252, `_latin`) in points, as `pdfmetrics.stringWidth` measures it."""
    return sum(map(_WIDTHS[font[0]].__getitem__, text.encode("cp1252", "replace"))) * font[1] / 1000


def _wrap(text: str, font: tuple[str, float], width: float) -> list[str]:
    """The lines of `text` (its own line breaks, then words) that fit in `width` points; a text indented (a
    comment under its result) keeps its indent on every line."""
    if "\n" not in text and (len(text) * font[1] * 1.015 <= width or _width(text, font) <= width):
        return [text]                  # most cells (no glyph is wider than 1.015 em): one line as it is
    indent = text[: len(text) - len(text.lstrip(" "))]
    out: list[str] = []
    for part in text.split("\n"):
        part = indent + part.lstrip(" ") if indent else part
        if _width(part, font) <= width:
            out.append(part)
        else:
            out.extend(indent + line for line in simpleSplit(part, font[0], font[1], width - len(indent) * 2.5)
                       or [""])
    return out


class _Page:
    def __init__(self, c: canvas.Canvas):
        self.c = c
        self.number = 1
        self.y = _TOP
        self.text = None
        self._begin()

    def _begin(self) -> None:
        self.text = self.c.beginText()
        self.font: tuple[str, float] | None = None
        self.bold = False

    def line(self, *cells: str, bold: bool = False, size: float = 9) -> None:
        """One row: each cell in its column, wrapped to the column's width (and at its own line breaks) over as
        many lines as it needs: nothing the laboratory wrote is cut."""
        font = ("Helvetica", size)
        xs, widths = _ONE if len(cells) == 1 else _FOUR
        wrapped = [_wrap(_latin(cell), font, width) if cell else [] for width, cell in zip(widths, cells)]
        for k in range(max(map(len, wrapped), default=0) or 1):
            if self.y < _BOTTOM:
                self.flush(last=False)
                self.c.showPage()
                self.number += 1
                self.y = _TOP
                self._begin()
            if font != self.font:               # a font operator only where the font changes
                self.text.setFont(*font)
                self.font = font
            if bold != self.bold:               # bold: the glyphs filled and outlined (text render mode 2), so
                self.text.setTextRenderMode(2 if bold else 0)     # every PDF has one font object, not two
                self.bold = bold
            for x, lines in zip(xs, wrapped):
                if k < len(lines) and lines[k]:  # each cell placed by its origin: textLine measures no width
                    self.text.setTextOrigin(x, self.y)
                    self.text.textLine(lines[k])
            self.y -= _LINE if size <= 9 else _LINE + 4

    def gap(self, n: float = 0.5) -> None:
        self.y -= _LINE * n

    def flush(self, last: bool) -> None:
        self.c.setLineWidth(_BOLD_STROKE)
        self.c.drawText(self.text)
        self.c.setFont("Helvetica", 7)
        self.c.drawString(_LEFT, 30, _latin(f"Page {self.number}" + ("" if last else " (suite page suivante)")
                                            + " - copie du compte rendu mise en page par le hub régional"))


def _patient_lines(p: Patient) -> list[str]:
    name = " ".join(x for x in (p.family.upper(), p.given) if x)
    lines = [f"Patient : {name}"]
    if p.used_family and p.used_family != p.family:
        lines.append(f"Nom utilisé : {p.used_family.upper()}" + (f"  Prénom utilisé : {p.used_given}"
                                                               if p.used_given else ""))
    born = f"Né(e) le {date_display(p.birth_date)}" if p.birth_date else "Date de naissance inconnue"
    lines.append(born + (f"  Sexe : {SEX.get(p.sex, p.sex)}" if p.sex else "")
                 + (f"  INS : {p.ins}" if p.ins and p.ins_oid else ""))
    return lines


def render_report(report: LabReport) -> bytes:
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4, pageCompression=1, invariant=1)
    c.setTitle(TITLE)
    c.setAuthor(_latin(report.sender.org_name or "Laboratoire"))
    c.setCreator("hub (copie du compte rendu structuré)")
    page = _Page(c)
    s = report.sender
    page.line(TITLE, bold=True, size=13)
    if report.partial:
        page.line(PARTIAL_NOTE, bold=True)
    page.line(" ".join(x for x in (s.org_name, f"(FINESS {s.org_finess})" if s.org_finess else "") if x), bold=True)
    for a in s.addr:
        page.line(a)
    page.gap()
    for text in _patient_lines(report.patient):
        page.line(text)
    r = report.requester
    if r.family or r.local_code:
        page.line("Prescripteur : " + " ".join(x for x in (r.given, r.family or r.local_code) if x))
    dates = [("Prélèvement", report.collected_at), ("Réception", report.received_at),
             ("Compte rendu", report.report_date)]
    page.line("   ".join(f"{k} : {date_display(v)}" for k, v in dates if v))
    if report.order_id:
        page.line(f"Demande n° {report.order_id}")
    page.gap()
    page.line("Analyse", "Résultat", "Valeurs de référence", "", bold=True)
    battery = 0
    for res in report.results:
        if res.state == NOT_ASKED:
            continue
        if res.battery != battery and 0 < res.battery <= len(report.batteries):
            b = report.batteries[res.battery - 1]
            if b.label or b.loinc_label:
                page.line((b.label or b.loinc_label).upper(), bold=True)
            for note in b.comments:
                page.line("    " + note)
        battery = res.battery
        shown, note = shown_value(res)
        full = measured(res)
        value = with_unit(shown, res.unit if full else "")
        flags = [FLAGS.get(f.upper(), f) for f in res.flags] if full else []
        page.line(res.label or res.loinc_label or res.local_code, value or note, res.range_display,
                  ", ".join(x for x in (*flags, note if value else "") if x))
        if res.value2 and full:
            second = " ".join(x for x in (res.value2, res.unit2) if x)
            rng = f"{res.range2_low} - {res.range2_high}" if res.range2_low and res.range2_high else ""
            page.line("", second, rng)
        for note in res.comments:
            page.line("    " + note)
    if report.comments:
        page.gap()
        page.line("Commentaires", bold=True)
        for note in report.comments:
            page.line(note)
    page.gap()
    who = " ".join(x for x in (s.given, s.family) if x)
    page.line("Validé par : " + (who or "le biologiste du laboratoire") + (f" (RPPS {s.rpps})" if s.rpps else "")
              + (f" le {date_display(report.validated_at or report.report_date)}" if report.report_date else ""))
    page.flush(last=True)
    c.showPage()
    c.save()
    return buf.getvalue()
