"""Row to message: headers, bodies, templates, footers, HTML to text, DKIM. Pure."""
