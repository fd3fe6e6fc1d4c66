"""The open-loop load tester: `launcher loadtest`.

`schedule` holds the pure parts (ramps, thresholds, `LoadSettings`), `stats`
the HDR histograms, `runner` the driver that sends on schedule whatever the
answers, `output` the summary JSON, CSV and Prometheus endpoint, `charts` the
`--report` page.
"""

from __future__ import annotations

from launcher.loadtest.runner import run_loadtest
from launcher.loadtest.schedule import LoadSettings, Schedule, Threshold

__all__ = ["LoadSettings", "Schedule", "Threshold", "run_loadtest"]
