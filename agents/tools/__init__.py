"""One tool as on-call sees it: its page (rate, spend, stops, calls, breaker, rule) and the
containment control that degrades it now (the breaker itself is agents/gateway/breakers.py)."""
