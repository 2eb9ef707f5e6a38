"""Reports: Markdown and figures rendered from the typed results the commands return."""
