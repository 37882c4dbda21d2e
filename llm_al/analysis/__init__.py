"""Reading results: statistics (`stats`), the protocol analyses (`protocol`), the end-of-run table
(`table`) and the `llm-al report` write-up (`writeup`)."""
