"""`hotpath loadtest`: the load and fault-injection suite with SLO checks (runner.py; profiles and SLOs in slo.yaml).

The stack comes from `hotpath dev`'s service descriptions (stack.py), the load from Locust and a change-event
writer in their own processes (scenario.py, writer.py), the verdicts from slo.py and verify.py.
"""
