"""The integrity check's report (:mod:`deker.integrity_report`): its file name.

tests/test_integrity.py checks the report's problems, text and file through ``check_integrity``.
"""

from __future__ import annotations

from datetime import datetime

from deker.integrity_report import report_file_name


def test_report_file_name_is_stamped_with_the_time() -> None:
    assert report_file_name(datetime(2024, 5, 6, 7, 8, 9)) == (
        "deker_integrity_report_2024-05-06T07:08:09.txt"
    )
