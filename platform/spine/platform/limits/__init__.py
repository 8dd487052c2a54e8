"""Rate limits per API key and per tenant: requests and tokens per minute on the gateway's model
calls (counted in Redis across processes), and tasks running at once per tenant (counted in the
task store, where a worker claims them).

:class:`LimitPolicy` says which limits hold for a caller (settings, a tenant's own, a key's own
stored with the key); :class:`RateLimiter` counts and refuses; :mod:`.headers` renders OpenAI's
``x-ratelimit-*`` headers; :class:`RunningTaskLimits` is what a worker's claim checks.
"""

from spine.platform.limits.headers import Window, go_duration, rate_headers, retry_after
from spine.platform.limits.limiter import Admission, RateLimiter
from spine.platform.limits.policy import KeyLimits, KeyLimitStore, LimitPolicy, ScopeLimits
from spine.platform.limits.rate_limits import RateLimits
from spine.platform.limits.running import RunningTaskLimits

__all__ = [
    "Admission",
    "KeyLimitStore",
    "KeyLimits",
    "LimitPolicy",
    "RateLimiter",
    "RateLimits",
    "RunningTaskLimits",
    "ScopeLimits",
    "Window",
    "go_duration",
    "rate_headers",
    "retry_after",
]
