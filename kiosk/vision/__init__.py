"""The terminal's face pipeline: frames -> detection -> quality -> liveness -> embedding -> match.

Scores and images stay inside this package: callers get a `Decision`
(matched / not_matched / retry, a reason code, a person id) or, for sealing and
enrolment, a template array handed over in process. Nothing here writes a frame,
a crop or a template to disk or to a log.
"""
from __future__ import annotations
