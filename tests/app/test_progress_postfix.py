"""A stage's progress bar leaves nothing behind (issue #15: a stale ``k=605`` postfix
stayed on screen after its stage): on close the bar's line, postfix included, is blanked."""

from __future__ import annotations

from curvprobe.app import _progress


def test_a_closed_bar_blanks_its_line_and_postfix(capsys):
    with _progress.bar(3, "stage", unit="pt") as pbar:
        pbar.set_postfix({"HVPs": 605}, refresh=True)
        pbar.update(3)
    written = capsys.readouterr().err
    assert "HVPs=605" in written  # the postfix was shown while the stage ran
    last = written.replace("\r", "\n").rstrip("\n").split("\n")[-1]
    assert last.strip() == "", f"the bar's last line is not blanked: {last!r}"
