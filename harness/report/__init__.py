"""Report: a run result rendered for people (console table, Markdown, HTML) and two results compared."""
