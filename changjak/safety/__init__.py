"""Safety checks shared by data preparation and serving; :mod:`changjak.safety.pii` masks Korean PII."""
