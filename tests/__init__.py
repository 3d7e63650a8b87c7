"""
procession's tests, run with C{python -m twisted.trial tests}.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "procession",
    deadline=None,
    max_examples=50,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("procession")
