"""End-to-end tests: scenarios (tests/scenarios/*.yaml) run through real proxies on loopback."""
