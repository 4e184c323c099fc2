"""Adding a QC check is one function plus one entry in `qc.CHECKS`: it is run, stored and can flag a clip
with no other change (the results columns and the review page read the report)."""
import json

import numpy as np

from pipeline import qc


def test_a_new_check_is_one_function_and_one_entry(monkeypatch):
    def check_bright(m: qc.Measured, t: qc.Thresholds) -> qc.CheckResult:
        brightest = float(m.luma_mean.max())
        severity = brightest / 200.0
        return qc.CheckResult(dict(brightest=round(brightest, 1)), severity,
                              f"bright: a frame of mean luma {brightest:.0f}" if severity >= 1 else None)

    monkeypatch.setitem(qc.CHECKS, "bright", check_bright)
    meter = qc.FrameMeter(6, 12.0, face_samples=0)
    meter.add(np.full((6, 64, 64, 3), 250, np.uint8))
    report = qc.run_checks(meter.measured())
    assert report["checks"]["bright"]["brightest"] == 250.0 and report["checks"]["bright"]["severity"] == 1.25
    assert "bright: a frame of mean luma 250" in report["reasons"] and report["flagged"]
    columns = qc.qc_columns(report)
    assert columns["qc_flagged"] and "bright" in json.loads(columns["qc"])["checks"]
