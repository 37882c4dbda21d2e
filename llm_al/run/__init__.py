"""Running experiments: the runner (`experiment`), the AL loop (`loop`), the shared steps (`pipeline`),
the seed grid (`grid`), resource checks (`resources`), the dry-run estimate (`estimate`), Ray
(`distributed`) and query synthesis (`synthesize`)."""
