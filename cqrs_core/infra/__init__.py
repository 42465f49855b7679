"""Infrastructure: settings, errors, metrics recorder, rate limits, logging, the database."""
