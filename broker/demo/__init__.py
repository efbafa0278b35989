"""A bundled demo upstream (a paper-trading crypto exchange) and its policy, for the quickstart."""
