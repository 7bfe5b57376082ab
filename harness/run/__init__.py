"""Run: the session (stages from host check to verdict) and the result model written to result.json."""
