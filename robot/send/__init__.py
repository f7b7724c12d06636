"""Message to server: the SMTP protocol, relay connections, direct MX delivery, TLS."""
